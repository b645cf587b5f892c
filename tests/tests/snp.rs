//! The SNP attester under attestd with its recorded device: a configfs-tsm emulation
//! answering with reports recorded on real hardware (REPORT_DATA set to what was
//! asked) and the recorded endorsement certificate as the certificate table.
//! Evidence is read back the way Trustee's verifier reads it (serde into `sev`'s
//! types) and its fields are checked against the raw report at the ABI offsets,
//! independently of `sev`; the recorded signature is verified with `sev`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use attestd_e2e::{attester_bin, config, hex, repo_root, status, Attestd, Plugin};
use sev::certs::snp::{builtin::milan, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sha2::{Digest as _, Sha256};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("attesters/snp/tests/fixtures").join(name)
}

fn snp(args: &[String]) -> Plugin {
    Plugin::attester("snp", args)
}

fn recorded(report: &str, cert: Option<(&str, &str)>) -> Plugin {
    let mut args = vec![
        "--recorded-report".into(),
        fixture(report).display().to_string(),
    ];
    if let Some((kind, file)) = cert {
        args.push("--recorded-cert".into());
        args.push(format!("{kind}={}", fixture(file).display()));
    }
    snp(&args)
}

fn vcek_plugin() -> Plugin {
    recorded("test-report.bin", Some(("vcek", "test-vcek.der")))
}

/// What Trustee's SNP verifier deserialises the evidence into.
#[derive(serde::Deserialize)]
struct SnpEvidence {
    attestation_report: AttestationReport,
    cert_chain: Option<Vec<CertTableEntry>>,
}

/// Byte-array fields of the report at their offsets in the SEV-SNP ABI's
/// ATTESTATION_REPORT table (not taken from `sev`).
const ABI_FIELDS: &[(&str, usize, usize)] = &[
    ("family_id", 0x10, 16),
    ("image_id", 0x20, 16),
    ("report_data", 0x50, 64),
    ("measurement", 0x90, 48),
    ("host_data", 0xC0, 32),
    ("id_key_digest", 0xE0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("chip_id", 0x1A0, 64),
];

fn u32_at(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()).into()
}

/// Every ABI field of the evidence's report equals the raw report's bytes.
fn assert_fields_match(report: &serde_json::Value, raw: &[u8]) {
    for (name, off, len) in ABI_FIELDS {
        let got: Vec<u8> = report[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an array"))
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(got, raw[*off..off + len], "{name}");
    }
    assert_eq!(report["version"], u32_at(raw, 0x00));
    assert_eq!(report["guest_svn"], u32_at(raw, 0x04));
    assert_eq!(report["vmpl"], u32_at(raw, 0x30));
    assert_eq!(report["sig_algo"], u32_at(raw, 0x34));
}

#[tokio::test]
async fn evidence_through_attestd_is_what_trustee_reads_and_binds_report_data() {
    let p = vcek_plugin();
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    assert_eq!(a.tee_type().await, "snp");
    let recorded = std::fs::read(fixture("test-report.bin")).unwrap();

    let rd: Vec<u8> = (0..48).collect();
    let ev = a.evidence(&rd).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["attestation_report", "cert_chain"]);

    // Independently of sev: the report is the recording with REPORT_DATA replaced.
    let mut want = recorded.clone();
    want[0x50..0x80].copy_from_slice(&rd);
    want[0x80..0x90].fill(0);
    assert_fields_match(&v["attestation_report"], &want);

    // As Trustee reads it.
    let e: SnpEvidence = serde_json::from_slice(&ev).unwrap();
    let mut padded = rd.clone();
    padded.resize(64, 0);
    assert_eq!(e.attestation_report.report_data.to_vec(), padded);
    let chain = e.cert_chain.unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].cert_type, CertType::VCEK);
    assert_eq!(
        chain[0].data,
        std::fs::read(fixture("test-vcek.der")).unwrap()
    );
    // The signature covers REPORT_DATA: changed data no longer verifies.
    let vcek = Certificate::from_der(&chain[0].data).unwrap();
    assert!((&vcek, &e.attestation_report).verify().is_err());

    // Golden: the exact bytes for this runtime data (see tests/golden/README.md).
    let golden = std::fs::read(repo_root().join("tests/golden/snp-evidence-vcek.json")).unwrap();
    assert!(ev == golden, "evidence differs from the golden file");
}

#[tokio::test]
async fn the_recorded_signature_verifies_through_the_whole_path() {
    // Asking for the report data the hardware signed yields the recorded report
    // unchanged: after serde out of the plugin and back in (as Trustee does), sev
    // verifies it with the VCEK from cert_chain, and the VCEK with AMD's Milan chain.
    let p = vcek_plugin();
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let recorded = std::fs::read(fixture("test-report.bin")).unwrap();
    let ev = a.evidence(&recorded[0x50..0x90]).await.unwrap();
    let e: SnpEvidence = serde_json::from_slice(&ev).unwrap();
    let vcek = Certificate::from_der(&e.cert_chain.unwrap()[0].data).unwrap();
    (&vcek, &e.attestation_report).verify().unwrap();
    let chain = Chain {
        ca: ca::Chain {
            ark: milan::ark().unwrap(),
            ask: milan::ask().unwrap(),
        },
        vek: vcek,
    };
    (&chain, &e.attestation_report).verify().unwrap();
}

#[tokio::test]
async fn vlek_reports_carry_their_vlek() {
    let p = recorded("test-vlek-report.bin", Some(("vlek", "test-vlek.der")));
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let raw = std::fs::read(fixture("test-vlek-report.bin")).unwrap();
    let ev = a.evidence(&raw[0x50..0x90]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    assert_fields_match(&v["attestation_report"], &raw);
    let e: SnpEvidence = serde_json::from_slice(&ev).unwrap();
    assert_eq!(e.attestation_report.version, 3);
    let chain = e.cert_chain.unwrap();
    assert_eq!(chain[0].cert_type, CertType::VLEK);
    let vlek = Certificate::from_der(&chain[0].data).unwrap();
    (&vlek, &e.attestation_report).verify().unwrap();
}

#[tokio::test]
async fn without_certificates_cert_chain_is_null() {
    let p = recorded("test-report.bin", None);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let ev = a.evidence(b"hello-coco").await.unwrap();
    assert!(ev.ends_with(br#","cert_chain":null}"#));
    let e: SnpEvidence = serde_json::from_slice(&ev).unwrap();
    assert_eq!(&e.attestation_report.report_data[..10], b"hello-coco");
}

#[tokio::test]
async fn report_data_of_65_bytes_is_invalid_argument() {
    let p = vcek_plugin();
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.evidence(&[1; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "runtime data for snp: report data is 65 bytes, more than the 64 bytes this attester accepts"
    );
    // 64 bytes is fine.
    a.evidence(&[1; 64]).await.unwrap();
}

#[tokio::test]
async fn bind_init_data_compares_with_hostdata() {
    let p = vcek_plugin();
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let raw = std::fs::read(fixture("test-report.bin")).unwrap();
    let host_data = raw[0xC0..0xE0].to_vec();
    // The recorded HOSTDATA is what the guest was launched with: it binds.
    a.bind_init_data(&host_data).await.unwrap();
    // A sha256 of other init-data is a mismatch that shows both values.
    let other = Sha256::digest(b"other init-data").to_vec();
    let (code, msg) = status(a.bind_init_data(&other).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(
        msg,
        format!(
            "plugin snp: init-data digest {} does not match HOSTDATA {}",
            hex(&other),
            hex(&host_data)
        )
    );
    // Issue 39: a sha384 or sha512 digest is compared by its first 32 bytes,
    // as kata puts them in HOSTDATA and upstream's attester compares them
    // (cloud-api-adaptor's own sha384 example used to stop attestd on SNP).
    for len in [48, 64] {
        let mut longer = host_data.clone();
        longer.resize(len, 0xee);
        a.bind_init_data(&longer).await.unwrap();
        let mut wrong = other.clone();
        wrong.resize(len, 0);
        let (code, msg) = status(a.bind_init_data(&wrong).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(
            msg,
            format!(
                "plugin snp: init-data digest {} (its first 32 bytes) does not match HOSTDATA {}",
                hex(&other),
                hex(&host_data)
            )
        );
    }
    // Past sha512: refused.
    let (code, msg) = status(a.bind_init_data(&[0; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "plugin snp: init-data digest is 65 bytes; at most 64 (sha512)"
    );
}

#[tokio::test]
async fn init_data_mismatch_at_start_aborts_with_both_values() {
    let p = vcek_plugin();
    let digest = Sha256::digest(b"algorithm = \"sha256\"\nversion = \"0.1.0\"\n");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
    let e = Attestd::start_with(|d| config(d, &p, &[], ""), &["--initdata-digest", &b64])
        .err()
        .unwrap();
    assert!(
        e.stderr.contains(&format!(
            "init-data digest {} does not match HOSTDATA {}",
            hex(&digest),
            "00".repeat(32)
        )),
        "{}",
        e.stderr
    );
}

#[tokio::test]
async fn missing_devices_are_unavailable() {
    let p = snp(&[
        "--backend".into(),
        "configfs-tsm".into(),
        "--configfs-root".into(),
        "/nonexistent/tsm/report".into(),
    ]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.evidence(b"x").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    assert_eq!(
        msg,
        "plugin snp: SNP report from configfs-tsm at /nonexistent/tsm/report: cannot create a configfs-tsm report entry: No such file or directory (os error 2)"
    );
    drop(a);
    if Path::new("/dev/sev-guest").exists() {
        return; // an SNP guest: the device is real
    }
    let p = snp(&["--backend".into(), "sev-guest".into()]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.evidence(b"x").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    assert_eq!(
        msg,
        "plugin snp: SNP report from /dev/sev-guest: cannot open /dev/sev-guest: No such file or directory (os error 2)"
    );
}

#[test]
fn truncated_or_flipped_recordings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture("test-report.bin")).unwrap();
    let start = |bytes: &[u8], name: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let p = snp(&["--recorded-report".into(), f.display().to_string()]);
        let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
        (f, e.stderr)
    };
    let (f, stderr) = start(&raw[..1000], "short.bin");
    assert!(
        stderr.contains(&format!(
            "error: recorded report {}: SNP attestation report is 1000 bytes, expected 1184",
            f.display()
        )),
        "{stderr}"
    );
    // A flipped version byte: no report version sev knows.
    let mut flipped = raw.clone();
    flipped[0] ^= 0x03;
    let (_, stderr) = start(&flipped, "flipped.bin");
    assert!(
        stderr.contains("cannot parse the SNP attestation report"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_flipped_signed_byte_is_served_but_does_not_verify() {
    // The attester does not verify its own hardware's signature (the verifier
    // does): a flipped MEASUREMENT byte goes out, and sev's verification catches it.
    let dir = tempfile::tempdir().unwrap();
    let mut raw = std::fs::read(fixture("test-report.bin")).unwrap();
    raw[0x90] ^= 1;
    let f = dir.path().join("flipped.bin");
    std::fs::write(&f, &raw).unwrap();
    let p = snp(&[
        "--recorded-report".into(),
        f.display().to_string(),
        "--recorded-cert".into(),
        format!("vcek={}", fixture("test-vcek.der").display()),
    ]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let ev = a.evidence(&raw[0x50..0x90]).await.unwrap();
    let e: SnpEvidence = serde_json::from_slice(&ev).unwrap();
    let vcek = Certificate::from_der(&e.cert_chain.unwrap()[0].data).unwrap();
    assert!((&vcek, &e.attestation_report).verify().is_err());
}

#[tokio::test]
async fn detect_answers_for_the_recorded_device() {
    use attestd_e2e::connect_plugin;
    use attester_sdk::{Transport, PROTOCOL_VERSIONS};
    let dir = tempfile::tempdir().unwrap();
    for (args, present) in [
        (
            vec![
                "--recorded-report".to_string(),
                fixture("test-report.bin").display().to_string(),
            ],
            true,
        ),
        (
            vec![
                "--backend".to_string(),
                "configfs-tsm".into(),
                "--configfs-root".into(),
                "/nonexistent".into(),
                "--platform".into(),
                "/nonexistent".into(),
            ],
            false,
        ),
    ] {
        let sock = dir.path().join(format!("snp-{present}.sock"));
        let mut child = std::process::Command::new(attester_bin("snp", "attester-snp"))
            .args(&args)
            .arg("--socket")
            .arg(&sock)
            .spawn()
            .unwrap();
        let c = connect_plugin(&sock, Transport::Ttrpc, std::time::Duration::from_secs(10)).await;
        let hs = c.handshake(PROTOCOL_VERSIONS).await.unwrap();
        assert_eq!(hs.info.tee, "snp");
        assert_eq!(hs.info.capabilities.max_report_data, 64);
        assert!(!hs.info.capabilities.runtime_measurement);
        assert_eq!(c.detect().await.unwrap(), present);
        attestd_e2e::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        child.wait().unwrap();
    }
}

#[tokio::test]
async fn a_slow_report_does_not_starve_health_checks() {
    // As for TDX: a PSP that takes 1.5 s per report, health checks every 200 ms.
    let ev = attestd_e2e::evidence_from_a_slow_device(&vcek_plugin()).await;
    assert!(ev["attestation_report"].is_object());
}

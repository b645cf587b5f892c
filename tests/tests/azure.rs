//! The Azure vTPM attesters (az-snp-vtpm, az-tdx-vtpm) under attestd: the core
//! speaks gRPC to them and ttrpc to its clients.
//!
//! - az-snp-vtpm runs its real path (az-cvm-vtpm, unmodified, on the device TCTI)
//!   against swtpm provisioned like an Azure vTPM, through a test-only
//!   `libtss2-tcti-device.so.0` (tests/shim/) that forwards the device TCTI to
//!   swtpm. az-cvm-vtpm sleeps 3 s after writing report data, so only one test
//!   here asks that path for evidence.
//! - az-tdx-vtpm's 2600-byte HCL report does not fit an swtpm NV index (2048 bytes
//!   at most), so it runs on the recorded vTPM, against a fake IMDS on 127.0.0.1.
//!
//! Quotes and HCL reports are checked with az-cvm-vtpm's own parsing and
//! verification. Needs swtpm, tpm2-tools, gcc and libtss2-dev (scripts/test.sh
//! installs them) and the plugins built in their own workspaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use attestd_e2e::azure::{fixture, quote_of, read_fixture, FakeImds};
use attestd_e2e::swtpm::Swtpm;
use attestd_e2e::{
    attestd_cli, attester_bin, config, connect_plugin, ctx, repo_root, status, Attestd, Plugin,
};
use attestd_proto::ttrpc::attestation_agent as t;
use attester_sdk::Transport;
use az_cvm_vtpm::hcl::{HclReport, ReportType};
use az_cvm_vtpm::vtpm::VerifyError;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use openssl::pkey::{PKey, Public};
use sha2::{Digest as _, Sha256};

fn b64url(s: &str) -> Vec<u8> {
    URL_SAFE.decode(s).unwrap()
}

/// Every key of `v`, nested objects as `outer.inner`, sorted.
fn shape(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            out.push(k.clone());
            if x.is_object() {
                out.extend(shape(x).into_iter().map(|s| format!("{k}.{s}")));
            }
        }
    }
    out.sort();
    out
}

/// The test-only TCTI shim, built once per test process.
fn shim_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("gcc")
            .args(["-Wall", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(d.path().join("libtss2-tcti-device.so.0"))
            .arg(repo_root().join("tests/shim/tcti-device-to-swtpm.c"))
            .arg("-ldl")
            .output()
            .expect("gcc is missing");
        assert!(
            out.status.success(),
            "building the TCTI shim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
    .path()
}

/// An swtpm provisioned like an Azure vTPM: the 2048-byte SNP HCL report at NV
/// 0x01400001 and a restricted RSA-2048 signing AK persisted at 0x81000003.
struct AzureVtpm {
    tpm: Swtpm,
    ak: PKey<Public>,
    dir: tempfile::TempDir,
}

impl AzureVtpm {
    fn start() -> AzureVtpm {
        let tpm = Swtpm::start();
        let dir = tempfile::tempdir().unwrap();
        let ak_pem = attestd_e2e::azure::provision_vtpm(&tpm, dir.path());
        let ak = PKey::public_key_from_pem(&std::fs::read(&ak_pem).unwrap()).unwrap();
        AzureVtpm { tpm, ak, dir }
    }

    /// attestd's environment: the shim first on the library path, pointed at swtpm.
    fn env(&self) -> Vec<(&'static str, String)> {
        let tcti = self.tpm.tcti();
        vec![
            ("LD_LIBRARY_PATH", shim_dir().display().to_string()),
            (
                "ATTESTD_SHIM_SWTPM",
                tcti.trim_start_matches("swtpm:").to_string(),
            ),
        ]
    }

    /// NV index `index` read back with tpm2_nvread.
    fn nv(&self, index: &str) -> Vec<u8> {
        let f = self.dir.path().join("nv.bin");
        self.tpm
            .tool_ok(&["tpm2_nvread", index, "-C", "o", "-o", f.to_str().unwrap()]);
        std::fs::read(f).unwrap()
    }
}

/// The DER of the first certificate of the fixture's PEM, as openssl reads it.
fn vcek_der() -> Vec<u8> {
    openssl::x509::X509::from_pem(&read_fixture("snp-vcek.pem"))
        .unwrap()
        .to_der()
        .unwrap()
}

async fn get_evidence(a: &Attestd, runtime_data: &[u8]) -> Result<serde_json::Value, ttrpc::Error> {
    a.evidence(runtime_data)
        .await
        .map(|e| serde_json::from_slice(&e).unwrap())
}

/// az-snp-vtpm's real path end to end on swtpm: Detect, evidence through attestd's
/// ttrpc API (the plugin on gRPC), the quote verified by az-cvm-vtpm with the AK
/// read back from the TPM, report data in the paravisor's index, runtime
/// measurement and init-data in the PCRs as tpm2_pcrread sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_snp_vtpm_on_swtpm_end_to_end() {
    let vtpm = AzureVtpm::start();
    // Detect on the real path: the vTPM holds an SNP HCL report.
    assert!(detect_with("az-snp-vtpm", &[], &vtpm.env()).await);
    assert!(!detect_with("az-tdx-vtpm", &[], &vtpm.env()).await);
    let imds = FakeImds::start(Duration::ZERO).await;
    let p = Plugin::attester("az-snp-vtpm", &["--imds-url".into(), imds.url.clone()]);
    let env = vtpm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = tempfile::tempdir().unwrap();
    let log_path = log.path().join("eventlog");
    let a = Attestd::start_env(
        |d| {
            format!(
                "{}\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 23\npath = {:?}\n",
                config(d, &p, &[], ""),
                log_path.display().to_string()
            )
        },
        &[],
        &env,
    )
    .unwrap_or_else(|f| panic!("attestd did not start: {}", f.stderr));
    assert_eq!(a.tee_type().await, "az-snp-vtpm");

    // 48 bytes, as a SHA-384 digest from the KBS protocol would be.
    let report_data: Vec<u8> = (1..=48).collect();
    let ev = get_evidence(&a, &report_data).await.unwrap();
    let recorded: serde_json::Value =
        serde_json::from_slice(&read_fixture("snp-evidence-v2.json")).unwrap();
    assert_eq!(shape(&ev), shape(&recorded), "key for key as upstream's v2");
    assert_eq!(ev["version"], 2);

    // The HCL report is what the vTPM holds, and az-cvm-vtpm reads it as SNP.
    let hcl = b64url(ev["hcl_report"].as_str().unwrap());
    assert_eq!(hcl, read_fixture("snp-hcl-report-2048.bin"));
    assert_eq!(HclReport::new(hcl).unwrap().report_type(), ReportType::Snp);
    assert_eq!(b64url(ev["vcek"].as_str().unwrap()), vcek_der());

    // The quote: signed by the AK at 0x81000003, nonce = report data, PCR digest
    // over the reported bank; and the bank is swtpm's.
    let quote = quote_of(&ev);
    quote.verify(&vtpm.ak, &report_data).unwrap();
    assert_eq!(quote.nonce().unwrap(), report_data);
    assert!(matches!(
        quote.verify(&vtpm.ak, &[0; 48]),
        Err(VerifyError::NonceMismatch)
    ));
    let pcr0: Vec<u8> = quote.pcrs_sha256().next().unwrap().to_vec();
    assert_eq!(pcr0, vtpm.tpm.pcr(0));

    // The paravisor's report-data index holds the report data, zero-padded to 64.
    let mut padded = report_data.clone();
    padded.resize(64, 0);
    assert_eq!(vtpm.nv("0x01400002"), padded);

    // Runtime measurement: the log replays to PCR 23 as tpm2_pcrread reads it.
    let before = vtpm.tpm.pcr(23);
    let req = t::ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: r#"{"image":"docker.io/library/busybox","digest":"sha256:0"}"#.into(),
        ..Default::default()
    };
    let r = a
        .ttrpc()
        .await
        .extend_runtime_measurement(ctx(), &req)
        .await
        .unwrap();
    assert_eq!(
        r.Result.enum_value_or_default(),
        t::RuntimeMeasurementResult::OK
    );
    let after = vtpm.tpm.pcr(23);
    assert_ne!(after, before);
    let (st, out, err) = attestd_cli(&[
        "eventlog",
        "--no-check",
        "--json",
        "--path",
        log_path.to_str().unwrap(),
        "-c",
        a.dir.path().join("attestd.toml").to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reg = v["registers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["index"] == 23)
        .unwrap();
    assert_eq!(reg["replayed"].as_str().unwrap(), hex::encode(&after));

    // Init-data extends PCR 8.
    let before = vtpm.tpm.pcr(8);
    let digest = Sha256::digest(b"version = \"0.1.0\"").to_vec();
    a.bind_init_data(&digest).await.unwrap();
    assert_eq!(
        vtpm.tpm.pcr(8),
        Sha256::digest([before.as_slice(), &digest].concat()).to_vec()
    );

    // Oversized report data never reaches the vTPM.
    let e = get_evidence(&a, &[0; 65]).await.unwrap_err();
    let (code, msg) = status(e);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("65 bytes"), "{msg}");
    assert_eq!(vtpm.nv("0x01400002"), padded, "the index is untouched");
}

/// Detect of plugin `tee` on a recorded HCL report, asked over gRPC with no core.
async fn detect(tee: &str, hcl: &Path) -> bool {
    detect_with(tee, &["--recorded-hcl-report", hcl.to_str().unwrap()], &[]).await
}

/// Detect of plugin `tee` started with `args` and `env`, over gRPC with no core.
async fn detect_with(tee: &str, args: &[&str], env: &[(&'static str, String)]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let mut child = std::process::Command::new(attester_bin(tee, &format!("attester-{tee}")))
        .arg("--socket")
        .arg(&sock)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("ATTESTD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = connect_plugin(&sock, Transport::Grpc, Duration::from_secs(10)).await;
    let found = c.detect().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    found
}

fn tdx_plugin(imds_url: &str, hcl: &Path, extra: &[&str]) -> Plugin {
    let mut args = vec![
        "--imds-url".to_string(),
        imds_url.to_string(),
        "--recorded-hcl-report".into(),
        hcl.display().to_string(),
        "--recorded-quote".into(),
        fixture("tdx-tpm-quote.json").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Plugin::attester("az-tdx-vtpm", &args)
}

/// az-tdx-vtpm on the recorded vTPM with a fake IMDS: IMDS gets the TD report out
/// of the HCL report (as az-cvm-vtpm takes it out) and its quote lands in the
/// evidence, shaped as upstream's document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_tdx_vtpm_with_fake_imds() {
    let imds = FakeImds::start(Duration::ZERO).await;
    let hcl_path = fixture("tdx-hcl-report.bin");
    let p = tdx_plugin(&imds.url, &hcl_path, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    assert_eq!(a.tee_type().await, "az-tdx-vtpm");

    let ev = get_evidence(&a, &[7; 32]).await.unwrap();
    let mut keys = shape(&ev);
    keys.retain(|k| !k.starts_with("tpm_quote."));
    assert_eq!(keys, ["hcl_report", "td_quote", "tpm_quote", "version"]);
    assert_eq!(ev["version"], 2);
    // Upstream's v1 document has the same members plus what v2 left unchanged.
    let v1: serde_json::Value =
        serde_json::from_slice(&read_fixture("tdx-evidence-v1.json")).unwrap();
    assert_eq!(shape(&ev), shape(&v1));

    let hcl = read_fixture("tdx-hcl-report.bin");
    assert_eq!(b64url(ev["hcl_report"].as_str().unwrap()), hcl);
    assert_eq!(
        b64url(ev["td_quote"].as_str().unwrap()),
        read_fixture("tdx-td-quote.bin")
    );
    let td = az_cvm_vtpm::tdx::TdReport::try_from(HclReport::new(hcl).unwrap()).unwrap();
    let sent = imds.td_reports.lock().unwrap().clone();
    assert_eq!(sent, vec![zerocopy::IntoBytes::as_bytes(&td).to_vec()]);

    // The recorded quote parses and its PCR digest holds (its signer's key is the
    // HCL report's AK only on the machine it was recorded on).
    quote_of(&ev).verify_pcrs().unwrap();
}

/// The recorded v2 document's bindings, checked with az-cvm-vtpm: the SNP report's
/// REPORT_DATA is the hash of the HCL variable data, whose user-data is the quote's
/// nonce, and the quote is signed by the AK the HCL report carries.
#[test]
fn recorded_v2_evidence_binds_as_az_cvm_vtpm_checks_it() {
    let ev: serde_json::Value =
        serde_json::from_slice(&read_fixture("snp-evidence-v2.json")).unwrap();
    let hcl_bytes = b64url(ev["hcl_report"].as_str().unwrap());
    let hcl = HclReport::new(hcl_bytes.clone()).unwrap();
    assert_eq!(hcl.report_type(), ReportType::Snp);
    // The SNP report sits after the HCL header; sev reads it independently.
    use sev::parser::ByteParser as _;
    let snp =
        sev::firmware::guest::AttestationReport::from_bytes(&hcl_bytes[32..32 + 1184]).unwrap();
    assert_eq!(hcl.var_data_sha256(), snp.report_data[..32]);

    let quote = quote_of(&ev);
    let nonce = quote.nonce().unwrap();
    let var: serde_json::Value = serde_json::from_slice(hcl.var_data()).unwrap();
    let mut padded = nonce.clone();
    padded.resize(64, 0);
    assert_eq!(
        var["user-data"].as_str().unwrap().to_lowercase(),
        hex::encode(&padded)
    );
    let ak = PKey::public_key_from_pem(hcl.ak_pub().unwrap().key.to_pem().as_bytes()).unwrap();
    quote.verify(&ak, &nonce).unwrap();
    // One flipped byte of the attested message breaks the signature.
    let mut v = ev.clone();
    let mut m = hex::decode(v["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    m[40] ^= 1;
    v["tpm_quote"]["message"] = hex::encode(m).into();
    assert!(matches!(
        quote_of(&v).verify(&ak, &nonce),
        Err(VerifyError::SignatureMismatch)
    ));
    // The VCEK is a DER certificate.
    openssl::x509::X509::from_der(&b64url(ev["vcek"].as_str().unwrap())).unwrap();
}

/// Bad platforms and a bad IMDS, each with its status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_failures_have_clear_errors() {
    // az-tdx-vtpm on an SNP CVM: Detect says no (and az-snp-vtpm yes), evidence
    // is refused.
    let imds = FakeImds::start(Duration::ZERO).await;
    let snp_hcl = fixture("snp-hcl-report.bin");
    for (tee, want) in [("az-tdx-vtpm", false), ("az-snp-vtpm", true)] {
        assert_eq!(detect(tee, &snp_hcl).await, want, "{tee} on an SNP CVM");
    }
    assert!(detect("az-tdx-vtpm", &fixture("tdx-hcl-report.bin")).await);
    let p = tdx_plugin(&imds.url, &snp_hcl, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(get_evidence(&a, &[1; 32]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("the HCL report holds a SNP report, not TDX: this is an Azure SNP CVM"),
        "{msg}"
    );
    drop(a);

    // No vTPM at all (no shim, and this host's /dev/tpm0, if any, holds no HCL
    // report): Detect says no and evidence names what failed.
    assert!(!detect_with("az-snp-vtpm", &[], &[]).await);
    let p = Plugin::attester("az-snp-vtpm", &["--imds-url".into(), imds.url.clone()]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(get_evidence(&a, &[1; 32]).await.unwrap_err());
    if !Path::new("/dev/tpm0").exists() {
        assert_eq!(code, ttrpc::Code::UNAVAILABLE, "{msg}");
    }
    assert!(
        msg.contains("cannot read the HCL report from the vTPM"),
        "{msg}"
    );
    drop(a);

    // A truncated HCL report.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &read_fixture("tdx-hcl-report.bin")[..1500]).unwrap();
    let p = tdx_plugin(&imds.url, &cut, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(get_evidence(&a, &[1; 32]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
    assert!(
        msg.contains("the HCL report is truncated (1500 bytes"),
        "{msg}"
    );
    assert!(
        imds.td_reports.lock().unwrap().is_empty(),
        "IMDS was never asked"
    );
    drop(a);

    // IMDS down: nothing listens there. Tried again until the deadline (at
    // boot the network may still be coming up), then unavailable.
    let port = attestd_e2e::free_port();
    let down = format!("http://127.0.0.1:{port}");
    let p = tdx_plugin(
        &down,
        &fixture("tdx-hcl-report.bin"),
        &["--imds-timeout-ms", "1000"],
    );
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(get_evidence(&a, &[1; 32]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE, "{msg}");
    assert!(
        msg.contains(&format!(
            "cannot fetch the TD quote: IMDS at {down} could not be reached within 1s"
        )),
        "{msg}"
    );
    drop(a);

    // IMDS slow: the plugin's deadline, not a hang.
    let slow = FakeImds::start(Duration::from_secs(5)).await;
    let p = tdx_plugin(
        &slow.url,
        &fixture("tdx-hcl-report.bin"),
        &["--imds-timeout-ms", "300"],
    );
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(get_evidence(&a, &[1; 32]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{msg}");
    assert!(msg.contains("did not answer within 300ms"), "{msg}");

    // Oversized report data.
    let (code, _) = status(get_evidence(&a, &[0; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
}

/// `attestd conformance` against both Azure attesters on their recorded vTPMs and
/// a fake IMDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_attesters_conform_on_the_recorded_vtpm() {
    let imds = FakeImds::start(Duration::ZERO).await;
    let tdx = tdx_plugin(&imds.url, &fixture("tdx-hcl-report.bin"), &[]);
    let snp = Plugin::attester(
        "az-snp-vtpm",
        &[
            "--imds-url".into(),
            imds.url.clone(),
            "--recorded-hcl-report".into(),
            fixture("snp-hcl-report.bin").display().to_string(),
            "--recorded-quote".into(),
            fixture("snp-tpm-quote.json").display().to_string(),
        ],
    );
    for p in [tdx, snp] {
        conforms(&p).await;
    }
}

async fn conforms(p: &Plugin) {
    let mut command = vec![p.command.display().to_string()];
    command.extend(p.args.clone());
    let (st, out, err) = tokio::task::spawn_blocking(move || {
        let mut args = vec!["conformance", "--transport", "grpc", "--"];
        args.extend(command.iter().map(String::as_str));
        attestd_e2e::attestd_cli(&args)
    })
    .await
    .unwrap();
    // A recorded vTPM serves its signed quote as recorded: report data cannot
    // change it, and the kit says so. Those two checks, and only they, fail;
    // the real vTPM's quote takes the report data as its nonce
    // (attester.rs), and the HCL report request carries it (tested there).
    assert!(!st.success(), "{out}\n{err}");
    assert!(
        out.contains("FAIL other report data, other evidence: two calls with different report data gave the same evidence"),
        "{out}"
    );
    assert!(
        out.contains("FAIL report data visible in the evidence: neither the report data"),
        "{out}"
    );
    assert!(out.contains(" 2 failed"), "{out}");
    assert!(out.contains("PASS report data at the limit"), "{out}");
    assert!(
        out.contains("PASS health answers while evidence is busy"),
        "{out}"
    );
    assert!(
        out.contains("PASS SIGTERM: exits 0, socket removed"),
        "{out}"
    );
}

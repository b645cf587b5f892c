//! The TDX attester under attestd with its recorded device: a configfs-tsm emulation
//! answering with quotes recorded on real hardware, REPORTDATA set to what was asked.
//! Quotes are parsed back with dcap-qvl (independent of the attester's own parsing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use attestd_e2e::{attester_bin, config, hex, repo_root, status, Attestd, Plugin};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use dcap_qvl::quote::{Quote, Report};
use sha2::{Digest as _, Sha256, Sha512};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("attesters/tdx/tests/fixtures").join(name)
}

fn tdx(args: &[String]) -> Plugin {
    Plugin::attester("tdx", args)
}

fn recorded(quote: &str, ccel: Option<&Path>) -> Plugin {
    let ccel = ccel
        .map(Path::to_path_buf)
        .unwrap_or_else(|| "/nonexistent/CCEL".into());
    tdx(&[
        "--recorded-quote".into(),
        fixture(quote).display().to_string(),
        "--ccel".into(),
        ccel.display().to_string(),
        // Not the machine's /run: these tests pin the bytes.
        "--runtime-eventlog".into(),
        "/nonexistent/eventlog".into(),
    ])
}

/// (REPORTDATA, MRCONFIGID) as dcap-qvl reads them.
fn fields(quote: &[u8]) -> ([u8; 64], [u8; 48]) {
    let q = Quote::parse(quote).unwrap();
    match q.report {
        Report::TD10(r) => (r.report_data, r.mr_config_id),
        Report::TD15(r) => (r.base.report_data, r.base.mr_config_id),
        other => panic!("not a TD report: {other:?}"),
    }
}

#[tokio::test]
async fn evidence_through_attestd_parses_and_binds_report_data() {
    let ccel = fixture("CCEL_data_ovmf");
    let p = recorded("tdx_quote_4.dat", Some(&ccel));
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    assert_eq!(a.tee_type().await, "tdx");

    let rd: Vec<u8> = (0..48).collect();
    let ev = a.evidence(&rd).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["cc_eventlog", "quote"]);
    let quote = STANDARD.decode(v["quote"].as_str().unwrap()).unwrap();
    let (report_data, _) = fields(&quote);
    let mut want = rd.clone();
    want.resize(64, 0);
    assert_eq!(
        report_data.to_vec(),
        want,
        "REPORTDATA is the runtime data, zero-padded"
    );
    let log = STANDARD.decode(v["cc_eventlog"].as_str().unwrap()).unwrap();
    assert_eq!(log, std::fs::read(&ccel).unwrap());
    // Everything but REPORTDATA is the recorded quote.
    let recorded = std::fs::read(fixture("tdx_quote_4.dat")).unwrap();
    assert_eq!(quote.len(), recorded.len());
    let differ: Vec<usize> = (0..quote.len())
        .filter(|&i| quote[i] != recorded[i])
        .collect();
    assert!(
        differ.iter().all(|&i| (568..632).contains(&i)),
        "{differ:?}"
    );

    // Golden: the exact bytes for this runtime data.
    let golden =
        std::fs::read_to_string(repo_root().join("tests/golden/tdx-evidence-v4.sha256")).unwrap();
    assert_eq!(hex(&Sha256::digest(&ev)), golden.trim());
}

#[tokio::test]
async fn the_runtime_event_log_follows_the_ccel() {
    // attestd's AAEL records ride in cc_eventlog after the firmware's CCEL, as
    // upstream sends them; without a CCEL there is nothing to append to.
    let dir = tempfile::tempdir().unwrap();
    let aael = dir.path().join("eventlog");
    std::fs::write(&aael, b"aael-records").unwrap();
    let ccel = fixture("CCEL_data_ovmf");
    for (ccel, want) in [
        (
            ccel.clone(),
            Some([std::fs::read(&ccel).unwrap(), b"aael-records".to_vec()].concat()),
        ),
        (PathBuf::from("/nonexistent/CCEL"), None),
    ] {
        let p = tdx(&[
            "--recorded-quote".into(),
            fixture("tdx_quote_4.dat").display().to_string(),
            "--ccel".into(),
            ccel.display().to_string(),
            "--runtime-eventlog".into(),
            aael.display().to_string(),
        ]);
        let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&a.evidence(b"x").await.unwrap()).unwrap();
        let got = v["cc_eventlog"]
            .as_str()
            .map(|s| STANDARD.decode(s).unwrap());
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn v5_quotes_and_absent_ccel() {
    let p = recorded("tdx_quote_5.dat", None);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let ev = a.evidence(b"hello-coco").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    assert!(v["cc_eventlog"].is_null());
    assert!(ev.starts_with(br#"{"cc_eventlog":null,"quote":""#));
    let quote = STANDARD.decode(v["quote"].as_str().unwrap()).unwrap();
    assert_eq!(&fields(&quote).0[..10], b"hello-coco");
}

#[tokio::test]
async fn report_data_of_65_bytes_is_invalid_argument() {
    let p = recorded("tdx_quote_4.dat", None);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.evidence(&[1; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "runtime data for tdx: report data is 65 bytes, more than the 64 bytes this attester accepts"
    );
}

#[tokio::test]
async fn bind_init_data_compares_with_mrconfigid() {
    let p = recorded("tdx_quote_4.dat", None);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (_, mrconfigid) = fields(&std::fs::read(fixture("tdx_quote_4.dat")).unwrap());
    // The recorded MRCONFIGID is what the TD was launched with: binding it succeeds.
    a.bind_init_data(&mrconfigid).await.unwrap();
    // A different digest (a sha256, zero-padded to 48 bytes) is a mismatch showing both.
    let other = Sha256::digest(b"other init-data").to_vec();
    let (code, msg) = status(a.bind_init_data(&other).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    let mut padded = other;
    padded.resize(48, 0);
    assert_eq!(
        msg,
        format!(
            "plugin tdx: init-data digest {} does not match MRCONFIGID {}",
            hex(&padded),
            hex(&mrconfigid)
        )
    );
    // Issue 39: a sha512 digest is compared by its first 48 bytes, as kata
    // puts them in MRCONFIGID and upstream's attester compares them.
    let mut longer = mrconfigid.to_vec();
    longer.resize(64, 0xee);
    a.bind_init_data(&longer).await.unwrap();
    let mut wrong = Sha512::digest(b"other init-data").to_vec();
    let (code, msg) = status(a.bind_init_data(&wrong).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    wrong.truncate(48);
    assert_eq!(
        msg,
        format!(
            "plugin tdx: init-data digest {} (its first 48 bytes) does not match MRCONFIGID {}",
            hex(&wrong),
            hex(&mrconfigid)
        )
    );
    // Past sha512: refused.
    let (code, msg) = status(a.bind_init_data(&[0; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "plugin tdx: init-data digest is 65 bytes; at most 64 (sha512)"
    );
}

#[tokio::test]
async fn missing_device_is_unavailable() {
    let p = tdx(&["--configfs-root".into(), "/nonexistent/tsm/report".into()]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.evidence(b"x").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    assert_eq!(
        msg,
        "plugin tdx: cannot create a configfs-tsm report entry: No such file or directory (os error 2)"
    );
}

#[test]
fn truncated_or_flipped_recordings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = std::fs::read(fixture("tdx_quote_4.dat")).unwrap();
    let short = dir.path().join("short.dat");
    std::fs::write(&short, &q[..600]).unwrap();
    let p = tdx(&["--recorded-quote".into(), short.display().to_string()]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr.contains(&format!(
            "error: recorded quote {}: TDX quote is 600 bytes: truncated",
            short.display()
        )),
        "{}",
        e.stderr
    );
    // A flipped TEE-type byte: not a TDX quote.
    let mut flipped = q.clone();
    flipped[4] ^= 0x80;
    let f = dir.path().join("flipped.dat");
    std::fs::write(&f, &flipped).unwrap();
    let p = tdx(&["--recorded-quote".into(), f.display().to_string()]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr.contains("quote TEE type 0x1 is not TDX (0x81)"),
        "{}",
        e.stderr
    );
}

#[tokio::test]
async fn rtmrs_through_the_kernel_interface_when_present() {
    use attestd_e2e::connect_plugin;
    use attester_sdk::{Code, Transport, PROTOCOL_VERSIONS};
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("measurements");
    std::fs::create_dir(&m).unwrap();
    for i in 0..4 {
        std::fs::write(m.join(format!("rtmr{i}:sha384")), [0u8; 48]).unwrap();
    }
    for (measurements, enabled) in [(m.clone(), true), (dir.path().join("none"), false)] {
        let sock = dir.path().join(format!("tdx-{enabled}.sock"));
        let mut child = std::process::Command::new(attester_bin("tdx", "attester-tdx"))
            .arg("--recorded-quote")
            .arg(fixture("tdx_quote_4.dat"))
            .arg("--measurements")
            .arg(&measurements)
            .arg("--socket")
            .arg(&sock)
            .spawn()
            .unwrap();
        let c = connect_plugin(&sock, Transport::Ttrpc, std::time::Duration::from_secs(10)).await;
        let hs = c.handshake(PROTOCOL_VERSIONS).await.unwrap();
        let caps = &hs.info.capabilities;
        assert_eq!(caps.runtime_measurement, enabled);
        assert!(c.detect().await.unwrap());
        if enabled {
            assert_eq!(caps.measurement_hash.as_deref(), Some("sha384"));
            let rtmr = |pcr: u64| {
                caps.register_map
                    .iter()
                    .find(|r| r.pcr == pcr)
                    .unwrap()
                    .register
            };
            assert_eq!(
                [rtmr(1), rtmr(7), rtmr(2), rtmr(8), rtmr(15), rtmr(17)],
                [0, 0, 1, 2, 2, 3]
            );
            // PCR 24 and up go to RTMR 3 too, as upstream maps them.
            assert_eq!(caps.default_register, Some(3));
            assert!(caps.register_map.iter().all(|r| r.pcr < 24));
            c.extend_measurement(3, vec![5; 48]).await.unwrap();
            assert_eq!(std::fs::read(m.join("rtmr3:sha384")).unwrap(), vec![5; 48]);
            assert_eq!(c.read_measurement(3).await.unwrap(), vec![5; 48]);
            let e = c.extend_measurement(3, vec![5; 32]).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        } else {
            let e = c.extend_measurement(3, vec![5; 48]).await.unwrap_err();
            assert_eq!(e.code(), Code::Unsupported);
            assert_eq!(
                e.message(),
                "runtime measurement (no RTMR interface) is not supported by this attester"
            );
        }
        attestd_e2e::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        child.wait().unwrap();
    }
}

#[tokio::test]
async fn a_slow_quote_does_not_starve_health_checks() {
    // The firmware takes 1.5 s per quote; health checks run every 200 ms with a
    // 100 ms deadline. Quote generation used to block the plugin's only runtime
    // thread: two missed checks, and the core killed the plugin mid-request.
    let ev = attestd_e2e::evidence_from_a_slow_device(&recorded("tdx_quote_4.dat", None)).await;
    assert!(ev["quote"].is_string());
}

/// Issue 41 (high): init-data acts on nothing before the TEE has compared its
/// digest. A forged init-data (its digest is not the TD's MRCONFIGID) whose
/// configuration turns the event log on at a path of its choosing: attestd
/// stops with the binding's error, and neither the event log's directory
/// exists nor any RTMR moved. The same configuration without init-data does
/// both (so the test would see them).
#[test]
fn forged_init_data_makes_no_directory_and_extends_no_register() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("measurements");
    std::fs::create_dir(&m).unwrap();
    for i in 0..4 {
        std::fs::write(m.join(format!("rtmr{i}:sha384")), [0u8; 48]).unwrap();
    }
    let rtmrs = || -> Vec<Vec<u8>> {
        (0..4)
            .map(|i| std::fs::read(m.join(format!("rtmr{i}:sha384"))).unwrap())
            .collect()
    };
    let p = tdx(&[
        "--recorded-quote".into(),
        fixture("tdx_quote_4.dat").display().to_string(),
        "--ccel".into(),
        "/nonexistent/CCEL".into(),
        "--runtime-eventlog".into(),
        "/nonexistent/eventlog".into(),
        "--measurements".into(),
        m.display().to_string(),
    ]);
    let log_dir = dir.path().join("chosen-by-init-data");
    let with_log = |d: &Path| {
        format!(
            "[eventlog_config]\nenable_eventlog = true\npath = {:?}\n\n{}",
            log_dir.join("eventlog").display().to_string(),
            config(d, &p, &[], "")
        )
    };
    let forged = dir.path().join("initdata.toml");
    std::fs::write(
        &forged,
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = \"\"\n",
    )
    .unwrap();
    let e = Attestd::start_with(with_log, &["--initdata-toml", forged.to_str().unwrap()])
        .err()
        .expect("a forged init-data must stop attestd");
    assert!(
        e.stderr.contains("init-data binding failed") && e.stderr.contains("MRCONFIGID"),
        "{}",
        e.stderr
    );
    assert!(!log_dir.exists(), "the event log's directory was made");
    assert_eq!(rtmrs(), vec![vec![0u8; 48]; 4], "a register was extended");

    let a = Attestd::start(with_log).unwrap_or_else(|e| panic!("{}", e.stderr));
    assert!(log_dir.join("eventlog").is_file());
    assert_ne!(rtmrs(), vec![vec![0u8; 48]; 4]);
    drop(a);
}

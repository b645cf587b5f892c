//! `attestd conformance` against the attesters in this repository (the Azure ones,
//! which need a fake IMDS, are in azure.rs), and against plugins that break the
//! contract: each check says pass, fail or skip, and a broken plugin fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd_e2e::swtpm::Swtpm;
use attestd_e2e::{attestd_cli, attester_bin, bin, repo_root};

/// The kit's JSON report for `command` served over `transport`, and whether it passed.
pub fn conformance(transport: &str, command: &[String]) -> (bool, serde_json::Value, String) {
    let mut args = vec!["conformance", "--json", "--transport", transport, "--"];
    args.extend(command.iter().map(String::as_str));
    let (st, out, err) = attestd_cli(&args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (st.success(), v, err)
}

fn outcome<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:#}"))["outcome"]
        .as_str()
        .unwrap()
}

fn assert_conforms(transport: &str, command: &[String]) -> serde_json::Value {
    let (ok, v, err) = conformance(transport, command);
    assert!(ok, "{command:?}: {v:#}\n{err}");
    let fails: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .collect();
    assert!(fails.is_empty(), "{fails:#?}");
    assert_eq!(
        outcome(&v, "SIGTERM: exits 0, socket removed"),
        "pass",
        "{v:#}"
    );
    v
}

#[test]
fn the_sample_conforms_on_both_transports_and_as_a_device() {
    let sample = bin("attester-sample").display().to_string();
    for transport in ["ttrpc", "grpc"] {
        let v = assert_conforms(transport, std::slice::from_ref(&sample));
        assert_eq!(outcome(&v, "report data at the limit"), "pass");
        assert_eq!(outcome(&v, "evidence is compact JSON, keys sorted"), "pass");
    }
    let v = assert_conforms(
        "ttrpc",
        &[
            sample,
            "--device".into(),
            "--init-data-digest".into(),
            "ab".repeat(32),
        ],
    );
    assert_eq!(outcome(&v, "init-data compare"), "pass");
}

#[test]
fn the_tpm_attester_conforms_on_swtpm() {
    let tpm = Swtpm::start();
    let cmd = attester_bin("tpm", "attester-tpm").display().to_string();
    let v = assert_conforms("ttrpc", &[cmd, "--tcti".into(), tpm.tcti()]);
    assert_eq!(outcome(&v, "report data at the limit"), "pass");
    // The quote's qualifying data is 32 bytes: upstream's TPM attester cuts the
    // rest, and the kit says so.
    let visible = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "report data visible in the evidence")
        .unwrap();
    assert!(
        visible["detail"]
            .as_str()
            .unwrap()
            .starts_with("only its first 32 bytes (the rest is not bound), in /"),
        "{visible}"
    );
    assert_eq!(outcome(&v, "advertised register read answers"), "pass");
}

#[test]
fn the_tdx_and_snp_attesters_conform_on_recorded_devices() {
    let tdx = repo_root().join("attesters/tdx/tests/fixtures");
    let cmd = attester_bin("tdx", "attester-tdx").display().to_string();
    let v = assert_conforms(
        "ttrpc",
        &[
            cmd,
            "--recorded-quote".into(),
            tdx.join("tdx_quote_4.dat").display().to_string(),
            "--ccel".into(),
            "/nonexistent/CCEL".into(),
            "--runtime-eventlog".into(),
            "/nonexistent/eventlog".into(),
        ],
    );
    assert_eq!(outcome(&v, "report data at the limit"), "pass");
    let snp = repo_root().join("attesters/snp/tests/fixtures");
    let cmd = attester_bin("snp", "attester-snp").display().to_string();
    let v = assert_conforms(
        "ttrpc",
        &[
            cmd,
            "--recorded-report".into(),
            snp.join("test-report.bin").display().to_string(),
            "--recorded-cert".into(),
            format!("vcek={}", snp.join("test-vcek.der").display()),
        ],
    );
    assert_eq!(outcome(&v, "report data at the limit"), "pass");
}

#[test]
fn a_plugin_that_breaks_the_contract_fails_it() {
    let test = bin("attester-test").display().to_string();
    // Another protocol version: the handshake fails, and so does the kit.
    let (ok, v, _) = conformance(
        "ttrpc",
        &[test.clone(), "--protocol-version".into(), "99".into()],
    );
    assert!(!ok);
    assert_eq!(outcome(&v, "handshake"), "fail", "{v:#}");
    // A TEE name neither kbs-types' nor a third party's.
    let (ok, v, _) = conformance("ttrpc", &[test.clone(), "--tee".into(), "tdx2".into()]);
    assert!(!ok);
    assert_eq!(outcome(&v, "tee name"), "fail", "{v:#}");
    // Each of these fails its check, and only it, with the reason.
    for (mode, check, why) in [
        (
            "ignore-report-data",
            "other report data, other evidence",
            "it ignores the report data",
        ),
        (
            "ignore-report-data",
            "report data visible in the evidence",
            "neither the report data nor its SHA-256/384/512 is in the evidence",
        ),
        (
            "hide-report-data",
            "report data visible in the evidence",
            "neither the report data nor its SHA-256/384/512 is in the evidence",
        ),
        ("slow-detect", "detect answers", "Detect must be cheap"),
        (
            "blocking-evidence",
            "health answers while evidence is busy",
            "no answer within 2000 ms while evidence was in flight",
        ),
    ] {
        let (ok, v, err) = conformance("ttrpc", &[test.clone(), "--mode".into(), mode.into()]);
        assert!(!ok, "{mode}: {v:#}\n{err}");
        let fails: Vec<&serde_json::Value> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == "fail")
            .collect();
        // Evidence that ignores the report data also hides it: two checks fail.
        let expected = if mode == "ignore-report-data" { 2 } else { 1 };
        assert_eq!(fails.len(), expected, "{mode}: {v:#}");
        let failed = fails
            .iter()
            .find(|c| c["name"] == check)
            .unwrap_or_else(|| panic!("{mode}: {check} did not fail: {v:#}"));
        let detail = failed["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{mode}: {detail}");
    }
    // A third party's TEE name passes, and says what a KBS will make of it.
    let v = assert_conforms("ttrpc", &[test, "--tee".into(), "x-hello".into()]);
    assert_eq!(outcome(&v, "tee name"), "pass");
}

#[test]
fn a_running_plugin_is_checked_by_its_socket_without_the_sigterm_check() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("s.sock");
    let mut child = std::process::Command::new(bin("attester-sample"))
        .arg("--socket")
        .arg(&sock)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (st, out, err) = attestd_cli(&["conformance", "--socket", sock.to_str().unwrap()]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(st.success(), "{out}\n{err}");
    assert!(
        out.contains("SKIP SIGTERM: exits 0, socket removed: not started by the kit"),
        "{out}"
    );
    assert!(out.ends_with("13 passed, 0 failed, 1 skipped\n"), "{out}");
    // The sample binds the report data: the kit says where it found it.
    assert!(
        out.contains(
            "PASS report data visible in the evidence: the report data, in /report_data (base64)"
        ),
        "{out}"
    );
}

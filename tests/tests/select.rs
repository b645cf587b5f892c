//! Per-platform selection on fake sysroots: `attestd select` probes the tree in
//! upstream's precedence and confirms with the candidate plugin's Detect (the real
//! TDX and SNP plugins, pointed into the tree), and `primary = "auto"` starts what
//! it selects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use attestd_e2e::{attestd_cli, attester_bin, Attestd};

fn tree(files: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for p in files {
        let (path, content) = p.split_once('=').unwrap_or((p, ""));
        let f = t.path().join(path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, content).unwrap();
    }
    t
}

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A config with a locked image for every TEE (never started: --no-confirm).
fn lock_config(dir: &Path, sample: bool) -> std::path::PathBuf {
    let mut lock = String::new();
    for tee in ["tdx", "az-tdx-vtpm", "az-snp-vtpm", "snp", "tpm"] {
        lock.push_str(&format!(
            "[images.{tee}]\nimage = \"localhost/attestd/attester-{tee}\"\ndigest = \"{DIGEST}\"\ntransport = \"ttrpc\"\napi = 1\n"
        ));
    }
    std::fs::write(dir.join("images.lock"), lock).unwrap();
    let mut cfg = format!(
        "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"auto\"\nsocket_dir = {:?}\nimages_lock = {:?}\n",
        dir.join("plugins").display().to_string(),
        dir.join("images.lock").display().to_string()
    );
    if sample {
        cfg.push_str(&format!(
            "[plugins.attester.sample]\nlaunch = \"process\"\ncommand = {:?}\ntransport = \"ttrpc\"\n",
            attestd_e2e::bin("attester-sample").display().to_string()
        ));
    }
    let f = dir.join("attestd.toml");
    std::fs::write(&f, cfg).unwrap();
    f
}

fn select(cfg: &Path, root: &Path, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let mut args = vec![
        "select",
        "-c",
        cfg.to_str().unwrap(),
        "--sysroot",
        root.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    let (status, out, err) = attestd_cli(&args);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (status.success(), v, err)
}

#[test]
fn probes_follow_upstream_precedence() {
    let d = tempfile::tempdir().unwrap();
    let cfg = lock_config(d.path(), false);
    let azure = "sys/class/dmi/id/sys_vendor=Microsoft Corporation\n";
    let cases: [(&[&str], &str); 5] = [
        (&["dev/tdx_guest", "dev/sev-guest", "dev/tpmrm0"], "tdx"),
        // An Azure CVM also shows a TPM and may show sev-guest: az-tdx first.
        (&[azure, "dev/tpm0", "dev/sev-guest"], "az-tdx-vtpm"),
        (&["dev/sev-guest", "dev/tpmrm0"], "snp"),
        (&["sys/devices/platform/sev-guest/uevent"], "snp"),
        (&["dev/tpmrm0"], "tpm"),
    ];
    for (files, want) in cases {
        let root = tree(files);
        let (ok, v, err) = select(&cfg, root.path(), &["--no-confirm"]);
        assert!(ok, "{files:?}: {err}");
        assert_eq!(v["tee"], want, "{files:?}");
        assert_eq!(
            v["image"],
            format!("localhost/attestd/attester-{want}@{DIGEST}"),
            "the locked image, pinned"
        );
        assert_eq!(v["launch"], "podman");
        assert_eq!(v["probes"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn nothing_found_lists_what_was_probed() {
    let d = tempfile::tempdir().unwrap();
    let root = tree(&[]);
    let (ok, _, err) = select(
        &lock_config(d.path(), false),
        root.path(),
        &["--no-confirm"],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "no TEE selected under {}: probed tdx (not found); az-tdx-vtpm (not found); az-snp-vtpm (not found); snp (not found); tpm (not found); no [plugins.attester.sample] is configured (attestd never falls back to it unasked)",
            root.path().display()
        )),
        "{err}"
    );
    // With the sample configured, it is the answer.
    let (ok, v, err) = select(&lock_config(d.path(), true), root.path(), &[]);
    assert!(ok, "{err}");
    assert_eq!(v["tee"], "sample");
}

#[test]
fn the_daemon_finding_no_tee_exits_with_its_own_status() {
    // The pod VM's unit does not restart this status (RestartPreventExitStatus):
    // a machine does not become a TEE by trying again. The message is the one
    // `attestd select` prints.
    let d = tempfile::tempdir().unwrap();
    let cfg = lock_config(d.path(), false);
    let base = std::fs::read_to_string(&cfg).unwrap();
    let daemon = |root: &Path| {
        std::fs::write(
            &cfg,
            format!("{base}sysroot = {:?}\n", root.display().to_string()),
        )
        .unwrap();
        let out = std::process::Command::new(attestd_e2e::bin("attestd"))
            .arg("-c")
            .arg(&cfg)
            .arg("--attestation_sock")
            .arg(format!("unix://{}/aa.sock", d.path().display()))
            .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let root = tree(&[]);
    let started = std::time::Instant::now();
    let (code, err) = daemon(root.path());
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with(&format!(
            "error: no TEE selected under {}: probed tdx (not found);",
            root.path().display()
        ))),
        "{err}"
    );
    // Only after probing again for [plugins] no_tee_settle_ms (3 s by default).
    assert!(
        err.contains("tpm (not found) (and again for 3000 ms)"),
        "{err}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    // A device node that appears meanwhile (udev's coldplug at boot) is found:
    // here its plugin's image is in no store, so attestd fails, to be retried.
    let late = tree(&[]);
    let dev = late.path().join("dev");
    let appear = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("tpmrm0"), "").unwrap();
    });
    let (code, err) = daemon(late.path());
    appear.join().unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tpm (found: /dev/tpmrm0)"), "{err}");
    // A TEE found whose plugin does not start (its pinned image is in no store
    // here) may start on a retry: an ordinary failure, which systemd retries.
    let tpm = tree(&["dev/tpmrm0"]);
    let (code, err) = daemon(tpm.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no TEE selected under"), "{err}");
    assert!(err.contains("; tpm skipped: "), "{err}");
    // So is any other failure to start.
    std::fs::write(&cfg, "[plugins]\nprimary = \"nosuch\"\n").unwrap();
    let out = std::process::Command::new(attestd_e2e::bin("attestd"))
        .arg("-c")
        .arg(&cfg)
        .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real TDX and SNP plugins, their device paths pointed into `root`.
fn detect_config(dir: &Path, root: &Path, tdx_dev: &Path) -> std::path::PathBuf {
    let cfg = format!(
        "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"auto\"\nsocket_dir = {sock:?}\nimages_lock = {lock:?}\nsysroot = {root:?}\n\
         [plugins.attester.tdx]\nlaunch = \"process\"\ncommand = {tdx:?}\ntransport = \"ttrpc\"\n\
         args = [\"--dev\", {dev:?}, \"--configfs-root\", \"/nonexistent\", \"--recorded-quote\", {quote:?}, \"--ccel\", \"/nonexistent\"]\n\
         [plugins.attester.snp]\nlaunch = \"process\"\ncommand = {snp:?}\ntransport = \"ttrpc\"\n\
         args = [\"--backend\", \"configfs-tsm\", \"--configfs-root\", \"/nonexistent\", \"--platform\", {platform:?}]\n",
        sock = dir.join("plugins").display().to_string(),
        lock = dir.join("none.lock").display().to_string(),
        root = root.display().to_string(),
        tdx = attester_bin("tdx", "attester-tdx").display().to_string(),
        snp = attester_bin("snp", "attester-snp").display().to_string(),
        dev = tdx_dev.display().to_string(),
        quote = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../attesters/tdx/tests/fixtures/tdx_quote_4.dat")
            .display()
            .to_string(),
        platform = root.join("dev/sev-guest").display().to_string(),
    );
    let f = dir.join("detect.toml");
    std::fs::write(&f, cfg).unwrap();
    f
}

#[test]
fn detect_confirms_or_passes_to_the_next_candidate() {
    let d = tempfile::tempdir().unwrap();
    let root = tree(&["dev/tdx_guest", "dev/sev-guest"]);
    // The TDX plugin sees its device: confirmed.
    let cfg = detect_config(d.path(), root.path(), &root.path().join("dev/tdx_guest"));
    let (ok, v, err) = select(&cfg, root.path(), &[]);
    assert!(ok, "{err}");
    assert_eq!(
        (v["tee"].as_str(), v["confirmed"].as_bool()),
        (Some("tdx"), Some(true))
    );

    // It does not (the probe was fooled): SNP, next in precedence, is confirmed.
    // The recorded device is configfs emulated in-process, so point --dev away and
    // drop the recording: the plugin then looks at an empty configfs.
    let cfg = detect_config(d.path(), root.path(), Path::new("/nonexistent/tdx_guest"));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"--recorded-quote\", ", "\"--measurements\", ");
    std::fs::write(&cfg, text).unwrap();
    let (ok, v, err) = select(&cfg, root.path(), &[]);
    assert!(ok, "{err}");
    assert_eq!(v["tee"], "snp");
    assert_eq!(v["skipped"][0]["tee"], "tdx");
    assert_eq!(v["skipped"][0]["why"], "the plugin's Detect answered false");
}

#[tokio::test]
async fn primary_auto_runs_what_selection_confirms() {
    let d = tempfile::tempdir().unwrap();
    let root = tree(&["dev/tdx_guest"]);
    let cfg = detect_config(d.path(), root.path(), &root.path().join("dev/tdx_guest"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let a = Attestd::start(|dir| {
        text.replace(
            &d.path().join("plugins").display().to_string(),
            &dir.join("plugins").display().to_string(),
        )
    })
    .unwrap();
    assert_eq!(a.tee_type().await, "tdx");
    let ev = a.evidence(b"auto").await.unwrap();
    assert!(ev.starts_with(br#"{"cc_eventlog":null,"quote":""#));
    assert!(a.log().contains("selected tee=tdx"), "{}", a.log());
}

/// Both Azure plugins on recorded HCL reports (`hcl` for each), on a tree that looks
/// like an Azure CVM.
fn azure_config(dir: &Path, root: &Path, hcl: &str) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../attesters/azure/tests/fixtures")
        .join(hcl)
        .display()
        .to_string();
    let mut cfg = format!(
        "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"auto\"\nsocket_dir = {:?}\nimages_lock = {:?}\nsysroot = {:?}\n",
        dir.join("plugins").display().to_string(),
        dir.join("none.lock").display().to_string(),
        root.display().to_string(),
    );
    for tee in ["az-tdx-vtpm", "az-snp-vtpm"] {
        cfg.push_str(&format!(
            "[plugins.attester.{tee}]\nlaunch = \"process\"\ncommand = {:?}\ntransport = \"grpc\"\nargs = [\"--recorded-hcl-report\", {fixture:?}]\n",
            attester_bin(tee, &format!("attester-{tee}")).display().to_string(),
        ));
    }
    let f = dir.join("azure.toml");
    std::fs::write(&f, cfg).unwrap();
    f
}

/// On an Azure CVM the probe cannot tell SNP from TDX; the plugins' Detect (the HCL
/// report's type) does: az-tdx-vtpm, first in precedence, never claims an SNP CVM.
#[test]
fn azure_detect_tells_snp_from_tdx() {
    let d = tempfile::tempdir().unwrap();
    let root = tree(&[
        "sys/class/dmi/id/sys_vendor=Microsoft Corporation\n",
        "dev/tpm0",
    ]);

    let cfg = azure_config(d.path(), root.path(), "snp-hcl-report.bin");
    let (ok, v, err) = select(&cfg, root.path(), &[]);
    assert!(ok, "{err}");
    assert_eq!(
        (v["tee"].as_str(), v["confirmed"].as_bool()),
        (Some("az-snp-vtpm"), Some(true))
    );
    assert_eq!(v["skipped"][0]["tee"], "az-tdx-vtpm");
    assert_eq!(v["skipped"][0]["why"], "the plugin's Detect answered false");

    let cfg = azure_config(d.path(), root.path(), "tdx-hcl-report.bin");
    let (ok, v, err) = select(&cfg, root.path(), &[]);
    assert!(ok, "{err}");
    assert_eq!(
        (v["tee"].as_str(), v["confirmed"].as_bool()),
        (Some("az-tdx-vtpm"), Some(true))
    );
}

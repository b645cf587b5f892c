//! A third party's plugin for a TEE the core has never heard of, as its author
//! ships it: `tests/plugins/x-hello`, a crate outside the workspace built against
//! the SDK as docs/plugin-authors.md says, checked by the conformance kit, built
//! into its own pinned image by `containers/build.sh --plugin`, selected by
//! `primary = "auto"` through the probe its image declares, and run by podman.
//! Needs root (a device node), podman and runc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use attestd_e2e::{attestd_cli, config, repo_root, Attestd, Plugin};

const DEVICE: &str = "/dev/x-hello-guest";

fn status(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
        other => panic!("not a status: {other:?}"),
    }
}

/// The TEE's guest device for the test's length: a second null device (1:3),
/// which the plugin opens and reads nothing from.
struct Device;

impl Device {
    fn create() -> Device {
        let _ = std::fs::remove_file(DEVICE);
        let st = Command::new("mknod")
            .args([DEVICE, "c", "1", "3"])
            .status()
            .unwrap();
        assert!(st.success(), "mknod {DEVICE} (the test needs root)");
        Device
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(DEVICE);
    }
}

/// `containers/build.sh --plugin tests/plugins/x-hello` into a lock of its own:
/// the lock's text, and the staged binary the image holds.
fn build_image(lock: &Path) -> (String, PathBuf) {
    let out = Command::new(repo_root().join("containers/build.sh"))
        .arg("--lock")
        .arg(lock)
        .arg("--plugin")
        .arg(repo_root().join("tests/plugins/x-hello"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(lock).unwrap(),
        repo_root().join("containers/build/x-hello/rootfs/attester"),
    )
}

#[tokio::test]
async fn a_third_partys_plugin_ships_in_its_own_pinned_image_and_auto_selects_it() {
    let _device = Device::create();
    let d = tempfile::tempdir().unwrap();
    let lock = d.path().join("images.lock");
    let (text, shipped) = build_image(&lock);
    let v: toml::Value = toml::from_str(&text).unwrap();
    let entry = &v["images"]["x-hello"];
    assert_eq!(
        entry["image"].as_str(),
        Some("localhost/attestd/attester-x-hello")
    );
    assert!(entry["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(entry["probe"].as_array().unwrap()[0].as_str(), Some(DEVICE));
    assert_eq!(
        entry["devices"].as_array().unwrap()[0].as_str(),
        Some(DEVICE)
    );
    // The image's labels declare what the lock copied, and it is FROM scratch:
    // the plugin alone, static.
    let image = format!(
        "{}@{}",
        entry["image"].as_str().unwrap(),
        entry["digest"].as_str().unwrap()
    );
    let labels = Command::new("podman")
        .args(["image", "inspect", "--format", "{{json .Labels}}", &image])
        .output()
        .unwrap();
    assert!(labels.status.success());
    let labels: serde_json::Value = serde_json::from_slice(&labels.stdout).unwrap();
    assert_eq!(labels["org.attestd.tee"], "x-hello");
    assert_eq!(labels["org.attestd.probe"], "[\"/dev/x-hello-guest\"]");
    let ldd = Command::new("ldd").arg(&shipped).output().unwrap();
    assert!(
        String::from_utf8_lossy(&ldd.stdout).contains("statically linked")
            || String::from_utf8_lossy(&ldd.stderr).contains("not a dynamic executable"),
        "{ldd:?}"
    );

    // The shipped binary passes the strengthened conformance kit.
    let (st, out, err) = attestd_cli(&["conformance", "--", shipped.to_str().unwrap()]);
    assert!(st.success(), "{out}\n{err}");
    assert!(out.ends_with("14 passed, 0 failed, 0 skipped\n"), "{out}");
    assert!(
        out.contains(
            "PASS report data visible in the evidence: the report data as hex, in /report_data"
        ),
        "{out}"
    );

    // `primary = "auto"` on a tree whose only marker is the declared probe:
    // attestd selects x-hello, podman runs its pinned image with the device,
    // and its Detect (inside the container) confirms.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("dev")).unwrap();
    std::fs::write(root.path().join("dev/x-hello-guest"), "").unwrap();
    let a = Attestd::start(|dir| {
        format!(
            "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"auto\"\nauto_launch = \"podman\"\nsocket_dir = {:?}\nimages_lock = {:?}\nsysroot = {:?}\n",
            dir.join("plugins").display().to_string(),
            lock.display().to_string(),
            root.path().display().to_string(),
        )
    })
    .unwrap();
    assert_eq!(a.tee_type().await, "x-hello");
    let ev: serde_json::Value =
        serde_json::from_slice(&a.evidence(b"hello-third-party").await.unwrap()).unwrap();
    let mut rd = b"hello-third-party".to_vec();
    rd.resize(64, 0);
    assert_eq!(ev["report_data"], hex::encode(&rd));
    // The device the image declared is the one the plugin opened.
    let rdev = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(DEVICE).unwrap().rdev()
    };
    assert_eq!(ev["device"], rdev);
    assert!(a.log().contains("selected tee=x-hello"), "{}", a.log());
    // Podman runs it from the pinned image, with the declared device and no other.
    let ps = Command::new("podman")
        .args(["ps", "--format", "{{.ImageID}} {{.Names}}", "--filter"])
        .arg(format!(
            "label=org.attestd.socket-dir={}",
            a.dir.path().join("plugins").display()
        ))
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    let digest = entry["digest"].as_str().unwrap();
    let image_id = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap();
    let image_id = String::from_utf8_lossy(&image_id.stdout).trim().to_string();
    assert_eq!(ps.lines().count(), 1, "{ps}");
    assert!(
        image_id.starts_with(ps.split(' ').next().unwrap()),
        "{ps} vs {image_id} ({digest})"
    );
    let name = ps.trim().split(' ').nth(1).unwrap().to_string();
    let devices = Command::new("podman")
        .args(["inspect", "--format", "{{json .HostConfig.Devices}}", &name])
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&devices.stdout).into_owned();
    assert!(
        devices.contains("\"PathOnHost\":\"/dev/x-hello-guest\""),
        "{devices}"
    );
    assert!(a.stop().success());

    // Without the marker, `attestd select` says what it looked for.
    std::fs::remove_file(root.path().join("dev/x-hello-guest")).unwrap();
    let cfg_text = format!(
        "[plugins]\nprimary = \"auto\"\nimages_lock = {:?}\n",
        lock.display().to_string()
    );
    std::fs::write(d.path().join("select.toml"), cfg_text).unwrap();
    let (st, _, err) = attestd_cli(&[
        "select",
        "-c",
        d.path().join("select.toml").to_str().unwrap(),
        "--sysroot",
        root.path().to_str().unwrap(),
        "--no-confirm",
    ]);
    assert!(!st.success());
    assert!(
        err.contains("snp (not found); x-hello (not found); tpm (not found)"),
        "{err}"
    );
}

/// A TEE name the core never heard of: GetTeeType answers it, the event log
/// records it in the plugin's identity, and GetToken("kbs") refuses it with why.
#[tokio::test]
async fn a_third_partys_tee_is_answered_measured_and_refused_by_the_kbs_protocol() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("eventlog");
    let plugin = Plugin::test("ttrpc", &["--tee", "x-acme", "--registers"]);
    let a = Attestd::start(|dir| {
        format!(
            "{}\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 17\npath = {:?}\n\n[token_configs.kbs]\nurl = \"http://127.0.0.1:9\"\n",
            config(dir, &plugin, &[], ""),
            log.display().to_string()
        )
    })
    .unwrap();
    assert_eq!(a.tee_type().await, "x-acme");
    assert!(!a.evidence(b"x").await.unwrap().is_empty());
    let (code, msg) = status(a.get_token("kbs").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("the KBS protocol cannot name TEE \"x-acme\": kbs-types knows tdx, snp"),
        "{msg}"
    );
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        text.contains("LoadAttester {") && text.contains("\"tee\":\"x-acme\""),
        "{text}"
    );
    assert!(a.stop().success());
}

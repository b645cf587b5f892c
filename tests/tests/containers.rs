//! The container launch backends with real containers: the sample attester image
//! built by `containers/build.sh` (FROM scratch, pinned in containers/images.lock),
//! started by attestd through podman (runc) and as an OCI bundle run by runc, and
//! an externally started plugin. Needs root, podman, runc, skopeo and umoci
//! (scripts/test.sh installs them and builds the image first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attestd_e2e::{
    attestd_cli, find_process, locked_image, signal, spawn_plugin, Attestd, PodmanContainer,
    Reaped, StartFailure,
};
use nix::sys::signal::Signal;

/// A config whose primary plugin `sample` is described by `table` (TOML lines).
fn config(d: &Path, table: &str, plugins: &str) -> String {
    format!(
        "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"sample\"\nsocket_dir = {:?}\noci_dir = {:?}\n{plugins}\n[plugins.attester.sample]\ntransport = \"ttrpc\"\n{table}\n",
        d.join("plugins").display().to_string(),
        d.join("oci").display().to_string(),
    )
}

fn image_table(launch: &str, image: &str) -> String {
    format!("launch = {launch:?}\nimage = {image:?}\n")
}

fn pinned() -> String {
    let (name, digest) = locked_image("sample");
    format!("{name}@{digest}")
}

fn start(launch: &str, image: &str, plugins: &str) -> Result<Attestd, StartFailure> {
    Attestd::start(|d| config(d, &image_table(launch, image), plugins))
}

/// The evidence the process backend gives: what every backend must give.
fn expected(rd: &[u8]) -> Vec<u8> {
    attester_sample::evidence(rd).unwrap().bytes
}

#[tokio::test]
async fn podman_and_oci_serve_what_the_process_backend_serves() {
    let image = pinned();
    for launch in ["podman", "oci"] {
        let a = start(launch, &image, "").unwrap();
        assert_eq!(a.tee_type().await, "sample");
        assert_eq!(
            a.evidence(b"hello-coco").await.unwrap(),
            expected(b"hello-coco"),
            "{launch}"
        );
        // The plugin's identity, as `attestd plugins` shows it.
        let cfg = a.dir.path().join("attestd.toml");
        let (status, out, err) = attestd_cli(&["plugins", "-c", cfg.to_str().unwrap(), "--json"]);
        assert!(status.success(), "{launch}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let p = &v[0]["probe"]["provenance"];
        assert_eq!(p["launch"], launch);
        assert_eq!(p["image"], image.as_str());
        assert_eq!(p["digest"], locked_image("sample").1.as_str());
        assert_eq!(v[0]["probe"]["health"], "serving");
        // Issue 38: the container sees its own socket's directory, never
        // attestd's (its lock and control socket) nor another plugin's.
        let socket_dir = a.dir.path().join("plugins");
        let sock = socket_dir.join("sample/sample.sock");
        let pid = container_process(&sock).expect("the plugin's process");
        let inside = |p: &Path| PathBuf::from(format!("/proc/{pid}/root{}", p.display()));
        // (The oci backend's unpacked root, shared by every start, holds the
        // empty mount points of other starts' directories: nothing of attestd's.)
        let seen: Vec<String> = std::fs::read_dir(inside(&socket_dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            seen.contains(&"sample".to_string()) && !seen.iter().any(|n| n.starts_with('.')),
            "{launch}: what the plugin sees of {}: {seen:?}",
            socket_dir.display()
        );
        assert!(inside(&sock).exists(), "{launch}");
        assert!(
            socket_dir.join(".control.sock").exists(),
            "{launch}: attestd's own is there"
        );
        let status = a.stop();
        assert!(status.success(), "{launch}: {status:?}");
    }
}

/// The pid of the container process serving on `sock` (`/attester --socket
/// <sock> …`, as the host sees it; podman's and runc's own argv name the
/// socket too).
fn container_process(sock: &Path) -> Option<u32> {
    let want = sock.display().to_string();
    find_process(|args| args.first() == Some(&&b"/attester"[..]) && args.contains(&want.as_bytes()))
}

#[test]
fn a_tag_is_refused_without_dev_mode_and_warned_with_it() {
    let (name, _) = locked_image("sample");
    let tagged = format!("{name}:0.1.0");
    let e = start("podman", &tagged, "").err().unwrap();
    assert!(
        e.stderr.contains(&format!(
            "plugins.attester.sample.image: \"{tagged}\" is a mutable tag: pin it by digest (name@sha256:<digest>), or set [plugins] dev_mode = true for development"
        )),
        "{}",
        e.stderr
    );
    let a = start("podman", &tagged, "dev_mode = true").unwrap();
    assert!(
        a.log()
            .contains("dev_mode: starting an image by its mutable tag"),
        "{}",
        a.log()
    );
}

#[test]
fn a_digest_mismatch_is_refused_naming_both() {
    let (name, digest) = locked_image("sample");
    let wrong = format!("sha256:{}", "0".repeat(64));
    for launch in ["podman", "oci"] {
        let e = start(launch, &format!("{name}@{wrong}"), "").err().unwrap();
        assert!(
            e.stderr.contains(&format!(
                "image {name}@{wrong} is not in podman's store: the local {name} has {digest}; the pin is {wrong}"
            )),
            "{launch}: {}",
            e.stderr
        );
    }
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let missing = format!(
        "localhost/attestd/no-such-attester@sha256:{}",
        "1".repeat(64)
    );
    let e = start("podman", &missing, "").err().unwrap();
    assert!(
        e.stderr.contains(&format!(
            "cannot start plugin sample: image {missing} is not in podman's store (no image named localhost/attestd/no-such-attester at all): build it with containers/build.sh"
        )),
        "{}",
        e.stderr
    );
}

/// Wait until `f` holds (bounded: a hang fails the test instead of stalling it).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn podman_containers(label_dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("podman")
        .args(["ps", "--format", "{{.Names}}", "--filter"])
        .arg(format!(
            "label=org.attestd.socket-dir={}",
            label_dir.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_killed_podman_container_is_restarted() {
    // A container restart takes longer than a process restart: let calls wait for it.
    let a = start("podman", &pinned(), "restart_wait_ms = 10000").unwrap();
    let dir = a.dir.path().join("plugins");
    let first = podman_containers(&dir);
    assert_eq!(first.len(), 1, "{first:?}");
    let out = std::process::Command::new("podman")
        .args(["kill", &first[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.evidence(b"after").await.unwrap(), expected(b"after"));
    let now = podman_containers(&dir);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first, "a new container");
    assert!(a.log().contains("plugin restarted"), "{}", a.log());
    drop(a);
    eventually("the container is removed at shutdown", || {
        podman_containers(&dir).is_empty()
    });
}

#[tokio::test]
async fn kill_9_of_runc_restarts_the_bundle() {
    let a = start("oci", &pinned(), "restart_wait_ms = 10000").unwrap();
    let id = format!("attestd-sample-{}-", a.pid());
    let runc = find_runc(&id).expect("runc run process");
    signal(runc, Signal::SIGKILL);
    assert_eq!(a.evidence(b"after").await.unwrap(), expected(b"after"));
    // The killed runc's container may still answer that call while the supervisor
    // notices the exit and restarts: wait for the new runc, do not race it.
    eventually("a new runc run", || {
        find_runc(&id).is_some_and(|again| again != runc)
    });
    let bundles = a.dir.path().join("oci/bundles");
    eventually("the old bundle is removed", || {
        std::fs::read_dir(&bundles).map(|d| d.count()).unwrap_or(0) == 1
    });
    drop(a);
    eventually("bundles are removed at shutdown", || {
        std::fs::read_dir(&bundles)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
}

/// The `runc run … <id>` process whose container id starts with `prefix`.
fn find_runc(prefix: &str) -> Option<u32> {
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with(b"runc"))
            && args.iter().any(|a| a.starts_with(prefix.as_bytes()))
    })
}

/// The sample attester started by its owner on `sock`, and the plugin table
/// that points attestd at it (`launch = "external"`).
fn external_sample(sock: &Path) -> (Reaped, String) {
    let plugin = Reaped(spawn_plugin("attester-sample", sock, "ttrpc", &[]));
    let table = format!(
        "launch = \"external\"\nsocket = {:?}\n",
        sock.display().to_string()
    );
    (plugin, table)
}

#[tokio::test]
async fn an_external_plugin_is_connected_and_reconnected() {
    let outside = tempfile::tempdir().unwrap();
    let sock = outside.path().join("sample.sock");
    let (mut plugin, table) = external_sample(&sock);
    let a =
        Attestd::start(|d| config(d, &table, "health_interval_ms = 200\nrestart_wait_ms = 200"))
            .unwrap();
    assert_eq!(a.evidence(b"x").await.unwrap(), expected(b"x"));
    // Its owner stops it: calls fail clearly; the socket is not the core's to remove.
    signal(plugin.0.id(), Signal::SIGKILL);
    plugin.0.wait().unwrap();
    eventually("attestd notices", || a.log().contains("plugin down"));
    match a.evidence(b"y").await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::UNAVAILABLE, "{}", s.message);
            assert!(
                s.message.starts_with("plugin sample: not running: "),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    // Its owner starts it again: attestd reconnects.
    let _ = std::fs::remove_file(&sock);
    let mut plugin = Reaped(spawn_plugin("attester-sample", &sock, "ttrpc", &[]));
    eventually("attestd reconnects", || {
        a.log().contains("plugin restarted")
    });
    assert_eq!(a.evidence(b"z").await.unwrap(), expected(b"z"));
    drop(a);
    assert!(
        sock.exists(),
        "attestd leaves an external plugin's socket alone"
    );
    signal(plugin.0.id(), Signal::SIGTERM);
    plugin.0.wait().unwrap();
}

/// An external plugin killed and at once started again by its owner, as the
/// kubelet restarts a sidecar (0.4 s in the Kubernetes test): the next call finds
/// the connection broken, and that starts the reconnection; it does not wait for
/// the health checks (every 5 s by default, two failures), so the call is
/// answered by the new instance within its own deadline.
#[tokio::test]
async fn a_call_reconnects_at_once_to_an_external_plugin_its_owner_restarted() {
    let outside = tempfile::tempdir().unwrap();
    let sock = outside.path().join("sample.sock");
    let (mut plugin, table) = external_sample(&sock);
    // The default health interval and restart wait.
    let a = Attestd::start(|d| config(d, &table, "")).unwrap();
    assert_eq!(a.evidence(b"x").await.unwrap(), expected(b"x"));
    signal(plugin.0.id(), Signal::SIGKILL);
    plugin.0.wait().unwrap();
    // The new instance replaces the stale socket itself, as a restarted
    // sidecar does in its emptyDir.
    let _plugin = Reaped(spawn_plugin("attester-sample", &sock, "ttrpc", &[]));
    let req = attestd_proto::ttrpc::attestation_agent::GetEvidenceRequest {
        RuntimeData: b"y".to_vec(),
        ..Default::default()
    };
    // Well under the 5 s health interval: the old code answered UNAVAILABLE
    // after the 3 s restart wait, or missed this deadline.
    let answer = a
        .ttrpc()
        .await
        .get_evidence(ttrpc::context::with_timeout(2_500_000_000), &req)
        .await;
    assert_eq!(
        answer.map(|r| r.Evidence).unwrap(),
        expected(b"y"),
        "{}",
        a.log()
    );
    assert!(
        a.log().contains("a call found its connection broken"),
        "{}",
        a.log()
    );
}

#[tokio::test]
async fn the_tpm_image_carries_its_library_closure() {
    // The libtss2 image: the binary, its ldd closure and the dlopen'ed TCTI modules.
    // It quotes from swtpm (TCP, hence the host network here) through the swtpm TCTI
    // it loads at run time.
    use attestd_e2e::connect_plugin;
    use attester_sdk::{Transport, PROTOCOL_VERSIONS};
    let tpm = attestd_e2e::swtpm::Swtpm::start();
    let (name, digest) = locked_image("tpm");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tpm.sock");
    let d = dir.path().display().to_string();
    let cname = format!("attestd-test-tpm-{}", std::process::id());
    let child = std::process::Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--name", &cname])
        .args(["--network", "host", "--read-only"])
        .args([
            "--cap-drop",
            "all",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(["--volume", &format!("{d}:{d}:rw")])
        .arg(format!("{name}@{digest}"))
        .args(["--tcti", &tpm.tcti(), "--socket", sock.to_str().unwrap()])
        .spawn()
        .unwrap();
    let _guard = Reaped(child);
    let _container = PodmanContainer(cname);
    let c = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(20)).await;
    let hs = c.handshake(PROTOCOL_VERSIONS).await.unwrap();
    assert_eq!(hs.info.tee, "tpm");
    let ev = c.evidence(vec![7; 32]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev.bytes).unwrap();
    assert!(v["tpm_quote"]["signature"].is_string(), "{v}");
    assert_eq!(v["tpm_quote"]["pcrs"].as_array().unwrap().len(), 24);
}

#[tokio::test]
async fn attestd_runs_the_tpm_image_under_podman_against_swtpm_as_documented() {
    // docs/attesters/tpm.md's development setup: the pinned TPM image started by
    // attestd with podman, reaching a swtpm on the host through the plugin's
    // explicit host_network opt-in (warned at start).
    let tpm = attestd_e2e::swtpm::Swtpm::start();
    let (name, digest) = locked_image("tpm");
    let table = format!(
        "launch = \"podman\"\nimage = \"{name}@{digest}\"\ntee = \"tpm\"\nhost_network = true\nargs = [\"--tcti\", \"{}\"]\n",
        tpm.tcti()
    );
    let a = Attestd::start(|d| config(d, &table, "")).unwrap_or_else(|e| panic!("{}", e.stderr));
    assert_eq!(a.tee_type().await, "tpm");
    let ev = a.evidence(&[7; 32]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    assert_eq!(v["tpm_quote"]["pcrs"].as_array().unwrap().len(), 24, "{v}");
    assert!(
        a.log()
            .contains("its container shares the host's network (host_network = true)"),
        "{}",
        a.log()
    );
}

#[tokio::test]
async fn the_name_is_part_of_the_pin_for_podman_and_oci() {
    // podman finds an image by digest whatever name comes with it: another name
    // with the sample's digest used to run the sample, and be reported under the
    // wrong name.
    let (_, digest) = locked_image("sample");
    let other = format!("localhost/attestd/attester-nope@{digest}");
    for launch in ["podman", "oci"] {
        let e = start(launch, &other, "").err().unwrap();
        // The store may hold the sample under more names than its own (an
        // operator's, a pull's): all are listed, the sample's among them.
        let head = format!("image {other}: podman's store holds {digest} as ");
        let tail = ", not as localhost/attestd/attester-nope: the name is part of the pin";
        let names = e
            .stderr
            .split_once(&head)
            .and_then(|(_, rest)| rest.split_once(tail))
            .map(|(names, _)| names.split(", ").collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{launch}: {}", e.stderr));
        assert!(
            names.contains(&"localhost/attestd/attester-sample"),
            "{launch}: {}",
            e.stderr
        );
    }
    // The right name still starts, on both.
    for launch in ["podman", "oci"] {
        let a = start(launch, &pinned(), "").unwrap();
        assert_eq!(a.tee_type().await, "sample", "{launch}");
    }
}

#[test]
fn the_core_image_holds_the_daemon_alone_and_the_tools_it_execs() {
    // The daemon links no operator command (docs/benchmarks.md, "One binary or
    // two"); `attestd <command>` execs attestd-tools beside it, as the injected
    // sidecar's probe (`/attestd client …`) does.
    let lock: toml::Table =
        std::fs::read_to_string(attestd_e2e::repo_root().join("containers/images.lock"))
            .expect("containers/images.lock: run containers/build.sh attestd")
            .parse()
            .unwrap();
    let core = &lock["components"]["attestd"];
    let image = format!(
        "{}@{}",
        core["image"].as_str().unwrap(),
        core["digest"].as_str().unwrap()
    );
    let podman = |args: &[&str]| {
        let o = std::process::Command::new("podman")
            .args(["--runtime", "runc"])
            .args(args)
            .output()
            .unwrap();
        attestd_e2e::succeeded(&o, &format!("podman {args:?}"))
    };
    let cid = podman(&["create", &image]);
    let cid = cid.trim();
    let dir = tempfile::tempdir().unwrap();
    for b in ["attestd", "attestd-tools"] {
        podman(&[
            "cp",
            &format!("{cid}:/{b}"),
            dir.path().join(b).to_str().unwrap(),
        ]);
    }
    podman(&["rm", cid]);
    let daemon = std::fs::read(dir.path().join("attestd")).unwrap();
    let tools = std::fs::read(dir.path().join("attestd-tools")).unwrap();
    // A line of `attestd conformance`'s help: only the tools carry it.
    let tools_only: &[u8] = b"Drive a plugin through the plugin contract";
    let has = |b: &[u8]| b.windows(tools_only.len()).any(|w| w == tools_only);
    assert!(!has(&daemon), "the daemon links the operator commands");
    assert!(has(&tools));
    assert!(
        daemon.len() < tools.len(),
        "{} {}",
        daemon.len(),
        tools.len()
    );

    let attestd = dir.path().join("attestd");
    let help = std::process::Command::new(&attestd)
        .args(["client", "--help"])
        .output()
        .unwrap();
    let out = attestd_e2e::succeeded(&help, "attestd client --help");
    assert!(out.contains("Usage: attestd client"), "{out}");
    // The daemon's own flags stay its own.
    let version = std::process::Command::new(&attestd)
        .arg("--version")
        .output()
        .unwrap();
    assert!(attestd_e2e::succeeded(&version, "attestd --version").starts_with("attestd "));

    // Without the tools: the daemon says which binary is missing and where.
    std::fs::remove_file(dir.path().join("attestd-tools")).unwrap();
    let alone = std::process::Command::new(&attestd)
        .args(["client", "--help"])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&alone.stderr),
        format!(
            "error: `attestd client` is an operator command, in attestd-tools, which this attestd \
             cannot run ({}: No such file or directory (os error 2))\nhint: install attestd-tools \
             beside attestd (scripts/install.sh and the attestd image do)\n",
            dir.path().join("attestd-tools").display()
        )
    );
    // Help still answers, for the daemon, and names what is missing.
    let help = std::process::Command::new(&attestd)
        .arg("--help")
        .output()
        .unwrap();
    let out = attestd_e2e::succeeded(&help, "attestd --help");
    assert!(
        out.contains("are in attestd-tools, beside this binary"),
        "{out}"
    );
}

#[tokio::test]
async fn a_prefetched_image_starts_with_runc_alone() {
    // `attestd prefetch`, as the pod VM's build runs it: the image from podman's
    // store into an OCI layout and unpacked. attestd then starts it with only
    // runc on its PATH: no skopeo, umoci or podman at start.
    let (name, digest) = locked_image("sample");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let work = tempfile::tempdir().unwrap();
    let lock = work.path().join("images.lock");
    std::fs::write(
        &lock,
        format!("[images.sample]\nimage = \"{name}\"\ndigest = \"{digest}\"\ntransport = \"ttrpc\"\napi = 1\n"),
    )
    .unwrap();
    let oci = work.path().join("oci");
    let prefetch = |tees: &[&str]| {
        let mut args = vec![
            "prefetch",
            "--images-lock",
            lock.to_str().unwrap(),
            "--oci-dir",
            oci.to_str().unwrap(),
        ];
        args.extend_from_slice(tees);
        attestd_cli(&args)
    };
    let want = format!(
        "sample {name}@{digest} {}\n",
        oci.join("rootfs").join(hex).display()
    );
    for _ in 0..2 {
        // The second time there is nothing to do, and it says the same.
        let (st, out, err) = prefetch(&["sample"]);
        assert!(st.success(), "{err}");
        assert_eq!(out, want);
    }
    assert!(oci.join("rootfs").join(hex).join("attester").is_file());
    let (st, _, err) = prefetch(&["nosuch"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err,
        format!("error: {} has no [images.nosuch]\n", lock.display())
    );

    let path = work.path().join("bin");
    std::fs::create_dir(&path).unwrap();
    std::os::unix::fs::symlink("/usr/sbin/runc", path.join("runc")).unwrap();
    let a = Attestd::start_env(
        |d| {
            format!(
                "[plugins]\nprimary = \"sample\"\nsocket_dir = {:?}\noci_dir = {:?}\n[plugins.attester.sample]\ntransport = \"ttrpc\"\nlaunch = \"oci\"\nimage = \"{name}@{digest}\"\n",
                d.join("plugins").display().to_string(),
                oci.display().to_string(),
            )
        },
        &[],
        &[("PATH", path.to_str().unwrap())],
    )
    .unwrap();
    assert_eq!(
        a.evidence(b"prefetched").await.unwrap(),
        expected(b"prefetched")
    );
}

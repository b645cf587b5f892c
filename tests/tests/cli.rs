//! The operator commands: `attestd evidence`, `attestd plugins`, `attestd client`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd_e2e::{attestd_cli, config, Attestd, Plugin};

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("attestd.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn evidence_one_shot_accepts_text_file_and_hex() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("grpc");
    let cfg = write_config(d.path(), &config(d.path(), &p, &[], ""));
    let want = "{\"report_data\":\"aGVsbG8tY29jbw==\",\"svn\":\"1\"}\n";

    let (st, out, err) = attestd_cli(&["evidence", "-c", &cfg, "--runtime-data", "hello-coco"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, want);

    let f = d.path().join("rd");
    std::fs::write(&f, b"hello-coco").unwrap();
    let at = format!("@{}", f.display());
    let (st, out, _) = attestd_cli(&["evidence", "-c", &cfg, "--runtime-data", &at]);
    assert!(st.success());
    assert_eq!(out, want);

    let (st, out, _) = attestd_cli(&[
        "evidence",
        "-c",
        &cfg,
        "--runtime-data",
        "hex:68656c6c6f2d636f636f",
    ]);
    assert!(st.success());
    assert_eq!(out, want);

    // The one-shot's private socket directory is gone afterwards, and so is
    // the configured one it was made in (no attestd holds that).
    let plugins = d.path().join("plugins");
    assert!(!plugins.exists(), "{} left behind", plugins.display());

    // Beside a running attestd, its socket directory and lock stay.
    let a = Attestd::start(|dir| config(dir, &p, &[], "")).unwrap();
    let running = write_config(a.dir.path(), &config(a.dir.path(), &p, &[], ""));
    let (st, out, err) = attestd_cli(&["evidence", "-c", &running, "--runtime-data", "hello-coco"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, want);
    let mut left: Vec<_> = std::fs::read_dir(a.dir.path().join("plugins"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".control.sock", ".lock", "sample"]);
    // The plugin's own directory holds its socket alone.
    let own: Vec<_> = std::fs::read_dir(a.dir.path().join("plugins/sample"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(own, ["sample.sock"]);
}

#[test]
fn evidence_one_shot_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let cfg = write_config(d.path(), &config(d.path(), &p, &[], ""));
    let (st, out, err) = attestd_cli(&["evidence", "-c", &cfg, "--runtime-data", &"x".repeat(65)]);
    assert_eq!(st.code(), Some(1));
    assert!(out.is_empty());
    assert_eq!(
        err.trim_end(),
        "error: runtime data for sample: report data is 65 bytes, more than the 64 bytes this attester accepts"
    );
    let (st, _, err) = attestd_cli(&["evidence", "-c", &cfg, "--runtime-data", "hex:zz"]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.starts_with("error: runtime data after hex: is not hex"),
        "{err}"
    );
    let (st, _, err) = attestd_cli(&["evidence", "-c", &cfg, "--plugin", "tdx"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: --plugin \"tdx\": no [plugins.attester.tdx] table in the config"
    );
    let (st, _, err) = attestd_cli(&["evidence"]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.starts_with("error: no attester plugin configured"),
        "{err}"
    );
}

#[test]
fn plugins_lists_handshake_and_health() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let dev = Plugin::sample_device("grpc");
    let cfg = write_config(d.path(), &config(d.path(), &p, &[dev], ""));
    let (st, out, err) = attestd_cli(&["plugins", "-c", &cfg]);
    assert!(st.success(), "{err}");
    let version = env!("CARGO_PKG_VERSION");
    let bin = attestd_e2e::bin("attester-sample").display().to_string();
    assert_eq!(
        out,
        format!(
            "dev (additional): tee=sampledevice transport=grpc protocol=v1 plugin=attester-sample {version} launch=process command={bin} health=serving\n\
             sample (primary): tee=sample transport=ttrpc protocol=v1 plugin=attester-sample {version} launch=process command={bin} health=serving\n"
        )
    );
    let (st, out, _) = attestd_cli(&["plugins", "-c", &cfg, "--json"]);
    assert!(st.success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[1]["probe"]["handshake"]["info"]["capabilities"]["max_report_data"],
        64
    );
    assert_eq!(
        v[0]["probe"]["handshake"]["info"]["capabilities"]["role"],
        "additional"
    );
}

#[test]
fn plugins_reports_a_broken_plugin_without_failing() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::test("ttrpc", &["--protocol-version", "7"]);
    let cfg = write_config(d.path(), &config(d.path(), &p, &[], ""));
    let (st, out, _) = attestd_cli(&["plugins", "-c", &cfg]);
    assert!(st.success());
    assert_eq!(
        out,
        "test (primary): error: cannot start plugin test: plugin protocol version mismatch: we speak v1, the plugin speaks v7\n"
    );
}

#[tokio::test]
async fn client_subcommand_talks_to_a_running_attestd() {
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let aa = format!("unix://{}", a.aa_sock.display());
    let grpc = format!("unix://{}", a.grpc_sock.display());
    let (st, out, _) = attestd_cli(&["client", "--attestation_sock", &aa, "get-tee-type"]);
    assert!(st.success());
    assert_eq!(out, "sample\n");
    let (st, out, _) = attestd_cli(&[
        "client",
        "--grpc",
        &grpc,
        "get-evidence",
        "--runtime-data",
        "hello-coco",
    ]);
    assert!(st.success());
    assert_eq!(
        out,
        "{\"report_data\":\"aGVsbG8tY29jbw==\",\"svn\":\"1\"}\n"
    );
    let (st, out, _) = attestd_cli(&[
        "client",
        "--attestation_sock",
        &aa,
        "extend-runtime-measurement",
        "d",
        "op",
        "content",
    ]);
    assert!(st.success());
    assert_eq!(out, "not enabled\n");
    // No additional attesters: an empty JSON list, not an empty output.
    let (st, out, _) = attestd_cli(&["client", "--attestation_sock", &aa, "get-additional-tees"]);
    assert!(st.success());
    assert_eq!(out, "[]\n");
    let (st, _, err) = attestd_cli(&["client", "--attestation_sock", &aa, "get-token", "kbs"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: token type \"kbs\" is not configured: set [token_configs.kbs] url (or AA_KBC_PARAMS=cc_kbc::<url>)"
    );
}

#[tokio::test]
async fn bind_init_data_takes_hex_or_base64_and_says_which() {
    const INIT: &str = "abababababababababababababababababababababababababababababababab";
    let p = Plugin::sample("ttrpc").with_args(&["--init-data-digest", INIT]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let aa = format!("unix://{}", a.aa_sock.display());
    let bind = |digest: &str| {
        attestd_cli(&[
            "client",
            "--attestation_sock",
            &aa,
            "bind-init-data",
            digest,
        ])
    };
    let (st, out, err) = bind(INIT);
    assert!(st.success(), "{err}");
    assert_eq!(out, "ok (digest read as hex, 32 bytes)\n");
    let (st, out, err) = bind("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=");
    assert!(st.success(), "{err}");
    assert_eq!(out, "ok (digest read as base64, 32 bytes)\n");
    let (st, _, err) = bind("not a digest!");
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: digest \"not a digest!\" is neither hex nor base64"
    );
}

#[test]
fn the_client_gives_up_on_a_server_that_never_answers() {
    // A TCP listener that accepts and never speaks (no HTTP/2 preface), and a Unix
    // socket that accepts and never answers: bounded by --timeout-ms, on both
    // transports (the gRPC client used to wait for ever).
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let _held: Vec<_> = tcp.incoming().take(4).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    std::thread::spawn(move || {
        let _held: Vec<_> = unix.incoming().take(4).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let unix_addr = format!("unix://{}", sock.display());
    for args in [
        vec![
            "client",
            "--grpc",
            &addr,
            "--timeout-ms",
            "300",
            "get-tee-type",
        ],
        vec![
            "client",
            "--attestation_sock",
            &unix_addr,
            "--timeout-ms",
            "300",
            "get-tee-type",
        ],
    ] {
        let t = std::time::Instant::now();
        let (st, _, err) = attestd_cli(&args);
        assert!(!st.success(), "{args:?}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{args:?}: {:?}",
            t.elapsed()
        );
        assert!(
            err.contains("did not answer within 300ms") || err.contains("timed out"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn json_logs_carry_each_calls_method_plugin_status_and_duration() {
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| format!("{}\n[log]\nformat = \"json\"\n", config(d, &p, &[], "")))
        .unwrap();
    a.evidence(b"json").await.unwrap();
    let _ = a.evidence(&[0; 65]).await.unwrap_err();
    let log = a.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let answered: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "answered" && l["span"]["method"] == "GetEvidence")
        .collect();
    assert_eq!(answered.len(), 2, "{log}");
    assert_eq!(answered[0]["span"]["plugin"], "sample");
    assert_eq!(answered[0]["status"], "ok");
    assert!(answered[0]["micros"].as_u64().is_some(), "{}", answered[0]);
    assert_eq!(answered[1]["status"], "invalid argument");
    // Values, not Rust debug forms: the plugin's pid is a number.
    let ready = lines
        .iter()
        .find(|l| l["message"] == "plugin ready")
        .unwrap();
    assert!(ready["pid"].as_u64().is_some(), "{ready}");
    assert_eq!(ready["launch"], "process", "{ready}");
}

/// `scripts/install.sh` with `args` (the debug builds the suite already made).
fn install_sh(args: &[&str], env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut c = std::process::Command::new("bash");
    c.arg(attestd_e2e::repo_root().join("scripts/install.sh"))
        .args(args)
        .env_remove("CARGO_TARGET_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// install.sh of the debug builds the suite already made (`what`: TEEs and
/// `--plugin DIR`s) under the staging root `dest`, as an image build would; it
/// must succeed.
fn install_debug_build(dest: &std::path::Path, what: &[&str]) {
    let mut args = vec![
        "--destdir",
        dest.to_str().unwrap(),
        "--profile",
        "debug",
        "--no-build",
    ];
    args.extend_from_slice(what);
    let out = install_sh(&args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `systemd-analyze verify` of `units` as systemd would load them from `root`
/// (their commands looked up there): nothing to say about any of them.
fn verify_under(root: &std::path::Path, units: &[std::path::PathBuf]) {
    let sys = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    let (ok, text) = attestd_e2e::systemd_verify(Some(root), &sys, units);
    assert!(
        ok && text.trim().is_empty(),
        "{} {units:?}: {text}",
        root.display()
    );
}

#[test]
fn install_sh_installs_what_ships_and_the_installed_attestd_finds_its_plugin() {
    // The debug builds the suite already made, installed under a staging root as an
    // image build would; the installed attestd finds `attester-sample` next to itself.
    let d = tempfile::tempdir().unwrap();
    install_debug_build(d.path(), &["sample"]);
    let usr = d.path().join("usr");
    for f in [
        "bin/attestd",
        "bin/attestd-tools",
        "bin/attester-sample",
        "share/attestd/examples/sample.toml",
        "share/attestd/examples/tpm.toml",
    ] {
        assert!(usr.join(f).is_file(), "{f} not installed");
    }
    let attestd = usr.join("bin/attestd");
    let cfg = usr.join("share/attestd/examples/sample.toml");
    let run = std::process::Command::new(&attestd)
        .args([
            "evidence",
            "-c",
            cfg.to_str().unwrap(),
            "--runtime-data",
            "hello-coco",
        ])
        .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
        // Nothing from the build tree on PATH: the plugin must come from beside attestd.
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "{\"report_data\":\"aGVsbG8tY29jbw==\",\"svn\":\"1\"}\n"
    );
    // An unknown TEE is refused before anything is installed.
    let x = d.path().join("x");
    let bad = install_sh(
        &["--destdir", x.to_str().unwrap(), "--no-build", "tdx2"],
        &[],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown TEE tdx2"));
    assert!(!x.exists());
    // So is a --no-build with nothing built: it says what to do, and makes nothing.
    let empty = tempfile::tempdir().unwrap();
    let bad = install_sh(
        &["--destdir", x.to_str().unwrap(), "--no-build", "sample"],
        &[("CARGO_TARGET_DIR", empty.path())],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim_end(),
        format!(
            "install.sh: {}/release/attestd is not built: run without --no-build (or build it with --profile release first)",
            empty.path().display()
        )
    );
    assert!(!x.exists());
}

#[test]
fn install_sh_installs_a_third_partys_plugin_with_what_its_crate_declares() {
    // tests/plugins/x-hello as built by the suite (scripts/test.sh builds every
    // attester workspace): installed, configured and given a unit by its metadata.
    let d = tempfile::tempdir().unwrap();
    let plugin = attestd_e2e::repo_root().join("tests/plugins/x-hello");
    // A crate declaring a TEE name attestd would refuse is refused first, with
    // nothing installed (build.sh reads the metadata with the same function).
    let bad = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(plugin.join("Cargo.toml"))
        .unwrap()
        .replace("tee = \"x-hello\"", "tee = \"X-hello\"")
        .replace(
            "path = \"../../../attesters/sdk\"",
            &format!(
                "path = {:?}",
                attestd_e2e::repo_root()
                    .join("attesters/sdk")
                    .display()
                    .to_string()
            ),
        );
    std::fs::write(bad.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(plugin.join("Cargo.lock"), bad.path().join("Cargo.lock")).unwrap();
    std::fs::create_dir(bad.path().join("src")).unwrap();
    std::fs::copy(plugin.join("src/main.rs"), bad.path().join("src/main.rs")).unwrap();
    let x = d.path().join("x");
    let out = install_sh(
        &[
            "--destdir",
            x.to_str().unwrap(),
            "--no-build",
            "--plugin",
            bad.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "error: {}: [package.metadata.attestd] tee \"X-hello\" is not a third party's TEE name (\"x-\", then lowercase letters, digits and single '-', at most 32 bytes)",
            std::fs::canonicalize(bad.path()).unwrap().display()
        )
    );
    assert!(!x.exists());
    // Issue 41 (medium): a probe attestd refuses (here one that would read a
    // device) was found only after the binaries and attestd.toml were
    // installed. The candidate configuration is checked first now.
    let manifest = std::fs::read_to_string(bad.path().join("Cargo.toml"))
        .unwrap()
        .replace("tee = \"X-hello\"", "tee = \"x-hello\"")
        .replace(
            "probe = [\"/dev/x-hello-guest\"]",
            "probe = [\"/dev/watchdog=armed\"]",
        );
    assert!(manifest.contains("/dev/watchdog=armed"), "{manifest}");
    std::fs::write(bad.path().join("Cargo.toml"), manifest).unwrap();
    let out = install_sh(
        &[
            "--destdir",
            x.to_str().unwrap(),
            "--profile",
            "debug",
            "--no-build",
            "--plugin",
            bad.path().to_str().unwrap(),
        ],
        &[("CARGO_TARGET_DIR", &attestd_e2e::repo_root().join("target"))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("install.sh: attestd refuses the configuration it would install, so nothing is installed")
            && err.contains("under /dev only a path's existence is checked"),
        "{err}"
    );
    assert!(!x.exists());
    install_debug_build(d.path(), &["--plugin", plugin.to_str().unwrap()]);
    let etc = d.path().join("etc/attestd");
    let cfg = std::fs::read_to_string(etc.join("attestd.toml")).unwrap();
    assert!(cfg.contains("primary = \"x-hello\"\n"), "{cfg}");
    assert!(
        cfg.contains("[plugins.attester.x-hello]\nlaunch = \"process\"\ncommand = \"attester-x-hello\"\ntransport = \"ttrpc\"\ntee = \"x-hello\"\ndevices = [\"/dev/x-hello-guest\"]\nprobe = [\"/dev/x-hello-guest\"]\n"),
        "{cfg}"
    );
    let units = d.path().join("usr/lib/systemd/system");
    let service = std::fs::read_to_string(units.join("attestd-x-hello.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/attester-x-hello --socket /run/attestd/external/x-hello/x-hello.sock --transport ttrpc\n"),
        "{service}"
    );
    // Its declared device, and only it, is allowed in its unit.
    assert!(
        service.contains("DevicePolicy=closed\nDeviceAllow=/dev/x-hello-guest rw\n"),
        "{service}"
    );
    let names = [
        "attestd-x-hello.service",
        "attestd-x-hello.path",
        "attestd.service",
        "confidential-data-hub.path",
    ];
    verify_under(
        d.path(),
        &names.iter().map(|n| units.join(n)).collect::<Vec<_>>(),
    );
    // The installed attestd reads the configuration and starts the installed
    // plugin beside it; without the TEE's device the plugin says so.
    let attestd = d.path().join("usr/bin/attestd");
    let run = std::process::Command::new(&attestd)
        .args(["evidence", "-c", etc.join("attestd.toml").to_str().unwrap()])
        .args(["--runtime-data", "x"])
        .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    if std::path::Path::new("/dev/x-hello-guest").exists() {
        assert!(run.status.success(), "{err}");
    } else {
        assert!(!run.status.success());
        assert!(err.contains("cannot open /dev/x-hello-guest"), "{err}");
    }
}

#[test]
fn install_sh_installs_a_system_configuration_and_units_systemd_accepts_under_any_prefix() {
    for prefix in ["/usr", "/opt/attestd"] {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().to_str().unwrap();
        let args = [
            "--destdir",
            dest,
            "--prefix",
            prefix,
            "--profile",
            "debug",
            "--no-build",
            "sample",
        ];
        let out = install_sh(&args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let etc = d.path().join("etc/attestd");
        let system = std::fs::read_to_string(etc.join("attestd.toml")).unwrap();
        assert!(
            system.contains("primary = \"sample\"\n\n[plugins.attester.sample]\nlaunch = \"process\"\ncommand = \"attester-sample\"\n"),
            "{system}"
        );
        // Where systemd looks for units: an /opt prefix's own lib is not.
        let unitdir = d.path().join(if prefix == "/usr" {
            "usr/lib/systemd/system"
        } else {
            "etc/systemd/system"
        });
        let names = [
            "attestd-sample.service",
            "attestd-sample.path",
            "attestd.service",
            "confidential-data-hub.path",
        ];
        let units: Vec<_> = names.iter().map(|n| unitdir.join(n)).collect();
        let plugin = std::fs::read_to_string(&units[0]).unwrap();
        // The plugin beside the installed attestd, where systemd finds it.
        assert!(
            plugin.contains(&format!("ExecStart={prefix}/bin/attester-sample --socket")),
            "{plugin}"
        );
        verify_under(d.path(), &units);

        // The installed attestd, on its unit's command line (under the staging
        // root): each file once, the plugin started by its unit, not by attestd.
        let service = std::fs::read_to_string(&units[2]).unwrap();
        assert!(
            service.contains(&format!(
                "ExecStart={prefix}/bin/attestd -c /etc/attestd/attestd.toml\n"
            )),
            "{service}"
        );
        let staged = |p: &str| d.path().join(p.trim_start_matches('/'));
        let config = std::process::Command::new(staged(&format!("{prefix}/bin/attestd")))
            .args(["config", "--json", "-c"])
            .arg(staged("/etc/attestd/attestd.toml"))
            .arg("--config-dir")
            .arg(&etc)
            .output()
            .unwrap();
        assert!(config.status.success());
        let v: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
        let drop_in = etc.join("attestd.toml.d/50-attestd-sample.toml");
        assert_eq!(
            v["files"],
            serde_json::json!([
                etc.join("attestd.toml").display().to_string(),
                drop_in.display().to_string()
            ])
        );
        assert_eq!(
            v["keys"]["plugins.attester.sample.launch"]["value"],
            "external"
        );

        // Installing again keeps the operator's configuration and writes the
        // same units.
        std::fs::write(
            etc.join("attestd.toml"),
            format!("{system}\n[log]\nlevel = \"debug\"\n"),
        )
        .unwrap();
        let again = install_sh(&args, &[]);
        assert!(again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("kept the existing"),
            "{}",
            String::from_utf8_lossy(&again.stdout)
        );
        assert!(std::fs::read_to_string(etc.join("attestd.toml"))
            .unwrap()
            .ends_with("level = \"debug\"\n"));
        assert_eq!(std::fs::read_to_string(&units[0]).unwrap(), plugin);
    }
}

#[test]
fn every_workspace_builds_with_the_one_shipped_profile() {
    // Cargo.toml's [profile.release] is the shipped profile; the attester
    // workspaces, which have their own Cargo.toml, get it as CARGO_PROFILE_RELEASE_*.
    let root = attestd_e2e::repo_root();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let release = manifest["profile"]["release"].as_table().unwrap().clone();
    assert_eq!(release["opt-level"].as_str(), Some("s"));
    let out = std::process::Command::new("bash")
        .args(["-c", ". scripts/shipped-profile.sh && env"])
        .current_dir(&root)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let env: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("CARGO_PROFILE_RELEASE_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let want: std::collections::BTreeMap<String, String> = release
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.to_uppercase().replace('-', "_"), v)
        })
        .collect();
    assert_eq!(env, want);
    // No attester workspace overrides it with a release profile of its own.
    for e in std::fs::read_dir(root.join("attesters")).unwrap() {
        let m = e.unwrap().path().join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&m) {
            assert!(!text.contains("[profile.release]"), "{}", m.display());
        }
    }
}

#[test]
fn errors_a_user_cannot_act_on_come_with_a_hint() {
    // Nobody serves here: the client says where it called and what to check.
    let d = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}/aa.sock", d.path().display());
    let (st, _, err) = attestd_cli(&["client", "--attestation_sock", &sock, "get-tee-type"]);
    assert_eq!(st.code(), Some(1), "{err}");
    let mut lines = err.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with(&format!("error: cannot connect to {sock}: ")),
        "{err}"
    );
    assert_eq!(
        lines.next(),
        Some(
            "hint: is attestd running? --attestation_sock (ttrpc) or --grpc names where it serves"
        )
    );

    // Not root, attestd's default paths: the error says what to do. (The binary is
    // copied where nobody may run it: the build tree may not be readable.)
    let bin_dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for b in ["attestd", "attestd-tools", "attester-sample"] {
        std::fs::copy(attestd_e2e::bin(b), bin_dir.path().join(b)).unwrap();
    }
    let cfg = bin_dir.path().join("sample.toml");
    std::fs::copy(
        attestd_e2e::repo_root().join("docs/examples/sample.toml"),
        &cfg,
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin_dir.path().join("attestd"))
        .args(["evidence", "-c"])
        .arg(&cfg)
        .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.lines().any(|l| l
            == "hint: attestd's default paths under /run are root's: run it as root, or give it \
                directories you own ([plugins] socket_dir in the config, --attestation_sock \
                unix://… for the daemon and for attestd client)"),
        "{err}"
    );
}

#[test]
fn a_configuration_path_given_that_is_not_there_is_refused_by_its_name() {
    // Silently skipped, its files would go unread and the defaults would serve.
    let (st, _, err) = attestd_cli(&["config", "--config-dir", "/nonexistent/etc/attestd"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: --config-dir (or ATTESTD_CONFIG_DIR) /nonexistent/etc/attestd: no such directory"
    );
    let (st, _, err) = attestd_cli(&["config", "--config-dir", "/etc/passwd"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: --config-dir (or ATTESTD_CONFIG_DIR) /etc/passwd: not a directory"
    );
    let (st, _, err) = attestd_cli(&["config", "-c", "/nonexistent/aa.toml"]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.starts_with("error: cannot read config file /nonexistent/aa.toml: "),
        "{err}"
    );
    // The webhook's --config alike (absent and not given, the defaults serve).
    let out = std::process::Command::new(attestd_e2e::bin("attestd-webhook"))
        .args(["serve", "--config", "/nonexistent/webhook.toml"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: cannot read /nonexistent/webhook.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn upstreams_dropped_listener_flags_are_refused_with_what_replaced_them() {
    // Ignored, a caller would wait on a socket nobody serves; clap alone would
    // answer "did you mean --grpc_sock".
    for (flag, replaced_by) in [
        (
            "--keyprovider_sock",
            "attestd serves the ocicrypt key provider where [keyprovider] ttrpc or grpc",
        ),
        ("--getresource_sock", "run the Data Hub"),
    ] {
        for args in [
            vec![flag, "127.0.0.1:50000"],
            vec!["run", flag, "127.0.0.1:50000"],
        ] {
            let (st, _, err) = attestd_cli(&args);
            assert_eq!(st.code(), Some(1), "{err}");
            assert!(
                err.starts_with(&format!(
                    "error: {flag} is a flag of upstream's older attestation-agent, which dropped it"
                )),
                "{err}"
            );
            assert!(err.contains(replaced_by), "{err}");
            assert!(!err.contains("--grpc_sock"), "{err}");
        }
    }
}

#[test]
fn every_subcommand_says_what_it_does() {
    // In `attestd --help` and `attestd client --help`: no bare command names.
    for args in [vec!["--help"], vec!["client", "--help"]] {
        let (st, out, _) = attestd_cli(&args);
        assert!(st.success());
        let commands: Vec<&str> = out
            .split("Commands:\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert!(commands.len() > 6, "{out}");
        for line in commands {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap();
            assert!(
                words.next().is_some(),
                "{name} has no help line in {args:?}"
            );
        }
    }
}

//! attestd as it starts in a pod VM: the image's plugin configuration in its
//! config directory (system file and drop-ins), upstream's `aa.toml` from
//! init-data as `-c`, unchanged, and upstream's flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use attestd_e2e::{attestd_cli, config, Attestd, Plugin};

/// An init-data `aa.toml` of the shape guest-components' and cloud-api-adaptor's
/// docs show: token configs only, no plugins (our own text, their layout).
const UPSTREAM_AA_TOML: &str = r#"
[token_configs]
[token_configs.coco_as]
url = 'http://127.0.0.1:8000'

[token_configs.kbs]
url = 'http://127.0.0.1:8080'
"#;

/// The image's configuration directory with `system` as attestd.toml and the
/// drop-ins given, under `root`.
fn config_dir(root: &Path, system: Option<&str>, drop_ins: &[(&str, &str)]) -> String {
    let dir = root.join("etc-attestd");
    std::fs::create_dir_all(dir.join("attestd.toml.d")).unwrap();
    if let Some(s) = system {
        std::fs::write(dir.join("attestd.toml"), s).unwrap();
    }
    for (name, text) in drop_ins {
        std::fs::write(dir.join("attestd.toml.d").join(name), text).unwrap();
    }
    dir.display().to_string()
}

#[tokio::test]
async fn an_upstream_aa_toml_starts_unchanged_on_the_images_plugin_config() {
    let p = Plugin::sample("ttrpc");
    let root = tempfile::tempdir().unwrap();
    let etc = config_dir(root.path(), Some(&config(root.path(), &p, &[], "")), &[]);
    let a = Attestd::start_env(
        |_| UPSTREAM_AA_TOML.to_string(),
        &[],
        &[("ATTESTD_CONFIG_DIR", &etc)],
    )
    .unwrap_or_else(|e| panic!("{}", e.stderr));
    assert_eq!(
        a.evidence(b"ok").await.unwrap(),
        br#"{"report_data":"b2s=","svn":"1"}"#
    );
    drop(a);
    // Without the image's plugin file the same aa.toml selects a platform from
    // the image list, and says why (here there is none to select).
    let empty = config_dir(&root.path().join("empty"), None, &[]);
    let e = Attestd::start_env(
        |_| UPSTREAM_AA_TOML.to_string(),
        &[],
        &[("ATTESTD_CONFIG_DIR", &empty)],
    )
    .err()
    .unwrap();
    assert!(
        e.stderr.contains("error: no attester plugin configured (-c, /etc/attestd/attestd.toml or its drop-ins), so one is selected from the image list"),
        "{}",
        e.stderr
    );
}

#[test]
fn later_layers_win_and_config_names_where_each_key_came_from() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let system = config(d.path(), &p, &[], "call_timeout_ms = 1000");
    let etc = config_dir(
        d.path(),
        Some(&system),
        &[
            // Lexical order: 20 after 10, whatever order they were written in.
            ("20-later.toml", "[plugins]\ncall_timeout_ms = 3000\n"),
            (
                "10-first.toml",
                "[plugins]\ncall_timeout_ms = 2000\nhealth_interval_ms = 700\n",
            ),
        ],
    );
    let aa = d.path().join("aa.toml");
    std::fs::write(&aa, UPSTREAM_AA_TOML).unwrap();
    let show = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["config", "--json", "--config-dir", &etc];
        all.extend_from_slice(args);
        let (st, out, err) = attestd_cli(&all);
        assert!(st.success(), "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let v = show(&[]);
    let key = |v: &serde_json::Value, k: &str| {
        (
            v["keys"][k]["value"].clone(),
            v["keys"][k]["from"].as_str().unwrap().to_string(),
        )
    };
    let file = |n: &str| format!("{etc}/{n}");
    assert_eq!(
        key(&v, "plugins.call_timeout_ms"),
        (3000.into(), file("attestd.toml.d/20-later.toml"))
    );
    assert_eq!(
        key(&v, "plugins.health_interval_ms"),
        (700.into(), file("attestd.toml.d/10-first.toml"))
    );
    assert_eq!(
        key(&v, "plugins.primary"),
        ("sample".into(), file("attestd.toml"))
    );
    assert_eq!(key(&v, "plugins.restart_wait_ms").1, "default");
    // The -c file (init-data's aa.toml) comes last and wins.
    std::fs::write(
        &aa,
        format!("{UPSTREAM_AA_TOML}\n[plugins]\ncall_timeout_ms = 4000\n"),
    )
    .unwrap();
    let v = show(&["-c", aa.to_str().unwrap()]);
    let aa_name = aa.display().to_string();
    assert_eq!(
        key(&v, "plugins.call_timeout_ms"),
        (4000.into(), aa_name.clone())
    );
    assert_eq!(
        key(&v, "token_configs.kbs.url"),
        ("http://127.0.0.1:8080".into(), aa_name)
    );
    assert_eq!(v["files"].as_array().unwrap().len(), 4);
}

#[test]
fn a_malformed_drop_in_names_its_file_and_line_and_nothing_starts() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let etc = config_dir(
        d.path(),
        Some(&config(d.path(), &p, &[], "")),
        &[(
            "30-pin.toml",
            "[plugins.attester.sample]\n\nimgae = \"x\"\n",
        )],
    );
    let (st, _, err) = attestd_cli(&[
        "run",
        "--config-dir",
        &etc,
        "--attestation_sock",
        &format!("unix://{}/aa.sock", d.path().display()),
    ]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.starts_with(&format!("error: invalid config: {etc}/attestd.toml.d/30-pin.toml, line 3: plugins.attester.sample.imgae: unknown field `imgae`, expected one of `launch`")),
        "{err}"
    );
    // A syntax error: the file, then the line, said once.
    std::fs::write(format!("{etc}/attestd.toml.d/30-pin.toml"), "[plugins\n").unwrap();
    let (st, _, err) = attestd_cli(&["config", "--config-dir", &etc]);
    assert_eq!(st.code(), Some(1));
    assert!(err.starts_with(&format!("error: invalid config file {etc}/attestd.toml.d/30-pin.toml: TOML parse error at line 1")), "{err}");
    assert_eq!(err.matches("line 1").count(), 1, "{err}");
    assert!(!d.path().join("aa.sock").exists());
}

#[test]
fn upstream_short_flags_and_a_grpc_aa_address() {
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, config(d.path(), &p, &[], "")).unwrap();
    let init = d.path().join("initdata.toml");
    std::fs::write(
        &init,
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n",
    )
    .unwrap();
    // grpc-aa's form: `-a host:port` serves the AA API over gRPC there. The
    // ttrpc socket goes to upstream's default path, so attestd runs in a mount
    // namespace of its own with a fresh /run.
    let port = attestd_e2e::free_port();
    let log = d.path().join("log");
    let script = "mount -t tmpfs none /run && exec \"$@\"";
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(attestd_e2e::bin("attestd"))
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-t",
            init.to_str().unwrap(),
            "-a",
            &format!("127.0.0.1:{port}"),
        ])
        .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
        .env("ATTESTD_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tee = rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await;
            if let Ok(ch) = ch {
                let mut c = attestd_proto::grpc::attestation_agent::attestation_agent_service_client::AttestationAgentServiceClient::new(ch);
                break c.get_tee_type(attestd_proto::grpc::attestation_agent::GetTeeTypeRequest {}).await.unwrap().into_inner().tee;
            }
            assert!(std::time::Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    assert_eq!(tee, "sample");
    attestd_e2e::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("as upstream's grpc-aa takes it"), "{log}");
    assert!(log.contains("init-data"), "{log}");
}

#[test]
fn upstreams_short_initdata_digest_flag_binds_at_start() {
    // -i, as upstream's ttrpc-aa takes it: the digest (base64) bound at start; a
    // mismatch refuses the start.
    const INIT: &str = "abababababababababababababababababababababababababababababababab";
    let good = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";
    let p = Plugin::sample("ttrpc").with_args(&["--init-data-digest", INIT]);
    let a = Attestd::start_with(|d| config(d, &p, &[], ""), &["-i", good])
        .unwrap_or_else(|e| panic!("{}", e.stderr));
    assert!(a.log().contains("init-data bound"), "{}", a.log());
    drop(a);
    let wrong = "7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u4=";
    let e = Attestd::start_with(|d| config(d, &p, &[], ""), &["-i", wrong])
        .err()
        .unwrap();
    assert!(
        e.stderr.contains("init-data binding failed"),
        "{}",
        e.stderr
    );
}

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
        e.stderr.contains("error: no attester plugin configured (in -c, the config directory's attestd.toml or its drop-ins: `attestd config` lists the files read), so one is selected from the image list"),
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
    let text = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
    // Bound at start (init-data nothing binds is refused): the sample's
    // launch-time value is the document's digest.
    use sha2::Digest as _;
    let launch = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let p = Plugin::sample("ttrpc").with_args(&["--init-data-digest", &launch]);
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, config(d.path(), &p, &[], "")).unwrap();
    let init = d.path().join("initdata.toml");
    std::fs::write(&init, text).unwrap();
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

/// The pod VM's first-boot step (`attestd-podvm provision`, the real binary) on
/// `user_data`: the peerpod directory, attestd.env's variables, and what it said.
fn provision(root: &Path, user_data: &str) -> (std::path::PathBuf, Vec<(String, String)>, String) {
    let ud = root.join("user-data");
    std::fs::write(&ud, user_data).unwrap();
    let out = root.join("peerpod");
    let o = std::process::Command::new(attestd_e2e::bin("attestd-podvm"))
        .arg("provision")
        .arg("--user-data")
        .arg(&ud)
        .arg("--out-dir")
        .arg(&out)
        // The image's configuration, as pod_vm_image and config_dir make it
        // (absent until they do: then the defaults).
        .arg("--config-dir")
        .arg(root.join("etc-attestd"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let env = std::fs::read_to_string(out.join("attestd.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (out, env, said)
}

/// The pod VM image's system file: its plugin (the sample here) and the
/// ceiling on the -c file, as containers/podvm/build.sh writes it.
fn pod_vm_image(root: &Path, p: &Plugin) -> String {
    let system = format!(
        "[config_file]\nsource = \"init-data\"\n\n{}",
        config(root, p, &[], "")
    );
    config_dir(root, Some(&system), &[])
}

fn gzip_b64(text: &str) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// A cloud-config `write_files` entry, its content indented as a block scalar.
fn entry(path: &str, content: &str) -> String {
    let body: String = content.lines().map(|l| format!("    {l}\n")).collect();
    format!("- path: {path}\n  content: |\n{body}")
}

/// Issue 26 (critical): an aa.toml from the host's user-data, with init-data
/// that carries none and with no init-data at all, names a command to run as
/// the primary plugin and a policy accepting any image. attestd runs the image's
/// plugin, never the host's command; with init-data that has no aa.toml, the
/// host's upstream keys still apply. Issue 39: with no init-data at all,
/// process-user-data's stand-in takes its place, and its empty aa.toml wins,
/// as in cloud-api-adaptor's images.
#[tokio::test]
async fn a_host_written_aa_toml_runs_nothing_and_only_its_upstream_keys_are_read() {
    let p = Plugin::sample("ttrpc");
    let initdata_without_aa = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\\n\"\n";
    for with_initdata in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let mark = root.path().join("host-command-ran");
        let hostile = format!(
            "[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n\n[plugins]\nprimary = \"evil\"\ndev_mode = true\n\n[plugins.attester.evil]\nlaunch = \"process\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"touch {}; exec sleep 30\"]\ntransport = \"ttrpc\"\n",
            mark.display()
        );
        let mut ud = format!(
            "#cloud-config\nwrite_files:\n{}{}",
            entry("/run/peerpod/aa.toml", &hostile),
            entry(
                "/run/peerpod/policy.json",
                "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}"
            )
        );
        if with_initdata {
            ud.push_str(&format!(
                "- path: /run/peerpod/initdata\n  content: {}\n",
                gzip_b64(initdata_without_aa)
            ));
        }
        let (peerpod, env, said) = provision(root.path(), &ud);
        assert!(
            said.contains(
                "skipped \"/run/peerpod/policy.json\": only init-data (measured) may supply it"
            ),
            "{said}"
        );
        assert!(!peerpod.join("policy.json").exists());
        let source = env
            .iter()
            .find(|(k, _)| k == "ATTESTD_CONFIG_FILE_SOURCE")
            .map(|(_, v)| v.as_str());
        let aa = std::fs::read_to_string(peerpod.join("aa.toml")).unwrap();
        let etc = pod_vm_image(root.path(), &p);
        if !with_initdata {
            assert_eq!(source, Some("init-data"));
            assert_eq!(aa, "", "the stand-in's aa.toml");
            let toml = peerpod.join("initdata.toml").display().to_string();
            // attestd as its unit starts it on what attestd-podvm wrote.
            let start = |etc: &str| {
                Attestd::start_env(
                    |_| aa.clone(),
                    &["--initdata-toml", &toml, "--initdata-stand-in"],
                    &[
                        ("ATTESTD_CONFIG_DIR", etc),
                        ("ATTESTD_CONFIG_FILE_SOURCE", "init-data"),
                    ],
                )
                .unwrap_or_else(|e| panic!("{}", e.stderr))
            };
            let a = start(&etc);
            assert_eq!(a.tee_type().await, "sample");
            // The sample binds nothing: the stand-in is left unbound, not refused.
            assert!(
                a.log()
                    .contains("init-data is the stand-in for none: not bound"),
                "{}",
                a.log()
            );
            drop(a);
            assert!(!mark.exists(), "the host's command ran");
            // A plugin that compares with a launch-time value (as TDX and SNP
            // do) is not asked: the host set none for the stand-in.
            let compares =
                Plugin::sample("ttrpc").with_args(&["--init-data-digest", &"ab".repeat(32)]);
            let a = start(&pod_vm_image(&root.path().join("compare"), &compares));
            assert!(!a.log().contains("init-data bound"), "{}", a.log());
            continue;
        }
        assert!(
            said.contains("aa.toml comes from user-data, which is unmeasured"),
            "{said}"
        );
        assert_eq!(source, Some("user-data"));
        let a = Attestd::start_env(
            |_| aa.clone(),
            &[],
            &[
                ("ATTESTD_CONFIG_DIR", &etc),
                ("ATTESTD_CONFIG_FILE_SOURCE", source.unwrap()),
            ],
        )
        .unwrap_or_else(|e| panic!("{}", e.stderr));
        assert_eq!(a.tee_type().await, "sample");
        assert_eq!(
            a.evidence(b"ok").await.unwrap(),
            br#"{"report_data":"b2s=","svn":"1"}"#
        );
        let log = a.log();
        assert!(
            log.contains("the -c file comes from user-data, which is unmeasured: only upstream attestation-agent's keys are read from it"),
            "{log}"
        );
        assert!(log.contains("key=plugins"), "{log}");
        assert!(log.contains("ignored: user-data is unmeasured"), "{log}");
        drop(a);
        assert!(!mark.exists(), "the host's command ran");
        // Its upstream key is read: `attestd config` names the file it came from.
        let cfg = root.path().join("aa.toml");
        std::fs::write(&cfg, &aa).unwrap();
        let out = std::process::Command::new(attestd_e2e::bin("attestd"))
            .args(["config", "-c"])
            .arg(&cfg)
            .env("ATTESTD_CONFIG_DIR", &etc)
            .env("ATTESTD_CONFIG_FILE_SOURCE", "user-data")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "token_configs.kbs.url = \"http://127.0.0.1:8080\"    # {}",
                cfg.display()
            )),
            "{text}"
        );
        assert!(text.contains("plugins.primary = \"sample\""), "{text}");
        assert!(
            text.contains("# ignored: plugins: user-data is unmeasured"),
            "{text}"
        );
    }
}

/// Issue 26 (critical): init-data is measured, but its aa.toml still may not
/// decide what attestd launches: refused at start, naming the key and the file,
/// nothing run.
#[test]
fn an_init_data_aa_toml_that_sets_a_launch_key_is_refused_and_nothing_runs() {
    let p = Plugin::sample("ttrpc");
    let root = tempfile::tempdir().unwrap();
    let mark = root.path().join("command-ran");
    let initdata = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[plugins.attester.sample]\nargs = [\"-c\", \"touch {}\"]\ncommand = \"/bin/sh\"\n'''\n",
        mark.display()
    );
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(&initdata)
    );
    let (peerpod, env, _) = provision(root.path(), &ud);
    assert!(env.contains(&("ATTESTD_CONFIG_FILE_SOURCE".into(), "init-data".into())));
    let aa = std::fs::read_to_string(peerpod.join("aa.toml")).unwrap();
    let etc = pod_vm_image(root.path(), &p);
    // The image's ceiling alone refuses it, whatever the flag says.
    for source in ["init-data", "operator"] {
        let e = Attestd::start_env(
            |_| aa.clone(),
            &[],
            &[
                ("ATTESTD_CONFIG_DIR", &etc),
                ("ATTESTD_CONFIG_FILE_SOURCE", source),
            ],
        )
        .err()
        .expect("attestd started on an aa.toml naming a command");
        assert!(
            e.stderr.contains("attestd.toml, line 2: plugins.attester.sample.args: a -c file from init-data may not set what attestd launches ("),
            "{}",
            e.stderr
        );
        assert!(!e.stderr.contains("plugin ready"), "{}", e.stderr);
    }
    assert!(!mark.exists(), "the command ran");
}

/// Issue 26 (low): a skipped path is the host's text; printed raw, a line
/// break or an escape sequence in it forged journal lines. It is printed
/// quoted and escaped, one line per skipped entry.
#[test]
fn skipped_paths_are_printed_escaped() {
    let root = tempfile::tempdir().unwrap();
    // YAML's double-quoted escapes put a real line break and ESC in the path.
    let ud = "#cloud-config\nwrite_files:\n- path: \"/etc/x\\nattestd[1]: forged\\e[31m\"\n  content: x\n";
    let (_, _, said) = provision(root.path(), ud);
    let skipped: Vec<&str> = said.lines().filter(|l| l.starts_with("skipped")).collect();
    assert_eq!(
        skipped,
        ["skipped \"/etc/x\\nattestd[1]: forged\\u{1b}[31m\": only plain paths under /run/peerpod, at most 4 deep, are written"],
        "{said}"
    );
    assert!(!said.contains('\u{1b}'), "{said}");
    assert!(!said.lines().any(|l| l.starts_with("attestd[1]")), "{said}");
}

/// Issue 38 (high): init-data that nothing binds is only more host input, yet
/// it supplied the -c file at the init-data scope and the trust files. attestd
/// now stops, saying why; an image that allows it (`[config_file]
/// unbound_init_data = "treat-as-user-data"`) starts with the -c file read as
/// user-data's, and its first-boot step writes no trust file from init-data.
#[tokio::test]
async fn init_data_that_nothing_binds_stops_attestd_unless_the_image_lowers_it() {
    // The sample plugin without a launch-time digest cannot bind.
    let p = Plugin::sample("ttrpc");
    let initdata = r#"version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://127.0.0.1:8080"
[plugins]
call_timeout_ms = 4321
'''
"cdh.toml" = "[kbc]\n"
"policy.rego" = "package agent_policy\n"
"#;
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(initdata)
    );
    let start = |root: &Path, etc: &str| {
        let peerpod = root.join("peerpod");
        let aa = std::fs::read_to_string(peerpod.join("aa.toml")).unwrap();
        let toml = peerpod.join("initdata.toml").display().to_string();
        Attestd::start_env(
            |_| aa.clone(),
            &["--initdata-toml", &toml],
            &[
                ("ATTESTD_CONFIG_DIR", etc),
                ("ATTESTD_CONFIG_FILE_SOURCE", "init-data"),
            ],
        )
    };
    // The default: refused, nothing served.
    let root = tempfile::tempdir().unwrap();
    let etc = pod_vm_image(root.path(), &p);
    let (peerpod, env, _) = provision(root.path(), &ud);
    assert!(env.contains(&("ATTESTD_CONFIG_FILE_SOURCE".into(), "init-data".into())));
    assert!(peerpod.join("cdh.toml").exists() && peerpod.join("policy.rego").exists());
    let e = start(root.path(), &etc)
        .err()
        .expect("attestd started on unbound init-data");
    assert_eq!(e.status.unwrap().code(), Some(1), "{}", e.stderr);
    assert!(
        e.stderr.lines().last().unwrap().starts_with(
            "error: init-data was given, but the primary plugin cannot bind it into its evidence \
             (plugin sample (sample): init-data binding is not supported by this attester): \
             nothing measures it"
        ),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("attestd ready"), "{}", e.stderr);

    // An image that takes it as user-data.
    let root = tempfile::tempdir().unwrap();
    let system = format!(
        "[config_file]\nsource = \"init-data\"\nunbound_init_data = \"treat-as-user-data\"\n\n{}",
        config(root.path(), &p, &[], "")
    );
    let etc = config_dir(root.path(), Some(&system), &[]);
    let (peerpod, _, said) = provision(root.path(), &ud);
    assert!(!peerpod.join("cdh.toml").exists() && !peerpod.join("policy.rego").exists());
    assert!(
        said.contains("skipped \"init-data [data] cdh.toml\": the image takes init-data that nothing binds as user-data"),
        "{said}"
    );
    let a = start(root.path(), &etc).unwrap_or_else(|e| panic!("{}", e.stderr));
    let log = a.log();
    assert!(
        log.contains("[config_file] unbound_init_data = \"treat-as-user-data\": starting again with the -c file read as user-data's"),
        "{log}"
    );
    // Read again as user-data's: [plugins] (its timeout), not upstream's, is ignored.
    assert!(
        log.contains("ignored: user-data is unmeasured: only upstream's keys are read from it")
            && log.contains("key=plugins"),
        "{log}"
    );
    assert!(
        log.contains("init-data not bound (plugin sample (sample): init-data binding is not supported by this attester): the -c file was read as user-data's"),
        "{log}"
    );
    assert_eq!(
        a.evidence(b"ok").await.unwrap(),
        br#"{"report_data":"b2s=","svn":"1"}"#
    );
}

/// `containers/podvm/reference-values.py` says what it cannot compute rather
/// than print values that would not match a boot (the boot tests check the
/// values it does print against a quote).
#[test]
fn reference_values_refuse_what_they_cannot_compute() {
    let d = tempfile::tempdir().unwrap();
    let script = attestd_e2e::repo_root().join("containers/podvm/reference-values.py");
    let run = |kernel: &[u8], memory: Option<&str>| {
        let k = d.path().join("vmlinuz");
        let i = d.path().join("initrd");
        std::fs::write(&k, kernel).unwrap();
        std::fs::write(&i, b"initramfs").unwrap();
        let mut c = std::process::Command::new("python3");
        c.arg(&script).arg(&k).arg(&i).arg("root=/dev/vda");
        if let Some(m) = memory {
            c.arg(m);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err)
    };
    // A boot protocol header at 0x202, its version at 0x206, loadflags at 0x211.
    // initrd_addr_max at 0x22c.
    let kernel = |protocol: u16, loaded_high: bool| {
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
        k[0x211] = u8::from(loaded_high);
        k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        k
    };
    let mut low = kernel(0x20f, true);
    low[0x22c..0x230].copy_from_slice(&4u32.to_le_bytes());
    let prefix = format!(
        "error: cannot compute the reference values of {} and {}: ",
        d.path().join("vmlinuz").display(),
        d.path().join("initrd").display()
    );
    for (k, memory, why) in [
        (
            kernel(0x20f, true),
            Some("4096"),
            "memory 4096 MiB: computed only up to 2816 MiB",
        ),
        (vec![0u8; 0x400], None, "no Linux boot protocol header"),
        (
            kernel(0x202, true),
            None,
            "boot protocol 0x202: expected a high kernel, 2.03 or later",
        ),
        (
            kernel(0x20f, false),
            None,
            "boot protocol 0x20f: expected a high kernel, 2.03 or later",
        ),
        (
            low,
            None,
            "the initramfs (9 bytes) does not fit below 0x4, where qemu puts it",
        ),
        (kernel(0x20f, true), None, "not a PE image (no MZ header)"),
    ] {
        let (code, err) = run(&k, memory);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.trim_end(), format!("{prefix}{why}"));
    }
    let (code, err) = run(&kernel(0x20f, true), Some("lots"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with(&prefix), "{err}");
    // Wrong arguments: the usage, status 2.
    let o = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr)
        .starts_with("Usage: reference-values.py VMLINUZ INITRD CMDLINE"));
}

/// Issue 39 (medium): a plain-http KBS in init-data's aa.toml (upstream's keys
/// only, as kata's CI and older cloud-api-adaptor releases write it) stopped
/// attestd at start, so no AA API at all. From init-data it is the tenant's
/// measured choice: attestd starts and warns; from user-data it is refused.
#[test]
fn a_plain_http_kbs_starts_from_init_data_and_is_refused_from_user_data() {
    let p = Plugin::sample("ttrpc");
    let root = tempfile::tempdir().unwrap();
    let etc = pod_vm_image(root.path(), &p);
    let aa = "[token_configs.kbs]\nurl = \"http://kbs.example:8080\"\n";
    let a = Attestd::start_env(
        |_| aa.to_string(),
        &[],
        &[
            ("ATTESTD_CONFIG_DIR", &etc),
            ("ATTESTD_CONFIG_FILE_SOURCE", "init-data"),
        ],
    )
    .unwrap_or_else(|e| panic!("{}", e.stderr));
    assert!(
        a.log()
            .contains("plain http to the KBS off this machine (allow_insecure_http)"),
        "{}",
        a.log()
    );
    drop(a);
    let e = Attestd::start_env(
        |_| aa.to_string(),
        &[],
        &[
            ("ATTESTD_CONFIG_DIR", &etc),
            ("ATTESTD_CONFIG_FILE_SOURCE", "user-data"),
        ],
    )
    .err()
    .expect("a plain-http KBS from user-data started");
    assert!(
        e.stderr.contains(
            "error: KBS URL \"http://kbs.example:8080\": plain http is allowed only on loopback"
        ),
        "{}",
        e.stderr
    );
}

/// User-data as cloud-api-adaptor renders it: init-data (gzipped, base64) and
/// APF's config.
fn cloud_user_data() -> String {
    let initdata = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs.example:8080\"\n'''\n\"policy.rego\" = \"package agent_policy\\n\"\n";
    format!(
        "#cloud-config\nwrite_files:\n{}{}",
        entry("/run/peerpod/apf.json", "{\"pod-network\": {}}"),
        entry("/run/peerpod/initdata", &gzip_b64(initdata)),
    )
}

/// Every file under `dir`, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const AZURE: &str = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
const AWS_TOKEN: &str = "/latest/api/token";
const USER_DATA: &str = "/latest/user-data";
const GCP: &str = "/computeMetadata/v1/instance/attributes/user-data";

/// Each provider's metadata service serving `ud` in its own form (base64 for
/// Azure and GCP, as their providers store it; as is for AWS and Alibaba),
/// answering only a request made as the provider requires.
mod clouds {
    use attestd_e2e::imds::{Answer, Routed, ALIBABA, LINK_LOCAL};

    /// A route on `host` answering `body` only when `header` is `want`, else
    /// `refusal`: how each provider tells its own clients apart.
    fn gated(
        host: &'static str,
        method: &'static str,
        url: &'static str,
        (header, want): (&'static str, &'static str),
        body: Vec<u8>,
        refusal: u16,
    ) -> Routed {
        (
            host,
            method,
            url,
            Box::new(move |r, _| match r.header(header) {
                Some(v) if v == want => Answer::ok(body.clone()),
                _ => Answer::status(refusal),
            }),
        )
    }

    pub fn azure(ud: &[u8]) -> Vec<Routed> {
        let body = super::b64(ud).into_bytes();
        vec![gated(
            LINK_LOCAL,
            "GET",
            super::AZURE,
            ("Metadata", "true"),
            body,
            400,
        )]
    }

    /// IMDSv2: the token for a PUT with its TTL, the user-data for the token.
    pub fn aws(ud: &[u8]) -> Vec<Routed> {
        const TOKEN: &str = "AQAEAtoken==";
        vec![
            gated(
                LINK_LOCAL,
                "PUT",
                super::AWS_TOKEN,
                ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                TOKEN.into(),
                400,
            ),
            gated(
                LINK_LOCAL,
                "GET",
                super::USER_DATA,
                ("X-aws-ec2-metadata-token", TOKEN),
                ud.to_vec(),
                401,
            ),
        ]
    }

    /// AWS with the token's PUT answered by `token`, and the user-data served
    /// whatever token its GET carries (the test then reads what was sent).
    pub fn aws_token_answered(
        ud: &[u8],
        token: impl Fn() -> Answer + Send + Sync + 'static,
    ) -> Vec<Routed> {
        let body = ud.to_vec();
        vec![
            (
                LINK_LOCAL,
                "PUT",
                super::AWS_TOKEN,
                Box::new(move |_, _| token()),
            ),
            (
                LINK_LOCAL,
                "GET",
                super::USER_DATA,
                Box::new(move |_, _| Answer::ok(body.clone())),
            ),
        ]
    }

    pub fn gcp(ud: &[u8]) -> Vec<Routed> {
        let body = super::b64(ud).into_bytes();
        vec![gated(
            LINK_LOCAL,
            "GET",
            super::GCP,
            ("Metadata-Flavor", "Google"),
            body,
            403,
        )]
    }

    pub fn alibaba(ud: &[u8]) -> Vec<Routed> {
        let body = ud.to_vec();
        vec![(
            ALIBABA,
            "GET",
            super::USER_DATA,
            Box::new(move |_, _| Answer::ok(body.clone())),
        )]
    }
}

/// Issue 39 (high): each cloud's metadata service, as cloud-api-adaptor's
/// process-user-data reads it (its endpoints, headers, IMDSv2's token, base64
/// where the provider encodes), delivers the same files as the same bytes in
/// a file. The services are fakes on the providers' own addresses inside a
/// namespace of the test's own; each answers only a request made as the
/// provider requires.
#[test]
fn each_cloud_delivers_its_user_data_as_the_file_form_does() {
    use attestd_e2e::imds::{Imds, ALIBABA, LINK_LOCAL};
    let ud = cloud_user_data();
    let want = {
        let root = tempfile::tempdir().unwrap();
        let (out, _, _) = provision(root.path(), &ud);
        files(&out)
    };
    assert!(want.iter().any(|(n, _)| n == "initdata.digest"), "{want:?}");
    let u = ud.as_bytes();
    let routes = [
        clouds::azure(u),
        clouds::aws(u),
        clouds::gcp(u),
        clouds::alibaba(u),
    ];
    let imds = Imds::start(routes.into_iter().flatten().collect());
    for from in ["azure", "aws", "gcp", "alibaba"] {
        let root = tempfile::tempdir().unwrap();
        let o = imds.provision(root.path(), from, &["--fetch-timeout", "20"]);
        assert!(o.status.success(), "{from}: {}", said(&o));
        assert_eq!(
            files(&root.path().join("peerpod")),
            want,
            "{from}: {}",
            said(&o)
        );
        // One attempt each: every request was made as the provider requires.
        assert!(!said(&o).contains("attempt"), "{from}: {}", said(&o));
    }
    let seen: Vec<(&str, String, String)> = imds
        .requests()
        .iter()
        .map(|r| (r.addr, r.method.clone(), r.target.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (LINK_LOCAL, "GET".into(), AZURE.into()),
            (LINK_LOCAL, "PUT".into(), AWS_TOKEN.into()),
            (LINK_LOCAL, "GET".into(), USER_DATA.into()),
            (LINK_LOCAL, "GET".into(), GCP.into()),
            (ALIBABA, "GET".into(), USER_DATA.into()),
        ]
    );
    // GCP's by its name, as upstream asks it.
    let gcp = &imds.requests()[3];
    assert_eq!(gcp.header("Host"), Some("metadata.google.internal"));
}

/// AWS without IMDSv2 (the token request refused): IMDSv1, no token header,
/// as upstream falls back.
#[test]
fn aws_falls_back_to_imdsv1_when_no_token_is_given() {
    use attestd_e2e::imds::{Answer, Imds};
    let imds = Imds::start(clouds::aws_token_answered(
        cloud_user_data().as_bytes(),
        || Answer::status(403),
    ));
    let root = tempfile::tempdir().unwrap();
    let o = imds.provision(root.path(), "aws", &[]);
    assert!(o.status.success(), "{}", said(&o));
    assert!(
        said(&o).contains("IMDSv2 token: status 403; trying IMDSv1"),
        "{}",
        said(&o)
    );
    let get = imds
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .unwrap();
    assert_eq!(get.header("X-aws-ec2-metadata-token"), None);
    assert!(root.path().join("peerpod/initdata.digest").exists());
}

/// An IMDSv2 token is taken up to MAX_TOKEN_BYTES; a longer one is refused
/// (it would go into every request's header), and the step falls back to
/// IMDSv1, saying why.
#[test]
fn an_aws_token_is_taken_up_to_its_bound() {
    use attestd_e2e::imds::{Answer, Imds};
    use attestd_podvm::source::MAX_TOKEN_BYTES;
    for (len, taken) in [(MAX_TOKEN_BYTES, true), (MAX_TOKEN_BYTES + 1, false)] {
        let imds = Imds::start(clouds::aws_token_answered(
            cloud_user_data().as_bytes(),
            move || Answer::ok(vec![b't'; len]),
        ));
        let root = tempfile::tempdir().unwrap();
        let o = imds.provision(root.path(), "aws", &[]);
        assert!(o.status.success(), "{len}: {}", said(&o));
        let get = imds
            .requests()
            .into_iter()
            .find(|r| r.method == "GET")
            .unwrap();
        let sent = get.header("X-aws-ec2-metadata-token").map(str::len);
        if taken {
            assert_eq!(sent, Some(len));
        } else {
            assert_eq!(sent, None);
            assert!(
                said(&o).contains(&format!("(at most {MAX_TOKEN_BYTES} bytes); trying IMDSv1")),
                "{}",
                said(&o)
            );
        }
    }
}

/// A metadata service that is not up yet, then answers later than a request
/// may wait, is asked again until it answers in time; one that never does
/// stops the step at the deadline with nothing written, and says how often it
/// asked. attestd does not start on a pod VM whose user-data did not arrive.
#[test]
fn a_late_metadata_service_is_asked_again_until_the_deadline() {
    use attestd_e2e::imds::{Answer, Imds, LINK_LOCAL};
    use std::time::{Duration, Instant};
    let ud = b64(cloud_user_data().as_bytes());
    let imds = Imds::start(vec![(
        LINK_LOCAL,
        "GET",
        AZURE,
        Box::new(move |_, n| match n {
            0 => Answer::status(503),
            // Later than REQUEST_TIMEOUT (5 s): the step gives up on it.
            1 => Answer::ok(ud.clone()).after(Duration::from_secs(7)),
            _ => Answer::ok(ud.clone()),
        }),
    )]);
    let root = tempfile::tempdir().unwrap();
    let o = imds.provision(root.path(), "azure", &["--fetch-timeout", "30"]);
    assert!(o.status.success(), "{}", said(&o));
    let out = said(&o);
    assert!(out.contains("attempt 1: "), "{out}");
    assert!(out.contains("status 503"), "{out}");
    assert!(out.contains("attempt 2: "), "{out}");
    assert_eq!(imds.requests().len(), 3, "{out}");
    assert!(root.path().join("peerpod/initdata.digest").exists());

    // Never in time.
    let never = Imds::start(vec![(
        LINK_LOCAL,
        "GET",
        AZURE,
        Box::new(|_, _| Answer::status(500)),
    )]);
    drop(imds);
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = never.provision(root.path(), "azure", &["--fetch-timeout", "3"]);
    assert!(!o.status.success(), "{}", said(&o));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("user-data from Azure IMDS: Azure IMDS: no usable user-data in")
            && err.contains("attempts within the 3 s deadline")
            && err.contains("status 500"),
        "{err}"
    );
    assert!(never.requests().len() >= 3, "{}", never.requests().len());
    assert!(!root.path().join("peerpod").exists());
}

/// An answer that is not cloud-config is asked for again (a service may answer
/// before the user-data is in place, which is why upstream parses inside its
/// retries), and at the deadline the error says where it failed, never what
/// the body held. An answer over the bound is refused at once: asking again
/// cannot make it smaller.
#[test]
fn bad_answers_are_refused_without_echoing_them_and_oversized_ones_at_once() {
    use attestd_e2e::imds::{Answer, Imds, ALIBABA, LINK_LOCAL};
    let bad =
        b64(b"#cloud-config\nwrite_files: [ {path: /run/peerpod/apf.json, content: 'SECRET-KEY'");
    let imds = Imds::start(vec![
        (
            LINK_LOCAL,
            "GET",
            GCP,
            Box::new(move |_, _| Answer::ok(bad.clone())),
        ),
        (
            ALIBABA,
            "GET",
            USER_DATA,
            Box::new(|_, _| Answer::ok(vec![b'#'; attestd_podvm::MAX_USER_DATA_BYTES + 1])),
        ),
    ]);
    let root = tempfile::tempdir().unwrap();
    let o = imds.provision(root.path(), "gcp", &["--fetch-timeout", "2"]);
    assert!(!o.status.success());
    let out = said(&o);
    assert!(out.contains("user-data is not valid cloud-config"), "{out}");
    assert!(!out.contains("SECRET"), "{out}");
    assert!(imds.requests().len() >= 2, "{out}");

    let before = imds.requests().len();
    let o = imds.provision(root.path(), "alibaba", &["--fetch-timeout", "20"]);
    assert!(!o.status.success());
    assert!(
        said(&o).contains(&format!(
            "http://100.100.100.200/latest/user-data: the body is more than {} bytes",
            attestd_podvm::MAX_USER_DATA_BYTES
        )),
        "{}",
        said(&o)
    );
    assert_eq!(imds.requests().len(), before + 1);
    assert!(!root.path().join("peerpod").exists());
}

/// A source named on the command line that is not there is an error (before,
/// a missing file started attestd on the image alone, and the pod's init-data
/// was silently not applied).
#[test]
fn a_named_user_data_file_that_is_missing_stops_the_step() {
    let root = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(attestd_e2e::bin("attestd-podvm"))
        .args(["provision", "--from", "file", "--user-data"])
        .arg(root.path().join("absent"))
        .arg("--out-dir")
        .arg(root.path().join("peerpod"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(said(&o).contains("no user-data at"), "{}", said(&o));
    assert!(!root.path().join("peerpod").exists());
    let o = std::process::Command::new(attestd_e2e::bin("attestd-podvm"))
        .args(["provision", "--from", "file"])
        .output()
        .unwrap();
    assert!(
        said(&o).contains("--from file needs --user-data PATH"),
        "{}",
        said(&o)
    );
}

/// What `dir` holds: name → (bytes, mode bits).
fn tree(dir: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let bytes = if meta.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().into_string().unwrap(),
                (bytes, meta.permissions().mode() & 0o777),
            )
        })
        .collect()
}

/// cloud-api-adaptor's `process-user-data provision-files` as its image runs it
/// (its paths are fixed: `/media/cidata/user-data` in, `/run/peerpod` out), in
/// a mount namespace with both on memory; `ud` (if any) in the cidata place.
/// Inside `netns` when given; with `dmi`'s SMBIOS tables as the machine's
/// (`/sys/firmware/dmi/tables`, where upstream's DMI library reads them). Its
/// output, and `/run/peerpod` copied to `out`.
fn process_user_data(
    caa: &Path,
    ud: Option<&Path>,
    out: &Path,
    netns: Option<&attestd_e2e::netns::Netns>,
    dmi: Option<&Path>,
) -> std::process::Output {
    let script = r#"set -e
mount -t tmpfs tmpfs /run && mkdir /run/peerpod
mount -t tmpfs tmpfs /media && mkdir /media/cidata
[ -z "$1" ] || cp "$1" /media/cidata/user-data
if [ -n "$4" ]; then
    mount -t tmpfs tmpfs /sys/firmware && mkdir -p /sys/firmware/dmi/tables
    cp "$4"/* /sys/firmware/dmi/tables/
fi
"$2" provision-files -t 10
cp -a /run/peerpod/. "$3"
stat -c '%a' /run/peerpod > "$3/.dir-mode""#;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = ns.exec("unshare");
            c.args(["-m", "--propagation", "private"]);
            c
        }
        None => {
            let mut c = std::process::Command::new("unshare");
            c.args(["-m", "--propagation", "private"]);
            c
        }
    };
    std::fs::create_dir_all(out).unwrap();
    cmd.args(["sh", "-c", script, "sh"])
        .arg(ud.map(|p| p.as_os_str()).unwrap_or_default())
        .arg(caa.join("process-user-data"))
        .arg(out)
        .arg(dmi.map(|p| p.as_os_str()).unwrap_or_default())
        .output()
        .unwrap()
}

/// Base64 of gzip, read back (an `initdata` file, as both write it).
fn gunzip_b64(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    use std::io::Read as _;
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The hex digest of `doc` by its own `algorithm`.
fn hex_digest(doc: &[u8]) -> String {
    use sha2::Digest as _;
    let t: toml::Table = toml::from_str(std::str::from_utf8(doc).unwrap()).unwrap();
    match t["algorithm"].as_str().unwrap() {
        "sha256" => hex::encode(sha2::Sha256::digest(doc)),
        "sha384" => hex::encode(sha2::Sha384::digest(doc)),
        "sha512" => hex::encode(sha2::Sha512::digest(doc)),
        a => panic!("{a}"),
    }
}

/// An init-data case of the comparison below.
struct Variant {
    name: &'static str,
    /// The pod's `cc_init_data` annotation (the TOML, as kata's runtime hands it on).
    annotation: Option<String>,
    /// peer-pods-cm's `INITDATA` (already encoded), used when the pod has none.
    global: Option<String>,
    /// The field attestd-podvm names when it refuses (as kata's agent would).
    refused: Option<&'static str>,
}

/// Issue 39 (done when): cloud-api-adaptor's own user-data writer (its
/// `initdata.Encode` and `cloudinit` template, at the pinned commit) renders a
/// peer pod's user-data; its `process-user-data` and attestd-podvm each turn it
/// into files. For every init-data kata accepts, both write the same files with
/// the same bytes and the same digest, attestd-podvm's never more open than
/// upstream's; for what kata refuses (no `version`, `0.2.0`), upstream writes
/// and attestd-podvm refuses, naming the field, before writing anything. The
/// forms: the cidata file (libvirt, byom), and AWS's, Alibaba's and GCP's
/// metadata services ([`cloud_forms`]), for every variant.
#[test]
fn attestd_podvm_writes_what_cloud_api_adaptors_process_user_data_writes() {
    use attestd_podvm::source::{Hypervisor, Platform};
    let test = "attestd_podvm_writes_what_cloud_api_adaptors_process_user_data_writes";
    let Some(caa) = attestd_e2e::peers::peer_or_skip("cloud-api-adaptor", test) else {
        return;
    };
    let kata_default = attestd_e2e::peers::peer_or_skip("kata-containers", test)
        .map(|d| std::fs::read_to_string(d.join("default-initdata.toml")).unwrap());
    let doc = |alg: &str, version: Option<&str>| {
        format!(
            "{}algorithm = \"{alg}\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs.example:8080\"\n'''\n\"cdh.toml\" = '''\nsocket = 'unix:///run/confidential-containers/cdh.sock'\ncredentials = []\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs.example:8080\"\n'''\n\"policy.rego\" = '''\npackage agent_policy\n\ndefault CreateContainerRequest := true\n'''\n",
            version.map(|v| format!("version = \"{v}\"\n")).unwrap_or_default()
        )
    };
    let v = |name, annotation: Option<String>, global: Option<String>, refused| Variant {
        name,
        annotation,
        global,
        refused,
    };
    let mut variants = vec![
        v("sha256", Some(doc("sha256", Some("0.1.0"))), None, None),
        v("sha384", Some(doc("sha384", Some("0.1.0"))), None, None),
        v("sha512", Some(doc("sha512", Some("0.1.0"))), None, None),
        v("no init-data", None, None, None),
        v(
            "peer-pods-cm INITDATA",
            None,
            Some(gzip_b64(&doc("sha384", Some("0.1.0")))),
            None,
        ),
        v(
            "no version",
            Some(doc("sha256", None)),
            None,
            Some("version"),
        ),
        v(
            "version 0.2.0",
            Some(doc("sha256", Some("0.2.0"))),
            None,
            Some("version"),
        ),
    ];
    if let Some(k) = &kata_default {
        variants.push(v("kata's default-initdata", Some(k.clone()), None, None));
    }
    let root = tempfile::tempdir().unwrap();
    let apf = root.path().join("apf.json");
    std::fs::write(&apf, "{\n    \"pod-network\": {\n        \"podip\": \"10.244.1.5/24\"\n    },\n    \"tls-server-key\": \"-----BEGIN PRIVATE KEY-----\\nMC4CAQ\\n-----END PRIVATE KEY-----\\n\"\n}").unwrap();
    let auth = root.path().join("auth.json");
    std::fs::write(
        &auth,
        "{\"auths\":{\"registry.example\":{\"auth\":\"dXNlcjpwYXNz\"}}}",
    )
    .unwrap();
    let kvm = Platform::read().hypervisor == Hypervisor::Kvm;
    for (
        i,
        Variant {
            name,
            annotation,
            global,
            refused,
        },
    ) in variants.iter().enumerate()
    {
        let dir = root.path().join(format!("v{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut writer = std::process::Command::new(caa.join("attestd-caa-userdata"));
        writer
            .arg("--apf-json")
            .arg(&apf)
            .arg("--auth-json")
            .arg(&auth)
            .arg("--scratch-space");
        if let Some(a) = annotation {
            std::fs::write(dir.join("annotation"), a).unwrap();
            writer.arg("--annotation").arg(dir.join("annotation"));
        }
        if let Some(g) = global {
            std::fs::write(dir.join("global"), g).unwrap();
            writer.arg("--global-initdata").arg(dir.join("global"));
        }
        let o = writer.output().unwrap();
        assert!(o.status.success(), "{name}: {}", said(&o));
        let ud = dir.join("user-data");
        std::fs::write(&ud, &o.stdout).unwrap();

        let theirs_dir = dir.join("caa");
        let o = process_user_data(&caa, Some(&ud), &theirs_dir, None, None);
        assert!(
            o.status.success(),
            "{name}: process-user-data: {}",
            said(&o)
        );
        let mut theirs = tree(&theirs_dir);
        let their_dir_mode = theirs.remove(".dir-mode").unwrap().0;

        let ours_dir = dir.join("peerpod");
        let o = std::process::Command::new(attestd_e2e::bin("attestd-podvm"))
            .args(["provision", "--from", "file", "--user-data"])
            .arg(&ud)
            .arg("--out-dir")
            .arg(&ours_dir)
            .arg("--config-dir")
            .arg(dir.join("no-image-config"))
            .output()
            .unwrap();
        if let Some(field) = refused {
            // Upstream writes what kata's agent will refuse; attestd-podvm
            // refuses first, naming the field, and writes nothing.
            assert!(!o.status.success(), "{name}: {}", said(&o));
            assert!(
                said(&o).contains(&format!("init-data: {field}")),
                "{name}: {}",
                said(&o)
            );
            assert!(!ours_dir.exists(), "{name}");
            assert!(theirs.contains_key("initdata.digest"), "{name}: {theirs:?}");
            continue;
        }
        assert!(o.status.success(), "{name}: {}", said(&o));
        for f in [
            "apf.json",
            "auth.json",
            "scratch-space.marker",
            "initdata",
            "initdata.digest",
        ] {
            assert!(
                theirs.contains_key(f),
                "{name}: upstream wrote {:?}",
                theirs.keys()
            );
        }
        let ours = tree(&ours_dir);
        compare(name, &theirs, &ours);
        use std::os::unix::fs::PermissionsExt as _;
        let our_dir_mode = std::fs::metadata(&ours_dir).unwrap().permissions().mode() & 0o777;
        let their_dir_mode =
            u32::from_str_radix(String::from_utf8(their_dir_mode).unwrap().trim(), 8).unwrap();
        assert_eq!(
            our_dir_mode & !their_dir_mode,
            0,
            "{name}: /run/peerpod {our_dir_mode:o} vs {their_dir_mode:o}"
        );
        // The digest both leave is the one attestd binds: initdata.toml's, by
        // its own algorithm.
        assert_eq!(
            hex_digest(&ours["initdata.toml"].0),
            String::from_utf8(ours["initdata.digest"].0.clone()).unwrap(),
            "{name}"
        );
        if annotation.is_none() && global.is_none() {
            assert!(
                String::from_utf8_lossy(&ours["initdata.digest"].0).starts_with("adb48cc1"),
                "{name}"
            );
        }

        cloud_forms(name, &caa, &dir, &std::fs::read(&ud).unwrap(), kvm);
    }
}

/// SMBIOS tables (a 64-bit entry point and the structure table) of a machine
/// whose system manufacturer is `vendor`, as `/sys/firmware/dmi/tables` holds
/// them: how upstream knows AWS and Alibaba Cloud.
fn smbios_tables(dir: &Path, vendor: &str) {
    // Type 1 (System Information), its manufacturer string 1; end of table.
    let mut table = vec![1u8, 8, 1, 0, 1, 0, 0, 0];
    table.extend_from_slice(vendor.as_bytes());
    table.extend_from_slice(&[0, 0, 127, 4, 2, 0, 0, 0]);
    let mut ep = b"_SM3_\0\x18\x03\x00\x00\x01\x00".to_vec();
    ep.extend_from_slice(&(table.len() as u32).to_le_bytes());
    ep.extend_from_slice(&0u64.to_le_bytes());
    ep[5] = 0u8.wrapping_sub(ep.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("smbios_entry_point"), ep).unwrap();
    std::fs::write(dir.join("DMI"), table).unwrap();
}

/// The same user-data from the metadata services, in each provider's own form
/// (GCP's base64 as its provider stores it; AWS's and Alibaba's as IMDS serves
/// them): upstream's process-user-data, on a machine it takes for that cloud,
/// and attestd-podvm write the same files as from the cidata file. AWS and
/// Alibaba are known by DMI (given here as SMBIOS tables), GCP by CPUID's KVM
/// (this machine's) and its metadata server answering; Azure only by CPUID's
/// Hyper-V, which no test here can give upstream's binary.
fn cloud_forms(name: &str, caa: &Path, dir: &Path, ud: &[u8], kvm: bool) {
    use attestd_e2e::imds::{Answer, Imds, Routed, LINK_LOCAL};
    use std::io::Write as _;
    let want = tree(&dir.join("peerpod"));
    // Upstream asks GCP's server whether it is there before it takes GCP.
    let mut gcp: Vec<Routed> = vec![(
        LINK_LOCAL,
        "GET",
        "/computeMetadata/v1/instance",
        Box::new(|_, _| Answer::ok("{}")),
    )];
    gcp.extend(clouds::gcp(ud));
    let forms: Vec<(&str, Option<&str>, Vec<Routed>)> = vec![
        ("gcp", None, gcp),
        ("aws", Some("Amazon EC2"), clouds::aws(ud)),
        ("alibaba", Some("Alibaba Cloud"), clouds::alibaba(ud)),
    ];
    for (form, vendor, routes) in forms {
        if form == "gcp" && !kvm {
            let _ = writeln!(
                std::io::stderr(),
                "peers: {name}: the GCP form skipped: CPUID does not say KVM, so upstream would not take this machine for GCP"
            );
            continue;
        }
        let imds = Imds::start(routes);
        let dmi = vendor.map(|v| {
            let d = dir.join(format!("dmi-{form}"));
            smbios_tables(&d, v);
            d
        });
        let theirs_dir = dir.join(format!("caa-{form}"));
        let o = process_user_data(caa, None, &theirs_dir, Some(&imds.netns), dmi.as_deref());
        assert!(
            o.status.success(),
            "{form}: process-user-data: {}",
            said(&o)
        );
        let provider = match form {
            "gcp" => "GCP",
            "aws" => "AWS",
            _ => "AlibabaCloud",
        };
        assert!(
            said(&o).contains(&format!("provider: {provider}")),
            "{form}: {}",
            said(&o)
        );
        let mut theirs = tree(&theirs_dir);
        theirs.remove(".dir-mode");
        let root = dir.join(form);
        let o = imds.provision(&root, form, &[]);
        assert!(o.status.success(), "{form}: {}", said(&o));
        let ours = tree(&root.join("peerpod"));
        compare(&format!("{name} ({form})"), &theirs, &ours);
        // And the same as from the cidata file.
        let strip = |t: &std::collections::BTreeMap<String, (Vec<u8>, u32)>| {
            t.iter()
                .filter(|(k, _)| k.as_str() != attestd_podvm::MANIFEST)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&ours), strip(&want), "{name} ({form})");
    }
}

/// Every file upstream wrote, attestd-podvm wrote with the same bytes (an
/// `initdata` upstream made itself, the stand-in, by what it decodes to: gzip's
/// bytes differ between Go's and Rust's), its mode never more open; and
/// attestd-podvm wrote nothing else but its own.
fn compare(
    name: &str,
    theirs: &std::collections::BTreeMap<String, (Vec<u8>, u32)>,
    ours: &std::collections::BTreeMap<String, (Vec<u8>, u32)>,
) {
    for (file, (bytes, mode)) in theirs {
        let (mine, my_mode) = ours.get(file).unwrap_or_else(|| {
            panic!(
                "{name}: attestd-podvm did not write {file}; it wrote {:?}",
                ours.keys()
            )
        });
        if file == "initdata" {
            assert_eq!(gunzip_b64(mine), gunzip_b64(bytes), "{name}: initdata");
        } else {
            assert_eq!(
                String::from_utf8_lossy(mine),
                String::from_utf8_lossy(bytes),
                "{name}: {file}"
            );
        }
        assert_eq!(
            my_mode & !mode,
            0,
            "{name}: {file} is {my_mode:o}, upstream's {mode:o}"
        );
    }
    let own = ["attestd.env", "initdata.toml", attestd_podvm::MANIFEST];
    for (file, (bytes, _)) in ours {
        // attestd's unit names `-c /run/peerpod/aa.toml`: with none from
        // init-data or user-data (kata's default-initdata has an empty
        // `[data]`), attestd-podvm writes it empty.
        let empty_aa = file == "aa.toml" && bytes.is_empty();
        assert!(
            theirs.contains_key(file) || own.contains(&file.as_str()) || empty_aa,
            "{name}: attestd-podvm wrote {file}, upstream did not"
        );
    }
}

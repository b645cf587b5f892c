#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use super::*;

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n'''\n\"policy.rego\" = \"package agent_policy\\n\"\n";

fn gzip_b64(bytes: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

fn run(user_data: &str) -> (tempfile::TempDir, Result<Provisioned, Error>) {
    let d = tempfile::tempdir().unwrap();
    let r = provision(
        user_data.as_bytes(),
        &d.path().join("peerpod"),
        &ImageSettings::default(),
    );
    (d, r)
}

fn read(d: &tempfile::TempDir, name: &str) -> String {
    std::fs::read_to_string(d.path().join("peerpod").join(name)).unwrap()
}

#[test]
fn kata_style_initdata_becomes_the_files_attestd_reads() {
    // As cloud-api-adaptor writes it: the annotation's value, base64 of the gzip.
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {}\n- path: /run/peerpod/daemon.json\n  content: '{{}}'\n",
        gzip_b64(INITDATA.as_bytes())
    );
    let (d, r) = run(&ud);
    let r = r.unwrap();
    assert!(r.initdata);
    // The document byte for byte: its digest is over these bytes.
    assert_eq!(read(&d, "initdata.toml"), INITDATA);
    assert_eq!(
        read(&d, "aa.toml"),
        "[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n"
    );
    assert_eq!(read(&d, "policy.rego"), "package agent_policy\n");
    assert_eq!(read(&d, "daemon.json"), "{}");
    assert_eq!(
        read(&d, "attestd.env"),
        "ATTESTD_INITDATA=--initdata-toml /run/peerpod/initdata.toml\nATTESTD_CONFIG_FILE_SOURCE=init-data\n"
    );
    assert_eq!(r.aa_toml, AaSource::InitData);
    // As process-user-data leaves them: the document as it came, its digest in hex.
    assert_eq!(read(&d, "initdata"), gzip_b64(INITDATA.as_bytes()));
    use sha2::Digest as _;
    assert_eq!(
        read(&d, "initdata.digest"),
        hex::encode(sha2::Sha384::digest(INITDATA.as_bytes()))
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.path().join("peerpod/aa.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Issue 38 (high): an image that takes unbound init-data as user-data writes
/// no trust file from init-data (attestd binds only after they are read);
/// aa.toml is still init-data's, which attestd lowers when nothing binds it.
#[test]
fn an_image_taking_unbound_init_data_as_user_data_writes_no_trust_file_from_it() {
    let with_trust =
        format!("{INITDATA}\"cdh.toml\" = \"[kbc]\\n\"\n\"policy.json\" = '{{\"default\": []}}'\n");
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(with_trust.as_bytes())
    );
    let etc = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("attestd.toml.d")).unwrap();
    std::fs::write(
        etc.path().join("attestd.toml"),
        "[config_file]\nsource = \"init-data\"\n",
    )
    .unwrap();
    assert_eq!(
        ImageSettings::read(etc.path()).unwrap(),
        ImageSettings::default()
    );
    // A drop-in says so; a later one could say otherwise.
    std::fs::write(
        etc.path().join("attestd.toml.d/50-unbound.toml"),
        "[config_file]\nunbound_init_data = \"treat-as-user-data\"\n",
    )
    .unwrap();
    let image = ImageSettings::read(etc.path()).unwrap();
    assert!(image.unbound_as_user_data);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("peerpod");
    let r = provision(ud.as_bytes(), &out, &image).unwrap();
    for name in MEASURED_ONLY {
        assert!(!out.join(name).exists(), "{name} written");
        assert!(
            r.skipped.contains(&Skipped {
                path: format!("init-data [data] {name}"),
                why: SKIP_UNBOUND
            }),
            "{:?}",
            r.skipped
        );
    }
    assert_eq!(r.aa_toml, AaSource::InitData);
    assert!(out.join("initdata.toml").exists());
    // The default image writes them.
    let r = provision(ud.as_bytes(), &out, &ImageSettings::default()).unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    for name in MEASURED_ONLY {
        assert!(out.join(name).exists(), "{name} not written");
    }
    // An image configuration that does not read stops provisioning.
    std::fs::write(
        etc.path().join("attestd.toml.d/60-bad.toml"),
        "[config_file\n",
    )
    .unwrap();
    let e = ImageSettings::read(etc.path()).unwrap_err().to_string();
    assert!(e.ends_with("60-bad.toml does not read"), "{e}");
}

#[test]
fn plain_toml_initdata_and_no_user_data_at_all() {
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  encoding: b64\n  content: {}\n",
        base64::engine::general_purpose::STANDARD.encode(INITDATA)
    );
    let (d, r) = run(&ud);
    assert!(r.unwrap().initdata);
    assert_eq!(read(&d, "initdata.toml"), INITDATA);
    // Empty user-data: no init-data, so process-user-data's stand-in, whose
    // aa.toml is empty (attestd always gets -c).
    let (d, r) = run("");
    assert_eq!(
        r.unwrap(),
        Provisioned {
            written: vec![
                "aa.toml".into(),
                "initdata".into(),
                "initdata.digest".into(),
                "initdata.toml".into(),
                "attestd.env".into()
            ],
            aa_toml: AaSource::InitData,
            ..Default::default()
        }
    );
    assert_eq!(read(&d, "aa.toml"), "");
    assert_eq!(read(&d, "initdata.toml"), DUMMY_INITDATA);
    assert_eq!(
        read(&d, "attestd.env"),
        "ATTESTD_INITDATA=--initdata-toml /run/peerpod/initdata.toml --initdata-stand-in\nATTESTD_CONFIG_FILE_SOURCE=init-data\n"
    );
}

/// Issue 39 (medium): no init-data bound nothing, while cloud-api-adaptor's
/// images extend PCR 8 with its dummy's digest, which a KBS policy recorded
/// on them pins. The same stand-in, byte for byte, and its digest.
#[test]
fn no_init_data_is_process_user_datas_stand_in() {
    let (d, r) =
        run("#cloud-config\nwrite_files:\n- path: /run/peerpod/aa.toml\n  content: 'x = 1'\n");
    let r = r.unwrap();
    assert!(!r.initdata);
    assert_eq!(
        read(&d, "initdata.digest"),
        "adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d"
    );
    // Its empty aa.toml wins over user-data's, as there.
    assert_eq!(r.aa_toml, AaSource::InitData);
    assert_eq!(read(&d, "aa.toml"), "");
    // In kata's annotation form, which reads back to the document.
    let raw = read(&d, "initdata");
    let gz = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    assert_eq!(text, DUMMY_INITDATA);
    // User-data cannot supply the digest: it is ours.
    let (_, r) = run("write_files:\n- path: /run/peerpod/initdata.digest\n  content: '00'\n");
    assert_eq!(r.unwrap().skipped[0].why, SKIP_GENERATED);
}

#[test]
fn paths_outside_peerpod_are_skipped_never_written() {
    let ud = "#cloud-config\nwrite_files:\n- path: /etc/attestd/attestd.toml.d/99.toml\n  content: x\n- path: /run/peerpod/../../etc/passwd\n  content: x\n- path: /run/peerpod/sub/../../x\n  content: x\n- path: /run/peerpod/sub//x\n  content: x\n- path: /run/peerpod/sub/.hidden/x\n  content: x\n- path: /run/peerpod/.hidden\n  content: x\n- path: /run/peerpodx\n  content: x\n- path: /run/peerpod/attestd.env\n  content: ATTESTD_INITDATA=--grpc_sock 0.0.0.0:1\n";
    let (d, r) = run(ud);
    let r = r.unwrap();
    assert_eq!(r.skipped.len(), 8, "{r:?}");
    assert!(
        r.skipped[..7].iter().all(|s| s.why == SKIP_OUTSIDE),
        "{r:?}"
    );
    // attestd.env is always ours: user-data cannot add attestd flags.
    assert_eq!(
        r.skipped[7],
        Skipped {
            path: "/run/peerpod/attestd.env".into(),
            why: SKIP_GENERATED
        }
    );
    assert!(read(&d, "attestd.env").starts_with(
        "ATTESTD_INITDATA=--initdata-toml /run/peerpod/initdata.toml --initdata-stand-in\n"
    ));
    let mut names: Vec<_> = std::fs::read_dir(d.path().join("peerpod"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            MANIFEST,
            "aa.toml",
            "attestd.env",
            "initdata",
            "initdata.digest",
            "initdata.toml"
        ]
    );
}

#[test]
fn initdata_wins_over_an_unmeasured_aa_toml() {
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/aa.toml\n  content: 'unmeasured = true'\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(INITDATA.as_bytes())
    );
    let (d, r) = run(&ud);
    assert_eq!(r.unwrap().aa_toml, AaSource::InitData);
    assert!(read(&d, "aa.toml").contains("token_configs.kbs"));
}

/// Issue 26: what decides what is trusted comes from init-data or not at all;
/// an aa.toml from user-data is written, and attestd told it is unmeasured.
#[test]
fn user_data_never_supplies_what_is_trusted() {
    let hostile = "#cloud-config\nwrite_files:\n\
        - path: /run/peerpod/aa.toml\n  content: |\n    [plugins.attester.sample]\n    command = \"/bin/sh\"\n\
        - path: /run/peerpod/policy.json\n  content: '{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}'\n\
        - path: /run/peerpod/cdh.toml\n  content: x\n\
        - path: /run/peerpod/policy.rego\n  content: x\n\
        - path: /run/peerpod/initdata.toml\n  content: x\n";
    // Init-data without an aa.toml, and none at all (its stand-in's empty
    // aa.toml then wins, as in cloud-api-adaptor's images): trust files come
    // from init-data or not at all.
    let initdata_without_aa = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package agent_policy\\n\"\n";
    let with_initdata = format!(
        "{hostile}- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(initdata_without_aa.as_bytes())
    );
    for (ud, initdata) in [(hostile.to_string(), false), (with_initdata, true)] {
        let (d, r) = run(&ud);
        let r = r.unwrap();
        assert_eq!(r.initdata, initdata);
        let aa_source = if initdata {
            AaSource::UserData
        } else {
            AaSource::InitData
        };
        assert_eq!(r.aa_toml, aa_source);
        let skipped: Vec<(&str, &str)> =
            r.skipped.iter().map(|s| (s.path.as_str(), s.why)).collect();
        assert_eq!(
            skipped,
            [
                ("/run/peerpod/policy.json", SKIP_MEASURED),
                ("/run/peerpod/cdh.toml", SKIP_MEASURED),
                ("/run/peerpod/policy.rego", SKIP_MEASURED),
                ("/run/peerpod/initdata.toml", SKIP_GENERATED),
            ]
        );
        assert!(!d.path().join("peerpod/policy.json").exists());
        assert!(!d.path().join("peerpod/cdh.toml").exists());
        if initdata {
            // The host's aa.toml is written as it came; attestd reads it as user-data.
            assert!(read(&d, "aa.toml").contains("/bin/sh"));
            assert!(read(&d, "attestd.env").ends_with("ATTESTD_CONFIG_FILE_SOURCE=user-data\n"));
            // init-data's own policy.rego, not the host's.
            assert_eq!(read(&d, "policy.rego"), "package agent_policy\n");
            assert_eq!(read(&d, "initdata.toml"), initdata_without_aa);
        } else {
            assert_eq!(read(&d, "aa.toml"), "");
            assert!(!d.path().join("peerpod/policy.rego").exists());
            assert_eq!(read(&d, "initdata.toml"), DUMMY_INITDATA);
        }
    }
}

#[test]
fn nesting_is_bounded_before_parsing_and_the_bound_is_taken() {
    let nested = |n: usize| format!("write_files: {}{}\n", "[".repeat(n), "]".repeat(n));
    // At the bound: parsed (and not cloud-config's shape, which is another error).
    let (_, r) = run(&nested(MAX_NESTING));
    assert!(!matches!(r, Err(Error::TooDeep(_))), "{r:?}");
    let (d, r) = run(&nested(MAX_NESTING + 1));
    assert_eq!(
        r.unwrap_err().to_string(),
        "user-data nests brackets more than 64 deep"
    );
    assert!(!d.path().join("peerpod").exists());
    // What cost a minute of CPU before: the largest user-data, all brackets.
    let started = std::time::Instant::now();
    let (_, r) = run(&"[".repeat(MAX_USER_DATA_BYTES));
    assert!(matches!(r, Err(Error::TooDeep(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Issue 41 (low): brackets in a file's text (a block scalar), a quoted
/// string or a comment open no collection: 65 `[` in a file refused the
/// whole user-data before. A flow collection after a tag, an anchor or `? `
/// is still one; and past 1024 brackets of text a backstop refuses anyway.
#[test]
fn nesting_counts_structure_not_text() {
    let deep = "[".repeat(MAX_NESTING + 1);
    for ud in [
        format!("#cloud-config\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: |\n    {deep}\n    more {deep}\n"),
        format!("#cloud-config\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: \"{deep}\"\n"),
        format!("#cloud-config\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: '{deep}'\n"),
        format!("#cloud-config # {deep}\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: a{deep}\n"),
    ] {
        let (d, r) = run(&ud);
        assert!(r.is_ok(), "{ud}: {r:?}");
        let text = std::fs::read_to_string(d.path().join("peerpod/x.txt")).unwrap();
        assert!(text.contains(&deep), "{text}");
    }
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for ud in [
        format!("write_files: !!seq {}\n", nest(MAX_NESTING + 1)),
        format!("write_files: &a {}\n", nest(MAX_NESTING + 1)),
        format!("? {}\n: x\n", nest(MAX_NESTING + 1)),
        format!("--- {}\n", nest(MAX_NESTING + 1)),
        format!("write_files:\n- {}\n", nest(MAX_NESTING + 1)),
    ] {
        let (_, r) = run(&ud);
        assert!(matches!(r, Err(Error::TooDeep(64))), "{ud}: {r:?}");
    }
    // At the backstop's bound: read.
    let at = "[".repeat(MAX_TEXT_NESTING);
    let (_, r) = run(&format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: |\n    {at}\n"
    ));
    assert!(r.is_ok(), "{r:?}");
    let text = "[".repeat(MAX_TEXT_NESTING + 1);
    let (_, r) = run(&format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/x.txt\n  content: |\n    {text}\n"
    ));
    assert_eq!(
        r.unwrap_err().to_string(),
        "user-data nests brackets more than 1024 deep"
    );
}

#[test]
fn bad_user_data_is_refused_and_writes_nothing() {
    let big = "#".repeat(MAX_USER_DATA_BYTES + 1);
    let bomb = {
        // Compresses to a few KiB, expands past the bound.
        let zeros = vec![b' '; MAX_FILE_BYTES + 1];
        format!(
            "write_files:\n- path: /run/peerpod/initdata\n  content: {}\n",
            gzip_b64(&zeros)
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (big, "bytes; at most 262144"),
        ("#!/bin/sh\nrm -rf /\n".into(), "is a script"),
        ("write_files: [".into(), "not valid cloud-config"),
        (
            "write_files:\n- path: /run/peerpod/x\n  encoding: zip\n  content: x\n".into(),
            "unknown encoding \"zip\"",
        ),
        (
            "write_files:\n- path: /run/peerpod/x\n  encoding: b64\n  content: '%%%'\n".into(),
            "not base64",
        ),
        (bomb, "more than 1048576 bytes"),
        (
            "write_files:\n- path: /run/peerpod/initdata\n  content: 'version = \"0.1.0\"\n\n  algorithm = \"md5\"'\n"
                .into(),
            "algorithm \"md5\"",
        ),
        (
            "write_files:\n- path: /run/peerpod/initdata\n  content: '@@@ not toml'\n".into(),
            "not a TOML document",
        ),
        (
            format!(
                "write_files:\n{}",
                "- path: /run/peerpod/x\n  content: x\n".repeat(MAX_FILES + 1)
            ),
            "at most 64",
        ),
    ];
    for (ud, want) in cases {
        let (d, r) = run(&ud);
        let e = r.unwrap_err();
        let msg = format!("{e}");
        assert!(msg.contains(want), "{msg} (wanted {want})");
        assert!(!d.path().join("peerpod").exists(), "{msg}: wrote files");
    }
}

#[test]
fn bounds_hold_exactly_at_their_limit() {
    // MAX_FILES entries, and a file of exactly MAX_FILE_BYTES, are read.
    let ud = format!(
        "write_files:\n{}",
        "- path: /run/peerpod/x\n  content: x\n".repeat(MAX_FILES)
    );
    run(&ud).1.unwrap();
    let exact = vec![b'a'; MAX_FILE_BYTES];
    let ud = format!(
        "write_files:\n- path: /run/peerpod/x\n  encoding: gzip+b64\n  content: {}\n",
        gzip_b64(&exact)
    );
    let (d, r) = run(&ud);
    r.unwrap();
    assert_eq!(read(&d, "x").len(), MAX_FILE_BYTES);
}

#[test]
fn subdirectories_hold_what_a_registry_pull_reads() {
    // The registry's CA and its lookaside configuration, as a host delivers them
    // (unmeasured: the pin and the tenant's policy decide what runs), and the
    // policy from init-data (measured), which wins over the host's.
    let initdata =
        format!("{INITDATA}\"policy.json\" = '{{\"default\": [{{\"type\": \"reject\"}}]}}'\n");
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/certs.d/10.0.2.100:5000/ca.crt\n  content: CA\n- path: /run/peerpod/registries.d/attestd.yaml\n  content: 'docker: {{}}'\n- path: /run/peerpod/policy.json\n  content: '{{\"default\": [{{\"type\": \"insecureAcceptAnything\"}}]}}'\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(initdata.as_bytes())
    );
    let (d, r) = run(&ud);
    let r = r.unwrap();
    assert_eq!(
        r.skipped,
        [Skipped {
            path: "/run/peerpod/policy.json".into(),
            why: SKIP_MEASURED
        }]
    );
    assert_eq!(read(&d, "certs.d/10.0.2.100:5000/ca.crt"), "CA");
    assert_eq!(read(&d, "registries.d/attestd.yaml"), "docker: {}");
    assert!(read(&d, "policy.json").contains("reject"));
    use std::os::unix::fs::PermissionsExt as _;
    for dir in ["certs.d", "certs.d/10.0.2.100:5000", "registries.d"] {
        let mode = std::fs::metadata(d.path().join("peerpod").join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
}

#[test]
fn depth_is_bounded_and_a_file_cannot_also_be_a_directory() {
    let at = format!("/run/peerpod/{}x", "d/".repeat(MAX_DEPTH - 1));
    let past = format!("/run/peerpod/{}x", "d/".repeat(MAX_DEPTH));
    let ud = format!("write_files:\n- path: {at}\n  content: x\n- path: {past}\n  content: x\n");
    let (d, r) = run(&ud);
    let r = r.unwrap();
    assert_eq!(
        r.skipped,
        vec![Skipped {
            path: past,
            why: SKIP_OUTSIDE
        }]
    );
    assert_eq!(read(&d, &at["/run/peerpod/".len()..]), "x");
    let ud = "write_files:\n- path: /run/peerpod/certs.d\n  content: x\n- path: /run/peerpod/certs.d/h/ca.crt\n  content: x\n";
    let (d, r) = run(ud);
    let msg = r.unwrap_err().to_string();
    assert_eq!(
        msg,
        "write_files entries certs.d and certs.d/h/ca.crt: one is a file, the other under it"
    );
    assert!(!d.path().join("peerpod").exists(), "{msg}: wrote files");
    // The files the tool writes itself count too.
    let ud = "write_files:\n- path: /run/peerpod/attestd.env/x\n  content: x\n";
    let (d, r) = run(ud);
    let msg = r.unwrap_err().to_string();
    assert_eq!(
        msg,
        "write_files entries attestd.env and attestd.env/x: one is a file, the other under it"
    );
    assert!(!d.path().join("peerpod").exists(), "{msg}: wrote files");
}

/// Issue 26 (low): all or nothing, nothing followed, private whatever the
/// umask. Issue 39 (high): written in place, so what other units put in the
/// directory (the image's tmpfiles defaults, kata-agent's policy) stays, and
/// only what this step wrote the last time and no longer writes goes.
#[test]
fn files_are_placed_private_beside_others_and_nothing_is_followed() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("peerpod");
    // Another unit's files (tmpfiles' default policy and auth.json, a link to
    // the policy as kata-agent reads it), a world-writable directory, and a
    // symlink planted where a subdirectory will be written.
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        out.join("policy.rego"),
        "package agent_policy\ndefault x := true\n",
    )
    .unwrap();
    std::fs::write(out.join("auth.json"), "{}").unwrap();
    std::os::unix::fs::symlink("policy.rego", out.join("default-policy.rego")).unwrap();
    let victim = d.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("certs.d")).unwrap();
    let ud = "write_files:\n- path: /run/peerpod/certs.d/h:1/ca.crt\n  content: CA\n- path: /run/peerpod/daemon.json\n  content: '{}'\n";
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let r = provision(ud.as_bytes(), &out, &ImageSettings::default());
    nix::sys::stat::umask(old_umask);
    r.unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("certs.d/h:1/ca.crt")).unwrap(),
        "CA"
    );
    // Others' files stay, the link too.
    assert!(std::fs::read_to_string(out.join("policy.rego"))
        .unwrap()
        .contains("default x"));
    assert_eq!(
        std::fs::read_to_string(out.join("auth.json")).unwrap(),
        "{}"
    );
    assert!(out
        .join("default-policy.rego")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "followed a symlink"
    );
    for p in [&out, &out.join("certs.d"), &out.join("certs.d/h:1")] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", p.display());
    }
    for f in ["aa.toml", "daemon.json", MANIFEST] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Nothing else beside it, and no staging directory left in it.
    let names = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(d.path()), ["peerpod", "victim"]);
    assert_eq!(
        names(&out),
        [
            MANIFEST,
            "aa.toml",
            "attestd.env",
            "auth.json",
            "certs.d",
            "daemon.json",
            "default-policy.rego",
            "initdata",
            "initdata.digest",
            "initdata.toml",
            "policy.rego"
        ]
    );
    // A second run (the unit restarted) without daemon.json: this step's old
    // file goes, others' stay; a name planted in the list is not followed.
    std::fs::write(
        out.join(MANIFEST),
        "aa.toml\nattestd.env\ndaemon.json\ncerts.d/h:1/ca.crt\n../victim/x\nauth.json/../../x\n",
    )
    .unwrap();
    std::fs::write(victim.join("x"), "mine").unwrap();
    let ud = "write_files:\n- path: /run/peerpod/certs.d/h:1/ca.crt\n  content: CA2\n";
    let r = provision(ud.as_bytes(), &out, &ImageSettings::default()).unwrap();
    assert!(r.stale_left.is_empty(), "{:?}", r.stale_left);
    assert!(
        !out.join("daemon.json").exists(),
        "this step's earlier file stayed"
    );
    assert!(out.join("auth.json").exists() && out.join("policy.rego").exists());
    assert_eq!(std::fs::read_to_string(victim.join("x")).unwrap(), "mine");
    assert_eq!(
        std::fs::read_to_string(out.join("certs.d/h:1/ca.crt")).unwrap(),
        "CA2"
    );
}

#[test]
fn a_later_write_failing_leaves_the_old_files_and_no_staging() {
    // plan() leaves nothing that fails while writing (a name both a file and a
    // directory is refused before), so a plan made by hand fails on its second
    // file: the first was staged, and must not be seen.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("peerpod");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("aa.toml"), "old").unwrap();
    let files = vec![
        ("aa.toml".to_string(), b"1".to_vec()),
        // The second write of one name: O_EXCL refuses it.
        ("aa.toml".to_string(), b"2".to_vec()),
    ];
    let e = write_dir(&out, &files).unwrap_err().to_string();
    assert!(e.starts_with("cannot write"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("aa.toml")).unwrap(), "old");
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["aa.toml"]);
    // A directory where a file of ours goes: refused before any rename.
    std::fs::create_dir(out.join("b")).unwrap();
    let files = vec![
        ("aa.toml".to_string(), b"new".to_vec()),
        ("b".to_string(), b"x".to_vec()),
    ];
    let e = write_dir(&out, &files).unwrap_err().to_string();
    assert!(e.starts_with("cannot write") && e.contains("/b"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("aa.toml")).unwrap(), "old");
}

#[test]
fn the_skip_reason_states_the_depth_bound() {
    assert!(SKIP_OUTSIDE.contains(&format!("at most {MAX_DEPTH} deep")));
}

/// Issue 39 (medium): init-data without `version` passed here and stopped
/// attestd later; `version = "0.2.0"` passed here and attestd, and kata's
/// agent refused it. What kata's `validate()` refuses is refused here, naming
/// the field, before anything is written.
#[test]
fn init_data_is_checked_as_kata_checks_it_naming_the_field() {
    let ud = |doc: &str| {
        format!(
            "#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {}\n",
            gzip_b64(doc.as_bytes())
        )
    };
    let long = format!(
        "version = \"{}\"\nalgorithm = \"sha256\"\n[data]\n",
        "9".repeat(500)
    );
    for (doc, want) in [
        (
            "algorithm = \"sha256\"\n[data]\n",
            "init-data: version: missing",
        ),
        (
            "version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
            "init-data: version: \"0.2.0\" (kata accepts \"0.1.0\" only)",
        ),
        (
            "version = 1\nalgorithm = \"sha256\"\n[data]\n",
            "init-data: version: an integer, not a string",
        ),
        (
            "version = \"0.1.0\"\n[data]\n",
            "init-data: algorithm: missing",
        ),
        (
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n",
            "init-data: data: missing (kata requires the table, empty or not)",
        ),
        (
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nextra = 1\n",
            "init-data: [data] \"extra\" is not a string",
        ),
    ] {
        let (d, r) = run(&ud(doc));
        let msg = r.unwrap_err().to_string();
        assert_eq!(msg, want, "{doc}");
        assert!(!d.path().join("peerpod").exists(), "{msg}: wrote files");
    }
    // The host's text is quoted, and cut.
    let (_, r) = run(&ud(&long));
    let msg = r.unwrap_err().to_string();
    assert!(msg.len() < 150 && msg.contains("\"…"), "{msg}");
    // What kata accepts: an empty [data] too.
    let (_, r) = run(&ud("version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n"));
    assert!(r.unwrap().initdata);
}

/// Issue 39 (low): a parse error quoted the user-data into the journal (and
/// the serial console), APF's TLS key and registry credentials among it. An
/// error says where, never what, and quotes a host's path bounded.
#[test]
fn errors_say_where_never_what() {
    let secret = "SECRET-KEY-MATERIAL";
    for (ud, want) in [
        (
            format!("write_files:\n- path: /run/peerpod/x\n  content: {secret}\n  encoding: [\n"),
            "user-data is not valid cloud-config (line ",
        ),
        (
            format!("write_files: {secret}\n"),
            "user-data is not valid cloud-config (line 1, column ",
        ),
        (
            format!("write_files:\n- path: /run/peerpod/initdata\n  content: 'version = \"0.1.0\"\n\n  x = {secret}'\n"),
            "init-data is not a TOML document (nor base64 of its gzip) (line 2, column ",
        ),
    ] {
        let (_, r) = run(&ud);
        let msg = format!("{:#}", anyhow::Error::from(r.unwrap_err()));
        assert!(msg.starts_with(want), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
    }
    // A host's path with a line break and a long tail, as a skip prints it:
    // quoted, escaped, cut.
    let path = format!("/run/x\nforged journal line{}", "y".repeat(200));
    let q = quoted(&path);
    assert!(
        !q.contains('\n') && q.contains("\\n") && q.ends_with("\"…"),
        "{q}"
    );
    // 64 characters, each escaped at most twice as long, the quotes and "…".
    assert!(q.chars().count() <= 2 * MAX_QUOTED + 3, "{q}");
    assert!(q.starts_with("\"/run/x\\nforged journal lineyyy"), "{q}");
}

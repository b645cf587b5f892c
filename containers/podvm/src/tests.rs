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
    let r = provision(user_data.as_bytes(), &d.path().join("peerpod"));
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
        "ATTESTD_INITDATA=--initdata-toml /run/peerpod/initdata.toml\n"
    );
    assert!(!d.path().join("peerpod/initdata").exists());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.path().join("peerpod/aa.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
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
    // Empty user-data: an empty aa.toml (attestd always gets -c) and no init-data.
    let (d, r) = run("");
    assert_eq!(
        r.unwrap(),
        Provisioned {
            written: vec!["aa.toml".into(), "attestd.env".into()],
            ..Default::default()
        }
    );
    assert_eq!(read(&d, "aa.toml"), "");
    assert_eq!(read(&d, "attestd.env"), "ATTESTD_INITDATA=\n");
}

#[test]
fn paths_outside_peerpod_are_skipped_never_written() {
    let ud = "#cloud-config\nwrite_files:\n- path: /etc/attestd/attestd.toml.d/99.toml\n  content: x\n- path: /run/peerpod/../../etc/passwd\n  content: x\n- path: /run/peerpod/sub/../../x\n  content: x\n- path: /run/peerpod/sub//x\n  content: x\n- path: /run/peerpod/sub/.hidden/x\n  content: x\n- path: /run/peerpod/.hidden\n  content: x\n- path: /run/peerpodx\n  content: x\n- path: /run/peerpod/attestd.env\n  content: ATTESTD_INITDATA=--grpc_sock 0.0.0.0:1\n";
    let (d, r) = run(ud);
    let r = r.unwrap();
    assert_eq!(r.skipped.len(), 7, "{r:?}");
    // attestd.env is always ours: user-data cannot add attestd flags.
    assert_eq!(read(&d, "attestd.env"), "ATTESTD_INITDATA=\n");
    let names: Vec<_> = std::fs::read_dir(d.path().join("peerpod"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn initdata_wins_over_an_unmeasured_aa_toml() {
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/aa.toml\n  content: 'unmeasured = true'\n- path: /run/peerpod/initdata\n  content: {}\n",
        gzip_b64(INITDATA.as_bytes())
    );
    let (d, r) = run(&ud);
    r.unwrap();
    assert!(read(&d, "aa.toml").contains("token_configs.kbs"));
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
            "write_files:\n- path: /run/peerpod/initdata\n  content: 'version = 1\n\n  algorithm = \"md5\"'\n"
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
    assert!(r.skipped.is_empty(), "{r:?}");
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
    assert_eq!(r.skipped, vec![past]);
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

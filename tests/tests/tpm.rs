//! The TPM attester against a real software TPM (swtpm), through attestd's AA API.
//! Quotes are verified twice: by this file's own code (signature, nonce, PCR digest)
//! and by tpm2_checkquote. Needs swtpm and tpm2-tools (scripts/test.sh installs them)
//! and the attester built from its own workspace (attesters/tpm).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use attestd_e2e::swtpm::{
    checkquote, free_port_pair, hex, nonce, parse, tpm_plugin, Parsed, Swtpm,
};
use attestd_e2e::{
    attester_bin, config, connect_plugin, ctx, signal, status, Attestd, Plugin, Reaped,
};
use attestd_proto::ttrpc::attestation_agent as t;
use attester_sdk::{Code, Transport};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use nix::sys::signal::Signal;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

/// Our own verifier: RSASSA-SHA256 signature by the AK over TPMS_ATTEST, the
/// qualifying data equal to `nonce`, and the quoted PCR digest equal to
/// SHA-256 over the reported PCR values.
fn verify(p: &Parsed, nonce: &[u8]) -> Result<(), String> {
    // TPMT_SIGNATURE: sigAlg (RSASSA = 0x0014), hash (SHA256 = 0x000b), TPM2B sig.
    let s = &p.signature;
    if s.len() < 6 || s[0..2] != [0x00, 0x14] || s[2..4] != [0x00, 0x0b] {
        return Err("not an RSASSA-SHA256 signature".into());
    }
    let sig_len = u16::from_be_bytes([s[4], s[5]]) as usize;
    let sig = rsa::pkcs1v15::Signature::try_from(&s[6..6 + sig_len]).map_err(|e| e.to_string())?;
    let key = rsa::RsaPublicKey::from_public_key_der(&p.ak_der).map_err(|e| e.to_string())?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(&p.message, &sig)
        .map_err(|e| format!("signature: {e}"))?;
    // TPMS_ATTEST: magic, type (quote), qualifiedSigner, extraData, clockInfo, firmware.
    let m = &p.message;
    let mut at = 0;
    let mut take = |n: usize| {
        let r = m
            .get(at..at + n)
            .ok_or("attest truncated")
            .map(|s| s.to_vec());
        at += n;
        r
    };
    if take(4)? != [0xff, 0x54, 0x43, 0x47] || take(2)? != [0x80, 0x18] {
        return Err("not a TPM-generated quote".into());
    }
    let n = u16::from_be_bytes(take(2)?.try_into().unwrap()) as usize;
    take(n)?; // qualifiedSigner
    let n = u16::from_be_bytes(take(2)?.try_into().unwrap()) as usize;
    if take(n)? != nonce {
        return Err("qualifying data is not the nonce".into());
    }
    take(17 + 8)?; // clockInfo, firmwareVersion
                   // TPMS_QUOTE_INFO: TPML_PCR_SELECTION, then TPM2B_DIGEST pcrDigest.
    let count = u32::from_be_bytes(take(4)?.try_into().unwrap());
    for _ in 0..count {
        take(2)?;
        let size = take(1)?[0] as usize;
        take(size)?;
    }
    let n = u16::from_be_bytes(take(2)?.try_into().unwrap()) as usize;
    let quoted = take(n)?;
    let mut h = Sha256::new();
    for pcr in &p.pcrs {
        h.update(pcr);
    }
    if quoted != h.finalize().to_vec() {
        return Err("PCR digest does not match the reported PCRs".into());
    }
    Ok(())
}

#[tokio::test]
async fn quote_through_attestd_passes_both_verifiers() {
    let tpm = Swtpm::start();
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    assert_eq!(a.tee_type().await, "tpm");

    // A SHA-384 digest as report data: the quote binds its first 32 bytes.
    let rd: Vec<u8> = (0..48).collect();
    let ev = a.evidence(&rd).await.unwrap();
    let parsed = parse(&ev);
    assert_eq!(parsed.pcrs.len(), 24);
    verify(&parsed, &nonce(&rd)).unwrap();
    assert!(
        checkquote(&parsed, &nonce(&rd)),
        "tpm2_checkquote rejected a good quote"
    );

    // A wrong nonce fails both.
    let wrong = nonce(b"another nonce");
    assert_eq!(
        verify(&parsed, &wrong).unwrap_err(),
        "qualifying data is not the nonce"
    );
    assert!(!checkquote(&parsed, &wrong));

    // A flipped PCR byte fails both.
    let mut flipped = parse(&ev);
    flipped.pcrs[7][0] ^= 1;
    assert_eq!(
        verify(&flipped, &nonce(&rd)).unwrap_err(),
        "PCR digest does not match the reported PCRs"
    );
    assert!(!checkquote(&flipped, &nonce(&rd)));

    // The reported PCRs are the TPM's.
    assert_eq!(parsed.pcrs[0], tpm.pcr(0));
}

#[tokio::test]
async fn evidence_has_the_upstream_shape() {
    let tpm = Swtpm::start();
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let ev = a.evidence(b"shape").await.unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../../attesters/tpm/tests/fixtures/tpm_evidence.json"
    ))
    .unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&fixture));
    assert_eq!(keys(&ours["tpm_quote"]), keys(&fixture["tpm_quote"]));
    // Same encodings: std base64 for the blobs, lowercase hex for the PCRs, a DER
    // SubjectPublicKeyInfo of the same size for an RSA-2048 AK.
    let ak = STANDARD
        .decode(ours["ak_public"].as_str().unwrap())
        .unwrap();
    let fak = STANDARD
        .decode(fixture["ak_public"].as_str().unwrap())
        .unwrap();
    assert_eq!(ak.len(), fak.len());
    assert_eq!(ak[..33], fak[..33]);
    for pcr in ours["tpm_quote"]["pcrs"].as_array().unwrap() {
        let s = pcr.as_str().unwrap();
        assert_eq!(s.len(), 64);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }
    // Compact JSON, keys sorted: the bytes start like this.
    assert!(ev.starts_with(br#"{"ak_public":"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"#));
}

#[tokio::test]
async fn extend_changes_the_pcr_as_tpm2_pcrread_sees_it() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tpm.sock");
    let mut child = spawn_plugin_at(&tpm, &sock);
    let c = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(10)).await;
    assert!(
        c.detect().await.unwrap(),
        "Detect: a TPM answers on the TCTI"
    );
    let before = tpm.pcr(23);
    let digest = Sha256::digest(b"github.com/confidential-containers PullImage {}").to_vec();
    c.extend_measurement(23, digest.clone()).await.unwrap();
    let want = Sha256::digest([before.as_slice(), &digest].concat()).to_vec();
    assert_eq!(tpm.pcr(23), want);
    assert_eq!(c.read_measurement(23).await.unwrap(), want);

    // PCR 17 (upstream's default register) takes extends only from locality 3 or 4.
    let e = c.extend_measurement(17, digest.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().starts_with("TPM2_PCR_Extend of PCR 17 failed"),
        "{}",
        e.message()
    );

    // Bad input: a digest of the wrong size, a PCR that does not exist.
    let e = c.extend_measurement(23, vec![0; 31]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "digest is 31 bytes; the SHA-256 bank takes 32");
    let e = c.extend_measurement(24, digest).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "PCR 24 does not exist: the SHA-256 bank has PCRs 0 to 23"
    );
    assert_eq!(tpm.pcr(23), want, "a refused extend changes nothing");
    signal(child.id(), Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn bind_init_data_extends_pcr_8() {
    let tpm = Swtpm::start();
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let before = tpm.pcr(8);
    let digest = Sha256::digest(b"initdata").to_vec();
    let req = t::BindInitDataRequest {
        Digest: digest.clone(),
        ..Default::default()
    };
    a.ttrpc().await.bind_init_data(ctx(), &req).await.unwrap();
    assert_eq!(
        tpm.pcr(8),
        Sha256::digest([before.as_slice(), &digest].concat()).to_vec()
    );
    // A digest too short for the bank is refused with its size.
    let req = t::BindInitDataRequest {
        Digest: vec![1; 16],
        ..Default::default()
    };
    let e = a
        .ttrpc()
        .await
        .bind_init_data(ctx(), &req)
        .await
        .unwrap_err();
    let (code, message) = status(e);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        message,
        "plugin tpm: init-data digest is 16 bytes; at least 32 are needed"
    );
}

#[tokio::test]
async fn oversized_report_data_is_invalid_argument() {
    let tpm = Swtpm::start();
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, message) = status(a.evidence(&[0; 65]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        message,
        "runtime data for tpm: report data is 65 bytes, more than the 64 bytes this attester accepts"
    );
}

#[test]
fn no_tpm_is_a_clear_start_failure() {
    let port = free_port_pair();
    let p = Plugin {
        name: "tpm".into(),
        command: attester_bin("tpm", "attester-tpm"),
        args: vec!["--tcti".into(), format!("swtpm:host=127.0.0.1,port={port}")],
        transport: "ttrpc".into(),
    };
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr.contains(&format!(
            "error: no TPM answers on swtpm:host=127.0.0.1,port={port}"
        )),
        "{}",
        e.stderr
    );
    assert!(e
        .stderr
        .contains("error: cannot start plugin tpm: it exited during startup (exit status: 1)"));
}

#[test]
fn ak_handle_holding_a_wrong_key_is_refused() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx_file = dir.path().join("k.ctx");
    // An unrestricted decryption key at 0x81010003.
    tpm.tool_ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-G",
        "rsa2048:null:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt",
        "-c",
        ctx_file.to_str().unwrap(),
    ]);
    tpm.tool_ok(&[
        "tpm2_evictcontrol",
        "-C",
        "o",
        "-c",
        ctx_file.to_str().unwrap(),
        "0x81010003",
    ]);
    let p = tpm_plugin(&tpm, &["--ak-handle", "0x81010003"]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr
            .contains("error: the key at AK handle 0x81010003 is not a restricted RSA signing key"),
        "{}",
        e.stderr
    );
}

#[tokio::test]
async fn the_ak_is_created_once_and_reused() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    // Serving does not wait for the AK (a key generation on a fresh TPM): it is
    // made at the first quote.
    let sock = dir.path().join("serve-only.sock");
    let mut child = spawn_plugin_at(&tpm, &sock);
    let c = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(10)).await;
    assert!(c.detect().await.unwrap());
    signal(child.id(), Signal::SIGTERM);
    child.wait().unwrap();
    let out = tpm.tool(&["tpm2_getcap", "handles-persistent"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("0x81010002"),
        "the AK was made before any quote"
    );
    let mut first_ak = None;
    for round in 0..2 {
        let sock = dir.path().join(format!("tpm{round}.sock"));
        let mut child = spawn_plugin_at(&tpm, &sock);
        let c = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(10)).await;
        let ev = c.evidence(b"x".to_vec()).await.unwrap();
        let ak = parse(&ev.bytes).ak_der;
        if let Some(first) = &first_ak {
            assert_eq!(first, &ak, "the persisted AK was not reused");
        }
        first_ak = Some(ak);
        signal(child.id(), Signal::SIGTERM);
        child.wait().unwrap();
    }
    let out = tpm.tool(&["tpm2_getcap", "handles-persistent"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0x81010002"));
}

/// attester-tpm by hand (no core) on `sock`; killed when dropped, so a failed
/// assertion does not leave it running.
fn spawn_plugin_at(tpm: &Swtpm, sock: &Path) -> Reaped {
    Reaped(
        Command::new(attester_bin("tpm", "attester-tpm"))
            .args(["--tcti", &tpm.tcti(), "--socket"])
            .arg(sock)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn initdata_toml_at_start_extends_pcr_8() {
    // A sha384 init-data document: its digest (computed here by sha384sum over the
    // raw file) binds by its first 32 bytes into the SHA-256 bank's PCR 8.
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("initdata.toml");
    std::fs::write(
        &f,
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault AllowRequestsFailingPolicy := true\n'''\n",
    )
    .unwrap();
    let out = Command::new("sha384sum").arg(&f).output().unwrap();
    let digest = hex(std::str::from_utf8(&out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap());
    assert_eq!(digest.len(), 48);
    let before = tpm.pcr(8);
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start_with(
        |d| config(d, &p, &[], ""),
        &["--initdata-toml", f.to_str().unwrap()],
    )
    .unwrap();
    let want = Sha256::digest([before.as_slice(), &digest[..32]].concat()).to_vec();
    assert_eq!(tpm.pcr(8), want);
    assert!(a.log().contains("init-data bound"), "{}", a.log());
}

/// Issue 39 (medium): with no init-data, attestd-podvm hands attestd
/// cloud-api-adaptor's stand-in; on a TPM it extends PCR 8 as those images do
/// (`tpm2_pcrextend 8:sha256=<its digest>`), so a KBS policy recorded on them
/// holds.
#[test]
fn the_stand_in_for_no_init_data_extends_pcr_8_as_cloud_api_adaptors_images_do() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("initdata.toml");
    // process-user-data's dummy, byte for byte (attestd-podvm's DUMMY_INITDATA,
    // whose own test pins the same digest).
    let dummy = "algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"aa.toml\" = '''\n'''";
    std::fs::write(&f, dummy).unwrap();
    let before = tpm.pcr(8);
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start_with(
        |d| config(d, &p, &[], ""),
        &[
            "--initdata-toml",
            f.to_str().unwrap(),
            "--initdata-stand-in",
        ],
    )
    .unwrap();
    let digest = hex("adb48cc14fea9403d3d51f3b5f5068fd4d80445a14e94f1b3d5dbabaad66478d");
    let want = Sha256::digest([before.as_slice(), &digest].concat()).to_vec();
    assert_eq!(tpm.pcr(8), want);
    assert!(a.log().contains("init-data bound"), "{}", a.log());
}

/// The `tpm2_checkquote` recipe of docs/attesters/tpm.md, as written there.
fn doc_recipe() -> String {
    let doc =
        std::fs::read_to_string(attestd_e2e::repo_root().join("docs/attesters/tpm.md")).unwrap();
    let after = doc
        .split("<!-- recipe: checkquote")
        .nth(1)
        .expect("the recipe marker");
    let block = after.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_string()
}

#[tokio::test]
async fn the_documented_checkquote_recipe_accepts_a_quote_and_refuses_a_wrong_nonce() {
    let tpm = Swtpm::start();
    let p = tpm_plugin(&tpm, &[]);
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let ev = a.evidence(&[0x00, 0x11, 0x22, 0x33, 0x44]).await.unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("evidence.json"), &ev).unwrap();
    let recipe = doc_recipe();
    let run = |rd: &str| {
        Command::new("bash")
            .args(["-c", &recipe])
            .current_dir(d.path())
            .env("RUNTIME_DATA_HEX", rd)
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .unwrap()
    };
    let ok = run("0011223344");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = run("0011223345");
    assert!(!wrong.status.success());
}

#[test]
fn a_tpm_nobody_started_is_refused_with_what_to_do() {
    let tpm = Swtpm::start_with_flags("not-need-init");
    let p = tpm_plugin(&tpm, &[]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    // attestd's own error carries the plugin's reason.
    assert!(
        e.stderr.contains("error: cannot start plugin tpm: it exited during startup (exit status: 1): it said \"error: "),
        "{}",
        e.stderr
    );
    assert!(
        e.stderr
            .contains("the TPM has not been started (TPM2_Startup)"),
        "{}",
        e.stderr
    );
    assert!(e.stderr.contains("tpm2_startup -c"), "{}", e.stderr);
}

/// Issue 41 (high): a plugin started on a TPM with no AK, whose AK another
/// process then persists (here another plugin's first quote, as `attestd
/// evidence` or a retiring generation does), takes that key at its first
/// quote: it is the one its template makes. Before, that quote failed on
/// TPM2_EvictControl (NV_DEFINED) and so did every later one.
#[tokio::test]
async fn an_ak_persisted_by_another_process_after_start_is_taken() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("first.sock");
    let _first = spawn_plugin_at(&tpm, &sock);
    let first = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(10)).await;
    assert!(first.detect().await.unwrap());
    let other = dir.path().join("other.sock");
    let mut child = spawn_plugin_at(&tpm, &other);
    let c = connect_plugin(&other, Transport::Ttrpc, Duration::from_secs(10)).await;
    let theirs = parse(&c.evidence(b"other".to_vec()).await.unwrap().bytes);
    signal(child.id(), Signal::SIGTERM);
    child.wait().unwrap();
    for round in 0..2 {
        let rd = format!("first {round}");
        let ours = parse(&first.evidence(rd.as_bytes().to_vec()).await.unwrap().bytes);
        assert_eq!(ours.ak_der, theirs.ak_der);
        assert!(checkquote(&ours, &nonce(rd.as_bytes())));
    }
}

/// The same, but what was persisted at the handle is some other signing key:
/// the quote is refused, naming the handle and what to do, not taken.
#[tokio::test]
async fn a_foreign_key_persisted_after_start_is_refused() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let _plugin = spawn_plugin_at(&tpm, &sock);
    let c = connect_plugin(&sock, Transport::Ttrpc, Duration::from_secs(10)).await;
    assert!(c.detect().await.unwrap());
    // A restricted RSA signing key, but not the template's (noda differs).
    let key = dir.path().join("k.ctx");
    tpm.tool_ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-G",
        "rsa2048:rsassa-sha256:null",
        "-a",
        "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        key.to_str().unwrap(),
    ]);
    tpm.tool_ok(&["tpm2_flushcontext", "-t"]);
    tpm.tool_ok(&[
        "tpm2_evictcontrol",
        "-C",
        "o",
        "-c",
        key.to_str().unwrap(),
        "0x81010002",
    ]);
    let e = c.evidence(b"x".to_vec()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.to_string().contains(
            "a key was persisted at AK handle 0x81010002 after the plugin started, and it is not the key the AK template makes"
        ),
        "{e}"
    );
}

/// A TPM that can never make the AK fails the start (and so `auto` passes it
/// over), as before the AK was made lazily: an owner hierarchy with an
/// authorization value, and a TPM whose persistent slots are all taken.
#[test]
fn a_tpm_that_cannot_make_an_ak_is_refused_at_start() {
    let tpm = Swtpm::start();
    tpm.tool_ok(&["tpm2_changeauth", "-c", "owner", "not-ours"]);
    let p = tpm_plugin(&tpm, &[]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr.contains(
            "no AK at 0x81010002, and this TPM cannot make one: its owner hierarchy has an authorization value"
        ),
        "{}",
        e.stderr
    );

    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (parent, key) = (dir.path().join("p.ctx"), dir.path().join("k.ctx"));
    let (parent, key) = (parent.to_str().unwrap(), key.to_str().unwrap());
    // swtpm has no resource manager: every tool leaves its objects loaded.
    tpm.tool_ok(&[
        "tpm2_createprimary",
        "-Q",
        "-C",
        "o",
        "-G",
        "ecc",
        "-c",
        parent,
    ]);
    tpm.tool_ok(&["tpm2_flushcontext", "-t"]);
    for i in 0u32.. {
        tpm.tool_ok(&["tpm2_create", "-Q", "-C", parent, "-G", "ecc", "-c", key]);
        tpm.tool_ok(&["tpm2_flushcontext", "-t"]);
        let handle = format!("{:#x}", 0x8101_1000 + i);
        if !tpm
            .tool(&["tpm2_evictcontrol", "-Q", "-C", "o", "-c", key, &handle])
            .status
            .success()
        {
            break;
        }
        tpm.tool_ok(&["tpm2_flushcontext", "-t"]);
        assert!(i < 1024, "the TPM never filled up");
    }
    let p = tpm_plugin(&tpm, &[]);
    let e = Attestd::start(|d| config(d, &p, &[], "")).err().unwrap();
    assert!(
        e.stderr.contains(
            "no AK at 0x81010002, and this TPM cannot make one: it has no free persistent slot"
        ),
        "{}",
        e.stderr
    );
}

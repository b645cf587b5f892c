//! Key release: GetToken("kbs") through attestd's ttrpc AA API with the sample
//! attester, against the test KBS (tests/src/kbs.rs: real RCAR on loopback, its own
//! JCS, JWT and JWE code). The token must verify with the KBS's key and name the
//! returned key pair, which must decrypt a resource the KBS encrypts to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd::kbs::TeeKey;
use attestd_e2e::kbs::{attestd_config as kbs_config, open_resource, verify_jwt, TestKbs};
use attestd_e2e::{config, status, Attestd, Plugin};

#[tokio::test]
async fn get_token_kbs_yields_a_token_and_a_key_that_opens_resources() {
    let kbs = TestKbs::start().await;
    kbs.put("default/key/image-kek", b"0123456789abcdef0123456789abcdef");
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let out = a.get_token("kbs").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    // Exactly what CDH parses, nothing more.
    assert_eq!(keys, ["tee_keypair", "token"], "{v}");
    let token = v["token"].as_str().unwrap();
    let pem = v["tee_keypair"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    // The token is the KBS's, and binds this key pair's public half.
    let claims = verify_jwt(&kbs.verifying_key(), token).unwrap();
    let key = TeeKey::from_pem(pem).unwrap();
    assert_eq!(
        claims["tee-pubkey"],
        serde_json::to_value(key.public_jwk()).unwrap()
    );

    // The key pair decrypts a resource the KBS encrypts to it (as CDH does).
    let (plain, _) = open_resource(&kbs.url(), "default/key/image-kek", token, &key).await;
    assert_eq!(plain, b"0123456789abcdef0123456789abcdef");

    // What attestd sent: the sample evidence, no additional evidence, no init-data.
    let att = &kbs.attestations()[0];
    assert_eq!(att["tee-evidence"]["additional_evidence"], "");
    assert!(att["init-data"].is_null());
    assert_eq!(att["runtime-data"]["tee-pubkey"]["alg"], "ECDH-ES+A256KW");
}

#[tokio::test]
async fn each_selected_hash_binds_and_init_data_is_sent() {
    for hash in ["sha256", "sha384", "sha512"] {
        let kbs = TestKbs::start().await;
        kbs.knobs().select_hash = Some(hash.into());
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("initdata.toml");
        let text = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
        std::fs::write(&toml, text).unwrap();
        // The sample binds it: its launch-time value is the document's digest
        // (init-data nothing binds is refused).
        use sha2::Digest as _;
        let launch = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let p = Plugin::sample("ttrpc").with_args(&["--init-data-digest", &launch]);
        let a = Attestd::start_with(
            |d| {
                format!(
                    "[token_configs.kbs]\nurl = {:?}\n\n{}",
                    kbs.url(),
                    config(d, &p, &[], "")
                )
            },
            &["--initdata-toml", toml.to_str().unwrap()],
        )
        .unwrap();
        a.get_token("kbs")
            .await
            .unwrap_or_else(|e| panic!("{hash}: {e:?}"));
        let att = &kbs.attestations()[0];
        assert_eq!(att["init-data"]["format"], "toml", "{hash}");
        assert_eq!(
            att["init-data"]["body"],
            std::fs::read_to_string(&toml).unwrap().as_str()
        );
    }
}

#[tokio::test]
async fn rsa_keys_work_too() {
    let kbs = TestKbs::start().await;
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "tee_key_algorithm = \"RSA-OAEP-256\""))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&a.get_token("kbs").await.unwrap()).unwrap();
    let key = TeeKey::from_pem(v["tee_keypair"].as_str().unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(key.public_jwk()).unwrap()["kty"],
        "RSA"
    );
}

// Multi-threaded: the commands block this thread while the KBS answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_token_and_resource() {
    let kbs = TestKbs::start().await;
    kbs.put("default/secret/one", b"resource bytes");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("attestd.toml");
    std::fs::write(&cfg, kbs_config(dir.path(), &kbs.url(), "")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (st, out, err) = attestd_e2e::attestd_cli(&["token", "-c", cfg]);
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    verify_jwt(&kbs.verifying_key(), v["token"].as_str().unwrap()).unwrap();
    let (st, out, err) =
        attestd_e2e::attestd_cli(&["resource", "-c", cfg, "kbs:///default/secret/one"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, "resource bytes");
    let (st, _, err) =
        attestd_e2e::attestd_cli(&["resource", "-c", cfg, "kbs:///default/secret/none"]);
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "error: KBS {}: resource default/secret/none refused: PluginInternalError: \
             Plugin internal error\n",
            kbs.url()
        )),
        "{err}"
    );
    // A KBS sending more than any resource should be: refused, not buffered.
    kbs.knobs().oversized = Some(17 << 20);
    let (st, _, err) =
        attestd_e2e::attestd_cli(&["resource", "-c", cfg, "kbs:///default/secret/one"]);
    assert!(!st.success());
    assert!(
        err.contains("the KBS's answer is over 16777216 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn kbs_down_and_unconfigured_are_clear_errors() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let a = Attestd::start(|d| kbs_config(d, &url, "")).unwrap();
    let (code, msg) = status(a.get_token("kbs").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    assert!(
        msg.starts_with(&format!("KBS {url}: RCAR auth: the KBS did not answer")),
        "{msg}"
    );
    let a = Attestd::start(|d| config(d, &Plugin::sample("ttrpc"), &[], "")).unwrap();
    let (code, msg) = status(a.get_token("kbs").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert!(
        msg.starts_with("token type \"kbs\" is not configured"),
        "{msg}"
    );
    // Plain http to a remote KBS, or credentials in its URL: refused at start,
    // not at the first GetToken; the development opt-in is warned.
    for (url, why) in [
        ("http://kbs.example", "plain http is allowed only on loopback; use https (or, for development, allow_insecure_http = true)"),
        ("https://localhost:pw@kbs.example", "credentials in the URL are not allowed"),
    ] {
        let e = Attestd::start(|d| kbs_config(d, url, "")).err().unwrap();
        assert!(
            e.stderr.contains(&format!("error: KBS URL {url:?}: {why}")),
            "{}",
            e.stderr
        );
    }
    // So is a tee_key_algorithm attestd cannot generate, which a first
    // GetToken would otherwise find.
    let e =
        Attestd::start(|d| kbs_config(d, "https://kbs.example", "tee_key_algorithm = \"A128KW\""))
            .err()
            .unwrap();
    assert_eq!(e.status.unwrap().code(), Some(1));
    assert!(
        e.stderr.contains("error: tee_key_algorithm \"A128KW\" is not supported: use ECDH-ES+A256KW or RSA-OAEP-256"),
        "{}",
        e.stderr
    );
    // Issue 39: a cert that is no certificate fails the first contact, as
    // upstream, with the error that caller gets; evidence still serves.
    let a =
        Attestd::start(|d| kbs_config(d, "https://kbs.example", "cert = \"not a certificate\""))
            .unwrap();
    assert!(
        a.log().contains("the KBS's root certificate (cert) is not a PEM certificate: GetToken(\"kbs\") and KBS resources fail with this until it is fixed"),
        "{}",
        a.log()
    );
    assert!(a.evidence(b"still").await.is_ok());
    let (code, msg) = status(a.get_token("kbs").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "the KBS's root certificate (cert) is not a PEM certificate"
    );
    drop(a);
    let a = Attestd::start(|d| kbs_config(d, "http://kbs.example", "allow_insecure_http = true"))
        .unwrap();
    assert!(
        a.log()
            .contains("plain http to the KBS off this machine (allow_insecure_http)"),
        "{}",
        a.log()
    );
}

#[tokio::test]
async fn the_test_kbs_refuses_replays_stale_nonces_and_missing_cookies() {
    // The fixture's own checks, driven by hand: a verifier that accepted anything
    // would make the tests above worthless.
    let kbs = TestKbs::start().await;
    let http = reqwest::Client::new();
    let auth = |version: &str| {
        http.post(format!("{}/kbs/v0/auth", kbs.url()))
            .json(&serde_json::json!({"version": version, "tee": "sample", "extra-params": {"supported-hash-algorithms": ["sha384"]}}))
            .send()
    };
    let r = auth("0.3.0").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = auth("0.4.0").await.unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let challenge: serde_json::Value = r.json().await.unwrap();
    let att = serde_json::json!({
        "init-data": null,
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "", "y": ""}},
        "tee-evidence": {"primary_evidence": {"report_data": "AAAA", "svn": "1"}, "additional_evidence": ""},
    });
    let attest = |cookie: Option<&str>, body: &serde_json::Value| {
        let mut r = http.post(format!("{}/kbs/v0/attest", kbs.url())).json(body);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let r = attest(None, &att).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("no kbs-session-id cookie"));
    // Wrong binding (report data "AAAA"), then the same nonce again.
    let r = attest(Some(&cookie), &att).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("does not bind"));
    let r = attest(Some(&cookie), &att).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("replay"));
    // A token it did not sign opens nothing.
    kbs.put("a/b/c", b"x");
    let r = http
        .get(format!("{}/kbs/v0/resource/a/b/c", kbs.url()))
        .bearer_auth("e30.e30.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// GetToken("kbs"): the token and the key pair's PEM.
async fn token_and_key(a: &Attestd) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&a.get_token("kbs").await.unwrap()).unwrap();
    (
        v["token"].as_str().unwrap().to_string(),
        v["tee_keypair"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn token_reuse_is_opt_in_and_ends_when_the_attested_state_changes() {
    // Off (the default): a handshake per GetToken, as upstream.
    let kbs = TestKbs::start().await;
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    assert_ne!(token_and_key(&a).await, token_and_key(&a).await);
    assert_eq!(kbs.attestations().len(), 2);

    // On, with the event log on the test plugin's emulated registers. The test
    // KBS's tokens live 300 s.
    let kbs = TestKbs::start().await;
    let plugin = Plugin::test("ttrpc", &["--registers"]);
    let a = Attestd::start(|d| {
        format!(
            "[token_configs.kbs]\nurl = {:?}\nreuse_token_secs = 60\n{}\n\
             [eventlog_config]\nenable_eventlog = true\npath = {:?}\n",
            kbs.url(),
            config(d, &plugin, &[], ""),
            d.join("eventlog").display().to_string()
        )
    })
    .unwrap();
    let first = token_and_key(&a).await;
    assert_eq!(token_and_key(&a).await, first, "reused: same token and key");
    assert_eq!(kbs.attestations().len(), 1);
    verify_jwt(&kbs.verifying_key(), &first.0).unwrap();

    // A runtime measurement changes what a token attests: a fresh one.
    a.extend(
        "github.com/confidential-containers",
        "PullImage",
        "{\"image\":\"x\"}",
    )
    .await
    .unwrap();
    let second = token_and_key(&a).await;
    assert_ne!(second, first);
    assert_ne!(second.1, first.1, "a new key pair too");
    assert_eq!(token_and_key(&a).await, second);
    assert_eq!(kbs.attestations().len(), 2);

    // A plugin restart: another instance gave no evidence for that token.
    let old = a.plugin_pid("test").unwrap();
    attestd_e2e::signal(old, nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.plugin_pid("test").is_none_or(|p| p == old) {
        assert!(std::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let third = token_and_key(&a).await;
    assert_ne!(third, second);
    assert_eq!(token_and_key(&a).await, third);
    assert_eq!(kbs.attestations().len(), 3);
    drop(a);

    // A margin the token's life cannot cover: never reused.
    let kbs = TestKbs::start().await;
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "reuse_token_secs = 300")).unwrap();
    assert_ne!(token_and_key(&a).await, token_and_key(&a).await);
    drop(a);

    // BindInitData: the token predates the binding.
    let kbs = TestKbs::start().await;
    let digest = [9u8; 32];
    let plugin =
        Plugin::sample("ttrpc").with_args(&["--init-data-digest", &attestd_e2e::hex(&digest)]);
    let a = Attestd::start(|d| {
        format!(
            "[token_configs.kbs]\nurl = {:?}\nreuse_token_secs = 60\n{}",
            kbs.url(),
            config(d, &plugin, &[], "")
        )
    })
    .unwrap();
    let before = token_and_key(&a).await;
    assert_eq!(token_and_key(&a).await, before);
    a.bind_init_data(&digest).await.unwrap();
    assert_ne!(token_and_key(&a).await, before);
    assert_eq!(kbs.attestations().len(), 2);
}

//! Key release: GetToken("kbs") through attestd's ttrpc AA API with the sample
//! attester, against the test KBS (tests/src/kbs.rs: real RCAR on loopback, its own
//! JCS, JWT and JWE code). The token must verify with the KBS's key and name the
//! returned key pair, which must decrypt a resource the KBS encrypts to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd::kbs::TeeKey;
use attestd_e2e::kbs::{verify_jwt, TestKbs};
use attestd_e2e::{config, ctx, status, Attestd, Plugin};

fn kbs_config(d: &std::path::Path, url: &str, extra: &str) -> String {
    format!(
        "[token_configs.kbs]\nurl = {url:?}\n{extra}\n{}",
        config(d, &Plugin::sample("ttrpc"), &[], "")
    )
}

#[tokio::test]
async fn get_token_kbs_yields_a_token_and_a_key_that_opens_resources() {
    let kbs = TestKbs::start().await;
    kbs.put("default/key/image-kek", b"0123456789abcdef0123456789abcdef");
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let out = a.get_token("kbs").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 2, "{v}");
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
    let r = reqwest::Client::new()
        .get(format!(
            "{}/kbs/v0/resource/default/key/image-kek",
            kbs.url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let raw: serde_json::Value = r.json().await.unwrap();
    let protected = raw["protected"].as_str().unwrap().to_string();
    let jwe: kbs_types::Response = serde_json::from_value(raw).unwrap();
    assert_eq!(
        key.decrypt(&jwe, &protected).unwrap(),
        b"0123456789abcdef0123456789abcdef"
    );

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
        std::fs::write(
            &toml,
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n",
        )
        .unwrap();
        let a = Attestd::start_with(
            |d| kbs_config(d, &kbs.url(), ""),
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
        err.contains("the KBS answered 404 Not Found: no resource default/secret/none"),
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
    let a = Attestd::start(|d| kbs_config(d, "http://kbs.example", "")).unwrap();
    let (code, msg) = status(a.get_token("kbs").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "KBS URL \"http://kbs.example\": plain http is allowed only on loopback; use https"
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

#[tokio::test]
async fn the_key_provider_wraps_and_unwraps_with_ocicrypt_messages() {
    // The messages exactly as Go's ocicrypt sends them (bytes as base64 strings),
    // over the real gRPC and ttrpc key-provider services. (Debian 12's skopeo 1.9.3
    // is built without ocicrypt's keyprovider support, so skopeo cannot drive this
    // here; see docs/key-release.md.)
    use attestd_proto::grpc::keyprovider as g;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let kbs = TestKbs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut kek = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut kek);
    std::fs::write(dir.path().join("kek"), kek).unwrap();
    kbs.put("default/key/image-kek", &kek);
    let port = attestd_e2e::free_port();
    let ttrpc_sock = dir.path().join("kp.sock");
    let kp = format!(
        "[keyprovider]\ngrpc = \"127.0.0.1:{port}\"\nttrpc = \"unix://{}\"\nwrap_kek = {:?}\n",
        ttrpc_sock.display(),
        dir.path().join("kek").display().to_string()
    );
    let _a = Attestd::start(|d| kbs_config(d, &kbs.url(), &kp)).unwrap();
    let mut grpc = g::key_provider_service_client::KeyProviderServiceClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    let call = |input: serde_json::Value| g::KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: input.to_string().into_bytes(),
    };
    let layer_key = b"the layer's symmetric key and nonce";
    let wrap = serde_json::json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {"attestd": [STANDARD.encode("kbs:///default/key/image-kek")]}, "DecryptConfig": {"Parameters": {}}},
            "optsdata": STANDARD.encode(layer_key),
        },
        "keyunwrapparams": {"dc": null, "annotation": null},
    });
    let out = grpc.wrap_key(call(wrap)).await.unwrap().into_inner();
    let out: serde_json::Value =
        serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
    let annotation = out["keywrapresults"]["annotation"].clone();
    let packet: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(annotation.as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(packet["kid"], "kbs:///default/key/image-kek");
    assert_eq!(packet["wrap_type"], "A256GCM");

    let unwrap = serde_json::json!({
        "op": "keyunwrap",
        "keywrapparams": {"ec": null, "optsdata": null},
        "keyunwrapparams": {"dc": {"Parameters": {"attestd": []}}, "annotation": annotation},
    });
    let out = grpc
        .un_wrap_key(call(unwrap.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unwrapped(&out.key_provider_key_wrap_protocol_output),
        layer_key
    );
    assert_eq!(kbs.attestations().len(), 1, "one RCAR handshake");

    // The same over ttrpc (image-rs's transport), reusing the session.
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", ttrpc_sock.display()))
        .await
        .unwrap();
    let t = attestd_proto::ttrpc::keyprovider_ttrpc::KeyProviderServiceClient::new(c);
    let req = attestd_proto::ttrpc::keyprovider::KeyProviderKeyWrapProtocolInput {
        KeyProviderKeyWrapProtocolInput: unwrap.to_string().into_bytes(),
        ..Default::default()
    };
    let out = t.un_wrap_key(ctx(), &req).await.unwrap();
    assert_eq!(unwrapped(&out.KeyProviderKeyWrapProtocolOutput), layer_key);
    assert_eq!(kbs.attestations().len(), 1, "the token was reused");

    // Layers decrypt in parallel: concurrent UnWrapKeys share the session, and the
    // fetches run side by side (the session lock is not held across them).
    kbs.knobs().resource_delay = Some(std::time::Duration::from_millis(300));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = grpc.clone();
        let input = call(unwrap.clone());
        set.spawn(async move { c.un_wrap_key(input).await });
    }
    while let Some(r) = set.join_next().await {
        let out = r.unwrap().unwrap().into_inner();
        assert_eq!(
            unwrapped(&out.key_provider_key_wrap_protocol_output),
            layer_key
        );
    }
    assert_eq!(kbs.attestations().len(), 1, "still one handshake");
    assert!(
        kbs.max_in_flight() > 1,
        "resource fetches overlapped ({} at most)",
        kbs.max_in_flight()
    );
    kbs.knobs().resource_delay = None;

    // A 401 makes attestd attest again; the KBS refusing the KEK is a clear error.
    kbs.knobs().unauthorized = 1;
    grpc.un_wrap_key(call(unwrap.clone())).await.unwrap();
    assert_eq!(kbs.attestations().len(), 2);
    kbs.knobs().unauthorized = 5;
    let st = grpc.un_wrap_key(call(unwrap.clone())).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert!(
        st.message()
            .ends_with("resource default/key/image-kek answered 401 to 3 fresh tokens"),
        "{}",
        st.message()
    );
    kbs.knobs().unauthorized = 0;
    kbs.knobs().refuse.push("default/key/image-kek".into());
    let st = grpc.un_wrap_key(call(unwrap)).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert!(
        st.message().contains("policy denies default/key/image-kek"),
        "{}",
        st.message()
    );

    // Bad input.
    for (input, want) in [
        (
            serde_json::json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": "***"}}),
            "keyunwrapparams.annotation is not base64",
        ),
        (
            serde_json::json!({"op": "nope"}),
            "key provider input has op \"nope\", expected \"keyunwrap\"",
        ),
    ] {
        let st = grpc.un_wrap_key(call(input)).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        // The message, then its cause when there is one.
        assert!(st.message().starts_with(want), "{}", st.message());
    }
}

#[tokio::test]
async fn wrap_key_without_a_kek_says_what_to_configure() {
    use attestd_proto::grpc::keyprovider as g;
    let port = attestd_e2e::free_port();
    let kp = format!("[keyprovider]\ngrpc = \"127.0.0.1:{port}\"\n");
    let _a = Attestd::start(|d| kbs_config(d, "http://127.0.0.1:1", &kp)).unwrap();
    let mut grpc = g::key_provider_service_client::KeyProviderServiceClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    let st = grpc
        .wrap_key(g::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: br#"{"op":"keywrap"}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        st.message(),
        "WrapKey needs [keyprovider] wrap_kek (a 32-byte KEK file)"
    );
}

#[test]
fn bad_key_provider_addresses_refuse_to_start() {
    let e = Attestd::start(|d| {
        kbs_config(
            d,
            "http://127.0.0.1:1",
            "[keyprovider]\nttrpc = \"/no/scheme.sock\"\n",
        )
    })
    .err()
    .unwrap();
    assert!(
        e.stderr
            .contains("error: [keyprovider] ttrpc = \"/no/scheme.sock\": expected unix:///path"),
        "{}",
        e.stderr
    );
    let e = Attestd::start(|d| {
        kbs_config(
            d,
            "http://127.0.0.1:1",
            "[keyprovider]\ngrpc = \"nowhere\"\n",
        )
    })
    .err()
    .unwrap();
    assert!(
        e.stderr.contains("error: [keyprovider] grpc = \"nowhere\": \"nowhere\" is neither host:port nor unix:///path"),
        "{}",
        e.stderr
    );
}

/// The layer key in an UnWrapKey answer (`keyunwrapresults.optsdata`, base64).
fn unwrapped(output: &[u8]) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let out: serde_json::Value = serde_json::from_slice(output).unwrap();
    STANDARD
        .decode(out["keyunwrapresults"]["optsdata"].as_str().unwrap())
        .unwrap()
}

//! attestd's ocicrypt key provider over the real gRPC and ttrpc key-provider
//! services, with the KEK released by the test KBS after RCAR, as Rust ocicrypt
//! (image-rs) asks: its serde structs (tests/src/ocicrypt.rs), which read answer
//! bytes only as arrays of numbers. Go's ocicrypt itself, and skopeo built on it,
//! decrypt whole images in tests/tests/image_decryption.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attestd_e2e::kbs::{attestd_config, TestKbs};
use attestd_e2e::{ctx, ocicrypt, Attestd};
use attestd_proto::grpc::keyprovider as g;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tonic::transport::Channel;

const KID: &str = "kbs:///default/key/image-kek";

/// attestd with its key provider on gRPC (TCP) and ttrpc, a KEK file for WrapKey,
/// and the same KEK in the test KBS under `KID`.
struct Provider {
    kbs: TestKbs,
    _a: Attestd,
    grpc_addr: String,
    ttrpc_sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    async fn start() -> Provider {
        let kbs = TestKbs::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut kek = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut kek);
        std::fs::write(dir.path().join("kek"), kek).unwrap();
        kbs.put("default/key/image-kek", &kek);
        let grpc_addr = format!("127.0.0.1:{}", attestd_e2e::free_port());
        let ttrpc_sock = dir.path().join("kp.sock");
        let kp = format!(
            "[keyprovider]\ngrpc = {grpc_addr:?}\nttrpc = \"unix://{}\"\nwrap_kek = {:?}\n",
            ttrpc_sock.display(),
            dir.path().join("kek").display().to_string()
        );
        let a = Attestd::start(|d| attestd_config(d, &kbs.url(), &kp)).unwrap();
        Provider {
            kbs,
            _a: a,
            grpc_addr,
            ttrpc_sock,
            _dir: dir,
        }
    }

    async fn grpc(&self) -> g::key_provider_service_client::KeyProviderServiceClient<Channel> {
        g::key_provider_service_client::KeyProviderServiceClient::connect(format!(
            "http://{}",
            self.grpc_addr
        ))
        .await
        .unwrap()
    }

    async fn ttrpc(&self) -> attestd_proto::ttrpc::keyprovider_ttrpc::KeyProviderServiceClient {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", self.ttrpc_sock.display()))
            .await
            .unwrap();
        attestd_proto::ttrpc::keyprovider_ttrpc::KeyProviderServiceClient::new(c)
    }
}

/// WrapKey `opts` under `KID` as Rust ocicrypt asks (over gRPC): the annotation,
/// read as Rust ocicrypt reads it.
async fn wrap(
    grpc: &mut g::key_provider_service_client::KeyProviderServiceClient<Channel>,
    opts: &[u8],
) -> Vec<u8> {
    let out = grpc
        .wrap_key(grpc_input(ocicrypt::wrap_input("attestd", KID, opts)))
        .await
        .unwrap()
        .into_inner();
    ocicrypt::read_wrap_output(&out.key_provider_key_wrap_protocol_output)
        .unwrap_or_else(|e| panic!("Rust ocicrypt cannot read WrapKey's answer: {e}"))
}

fn grpc_input(input: Vec<u8>) -> g::KeyProviderKeyWrapProtocolInput {
    g::KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: input,
    }
}

#[tokio::test]
async fn rust_ocicrypt_wraps_and_unwraps_over_grpc_and_ttrpc() {
    let p = Provider::start().await;
    let opts = ocicrypt::layer_options();
    let mut grpc = p.grpc().await;
    let annotation = wrap(&mut grpc, &opts).await;
    let packet: serde_json::Value = serde_json::from_slice(&annotation).unwrap();
    assert_eq!(packet["kid"], KID);
    assert_eq!(packet["wrap_type"], "A256GCM");

    let unwrap = ocicrypt::unwrap_input("attestd", &annotation);
    let out = grpc
        .un_wrap_key(grpc_input(unwrap.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ocicrypt::read_unwrap_output(&out.key_provider_key_wrap_protocol_output).unwrap(),
        opts
    );
    // image-rs's own transport.
    let out = p
        .ttrpc()
        .await
        .un_wrap_key(ctx(), &ocicrypt::ttrpc_input(unwrap))
        .await
        .unwrap();
    assert_eq!(
        ocicrypt::read_unwrap_output(&out.KeyProviderKeyWrapProtocolOutput).unwrap(),
        opts
    );
    assert_eq!(p.kbs.attestations().len(), 1, "one RCAR handshake for both");

    // WrapKey over ttrpc too; its annotation unwraps like the other.
    let out = p
        .ttrpc()
        .await
        .wrap_key(
            ctx(),
            &ocicrypt::ttrpc_input(ocicrypt::wrap_input("attestd", KID, &opts)),
        )
        .await
        .unwrap();
    let annotation = ocicrypt::read_wrap_output(&out.KeyProviderKeyWrapProtocolOutput).unwrap();
    let out = p
        .ttrpc()
        .await
        .un_wrap_key(
            ctx(),
            &ocicrypt::ttrpc_input(ocicrypt::unwrap_input("attestd", &annotation)),
        )
        .await
        .unwrap();
    assert_eq!(
        ocicrypt::read_unwrap_output(&out.KeyProviderKeyWrapProtocolOutput).unwrap(),
        opts
    );

    // The defect this guards against: base64 strings, as attestd answered before,
    // are unreadable to Rust ocicrypt.
    let e =
        ocicrypt::read_unwrap_output(br#"{"keyunwrapresults":{"optsdata":"AQI="}}"#).unwrap_err();
    assert!(e.starts_with("invalid type: string"), "{e}");
}

#[tokio::test]
async fn unwrap_key_shares_the_session_and_says_why_the_kbs_refused() {
    let p = Provider::start().await;
    let opts = ocicrypt::layer_options();
    let mut grpc = p.grpc().await;
    let annotation = wrap(&mut grpc, &opts).await;
    let unwrap = ocicrypt::unwrap_input("attestd", &annotation);
    let call = || grpc_input(unwrap.clone());
    grpc.un_wrap_key(call()).await.unwrap();
    assert_eq!(p.kbs.attestations().len(), 1);

    // Layers decrypt in parallel: concurrent UnWrapKeys share the session, and the
    // fetches run side by side (the session lock is not held across them).
    p.kbs.knobs().resource_delay = Some(std::time::Duration::from_millis(300));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = grpc.clone();
        let input = call();
        set.spawn(async move { c.un_wrap_key(input).await });
    }
    while let Some(r) = set.join_next().await {
        let out = r.unwrap().unwrap().into_inner();
        assert_eq!(
            ocicrypt::read_unwrap_output(&out.key_provider_key_wrap_protocol_output).unwrap(),
            opts
        );
    }
    assert_eq!(p.kbs.attestations().len(), 1, "still one handshake");
    assert!(
        p.kbs.max_in_flight() > 1,
        "resource fetches overlapped ({} at most)",
        p.kbs.max_in_flight()
    );
    p.kbs.knobs().resource_delay = None;

    // An expired token: attest again, once.
    p.kbs.knobs().unauthorized = 1;
    grpc.un_wrap_key(call()).await.unwrap();
    assert_eq!(p.kbs.attestations().len(), 2);

    // A token the KBS keeps refusing: three fresh ones, then the KBS's last reason.
    p.kbs.knobs().unauthorized = 5;
    let st = grpc.un_wrap_key(call()).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    let url = p.kbs.url();
    assert_eq!(
        st.message(),
        format!(
            "cannot fetch the KEK \"{KID}\": KBS {url}: resource default/key/image-kek answered 401 \
             to 3 fresh tokens; last: TokenVerifierError: Token Verifier error: token expired"
        )
    );
    // The cached session's 401, then two fresh handshakes refused.
    assert_eq!(p.kbs.attestations().len(), 4);
    p.kbs.knobs().unauthorized = 0;

    // Refusals a fresh token cannot change are said at once, with no new handshake.
    let before = p.kbs.attestations().len();
    p.kbs.knobs().refuse.push("default/key/image-kek".into());
    let st = grpc.un_wrap_key(call()).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        st.message(),
        format!(
            "cannot fetch the KEK \"{KID}\": KBS {url}: resource default/key/image-kek refused: \
             PolicyDeny: Access denied by policy"
        )
    );
    p.kbs.knobs().refuse.clear();
    // (The last 401 had ended the session: that call attested once.)
    assert_eq!(p.kbs.attestations().len(), before + 1);
    grpc.un_wrap_key(call()).await.unwrap();
    let missing = ocicrypt::unwrap_input(
        "attestd",
        &serde_json::to_vec(&serde_json::json!({
            "kid": "kbs:///default/key/gone",
            "wrapped_data": STANDARD.encode([0u8; 32]),
            "iv": STANDARD.encode([0u8; 12]),
            "wrap_type": "A256GCM",
        }))
        .unwrap(),
    );
    let before = p.kbs.attestations().len();
    let st = grpc.un_wrap_key(grpc_input(missing)).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    assert!(
        st.message().ends_with(
            "resource default/key/gone refused: PluginInternalError: Plugin internal error"
        ),
        "{}",
        st.message()
    );
    assert_eq!(
        p.kbs.attestations().len(),
        before,
        "no handshake for a missing resource"
    );

    // Each of Trustee's error bodies: final kinds at once, others after 3 tokens;
    // a hostile detail bounded and escaped.
    for (kind, attests) in [
        ("PolicyDeny", 1),
        ("PluginInternalError", 1),
        ("ParsePolicyError", 1),
        ("TokenVerifierError", 3),
        ("JweError", 3),
        ("AttestationError", 3),
    ] {
        let detail = format!("{kind} detail\n\u{202e}{}", "x".repeat(400));
        p.kbs.knobs().refuse_with = Some((401, kind.into(), detail));
        let before = p.kbs.attestations().len();
        let st = grpc.un_wrap_key(call()).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{kind}");
        let want = format!("{kind}: {kind} detail\\n\\u{{202e}}");
        assert!(st.message().contains(&want), "{kind}: {}", st.message());
        assert!(
            st.message()
                .ends_with(&format!("… ({} characters)", kind.len() + 409)),
            "{kind}: {}",
            st.message()
        );
        assert!(!st.message().contains('\n'));
        // The first attempt reuses nothing (the last 401 ended the session).
        assert_eq!(
            p.kbs.attestations().len() - before,
            attests,
            "{kind}: handshakes"
        );
    }
    // 404 (InvalidRequestPath, PluginNotFound) is the caller's mistake, not retried.
    p.kbs.knobs().refuse_with =
        Some((404, "PluginNotFound".into(), "Plugin nope not found".into()));
    let st = grpc.un_wrap_key(call()).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(
        st.message()
            .ends_with("answered 404 Not Found: PluginNotFound: Plugin nope not found"),
        "{}",
        st.message()
    );
    p.kbs.knobs().refuse_with = None;
    grpc.un_wrap_key(call()).await.unwrap();

    // A kid that would reach another KBS endpoint with attestd's token: refused
    // before anything is sent (the handshake count does not move).
    let before = p.kbs.attestations().len();
    for kid in [
        "kbs:///%2e%2e/%2e%2e/auth",
        "kbs:///default/key/..\\..\\x",
        "kbs:///default/key/k?admin=1",
    ] {
        let packet = serde_json::json!({"kid": kid, "wrapped_data": "", "iv": ""});
        let input = ocicrypt::unwrap_input("attestd", packet.to_string().as_bytes());
        let st = grpc.un_wrap_key(grpc_input(input)).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{kid}");
        assert!(
            st.message()
                .contains("is not a kbs:///<repo>/<type>/<tag> URI"),
            "{kid}: {}",
            st.message()
        );
    }
    assert_eq!(p.kbs.attestations().len(), before);

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
        let st = grpc
            .un_wrap_key(grpc_input(input.to_string().into_bytes()))
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        // The message, then its cause when there is one.
        assert!(st.message().starts_with(want), "{}", st.message());
    }
}

#[tokio::test]
async fn wrap_key_without_a_kek_says_what_to_configure() {
    let port = attestd_e2e::free_port();
    let kp = format!("[keyprovider]\ngrpc = \"127.0.0.1:{port}\"\n");
    let _a = Attestd::start(|d| attestd_config(d, "http://127.0.0.1:1", &kp)).unwrap();
    let mut grpc = g::key_provider_service_client::KeyProviderServiceClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    let st = grpc
        .wrap_key(grpc_input(br#"{"op":"keywrap"}"#.to_vec()))
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
        attestd_config(
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
        attestd_config(
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

#[tokio::test]
async fn callers_waiting_for_a_failing_handshake_share_its_answer() {
    // Layers decrypting in parallel while the KBS refuses the attestation: one
    // handshake, its refusal shared by all eight callers (each used to make its
    // own, one after another, behind the session lock).
    let p = Provider::start().await;
    let opts = ocicrypt::layer_options();
    let mut grpc = p.grpc().await;
    let annotation = wrap(&mut grpc, &opts).await;
    p.kbs.knobs().refuse_attest = Some(std::time::Duration::from_millis(300));
    let unwrap = ocicrypt::unwrap_input("attestd", &annotation);
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = grpc.clone();
        let input = grpc_input(unwrap.clone());
        set.spawn(async move { c.un_wrap_key(input).await });
    }
    while let Some(r) = set.join_next().await {
        let st = r.unwrap().unwrap_err();
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
        assert!(
            st.message().contains(
                "RCAR attest: the KBS answered 401 Unauthorized: AttestationError: \
                 Attestation error: the evidence does not meet the policy"
            ),
            "{}",
            st.message()
        );
    }
    assert_eq!(p.kbs.attest_requests(), 1, "one handshake for all eight");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The next caller, after it, tries again.
    p.kbs.knobs().refuse_attest = None;
    grpc.un_wrap_key(grpc_input(unwrap)).await.unwrap();
    assert_eq!(p.kbs.attest_requests(), 2);
}

//! attestd with upstream's own programs, built from their pinned commits by
//! `scripts/peers-build.sh`: Trustee's KBS (built-in attestation service) as the
//! relying party, and the guest's Confidential Data Hub and api-server-rest as
//! attestd's clients, in place of the attestation-agent they were written for.
//! Each test runs only when the peers cache holds what it needs, and says so.
//!
//! The test KBS (tests/src/kbs.rs) stays for fault injection; where it and
//! Trustee answer differently, Trustee is right and the test KBS is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd::kbs::TeeKey;
use attestd_e2e::guest::{Cdh, Trustee, ALLOW_ALL, DENY_ALL};
use attestd_e2e::kbs::{attestd_config as kbs_config, jwe_to, open_resource, verify_jwt, TestKbs};
use attestd_e2e::peers::peer_or_skip;
use attestd_e2e::{ctx, ocicrypt, status, Attestd};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

const KEK: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Trustee's KBS from the peers cache, `policy` its resource policy, holding
/// `KEK` at `default/key/image-kek`.
async fn trustee_with_kek(cache: &std::path::Path, policy: &str) -> Trustee {
    let kbs = Trustee::start(cache);
    kbs.resource_policy(policy).await;
    kbs.put("default/key/image-kek", KEK).await;
    kbs
}

/// The token attestd got from Trustee verifies with the attestation service's
/// key, and the key pair it returned opens what Trustee encrypts to it.
#[tokio::test]
async fn get_token_from_trustee_verifies_and_its_key_opens_resources() {
    let test = "get_token_from_trustee_verifies_and_its_key_opens_resources";
    let Some(trustee) = peer_or_skip("trustee", test) else {
        return;
    };
    let kbs = trustee_with_kek(&trustee, ALLOW_ALL).await;
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let out = a
        .get_token("kbs")
        .await
        .unwrap_or_else(|e| panic!("GetToken: {e:?}\n{}\n{}", a.log(), kbs.log()));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let token = v["token"].as_str().unwrap();
    let pem = v["tee_keypair"].as_str().unwrap();
    let claims = verify_jwt(&kbs.signer, token).unwrap();
    // An EAR: the sample TEE's appraisal, bound to the key pair attestd made.
    let cpu0 = &claims["submods"]["cpu0"];
    assert!(cpu0["ear.status"].is_string(), "{claims}");
    let key = TeeKey::from_pem(pem).unwrap();
    let jwk = serde_json::to_value(key.public_jwk()).unwrap();
    let bound = &cpu0["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"];
    assert_eq!(bound["x"], jwk["x"], "{claims}");
    assert_eq!(bound["y"], jwk["y"], "{claims}");

    let (plain, protected) = open_resource(&kbs.url(), "default/key/image-kek", token, &key).await;
    assert_eq!(plain, KEK);
    // The test KBS writes the JWE's protected header as Trustee does, to the
    // byte but for the ephemeral key (CDH's client depends on it).
    let ours = jwe_to(&jwk, KEK).unwrap();
    assert_eq!(
        header_shape(&protected),
        header_shape(ours["protected"].as_str().unwrap())
    );
}

/// A JWE protected header's text with its ephemeral key's coordinates blanked.
fn header_shape(b64: &str) -> String {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (x, y) = (
        v["epk"]["x"].as_str().unwrap(),
        v["epk"]["y"].as_str().unwrap(),
    );
    text.replace(x, "X").replace(y, "Y")
}

/// CDH's resource fetch, through api-server-rest, with attestd as its
/// attestation-agent: the test KBS and Trustee release the same bytes.
#[tokio::test]
async fn cdh_gets_a_resource_through_attestd() {
    let test = "cdh_gets_a_resource_through_attestd";
    let Some(gc) = peer_or_skip("guest-components", test) else {
        return;
    };
    let kbs = TestKbs::start().await;
    kbs.put("default/key/image-kek", KEK);
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let cdh = Cdh::start(&gc, &kbs.url(), &a.aa_sock);
    let (status, body) = cdh.get("/cdh/resource/default/key/image-kek").await;
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        cdh.logs()
    );
    assert_eq!(body, KEK);

    // The AA half of api-server-rest: attestd's own answers.
    let (status, body) = cdh.get("/aa/token?token_type=kbs").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    verify_jwt(&kbs.verifying_key(), v["token"].as_str().unwrap()).unwrap();
    // api-server-rest hands the query's text to GetEvidence as the runtime
    // data, as is (not base64-decoded): the sample's evidence for those bytes.
    let (status, body) = cdh.get("/aa/evidence?runtime_data=aGVsbG8").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, attester_sample::evidence(b"aGVsbG8").unwrap().bytes);

    let Some(trustee) = peer_or_skip("trustee", test) else {
        return;
    };
    // Trustee: CDH asks attestd for a token per fetch; attestd attests for
    // each, or once for both with token reuse on.
    let kbs = trustee_with_kek(&trustee, ALLOW_ALL).await;
    kbs.put("default/key/other", b"other").await;
    for (reuse, attestations) in [("", 2), ("reuse_token_secs = 60", 1)] {
        let before = kbs.attestations();
        let a = Attestd::start(|d| kbs_config(d, &kbs.url(), reuse)).unwrap();
        let cdh = Cdh::start(&gc, &kbs.url(), &a.aa_sock);
        for (path, want) in [("image-kek", KEK), ("other", b"other".as_slice())] {
            let (status, body) = cdh.get(&format!("/cdh/resource/default/key/{path}")).await;
            assert_eq!(
                status,
                200,
                "{}\n{}\n{}",
                String::from_utf8_lossy(&body),
                cdh.logs(),
                kbs.log()
            );
            assert_eq!(body, want);
        }
        assert_eq!(kbs.attestations() - before, attestations, "{reuse:?}");
    }
}

/// A resource the KBS's policy denies: what reaches api-server-rest's caller,
/// and where the KBS's reason is lost on the way (in CDH).
#[tokio::test]
async fn cdh_refusal_loses_the_kbs_reason() {
    let test = "cdh_refusal_loses_the_kbs_reason";
    let Some(gc) = peer_or_skip("guest-components", test) else {
        return;
    };
    let kbs = TestKbs::start().await;
    kbs.put("default/key/image-kek", KEK);
    kbs.knobs().refuse.push("default/key/image-kek".into());
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let cdh = Cdh::start(&gc, &kbs.url(), &a.aa_sock);
    let (status, body) = cdh.get("/cdh/resource/default/key/image-kek").await;
    refusal_lost_in_cdh(status, &body, &cdh.logs());
    // kbs_protocol takes PolicyDeny's 401 for an expired token: one token to
    // start, a fresh one after each of its three 401s, and attestd attests for
    // each (no token reuse configured): four attestations for one refusal.
    assert_eq!(kbs.attestations().len(), 4, "{}", cdh.logs());

    let Some(trustee) = peer_or_skip("trustee", test) else {
        return;
    };
    let kbs = trustee_with_kek(&trustee, DENY_ALL).await;
    let a = Attestd::start(|d| kbs_config(d, &kbs.url(), "")).unwrap();
    let cdh = Cdh::start(&gc, &kbs.url(), &a.aa_sock);
    let (status, body) = cdh.get("/cdh/resource/default/key/image-kek").await;
    refusal_lost_in_cdh(status, &body, &cdh.logs());
    assert_eq!(kbs.attestations(), 4, "{}", kbs.log());
}

/// Where the KBS's PolicyDeny goes: kbs_protocol logs it (a warning) and ends
/// with `UnAuthorized`; CDH's ttrpc status drops even that ("Get Resource
/// failed"); api-server-rest answers 500 "ttrpc request error". The reason is
/// in CDH's log only: upstream's behaviour, recorded here so a change shows.
fn refusal_lost_in_cdh(status: u16, body: &[u8], logs: &str) {
    assert_eq!(status, 500, "{logs}");
    assert_eq!(body, b"ttrpc request error", "{logs}");
    assert!(
        logs.contains("errors/PolicyDeny")
            && logs.contains("get resource failed: UnAuthorized")
            && logs.contains("message: \"[CDH] [ERROR]: Get Resource failed\""),
        "{logs}"
    );
}

/// attestd's key provider, as image-rs asks it (ttrpc): the KEK comes from
/// Trustee after RCAR, and Trustee's refusal reaches the caller in its words.
#[tokio::test]
async fn key_provider_unwraps_with_the_kek_trustee_releases() {
    let test = "key_provider_unwraps_with_the_kek_trustee_releases";
    let Some(trustee) = peer_or_skip("trustee", test) else {
        return;
    };
    let kbs = trustee_with_kek(&trustee, ALLOW_ALL).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kek"), KEK).unwrap();
    let sock = dir.path().join("kp.sock");
    let kp = format!(
        "[keyprovider]\nttrpc = \"unix://{}\"\nwrap_kek = {:?}\n",
        sock.display(),
        dir.path().join("kek").display().to_string()
    );
    let _a = Attestd::start(|d| kbs_config(d, &kbs.url(), &kp)).unwrap();
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .unwrap();
    let kp = attestd_proto::ttrpc::keyprovider_ttrpc::KeyProviderServiceClient::new(c);
    let opts = ocicrypt::layer_options();
    let kid = "kbs:///default/key/image-kek";
    let out = kp
        .wrap_key(
            ctx(),
            &ocicrypt::ttrpc_input(ocicrypt::wrap_input("attestd", kid, &opts)),
        )
        .await
        .unwrap();
    let annotation = ocicrypt::read_wrap_output(&out.KeyProviderKeyWrapProtocolOutput).unwrap();
    let unwrap = ocicrypt::ttrpc_input(ocicrypt::unwrap_input("attestd", &annotation));
    let out = kp
        .un_wrap_key(ctx(), &unwrap)
        .await
        .unwrap_or_else(|e| panic!("UnWrapKey: {e:?}\n{}", kbs.log()));
    assert_eq!(
        ocicrypt::read_unwrap_output(&out.KeyProviderKeyWrapProtocolOutput).unwrap(),
        opts
    );

    // The same words as the test KBS's (tests/tests/keyprovider.rs), and no
    // new handshake: a fresh token cannot change a policy's refusal.
    kbs.resource_policy(DENY_ALL).await;
    let before = kbs.attestations();
    let (code, message) = status(kp.un_wrap_key(ctx(), &unwrap).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(
        message,
        format!(
            "cannot fetch the KEK \"{kid}\": KBS {}: resource default/key/image-kek refused: \
             PolicyDeny: Access denied by policy",
            kbs.url()
        )
    );
    assert_eq!(kbs.attestations(), before);
}

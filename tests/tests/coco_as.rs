//! `GetToken("coco_as")`: the primary plugin's evidence posted to an attestation
//! service as upstream's AA posts it, the answer returned as the token. The service
//! here is a fake on 127.0.0.1 that checks the request the way Trustee's
//! attestation service reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use attestd_e2e::{config, status, Attestd, Plugin};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// What the fake answers.
#[derive(Clone)]
enum Answer {
    Token(&'static str),
    Refuse(StatusCode, &'static str),
    Huge,
}

struct FakeAs {
    url: String,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn fake_as(answer: Answer) -> FakeAs {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let app = axum::Router::new().route(
        "/attestation",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let answer = answer.clone();
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body.0);
                match answer {
                    Answer::Token(t) => (StatusCode::OK, t.to_string()),
                    Answer::Refuse(code, why) => (code, why.to_string()),
                    Answer::Huge => (StatusCode::OK, "x".repeat(2 << 20)),
                }
            }
        }),
    );
    let url = attestd_e2e::serve_http(app).await;
    FakeAs { url, requests }
}

fn with_as(url: &str) -> impl FnOnce(&std::path::Path) -> String + '_ {
    move |d| {
        let p = Plugin::sample("ttrpc");
        format!(
            "{}[token_configs.coco_as]\nurl = {url:?}\n",
            config(d, &p, &[], "")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_comes_from_the_attestation_service() {
    let svc = fake_as(Answer::Token("eyJhbGciOiJFUzI1NiJ9.e30.c2ln")).await;
    let a = Attestd::start(with_as(&svc.url)).unwrap();
    assert_eq!(
        a.get_token("coco_as").await.unwrap(),
        b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
    );

    // Over gRPC too.
    let r = a
        .grpc()
        .await
        .get_token(attestd_proto::grpc::attestation_agent::GetTokenRequest {
            token_type: "coco_as".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().token, b"eyJhbGciOiJFUzI1NiJ9.e30.c2ln");

    let reqs = svc.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    let mut keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["policy_ids", "verification_requests"]);
    assert_eq!(r["policy_ids"], serde_json::json!([]));
    let v = r["verification_requests"].as_array().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["tee"], "sample");
    // Unpadded base64url of the primary evidence for empty report data, byte for byte.
    let ev = URL_SAFE_NO_PAD
        .decode(v[0]["evidence"].as_str().unwrap())
        .unwrap();
    assert_eq!(ev, br#"{"report_data":"","svn":"1"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_service_failures_have_their_codes() {
    // Refused by policy.
    let svc = fake_as(Answer::Refuse(StatusCode::UNAUTHORIZED, "policy denied")).await;
    let a = Attestd::start(with_as(&svc.url)).unwrap();
    let (code, msg) = status(a.get_token("coco_as").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(
        msg,
        format!(
            "attestation service {}: attestation: the attestation service answered 401 Unauthorized: policy denied",
            svc.url
        )
    );
    drop(a);

    // A server error is worth retrying.
    let svc = fake_as(Answer::Refuse(StatusCode::SERVICE_UNAVAILABLE, "busy")).await;
    let a = Attestd::start(with_as(&svc.url)).unwrap();
    let (code, _) = status(a.get_token("coco_as").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    drop(a);

    // An answer larger than any token is cut off, not buffered.
    let svc = fake_as(Answer::Huge).await;
    let a = Attestd::start(with_as(&svc.url)).unwrap();
    let (code, msg) = status(a.get_token("coco_as").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert!(
        msg.ends_with("the attestation service's answer is over 1048576 bytes"),
        "{msg}"
    );
    drop(a);

    // Nothing listens.
    let port = attestd_e2e::free_port();
    let down = format!("http://127.0.0.1:{port}");
    let a = Attestd::start(with_as(&down)).unwrap();
    let (code, msg) = status(a.get_token("coco_as").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::UNAVAILABLE);
    // The status carries the cause after the message.
    assert!(
        msg.starts_with(&format!(
            "attestation service {down}: attestation: the attestation service did not answer: "
        )),
        "{msg}"
    );
    drop(a);

    // Plain http off loopback: refused at start, before anything is sent.
    let e = Attestd::start(with_as("http://as.example:8000"))
        .err()
        .unwrap();
    assert!(
        e.stderr.contains(
            "error: attestation service URL \"http://as.example:8000\": plain http is allowed only on loopback"
        ),
        "{}",
        e.stderr
    );

    // Not configured at all.
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let (code, msg) = status(a.get_token("coco_as").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(
        msg,
        "token type \"coco_as\" is not configured: set [token_configs.coco_as] url"
    );
}

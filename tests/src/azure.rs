//! Azure's side of a CVM, for the Azure attesters' tests: an swtpm provisioned like
//! an Azure vTPM, and a fake IMDS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use az_cvm_vtpm::vtpm::Quote;

use crate::swtpm::Swtpm;

pub fn fixture(name: &str) -> PathBuf {
    crate::repo_root()
        .join("attesters/azure/tests/fixtures")
        .join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Provision `tpm` like an Azure vTPM: the 2048-byte SNP HCL report at NV
/// 0x01400001 and a restricted RSA-2048 signing AK persisted at 0x81000003.
/// Returns the AK's public key (PEM), written under `dir`.
pub fn provision_vtpm(tpm: &Swtpm, dir: &Path) -> PathBuf {
    let hcl = fixture("snp-hcl-report-2048.bin");
    let ak_ctx = dir.join("ak.ctx");
    let ak_pem = dir.join("ak.pem");
    tpm.tool_ok(&[
        "tpm2_nvdefine",
        "0x01400001",
        "-C",
        "o",
        "-s",
        "2048",
        "-a",
        "ownerread|ownerwrite",
    ]);
    tpm.tool_ok(&[
        "tpm2_nvwrite",
        "0x01400001",
        "-C",
        "o",
        "-i",
        hcl.to_str().unwrap(),
    ]);
    tpm.tool_ok(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-G",
        "rsa2048:rsassa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
        "-c",
        ak_ctx.to_str().unwrap(),
    ]);
    tpm.tool_ok(&[
        "tpm2_evictcontrol",
        "-C",
        "o",
        "-c",
        ak_ctx.to_str().unwrap(),
        "0x81000003",
    ]);
    tpm.tool_ok(&[
        "tpm2_readpublic",
        "-c",
        "0x81000003",
        "-f",
        "pem",
        "-o",
        ak_pem.to_str().unwrap(),
    ]);
    ak_pem
}

/// A fake Azure IMDS on 127.0.0.1: the VCEK (THIM) and TD quotes; it records the
/// TD reports it was sent and can be made slow.
pub struct FakeImds {
    pub url: String,
    pub td_reports: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[derive(Clone)]
struct ImdsState {
    delay: Duration,
    td_reports: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeImds {
    pub async fn start(delay: Duration) -> FakeImds {
        use axum::routing::{get, post};
        let td_reports = Arc::new(Mutex::new(Vec::new()));
        let state = ImdsState {
            delay,
            td_reports: td_reports.clone(),
        };
        async fn vcek(
            axum::extract::State(s): axum::extract::State<ImdsState>,
            headers: axum::http::HeaderMap,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            tokio::time::sleep(s.delay).await;
            if headers.get("Metadata").map(|v| v.as_bytes()) != Some(b"true") {
                return (axum::http::StatusCode::BAD_REQUEST, "no Metadata header").into_response();
            }
            let pem = String::from_utf8(read_fixture("snp-vcek.pem")).unwrap();
            axum::Json(serde_json::json!({"vcekCert": pem, "certificateChain": ""})).into_response()
        }
        async fn td_quote(
            axum::extract::State(s): axum::extract::State<ImdsState>,
            axum::Json(body): axum::Json<serde_json::Value>,
        ) -> axum::Json<serde_json::Value> {
            tokio::time::sleep(s.delay).await;
            let report = URL_SAFE_NO_PAD
                .decode(body["report"].as_str().unwrap())
                .unwrap();
            s.td_reports.lock().unwrap().push(report);
            let quote = read_fixture("tdx-td-quote.bin");
            axum::Json(serde_json::json!({"quote": URL_SAFE_NO_PAD.encode(quote)}))
        }
        let app = axum::Router::new()
            .route("/metadata/THIM/amd/certification", get(vcek))
            .route("/acc/tdquote", post(td_quote))
            .with_state(state);
        let url = crate::serve_http(app).await;
        FakeImds { url, td_reports }
    }
}

/// The quote of an evidence document as az-cvm-vtpm's `Quote` (its fields are
/// private; its serde form is plain byte arrays).
pub fn quote_of(evidence: &serde_json::Value) -> Quote {
    let q = &evidence["tpm_quote"];
    let bytes = |k: &str| hex::decode(q[k].as_str().unwrap()).unwrap();
    let pcrs: Vec<Vec<u8>> = q["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
        .collect();
    serde_json::from_value(serde_json::json!({
        "signature": bytes("signature"),
        "message": bytes("message"),
        "pcrs": pcrs,
    }))
    .unwrap()
}

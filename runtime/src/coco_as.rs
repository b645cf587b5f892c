//! The attestation-service client behind `GetToken("coco_as")`: the primary
//! plugin's evidence (empty report data), posted as upstream's AA does to
//! `{url}/attestation`; the answer's body is the token.
//!
//! Request: `{"verification_requests":[{"tee":"<tee>","evidence":"<base64url,
//! unpadded, of the evidence JSON>"}],"policy_ids":[]}`.

use attester_sdk::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::kbs::{check_answer, http_client, unreachable_peer};

const PEER: &str = "attestation service";
/// A token is a JWT: far below this.
const MAX_TOKEN: usize = 1 << 20;

pub struct AsClient {
    base: String,
    http: reqwest::Client,
}

/// The request body, exactly as upstream sends it. Structs, not `json!`: their keys
/// come out in declaration order (sorted, as upstream's `Value` prints them) even
/// when a crate in the build turns on serde_json's `preserve_order`.
#[derive(serde::Serialize)]
pub struct RequestBody<'a> {
    policy_ids: [&'a str; 0],
    verification_requests: [VerificationRequest<'a>; 1],
}

#[derive(serde::Serialize)]
struct VerificationRequest<'a> {
    evidence: String,
    tee: &'a str,
}

/// The request body for `evidence` of `tee`.
pub fn request_body<'a>(tee: &'a str, evidence: &[u8]) -> RequestBody<'a> {
    RequestBody {
        policy_ids: [],
        verification_requests: [VerificationRequest {
            evidence: URL_SAFE_NO_PAD.encode(evidence),
            tee,
        }],
    }
}

impl AsClient {
    /// `url` must be https, or http on a loopback address.
    pub fn new(url: &str, allow_insecure_http: bool) -> Result<AsClient> {
        let (base, http) = http_client(PEER, url, None, allow_insecure_http)?;
        Ok(AsClient { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The token for `evidence` of `tee`.
    pub async fn token(&self, tee: &str, evidence: &[u8]) -> Result<Vec<u8>> {
        const WHAT: &str = "attestation";
        let r = self
            .http
            .post(format!("{}/attestation", self.base))
            .json(&request_body(tee, evidence))
            .send()
            .await
            .map_err(|e| unreachable_peer(PEER, WHAT, e))?;
        let token = check_answer(PEER, r, WHAT, MAX_TOKEN).await?;
        if token.is_empty() {
            return Err(Error::failed_precondition(
                "attestation: the attestation service answered an empty token",
            ));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_upstreams() {
        let b = request_body("sample", br#"{"report_data":"","svn":"1"}"#);
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"policy_ids":[],"verification_requests":[{"evidence":"eyJyZXBvcnRfZGF0YSI6IiIsInN2biI6IjEifQ","tee":"sample"}]}"#
        );
    }

    #[test]
    fn urls_are_checked_like_the_kbs() {
        assert!(AsClient::new("http://127.0.0.1:8000", false).is_ok());
        assert!(AsClient::new("http://as.example", true).is_ok());
        assert_eq!(
            AsClient::new("http://as.example", false).err().unwrap().message(),
            "attestation service URL \"http://as.example\": plain http is allowed only on loopback; use https (or, for development, allow_insecure_http = true)"
        );
    }
}

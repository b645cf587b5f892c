//! The KBS client: RCAR 0.4.0 (request, challenge, attestation, response) against
//! Trustee's KBS, and resource fetches whose answers are JWEs to the handshake's
//! ephemeral TEE key. Evidence comes from the plugins through the service; this
//! module only speaks HTTP and JSON.

pub mod jcs;
pub mod tee_key;

use std::time::Duration;

use attester_sdk::{Error, Result};
use kbs_types::{Attestation, Challenge, Request, Response, Tee};

pub use tee_key::TeeKey;

pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Hashes offered for binding runtime data, in order of preference.
pub const HASHES: [&str; 3] = ["sha384", "sha256", "sha512"];
const COOKIE: &str = "kbs-session-id";
/// Bounds on what the KBS may send: a token or challenge, and a resource.
const MAX_SMALL: usize = 1 << 20;
const MAX_RESOURCE: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the KBS is: `[token_configs.kbs] url`, else `AA_KBC_PARAMS=cc_kbc::<url>`,
/// else the kernel command line's `agent.aa_kbc_params=cc_kbc::<url>`.
pub fn kbs_url(configured: Option<&str>) -> Option<String> {
    if let Some(u) = configured {
        return Some(u.to_string());
    }
    let from = |s: &str| s.strip_prefix("cc_kbc::").map(str::to_string);
    if let Ok(p) = std::env::var("AA_KBC_PARAMS") {
        return from(&p);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("agent.aa_kbc_params="))
        .and_then(from)
}

pub struct KbsClient {
    base: String,
    http: reqwest::Client,
}

fn unavailable(what: &str, e: reqwest::Error) -> Error {
    unreachable_peer("KBS", what, e)
}

pub(crate) fn unreachable_peer(peer: &str, what: &str, e: reqwest::Error) -> Error {
    Error::unavailable(format!("{what}: the {peer} did not answer")).with_source(e)
}

/// An HTTP client for `peer` (the KBS, the attestation service) at `url`: https, or
/// http on a loopback address; `root_cert` (PEM) an extra trust anchor for a
/// private CA. Returns the base URL without a trailing slash and the client.
pub(crate) fn http_client(
    peer: &str,
    url: &str,
    root_cert: Option<&str>,
) -> Result<(String, reqwest::Client)> {
    let base = url.trim_end_matches('/').to_string();
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| Error::invalid_argument(format!("{peer} URL {url:?} has no scheme")))?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host == "[::1]";
    match scheme {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(Error::invalid_argument(format!(
                "{peer} URL {url:?}: plain http is allowed only on loopback; use https"
            )))
        }
        other => {
            return Err(Error::invalid_argument(format!(
                "{peer} URL {url:?}: unsupported scheme {other:?}"
            )))
        }
    }
    let mut b = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = root_cert {
        let not_pem = || {
            Error::invalid_argument(format!(
                "the {peer}'s root certificate (cert) is not a PEM certificate"
            ))
        };
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| not_pem().with_source(e))?;
        // An input without any certificate block parses as an empty bundle.
        if certs.is_empty() || !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(not_pem());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    let http = b
        .build()
        .map_err(|e| Error::internal("cannot build the HTTP client").with_source(e))?;
    Ok((base, http))
}

impl KbsClient {
    /// `url` must be https, or http on a loopback address; `root_cert` (PEM) is an
    /// extra trust anchor for a KBS with a private CA.
    pub fn new(url: &str, root_cert: Option<&str>) -> Result<KbsClient> {
        let (base, http) = http_client("KBS", url, root_cert)?;
        Ok(KbsClient { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Step 1: the request; the challenge and the session cookie.
    pub async fn auth(&self, tee: &str) -> Result<(Challenge, Option<String>)> {
        let tee: Tee =
            serde_json::from_value(serde_json::Value::String(tee.to_string())).map_err(|_| {
                Error::failed_precondition(format!("TEE {tee:?} has no KBS protocol name"))
            })?;
        let req = Request {
            version: PROTOCOL_VERSION.into(),
            tee,
            extra_params: serde_json::json!({ "supported-hash-algorithms": HASHES }),
        };
        let r = self
            .http
            .post(format!("{}/kbs/v0/auth", self.base))
            .json(&req)
            .send()
            .await
            .map_err(|e| unavailable("RCAR auth", e))?;
        let cookie = session_cookie(&r);
        let body = check(r, "RCAR auth", MAX_SMALL).await?;
        let c: Challenge = serde_json::from_slice(&body).map_err(|e| {
            Error::failed_precondition("RCAR auth: the KBS's challenge is malformed").with_source(e)
        })?;
        Ok((c, cookie))
    }

    /// Step 4: the attestation; the token.
    pub async fn attest(&self, att: &Attestation, cookie: Option<&str>) -> Result<String> {
        let req = self
            .http
            .post(format!("{}/kbs/v0/attest", self.base))
            .json(att);
        let r = with_session(req, cookie)
            .send()
            .await
            .map_err(|e| unavailable("RCAR attest", e))?;
        let body = check(r, "RCAR attest", MAX_SMALL).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Error::failed_precondition("RCAR attest: the KBS's answer is not JSON").with_source(e)
        })?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::failed_precondition("RCAR attest: the KBS's answer has no token"))
    }

    /// Step 5: a resource (`<repo>/<type>/<tag>`) as the KBS's JWE, with its
    /// `protected` member as sent (the AAD). `Ok(None)` on 401: the caller attests
    /// again.
    pub async fn resource(
        &self,
        path: &str,
        token: &str,
        cookie: Option<&str>,
    ) -> Result<Option<(Response, String)>> {
        let req = self
            .http
            .get(format!("{}/kbs/v0/resource/{path}", self.base))
            .bearer_auth(token);
        let r = with_session(req, cookie)
            .send()
            .await
            .map_err(|e| unavailable("KBS resource", e))?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let body = check(r, &format!("KBS resource {path}"), MAX_RESOURCE).await?;
        let not_jwe =
            || Error::failed_precondition(format!("KBS resource {path}: the answer is not a JWE"));
        let raw: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| not_jwe().with_source(e))?;
        let protected = raw["protected"].as_str().ok_or_else(not_jwe)?.to_string();
        let jwe: Response = serde_json::from_value(raw).map_err(|e| not_jwe().with_source(e))?;
        Ok(Some((jwe, protected)))
    }
}

/// `req` carrying the RCAR session cookie, when there is one.
fn with_session(req: reqwest::RequestBuilder, cookie: Option<&str>) -> reqwest::RequestBuilder {
    match cookie {
        Some(c) => req.header(reqwest::header::COOKIE, format!("{COOKIE}={c}")),
        None => req,
    }
}

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .and_then(|kv| kv.trim().strip_prefix(&format!("{COOKIE}=")))
                .map(str::to_string)
        })
}

/// The body of a 2xx answer, at most `max` bytes; otherwise an error with the
/// status and the KBS's error text.
async fn check(r: reqwest::Response, what: &str, max: usize) -> Result<Vec<u8>> {
    check_answer("KBS", r, what, max).await
}

/// [`check`] for any `peer`.
pub(crate) async fn check_answer(
    peer: &str,
    mut r: reqwest::Response,
    what: &str,
    max: usize,
) -> Result<Vec<u8>> {
    let status = r.status();
    if r.content_length().is_some_and(|n| n as usize > max) {
        return Err(Error::failed_precondition(format!(
            "{what}: the {peer}'s answer is over {max} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| unreachable_peer(peer, what, e))?
    {
        if body.len() + chunk.len() > max {
            return Err(Error::failed_precondition(format!(
                "{what}: the {peer}'s answer is over {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_slice::<kbs_types::ErrorInformation>(&body)
        .map(|e| e.detail)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    let msg = format!("{what}: the {peer} answered {status}: {detail}");
    Err(match status.as_u16() {
        401 | 403 => Error::failed_precondition(msg),
        400..=499 => Error::invalid_argument(msg),
        _ => Error::unavailable(msg),
    })
}

/// `H(JCS(value))` with the hash the KBS selected.
pub fn bind(hash: &str, value: &serde_json::Value) -> Result<Vec<u8>> {
    use sha2::Digest as _;
    let c = jcs::canonical(value)?;
    Ok(match hash {
        "sha256" => sha2::Sha256::digest(c.as_bytes()).to_vec(),
        "sha384" => sha2::Sha384::digest(c.as_bytes()).to_vec(),
        "sha512" => sha2::Sha512::digest(c.as_bytes()).to_vec(),
        other => {
            return Err(Error::failed_precondition(format!(
                "the KBS selected hash {other:?}, which was not offered ({HASHES:?})"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(KbsClient::new("https://kbs.example:8080/", None).is_ok());
        assert!(KbsClient::new("http://127.0.0.1:8080", None).is_ok());
        assert!(KbsClient::new("http://localhost:8080", None).is_ok());
        assert_eq!(
            KbsClient::new("http://kbs.example", None)
                .err()
                .unwrap()
                .message(),
            "KBS URL \"http://kbs.example\": plain http is allowed only on loopback; use https"
        );
        assert!(KbsClient::new("kbs.example", None).is_err());
        assert!(KbsClient::new("https://k", Some("not pem")).is_err());
    }

    #[test]
    fn binding_uses_the_selected_hash() {
        let v = serde_json::json!({"nonce": "n", "a": 1});
        assert_eq!(bind("sha256", &v).unwrap().len(), 32);
        assert_eq!(bind("sha384", &v).unwrap().len(), 48);
        assert_eq!(
            bind("md5", &v).err().unwrap().message(),
            "the KBS selected hash \"md5\", which was not offered ([\"sha384\", \"sha256\", \"sha512\"])"
        );
    }
}

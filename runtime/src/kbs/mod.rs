//! The KBS client: RCAR 0.4.0 (request, challenge, attestation, response) against
//! Trustee's KBS, and resource fetches whose answers are JWEs to the handshake's
//! ephemeral TEE key. Evidence comes from the plugins through the service; this
//! module only speaks HTTP and JSON.

pub mod jcs;
pub mod session;
pub mod tee_key;

use std::time::Duration;

use attester_sdk::{Error, Result};
use kbs_types::{Attestation, Challenge, Request, Response, Tee};

pub use session::{KbsSession, Reuse, Sessions};
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

/// `url` checked as a `peer`'s address (the KBS, the attestation service): https,
/// or http on a loopback address; plain http elsewhere only with
/// `allow_insecure_http` (dev setups), warned. Returns it without a trailing slash.
pub fn check_url(peer: &str, url: &str, allow_insecure_http: bool) -> Result<String> {
    let base = url.trim_end_matches('/').to_string();
    // Decided on the URL as parsed, never on its text: `http://localhost:pw@host`
    // names `host`, and `[::1]` is loopback.
    let parsed = reqwest::Url::parse(&base).map_err(|e| {
        Error::invalid_argument(format!("{peer} URL {url:?} is not a URL")).with_source(e)
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid_argument(format!(
            "{peer} URL {url:?}: credentials in the URL are not allowed"
        )));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" if allow_insecure_http => {
            tracing::warn!(
                url = %base,
                "plain http to the {peer} off this machine (allow_insecure_http): tokens and keys cross the network unencrypted"
            );
        }
        "http" => {
            return Err(Error::invalid_argument(format!(
                "{peer} URL {url:?}: plain http is allowed only on loopback; use https (or, for development, allow_insecure_http = true)"
            )))
        }
        other => {
            return Err(Error::invalid_argument(format!(
                "{peer} URL {url:?}: unsupported scheme {other:?}"
            )))
        }
    }
    Ok(base)
}

/// `pem`, `peer`'s root certificates (a private CA), read; `InvalidArgument`
/// when it holds none.
pub fn root_certs(peer: &str, pem: &str) -> Result<Vec<reqwest::Certificate>> {
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
    Ok(certs)
}

/// An HTTP client for `peer` (the KBS, the attestation service) at `url` (see
/// [`check_url`]); `root_cert` (PEM) an extra trust anchor for a private CA.
/// Returns the base URL without a trailing slash and the client.
pub(crate) fn http_client(
    peer: &str,
    url: &str,
    root_cert: Option<&str>,
    allow_insecure_http: bool,
) -> Result<(String, reqwest::Client)> {
    let base = check_url(peer, url, allow_insecure_http)?;
    let mut b = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = root_cert {
        for c in root_certs(peer, pem)? {
            b = b.add_root_certificate(c);
        }
    }
    let http = b
        .build()
        .map_err(|e| Error::internal("cannot build the HTTP client").with_source(e))?;
    Ok((base, http))
}

impl KbsClient {
    /// `url` must be https, or http on a loopback address (elsewhere only with
    /// `allow_insecure_http`); `root_cert` (PEM) is an extra trust anchor for a KBS
    /// with a private CA.
    pub fn new(url: &str, root_cert: Option<&str>, allow_insecure_http: bool) -> Result<KbsClient> {
        let (base, http) = http_client("KBS", url, root_cert, allow_insecure_http)?;
        Ok(KbsClient { base, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `{base}/kbs/v0/resource/<repo>/<type>/<tag>`, built from path segments (the
    /// URL crate escapes each), never by pasting text into the URL.
    fn resource_url(&self, path: &str) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| {
            Error::invalid_argument(format!("KBS URL {:?} is not a URL", self.base)).with_source(e)
        })?;
        url.path_segments_mut()
            .map_err(|_| Error::invalid_argument(format!("KBS URL {:?} has no path", self.base)))?
            .pop_if_empty()
            .extend(["kbs", "v0", "resource"])
            .extend(path.split('/'));
        Ok(url)
    }

    /// Step 1: the request; the challenge and the session cookie.
    pub async fn auth(&self, tee: &str) -> Result<(Challenge, Option<String>)> {
        let tee: Tee =
            serde_json::from_value(serde_json::Value::String(tee.to_string())).map_err(|_| {
                Error::failed_precondition(format!(
                    "the KBS protocol cannot name TEE {tee:?}: kbs-types knows {}, so no \
                     KBS can attest it (GetEvidence and GetTeeType still answer)",
                    crate::config::KBS_TEES.join(", ")
                ))
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
    /// `protected` member as sent (the AAD); or, on 401, why the KBS refused (the
    /// caller decides whether a fresh token could help).
    pub async fn resource(&self, path: &str, token: &str, cookie: Option<&str>) -> Result<Fetched> {
        let req = self.http.get(self.resource_url(path)?).bearer_auth(token);
        let r = with_session(req, cookie)
            .send()
            .await
            .map_err(|e| unavailable("KBS resource", e))?;
        let what = format!("KBS resource {path}");
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            let body = read_bounded("KBS", r, &what, MAX_SMALL).await?;
            return Ok(Fetched::Refused(Refusal::parse(&body)));
        }
        let body = check(r, &what, MAX_RESOURCE).await?;
        let not_jwe =
            || Error::failed_precondition(format!("KBS resource {path}: the answer is not a JWE"));
        let raw: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| not_jwe().with_source(e))?;
        let protected = raw["protected"].as_str().ok_or_else(not_jwe)?.to_string();
        let jwe: Response = serde_json::from_value(raw).map_err(|e| not_jwe().with_source(e))?;
        Ok(Fetched::Resource {
            jwe: Box::new(jwe),
            protected,
        })
    }
}

/// A resource request's outcome.
pub enum Fetched {
    /// The JWE and its `protected` member as sent.
    Resource {
        jwe: Box<Response>,
        protected: String,
    },
    /// The KBS answered 401.
    Refused(Refusal),
}

/// Why the KBS refused, from its error body: Trustee answers 401 for every failure
/// and names the cause in kbs-types' `ErrorInformation`
/// (`{"type": ".../errors/<Kind>", "detail": "…"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error type's last path segment (`PolicyDeny`), if the body had one.
    pub kind: Option<String>,
    /// The detail, or the body's start when it is not an `ErrorInformation`;
    /// bounded and escaped ([`crate::echo`]).
    pub detail: String,
}

/// Refusals a fresh token cannot change: the policy denies this TEE the resource,
/// the resource (or its plugin) is missing or failing, the KBS's policy is broken.
/// A 401 of another kind (an expired or unknown token, say) means attest again.
const FINAL_REFUSALS: [&str; 6] = [
    "PolicyDeny",
    "PluginInternalError",
    "PluginNotFound",
    "InvalidRequestPath",
    "ParsePolicyError",
    "PolicyEngine",
];

impl Refusal {
    pub fn parse(body: &[u8]) -> Refusal {
        use crate::echo::{bounded, MAX_ECHO};
        match serde_json::from_slice::<kbs_types::ErrorInformation>(body) {
            Ok(e) => Refusal {
                kind: e
                    .error_type
                    .rsplit('/')
                    .next()
                    .filter(|k| !k.is_empty())
                    .map(|k| bounded(k, MAX_ECHO)),
                detail: bounded(&e.detail, MAX_ECHO),
            },
            Err(_) => Refusal {
                kind: None,
                detail: bounded(&String::from_utf8_lossy(body), MAX_ECHO),
            },
        }
    }

    /// Whether attesting again could change the answer.
    pub fn fresh_token_may_help(&self) -> bool {
        !self
            .kind
            .as_deref()
            .is_some_and(|k| FINAL_REFUSALS.contains(&k))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.kind, self.detail.is_empty()) {
            (Some(k), false) => write!(f, "{k}: {}", self.detail),
            (Some(k), true) => f.write_str(k),
            (None, false) => f.write_str(&self.detail),
            (None, true) => f.write_str("no reason given"),
        }
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
    r: reqwest::Response,
    what: &str,
    max: usize,
) -> Result<Vec<u8>> {
    let status = r.status();
    let body = read_bounded(peer, r, what, max).await?;
    if status.is_success() {
        return Ok(body);
    }
    let msg = format!(
        "{what}: the {peer} answered {status}: {}",
        Refusal::parse(&body)
    );
    Err(match status.as_u16() {
        401 | 403 => Error::failed_precondition(msg),
        400..=499 => Error::invalid_argument(msg),
        _ => Error::unavailable(msg),
    })
}

/// The body of `r`, refused past `max` bytes.
async fn read_bounded(
    peer: &str,
    mut r: reqwest::Response,
    what: &str,
    max: usize,
) -> Result<Vec<u8>> {
    let over =
        || Error::failed_precondition(format!("{what}: the {peer}'s answer is over {max} bytes"));
    if r.content_length().is_some_and(|n| n as usize > max) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| unreachable_peer(peer, what, e))?
    {
        if body.len() + chunk.len() > max {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
        assert!(KbsClient::new("https://kbs.example:8080/", None, false).is_ok());
        assert!(KbsClient::new("http://127.0.0.1:8080", None, false).is_ok());
        assert!(KbsClient::new("http://localhost:8080", None, false).is_ok());
        assert_eq!(
            KbsClient::new("http://kbs.example", None, false)
                .err()
                .unwrap()
                .message(),
            "KBS URL \"http://kbs.example\": plain http is allowed only on loopback; use https (or, for development, allow_insecure_http = true)"
        );
        assert!(KbsClient::new("kbs.example", None, false).is_err());
        // IPv6 loopback is loopback; userinfo cannot pass another host off as it.
        assert!(KbsClient::new("http://[::1]:8080", None, false).is_ok());
        assert!(KbsClient::new("http://127.0.0.2:8080/", None, false).is_ok());
        assert_eq!(
            KbsClient::new("http://localhost:pw@kbs.example", None, false)
                .err()
                .unwrap()
                .message(),
            "KBS URL \"http://localhost:pw@kbs.example\": credentials in the URL are not allowed"
        );
        assert_eq!(
            KbsClient::new("http://localhost@kbs.example", None, false)
                .err()
                .unwrap()
                .message(),
            "KBS URL \"http://localhost@kbs.example\": credentials in the URL are not allowed"
        );
        assert_eq!(
            KbsClient::new("http://[::2]", None, false)
                .err()
                .unwrap()
                .message(),
            "KBS URL \"http://[::2]\": plain http is allowed only on loopback; use https (or, for development, allow_insecure_http = true)"
        );
        // The explicit development opt-in.
        assert!(KbsClient::new("http://kbs.example", None, true).is_ok());
        // Never for credentials.
        assert!(KbsClient::new("http://u@kbs.example", None, true).is_err());
        assert!(KbsClient::new("https://k", Some("not pem"), false).is_err());
    }

    #[test]
    fn refusals_name_the_kbs_reason_and_whether_to_attest_again() {
        let trustee = |kind: &str, detail: &str| {
            Refusal::parse(
                serde_json::json!({
                    "type": format!("https://github.com/confidential-containers/kbs/errors/{kind}"),
                    "detail": detail,
                })
                .to_string()
                .as_bytes(),
            )
        };
        let deny = trustee("PolicyDeny", "Access denied by policy");
        assert_eq!(deny.to_string(), "PolicyDeny: Access denied by policy");
        assert!(!deny.fresh_token_may_help());
        let missing = trustee(
            "PluginInternalError",
            "Plugin internal error: resource not found: default/key/2",
        );
        assert!(!missing.fresh_token_may_help());
        let token = trustee("TokenVerifierError", "Token Verifier error: expired");
        assert!(token.fresh_token_may_help());
        assert_eq!(
            token.to_string(),
            "TokenVerifierError: Token Verifier error: expired"
        );
        // Not Trustee's shape: the body's start, escaped; a fresh token may help.
        let other = Refusal::parse(b"go away\n");
        assert_eq!(other.to_string(), "go away\\n");
        assert!(other.fresh_token_may_help());
        assert_eq!(Refusal::parse(b"").to_string(), "no reason given");
        // A hostile detail is cut and cannot break the line.
        let long = trustee("PolicyDeny", &format!("a\nb{}", "x".repeat(1000)));
        assert!(long.detail.starts_with("a\\nb"), "{}", long.detail);
        assert!(
            long.detail.ends_with("… (1003 characters)"),
            "{}",
            long.detail
        );
    }

    #[test]
    fn resource_urls_are_built_from_segments() {
        let c = KbsClient::new("https://kbs.example:8080/prefix/", None, false).unwrap();
        assert_eq!(
            c.resource_url("default/key/k1").unwrap().as_str(),
            "https://kbs.example:8080/prefix/kbs/v0/resource/default/key/k1"
        );
        // Even text that got past the kid parser could not leave the resource tree.
        assert_eq!(
            c.resource_url("a/b/c?admin=1#x").unwrap().as_str(),
            "https://kbs.example:8080/prefix/kbs/v0/resource/a/b/c%3Fadmin=1%23x"
        );
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

//! A small KBS for the tests (a fixture, not a product): HTTP on 127.0.0.1 speaking
//! real RCAR 0.4.0. It checks the protocol version, issues a nonce per session,
//! verifies that the sample attester's evidence binds `H(JCS(runtime data))` exactly,
//! signs an ES256 JWT carrying the TEE public key, and serves resources as JWEs
//! (ECDH-ES+A256KW, A256GCM) to that key. It refuses stale nonces, replays, hashes it
//! did not select, missing cookies and tokens it did not sign. Its crypto is written
//! here, apart from attestd's, so the two check each other.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::{json, Value};
use sha2::Digest as _;

#[derive(Default)]
struct Session {
    nonce: String,
    hash: String,
    used: bool,
}

#[derive(Default)]
pub struct Knobs {
    /// Answer this many resource requests with 401 first.
    pub unauthorized: usize,
    /// The hash the KBS selects (default sha384).
    pub select_hash: Option<String>,
    /// Resources the policy denies, by path: 401 `PolicyDeny`, as Trustee answers.
    pub refuse: Vec<String>,
    /// Answer every resource request with this status, error kind and detail
    /// (any of Trustee's `ErrorInformation` bodies).
    pub refuse_with: Option<(u16, String, String)>,
    /// Answer resource requests with this many bytes of junk (a misbehaving KBS).
    pub oversized: Option<usize>,
    /// Hold every resource answer this long (to see requests overlap).
    pub resource_delay: Option<std::time::Duration>,
    /// Refuse every attestation (401 `AttestationError`) after holding it this long.
    pub refuse_attest: Option<std::time::Duration>,
}

struct Kbs {
    key: p256::ecdsa::SigningKey,
    sessions: Mutex<HashMap<String, Session>>,
    resources: Mutex<HashMap<String, Vec<u8>>>,
    knobs: Mutex<Knobs>,
    /// What each attestation carried, for the tests to inspect.
    attestations: Mutex<Vec<Value>>,
    /// Attestation requests received, refused ones included.
    attest_requests: Mutex<usize>,
    /// Resource requests being answered now, and the most there ever were at once.
    in_flight: Mutex<(usize, usize)>,
}

/// A running test KBS; stops when dropped.
pub struct TestKbs {
    pub addr: SocketAddr,
    state: Arc<Kbs>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestKbs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An error as Trustee's KBS answers it: kbs-types' `ErrorInformation`, whose
/// type names the error kind (401 for nearly every failure, reference §9).
fn error(status: StatusCode, kind: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({"type": format!("https://github.com/confidential-containers/kbs/errors/{kind}"), "detail": detail})),
    )
        .into_response()
}

/// JSON with object members sorted at every level: RFC 8785 for the string-only
/// documents RCAR binds (keys here are ASCII, so byte order is UTF-16 order).
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<String, Value> =
                    m.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                // Serialised through the BTreeMap so the order holds even with
                // serde_json's preserve_order on.
                serde_json::to_value(b).unwrap_or(Value::Null)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(&sorted(v), &mut out);
    out
}

fn hash(alg: &str, data: &[u8]) -> Vec<u8> {
    match alg {
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        _ => sha2::Sha384::digest(data).to_vec(),
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix("kbs-session-id=")
                .map(str::to_string)
        })
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

async fn auth(State(k): State<Arc<Kbs>>, Json(req): Json<Value>) -> Response {
    if req["version"] != "0.4.0" {
        return error(
            StatusCode::BAD_REQUEST,
            "HTTPFailed",
            &format!("protocol version {} is not 0.4.0", req["version"]),
        );
    }
    let offered: Vec<String> = req["extra-params"]["supported-hash-algorithms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let want = k
        .knobs
        .lock()
        .unwrap()
        .select_hash
        .clone()
        .unwrap_or_else(|| "sha384".into());
    if !offered.contains(&want) {
        return error(
            StatusCode::BAD_REQUEST,
            "HTTPFailed",
            &format!("{want} not offered"),
        );
    }
    let id = random_hex(16);
    let nonce = STANDARD.encode(random_hex(16));
    k.sessions.lock().unwrap().insert(
        id.clone(),
        Session {
            nonce: nonce.clone(),
            hash: want.clone(),
            used: false,
        },
    );
    let mut h = HeaderMap::new();
    h.insert(
        axum::http::header::SET_COOKIE,
        format!("kbs-session-id={id}; Path=/kbs; HttpOnly")
            .parse()
            .unwrap(),
    );
    (
        h,
        Json(json!({"nonce": nonce, "extra-params": {"selected-hash-algorithm": want}})),
    )
        .into_response()
}

fn jwt(key: &p256::ecdsa::SigningKey, claims: &Value) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{head}.{body}");
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// The claims of a token this KBS signed, or why not.
pub fn verify_jwt(key: &p256::ecdsa::VerifyingKey, token: &str) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (h, b, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(b), Some(s), None) => (h, b, s),
        _ => return Err("not a JWS".into()),
    };
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|e| e.to_string())?;
    key.verify(format!("{h}.{b}").as_bytes(), &sig)
        .map_err(|_| "bad signature".to_string())?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if claims["exp"].as_u64().unwrap_or(0) < now {
        return Err("expired".into());
    }
    Ok(claims)
}

async fn attest(State(k): State<Arc<Kbs>>, headers: HeaderMap, Json(att): Json<Value>) -> Response {
    *k.attest_requests.lock().unwrap() += 1;
    let refuse = k.knobs.lock().unwrap().refuse_attest;
    if let Some(hold) = refuse {
        tokio::time::sleep(hold).await;
        return error(
            StatusCode::UNAUTHORIZED,
            "AttestationError",
            "Attestation error: the evidence does not meet the policy",
        );
    }
    let Some(id) = cookie(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "AttestationError",
            "no kbs-session-id cookie",
        );
    };
    let (nonce, alg) = {
        let mut sessions = k.sessions.lock().unwrap();
        let Some(s) = sessions.get_mut(&id) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "AttestationError",
                "unknown session",
            );
        };
        if s.used {
            return error(
                StatusCode::UNAUTHORIZED,
                "AttestationError",
                "nonce already used (replay)",
            );
        }
        s.used = true;
        (s.nonce.clone(), s.hash.clone())
    };
    let rd = &att["runtime-data"];
    if rd["nonce"] != nonce.as_str() {
        return error(StatusCode::UNAUTHORIZED, "AttestationError", "stale nonce");
    }
    let bound = json!({
        "tee-pubkey": rd["tee-pubkey"],
        "nonce": nonce,
        "additional-evidence": att["tee-evidence"]["additional_evidence"],
    });
    let want = hash(&alg, canonical(&bound).as_bytes());
    // The sample attester's evidence: report_data is the runtime data, base64.
    let got = att["tee-evidence"]["primary_evidence"]["report_data"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default();
    if got != want {
        return error(
            StatusCode::UNAUTHORIZED,
            "AttestationError",
            "the evidence does not bind H(JCS(runtime data))",
        );
    }
    k.attestations.lock().unwrap().push(att.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = jwt(
        &k.key,
        &json!({"iss": "test-kbs", "iat": now, "exp": now + 300, "tee-pubkey": rd["tee-pubkey"]}),
    );
    Json(json!({"token": token})).into_response()
}

/// JWE (flattened) of `plaintext` to the P-256 JWK `jwk`: ECDH-ES+A256KW, A256GCM.
pub fn jwe_to(jwk: &Value, plaintext: &[u8]) -> Result<Value, String> {
    let coord = |n: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(jwk[n].as_str().ok_or(format!("jwk has no {n}"))?)
            .map_err(|e| e.to_string())
    };
    let (x, y) = (coord("x")?, coord("y")?);
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let tee = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())?;
    let eph = p256::ecdh::EphemeralSecret::random(&mut rand::rngs::OsRng);
    let epk = p256::EncodedPoint::from(eph.public_key());
    let z = eph.diffie_hellman(&tee);
    // Concat KDF (RFC 7518 §4.6.2), written out again here on purpose.
    let alg = b"ECDH-ES+A256KW";
    let mut h = sha2::Sha256::new();
    h.update([0, 0, 0, 1]);
    h.update(z.raw_secret_bytes());
    h.update((alg.len() as u32).to_be_bytes());
    h.update(alg);
    h.update([0u8; 8]); // empty apu, apv
    h.update(256u32.to_be_bytes());
    let kek: [u8; 32] = h.finalize().into();
    let mut cek = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut cek);
    let mut wrapped = [0u8; 40];
    aes_kw::KekAes256::from(kek)
        .wrap(&cek, &mut wrapped)
        .map_err(|e| e.to_string())?;
    // The header's text exactly as Trustee's kbs-types writes it: `alg`, `enc`,
    // then the other fields in serde_json's default (sorted) order. CDH's KBS
    // client does not use the text it received as the AAD: it parses the header
    // and writes it again, so any other order fails its AES-GCM tag check.
    let protected = format!(
        r#"{{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}}}"#,
        URL_SAFE_NO_PAD.encode(epk.x().ok_or("no x")?),
        URL_SAFE_NO_PAD.encode(epk.y().ok_or("no y")?),
    );
    let protected_b64 = URL_SAFE_NO_PAD.encode(protected);
    let mut iv = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
    let ct = aes_gcm::Aes256Gcm::new_from_slice(&cek)
        .map_err(|e| e.to_string())?
        .encrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected_b64.as_bytes(),
            },
        )
        .map_err(|e| e.to_string())?;
    let (ciphertext, tag) = ct.split_at(ct.len() - 16);
    Ok(json!({
        "protected": protected_b64,
        "encrypted_key": URL_SAFE_NO_PAD.encode(wrapped),
        "iv": URL_SAFE_NO_PAD.encode(iv),
        "ciphertext": URL_SAFE_NO_PAD.encode(ciphertext),
        "tag": URL_SAFE_NO_PAD.encode(tag),
    }))
}

async fn resource(
    State(k): State<Arc<Kbs>>,
    Path((repo, typ, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("{repo}/{typ}/{tag}");
    let delay = k.knobs.lock().unwrap().resource_delay;
    if let Some(d) = delay {
        {
            let mut f = k.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        tokio::time::sleep(d).await;
        k.in_flight.lock().unwrap().0 -= 1;
    }
    {
        let mut knobs = k.knobs.lock().unwrap();
        if knobs.unauthorized > 0 {
            knobs.unauthorized -= 1;
            return error(
                StatusCode::UNAUTHORIZED,
                "TokenVerifierError",
                "Token Verifier error: token expired",
            );
        }
        if let Some((status, kind, detail)) = &knobs.refuse_with {
            let status = StatusCode::from_u16(*status).unwrap();
            return error(status, kind, detail);
        }
        if knobs.refuse.contains(&path) {
            return error(
                StatusCode::UNAUTHORIZED,
                "PolicyDeny",
                "Access denied by policy",
            );
        }
        if let Some(n) = knobs.oversized {
            return (StatusCode::OK, vec![b'x'; n]).into_response();
        }
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return error(StatusCode::UNAUTHORIZED, "TokenNotFound", "no token");
    };
    let claims = match verify_jwt(k.key.verifying_key(), token) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "TokenVerifierError",
                &format!("Token Verifier error: {e}"),
            )
        }
    };
    let Some(data) = k.resources.lock().unwrap().get(&path).cloned() else {
        // As Trustee answers a missing resource: the cause and the path stay in
        // its own log, the client learns only this.
        return error(
            StatusCode::UNAUTHORIZED,
            "PluginInternalError",
            "Plugin internal error",
        );
    };
    match jwe_to(&claims["tee-pubkey"], &data) {
        Ok(jwe) => Json(jwe).into_response(),
        Err(e) => error(StatusCode::UNAUTHORIZED, "JweError", &e),
    }
}

/// GET a resource from the KBS at `url` with `token`, and open its JWE with
/// `key` (as CDH does): the plaintext, and the protected header as received.
pub async fn open_resource(
    url: &str,
    path: &str,
    token: &str,
    key: &attestd::kbs::TeeKey,
) -> (Vec<u8>, String) {
    let r = reqwest::Client::new()
        .get(format!("{url}/kbs/v0/resource/{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "resource {path}: {}", r.status());
    let raw: Value = r.json().await.unwrap();
    let protected = raw["protected"].as_str().unwrap().to_string();
    let jwe: kbs_types::Response = serde_json::from_value(raw).unwrap();
    (key.decrypt(&jwe, &protected).unwrap(), protected)
}

/// An attestd config with the sample attester (ttrpc) and `[token_configs.kbs]`
/// at `url`, plus `extra` lines in that table (and any tables after it).
pub fn attestd_config(d: &std::path::Path, url: &str, extra: &str) -> String {
    format!(
        "[token_configs.kbs]\nurl = {url:?}\n{extra}\n{}",
        crate::config(d, &crate::Plugin::sample("ttrpc"), &[], "")
    )
}

impl TestKbs {
    pub async fn start() -> TestKbs {
        let state = Arc::new(Kbs {
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
            sessions: Mutex::new(HashMap::new()),
            resources: Mutex::new(HashMap::new()),
            knobs: Mutex::new(Knobs::default()),
            attestations: Mutex::new(Vec::new()),
            attest_requests: Mutex::new(0),
            in_flight: Mutex::new((0, 0)),
        });
        let app = Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route("/kbs/v0/resource/{repo}/{typ}/{tag}", get(resource))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestKbs { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, path: &str, data: &[u8]) {
        self.state
            .resources
            .lock()
            .unwrap()
            .insert(path.into(), data.to_vec());
    }

    pub fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.state.knobs.lock().unwrap()
    }

    pub fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        *self.state.key.verifying_key()
    }

    /// The most resource requests ever answered at once (counted while
    /// `resource_delay` is set).
    pub fn max_in_flight(&self) -> usize {
        self.state.in_flight.lock().unwrap().1
    }

    /// Attestation requests received, refused ones included.
    pub fn attest_requests(&self) -> usize {
        *self.state.attest_requests.lock().unwrap()
    }

    pub fn attestations(&self) -> Vec<Value> {
        self.state.attestations.lock().unwrap().clone()
    }
}

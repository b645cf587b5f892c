//! A conformance kit for plugin authors: drive any plugin through the contract
//! the core relies on (docs/plugin-authors.md) and say, check by check, what
//! holds. `attestd conformance` prints it; the test suite runs it against every
//! attester in the repository.

use std::path::Path;
use std::time::Duration;

use attester_sdk::{Code, Evidence, InitDataBinding, RemoteAttester, Transport, PROTOCOL_VERSIONS};
use serde::Serialize;

/// How long a plugin started by the kit gets to listen, and to exit on SIGTERM.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Each call's deadline (a slow device quote takes seconds, not tens).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Detect must answer within this: the core asks every candidate's at start.
pub const MAX_DETECT_TIME: Duration = Duration::from_secs(1);
/// A health check while evidence is in flight must answer within the core's
/// default `health_timeout_ms`: two that do not and the core restarts the plugin.
pub const HEALTH_WHILE_BUSY: Duration = Duration::from_millis(2_000);
/// How deep the kit looks into evidence for the report data (JSON inside
/// base64 inside JSON...), and at most how many strings and arrays it decodes.
const MAX_SEARCH_DEPTH: usize = 6;
const MAX_SEARCH_ITEMS: usize = 10_000;
/// The shortest prefix of the report data the kit accepts as bound (a TPM
/// quote's qualifying data).
const MIN_BOUND_PREFIX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "detail")]
pub enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The plugin under test: where it serves, and its pid when the kit started it
/// (for the SIGTERM check).
pub struct Target<'a> {
    pub socket: &'a Path,
    pub transport: Transport,
    pub pid: Option<u32>,
}

fn pass(name: &'static str, d: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Pass(d.into()),
    }
}
fn fail(name: &'static str, d: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Fail(d.into()),
    }
}
fn skip(name: &'static str, d: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Skip(d.into()),
    }
}

/// Every check, in order. A plugin that cannot even be reached or handshaken
/// fails there and the rest is skipped.
pub async fn run(t: &Target<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let client = match RemoteAttester::connect(t.socket, t.transport).await {
        Ok(c) => c.with_deadline(CALL_TIMEOUT),
        Err(e) => {
            out.push(fail("connect", e.chain()));
            return out;
        }
    };
    // Handshake: versions, bounded printable text, the transport it claims.
    let hs = match client.handshake(PROTOCOL_VERSIONS).await {
        Ok(hs) => hs,
        Err(e) => {
            out.push(fail("handshake", e.chain()));
            return out;
        }
    };
    let info = &hs.info;
    let caps = &info.capabilities;
    out.push(pass(
        "handshake",
        format!(
            "{} {}, tee {}, protocol v{} (it speaks {:?}), over {}",
            info.name,
            info.version,
            info.tee,
            hs.protocol_version,
            hs.plugin_versions,
            hs.transport
        ),
    ));
    out.push(tee_name(&info.tee));
    out.push(match client.check().await {
        Ok(()) => pass("health", "SERVING"),
        Err(e) => fail("health", e.chain()),
    });
    let started = std::time::Instant::now();
    let detected = client.detect().await;
    let took = started.elapsed();
    out.push(match detected {
        Ok(_) if took > MAX_DETECT_TIME => fail(
            "detect answers",
            format!(
                "it took {} ms, more than {} ms: Detect must be cheap (the core asks every candidate's at start)",
                took.as_millis(),
                MAX_DETECT_TIME.as_millis()
            ),
        ),
        Ok(found) => pass(
            "detect answers",
            format!("present: {found}, in {} ms", took.as_millis()),
        ),
        Err(e) => fail("detect answers", e.chain()),
    });

    // Report data: exactly the advertised maximum is taken, one byte more is not.
    let max = caps.max_report_data as usize;
    let rd_a = pattern(max, 37, 11);
    let rd_b = pattern(max, 59, 201);
    let at_limit = client.evidence(rd_a.clone()).await;
    const CANONICAL: &str = "evidence is compact JSON, keys sorted";
    match &at_limit {
        Ok(ev) => {
            out.push(pass(
                "report data at the limit",
                format!("{max} bytes: {} bytes of evidence", ev.bytes.len()),
            ));
            out.push(canonical(ev));
            out.extend(bound_to_report_data(&client, ev, &rd_a, &rd_b).await);
            out.push(health_while_busy(t, &rd_b).await);
        }
        // No device here: the rest of the evidence checks cannot run.
        Err(e) if e.code() == Code::Unavailable => {
            out.push(skip(
                "report data at the limit",
                format!("no device: {}", e.chain()),
            ));
            for name in [CANONICAL, CHANGES, VISIBLE, BUSY] {
                out.push(skip(name, "no evidence"));
            }
        }
        Err(e) => {
            out.push(fail(
                "report data at the limit",
                format!("{max} bytes: {}", e.chain()),
            ));
            for name in [CANONICAL, CHANGES, VISIBLE, BUSY] {
                out.push(skip(name, "no evidence"));
            }
        }
    }
    out.push(match client.evidence(vec![0x5a; max + 1]).await {
        Err(e) if e.code() == Code::InvalidArgument => pass(
            "report data past the limit",
            format!("INVALID_ARGUMENT: {}", e.message()),
        ),
        Err(e) => fail(
            "report data past the limit",
            format!(
                "{} bytes: {} ({}), expected INVALID_ARGUMENT",
                max + 1,
                e.chain(),
                e.code()
            ),
        ),
        Ok(_) => fail(
            "report data past the limit",
            format!("{} bytes were taken; max_report_data says {max}", max + 1),
        ),
    });

    // What is not advertised answers UNSUPPORTED without touching a device.
    let register = caps.default_register.unwrap_or(0);
    out.push(if caps.runtime_measurement {
        skip(
            "unadvertised extend is UNSUPPORTED",
            "runtime_measurement is advertised (not exercised: it would change a register)",
        )
    } else {
        unsupported(
            "unadvertised extend is UNSUPPORTED",
            client.extend_measurement(register, vec![0; 32]).await,
        )
    });
    out.push(if caps.register_read {
        match client.read_measurement(register).await {
            Ok(v) => pass(
                "advertised register read answers",
                format!("register {register}: {} bytes", v.len()),
            ),
            Err(e) if e.code() == Code::Unavailable => skip(
                "advertised register read answers",
                format!("no device: {}", e.chain()),
            ),
            Err(e) => fail("advertised register read answers", e.chain()),
        }
    } else {
        unsupported(
            "unadvertised register read is UNSUPPORTED",
            client.read_measurement(register).await,
        )
    });
    out.push(match caps.init_data {
        InitDataBinding::None => unsupported(
            "unadvertised init-data binding is UNSUPPORTED",
            client.bind_init_data(vec![0xee; 32]).await,
        ),
        // Compare: a digest that is not the launch one is a mismatch, not an error.
        InitDataBinding::Compare => match client.bind_init_data(vec![0xee; 32]).await {
            Ok(()) => pass("init-data compare", "the digest matched"),
            Err(e) if e.code() == Code::FailedPrecondition => pass(
                "init-data compare",
                format!("a foreign digest is FAILED_PRECONDITION: {}", e.message()),
            ),
            Err(e) if e.code() == Code::Unavailable => {
                skip("init-data compare", format!("no device: {}", e.chain()))
            }
            Err(e) => fail(
                "init-data compare",
                format!(
                    "{} ({}), expected success or FAILED_PRECONDITION",
                    e.chain(),
                    e.code()
                ),
            ),
        },
        InitDataBinding::Extend => skip(
            "init-data extend",
            "advertised (not exercised: it would change a register)",
        ),
    });
    drop(client);
    out.push(sigterm(t).await);
    out
}

const CHANGES: &str = "other report data, other evidence";
const VISIBLE: &str = "report data visible in the evidence";
const BUSY: &str = "health answers while evidence is busy";

/// `n` bytes that no device pads or fills with by chance.
fn pattern(n: usize, mul: u8, add: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(mul).wrapping_add(add))
        .collect()
}

/// A kbs-types name, or a third party's (which a KBS cannot attest).
fn tee_name(tee: &str) -> Check {
    const NAME: &str = "tee name";
    if crate::config::KBS_TEES.contains(&tee) {
        pass(NAME, format!("{tee} (kbs-types' name)"))
    } else if crate::config::is_third_party_tee(tee) {
        pass(
            NAME,
            format!(
                "{tee}: a third party's name; GetEvidence and GetTeeType answer it, \
                 GetToken(\"kbs\") refuses it (no KBS protocol name)"
            ),
        )
    } else {
        fail(NAME, crate::config::tee_name_rule(tee))
    }
}

/// Evidence binds the report data: other report data give other evidence, and
/// the report data, or its SHA-256/384/512, is in it — raw, hex, base64 or a
/// byte array, at any depth of JSON and base64 — where a verifier finds it.
async fn bound_to_report_data(
    client: &RemoteAttester,
    ev_a: &Evidence,
    rd_a: &[u8],
    rd_b: &[u8],
) -> Vec<Check> {
    if rd_a.is_empty() {
        return vec![
            skip(CHANGES, "max_report_data is 0"),
            skip(VISIBLE, "max_report_data is 0"),
        ];
    }
    let ev_b = match client.evidence(rd_b.to_vec()).await {
        Ok(ev) => ev,
        Err(e) => {
            return vec![
                fail(CHANGES, format!("the second call failed: {}", e.chain())),
                skip(VISIBLE, "no second evidence"),
            ]
        }
    };
    let changes = if ev_a.bytes == ev_b.bytes {
        fail(
            CHANGES,
            "two calls with different report data gave the same evidence: it ignores the report data",
        )
    } else {
        pass(CHANGES, "the two evidences differ")
    };
    let visible = match (find_bound(&ev_a.bytes, rd_a), find_bound(&ev_b.bytes, rd_b)) {
        (Some(a), Some(_)) => pass(VISIBLE, a),
        _ => fail(
            VISIBLE,
            "neither the report data nor its SHA-256/384/512 is in the evidence (raw, hex, \
             base64 or a byte array, at any depth): a verifier could not check the binding",
        ),
    };
    vec![changes, visible]
}

/// Where `rd` (or a digest of it) is in `evidence`, said for the report.
fn find_bound(evidence: &[u8], rd: &[u8]) -> Option<String> {
    use sha2::Digest as _;
    let mut needles: Vec<(&str, Vec<u8>)> = vec![
        ("the report data", rd.to_vec()),
        ("its SHA-256", sha2::Sha256::digest(rd).to_vec()),
        ("its SHA-384", sha2::Sha384::digest(rd).to_vec()),
        ("its SHA-512", sha2::Sha512::digest(rd).to_vec()),
    ];
    // Upstream's TPM attester cuts report data to the quote's 32 bytes of
    // qualifying data: bound, but only so far, and the report says so.
    if rd.len() > MIN_BOUND_PREFIX {
        needles.push((
            "only its first 32 bytes (the rest is not bound)",
            rd[..MIN_BOUND_PREFIX].to_vec(),
        ));
    }
    // JSON first, so the report names the field; the whole bytes last.
    let mut hay = Vec::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(evidence) {
        haystacks(&v, "", 0, &mut hay);
    }
    hay.push(("the evidence's bytes".to_string(), evidence.to_vec()));
    for (what, needle) in &needles {
        let hex_lower = hex::encode(needle);
        let hex_upper = hex_lower.to_uppercase();
        for (at, h) in &hay {
            for (form, n) in [
                ("", needle.as_slice()),
                (" as hex", hex_lower.as_bytes()),
                (" as HEX", hex_upper.as_bytes()),
            ] {
                if h.windows(n.len()).any(|w| w == n) {
                    return Some(format!("{what}{form}, in {at}"));
                }
            }
        }
    }
    None
}

/// Every string of `v` (as text, and decoded from base64 or hex) and every
/// byte array, named by its JSON pointer; decoded JSON is searched in turn.
fn haystacks(v: &serde_json::Value, at: &str, depth: usize, out: &mut Vec<(String, Vec<u8>)>) {
    use base64::Engine as _;
    if depth > MAX_SEARCH_DEPTH || out.len() > MAX_SEARCH_ITEMS {
        return;
    }
    let here = |s: &str| {
        if at.is_empty() {
            "/".to_string()
        } else {
            s.to_string()
        }
    };
    match v {
        serde_json::Value::String(s) => {
            out.push((here(at), s.as_bytes().to_vec()));
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            let decoded = engines
                .iter()
                .find_map(|e| e.decode(s).ok())
                .map(|d| (format!("{} (base64)", here(at)), d))
                .or_else(|| {
                    hex::decode(s)
                        .ok()
                        .map(|d| (format!("{} (hex)", here(at)), d))
                });
            if let Some((name, d)) = decoded {
                if let Ok(inner) = serde_json::from_slice::<serde_json::Value>(&d) {
                    haystacks(&inner, &name, depth + 1, out);
                }
                out.push((name, d));
            }
        }
        serde_json::Value::Array(a) => {
            let bytes: Option<Vec<u8>> = a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            match bytes {
                Some(b) if !b.is_empty() => out.push((format!("{} (byte array)", here(at)), b)),
                _ => {
                    for (i, x) in a.iter().enumerate() {
                        haystacks(x, &format!("{at}/{i}"), depth + 1, out);
                    }
                }
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                haystacks(x, &format!("{at}/{k}"), depth + 1, out);
            }
        }
        _ => {}
    }
}

/// Health is answered while evidence is in flight (on a second connection, as
/// the core's health checks are): a plugin that blocks its runtime in device
/// code fails here, and would be restarted mid-quote by the core.
async fn health_while_busy(t: &Target<'_>, rd: &[u8]) -> Check {
    let busy = match RemoteAttester::connect(t.socket, t.transport).await {
        Ok(c) => c.with_deadline(CALL_TIMEOUT),
        Err(e) => return fail(BUSY, format!("a second connection: {}", e.chain())),
    };
    let health = match RemoteAttester::connect(t.socket, t.transport).await {
        Ok(c) => c,
        Err(e) => return fail(BUSY, format!("a third connection: {}", e.chain())),
    };
    let rd = rd.to_vec();
    let call = tokio::spawn(async move { busy.evidence(rd).await });
    // Let the evidence call reach the plugin first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let was_busy = !call.is_finished();
    let started = std::time::Instant::now();
    let answered = health.check_within(HEALTH_WHILE_BUSY).await;
    let took = started.elapsed();
    let _ = call.await;
    match answered {
        Ok(()) if was_busy => pass(
            BUSY,
            format!("SERVING in {} ms with evidence in flight", took.as_millis()),
        ),
        Ok(()) => pass(
            BUSY,
            format!(
                "SERVING in {} ms (the evidence was done within 50 ms)",
                took.as_millis()
            ),
        ),
        Err(e) => fail(
            BUSY,
            format!(
                "no answer within {} ms while evidence was in flight: {} (blocking device \
                 calls belong on a device thread, attester_sdk::worker::Worker)",
                HEALTH_WHILE_BUSY.as_millis(),
                e.chain()
            ),
        ),
    }
}

fn unsupported<T>(name: &'static str, r: attester_sdk::Result<T>) -> Check {
    match r {
        Err(e) if e.code() == Code::Unsupported => pass(name, e.message().to_string()),
        Err(e) => fail(
            name,
            format!("{} ({}), expected UNSUPPORTED", e.chain(), e.code()),
        ),
        Ok(_) => fail(name, "it succeeded, yet the capabilities do not offer it"),
    }
}

/// Upstream's evidence is compact JSON with sorted keys: what verifiers hash.
fn canonical(ev: &Evidence) -> Check {
    const NAME: &str = "evidence is compact JSON, keys sorted";
    let v: serde_json::Value = match serde_json::from_slice(&ev.bytes) {
        Ok(v) => v,
        Err(e) => return fail(NAME, format!("not JSON: {e}")),
    };
    // serde_json's map is ordered by key: re-encoding gives the canonical form.
    match serde_json::to_vec(&v) {
        Ok(again) if again == ev.bytes => pass(NAME, format!("format {}", ev.format)),
        Ok(_) => fail(
            NAME,
            "the bytes differ from the compact, key-sorted encoding",
        ),
        Err(e) => fail(NAME, e.to_string()),
    }
}

/// A plugin the kit started: SIGTERM makes it exit 0 and remove its socket.
async fn sigterm(t: &Target<'_>) -> Check {
    const NAME: &str = "SIGTERM: exits 0, socket removed";
    let Some(pid) = t.pid else {
        return skip(
            NAME,
            "not started by the kit (give the plugin's command instead of --socket)",
        );
    };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        return fail(NAME, format!("cannot signal it: {e}"));
    }
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                Ok(s) => return Some(s),
                Err(_) => return None,
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .ok()
    .flatten();
    match waited {
        Some(nix::sys::wait::WaitStatus::Exited(_, 0)) if !t.socket.exists() => {
            pass(NAME, "exited 0")
        }
        Some(nix::sys::wait::WaitStatus::Exited(_, 0)) => {
            fail(NAME, format!("exited 0 but left {}", t.socket.display()))
        }
        Some(s) => fail(NAME, format!("{s:?}")),
        None => fail(
            NAME,
            format!("still running {} s after SIGTERM", STOP_TIMEOUT.as_secs()),
        ),
    }
}

/// Print `checks` as lines (`PASS name: detail`) and a summary; `false` when any failed.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut out = String::new();
    let (mut p, mut f, mut s) = (0, 0, 0);
    for c in checks {
        let (word, detail) = match &c.outcome {
            Outcome::Pass(d) => {
                p += 1;
                ("PASS", d)
            }
            Outcome::Fail(d) => {
                f += 1;
                ("FAIL", d)
            }
            Outcome::Skip(d) => {
                s += 1;
                ("SKIP", d)
            }
        };
        out.push_str(&format!(
            "{word} {}: {}\n",
            c.name,
            crate::echo::bounded(detail, 512)
        ));
    }
    out.push_str(&format!("{p} passed, {f} failed, {s} skipped\n"));
    (out, f == 0)
}

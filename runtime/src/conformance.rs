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
    out.push(match crate::config::check_tee("tee", &info.tee) {
        Ok(()) => pass("tee is a known name", info.tee.clone()),
        Err(e) => fail("tee is a known name", e.to_string()),
    });
    out.push(match client.check().await {
        Ok(()) => pass("health", "SERVING"),
        Err(e) => fail("health", e.chain()),
    });
    out.push(match client.detect().await {
        Ok(found) => pass("detect answers", format!("present: {found}")),
        Err(e) => fail("detect answers", e.chain()),
    });

    // Report data: exactly the advertised maximum is taken, one byte more is not.
    let max = caps.max_report_data as usize;
    let at_limit = client.evidence(vec![0x5a; max]).await;
    match &at_limit {
        Ok(ev) => {
            out.push(pass(
                "report data at the limit",
                format!("{max} bytes: {} bytes of evidence", ev.bytes.len()),
            ));
            out.push(canonical(ev));
        }
        // No device here: the rest of the evidence checks cannot run.
        Err(e) if e.code() == Code::Unavailable => {
            out.push(skip(
                "report data at the limit",
                format!("no device: {}", e.chain()),
            ));
            out.push(skip("evidence is compact JSON, keys sorted", "no evidence"));
        }
        Err(e) => {
            out.push(fail(
                "report data at the limit",
                format!("{max} bytes: {}", e.chain()),
            ));
            out.push(skip("evidence is compact JSON, keys sorted", "no evidence"));
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

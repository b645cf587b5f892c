//! `attestd reload`'s line to the running daemon: a Unix socket in the plugin
//! socket directory (0700, attestd's alone), one request per connection,
//! answered with what the reload did to each plugin. SIGHUP asks for the same
//! reload but hears nothing back; `systemctl reload` runs `attestd reload`,
//! whose exit status then says whether every plugin took its new configuration.
//!
//! The protocol is one line each way: `reload\n` in, a JSON [`Report`] out.
//! Local clients are hostile like any other: the request is bounded in size and
//! time, and a few connections are handled at once, the rest wait in the backlog.
//!
//! Who may ask: no launched plugin sees the socket directory (each is given
//! only its own directory in it, [`crate::launch::PluginSpec::plugin_dir`]),
//! but a `process` plugin runs as attestd's user on attestd's file system. So
//! the peer's credentials (`SO_PEERCRED`) are checked too: its uid must be
//! attestd's, and it must not be a process attestd started, nor one of theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use attester_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The control socket's name in the socket directory: a dot name, which no
/// plugin's socket can take (plugin names are letters, digits, `-` and `_`).
pub const SOCKET: &str = ".control.sock";
/// A request's bytes at most (`reload\n` is 7).
pub const MAX_REQUEST_BYTES: usize = 64;
/// A client has this long to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections handled at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 4;
/// An answer's bytes at most, as `attestd reload` reads it.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// A peer's parents followed at most, looking for attestd among them (a chain
/// this deep is refused: a real `attestd reload` sits a few levels under init).
pub const MAX_ANCESTRY: usize = 256;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Why nothing changed: the configuration did not read, or attestd stopped.
    pub error: Option<String>,
    pub plugins: Vec<PluginReport>,
    /// Keys the files now set otherwise than attestd started with, which
    /// only a restart applies (a reload replaces plugins), by dotted path.
    #[serde(default)]
    pub pending: Vec<String>,
}

/// What a reload did to one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    pub plugin: String,
    pub outcome: Outcome,
    /// Why it was kept.
    pub why: Option<String>,
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
}

/// A plugin's outcome, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Unchanged,
    Replaced,
    /// The new configuration was not taken: the running instance stays.
    Kept,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Replaced => "replaced",
            Outcome::Kept => "kept",
        })
    }
}

impl PluginReport {
    /// The report of what the service's reload did to `plugin`.
    pub fn new(plugin: String, outcome: crate::service::ReloadOutcome) -> PluginReport {
        use crate::service::ReloadOutcome as R;
        let (outcome, why, old_pid, new_pid) = match outcome {
            R::Unchanged => (Outcome::Unchanged, None, None, None),
            R::Replaced(r) => (Outcome::Replaced, None, r.old_pid, r.new_pid),
            R::Kept(why) => (Outcome::Kept, Some(why), None, None),
        };
        PluginReport {
            plugin,
            outcome,
            why,
            old_pid,
            new_pid,
        }
    }
}

impl Report {
    /// A report that only says why nothing changed.
    pub fn failed(why: impl Into<String>) -> Report {
        Report {
            error: Some(why.into()),
            plugins: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Whether every plugin runs its new configuration (or had none).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.plugins.iter().all(|p| p.outcome != Outcome::Kept)
    }
}

/// A reload asked for: by SIGHUP (nobody to answer) or over the control socket.
pub struct Request {
    pub reply: Option<oneshot::Sender<Report>>,
}

/// The control socket of the attestd holding `socket_dir`.
pub fn socket(socket_dir: &Path) -> PathBuf {
    socket_dir.join(SOCKET)
}

/// Listen on `socket_dir`'s control socket (a stale one is replaced: the caller
/// holds the directory's lock), mode 0600.
pub fn listen(socket_dir: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket(socket_dir);
    let io = |what: &str, e: std::io::Error| {
        Error::internal(format!("cannot {what} control socket {}", path.display())).with_source(e)
    };
    match crate::socket_files::remove_socket(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("replace", e)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("restrict", e))?;
    Ok(listener)
}

/// Serve `listener` until the task is dropped: each connection's `reload` is
/// answered with the report of a reload that read the configuration after the
/// request arrived.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Request>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait, do not spin.
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(conn, requests).await {
                tracing::debug!("control socket: {e}");
            }
        });
    }
}

/// Why the peer may not ask, if it may not: another user, a pid attestd cannot
/// see (another pid namespace), or a process attestd started (a plugin, or a
/// process a plugin started), found by following the peer's parents up.
pub fn refusal(uid: u32, pid: Option<i32>) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    if uid != me {
        return Some(format!(
            "uid {uid} is not attestd's (uid {me}): the control socket answers attestd's own user"
        ));
    }
    let pid = match pid {
        Some(p) if p > 0 => p,
        _ => {
            return Some(
                "its pid is not visible from attestd's pid namespace (a container's process?)"
                    .into(),
            )
        }
    };
    let own = std::process::id() as i32;
    if pid == own {
        // attestd asking itself (its own tests do): no plugin is attestd.
        return None;
    }
    let mut at = pid;
    for _ in 0..MAX_ANCESTRY {
        if at == own {
            return Some(format!(
                "pid {pid} was started by attestd (a plugin, or a process of one)"
            ));
        }
        if at <= 1 {
            return None;
        }
        at = match parent_of(at) {
            Some(p) => p,
            None => return Some(format!("pid {pid}'s parents cannot be read")),
        };
    }
    Some(format!(
        "pid {pid} has more than {MAX_ANCESTRY} parents before init"
    ))
}

/// `pid`'s parent, from `/proc/<pid>/status` (the `PPid:` line; 0 above init).
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

async fn answer(mut conn: UnixStream, requests: mpsc::Sender<Request>) -> std::io::Result<()> {
    let cred = conn.peer_cred()?;
    let refused = refusal(cred.uid(), cred.pid());
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut r = tokio::io::BufReader::new((&mut conn).take(MAX_REQUEST_BYTES as u64));
        r.read_until(b'\n', &mut line).await
    })
    .await;
    // The request is read first even from a refused peer: closing on unread
    // bytes would reset its connection, and it would not hear why.
    let report = if let Some(why) = refused {
        tracing::warn!("control socket: a request refused: {why}");
        Report::failed(format!("refused: {why}"))
    } else {
        match read {
            Err(_) => Report::failed(format!("no request within {REQUEST_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.last() != Some(&b'\n') => Report::failed(format!(
                "a request is one line of at most {MAX_REQUEST_BYTES} bytes"
            )),
            Ok(Ok(_)) if line == b"reload\n" => {
                let (tx, rx) = oneshot::channel();
                if requests.send(Request { reply: Some(tx) }).await.is_err() {
                    Report::failed("attestd is stopping")
                } else {
                    rx.await.unwrap_or_else(|_| {
                        Report::failed("attestd stopped before the reload ended")
                    })
                }
            }
            Ok(Ok(_)) => Report::failed(format!(
                "unknown request {}: expected \"reload\"",
                crate::echo::quoted(String::from_utf8_lossy(&line).trim_end())
            )),
        }
    };
    let mut out = serde_json::to_vec(&report).unwrap_or_default();
    out.push(b'\n');
    conn.write_all(&out).await?;
    conn.shutdown().await?;
    // What the client sent past the request is read and dropped (a little,
    // briefly): a socket closed on unread bytes resets the connection, and
    // the client would lose the answer it is owed.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut buf = [0u8; 512];
        let mut left = MAX_DRAIN_BYTES;
        while left > 0 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Bytes past a refused request read and dropped at most, and for how long.
const MAX_DRAIN_BYTES: usize = 4096;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Ask the attestd holding `socket_dir` to reload and wait, at most `timeout`,
/// for its report.
pub async fn reload(socket_dir: &Path, timeout: Duration) -> Result<Report> {
    let path = socket(socket_dir);
    let asked = async {
        let mut conn = UnixStream::connect(&path).await.map_err(|e| {
            Error::failed_precondition(format!(
                "no attestd answers on {} (is it running with this configuration?)",
                path.display()
            ))
            .with_source(e)
        })?;
        let io = |e: std::io::Error| {
            Error::unavailable(format!("the reload request on {} failed", path.display()))
                .with_source(e)
        };
        conn.write_all(b"reload\n").await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut conn)
            .take(MAX_ANSWER_BYTES as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        serde_json::from_slice::<Report>(&answer).map_err(|e| {
            Error::internal(format!(
                "attestd's answer on {} does not read",
                path.display()
            ))
            .with_source(e)
        })
    };
    tokio::time::timeout(timeout, asked).await.map_err(|_| {
        Error::new(
            attester_sdk::Code::DeadlineExceeded,
            format!(
                "attestd did not report the reload within {timeout:?}: its log says what it did"
            ),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon stand-in: answers every request with `report`.
    fn daemon(dir: &Path, report: Report) -> tokio::task::JoinHandle<()> {
        let listener = listen(dir).unwrap();
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        tokio::spawn(async move {
            tokio::spawn(serve(listener, tx));
            while let Some(r) = rx.recv().await {
                if let Some(reply) = r.reply {
                    let _ = reply.send(report.clone());
                }
            }
        })
    }

    #[tokio::test]
    async fn a_reload_is_answered_with_its_report() {
        let d = tempfile::tempdir().unwrap();
        let kept = Report {
            pending: Vec::new(),
            error: None,
            plugins: vec![PluginReport {
                plugin: "tdx".into(),
                outcome: Outcome::Kept,
                why: Some("cannot start plugin tdx".into()),
                old_pid: None,
                new_pid: None,
            }],
        };
        let _d = daemon(d.path(), kept.clone());
        let got = reload(d.path(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, kept);
        assert!(!got.succeeded());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(socket(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_attestds_user_outside_its_own_processes_may_ask() {
        let me = nix::unistd::geteuid().as_raw();
        // Another user.
        let why = refusal(me + 1, Some(std::process::id() as i32)).unwrap();
        assert!(
            why.starts_with(&format!("uid {} is not attestd's", me + 1)),
            "{why}"
        );
        // A pid from another pid namespace (SO_PEERCRED says 0).
        for pid in [None, Some(0)] {
            let why = refusal(me, pid).unwrap();
            assert!(why.starts_with("its pid is not visible"), "{why}");
        }
        // A process this one started, and one that process started: plugins.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        for pid in [child.id() as i32, grandchild] {
            let why = refusal(me, Some(pid)).unwrap();
            assert_eq!(
                why,
                format!("pid {pid} was started by attestd (a plugin, or a process of one)")
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.kill();
        let _ = child.wait();
        // attestd's parent (systemd running `attestd reload`, a shell) may.
        assert_eq!(refusal(me, Some(nix::unistd::getppid().as_raw())), None);
        assert_eq!(refusal(me, Some(1)), None);
        // One that is gone cannot be placed.
        assert_eq!(
            refusal(me, Some(i32::MAX)).as_deref(),
            Some("pid 2147483647's parents cannot be read")
        );
    }

    #[tokio::test]
    async fn no_daemon_is_a_failed_precondition_naming_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let e = reload(d.path(), Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e.code(), attester_sdk::Code::FailedPrecondition);
        assert!(
            e.message().starts_with("no attestd answers on "),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn bad_requests_are_answered_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let _d = daemon(d.path(), Report::default());
        // The answer, or None when the connection was reset (closed with the
        // client's bytes unread).
        let try_ask = |bytes: Vec<u8>| {
            let path = socket(d.path());
            async move {
                let mut c = UnixStream::connect(path).await.unwrap();
                let _ = c.write_all(&bytes).await;
                let mut out = String::new();
                match c.read_to_string(&mut out).await {
                    Ok(_) => Some(serde_json::from_str::<Report>(&out).unwrap()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let ask = |bytes: Vec<u8>| {
            let t = try_ask(bytes);
            async move { t.await.expect("an answer") }
        };
        let r = ask(b"restart\n".to_vec()).await;
        assert_eq!(
            r.error.as_deref(),
            Some("unknown request \"restart\": expected \"reload\"")
        );
        // At the bound: a line of exactly MAX_REQUEST_BYTES is read (and not a
        // known request); past it, refused without reading on.
        let mut at = vec![b'x'; MAX_REQUEST_BYTES - 1];
        at.push(b'\n');
        let r = ask(at).await;
        assert!(r.error.unwrap().starts_with("unknown request \"xxx"));
        // Past it: refused after 64 bytes, the rest read and dropped, so the
        // client hears why (issue 41: it could see a reset, and the test
        // asserted nothing then).
        let r = ask(vec![b'x'; 10 * MAX_REQUEST_BYTES]).await;
        assert_eq!(
            r.error.as_deref(),
            Some("a request is one line of at most 64 bytes")
        );
        // The drain at its bound: the request's 64 bytes and MAX_DRAIN_BYTES
        // more are all read, so the answer arrives whole, every time.
        for _ in 0..20 {
            let r = ask(vec![b'x'; MAX_REQUEST_BYTES + MAX_DRAIN_BYTES]).await;
            assert_eq!(
                r.error.as_deref(),
                Some("a request is one line of at most 64 bytes")
            );
        }
        // Past it the rest stays unread (the client may see a reset), and
        // attestd goes on serving.
        let _ = try_ask(vec![b'x'; MAX_REQUEST_BYTES + MAX_DRAIN_BYTES + 65536]).await;
        let r = ask(b"x\n".to_vec()).await;
        assert!(
            r.error.unwrap().starts_with("unknown request"),
            "still serving"
        );
        // A client that says nothing is answered after the request deadline.
        let started = std::time::Instant::now();
        let r = ask(Vec::new()).await;
        assert!(r.error.unwrap().starts_with("no request within"));
        assert!(started.elapsed() >= REQUEST_TIMEOUT);
    }
}

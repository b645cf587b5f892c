//! Plugin supervision: launch, handshake, health checks, restart with backoff, and
//! the readiness gate every call goes through (`UNAVAILABLE` while a plugin is down).

use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::launch::{DirWatch, Running};
use attester_sdk::{
    DeviceRole, Error, Handshake, RemoteAttester, Result, Transport, PROTOCOL_VERSIONS,
};
use tokio::sync::watch;

use crate::config::{check_tee, LaunchKind};

/// First pause after a repeated crash; doubles up to `restart_backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Consecutive failed health checks before a plugin is restarted.
const HEALTH_FAILURES: u32 = 2;
/// Time a plugin gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub use crate::launch::{resolve_command, PluginSpec};

/// A running, handshaken plugin.
pub struct Live {
    pub client: RemoteAttester,
    pub handshake: Handshake,
    pub pid: Option<u32>,
    pub started: Instant,
    /// Unique per launch (restarts included), so each instance is measured once.
    pub instance: u64,
    pub provenance: crate::launch::Provenance,
    /// Told by a call that found the connection broken. An external plugin has
    /// no process here whose exit says it died: without this its supervisor
    /// learns only from the health checks, seconds after the sidecar's owner
    /// (the kubelet) has already restarted it.
    broken: tokio::sync::Notify,
}

impl Live {
    /// A call's error: a broken connection means this instance is gone.
    fn saw(&self, e: &Error) {
        if e.is_disconnect() {
            self.broken.notify_one();
        }
    }
}

static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Clone)]
enum State {
    Up(Arc<Live>),
    /// Why it is down (restarting or waiting out a backoff).
    Down(Arc<str>),
    Stopped,
}

/// A request to replace the running instance with one started from `spec`.
struct Replace {
    spec: PluginSpec,
    done: tokio::sync::oneshot::Sender<Result<Replaced>>,
}

/// What a replacement did.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
}

/// One supervised plugin. Calls go through [`Supervisor::live`].
pub struct Supervisor {
    spec: PluginSpec,
    /// The configuration the running instance was started from (changes on
    /// [`Supervisor::replace`]).
    current: std::sync::Mutex<crate::config::PluginConfig>,
    /// The handshake of the first start: later restarts must report the same TEE.
    identity: Handshake,
    state: watch::Receiver<State>,
    stop: watch::Sender<bool>,
    replace: tokio::sync::mpsc::Sender<Replace>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Supervisor {
    /// Launch the plugin and complete the handshake; only then start supervising.
    /// A plugin that cannot start here is an error: attestd refuses to run without it.
    /// The socket directory must have been claimed ([`claim_socket_dir`]).
    pub async fn start(spec: PluginSpec) -> Result<Arc<Supervisor>> {
        // Opt-ins that widen what a plugin's container reaches: said once, at start.
        if spec.config.host_network {
            tracing::warn!(plugin = %spec.name, "its container shares the host's network (host_network = true)");
        }
        if !spec.config.devices.is_empty() {
            let devices: Vec<String> = spec
                .config
                .devices
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            tracing::warn!(plugin = %spec.name, devices = %devices.join(","), "its container gets extra devices (devices = [...])");
        }
        if let Some(rt) = &spec.podman_runtime {
            if spec.config.launch == LaunchKind::Podman {
                tracing::info!(plugin = %spec.name, runtime = %rt, "podman runs it with this OCI runtime");
            }
        }
        let (child, live) = launch(&spec, None, None).await?;
        let identity = live.handshake.clone();
        tracing::info!(
            plugin = %spec.name,
            launch = %spec.config.launch.as_str(),
            tee = %identity.info.tee,
            transport = %identity.transport,
            protocol = identity.protocol_version,
            pid = live.pid,
            "plugin ready"
        );
        let (state_tx, state_rx) = watch::channel(State::Up(Arc::new(live)));
        let (stop_tx, stop_rx) = watch::channel(false);
        // One replacement at a time: a second waits its turn.
        let (replace_tx, replace_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(supervise(
            spec.clone(),
            identity.clone(),
            child,
            state_tx,
            stop_rx,
            replace_rx,
        ));
        Ok(Arc::new(Supervisor {
            current: std::sync::Mutex::new(spec.config.clone()),
            spec,
            identity,
            state: state_rx,
            stop: stop_tx,
            replace: replace_tx,
            task: tokio::sync::Mutex::new(Some(task)),
        }))
    }

    /// The configuration the running instance was started from.
    pub fn current_config(&self) -> crate::config::PluginConfig {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the running instance with one started from `spec` (same name):
    /// the new one is started and handshaken beside the old (it must report the
    /// same TEE), new calls go to it, and the old one is stopped once its calls
    /// in flight have finished. A new instance that fails to start leaves the old
    /// one serving, and the error says why.
    pub async fn replace(&self, spec: PluginSpec) -> Result<Replaced> {
        let config = spec.config.clone();
        let (done, answer) = tokio::sync::oneshot::channel();
        self.replace
            .send(Replace { spec, done })
            .await
            .map_err(|_| self.down_error())?;
        let replaced = answer.await.map_err(|_| self.down_error())??;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(replaced)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Primary or additional, as configured.
    pub fn role(&self) -> DeviceRole {
        self.spec.role
    }

    /// The handshake of the first start (TEE, capabilities).
    pub fn identity(&self) -> &Handshake {
        &self.identity
    }

    /// The running instance's number, without waiting (`None` while it is down).
    pub fn instance(&self) -> Option<u64> {
        match &*self.state.borrow() {
            State::Up(l) => Some(l.instance),
            _ => None,
        }
    }

    /// The running plugin; waits up to `restart_wait` for one that is restarting,
    /// then `Unavailable` with the reason it is down (callers name the plugin).
    pub async fn live(&self) -> Result<Arc<Live>> {
        if let State::Up(l) = &*self.state.borrow() {
            return Ok(l.clone());
        }
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(
            self.spec.restart_wait,
            rx.wait_for(|s| !matches!(s, State::Down(_))),
        )
        .await;
        if let Ok(Ok(s)) = &waited {
            if let State::Up(l) = &**s {
                return Ok(l.clone());
            }
        }
        Err(self.down_error())
    }

    /// `Unavailable`, with the reason the plugin is down.
    fn down_error(&self) -> Error {
        let reason = match &*self.state.borrow() {
            State::Down(r) => r.to_string(),
            State::Stopped => "attestd is shutting down".into(),
            State::Up(_) => "it was restarting".into(),
        };
        Error::unavailable(format!("not running: {reason}"))
    }

    /// Run an idempotent call (evidence, reads) on the live plugin. When the
    /// connection broke mid-call (the plugin died), wait for the restarted plugin
    /// and try once more: the caller sees one success instead of a spurious error.
    pub async fn call_idempotent<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // The call's span (server::handle) names the plugin that answers it.
        tracing::Span::current().record("plugin", self.spec.name.as_str());
        let live = self.live().await?;
        match f(live.clone()).await {
            Err(e) if e.is_disconnect() => {
                // Restart (reconnect) now rather than at the next health check.
                live.saw(&e);
                match self.live_after(&live).await {
                    Some(next) => f(next).await,
                    // Still down: say why, rather than "connection failed".
                    None if !matches!(&*self.state.borrow(), State::Up(_)) => {
                        Err(self.down_error())
                    }
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// A live plugin other than `old`, once the supervisor has replaced it.
    async fn live_after(&self, old: &Arc<Live>) -> Option<Arc<Live>> {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(
            self.spec.restart_wait,
            rx.wait_for(|s| match s {
                State::Up(l) => !Arc::ptr_eq(l, old),
                State::Down(_) => false,
                State::Stopped => true,
            }),
        )
        .await;
        match waited {
            Ok(Ok(s)) => match &*s {
                State::Up(l) => Some(l.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Resolves when the supervising task has ended without being asked to stop
    /// (a panic: the plugin is then no longer restarted or health-checked).
    pub async fn ended(&self) -> Error {
        let mut rx = self.state.clone();
        // The task owns the sender: changes fail only once it is gone.
        while rx.changed().await.is_ok() {}
        if *self.stop.borrow() {
            return std::future::pending().await;
        }
        Error::internal(format!("the supervisor of plugin {} ended", self.spec.name))
    }

    /// Stop supervising, terminate the plugin and remove its socket.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// The event log reaches the measuring plugin's registers through its API.
impl crate::eventlog::Registers for Supervisor {
    async fn read(&self, register: u64) -> Result<Vec<u8>> {
        self.call_idempotent(|live| async move { live.client.read_measurement(register).await })
            .await
            .map_err(|e| e.context(format!("plugin {}", self.name())))
    }

    async fn extend(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        // Not retried on a lost connection: the event log settles that case by
        // reading the register back.
        let live = self.live().await?;
        live.client
            .extend_measurement(register, digest)
            .await
            .inspect_err(|e| live.saw(e))
            .map_err(|e| e.context(format!("plugin {}", self.name())))
    }
}

async fn supervise(
    mut spec: PluginSpec,
    identity: Handshake,
    mut child: Running,
    state: watch::Sender<State>,
    mut stop: watch::Receiver<bool>,
    mut replace: tokio::sync::mpsc::Receiver<Replace>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let live = match &*state.borrow() {
            State::Up(l) => l.clone(),
            _ => return,
        };
        let reason = tokio::select! {
            // A stop request wins over an exit seen at the same time.
            biased;
            _ = stopped(&mut stop) => {
                child.terminate(&spec.name, STOP_GRACE).await;
                let _ = state.send(State::Stopped);
                remove_owned_socket(&spec);
                return;
            }
            r = child.exited() => r,
            _ = live.broken.notified() => "a call found its connection broken".to_string(),
            e = health_loop(&live, spec.health_interval, spec.health_timeout) => {
                format!("health check failed: {}", e.chain())
            }
            Some(req) = replace.recv() => {
                let next = successor(&spec, req.spec);
                // A stop while the new instance starts ends its start at once
                // (the loop's first arm then stops the old one).
                match launch(&next, Some(&identity), Some(&mut stop)).await {
                    Ok((c, l)) => {
                        let replaced = Replaced { old_pid: live.pid, new_pid: l.pid };
                        let old_child = std::mem::replace(&mut child, c);
                        let old_spec = std::mem::replace(&mut spec, next);
                        let _ = state.send(State::Up(Arc::new(l)));
                        tracing::info!(
                            plugin = %spec.name,
                            old_pid = replaced.old_pid,
                            new_pid = replaced.new_pid,
                            "plugin replaced: new calls go to the new instance"
                        );
                        tokio::spawn(retire(old_spec, old_child, live));
                        let _ = req.done.send(Ok(replaced));
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %spec.name, "replacement failed, the running instance keeps serving: {}", e.chain());
                        let _ = req.done.send(Err(e));
                    }
                }
                continue;
            }
        };
        // A plugin that exits the moment attestd is told to stop (a SIGTERM to the
        // whole process group) is not "down": the stop request, woken by the same
        // signal delivery, is seen once this task yields.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        if *stop.borrow() {
            child.terminate(&spec.name, STOP_GRACE).await;
            let _ = state.send(State::Stopped);
            remove_owned_socket(&spec);
            return;
        }
        if crate::fault::hit("supervisor-panics") {
            panic!(
                "fault injection: the supervisor of plugin {} panics",
                spec.name
            );
        }
        tracing::warn!(plugin = %spec.name, "plugin down: {reason}; restarting");
        // Read before the state says Down (it used to be read after, always zero,
        // so the backoff never reset and a stable plugin's crash cost seconds).
        if live.started.elapsed() >= spec.restart_stable {
            backoff = Duration::ZERO;
        }
        let _ = state.send(State::Down(reason.into()));
        drop(live);
        // After a health failure the process may still run: make sure it is gone.
        child.kill().await;
        // Restart until it serves. A stop ends this at any point; a replacement
        // (a reload) asked for meanwhile is started at once, in place of the next
        // attempt: a crash loop must not hold a reload, nor a reload a stop.
        loop {
            let mut asked = None;
            if !backoff.is_zero() {
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => {}
                    Some(req) = replace.recv() => asked = Some(req),
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            if *stop.borrow() {
                let _ = state.send(State::Stopped);
                // The crashed plugin could not remove its socket.
                remove_owned_socket(&spec);
                return;
            }
            let asked = asked.or_else(|| replace.try_recv().ok());
            let max = spec.restart_backoff_max;
            backoff = (backoff * 2).clamp(FIRST_BACKOFF.min(max), max);
            let attempt = match &asked {
                Some(req) => successor(&spec, req.spec.clone()),
                None => spec.clone(),
            };
            match launch(&attempt, Some(&identity), Some(&mut stop)).await {
                Ok((c, l)) => {
                    child = c;
                    match asked {
                        Some(req) => {
                            let replaced = Replaced {
                                old_pid: None,
                                new_pid: l.pid,
                            };
                            tracing::info!(plugin = %spec.name, pid = l.pid, "plugin replaced while it was down");
                            remove_owned_socket(&spec);
                            spec = attempt;
                            backoff = Duration::ZERO;
                            let _ = state.send(State::Up(Arc::new(l)));
                            let _ = req.done.send(Ok(replaced));
                        }
                        None => {
                            tracing::info!(plugin = %spec.name, pid = l.pid, "plugin restarted");
                            let _ = state.send(State::Up(Arc::new(l)));
                        }
                    }
                    break;
                }
                Err(_) if *stop.borrow() => continue,
                Err(e) => {
                    tracing::warn!(plugin = %spec.name, "restart failed: {}", e.chain());
                    let _ = state.send(State::Down(e.chain().into()));
                    if let Some(req) = asked {
                        // The running configuration stays: the next attempt is
                        // the old one's, as before the reload.
                        let _ = req.done.send(Err(e.context(
                            "the plugin was down, and the replacement did not start either",
                        )));
                    }
                }
            }
        }
    }
}

/// The spec a replacement starts from: `next`, one generation on (its own socket).
fn successor(current: &PluginSpec, mut next: PluginSpec) -> PluginSpec {
    next.generation = current.generation.wrapping_add(1);
    next
}

/// Stop a replaced instance once no call holds it any more (or after the call
/// deadline, when a call is stuck), and remove its socket.
async fn retire(spec: PluginSpec, mut child: Running, live: Arc<Live>) {
    let deadline = Instant::now() + spec.call_timeout;
    // Only this task holds it once its calls are done.
    while Arc::strong_count(&live) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(live);
    child.terminate(&spec.name, STOP_GRACE).await;
    remove_owned_socket(&spec);
    tracing::info!(plugin = %spec.name, "replaced instance stopped");
}

/// Resolves once a stop was requested (the guard is dropped here: it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Returns the last error once `HEALTH_FAILURES` checks in a row failed.
async fn health_loop(live: &Live, interval: Duration, timeout: Duration) -> Error {
    let mut failures = 0;
    loop {
        tokio::time::sleep(interval).await;
        match live.client.check_within(timeout).await {
            Ok(()) => failures = 0,
            // A refused or broken connection is not a slow plugin: the
            // instance is gone (an external one's owner restarts it).
            Err(e) if e.is_disconnect() => return e,
            Err(e) => {
                failures += 1;
                if failures >= HEALTH_FAILURES {
                    return e;
                }
            }
        }
    }
}

/// The plugin's socket and its directory, unless someone else owns them (`external`).
fn remove_owned_socket(spec: &PluginSpec) {
    if spec.config.launch != LaunchKind::External {
        let _ = crate::socket_files::remove_socket(&spec.socket());
        // Only when empty: a plugin that left other files behind is seen.
        let _ = std::fs::remove_dir(spec.plugin_dir());
    }
}

/// Start the plugin process and complete the handshake within `startup_timeout`,
/// or until `stop` (then the new instance is killed and the error says why).
async fn launch(
    spec: &PluginSpec,
    identity: Option<&Handshake>,
    stop: Option<&mut watch::Receiver<bool>>,
) -> Result<(Running, Live)> {
    let ctx = |e: Error| e.context(format!("cannot start plugin {}", spec.name));
    let socket = spec.socket();
    if spec.config.launch != LaunchKind::External {
        // The plugin's own directory, attestd's and 0700 like the one it is in.
        ensure_socket_dir(&spec.plugin_dir()).map_err(ctx)?;
        attester_sdk::remove_socket_file(&socket).map_err(ctx)?;
    }
    let mut child = crate::launch::launcher(spec.config.launch)
        .launch(spec, &socket)
        .await
        .map_err(ctx)?;
    tracing::trace!(target: "attestd::startup", plugin = %spec.name, pid = ?child.pid(), "start-up: plugin launched");
    let shaken = tokio::select! {
        biased;
        () = until_stopped(stop) => Err(Error::unavailable("attestd is stopping")),
        r = handshake(spec, identity, &mut child, &socket) => r,
    };
    match shaken {
        Ok(live) => Ok((child, live)),
        Err(e) => {
            // Nothing may outlive a failed start (a container keeps running
            // otherwise), nor its socket; what it printed on its way out is logged.
            child.kill().await;
            child.drain_output().await;
            remove_owned_socket(spec);
            Err(ctx(e))
        }
    }
}

/// Resolves once a stop was requested; never without a receiver.
async fn until_stopped(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(s) => stopped(s).await,
        None => std::future::pending().await,
    }
}

async fn handshake(
    spec: &PluginSpec,
    identity: Option<&Handshake>,
    child: &mut Running,
    socket: &Path,
) -> Result<Live> {
    let started = Instant::now();
    // Why the last connection attempt failed, for the timeout's message.
    let mut refused: Option<Error> = None;
    let ready = tokio::time::timeout(spec.startup_timeout, async {
        let client =
            connect_when_listening(child, socket, spec.config.transport, &mut refused).await?;
        tracing::trace!(target: "attestd::startup", plugin = %spec.name, "start-up: plugin connected");
        let client = client.with_deadline(spec.startup_timeout);
        let hs = client.handshake(PROTOCOL_VERSIONS).await?;
        Ok::<_, Error>((client, hs))
    })
    .await;
    let (client, handshake) = match ready {
        Ok(r) => r?,
        Err(_) => {
            let within = format!("no handshake within {:?}", spec.startup_timeout);
            return Err(match refused {
                Some(e) => e.context(format!("{within}: the last connection attempt failed")),
                None if !socket.exists() => {
                    Error::unavailable(format!("{within}: {} never appeared", socket.display()))
                }
                None => Error::unavailable(format!(
                    "{within}: connected, but it did not answer the handshake"
                )),
            });
        }
    };
    check_handshake(spec, identity, &handshake)?;
    Ok(Live {
        client: client.with_deadline(spec.call_timeout),
        handshake,
        pid: child.pid(),
        started,
        instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        provenance: child.provenance.clone(),
        broken: tokio::sync::Notify::new(),
    })
}

/// Until the plugin listens (woken by its socket's creation, not a polling
/// delay), failing fast if it exits first; `refused` keeps why the last attempt
/// failed.
async fn connect_when_listening(
    child: &mut Running,
    socket: &Path,
    transport: Transport,
    refused: &mut Option<Error>,
) -> Result<RemoteAttester> {
    let mut created = DirWatch::new(socket.parent().unwrap_or(Path::new("/")));
    // Bounds each wait: a child's exit, and a socket bound but not yet
    // listening, are not inotify events.
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_exited() {
            // Its last words are usually the reason (a TPM not started, a device
            // missing): say them here, not only in the log.
            let said = match child.last_words().await {
                Some(w) => format!(": it said \"{w}\""),
                None => String::new(),
            };
            return Err(Error::unavailable(format!(
                "it exited during startup ({status}){said}"
            )));
        }
        if socket.exists() {
            match RemoteAttester::connect(socket, transport).await {
                Ok(c) => return Ok(c),
                Err(e) => *refused = Some(e),
            }
            tokio::time::sleep(pause).await;
        } else {
            created.changed(pause).await;
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn check_handshake(spec: &PluginSpec, identity: Option<&Handshake>, hs: &Handshake) -> Result<()> {
    let tee = &hs.info.tee;
    check_tee("tee", tee)
        .map_err(|_| Error::failed_precondition(format!("it reports unknown TEE {tee:?}")))?;
    if let Some(want) = &spec.config.tee {
        if want != tee {
            return Err(Error::failed_precondition(format!(
                "it reports TEE {tee:?} but the config expects {want:?}"
            )));
        }
    }
    if let Some(first) = identity {
        if first.info.tee != *tee {
            return Err(Error::failed_precondition(format!(
                "it reports TEE {tee:?} after a restart, {:?} before",
                first.info.tee
            )));
        }
    }
    if hs.info.capabilities.role != spec.role {
        let want = match spec.role {
            DeviceRole::Primary => "primary",
            DeviceRole::Additional => "additional",
        };
        return Err(Error::failed_precondition(format!(
            "it is configured as {want} but reports the other role"
        )));
    }
    Ok(())
}

/// An exclusive claim on a socket directory, held while attestd runs: a second
/// attestd with the same config would otherwise replace the first one's sockets.
/// Dropped, it removes its lock file and the directory once that is empty, so a
/// one-shot command or a stopped attestd leaves nothing behind.
#[derive(Debug)]
pub struct SocketDirLock {
    file: std::fs::File,
    dir: std::path::PathBuf,
}

impl Drop for SocketDirLock {
    fn drop(&mut self) {
        // Unlinked while still locked: a newcomer that opened this file finds
        // it unlinked after taking the lock and starts over (claim_socket_dir).
        let _ = std::fs::remove_file(self.dir.join(".lock"));
        let _ = self.file.unlock();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Create (0700) and lock `dir`; `FailedPrecondition` when another attestd holds it.
pub fn claim_socket_dir(dir: &Path) -> Result<SocketDirLock> {
    use std::os::unix::fs::MetadataExt as _;
    let path = dir.join(".lock");
    // A holder that stops unlinks the file it locked: one taken on the file
    // just unlinked is no claim, so take the one now at the path.
    for _ in 0..16 {
        // A holder stopping removes the directory once its lock file is gone:
        // one that vanishes under us is made again, not an error.
        match ensure_socket_dir(dir) {
            Err(e) if vanished(&e) => continue,
            r => r?,
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(
                    Error::internal(format!("cannot open {}", path.display())).with_source(e)
                )
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(Error::failed_precondition(format!(
                    "socket directory {} is in use by another attestd{holder}",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(
                    Error::internal(format!("cannot lock {}", path.display())).with_source(e)
                )
            }
        }
        let current = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let locked = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        if current.is_none() || current != locked {
            continue;
        }
        // Who holds it, for a person looking and for a second attestd's refusal
        // (`attestd reload` asks over the control socket beside it).
        use std::io::Write as _;
        let mut f = &file;
        let _ = file.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        return Ok(SocketDirLock {
            file,
            dir: dir.to_path_buf(),
        });
    }
    Err(Error::unavailable(format!(
        "cannot claim socket directory {}: its lock file kept being replaced",
        dir.display()
    )))
}

/// Whether `e` comes from a path that was not there (a directory removed by a
/// holder stopping at that moment).
fn vanished(e: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The socket directory is ours alone: created 0700, refused if someone else owns it.
pub fn ensure_socket_dir(dir: &Path) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::internal(format!("cannot {what} socket directory {}", dir.display())).with_source(e)
    };
    // Parents made 0750 whatever the umask; the directory itself 0700 below.
    crate::socket_files::create_private_dir(dir)?;
    let meta = std::fs::metadata(dir).map_err(|e| fail("inspect", e))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::failed_precondition(format!(
            "socket directory {} belongs to uid {}, not to attestd (uid {me})",
            dir.display(),
            meta.uid()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("restrict", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 41 (low): a holder stopping unlinks its lock file and removes the
    /// directory; a newcomer claiming at that moment got "cannot open"
    /// (ENOENT) as an internal error. It tries again, and is told only
    /// "in use" or given the claim.
    #[test]
    fn a_claim_racing_a_holders_stop_is_never_an_internal_error() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("plugins");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(claim_socket_dir(&dir));
                }
            })
        };
        for _ in 0..3000 {
            match claim_socket_dir(&dir) {
                Ok(lock) => drop(lock),
                Err(e) => assert!(
                    e.code() == attester_sdk::Code::FailedPrecondition
                        || e.code() == attester_sdk::Code::Unavailable,
                    "{}",
                    e.chain()
                ),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }

    #[test]
    fn missing_command_path_is_named() {
        let e = resolve_command(Path::new("/nonexistent/attester-x")).unwrap_err();
        assert_eq!(
            e.message(),
            "plugin command /nonexistent/attester-x does not exist"
        );
    }

    #[test]
    fn missing_bare_command_is_named() {
        let e = resolve_command(Path::new("attester-does-not-exist")).unwrap_err();
        assert_eq!(
            e.message(),
            "plugin command \"attester-does-not-exist\" not found next to attestd nor in PATH"
        );
    }

    #[test]
    fn bare_command_found_in_path() {
        assert!(resolve_command(Path::new("sh")).unwrap().is_file());
    }

    #[test]
    fn socket_dir_is_claimed_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("plugins");
        let first = claim_socket_dir(&dir).unwrap();
        let e = claim_socket_dir(&dir).unwrap_err();
        assert_eq!(
            e.message(),
            format!(
                "socket directory {} is in use by another attestd (pid {})",
                dir.display(),
                std::process::id()
            )
        );
        // Released, the claim leaves nothing: no lock file, no empty directory.
        drop(first);
        assert!(!dir.exists());
        let again = claim_socket_dir(&dir).unwrap();
        // A directory still holding something (a socket another owner left) stays.
        std::fs::write(dir.join("x.sock"), b"").unwrap();
        drop(again);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "only x.sock is left"
        );
    }

    #[test]
    fn socket_dir_is_created_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_socket_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

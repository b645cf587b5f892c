//! Launch backends: one [`Launcher`] trait, four implementations — `process` (spawn
//! the binary), `podman` (a container), `oci` (an OCI bundle run by runc, the way
//! kata-agent runs its pause container) and `external` (someone else started it;
//! only connect). Each yields a [`Running`] the supervisor waits on, stops and
//! cleans up the same way, and the [`Provenance`] the event log records.

mod appear;
pub mod image;
pub mod oci;
pub mod podman;
pub mod pull;
pub mod resources;
mod spec;

pub use appear::DirWatch;
pub use spec::PluginSpec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use attester_sdk::{Error, Result};
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::config::image_ref::ImageRef;
use crate::config::LaunchKind;

/// Where a running plugin came from, for `attestd plugins` and the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Provenance {
    pub launch: &'static str,
    /// `process`: the binary that was executed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<PathBuf>,
    /// `process`: its SHA-256, hashed just before it was started (when recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `podman`, `oci`: the configured reference and the digest that was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `podman`, `oci`: how this start got the image when it pulled it (the
    /// registry and the signature policy that accepted it); absent when the image
    /// was already local.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled: Option<String>,
    /// `external`: the socket connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The plugin's configured arguments (`process`, `podman`, `oci`): they can
    /// change what it attests (an IMDS address, a device), so a verifier sees them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// What to undo once a plugin is gone.
#[derive(Debug)]
enum Cleanup {
    None,
    /// `podman rm -f` (the container may outlive a killed `podman run`).
    Podman(String),
    /// `runc delete -f` and the bundle directory.
    Runc {
        id: String,
        bundle: PathBuf,
    },
}

/// A started plugin: a child process (plugin, `podman run`, `runc run`) or, for
/// `external`, nothing to own.
pub struct Running {
    child: Option<Child>,
    cleanup: Cleanup,
    pub provenance: Provenance,
    /// The tasks logging the child's stdout and stderr.
    output: Vec<tokio::task::JoinHandle<()>>,
    /// The last line the child wrote to stderr: why it failed, usually.
    last_words: LastWords,
}

type LastWords = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// How much of a plugin's last line goes into an error message.
const MAX_LAST_WORDS: usize = 512;

/// The longest plugin output line logged whole; longer ones are cut (noted).
pub const MAX_PLUGIN_LINE: usize = 4096;

/// Log `child`'s stdout and stderr line by line as fields of target `plugin`, with
/// the plugin's name: a plugin cannot print lines that pass for attestd's own.
fn capture_output(
    child: &mut Child,
    plugin: &str,
    last_words: &LastWords,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    fn forward(
        r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        plugin: String,
        last_words: Option<LastWords>,
        stream: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // Bounded: a line without end is cut, not buffered for ever.
                let mut limited = (&mut r).take(MAX_PLUGIN_LINE as u64 + 1);
                match limited.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                tracing::info!(
                    target: "plugin",
                    plugin = %plugin,
                    stream = %stream,
                    line = %crate::echo::bounded(line, MAX_PLUGIN_LINE),
                );
                if let Some(w) = &last_words {
                    if !line.trim().is_empty() {
                        if let Ok(mut w) = w.lock() {
                            *w = Some(crate::echo::bounded(line.trim(), MAX_LAST_WORDS));
                        }
                    }
                }
            }
        })
    }
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(forward(out, plugin.to_string(), None, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(forward(
            err,
            plugin.to_string(),
            Some(last_words.clone()),
            "stderr",
        ));
    }
    tasks
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process already exited (for `external`, never).
    pub fn try_exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// Resolves when the process exits, with how; never for `external`.
    pub async fn exited(&mut self) -> String {
        match self.child.as_mut() {
            Some(c) => match c.wait().await {
                Ok(s) => format!("it exited ({s})"),
                Err(e) => format!("waiting for it failed: {e}"),
            },
            None => std::future::pending().await,
        }
    }

    /// SIGTERM, `grace` to exit, then SIGKILL; then clean up.
    pub async fn terminate(&mut self, name: &str, grace: Duration) {
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    tracing::warn!(plugin = %name, "plugin ignored SIGTERM; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        self.cleanup().await;
    }

    /// SIGKILL (after a failed health check the process may still run); then clean up.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.cleanup().await;
    }

    /// Wait (briefly) for the last of the child's output to be logged: a plugin
    /// that failed at start usually said why on its way out.
    pub async fn drain_output(&mut self) {
        for t in self.output.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
        }
    }

    /// The last line the child wrote to stderr (bounded, escaped), once its
    /// output is drained.
    pub async fn last_words(&mut self) -> Option<String> {
        self.drain_output().await;
        self.last_words.lock().ok().and_then(|w| w.clone())
    }

    async fn cleanup(&mut self) {
        match std::mem::replace(&mut self.cleanup, Cleanup::None) {
            Cleanup::None => {}
            Cleanup::Podman(name) => podman::remove(&name).await,
            Cleanup::Runc { id, bundle } => oci::remove(&id, &bundle).await,
        }
    }
}

/// How a plugin is started.
#[async_trait::async_trait]
pub trait Launcher: Send + Sync {
    /// Start the plugin serving on `socket`. Returns once started, not once listening.
    async fn launch(&self, spec: &PluginSpec, socket: &Path) -> Result<Running>;
}

/// The launcher for a plugin's `launch` kind.
pub fn launcher(kind: LaunchKind) -> &'static dyn Launcher {
    match kind {
        LaunchKind::Process => &ProcessLauncher,
        LaunchKind::Podman => &podman::PodmanLauncher,
        LaunchKind::Oci => &oci::OciLauncher,
        LaunchKind::External => &ExternalLauncher,
    }
}

/// The plugin's own arguments: the configured ones, then where to serve.
pub fn plugin_args(spec: &PluginSpec, socket: &Path) -> Vec<String> {
    let mut args = spec.config.args.clone();
    args.extend([
        "--socket".to_string(),
        socket.display().to_string(),
        "--transport".to_string(),
        spec.config.transport.to_string(),
    ]);
    args
}

/// The plugin's image reference, parsed; a tag (dev mode only: the config refuses it
/// otherwise) is warned about at every start.
fn configured_image(spec: &PluginSpec) -> Result<(&str, ImageRef)> {
    let image = spec
        .config
        .image
        .as_deref()
        .ok_or_else(|| Error::failed_precondition("no image configured"))?;
    let r = ImageRef::parse(image)?;
    if r.digest.is_none() {
        tracing::warn!(plugin = %spec.name, %image, "dev_mode: starting an image by its mutable tag");
    }
    Ok((image, r))
}

/// Spawn a helper (`podman run`, `runc run`) that owns the plugin. It gets
/// SIGTERM when attestd dies, which it forwards to the container.
fn spawn_owner(mut cmd: Command, what: &str) -> Result<Child> {
    crate::sys::die_with_parent(&mut cmd, Signal::SIGTERM);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::failed_precondition(format!("cannot execute {what}")).with_source(e))
}

impl Running {
    /// A started child (plugin, `podman run`, `runc run`) whose output is logged
    /// as plugin `name`'s.
    fn child(mut child: Child, name: &str, cleanup: Cleanup, provenance: Provenance) -> Running {
        let last_words = LastWords::default();
        let output = capture_output(&mut child, name, &last_words);
        Running {
            child: Some(child),
            cleanup,
            provenance,
            output,
            last_words,
        }
    }
}

pub struct ProcessLauncher;

#[async_trait::async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, spec: &PluginSpec, socket: &Path) -> Result<Running> {
        let Some(cmd) = &spec.config.command else {
            return Err(Error::failed_precondition("no command configured"));
        };
        let program = resolve_command(cmd)?;
        let sha256 = if spec.record_provenance {
            Some(sha256_file(&program)?)
        } else {
            None
        };
        let mut cmd = Command::new(&program);
        crate::sys::die_with_parent(&mut cmd, Signal::SIGKILL);
        let child = cmd
            .args(plugin_args(spec, socket))
            .envs(&spec.config.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // The plugin dies with its handle: no orphan outlives a failed start.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::failed_precondition(format!("cannot execute {}", program.display()))
                    .with_source(e)
            })?;
        Ok(Running::child(
            child,
            &spec.name,
            Cleanup::None,
            Provenance {
                launch: "process",
                command: Some(program),
                sha256,
                args: spec.config.args.clone(),
                ..Default::default()
            },
        ))
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let read_err =
        |e| Error::failed_precondition(format!("cannot read {}", path.display())).with_source(e);
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(read_err)?;
    Ok(hex::encode(h.finalize()))
}

/// `external`: nothing to start; the supervisor connects to the configured socket.
pub struct ExternalLauncher;

#[async_trait::async_trait]
impl Launcher for ExternalLauncher {
    async fn launch(&self, spec: &PluginSpec, _socket: &Path) -> Result<Running> {
        Ok(Running {
            child: None,
            cleanup: Cleanup::None,
            provenance: Provenance {
                launch: "external",
                socket: spec.config.socket.clone(),
                ..Default::default()
            },
            output: Vec::new(),
            last_words: LastWords::default(),
        })
    }
}

/// A bare name is looked up next to the attestd binary (where packages install
/// plugins beside it), then in PATH; a path is used as given.
pub fn resolve_command(cmd: &Path) -> Result<PathBuf> {
    if cmd.components().count() > 1 {
        return if cmd.is_file() {
            Ok(cmd.to_path_buf())
        } else {
            Err(Error::failed_precondition(format!(
                "plugin command {} does not exist",
                cmd.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(cmd)));
    let path: std::ffi::OsString = std::env::var_os("PATH").unwrap_or_default();
    beside
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join(cmd)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::failed_precondition(format!(
                "plugin command {:?} not found next to attestd nor in PATH",
                cmd
            ))
        })
}

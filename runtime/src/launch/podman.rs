//! `launch = "podman"`: the plugin image in a podman container, run by runc with no
//! network, a read-only root, no capabilities, only its TEE's devices and its own
//! socket directory bound in. `podman run` stays attached as the child the
//! supervisor waits on, so a killed container is seen like a crashed process.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use attester_sdk::Result;
use tokio::process::Command;

use super::image::run_tool;
use super::PluginSpec;
use super::{plugin_args, spawn_owner, Cleanup, Launcher, Provenance, Running};

/// This machine lacks CAP_SYS_RESOURCE for raising limits: ask for what any caller
/// may set.
const ULIMITS: [&str; 2] = ["nofile=1024:1024", "nproc=1024:1024"];
/// Containers started for a socket directory carry it as a label, so a later
/// attestd can remove what a killed one left behind.
pub const OWNER_LABEL: &str = "org.attestd.socket-dir";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The `podman run` arguments, after `podman`.
pub fn run_args(
    spec: &PluginSpec,
    socket: &Path,
    name: &str,
    image: &str,
    resources: &super::resources::Resources,
) -> Vec<String> {
    let dir = spec.socket_dir.display().to_string();
    let mut a: Vec<String> = Vec::new();
    if let Some(rt) = &spec.podman_runtime {
        a.extend(["--runtime".to_string(), rt.clone()]);
    }
    a.extend(
        [
            "run",
            "--rm",
            "--pull",
            "never",
            "--name",
            name,
            "--read-only",
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
            "--network",
            if resources.host_network {
                "host"
            } else {
                "none"
            },
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    for u in ULIMITS {
        a.extend(["--ulimit".into(), u.into()]);
    }
    a.extend(["--label".into(), format!("{OWNER_LABEL}={dir}")]);
    // Its own directory only: attestd's control socket is in the one above.
    let own = spec.plugin_dir().display().to_string();
    a.extend(["--volume".into(), format!("{own}:{own}:rw")]);
    for d in &resources.devices {
        a.extend(["--device".into(), d.display().to_string()]);
    }
    for m in &resources.rw {
        a.extend(["--volume".into(), format!("{0}:{0}:rw", m.display())]);
    }
    for m in &resources.ro {
        a.extend(["--volume".into(), format!("{0}:{0}:ro", m.display())]);
    }
    for (k, v) in &spec.config.env {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    a.push(image.to_string());
    a.extend(plugin_args(spec, socket));
    a
}

pub struct PodmanLauncher;

#[async_trait::async_trait]
impl Launcher for PodmanLauncher {
    async fn launch(&self, spec: &PluginSpec, socket: &Path) -> Result<Running> {
        let (image, r) = super::configured_image(spec)?;
        // Checked before every start: the store may have changed since the last one.
        // One inspect: the digest, and the TEE label when the config names no TEE.
        let want_label = spec.config.tee.is_none().then_some("org.attestd.tee");
        let (digest, label, pulled) =
            super::pull::ensure_in_store(&r, want_label, &spec.pull).await?;
        let pinned = r.pinned(&digest);
        let tee = spec.config.tee.clone().or(label).unwrap_or_default();
        let resources = spec.resources(&tee, Path::new("/"))?;
        let name = format!(
            "attestd-{}-{}-{}",
            spec.name,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("podman");
        cmd.args(run_args(spec, socket, &name, &pinned, &resources));
        let child = spawn_owner(cmd, "podman")?;
        Ok(Running::child(
            child,
            &spec.name,
            Cleanup::Podman(name),
            Provenance {
                launch: "podman",
                image: Some(image.to_string()),
                digest: Some(digest),
                pulled,
                args: spec.config.args.clone(),
                ..Default::default()
            },
        ))
    }
}

/// Remove a container (a killed `podman run` leaves it running).
pub async fn remove(name: &str) {
    if let Err(e) = run_tool(
        Command::new("podman").args(["rm", "--force", "--ignore", "--time", "0", name]),
        "podman rm",
        Duration::from_secs(30),
    )
    .await
    {
        tracing::debug!(%name, "podman rm: {}", e.chain());
    }
}

/// Remove containers a previous attestd with this socket directory left running.
/// A `podman ps` that fails is an error, not an empty list: such a container could
/// still hold a plugin's place.
pub async fn remove_stale(socket_dir: &Path) -> Result<()> {
    let names = run_tool(
        Command::new("podman").args([
            "ps",
            "--all",
            "--filter",
            &format!("label={OWNER_LABEL}={}", socket_dir.display()),
            "--format",
            "{{.Names}}",
        ]),
        "podman ps",
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| e.context("cannot list the plugin containers an earlier attestd left"))?;
    for n in names.lines().filter(|n| !n.is_empty()) {
        tracing::warn!(container = %n, "removing a plugin container left by an earlier attestd");
        remove(n).await;
    }
    Ok(())
}

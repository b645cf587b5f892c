//! What a launcher needs to start one plugin: its table from the config, its role,
//! and the supervision knobs copied from `[plugins]`. It lives with the launchers
//! (its users); the supervisor re-exports it.

use std::path::PathBuf;
use std::time::Duration;

use attester_sdk::{DeviceRole, Error, Result};

use crate::config::{PluginConfig, PluginsConfig};

/// Everything needed to (re)launch one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub config: PluginConfig,
    pub role: DeviceRole,
    pub socket_dir: PathBuf,
    pub call_timeout: Duration,
    pub startup_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub restart_backoff_max: Duration,
    pub restart_wait: Duration,
    /// A plugin up this long is healthy again: its next crash restarts at once.
    pub restart_stable: Duration,
    /// Hash the plugin binary at each launch (for the event log's identity entry;
    /// off otherwise, since hashing a debug build takes a noticeable part of a second).
    pub record_provenance: bool,
    /// `launch = "oci"`: layout, unpacked images, bundles.
    pub oci_dir: PathBuf,
    /// `launch = "podman"`: `--runtime` (unset: podman's choice).
    pub podman_runtime: Option<String>,
    /// Where a pinned image absent from the store may come from.
    pub pull: super::pull::PullPolicy,
    /// 0 for the first instance; each replacement (`attestd reload`) counts up,
    /// so the new instance serves on its own socket while the old one finishes.
    pub generation: u32,
}

impl PluginSpec {
    pub fn new(name: &str, role: DeviceRole, plugins: &PluginsConfig) -> Result<Self> {
        let config = plugins.attester.get(name).cloned().ok_or_else(|| {
            Error::failed_precondition(format!("no [plugins.attester.{name}] table"))
        })?;
        Ok(Self::with_config(name, config, role, plugins))
    }

    /// A plugin described outside the config file (selected from images.lock).
    pub fn with_config(
        name: &str,
        config: PluginConfig,
        role: DeviceRole,
        plugins: &PluginsConfig,
    ) -> Self {
        PluginSpec {
            name: name.to_string(),
            config,
            role,
            socket_dir: plugins.socket_dir.clone(),
            call_timeout: plugins.call_timeout(),
            startup_timeout: plugins.startup_timeout(),
            health_interval: plugins.health_interval(),
            health_timeout: plugins.health_timeout(),
            restart_backoff_max: plugins.restart_backoff_max(),
            restart_wait: plugins.restart_wait(),
            restart_stable: plugins.restart_stable(),
            record_provenance: false,
            oci_dir: plugins.oci_dir.clone(),
            podman_runtime: plugins.podman_runtime.clone(),
            pull: super::pull::PullPolicy::from_config(plugins),
            generation: 0,
        }
    }

    /// What the plugin's container gets from the host: what `tee` needs, found
    /// under `root`, plus the config's explicit opt-ins; `FailedPrecondition`
    /// when none of the TEE's ways in exists. A configuration with opt-ins
    /// (`devices`, `host_network`) says itself how the plugin reaches its TEE
    /// (a TPM plugin on a swtpm over TCP, say): then nothing is required.
    pub fn resources(
        &self,
        tee: &str,
        root: &std::path::Path,
    ) -> Result<super::resources::Resources> {
        let found = if self.config.devices.is_empty() && !self.config.host_network {
            super::resources::for_tee(tee, root).map_err(Error::failed_precondition)?
        } else {
            super::resources::present(tee, root)
        };
        Ok(self.with_opt_ins(found))
    }

    /// `r` plus the config's explicit opt-ins (`host_network`, `devices`): for the
    /// launchers, and for unit files written for the target.
    pub fn with_opt_ins(&self, mut r: super::resources::Resources) -> super::resources::Resources {
        r.host_network |= self.config.host_network;
        for d in &self.config.devices {
            if !r.devices.contains(d) {
                r.devices.push(d.clone());
            }
        }
        r
    }

    /// Where the plugin serves: in a directory of its own under the core's (see
    /// [`PluginSpec::plugin_dir`]), or for `external` plugins where their owner
    /// put it.
    pub fn socket(&self) -> PathBuf {
        match (&self.config.launch, &self.config.socket) {
            (crate::config::LaunchKind::External, Some(s)) => s.clone(),
            _ => self.plugin_dir().join(format!("{}.sock", self.name)),
        }
    }

    /// The one directory of attestd's a launched plugin is given: its socket's.
    /// The socket directory itself, with attestd's lock and control socket in
    /// it, is never bound into a container, nor is another plugin's (or another
    /// instance's: a replacement serves from `<name>.<generation>`). Plugin
    /// names are letters, digits, `-` and `_`, so no name takes another's
    /// directory or a dot name of attestd's.
    pub fn plugin_dir(&self) -> PathBuf {
        match (&self.config.launch, &self.config.socket) {
            (crate::config::LaunchKind::External, Some(s)) => {
                s.parent().map(PathBuf::from).unwrap_or_default()
            }
            _ if self.generation == 0 => self.socket_dir.join(&self.name),
            _ => self
                .socket_dir
                .join(format!("{}.{}", self.name, self.generation)),
        }
    }
}

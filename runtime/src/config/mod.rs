//! The configuration file: upstream AA's TOML (`[token_configs.*]`, `[eventlog_config]`,
//! `[log]`) plus `[plugins]`, which names the attester plugins and how to launch them.
//!
//! Unknown keys are errors, and every error names the key (and the line, for syntax).
//! [`layers`] merges the image's system file and drop-ins with the `-c` file.

pub mod image_ref;
pub mod layers;
pub mod probe;
pub mod registries;
pub mod scope;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use attester_sdk::Transport;
use serde::{Deserialize, Serialize};

/// TEE names as kbs-types spells them: the names a KBS knows (RCAR's `tee`).
pub const KBS_TEES: &[&str] = &[
    "tdx",
    "snp",
    "sgx",
    "cca",
    "csv",
    "se",
    "tpm",
    "sample",
    "az-snp-vtpm",
    "az-tdx-vtpm",
    "sampledevice",
    "nvidia",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
    /// As `Invalid`, placed in the layer (and on the line) that set the key.
    #[error(
        "invalid config: {}{}: {key}: {message}",
        path.display(),
        line.map(|l| format!(", line {l}")).unwrap_or_default()
    )]
    InFile {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub token_configs: TokenConfigs,
    #[serde(default)]
    pub eventlog_config: EventlogConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub keyprovider: KeyProviderConfig,
    /// What the `-c` file may set (the configuration directory's word only).
    #[serde(default)]
    pub config_file: scope::ConfigFileConfig,
}

/// `[keyprovider]`: attestd as ocicrypt's key provider (off unless an address is set).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProviderConfig {
    /// gRPC listener: host:port or unix:///path (what skopeo and containerd use).
    pub grpc: Option<String>,
    /// ttrpc listener: unix:///path (what image-rs uses).
    pub ttrpc: Option<String>,
    /// WrapKey (image builders only): the 32-byte KEK file to wrap layer keys with.
    pub wrap_kek: Option<PathBuf>,
    /// The provider name in ocicrypt's parameters (`provider:<name>:<kid>`).
    #[serde(default = "default_provider_name")]
    pub name: String,
}

fn default_provider_name() -> String {
    "attestd".into()
}

// By hand: a missing `[keyprovider]` table must get the same name as an empty one.
impl Default for KeyProviderConfig {
    fn default() -> Self {
        KeyProviderConfig {
            grpc: None,
            ttrpc: None,
            wrap_kek: None,
            name: default_provider_name(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfigs {
    pub kbs: Option<KbsConfig>,
    pub coco_as: Option<CocoAsConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KbsConfig {
    pub url: String,
    pub tee_key_algorithm: Option<String>,
    pub cert: Option<String>,
    /// Opt-in: GetToken("kbs") hands out the cached token and key pair while the
    /// token has more than this many seconds left (off: a handshake per call, as
    /// upstream). See docs/key-release.md for the trade-off.
    pub reuse_token_secs: Option<u64>,
    /// Development only: plain http to a KBS off this machine (warned at start).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CocoAsConfig {
    pub url: String,
    /// Development only: plain http to a service off this machine (warned at start).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventlogConfig {
    /// The PCR entries extend when a request names none (mapped through the
    /// plugin's register map, e.g. to RTMR 3 on TDX).
    #[serde(default = "default_init_pcr")]
    pub init_pcr: u64,
    #[serde(default)]
    pub enable_eventlog: bool,
    /// Upstream's key; the hash is the measuring plugin's, so when set it must agree.
    pub eventlog_algorithm: Option<String>,
    /// attestd's addition: where the log lives (upstream's path by default).
    #[serde(default = "default_eventlog_path")]
    pub path: PathBuf,
}

impl Default for EventlogConfig {
    fn default() -> Self {
        EventlogConfig {
            init_pcr: default_init_pcr(),
            enable_eventlog: false,
            eventlog_algorithm: None,
            path: default_eventlog_path(),
        }
    }
}

fn default_eventlog_path() -> PathBuf {
    crate::eventlog::DEFAULT_PATH.into()
}

fn default_init_pcr() -> u64 {
    17
}

/// The highest PCR index: a TPM has 24 (upstream's TDX map takes the same).
pub const MAX_PCR: u64 = 23;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: String,
    /// attestd's addition: `text` (default) or `json`, one object per line, as
    /// kata-agent logs, for the pod VM's log collector.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// `[plugins]`: which plugin is primary, which are additional, supervision knobs,
/// and one `[plugins.attester.<name>]` table per plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Name of the primary attester (a key of `attester`).
    pub primary: Option<String>,
    /// Names of additional (device) attesters.
    #[serde(default)]
    pub additional: Vec<String>,
    /// Directory (mode 0700, owned by attestd) holding the plugins' sockets.
    #[serde(default = "default_socket_dir")]
    pub socket_dir: PathBuf,
    /// Deadline of each call to a plugin.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Time a plugin gets from launch to a completed handshake.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// Interval between health checks.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Deadline of one health check.
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// Longest pause between restarts of a crashing plugin.
    #[serde(default = "default_restart_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// How long a call waits for a restarting plugin before answering UNAVAILABLE.
    #[serde(default = "default_restart_wait_ms")]
    pub restart_wait_ms: u64,
    /// A plugin up this long is healthy again: its next crash restarts at once.
    #[serde(default = "default_restart_stable_ms")]
    pub restart_stable_ms: u64,
    /// The whole of shutdown (listeners, in-flight calls, plugins), at most.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Allow images referenced by a mutable tag (development only; warned at every start).
    #[serde(default)]
    pub dev_mode: bool,
    /// `launch = "oci"`: the OCI layout, unpacked root filesystems and bundles live here.
    #[serde(default = "default_oci_dir")]
    pub oci_dir: PathBuf,
    /// `primary = "auto"`: TEE → image, from containers/build.sh.
    #[serde(default = "default_images_lock")]
    pub images_lock: PathBuf,
    /// `launch = "podman"`: the OCI runtime podman runs plugins with (`runc`,
    /// `crun`, a path); unset, podman's own choice.
    pub podman_runtime: Option<String>,
    /// `primary = "auto"`: how the selected image is started (podman or oci).
    #[serde(default = "default_auto_launch")]
    pub auto_launch: LaunchKind,
    /// Where selection probes `/dev`, `/sys`, `/proc` (a chroot, or a test tree).
    #[serde(default = "default_sysroot")]
    pub sysroot: PathBuf,
    /// Registries a pinned image absent from the local store may be pulled from, by
    /// digest only: `host[:port]` or `host[:port]/path` prefixes of image names.
    /// Empty: nothing is pulled.
    #[serde(default)]
    pub registries: Vec<String>,
    /// Registries reached over plain HTTP or without verifying their certificate
    /// (dev mode only; each must also be in `registries`).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Laid out as /etc/containers/certs.d: `<host:port>/ca.crt` (and client
    /// certificates) per registry, passed to skopeo as `--src-cert-dir`. Unset: the
    /// system's certs.d and trust store.
    pub registry_certs_dir: Option<PathBuf>,
    /// containers-policy.json deciding which pulled images are accepted (signedBy,
    /// sigstoreSigned, reject); unset: the system's /etc/containers/policy.json.
    /// A policy accepting anything (`insecureAcceptAnything`) for a registry
    /// pulled from is refused outside dev mode.
    pub policy_json: Option<PathBuf>,
    /// registries.d: where each registry's signatures are (lookaside); unset:
    /// the system's /etc/containers/registries.d.
    pub registries_d: Option<PathBuf>,
    /// One pull attempt, at most.
    #[serde(default = "default_pull_timeout_ms")]
    pub pull_timeout_ms: u64,
    /// Attempts per pull (1 to MAX_PULL_ATTEMPTS), with doubling back-off from 1 s.
    #[serde(default = "default_pull_attempts")]
    pub pull_attempts: u32,
    /// How long the daemon probes again when no probe finds a TEE (and no
    /// sample is configured) before it concludes there is none, for good: a
    /// device node may appear with udev's coldplug after attestd starts
    /// (0 to MAX_NO_TEE_SETTLE_MS; 0 concludes at once).
    #[serde(default = "default_no_tee_settle_ms")]
    pub no_tee_settle_ms: u64,
    #[serde(default)]
    pub attester: BTreeMap<String, PluginConfig>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            primary: None,
            additional: Vec::new(),
            socket_dir: default_socket_dir(),
            call_timeout_ms: default_call_timeout_ms(),
            startup_timeout_ms: default_startup_timeout_ms(),
            health_interval_ms: default_health_interval_ms(),
            health_timeout_ms: default_health_timeout_ms(),
            restart_backoff_max_ms: default_restart_backoff_max_ms(),
            restart_wait_ms: default_restart_wait_ms(),
            restart_stable_ms: default_restart_stable_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            dev_mode: false,
            oci_dir: default_oci_dir(),
            images_lock: default_images_lock(),
            podman_runtime: None,
            auto_launch: default_auto_launch(),
            sysroot: default_sysroot(),
            registries: Vec::new(),
            insecure_registries: Vec::new(),
            registry_certs_dir: None,
            policy_json: None,
            registries_d: None,
            pull_timeout_ms: default_pull_timeout_ms(),
            pull_attempts: default_pull_attempts(),
            no_tee_settle_ms: default_no_tee_settle_ms(),
            attester: BTreeMap::new(),
        }
    }
}

fn default_oci_dir() -> PathBuf {
    PathBuf::from("/var/lib/attestd/oci")
}
fn default_images_lock() -> PathBuf {
    PathBuf::from("/usr/share/attestd/images.lock")
}
fn default_sysroot() -> PathBuf {
    PathBuf::from("/")
}
fn default_pull_timeout_ms() -> u64 {
    120_000
}
fn default_pull_attempts() -> u32 {
    3
}
fn default_no_tee_settle_ms() -> u64 {
    3_000
}
/// The longest `[plugins] no_tee_settle_ms`: a machine whose TEE device has not
/// appeared a minute into its boot has none to wait for.
pub const MAX_NO_TEE_SETTLE_MS: u64 = 60_000;
fn default_auto_launch() -> LaunchKind {
    LaunchKind::Podman
}

fn default_socket_dir() -> PathBuf {
    PathBuf::from("/run/attestd/plugins")
}
fn default_call_timeout_ms() -> u64 {
    50_000
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}
fn default_health_interval_ms() -> u64 {
    5_000
}
fn default_health_timeout_ms() -> u64 {
    2_000
}
fn default_restart_backoff_max_ms() -> u64 {
    10_000
}
fn default_restart_wait_ms() -> u64 {
    3_000
}
fn default_restart_stable_ms() -> u64 {
    10_000
}
fn default_shutdown_timeout_ms() -> u64 {
    3_000
}

impl PluginsConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }
    pub fn restart_backoff_max(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_max_ms)
    }
    pub fn restart_wait(&self) -> Duration {
        Duration::from_millis(self.restart_wait_ms)
    }
    pub fn restart_stable(&self) -> Duration {
        Duration::from_millis(self.restart_stable_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// How a plugin is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchKind {
    /// Spawn `command` as a child process.
    Process,
    /// Run `image` in a podman container (runc, no network, read-only, no capabilities).
    Podman,
    /// Unpack `image` into an OCI bundle and run it with runc, as kata-agent runs its
    /// pause container.
    Oci,
    /// Someone else started it (a sidecar, a systemd unit): connect to `socket`.
    External,
}

impl LaunchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchKind::Process => "process",
            LaunchKind::Podman => "podman",
            LaunchKind::Oci => "oci",
            LaunchKind::External => "external",
        }
    }
}

/// `[plugins.attester.<name>]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub launch: LaunchKind,
    /// The plugin binary. A bare name is looked up next to the attestd binary, then in PATH.
    pub command: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub transport: Transport,
    /// The TEE the plugin must report in its handshake (checked when set).
    pub tee: Option<String>,
    /// `podman` and `oci`: the image, `name@sha256:<digest>` (a tag only in dev mode).
    pub image: Option<String>,
    /// `external`: the socket the plugin serves on.
    pub socket: Option<PathBuf>,
    /// `podman` and `oci`: the host's network for this plugin, besides what its
    /// TEE needs (the Azure plugins reach IMDS). An explicit opt-in, logged at
    /// start (e.g. a containerised TPM plugin reaching a swtpm in development).
    #[serde(default)]
    pub host_network: bool,
    /// Device nodes for this plugin besides its TEE's (absolute paths under
    /// /dev): what `podman` and `oci` pass into its container and what a unit
    /// from `attestd units` allows a process plugin. An explicit opt-in, logged
    /// at start.
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    /// `primary = "auto"`: how to tell this machine is a guest of the plugin's
    /// TEE, for a TEE the core has no probe of its own for (see [`probe`]).
    #[serde(default)]
    pub probe: Vec<String>,
}

impl Config {
    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.eventlog_config.init_pcr > MAX_PCR {
            return Err(invalid(
                "eventlog_config.init_pcr",
                format!(
                    "PCR {} does not exist: PCRs are 0 to {MAX_PCR} (TDX maps them to RTMRs, as upstream)",
                    self.eventlog_config.init_pcr
                ),
            ));
        }
        let p = &self.plugins;
        for (name, pc) in &p.attester {
            let key = format!("plugins.attester.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    key,
                    "plugin names use only letters, digits, '-' and '_'",
                ));
            }
            let (field, present) = match pc.launch {
                LaunchKind::Process => ("command", pc.command.is_some()),
                LaunchKind::Podman | LaunchKind::Oci => ("image", pc.image.is_some()),
                LaunchKind::External => ("socket", pc.socket.is_some()),
            };
            if !present {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("required when launch = \"{}\"", pc.launch.as_str()),
                ));
            }
            if let Some(image) = &pc.image {
                let r = image_ref::ImageRef::parse(image)
                    .map_err(|e| invalid(format!("{key}.image"), e.message()))?;
                if r.digest.is_none() && !p.dev_mode {
                    return Err(invalid(
                        format!("{key}.image"),
                        format!(
                            "{image:?} is a mutable tag: pin it by digest (name@sha256:<digest>), \
                             or set [plugins] dev_mode = true for development"
                        ),
                    ));
                }
            }
            if let Some(tee) = &pc.tee {
                check_tee(&format!("{key}.tee"), tee)?;
            }
            for (i, d) in pc.devices.iter().enumerate() {
                check_device(d).map_err(|e| invalid(format!("{key}.devices[{i}]"), e))?;
            }
            if pc.host_network && !matches!(pc.launch, LaunchKind::Podman | LaunchKind::Oci) {
                return Err(invalid(
                    key.clone(),
                    "host_network is for launch = \"podman\" or \"oci\": \
                     other plugins are not in a container",
                ));
            }
            if !pc.devices.is_empty() && pc.launch == LaunchKind::External {
                return Err(invalid(
                    format!("{key}.devices"),
                    "an external plugin's devices are its owner's to give",
                ));
            }
            probe::parse(&pc.probe).map_err(|e| invalid(format!("{key}.probe"), e))?;
        }
        let defined = |key: &str, name: &str| {
            if p.attester.contains_key(name) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{name:?} has no [plugins.attester.{name}] table"),
                ))
            }
        };
        if let Some(primary) = p.primary.as_deref().filter(|p| *p != "auto") {
            defined("plugins.primary", primary)?;
        }
        for (i, name) in p.additional.iter().enumerate() {
            let key = format!("plugins.additional[{i}]");
            defined(&key, name)?;
            if Some(name) == p.primary.as_ref() || p.additional[..i].contains(name) {
                return Err(invalid(key, format!("{name:?} is listed twice")));
            }
        }
        registries::check_config(p).map_err(|(key, why)| invalid(key, why))?;
        for (key, v) in [
            ("plugins.pull_timeout_ms", p.pull_timeout_ms),
            ("plugins.call_timeout_ms", p.call_timeout_ms),
            ("plugins.startup_timeout_ms", p.startup_timeout_ms),
            ("plugins.health_interval_ms", p.health_interval_ms),
            ("plugins.health_timeout_ms", p.health_timeout_ms),
            ("plugins.shutdown_timeout_ms", p.shutdown_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if p.no_tee_settle_ms > MAX_NO_TEE_SETTLE_MS {
            return Err(invalid(
                "plugins.no_tee_settle_ms",
                format!(
                    "{} is over the {MAX_NO_TEE_SETTLE_MS} ms the settle may last",
                    p.no_tee_settle_ms
                ),
            ));
        }
        if let Some(rt) = &p.podman_runtime {
            let ok = !rt.is_empty()
                && !rt.starts_with('-')
                && rt
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !ok {
                return Err(invalid(
                    "plugins.podman_runtime",
                    format!("{rt:?} is not a runtime name or path"),
                ));
            }
        }
        if let Some(kbs) = &self.token_configs.kbs {
            if kbs.url.is_empty() {
                return Err(invalid("token_configs.kbs.url", "must not be empty"));
            }
        }
        Ok(())
    }
}

/// `d` must be a device node's path: absolute under /dev, no '.' or '..'.
pub fn check_device(d: &std::path::Path) -> Result<(), String> {
    let ok = d.is_absolute()
        && d.starts_with("/dev")
        && d.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a device node path under /dev",
            d.display().to_string()
        ))
    }
}

/// A TEE name kbs-types does not know starts with this: a third party's TEE,
/// which can never collide with a name kbs-types adopts later.
pub const THIRD_PARTY_PREFIX: &str = "x-";
/// The longest TEE name (it travels in GetTeeType, logs and the event log).
pub const MAX_TEE_NAME_LEN: usize = 32;

/// Whether `tee` is a third party's TEE name: [`THIRD_PARTY_PREFIX`], then
/// lowercase ASCII letters, digits and single '-' between them, at most
/// [`MAX_TEE_NAME_LEN`] bytes.
pub fn is_third_party_tee(tee: &str) -> bool {
    let Some(rest) = tee.strip_prefix(THIRD_PARTY_PREFIX) else {
        return false;
    };
    tee.len() <= MAX_TEE_NAME_LEN
        && !rest.is_empty()
        && rest.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `tee` must be a kbs-types TEE name or a third party's ([`is_third_party_tee`]).
pub fn check_tee(key: &str, tee: &str) -> Result<(), ConfigError> {
    if KBS_TEES.contains(&tee) || is_third_party_tee(tee) {
        Ok(())
    } else {
        Err(invalid(key, tee_name_rule(tee)))
    }
}

/// Why `tee` is no TEE name, and what one is.
pub fn tee_name_rule(tee: &str) -> String {
    format!(
        "unknown TEE {:?}: expected one of {} (kbs-types' names), or a third party's \
         name: \"{THIRD_PARTY_PREFIX}\" then lowercase letters, digits and single '-', \
         at most {MAX_TEE_NAME_LEN} bytes",
        crate::echo::bounded(tee, 64),
        KBS_TEES.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and its causes, as `attestd` prints them (`{e:#}`).
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    const SAMPLE: &str = r#"
[token_configs.kbs]
url = "http://127.0.0.1:8080"

[eventlog_config]
init_pcr = 17
enable_eventlog = false

[log]
level = "debug"

[plugins]
primary = "sample"
additional = ["dev"]
socket_dir = "/tmp/x"

[plugins.attester.sample]
launch = "process"
command = "attester-sample"
transport = "ttrpc"

[plugins.attester.dev]
launch = "process"
command = "/usr/libexec/attester-sample"
args = ["--device"]
transport = "grpc"
tee = "sampledevice"
"#;

    #[test]
    fn parses_upstream_sections_and_plugins() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.plugins.primary.as_deref(), Some("sample"));
        assert_eq!(c.plugins.attester["dev"].transport, Transport::Grpc);
        assert_eq!(c.plugins.attester["dev"].args, vec!["--device"]);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.eventlog_config.init_pcr, 17);
        assert_eq!(c.plugins.call_timeout(), Duration::from_secs(50));
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.keyprovider.name, "attestd");
        assert!(c.plugins.primary.is_none());
        assert!(!c.eventlog_config.enable_eventlog);
    }

    #[test]
    fn init_pcr_names_a_pcr_that_exists() {
        let at = Config::parse("[eventlog_config]\ninit_pcr = 23\n").unwrap();
        assert_eq!(at.eventlog_config.init_pcr, MAX_PCR);
        let e = Config::parse("[eventlog_config]\ninit_pcr = 24\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("PCR 24 does not exist: PCRs are 0 to 23"),
            "{e}"
        );
    }

    #[test]
    fn the_no_tee_settle_is_bounded() {
        assert_eq!(Config::parse("").unwrap().plugins.no_tee_settle_ms, 3_000);
        let at = |ms: u64| Config::parse(&format!("[plugins]\nno_tee_settle_ms = {ms}\n"));
        assert_eq!(at(0).unwrap().plugins.no_tee_settle_ms, 0);
        assert_eq!(
            at(MAX_NO_TEE_SETTLE_MS).unwrap().plugins.no_tee_settle_ms,
            MAX_NO_TEE_SETTLE_MS
        );
        let e = chain(&at(MAX_NO_TEE_SETTLE_MS + 1).unwrap_err());
        assert!(
            e.contains("plugins.no_tee_settle_ms: 60001 is over the 60000 ms the settle may last"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let e = Config::parse("[plugins]\nprimry = \"sample\"\n").unwrap_err();
        let s = chain(&e);
        assert!(s.contains("unknown field `primry`"), "{s}");
        assert!(s.contains("line 2"), "{s}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = chain(&Config::parse("[plugins\nprimary = 1\n").unwrap_err());
        assert!(e.contains("line 1"), "{e}");
        assert_eq!(e.matches("line 1").count(), 1, "said once: {e}");
    }

    #[test]
    fn bad_transport_names_key() {
        let t =
            "[plugins.attester.s]\nlaunch = \"process\"\ncommand = \"x\"\ntransport = \"http\"\n";
        let e = chain(&Config::parse(t).unwrap_err());
        assert!(e.contains("transport"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn undefined_primary_is_named() {
        let e = Config::parse("[plugins]\nprimary = \"tdx\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: plugins.primary: \"tdx\" has no [plugins.attester.tdx] table"
        );
    }

    #[test]
    fn missing_command_is_named() {
        let e =
            Config::parse("[plugins.attester.s]\nlaunch = \"process\"\ntransport = \"ttrpc\"\n")
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: plugins.attester.s.command: required when launch = \"process\""
        );
    }

    #[test]
    fn unknown_tee_is_refused() {
        let t = "[plugins.attester.s]\nlaunch = \"process\"\ncommand = \"x\"\ntransport = \"ttrpc\"\ntee = \"tdx2\"\n";
        let e = Config::parse(t).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid config: plugins.attester.s.tee: unknown TEE \"tdx2\""),
            "{e}"
        );
    }

    #[test]
    fn tee_names_are_kbs_types_names_or_a_third_partys() {
        // Every name of the list is one kbs-types (so a KBS) knows.
        for tee in KBS_TEES {
            serde_json::from_value::<kbs_types::Tee>(serde_json::json!(tee))
                .unwrap_or_else(|e| panic!("{tee}: {e}"));
            check_tee("tee", tee).unwrap();
        }
        let at_bound = format!("x-{}", "a".repeat(MAX_TEE_NAME_LEN - 2));
        for ok in ["x-hello", "x-acme-tee2", "x-0", at_bound.as_str()] {
            check_tee("tee", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            // A third party's name is never one kbs-types knows.
            assert!(serde_json::from_value::<kbs_types::Tee>(serde_json::json!(ok)).is_err());
        }
        let past_bound = format!("{at_bound}a");
        for bad in [
            "hello",
            "x-",
            "x-Hello",
            "x-a--b",
            "x-a-",
            "x_a",
            "x-é",
            "",
            past_bound.as_str(),
        ] {
            let e = check_tee("plugins.attester.s.tee", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("a third party's name: \"x-\""), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicate_additional_is_refused() {
        let t = "[plugins]\nprimary = \"a\"\nadditional = [\"a\"]\n[plugins.attester.a]\nlaunch = \"process\"\ncommand = \"x\"\ntransport = \"ttrpc\"\n";
        let e = Config::parse(t).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid config: plugins.additional[0]: \"a\" is listed twice"
        );
    }

    #[test]
    fn zero_timeout_is_refused() {
        let e = Config::parse("[plugins]\ncall_timeout_ms = 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: plugins.call_timeout_ms: must be greater than 0"
        );
    }

    #[test]
    fn container_opt_ins_are_checked() {
        let image = format!("localhost/x@sha256:{}", "a".repeat(64));
        let table = |extra: &str| {
            format!("[plugins.attester.s]\nlaunch = \"podman\"\nimage = {image:?}\ntransport = \"ttrpc\"\n{extra}\n")
        };
        let c = Config::parse(&table("host_network = true\ndevices = [\"/dev/tpmrm0\"]")).unwrap();
        assert!(c.plugins.attester["s"].host_network);
        let e = Config::parse(&table("devices = [\"/etc/shadow\"]"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid config: plugins.attester.s.devices[0]: \"/etc/shadow\" is not a device node path under /dev");
        let e = Config::parse(&table("devices = [\"/dev/../etc/shadow\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a device node path under /dev"), "{e}");
        let process = "[plugins.attester.s]\nlaunch = \"process\"\ncommand = \"x\"\ntransport = \"ttrpc\"\nhost_network = true\n";
        let e = Config::parse(process).unwrap_err().to_string();
        assert!(
            e.contains("host_network is for launch = \"podman\" or \"oci\""),
            "{e}"
        );
        // A process plugin's devices are its unit's DeviceAllow; an external
        // plugin's are not attestd's to give.
        let process = "[plugins.attester.s]\nlaunch = \"process\"\ncommand = \"x\"\ntransport = \"ttrpc\"\ndevices = [\"/dev/x-hello-guest\"]\n";
        assert!(Config::parse(process).is_ok());
        let external = "[plugins.attester.s]\nlaunch = \"external\"\nsocket = \"/run/x.sock\"\ntransport = \"ttrpc\"\ndevices = [\"/dev/x\"]\n";
        let e = Config::parse(external).unwrap_err().to_string();
        assert_eq!(e, "invalid config: plugins.attester.s.devices: an external plugin's devices are its owner's to give");
        let e = Config::parse(&table("probe = [\"/etc/passwd\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "invalid config: plugins.attester.s.probe: probe condition \"/etc/passwd\""
            ),
            "{e}"
        );
        let c = Config::parse(&table(
            "probe = [\"/dev/x-hello-guest\", \"/sys/class/dmi/id/sys_vendor=Acme\"]",
        ))
        .unwrap();
        assert_eq!(c.plugins.attester["s"].probe.len(), 2);
        let e = Config::parse("[plugins]\npodman_runtime = \"--privileged\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid config: plugins.podman_runtime: \"--privileged\" is not a runtime name or path");
        assert!(Config::parse("[plugins]\npodman_runtime = \"/usr/sbin/runc\"\n").is_ok());
    }

    #[test]
    fn every_example_config_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                // As attestd reads it: one layer, the -c file.
                let only = layers::Sources {
                    cli: Some(p.clone()),
                    ..Default::default()
                };
                layers::load(&only, scope::Source::Operator)
                    .unwrap_or_else(|e| panic!("{}: {}", p.display(), chain(&e)));
                n += 1;
            }
        }
        assert!(n >= 3, "{n} examples");
    }
}

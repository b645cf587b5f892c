//! The webhook's configuration (`webhook.toml`, from a ConfigMap) and the image
//! lock it pins every injected container by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the image ships its lock (containers/build.sh copies it in).
pub const DEFAULT_IMAGES_LOCK: &str = "/etc/attestd-webhook/images.lock";
/// A config or lock file larger than this is a mistake, not a config.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause in the message and not as a source, so `{:#}` says it once.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What to do with a pod that opted in but whose runtime class names no TEE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Admit it unchanged, with a warning (the default: a plain pod in a labelled
    /// namespace keeps working).
    #[default]
    Allow,
    /// Refuse it, naming the runtime class.
    Deny,
}

/// Requests and limits of one injected container (Kubernetes quantities).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedResources {
    #[serde(default = "default_core_resources")]
    pub attestd: Resources,
    #[serde(default = "default_attester_resources")]
    pub attester: Resources,
}

impl Default for InjectedResources {
    fn default() -> Self {
        InjectedResources {
            attestd: default_core_resources(),
            attester: default_attester_resources(),
        }
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// Measured: the core idles near 10 MiB and a plugin near 6 MiB (docs/benchmarks.md);
// the limits leave room for a burst of calls.
fn default_core_resources() -> Resources {
    Resources {
        requests: quantities(&[("cpu", "10m"), ("memory", "24Mi")]),
        limits: quantities(&[("memory", "96Mi")]),
    }
}

fn default_attester_resources() -> Resources {
    Resources {
        requests: quantities(&[("cpu", "10m"), ("memory", "16Mi")]),
        limits: quantities(&[("memory", "64Mi")]),
    }
}

fn default_lock() -> PathBuf {
    PathBuf::from(DEFAULT_IMAGES_LOCK)
}

fn default_grpc() -> String {
    // Off unless asked, as attestd's own --grpc_sock: the pods that need the gRPC
    // AA API (upstream's grpc-aa clients) get it by `grpc` in webhook.toml.
    "none".to_string()
}

fn default_runtime_classes() -> BTreeMap<String, String> {
    [
        ("kata-qemu-tdx", "tdx"),
        ("kata-qemu-snp", "snp"),
        ("kata-qemu-coco-dev", "sample"),
        ("kata-remote", "auto"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `webhook.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lock written by containers/build.sh: attester images by TEE, and the
    /// core's image under `[components.attestd]`.
    #[serde(default = "default_lock")]
    pub images_lock: PathBuf,
    /// Tags allowed in `images` overrides (never outside development).
    #[serde(default)]
    pub dev_mode: bool,
    /// `runtimeClassName` → TEE (a key of the lock, or `auto`). A pod of a class
    /// listed here is injected without any label.
    #[serde(default = "default_runtime_classes")]
    pub runtime_classes: BTreeMap<String, String>,
    /// The TEE for a pod that opted in by label or annotation with a runtime class
    /// not listed (or none); unset: `unknown_runtime_class` decides.
    #[serde(default)]
    pub default_tee: Option<String>,
    #[serde(default)]
    pub unknown_runtime_class: UnknownPolicy,
    /// The TEEs `auto` injects (each its own sidecar; attestd picks at start).
    /// Empty: every TEE of the lock but `sample`.
    #[serde(default)]
    pub auto_candidates: Vec<String>,
    /// The gRPC AA address attestd listens on in the pod: host:port (in the pod's
    /// network namespace), `unix:///run/confidential-containers/attestation-agent/<name>`
    /// (beside the ttrpc socket, where the app's containers see it), or `none`.
    #[serde(default = "default_grpc")]
    pub grpc: String,
    /// Image overrides by TEE (or `attestd`): `name@sha256:…`, a tag only in dev mode.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: InjectedResources,
}

impl Default for Config {
    fn default() -> Self {
        // An empty document is the default config.
        Config {
            images_lock: default_lock(),
            dev_mode: false,
            runtime_classes: default_runtime_classes(),
            default_tee: None,
            unknown_runtime_class: UnknownPolicy::Allow,
            auto_candidates: Vec::new(),
            grpc: default_grpc(),
            images: BTreeMap::new(),
            resources: InjectedResources::default(),
        }
    }
}

/// One attester of the lock.
#[derive(Debug, Clone, Deserialize)]
pub struct LockedAttester {
    pub image: String,
    pub digest: String,
    pub transport: String,
    /// A third party's image: the pod VM's device nodes it needs (then it runs
    /// privileged, as the built-in TEEs' attesters do).
    #[serde(default)]
    pub devices: Vec<String>,
    /// A third party's image: its declared probe, which `auto` hands to attestd.
    #[serde(default)]
    pub probe: Vec<String>,
}

/// The core's (or the webhook's own) image.
#[derive(Debug, Clone, Deserialize)]
pub struct LockedComponent {
    pub image: String,
    pub digest: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Lock {
    #[serde(default)]
    pub images: BTreeMap<String, LockedAttester>,
    #[serde(default)]
    pub components: BTreeMap<String, LockedComponent>,
}

fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let read = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(invalid(
            path,
            format!("{} bytes, more than {MAX_CONFIG_BYTES}", meta.len()),
        ));
    }
    std::fs::read_to_string(path).map_err(read)
}

/// A `name@sha256:<64 hex>` reference, or (dev mode) any `name:tag`.
pub fn check_reference(r: &str, dev_mode: bool) -> Result<(), String> {
    match attestd::config::image_ref::ImageRef::parse(r) {
        Ok(parsed) if parsed.digest.is_some() => Ok(()),
        Ok(_) if dev_mode => Ok(()),
        Ok(_) => Err(format!(
            "{r} is not pinned by digest (a tag is allowed only with dev_mode)"
        )),
        Err(e) => Err(format!("{r}: {e}")),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path)?;
        let config: Config = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        config.validate().map_err(|m| invalid(path, m))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        for (what, r) in &self.images {
            check_reference(r, self.dev_mode).map_err(|e| format!("images.{what}: {e}"))?;
        }
        let in_aa_dir = self
            .grpc
            .strip_prefix("unix:///run/confidential-containers/attestation-agent/")
            .is_some_and(|name| {
                !name.is_empty() && !name.contains('/') && name != "attestation-agent.sock"
            });
        if self.grpc != "none" && !in_aa_dir && self.grpc.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "grpc: {:?} is neither host:port, a unix:// socket in /run/confidential-containers/attestation-agent/, nor \"none\"",
                self.grpc
            ));
        }
        Ok(())
    }
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock, ConfigError> {
        let text = read_bounded(path)?;
        let lock: Lock = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        for (name, e) in lock
            .images
            .iter()
            .map(|(n, e)| (n, (&e.image, &e.digest)))
            .chain(
                lock.components
                    .iter()
                    .map(|(n, e)| (n, (&e.image, &e.digest))),
            )
        {
            let pinned = format!("{}@{}", e.0, e.1);
            check_reference(&pinned, false).map_err(|m| invalid(path, format!("{name}: {m}")))?;
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_and_unknown_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("webhook.toml");
        std::fs::write(&p, "").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.runtime_classes["kata-qemu-tdx"], "tdx");
        assert_eq!(c.unknown_runtime_class, UnknownPolicy::Allow);
        std::fs::write(&p, "runtime_class = {}\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("unknown field `runtime_class`"), "{e}");
    }

    #[test]
    fn a_tag_override_needs_dev_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("webhook.toml");
        std::fs::write(&p, "[images]\ntdx = \"example.com/attester-tdx:dev\"\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("images.tdx: example.com/attester-tdx:dev is not pinned by digest"),
            "{e}"
        );
        std::fs::write(
            &p,
            "dev_mode = true\n[images]\ntdx = \"example.com/attester-tdx:dev\"\n",
        )
        .unwrap();
        assert!(Config::load(&p).unwrap().dev_mode);
    }

    #[test]
    fn a_file_over_the_bound_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("webhook.toml");
        std::fs::write(&p, vec![b'#'; MAX_CONFIG_BYTES as usize]).unwrap();
        assert!(Config::load(&p).is_ok());
        std::fs::write(&p, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("more than 1048576"), "{e}");
    }

    #[test]
    fn a_lock_entry_without_a_digest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("images.lock");
        std::fs::write(
            &p,
            "[images.tdx]\nimage = \"localhost/attestd/attester-tdx\"\ndigest = \"latest\"\ntransport = \"ttrpc\"\n",
        )
        .unwrap();
        let e = Lock::load(&p).unwrap_err().to_string();
        assert!(e.contains("tdx: "), "{e}");
    }
}

//! One module per subcommand (its arguments and its body), and what several
//! share: the configuration flags and loading, the one-shot commands' private
//! socket directory, runtime-data parsing and printing, error hints.

#[cfg(feature = "tools")]
pub(crate) mod client;
#[cfg(feature = "tools")]
pub(crate) mod config;
#[cfg(feature = "tools")]
pub(crate) mod conformance;
#[cfg(feature = "tools")]
pub(crate) mod eventlog;
#[cfg(feature = "tools")]
pub(crate) mod evidence;
#[cfg(feature = "tools")]
pub(crate) mod plugins;
#[cfg(feature = "tools")]
pub(crate) mod reload;
#[cfg(feature = "tools")]
pub(crate) mod resource;
pub(crate) mod run;
#[cfg(feature = "tools")]
pub(crate) mod select;
#[cfg(feature = "tools")]
pub(crate) mod token;
#[cfg(feature = "tools")]
pub(crate) mod units;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use attestd::config::Config;
use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct ConfigArg {
    /// Config file (upstream AA TOML plus [plugins]), read after the system file
    /// and drop-ins of --config-dir; its keys win.
    #[arg(short = 'c', long = "config-file", env = "ATTESTD_CONFIG")]
    config_file: Option<PathBuf>,
    /// The image's configuration: attestd.toml and attestd.toml.d/*.toml here,
    /// each optional. One given must exist [default: /etc/attestd, which may not]
    #[arg(long = "config-dir", env = "ATTESTD_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Where the -c file comes from, which decides what it may set: operator
    /// (anything), init-data (measured: not what attestd launches), user-data
    /// (unmeasured: upstream AA's keys only, the rest ignored). The config
    /// directory's [config_file] source may make it stricter, never looser.
    #[arg(
        long = "config-file-source",
        env = "ATTESTD_CONFIG_FILE_SOURCE",
        default_value = "operator"
    )]
    config_file_source: attestd::config::scope::Source,
}

impl ConfigArg {
    /// The configuration directory. The default may be absent (a machine with
    /// no image configuration); one given that is not there is a mistake whose
    /// files would silently go unread.
    fn dir(&self) -> Result<PathBuf> {
        match &self.config_dir {
            None => Ok(attestd::config::layers::DEFAULT_CONFIG_DIR.into()),
            Some(d) if d.is_dir() => Ok(d.clone()),
            Some(d) => bail!(
                "--config-dir (or ATTESTD_CONFIG_DIR) {}: {}",
                d.display(),
                if d.exists() {
                    "not a directory"
                } else {
                    "no such directory"
                }
            ),
        }
    }
}

fn load_config(arg: &ConfigArg) -> Result<Config> {
    Ok(load_layered(arg)?.config)
}

/// The system file and drop-ins of --config-dir, then -c (see config::layers).
fn load_layered(arg: &ConfigArg) -> Result<attestd::config::layers::Layered> {
    use attestd::config::layers;
    let files = layers::sources(&arg.dir()?, arg.config_file.as_deref())?;
    Ok(layers::load(&files, arg.config_file_source)?)
}

fn sdk(e: attester_sdk::Error) -> anyhow::Error {
    anyhow!(e.chain())
}

/// The one-shot command's own socket directory, removed when the command ends,
/// whether it succeeded or not.
static ONE_SHOT_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

#[cfg(feature = "tools")]
/// One-shot commands use a private socket directory, so they never touch the
/// sockets of a daemon running with the same config.
fn one_shot_config(arg: &ConfigArg) -> Result<Config> {
    let mut config = load_config(arg)?;
    attester_sdk::init_logging("warn");
    config.plugins.socket_dir = config
        .plugins
        .socket_dir
        .join(format!("cli-{}", std::process::id()));
    let _ = ONE_SHOT_DIR.set(config.plugins.socket_dir.clone());
    // The daemon owns the event log: a one-shot command must not write to it.
    config.eventlog_config.enable_eventlog = false;
    // Keep the plugins' start-up chatter off a one-shot command's output.
    for p in config.plugins.attester.values_mut() {
        p.env
            .entry("ATTESTD_LOG".into())
            .or_insert_with(|| "warn".into());
    }
    Ok(config)
}

#[cfg(feature = "tools")]
/// `text`, `@file` or `hex:<hex>`.
fn runtime_data(spec: &str) -> Result<Vec<u8>> {
    use anyhow::Context as _;
    if let Some(path) = spec.strip_prefix('@') {
        return std::fs::read(path)
            .with_context(|| format!("cannot read runtime data from {path}"));
    }
    if let Some(h) = spec.strip_prefix("hex:") {
        return hex::decode(h).context("runtime data after hex: is not hex");
    }
    Ok(spec.as_bytes().to_vec())
}

#[cfg(feature = "tools")]
fn print_bytes(b: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(b)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// What to do about the error, where the message alone leaves a user guessing.
pub(crate) fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{e:#}");
    // attestd's default paths (upstream's sockets, the plugins' directory) are
    // root's. The text, since attester_sdk errors carry their io causes as text.
    let denied = text.contains("Permission denied");
    if denied && text.contains(" /run/") && !nix::unistd::geteuid().is_root() {
        return Some(
            "attestd's default paths under /run are root's: run it as root, or give it \
             directories you own ([plugins] socket_dir in the config, --attestation_sock \
             unix://… for the daemon and for attestd client)",
        );
    }
    // `attestd client` finding nobody at the address.
    if text.starts_with("cannot connect to ")
        && (text.contains("No such file or directory") || text.contains("Connection refused"))
    {
        return Some(
            "is attestd running? --attestation_sock (ttrpc) or --grpc names where it serves",
        );
    }
    None
}

/// Remove the one-shot command's socket directory, and the directory it was
/// made in when no attestd holds that (an attestd's lock file keeps it).
pub(crate) fn remove_one_shot_dir() {
    if let Some(dir) = ONE_SHOT_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The operator commands (feature `tools`): every subcommand but the daemon.
#[cfg(feature = "tools")]
#[derive(clap::Subcommand)]
pub(crate) enum Tool {
    /// One shot: start the plugin, handshake, print its evidence JSON.
    Evidence(evidence::EvidenceArgs),
    /// Start each configured plugin, print its handshake and health, stop it.
    Plugins(plugins::PluginsArgs),
    /// Call a running attestd over its AA API.
    Client(client::ClientArgs),
    /// Print the runtime-measurement event log, replay it, and compare with the
    /// primary plugin's registers.
    Eventlog(eventlog::EventlogArgs),
    /// Probe this platform, confirm with the candidate plugin's Detect, print the
    /// chosen TEE and its image.
    Select(select::SelectArgs),
    /// Print systemd units (or podman quadlet files) for attestd and its plugin.
    Units(units::UnitsArgs),
    /// One shot: attest to the configured KBS and print GetToken("kbs")'s answer.
    Token(token::TokenArgs),
    /// One shot: attest to the KBS and write a resource (kbs:///<repo>/<type>/<tag>).
    Resource(resource::ResourceArgs),
    /// Print the effective configuration: each key, its value, and the file it
    /// came from (system file, drop-in, -c) or "default".
    Config(config::ConfigCmdArgs),
    /// Drive a plugin through the plugin contract (handshake, report-data
    /// limits, error codes, health, init-data, SIGTERM) and print each check.
    Conformance(conformance::ConformanceArgs),
    /// Ask the running attestd (the one holding the config's socket directory)
    /// to read its configuration again and replace the plugins whose
    /// configuration changed, without a failed call; print what it did to each,
    /// and fail when a plugin kept its running instance.
    Reload(ConfigArg),
}

#[cfg(feature = "tools")]
impl Tool {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            Tool::Evidence(a) => evidence::cmd_evidence(a).await,
            Tool::Plugins(a) => plugins::cmd_plugins(a).await,
            Tool::Client(a) => client::cmd_client(a).await,
            Tool::Eventlog(a) => eventlog::cmd_eventlog(a).await,
            Tool::Select(a) => select::cmd_select(a).await,
            Tool::Units(a) => units::cmd_units(a).await,
            Tool::Reload(a) => reload::cmd_reload(a).await,
            Tool::Token(a) => token::cmd_token(a).await,
            Tool::Resource(a) => resource::cmd_resource(a).await,
            Tool::Config(a) => config::cmd_config(a),
            Tool::Conformance(a) => conformance::cmd_conformance(a).await,
        }
    }
}

//! The operator commands (`attestd-tools`): one module per subcommand, and what
//! only they share: the one-shot commands' private socket directory, runtime
//! data parsing and printing. The daemon binary links none of this.

mod client;
mod config;
mod conformance;
mod eventlog;
mod evidence;
mod plugins;
mod prefetch;
mod reload;
mod resource;
mod select;
mod token;
mod units;

use anyhow::Result;
use attestd::config::Config;

pub(crate) use crate::commands::{load_config, load_layered, sdk, ConfigArg};

/// The one-shot command's own socket directory, removed when the command ends,
/// whether it succeeded or not.
static ONE_SHOT_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

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

fn print_bytes(b: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(b)?;
    out.write_all(b"\n")?;
    Ok(())
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

/// The operator commands: every subcommand but the daemon.
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
    /// Copy the images of an images.lock from podman's store into the oci
    /// backend's directory, unpacked, for an image build: its attestd then
    /// starts them with runc alone (`launch = "oci"`).
    Prefetch(prefetch::PrefetchArgs),
    /// Ask the running attestd (the one holding the config's socket directory)
    /// to read its configuration again and replace the plugins whose
    /// configuration changed, without a failed call; print what it did to each,
    /// and fail when a plugin kept its running instance.
    Reload(ConfigArg),
}

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
            Tool::Prefetch(a) => prefetch::cmd_prefetch(a).await,
        }
    }
}

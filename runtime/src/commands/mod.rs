//! What the daemon and the operator commands share: the configuration flags and
//! loading, error hints, and the daemon itself (`run`). The daemon binary
//! (`attestd`, main.rs) holds only this; the operator commands are in
//! `attestd-tools` (bin/attestd-tools.rs and tool.rs), which the daemon execs
//! for every other subcommand (docs/benchmarks.md, "One binary or two").

pub(crate) mod run;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use attestd::config::Config;
use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct ConfigArg {
    /// Config file (upstream AA TOML plus [plugins]), read after the system file
    /// and drop-ins of --config-dir; its keys win.
    #[arg(short = 'c', long = "config-file", env = "ATTESTD_CONFIG")]
    pub(crate) config_file: Option<PathBuf>,
    /// The image's configuration: attestd.toml and attestd.toml.d/*.toml here,
    /// each optional. One given must exist [default: /etc/attestd, which may not]
    #[arg(long = "config-dir", env = "ATTESTD_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// A drop-in's TOML, read after --config-dir's drop-ins and trusted as they
    /// are: for whoever fixes attestd's command line or environment, as
    /// attestd-webhook does (a pod's container spec cannot change after
    /// admission; its annotations can)
    #[arg(long = "drop-in", env = "ATTESTD_DROP_IN", value_name = "TOML")]
    drop_in: Option<String>,
    /// Where the -c file comes from, which decides what it may set: operator
    /// (anything), init-data (measured: not what attestd launches), user-data
    /// (unmeasured: upstream AA's keys only, the rest ignored). The config
    /// directory's [config_file] source may make it stricter, never looser.
    #[arg(
        long = "config-file-source",
        env = "ATTESTD_CONFIG_FILE_SOURCE",
        default_value = "operator"
    )]
    pub(crate) config_file_source: attestd::config::scope::Source,
}

impl ConfigArg {
    /// The configuration directory. The default may be absent (a machine with
    /// no image configuration); one given that is not there is a mistake whose
    /// files would silently go unread.
    pub(crate) fn dir(&self) -> Result<PathBuf> {
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

pub(crate) fn load_config(arg: &ConfigArg) -> Result<Config> {
    let layered = load_layered(arg)?;
    warn_ignored(&layered.ignored);
    Ok(layered.config)
}

/// The keys a layer may not set, each warned about: at every load (a start, a
/// reload, a tool's run), so none goes unseen.
pub(crate) fn warn_ignored(ignored: &[attestd::config::scope::Refused]) {
    for r in ignored {
        tracing::warn!(key = %attestd::echo::escaped(&r.key), "ignored: {}", r.why);
    }
}

/// The system file and drop-ins of --config-dir, then -c (see config::layers).
pub(crate) fn load_layered(arg: &ConfigArg) -> Result<attestd::config::layers::Layered> {
    use attestd::config::layers;
    let files = layers::sources(&arg.dir()?, arg.config_file.as_deref())?
        .with_inline(arg.drop_in.clone())?;
    Ok(layers::load(&files, arg.config_file_source)?)
}

pub(crate) fn sdk(e: attester_sdk::Error) -> anyhow::Error {
    anyhow!(e.chain())
}

/// What to do about the error, where the message alone leaves a user guessing.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
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

/// `fut` run to its end on a current-thread runtime: attestd is one thread.
pub(crate) fn block_on(fut: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?
        .block_on(fut)
}

/// The exit status for a command's result, printing the error and its hint.
pub(crate) fn report(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            if e.is::<run::NoTee>() {
                std::process::ExitCode::from(attestd::select::NO_TEE_EXIT_STATUS)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

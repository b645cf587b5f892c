//! `attestd` / `attestd run`: the daemon, with upstream AA's flags.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use attestd::initdata::InitData;
use attestd::run::{self, RunOptions, DEFAULT_ATTESTATION_SOCK};
use attestd::server::GrpcAddr;
use clap::Args;

use super::{load_config, load_layered, sdk, warn_ignored, ConfigArg};

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// ttrpc AA socket (unix:///path). Given host:port, as upstream's gRPC build
    /// (grpc-aa) takes it, the AA API is served over gRPC there instead, and over
    /// ttrpc on the default socket.
    #[arg(short = 'a', long = "attestation_sock", default_value = DEFAULT_ATTESTATION_SOCK)]
    attestation_sock: String,
    /// gRPC AA listener: unix:///path (preferred) or host:port (upstream grpc-aa's
    /// was 127.0.0.1:50002); off unless given ("none" also turns it off).
    #[arg(long = "grpc_sock", default_value = "none")]
    grpc_sock: String,
    /// Init-data TOML bound at start (taken over --initdata-digest, as upstream).
    #[arg(short = 't', long = "initdata-toml")]
    initdata_toml: Option<PathBuf>,
    /// Init-data digest (base64) bound at start.
    #[arg(short = 'i', long = "initdata-digest")]
    initdata_digest: Option<String>,
    /// The init-data is the pod VM's stand-in for none (cloud-api-adaptor's
    /// dummy, written by attestd-podvm): bound only where binding extends a
    /// register (a TPM's PCR 8, as those images do), never compared with a
    /// launch-time value the host set for no init-data
    #[arg(long = "initdata-stand-in")]
    initdata_stand_in: bool,
    /// Upstream's older flags, refused with what replaced them (clap alone would
    /// suggest --grpc_sock for them).
    #[arg(long = "keyprovider_sock", hide = true)]
    keyprovider_sock: Option<String>,
    #[arg(long = "getresource_sock", hide = true)]
    getresource_sock: Option<String>,
}

impl RunArgs {
    /// Refuse upstream's older listener flags: silently ignored, a caller would
    /// wait on a socket nobody serves.
    fn refuse_dropped_flags(&self) -> Result<()> {
        if self.keyprovider_sock.is_some() {
            bail!(
                "--keyprovider_sock is a flag of upstream's older attestation-agent, which \
                 dropped it when the key provider moved to the Confidential Data Hub \
                 (guest-components#412): attestd serves the ocicrypt key provider where \
                 [keyprovider] ttrpc or grpc in the config says (docs/key-release.md)"
            );
        }
        if self.getresource_sock.is_some() {
            bail!(
                "--getresource_sock is a flag of upstream's older attestation-agent, which \
                 dropped it when GetResource moved to the Confidential Data Hub \
                 (guest-components#412): run the Data Hub, which asks attestd for the KBS \
                 token, or use `attestd resource` (docs/key-release.md)"
            );
        }
        Ok(())
    }
}

pub(crate) async fn cmd_run(a: RunArgs) -> Result<()> {
    use attestd::config::scope::{Source, UnboundInitData};
    a.refuse_dropped_flags()?;
    let layered = load_layered(&a.config)?;
    attestd::logging::init(&layered.config.log);
    let unbound = layered.config.config_file.unbound_init_data;
    match start(&a, layered, false).await {
        Err(e) if is_unbound(&e) && unbound == UnboundInitData::TreatAsUserData => {
            // Nothing was served: the plugins are stopped. What the -c file
            // set at the init-data scope never took effect; it is read again
            // as user-data's, and the next start goes on unbound.
            tracing::warn!(
                "the primary plugin cannot bind init-data, and [config_file] unbound_init_data = \"treat-as-user-data\": starting again with the -c file read as user-data's"
            );
            let mut lowered = a.clone();
            lowered.config.config_file_source = Source::UserData;
            let layered = load_layered(&lowered.config)?;
            start(&lowered, layered, true).await
        }
        r => r,
    }
}

/// Whether the start failed because nothing binds its init-data.
fn is_unbound(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unbound>().is_some()
}

/// A start refused because the primary cannot bind its init-data.
#[derive(Debug)]
struct Unbound(String);

impl std::fmt::Display for Unbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unbound {}

/// One start of the daemon on `layered`, until it stops.
async fn start(
    a: &RunArgs,
    layered: attestd::config::layers::Layered,
    unbound_tolerated: bool,
) -> Result<()> {
    let config = layered.config;
    if layered.cli_source == Some(attestd::config::scope::Source::UserData)
        && config.config_file.user_data != attestd::config::scope::UserDataPolicy::Ignore
    {
        let file = layered.files.last().map(|f| f.display().to_string());
        tracing::warn!(
            file = file.as_deref().unwrap_or_default(),
            "the -c file comes from user-data, which is unmeasured: only upstream attestation-agent's keys are read from it"
        );
    }
    warn_ignored(&layered.ignored);
    // The start-up phases are trace events of their own target, off unless asked
    // for (`ATTESTD_LOG=info,attestd::startup=trace`): `attestd-bench --only
    // startup` times them from the log.
    tracing::trace!(target: "attestd::startup", "start-up: configuration read");
    let initdata = match (&a.initdata_toml, &a.initdata_digest) {
        (Some(p), digest) => {
            if digest.is_some() {
                tracing::warn!("--initdata-toml is taken, --initdata-digest ignored (as upstream)");
            }
            Some(InitData::from_toml_file(p)?)
        }
        (None, Some(d)) => Some(InitData::from_digest_base64(d)?),
        (None, None) => None,
    };
    let mut grpc = match a.grpc_sock.as_str() {
        "none" | "" => None,
        s => Some(
            s.parse::<GrpcAddr>()
                .map_err(|e| anyhow!("--grpc_sock: {e}"))?,
        ),
    };
    let mut attestation_sock = a.attestation_sock.clone();
    // Upstream's grpc-aa takes its TCP address here: serve gRPC on it, so its
    // deployments switch without new flags.
    if let Ok(addr) = attestation_sock.parse::<std::net::SocketAddr>() {
        if grpc.is_some() {
            bail!("--attestation_sock {addr} asks for gRPC there, and --grpc_sock for gRPC elsewhere: give one");
        }
        tracing::info!(%addr, "--attestation_sock is host:port, as upstream's grpc-aa takes it: the AA API is served over gRPC there");
        grpc = Some(GrpcAddr::Tcp(addr));
        attestation_sock = DEFAULT_ATTESTATION_SOCK.to_string();
    }
    let opts = RunOptions {
        config,
        attestation_sock,
        grpc,
        initdata,
        unbound_tolerated,
        initdata_stand_in: a.initdata_stand_in,
        reload: Some(reload_on_sighup(a.config.clone())?),
    };
    run::run(opts, shutdown_signal()?).await.map_err(|e| {
        if attestd::select::is_no_tee(&e) {
            anyhow::Error::new(NoTee(e.chain()))
        } else if run::is_unbound(&e) {
            anyhow::Error::new(Unbound(e.chain()))
        } else {
            sdk(e)
        }
    })
}

/// Selection found no TEE on this machine: the daemon exits with
/// [`attestd::select::NO_TEE_EXIT_STATUS`], which its at-boot unit does not restart.
#[derive(Debug)]
pub(crate) struct NoTee(String);

impl std::fmt::Display for NoTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoTee {}

/// SIGHUP (`kill -HUP`) reads the same files again, as `attestd reload` does
/// over the control socket.
fn reload_on_sighup(arg: ConfigArg) -> Result<run::Reload> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let reload = run::Reload::new(Box::new(move || {
        // Warning about ignored keys at every load, as at the start.
        load_config(&arg).map_err(|e| attester_sdk::Error::invalid_argument(format!("{e:#}")))
    }));
    let tx = reload.sender.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A full queue already holds a request that reads the files after
            // this signal: it folds into that one.
            let _ = tx.try_send(attestd::control::Request { reply: None });
        }
    });
    Ok(reload)
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

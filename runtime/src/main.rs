//! `attestd`: the daemon and its operator commands.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use attestd::aa_client::AaClient;
use attestd::config::Config;
use attestd::initdata::InitData;
use attestd::run::{self, RunOptions, DEFAULT_ATTESTATION_SOCK};
use attestd::server::GrpcAddr;
use attestd::service::MeasurementEvent;
use attestd::supervisor::{PluginSpec, Supervisor};
use attester_sdk::DeviceRole;
use clap::{Args, Parser, Subcommand};

/// attestd: the attestation-agent API, served by per-TEE attester plugins.
///
/// Without a subcommand, `attestd` runs the daemon with upstream AA's flags.
#[derive(Parser)]
#[command(name = "attestd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Run(RunArgs),
    /// One shot: start the plugin, handshake, print its evidence JSON.
    Evidence(EvidenceArgs),
    /// Start each configured plugin, print its handshake and health, stop it.
    Plugins(PluginsArgs),
    /// Call a running attestd over its AA API.
    Client(ClientArgs),
    /// Print the runtime-measurement event log, replay it, and compare with the
    /// primary plugin's registers.
    Eventlog(EventlogArgs),
    /// Probe this platform, confirm with the candidate plugin's Detect, print the
    /// chosen TEE and its image.
    Select(SelectArgs),
    /// Print systemd units (or podman quadlet files) for attestd and its plugin.
    Units(UnitsArgs),
    /// One shot: attest to the configured KBS and print GetToken("kbs")'s answer.
    Token(TokenArgs),
    /// One shot: attest to the KBS and write a resource (kbs:///<repo>/<type>/<tag>).
    Resource(ResourceArgs),
    /// Print the effective configuration: each key, its value, and the file it
    /// came from (system file, drop-in, -c) or "default".
    Config(ConfigCmdArgs),
    /// Drive a plugin through the plugin contract (handshake, report-data
    /// limits, error codes, health, init-data, SIGTERM) and print each check.
    Conformance(ConformanceArgs),
    /// Ask the running attestd (the one holding the config's socket directory)
    /// to read its configuration again and replace the plugins whose
    /// configuration changed, without a failed call; print what it did to each,
    /// and fail when a plugin kept its running instance.
    Reload(ConfigArg),
}

#[derive(Args)]
struct ConformanceArgs {
    /// A plugin already serving here (the SIGTERM check is then skipped);
    /// otherwise give its command after `--` and the kit starts it.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The transport it serves (and is started with).
    #[arg(long, default_value = "ttrpc")]
    transport: attester_sdk::Transport,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The plugin's command and arguments; the kit adds --socket and --transport.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct ConfigCmdArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
struct ResourceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// kbs:///<repo>/<type>/<tag>
    uri: String,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SelectArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Probe under this root instead of [plugins] sysroot (fake trees, chroots).
    #[arg(long)]
    sysroot: Option<PathBuf>,
    /// Skip the plugins' Detect: take the first positive probe.
    #[arg(long)]
    no_confirm: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UnitsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Plugin to write units for (default: the primary; "auto" selects).
    #[arg(long)]
    plugin: Option<String>,
    /// Podman quadlet (.container) for the plugin instead of a .service running podman.
    #[arg(long)]
    quadlet: bool,
    /// With `primary = "auto"`: select at boot, not now (an image built once for
    /// every TEE): attestd's unit and the Data Hub's, no plugin unit.
    #[arg(long, conflicts_with_all = ["plugin", "quadlet"])]
    at_boot: bool,
    /// The config file path the units pass to attestd.
    #[arg(long, default_value = "/etc/attestd/attestd.toml")]
    config_path: PathBuf,
    /// Where attestd is installed.
    #[arg(long, default_value = "/usr/bin/attestd")]
    attestd: PathBuf,
    /// Write each unit into this directory (created if missing) instead of
    /// printing them.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// With --out-dir: where the configuration drop-in goes that makes attestd
    /// connect to the unit-started plugin [default: --config-dir's attestd.toml.d].
    #[arg(long, requires = "out_dir")]
    drop_in_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ConfigArg {
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

#[derive(Args, Clone)]
struct RunArgs {
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

#[derive(Args)]
struct EvidenceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Runtime data: text, @file, or hex:<hex>.
    #[arg(long, default_value = "")]
    runtime_data: String,
    /// Plugin to ask (default: the primary).
    #[arg(long)]
    plugin: Option<String>,
}

#[derive(Args)]
struct PluginsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EventlogArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The log (default: [eventlog_config] path of the config).
    #[arg(long)]
    path: Option<PathBuf>,
    /// Do not start the primary plugin to read its registers.
    #[arg(long)]
    no_check: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// ttrpc AA socket of the running attestd.
    #[arg(long = "attestation_sock", default_value = DEFAULT_ATTESTATION_SOCK)]
    attestation_sock: String,
    /// Use gRPC at this address (host:port or unix:///path) instead of ttrpc.
    #[arg(long)]
    grpc: Option<GrpcAddr>,
    /// Give up on connecting and on the call after this long (upstream clients
    /// wait 50 s).
    #[arg(long, default_value_t = 50_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// GetEvidence: the primary plugin's evidence for the runtime data (JSON)
    GetEvidence {
        /// Runtime data: text, @file, or hex:<hex>.
        #[arg(long, default_value = "")]
        runtime_data: String,
    },
    /// GetAdditionalEvidence: every additional device's evidence, as upstream composes it
    GetAdditionalEvidence {
        /// Runtime data: text, @file, or hex:<hex>.
        #[arg(long, default_value = "")]
        runtime_data: String,
    },
    /// GetTeeType: the primary plugin's TEE
    GetTeeType,
    /// GetAdditionalTees: the additional devices' TEEs, a JSON list
    GetAdditionalTees,
    /// GetToken: a token of this type ("kbs" or "coco_as") from the configured service
    GetToken {
        /// "kbs" (the KBS token and the TEE key pair, as upstream) or "coco_as".
        token_type: String,
    },
    /// BindInitData: bind the init-data digest to the TEE (once per boot)
    BindInitData {
        /// Digest, hex or base64 (the output says which it was read as).
        digest: String,
    },
    /// ExtendRuntimeMeasurement: record an event in the log and extend a register
    ExtendRuntimeMeasurement {
        /// The event's domain (upstream: e.g. github.com/confidential-containers).
        domain: String,
        /// The event's operation (e.g. PullImage).
        operation: String,
        /// The event's content (e.g. the image reference).
        content: String,
        /// The register to extend [default: [eventlog_config] init_pcr].
        #[arg(long)]
        register: Option<u64>,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            None => cmd_run(cli.run).await,
            Some(Cmd::Run(a)) => cmd_run(a).await,
            Some(Cmd::Evidence(a)) => cmd_evidence(a).await,
            Some(Cmd::Plugins(a)) => cmd_plugins(a).await,
            Some(Cmd::Client(a)) => cmd_client(a).await,
            Some(Cmd::Eventlog(a)) => cmd_eventlog(a).await,
            Some(Cmd::Select(a)) => cmd_select(a).await,
            Some(Cmd::Units(a)) => cmd_units(a).await,
            Some(Cmd::Reload(a)) => cmd_reload(a).await,
            Some(Cmd::Token(a)) => cmd_token(a).await,
            Some(Cmd::Resource(a)) => cmd_resource(a).await,
            Some(Cmd::Config(a)) => cmd_config(a),
            Some(Cmd::Conformance(a)) => cmd_conformance(a).await,
        }
    });
    // Plugins are stopped by now; leave no `cli-<pid>` directory behind.
    if let Some(dir) = ONE_SHOT_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
        // And the socket directory it was made in, when no attestd holds that
        // (an attestd's lock file keeps it).
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
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

async fn cmd_conformance(a: ConformanceArgs) -> Result<()> {
    use attestd::conformance::{self, Target};
    attester_sdk::init_logging("warn");
    let (checks, cleanup) = match (&a.socket, a.command.split_first()) {
        (Some(socket), None) => {
            let t = Target {
                socket,
                transport: a.transport,
                pid: None,
            };
            (conformance::run(&t).await, None)
        }
        (None, Some((program, args))) => {
            use std::os::unix::fs::DirBuilderExt as _;
            let dir =
                std::env::temp_dir().join(format!("attestd-conformance-{}", std::process::id()));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let socket = dir.join("plugin.sock");
            let mut child = std::process::Command::new(program)
                .args(args)
                .arg("--socket")
                .arg(&socket)
                .arg("--transport")
                .arg(a.transport.to_string())
                // Its own chatter off the report, unless asked for.
                .env(
                    "ATTESTD_LOG",
                    std::env::var("ATTESTD_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {program}"))?;
            let deadline = std::time::Instant::now() + conformance::START_TIMEOUT;
            // Listening, not just bound: the file appears at bind(), and a connect
            // before listen() is refused.
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&dir);
                    bail!("{program} exited before serving ({status})");
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    bail!(
                        "{program} did not serve on {} within {} s",
                        socket.display(),
                        conformance::START_TIMEOUT.as_secs()
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let t = Target {
                socket: &socket,
                transport: a.transport,
                pid: Some(child.id()),
            };
            let checks = conformance::run(&t).await;
            // Still running when the SIGTERM check failed: not left behind.
            let _ = child.kill();
            let _ = child.wait();
            (checks, Some(dir))
        }
        (Some(_), Some(_)) => bail!("give either --socket or the plugin's command, not both"),
        (None, None) => {
            bail!("give the plugin's command after --, or --socket of a running plugin")
        }
    };
    if let Some(dir) = cleanup {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (text, ok) = conformance::report(&checks);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{text}");
    }
    if !ok {
        bail!("the plugin does not conform: see the FAIL lines");
    }
    Ok(())
}

fn cmd_config(a: ConfigCmdArgs) -> Result<()> {
    let layered = load_layered(&a.config)?;
    print!("{}", layered.render(a.json)?);
    if a.json {
        println!();
    }
    Ok(())
}

fn sdk(e: attester_sdk::Error) -> anyhow::Error {
    anyhow!(e.chain())
}

async fn cmd_run(a: RunArgs) -> Result<()> {
    a.refuse_dropped_flags()?;
    let layered = load_layered(&a.config)?;
    let config = layered.config;
    attestd::logging::init(&config.log);
    if layered.cli_source == Some(attestd::config::scope::Source::UserData) {
        let file = layered.files.last().map(|f| f.display().to_string());
        tracing::warn!(
            file = file.as_deref().unwrap_or_default(),
            "the -c file comes from user-data, which is unmeasured: only upstream attestation-agent's keys are read from it"
        );
    }
    for r in &layered.ignored {
        tracing::warn!(key = %attestd::echo::escaped(&r.key), "ignored: {}", r.why);
    }
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
    let mut attestation_sock = a.attestation_sock;
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
        reload: Some(reload_on_sighup(a.config.clone())?),
    };
    run::run(opts, shutdown_signal()?).await.map_err(sdk)
}

async fn cmd_reload(a: ConfigArg) -> Result<()> {
    use attestd::control;
    let config = load_config(&a)?;
    let plugins = &config.plugins;
    // Each plugin may take its whole start-up to be replaced, one after another.
    let n = u32::try_from(plugins.additional.len() + 1).unwrap_or(u32::MAX);
    let timeout = plugins.startup_timeout().saturating_mul(n) + std::time::Duration::from_secs(10);
    let report = control::reload(&plugins.socket_dir, timeout)
        .await
        .map_err(sdk)?;
    if let Some(e) = &report.error {
        bail!("reload: {e}");
    }
    for p in &report.plugins {
        match (p.outcome, &p.why) {
            (control::Outcome::Replaced, _) => println!(
                "{}: replaced (pid {} → {})",
                p.plugin,
                p.old_pid.map_or("-".into(), |x| x.to_string()),
                p.new_pid.map_or("-".into(), |x| x.to_string())
            ),
            (outcome, Some(why)) => println!("{}: {outcome}: {why}", p.plugin),
            (outcome, None) => println!("{}: {outcome}", p.plugin),
        }
    }
    if !report.succeeded() {
        let kept: Vec<&str> = report
            .plugins
            .iter()
            .filter(|p| p.outcome == control::Outcome::Kept)
            .map(|p| p.plugin.as_str())
            .collect();
        bail!(
            "reload: {} did not take the new configuration (above)",
            kept.join(", ")
        );
    }
    Ok(())
}

/// SIGHUP (`kill -HUP`) reads the same files again, as `attestd reload` does
/// over the control socket.
fn reload_on_sighup(arg: ConfigArg) -> Result<run::Reload> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let reload = run::Reload::new(Box::new(move || {
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

async fn cmd_evidence(a: EvidenceArgs) -> Result<()> {
    let mut config = one_shot_config(&a.config)?;
    if let Some(name) = a.plugin {
        if !config.plugins.attester.contains_key(&name) {
            bail!("--plugin {name:?}: no [plugins.attester.{name}] table in the config");
        }
        config.plugins.primary = Some(name);
    }
    config.plugins.additional.clear();
    let data = runtime_data(&a.runtime_data)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let evidence = service.get_evidence(data).await.map_err(sdk);
    service.stop().await;
    // The private one-shot directory (see one_shot_config), lock file included.
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    print_bytes(&evidence?)
}

async fn cmd_plugins(a: PluginsArgs) -> Result<()> {
    let config = one_shot_config(&a.config)?;
    if config.plugins.attester.is_empty() {
        bail!("no plugins configured: add [plugins.attester.<name>] tables to the config file");
    }
    let _lock = attestd::supervisor::claim_socket_dir(&config.plugins.socket_dir).map_err(sdk)?;
    let mut rows = Vec::new();
    for name in config.plugins.attester.keys() {
        let (role, label) = if Some(name) == config.plugins.primary.as_ref() {
            (DeviceRole::Primary, "primary")
        } else if config.plugins.additional.contains(name) {
            (DeviceRole::Additional, "additional")
        } else {
            (DeviceRole::Primary, "unused")
        };
        let probe = probe(name, role, &config).await;
        rows.push(serde_json::json!({ "name": name, "role": label, "probe": probe }));
    }
    // The private one-shot directory (see one_shot_config), lock file included.
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in &rows {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let (p, hs) = (&r["probe"], &r["probe"]["handshake"]);
        match p.get("error") {
            Some(e) => println!("{} ({}): error: {}", s(&r["name"]), s(&r["role"]), s(e)),
            None => {
                let pv = &p["provenance"];
                let origin = match (pv.get("image"), pv.get("command"), pv.get("socket")) {
                    (Some(_), _, _) => {
                        format!("image={} digest={}", s(&pv["image"]), s(&pv["digest"]))
                    }
                    (None, Some(c), _) => format!("command={}", s(c)),
                    (None, None, Some(sock)) => format!("socket={}", s(sock)),
                    _ => String::new(),
                };
                println!(
                    "{} ({}): tee={} transport={} protocol=v{} plugin={} {} launch={} {origin} health={}",
                    s(&r["name"]),
                    s(&r["role"]),
                    s(&hs["info"]["tee"]),
                    s(&hs["transport"]),
                    hs["protocol_version"],
                    s(&hs["info"]["name"]),
                    s(&hs["info"]["version"]),
                    s(&pv["launch"]),
                    s(&p["health"]),
                )
            }
        }
    }
    Ok(())
}

/// Start one plugin, read its handshake and health, stop it.
async fn probe(name: &str, role: DeviceRole, config: &Config) -> serde_json::Value {
    let started = match PluginSpec::new(name, role, &config.plugins) {
        Ok(spec) => Supervisor::start(spec).await,
        Err(e) => Err(e),
    };
    let s = match started {
        Ok(s) => s,
        Err(e) => return serde_json::json!({ "error": e.chain() }),
    };
    let (health, provenance) = match s.live().await {
        Ok(l) => (
            match l.client.check().await {
                Ok(()) => "serving".to_string(),
                Err(e) => e.chain(),
            },
            serde_json::to_value(&l.provenance).unwrap_or_default(),
        ),
        Err(e) => (e.chain(), serde_json::Value::Null),
    };
    let v = serde_json::json!({ "handshake": s.identity(), "health": health, "provenance": provenance });
    s.stop().await;
    v
}

async fn cmd_client(a: ClientArgs) -> Result<()> {
    let deadline = std::time::Duration::from_millis(a.timeout_ms);
    let client = match &a.grpc {
        Some(addr) => AaClient::grpc(addr, deadline).await,
        None => AaClient::ttrpc(&a.attestation_sock)
            .await
            .map(|c| c.with_deadline(deadline)),
    }
    .map_err(sdk)?;
    match a.call {
        Call::GetEvidence { runtime_data: d } => {
            print_bytes(&client.get_evidence(runtime_data(&d)?).await.map_err(sdk)?)
        }
        Call::GetAdditionalEvidence { runtime_data: d } => print_bytes(
            &client
                .get_additional_evidence(runtime_data(&d)?)
                .await
                .map_err(sdk)?,
        ),
        Call::GetTeeType => {
            println!("{}", client.get_tee_type().await.map_err(sdk)?);
            Ok(())
        }
        Call::GetAdditionalTees => {
            // A JSON list, `[]` for none: one form whatever the count.
            let tees = client.get_additional_tees().await.map_err(sdk)?;
            println!("{}", serde_json::to_string(&tees)?);
            Ok(())
        }
        Call::GetToken { token_type } => {
            print_bytes(&client.get_token(&token_type).await.map_err(sdk)?)
        }
        Call::BindInitData { digest } => {
            let (d, form) = init_data_digest(&digest)?;
            let n = d.len();
            client.bind_init_data(d).await.map_err(sdk)?;
            println!("ok (digest read as {form}, {n} bytes)");
            Ok(())
        }
        Call::ExtendRuntimeMeasurement {
            domain,
            operation,
            content,
            register,
        } => {
            let r = client
                .extend_runtime_measurement(MeasurementEvent {
                    domain,
                    operation,
                    content,
                    register_index: register,
                })
                .await
                .map_err(sdk)?;
            println!("{r}");
            Ok(())
        }
    }
}

/// A digest given as hex or as base64 (init-data digests travel in both forms),
/// and which form it was read as. Hex is tried first: a hex string of a digest's
/// length is never meant as base64.
fn init_data_digest(s: &str) -> Result<(Vec<u8>, &'static str)> {
    use base64::Engine as _;
    if let Ok(d) = hex::decode(s) {
        return Ok((d, "hex"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|d| (d, "base64"))
        .map_err(|_| anyhow!("digest {s:?} is neither hex nor base64"))
}

async fn cmd_eventlog(a: EventlogArgs) -> Result<()> {
    use attestd::eventlog::{record, Layout, Registers as _};
    let config = load_config(&a.config)?;
    let path = a
        .path
        .unwrap_or_else(|| config.eventlog_config.path.clone());
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let records = record::parse(&bytes).map_err(sdk)?;
    let replayed = record::replay(records.iter().map(|(_, r)| r)).map_err(sdk)?;
    // Registers as the plugin reads them, unless told not to start it.
    let mut actual = std::collections::BTreeMap::new();
    let mut check_error = None;
    if !a.no_check {
        let mut one_shot = one_shot_config(&a.config)?;
        one_shot.plugins.additional.clear();
        match run::start_plugins(&one_shot).await {
            Ok(service) => {
                let primary = service.plugins().next().cloned();
                if let Some(p) = primary {
                    let hs = p.identity();
                    match Layout::of(&hs.info.tee, &hs.info.capabilities).map_err(sdk)? {
                        Some(layout) => {
                            for index in replayed.keys() {
                                let register = layout.register_of_index(*index);
                                let v = p.read(register).await.map_err(sdk);
                                actual.insert(*index, v.map(hex::encode));
                            }
                        }
                        None => {
                            check_error = Some(format!("plugin {} cannot read registers", p.name()))
                        }
                    }
                }
                service.stop().await;
                let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
                check_error = Some(e.chain());
            }
        }
    }
    let registers: Vec<serde_json::Value> = replayed
        .iter()
        .map(|(index, value)| {
            let (plugin, matches) = match actual.get(index) {
                Some(Ok(v)) => (
                    serde_json::json!(v),
                    serde_json::json!(*v == hex::encode(value)),
                ),
                Some(Err(e)) => (
                    serde_json::json!({ "error": e.to_string() }),
                    serde_json::Value::Null,
                ),
                None => (serde_json::Value::Null, serde_json::Value::Null),
            };
            serde_json::json!({
                "index": index,
                "replayed": hex::encode(value),
                "plugin": plugin,
                "matches": matches,
            })
        })
        .collect();
    let mismatch = registers.iter().any(|r| r["matches"] == false);
    if a.json {
        let entries: Vec<serde_json::Value> = records
            .iter()
            .map(|(offset, r)| {
                serde_json::json!({
                    "offset": offset,
                    "index": r.index,
                    "event_type": r.event_type,
                    "alg": r.alg.name(),
                    "digest": hex::encode(&r.digest),
                    "text": r.text,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": path,
                "entries": entries,
                "registers": registers,
                "check_error": check_error,
            }))?
        );
    } else {
        for (n, (_, r)) in records.iter().enumerate() {
            let kind = if r.event_type == record::EV_NO_ACTION {
                "INIT "
            } else {
                "EVENT"
            };
            println!(
                "#{n:<4} index {:<3} {kind} {}:{}  {}",
                r.index,
                r.alg.name(),
                hex::encode(&r.digest),
                attestd::echo::escaped(&r.text)
            );
        }
        for r in &registers {
            let verdict = match (&r["plugin"], &r["matches"]) {
                (serde_json::Value::String(_), serde_json::Value::Bool(true)) => {
                    "matches the plugin".to_string()
                }
                (serde_json::Value::String(v), _) => format!("DOES NOT MATCH the plugin's {v}"),
                (serde_json::Value::Object(o), _) => format!("plugin read failed: {}", o["error"]),
                _ => "not checked".to_string(),
            };
            println!(
                "index {} replays to {}: {verdict}",
                r["index"],
                r["replayed"].as_str().unwrap_or_default()
            );
        }
        if let Some(e) = &check_error {
            println!("not checked against the plugin: {e}");
        }
    }
    if mismatch {
        bail!(
            "the event log {} does not replay to the plugin's registers",
            path.display()
        );
    }
    // Asked to check and could not: not a success (--no-check says not to).
    let unread = registers.iter().any(|r| !r["plugin"].is_string());
    if !a.no_check && (check_error.is_some() || unread) {
        bail!(
            "the event log {} could not be checked against the plugin's registers{}",
            path.display(),
            check_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn cmd_select(a: SelectArgs) -> Result<()> {
    let mut config = one_shot_config(&a.config)?;
    if let Some(root) = a.sysroot {
        config.plugins.sysroot = root;
    }
    let plugins = &config.plugins;
    let _lock = attestd::supervisor::claim_socket_dir(&plugins.socket_dir).map_err(sdk)?;
    let sel = attestd::select::select(plugins, &plugins.sysroot, !a.no_confirm, false).await;
    let result = match sel {
        Ok(sel) => {
            if let Some(s) = &sel.supervisor {
                s.stop().await;
            }
            let origin = sel
                .config
                .image
                .clone()
                .or_else(|| sel.config.command.as_ref().map(|c| c.display().to_string()))
                .or_else(|| sel.config.socket.as_ref().map(|c| c.display().to_string()))
                .unwrap_or_default();
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "tee": sel.tee,
                        "plugin": sel.name,
                        "launch": sel.config.launch.as_str(),
                        "image": sel.config.image,
                        "origin": origin,
                        "confirmed": sel.confirmed,
                        "probes": sel.probes,
                        "skipped": sel.skipped,
                    }))?
                );
            } else {
                println!("{} {}", sel.tee, origin);
                for s in &sel.skipped {
                    eprintln!("skipped {}: {}", s.tee, s.why);
                }
            }
            Ok(())
        }
        Err(e) => Err(sdk(e)),
    };
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    result
}

async fn cmd_token(a: TokenArgs) -> Result<()> {
    let config = one_shot_config(&a.config)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let token = service.get_token("kbs").await.map_err(sdk);
    service.stop().await;
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    print_bytes(&token?)
}

async fn cmd_resource(a: ResourceArgs) -> Result<()> {
    let path = attestd::keyprovider::resource_path(&a.uri).map_err(sdk)?;
    let config = one_shot_config(&a.config)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let data = service.kbs_resource(&path).await.map_err(sdk);
    service.stop().await;
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    let data = data?;
    match a.out {
        Some(p) => {
            std::fs::write(&p, &data).with_context(|| format!("cannot write {}", p.display()))
        }
        None => {
            std::io::stdout().lock().write_all(&data)?;
            Ok(())
        }
    }
}

async fn cmd_units(a: UnitsArgs) -> Result<()> {
    use attestd::config::layers;
    // The plugin as configured, not as an earlier run's drop-in turned it
    // (external): rendering again gives the same units.
    let config_dir = a.config.dir()?;
    let mut files = layers::sources(&config_dir, a.config.config_file.as_deref())?;
    files.dir.retain(|f| !attestd::units::is_our_drop_in(f));
    let layered = layers::load(&files, a.config.config_file_source)?;
    let plugins = &layered.config.plugins;
    let name = a
        .plugin
        .clone()
        .or_else(|| plugins.primary.clone())
        .ok_or_else(|| anyhow!("no plugin: set [plugins] primary or pass --plugin"))?;
    if a.at_boot {
        if name != "auto" {
            bail!("--at-boot needs [plugins] primary = \"auto\" (it is {name:?})");
        }
        let units = attestd::units::render_selected_at_boot(&a.attestd, &a.config_path);
        return write_units(&units, a.out_dir.as_deref());
    }
    let (name, pc) = if name == "auto" {
        let mut one_shot = one_shot_config(&a.config)?;
        one_shot.plugins.sysroot = plugins.sysroot.clone();
        let _lock =
            attestd::supervisor::claim_socket_dir(&one_shot.plugins.socket_dir).map_err(sdk)?;
        let sel =
            attestd::select::select(&one_shot.plugins, &one_shot.plugins.sysroot, true, false)
                .await;
        let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
        let sel = sel.map_err(sdk)?;
        if let Some(s) = &sel.supervisor {
            s.stop().await;
        }
        (sel.name, sel.config)
    } else {
        let pc = plugins
            .attester
            .get(&name)
            .cloned()
            .ok_or_else(|| anyhow!("no [plugins.attester.{name}] table in the config"))?;
        (name, pc)
    };
    let spec = PluginSpec::with_config(&name, pc, DeviceRole::Primary, plugins);
    let rendered = attestd::units::render(&attestd::units::UnitParams {
        spec: &spec,
        attestd: &a.attestd,
        config_path: &a.config_path,
        quadlet: a.quadlet,
    })
    .map_err(sdk)?;
    if let Some((file, _)) = &rendered.drop_in {
        refuse_shadowed_drop_in(&layered, &name, file, &a.config_path)?;
    }
    let drop_in_dir = match &a.drop_in_dir {
        Some(d) => d.clone(),
        None => config_dir.join(layers::DROP_IN_DIR),
    };
    if let (Some((file, text)), Some(_)) = (&rendered.drop_in, &a.out_dir) {
        std::fs::create_dir_all(&drop_in_dir)
            .with_context(|| format!("cannot create {}", drop_in_dir.display()))?;
        let path = drop_in_dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    write_units(&rendered.units, a.out_dir.as_deref())?;
    if let (Some((file, text)), None) = (&rendered.drop_in, &a.out_dir) {
        println!("# ---- {}\n{text}", drop_in_dir.join(file).display());
    }
    Ok(())
}

/// A `launch` for the plugin read after the units' drop-in wins over it, and
/// attestd would start a second plugin beside the unit's: say so rather than
/// write units that do that. Read after it are a later drop-in and the `-c`
/// file, when the units pass that same file (`--config-path`).
fn refuse_shadowed_drop_in(
    layered: &attestd::config::layers::Layered,
    name: &str,
    drop_in: &str,
    config_path: &Path,
) -> Result<()> {
    let key = format!("plugins.attester.{name}.launch");
    let Some(from) = layered.origins.get(&key) else {
        return Ok(());
    };
    let is_cli = layered.cli_source.is_some() && layered.files.last() == Some(from);
    let same_as_units = match (from.canonicalize(), config_path.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => from == config_path,
    };
    let later_drop_in = !is_cli
        && from.parent().and_then(Path::file_name)
            == Some(std::ffi::OsStr::new(attestd::config::layers::DROP_IN_DIR))
        && from
            .file_name()
            .is_some_and(|f| f > std::ffi::OsStr::new(drop_in));
    if (is_cli && same_as_units) || later_drop_in {
        bail!(
            "{}: its {key} is read after the drop-in {drop_in} these units need \
             (launch = \"external\"), so attestd would start a second plugin {name} beside \
             its unit: set [plugins.attester.{name}] in the system file or an earlier drop-in",
            from.display()
        );
    }
    Ok(())
}

fn write_units(units: &[(String, String)], out_dir: Option<&Path>) -> Result<()> {
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (file, text) in units {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    for (file, text) in units {
        println!("# ---- {file}\n{text}");
    }
    Ok(())
}

/// `text`, `@file` or `hex:<hex>`.
fn runtime_data(spec: &str) -> Result<Vec<u8>> {
    if let Some(path) = spec.strip_prefix('@') {
        return std::fs::read(Path::new(path))
            .with_context(|| format!("cannot read runtime data from {path}"));
    }
    if let Some(h) = spec.strip_prefix("hex:") {
        return hex::decode(h).context("runtime data after hex: is not hex");
    }
    Ok(spec.as_bytes().to_vec())
}

fn print_bytes(b: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b)?;
    out.write_all(b"\n")?;
    Ok(())
}

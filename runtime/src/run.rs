//! Bringing attestd up and down: plugins first, then the servers, the AA socket
//! last (its existence is the readiness signal kata-agent and systemd wait for).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attester_sdk::{Code, DeviceRole, Error, InitDataBinding, Result};

use crate::config::{Config, LaunchKind};
use crate::control;
use crate::initdata::InitData;
use crate::server::grpc::GrpcServer;
use crate::server::ttrpc;
use crate::server::GrpcAddr;
use crate::service::Service;
pub use crate::socket_files::prepare_socket;
use crate::supervisor::{claim_socket_dir, PluginSpec, Supervisor};

/// Upstream's default AA socket.
pub const DEFAULT_ATTESTATION_SOCK: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";

/// What `attestd run` needs besides the config.
pub struct RunOptions {
    pub config: Config,
    /// `unix:///path` of the ttrpc AA socket.
    pub attestation_sock: String,
    /// The gRPC AA listener, if any.
    pub grpc: Option<GrpcAddr>,
    pub initdata: Option<InitData>,
    /// Go on when the primary cannot bind `initdata` (warned): only for a
    /// start whose `-c` file was read as user-data's because of that
    /// ([`crate::config::scope::UnboundInitData::TreatAsUserData`]). Otherwise
    /// such a start fails with an error [`is_unbound`] recognises.
    pub unbound_tolerated: bool,
    /// `initdata` is attestd-podvm's stand-in for none (cloud-api-adaptor's
    /// dummy): bound where binding extends a register, as those images extend
    /// PCR 8 with it; not compared with a launch-time value (TDX, SNP), which
    /// the host sets only for init-data it was given.
    pub initdata_stand_in: bool,
    /// `attestd reload` (its control socket) and SIGHUP: each request reads the
    /// configuration again with `load` and replaces the plugins whose
    /// configuration changed.
    pub reload: Option<Reload>,
}

/// How a reload reads the configuration again.
pub type Load = dyn Fn() -> Result<Config> + Send + Sync;

/// Where reloads come from, and how the configuration is read again.
pub struct Reload {
    /// SIGHUP's requests (no reply) and the control socket's.
    pub requests: tokio::sync::mpsc::Receiver<control::Request>,
    /// Where the control socket sends its requests.
    pub sender: tokio::sync::mpsc::Sender<control::Request>,
    pub load: Box<Load>,
}

impl Reload {
    /// Requests arrive on a channel of this size; SIGHUPs beyond it fold into
    /// one already waiting (which reads the configuration after them).
    pub const QUEUE: usize = 8;

    /// A reload source reading the configuration with `load`.
    pub fn new(load: Box<Load>) -> Reload {
        let (sender, requests) = tokio::sync::mpsc::channel(Self::QUEUE);
        Reload {
            requests,
            sender,
            load,
        }
    }
}

/// Start the configured plugins: the primary, then the additional ones. No plugin
/// configured is an error: attestd never falls back to the sample attester.
/// Start the plugins and open the event log, in the order [`run`] uses
/// without init-data to bind: [`start_primary`], then [`start_rest`].
pub async fn start_plugins(config: &Config) -> Result<Service> {
    let mut service = start_primary(config).await?;
    if let Err(e) = start_rest(&mut service, config).await {
        service.stop().await;
        return Err(e);
    }
    Ok(service)
}

/// What starts before init-data is bound: the socket directory's lock and the
/// primary plugin (how it launches is the image's: init-data sets no launch
/// key), which binds it. The event log's default directory is made now, as
/// it is not init-data's choice and a container plugin is bound only what
/// exists at its launch; any other directory, the log itself (which extends
/// registers) and the additional plugins wait for [`start_rest`].
pub async fn start_primary(config: &Config) -> Result<Service> {
    let plugins = &config.plugins;
    // Nothing configured anywhere (a pod VM image without its plugin file, and
    // upstream's aa.toml): select from the image list, never the sample unasked.
    let defaulted = plugins.primary.is_none() && plugins.attester.is_empty();
    let primary = match &plugins.primary {
        Some(p) => p.as_str(),
        None if defaulted => {
            tracing::info!(
                images_lock = %plugins.images_lock.display(),
                "no attester plugin configured: selecting one for this platform (primary = \"auto\")"
            );
            "auto"
        }
        None => {
            return Err(Error::failed_precondition(
                "no primary attester plugin configured: set [plugins] primary = \"<name>\" (or \
                 \"auto\") for the [plugins.attester.<name>] tables of the config; attestd does \
                 not fall back to the sample attester",
            ))
        }
    };
    let lock = claim_socket_dir(&plugins.socket_dir)?;
    if log_dir_before_launch(config) {
        crate::eventlog::prepare_dir(&config.eventlog_config.path)?;
    }
    let uses = |k| plugins.attester.values().any(|p| p.launch == k);
    if uses(LaunchKind::Podman) {
        crate::launch::podman::remove_stale(&plugins.socket_dir).await?;
    }
    if uses(LaunchKind::Oci) {
        crate::launch::oci::remove_stale(&plugins.oci_dir).await;
    }
    let spec = |name: &str, role| {
        PluginSpec::new(name, role, plugins).map(|mut s| {
            s.record_provenance = config.eventlog_config.enable_eventlog;
            s
        })
    };
    let primary = if primary == "auto" {
        let record = config.eventlog_config.enable_eventlog;
        let settle = std::time::Duration::from_millis(plugins.no_tee_settle_ms);
        let sel = crate::select::select(plugins, &plugins.sysroot, true, record, settle)
            .await
            .map_err(|e| {
                if defaulted {
                    e.context(
                        "no attester plugin configured (in -c, the config directory's \
                         attestd.toml or its drop-ins: `attestd config` lists the files read), \
                         so one is selected from the image list; attestd does not fall back to \
                         the sample attester",
                    )
                } else {
                    e
                }
            })?;
        for s in &sel.skipped {
            tracing::info!(tee = %s.tee, "selection skipped it: {}", s.why);
        }
        tracing::info!(tee = %sel.tee, plugin = %sel.name, "selected");
        match sel.supervisor {
            Some(s) => s,
            // The sample is taken unconfirmed (it detects nothing): start it now.
            None => {
                let mut spec =
                    PluginSpec::with_config(&sel.name, sel.config, DeviceRole::Primary, plugins);
                spec.record_provenance = record;
                Supervisor::start(spec).await?
            }
        }
    } else {
        Supervisor::start(spec(primary, DeviceRole::Primary)?).await?
    };
    Ok(Service::new(lock, primary, Vec::new(), config))
}

/// Whether the event log's directory is made before the primary launches: only
/// upstream's default (`/run/attestation-agent`, which a containerised TDX
/// plugin is bound read-only), never a path from configuration.
fn log_dir_before_launch(config: &Config) -> bool {
    let log = &config.eventlog_config;
    log.enable_eventlog && log.path.parent() == Path::new(crate::eventlog::DEFAULT_PATH).parent()
}

/// What init-data may configure, once it is bound (or there is none): the
/// additional plugins, and the event log (its directory, its file, and the
/// registers its opening entries extend). On an error the caller stops
/// `service`.
pub async fn start_rest(service: &mut Service, config: &Config) -> Result<()> {
    let plugins = &config.plugins;
    for name in &plugins.additional {
        let mut spec = PluginSpec::new(name, DeviceRole::Additional, plugins)?;
        spec.record_provenance = config.eventlog_config.enable_eventlog;
        service.add_additional(Supervisor::start(spec).await?);
    }
    service.open_eventlog().await
}

/// Serve the AA API until `shutdown` resolves, then remove sockets and stop plugins.
pub async fn run(mut opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let sock = unix_path(&opts.attestation_sock)?;
    crate::server::accept::raise_nofile_limit();
    // A mistyped KBS or AS address is found now, not at the first GetToken.
    check_token_configs(&opts.config)?;
    // So is a gRPC listener that this build cannot serve.
    if let Some(addr) = &opts.grpc {
        GrpcServer::can_serve("AA API", addr)?;
    }
    if let Some(addr) = &opts.config.keyprovider.grpc {
        GrpcServer::can_serve("key provider", addr)?;
    }
    // Refuse before launching anything when another server holds the socket.
    prepare_socket(&sock)?;
    // SIGTERM is honoured during start-up too (a plugin may take its whole
    // startup timeout): what was started dies with the dropped future.
    let mut shutdown = std::pin::pin!(shutdown);
    let mut service = tokio::select! {
        s = start_primary(&opts.config) => s?,
        () = &mut shutdown => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    let initdata = match &opts.initdata {
        Some(_)
            if opts.initdata_stand_in && service.primary_binding() != InitDataBinding::Extend =>
        {
            // Nothing to compare it with, and it configures nothing (an empty
            // aa.toml): not bound, and the KBS is not sent it either.
            tracing::info!(
                tee = %service.get_tee_type(),
                "init-data is the stand-in for none: not bound (only a register it extends takes it)"
            );
            None
        }
        given => given.clone(),
    };
    service.set_initdata(initdata);
    // The binding comes first: until the TEE has compared (or extended) the
    // digest, the init-data's configuration is only the host's word, and acts
    // on nothing — no directory made, no register extended, no plugin started.
    let rest = async {
        if let Some(init) = service.initdata().cloned() {
            bind_init_data(&service, &init, opts.unbound_tolerated).await?;
        }
        start_rest(&mut service, &opts.config).await
    };
    let started = tokio::select! {
        r = rest => Some(r),
        () = &mut shutdown => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            service.stop().await;
            return Err(e);
        }
        None => {
            tracing::info!("stopped during start-up");
            service.stop().await;
            return Ok(());
        }
    }
    let service = Arc::new(service);
    let reload = opts.reload.take();
    let served = serve(&service, &opts, &sock, shutdown, reload).await;
    // Already done by serve once it served; here for its early errors.
    service.stop().await;
    served
}

async fn serve(
    service: &Arc<Service>,
    opts: &RunOptions,
    sock: &Path,
    shutdown: impl Future<Output = ()>,
    reload: Option<Reload>,
) -> Result<()> {
    let mut grpc = match &opts.grpc {
        Some(addr) => {
            let s = GrpcServer::start("AA API", crate::server::grpc::router(service.clone()), addr)
                .await?;
            tracing::info!(%addr, "serving the AA API over gRPC");
            if let GrpcAddr::Tcp(_) = addr {
                // A TCP port has no owner or mode: the ttrpc socket's permissions
                // do not protect it.
                tracing::warn!(
                    %addr,
                    "the AA API is open on TCP: any process on this machine, whatever its user, can ask it for evidence, tokens and keys; prefer --grpc_sock unix:///path"
                );
            }
            Some(s)
        }
        None => None,
    };
    let mut kp = match start_keyprovider(service, &opts.config.keyprovider).await {
        Ok(kp) => kp,
        Err(e) => {
            if let Some(g) = grpc {
                g.stop().await;
            }
            return Err(e);
        }
    };
    // `run` prepared the AA socket before starting the plugins.
    let ttrpc_server = ttrpc::start(service.clone(), sock).await?;
    tracing::info!(socket = %sock.display(), tee = %service.get_tee_type(), "attestd ready");
    let mut reloads = Reloads::new(reload, service, &opts.config);
    // Until asked to stop, or until a part that should run as long as attestd
    // ends on its own: then attestd exits non-zero (systemd and kata restart it),
    // rather than stay "ready" with a dead listener or an unsupervised plugin.
    // A reload runs beside this loop, never inside it: a stop is seen at once,
    // whatever a reload is waiting for.
    let mut shutdown = std::pin::pin!(shutdown);
    let broken = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            e = ended(&mut grpc) => break Some(e),
            e = ended(&mut kp.grpc) => break Some(e),
            e = service.supervisor_ended() => break Some(e),
            () = reloads.step() => {}
        }
    };
    drop(reloads);
    match &broken {
        None => tracing::info!("shutting down"),
        Some(e) => tracing::error!("{}: shutting down", e.chain()),
    }
    // Everything at once, within one bound: listeners close, in-flight calls get
    // what is left of it, plugins get SIGTERM (they used to be stopped one after
    // another, each with its own grace).
    let bound = opts.config.plugins.shutdown_timeout();
    let all = async {
        tokio::join!(
            ttrpc_server.shutdown(),
            kp.stop(),
            async {
                if let Some(g) = grpc {
                    g.stop().await;
                }
            },
            service.stop(),
        )
    };
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!("shutdown took over {bound:?}: dropping what is left");
        // Plugins die with attestd (PR_SET_PDEATHSIG); its sockets go now.
        let _ = crate::socket_files::remove_socket(sock);
        if let Some(GrpcAddr::Unix(p)) = &opts.grpc {
            let _ = crate::socket_files::remove_socket(p);
        }
    }
    broken.map_or(Ok(()), Err)
}

/// Reloads as they are asked for: one at a time, beside the serving loop. A
/// request that arrives while one runs waits for the next, which reads the
/// configuration after it; every request waiting then shares that one.
struct Reloads {
    /// Where requests come from, and how the configuration is read (none
    /// without a reload source).
    source: Option<(tokio::sync::mpsc::Receiver<control::Request>, Arc<Load>)>,
    service: Arc<Service>,
    running: Option<futures::future::BoxFuture<'static, control::Report>>,
    /// Who waits for the running reload's report.
    answering: Vec<tokio::sync::oneshot::Sender<control::Report>>,
    /// Requests for the next one (their replies; `None` for a SIGHUP).
    next: Option<Vec<tokio::sync::oneshot::Sender<control::Report>>>,
    /// The control socket's server, stopped (and its socket removed) on drop.
    control: Option<(tokio::task::JoinHandle<()>, PathBuf)>,
    /// The configuration attestd started with: what a reload cannot change.
    started: Arc<Config>,
}

impl Reloads {
    fn new(reload: Option<Reload>, service: &Arc<Service>, started: &Config) -> Reloads {
        let socket_dir = &started.plugins.socket_dir;
        let (source, control) = match reload {
            Some(r) => {
                let control = match control::listen(socket_dir) {
                    Ok(l) => Some((
                        tokio::spawn(control::serve(l, r.sender)),
                        control::socket(socket_dir),
                    )),
                    Err(e) => {
                        // SIGHUP still reloads; `attestd reload` says it cannot ask.
                        tracing::warn!("attestd reload cannot reach this attestd: {}", e.chain());
                        None
                    }
                };
                (Some((r.requests, Arc::from(r.load))), control)
            }
            None => (None, None),
        };
        Reloads {
            source,
            service: service.clone(),
            running: None,
            answering: Vec::new(),
            next: None,
            control,
            started: Arc::new(started.clone()),
        }
    }

    /// Take a request, or finish the running reload (answering its waiters and
    /// starting the next if one was asked for); never resolves when there is
    /// nothing to do.
    async fn step(&mut self) {
        let source = &mut self.source;
        let next_request = async {
            match source {
                Some((r, _)) => match r.recv().await {
                    Some(req) => req,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let running = &mut self.running;
        let finished = async {
            match running {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            req = next_request => {
                self.next.get_or_insert_with(Vec::new).extend(req.reply);
            }
            report = finished => {
                self.running = None;
                for w in self.answering.drain(..) {
                    let _ = w.send(report.clone());
                }
            }
        }
        if self.running.is_none() {
            if let (Some(waiting), Some((_, load))) = (self.next.take(), &self.source) {
                self.answering = waiting;
                self.running = Some(Box::pin(reload_plugins(
                    self.service.clone(),
                    load.clone(),
                    self.started.clone(),
                )));
            }
        }
    }
}

impl Drop for Reloads {
    fn drop(&mut self) {
        if let Some((task, path)) = self.control.take() {
            task.abort();
            let _ = crate::socket_files::remove_socket(&path);
        }
    }
}

/// Read the configuration again and replace what changed; every outcome logged
/// and reported. A configuration that does not read changes nothing.
async fn reload_plugins(
    service: Arc<Service>,
    load: Arc<Load>,
    started: Arc<Config>,
) -> control::Report {
    tracing::info!("reload: reading the configuration again");
    let config = match load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                "reload: the configuration does not read, nothing changes: {}",
                e.chain()
            );
            return control::Report::failed(format!(
                "the configuration does not read, nothing changes: {}",
                e.chain()
            ));
        }
    };
    let mut report = control::Report::default();
    for (plugin, outcome) in service.reload(&config).await {
        match &outcome {
            crate::service::ReloadOutcome::Unchanged => {
                tracing::info!(%plugin, "reload: unchanged")
            }
            crate::service::ReloadOutcome::Replaced(r) => tracing::info!(
                %plugin,
                old_pid = r.old_pid,
                new_pid = r.new_pid,
                "reload: replaced"
            ),
            crate::service::ReloadOutcome::Kept(why) => {
                tracing::error!(%plugin, "reload: not replaced: {why}")
            }
        }
        report
            .plugins
            .push(control::PluginReport::new(plugin, outcome));
    }
    report.pending = pending_keys(&started, &config);
    if report.pending.is_empty() {
        tracing::info!("reload: done");
    } else {
        tracing::warn!(
            keys = %report.pending.join(", "),
            "reload: done; these keys changed, and only a restart applies them"
        );
    }
    report
}

/// Keys listed as waiting for a restart at most (the rest are counted).
pub const MAX_PENDING_KEYS: usize = 32;

/// The keys whose values in `new` differ from those attestd `started` with and
/// that a reload does not apply: all but `[plugins]`, which it does (its
/// plugins are replaced on the new tables, with the new timeouts), save
/// `[plugins] socket_dir`, where the running attestd already is. Dotted paths,
/// at most [`MAX_PENDING_KEYS`].
pub fn pending_keys(started: &Config, new: &Config) -> Vec<String> {
    let (Ok(mut a), Ok(mut b)) = (serde_json::to_value(started), serde_json::to_value(new)) else {
        return Vec::new();
    };
    for v in [&mut a, &mut b] {
        if let Some(p) = v.get_mut("plugins").and_then(|p| p.as_object_mut()) {
            p.retain(|k, _| k == "socket_dir");
        }
    }
    changed_keys(&a, &b)
}

/// The dotted paths where `a` and `b` differ, at most [`MAX_PENDING_KEYS`]
/// (then "(and N more)").
fn changed_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &sub,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(path.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    if out.len() > MAX_PENDING_KEYS {
        let more = out.len() - MAX_PENDING_KEYS;
        out.truncate(MAX_PENDING_KEYS);
        out.push(format!("(and {more} more)"));
    }
    out
}

/// [`GrpcServer::ended`] of a server that may not be configured (then never).
async fn ended(server: &mut Option<GrpcServer>) -> Error {
    match server {
        Some(s) => s.ended().await,
        None => std::future::pending().await,
    }
}

/// The key provider's servers, when configured.
struct KeyProviderServers {
    ttrpc: Option<ttrpc::TtrpcServer>,
    grpc: Option<GrpcServer>,
}

impl KeyProviderServers {
    async fn stop(self) {
        if let Some(s) = self.ttrpc {
            s.shutdown().await;
        }
        if let Some(g) = self.grpc {
            g.stop().await;
        }
    }
}

async fn start_keyprovider(
    service: &Arc<Service>,
    cfg: &crate::config::KeyProviderConfig,
) -> Result<KeyProviderServers> {
    use crate::server::keyprovider;
    let mut servers = KeyProviderServers {
        ttrpc: None,
        grpc: None,
    };
    if let Some(addr) = &cfg.grpc {
        let addr: GrpcAddr = addr.parse().map_err(|e: String| {
            Error::invalid_argument(format!("[keyprovider] grpc = {addr:?}: {e}"))
        })?;
        let router = keyprovider::grpc_router(service.clone());
        servers.grpc = Some(GrpcServer::start("key provider", router, &addr).await?);
        tracing::info!(%addr, "serving the key provider over gRPC");
        if let GrpcAddr::Tcp(_) = addr {
            // As the AA API's TCP listener: no owner or mode protects a port.
            tracing::warn!(
                %addr,
                "the key provider is open on TCP: any process on this machine, whatever its user, can have it unwrap image keys through the KBS; prefer [keyprovider] grpc = \"unix:///path\""
            );
        }
    }
    if let Some(addr) = &cfg.ttrpc {
        let path = addr
            .strip_prefix("unix://")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "[keyprovider] ttrpc = {addr:?}: expected unix:///path"
                ))
            });
        let path = match path {
            Ok(p) => Path::new(p),
            Err(e) => {
                servers.stop().await;
                return Err(e);
            }
        };
        let started = async {
            prepare_socket(path)?;
            keyprovider::start_ttrpc(service.clone(), path).await
        };
        match started.await {
            Ok(t) => servers.ttrpc = Some(t),
            Err(e) => {
                servers.stop().await;
                return Err(e);
            }
        }
        tracing::info!(socket = %path.display(), "serving the key provider over ttrpc");
    }
    Ok(servers)
}

/// The KBS (config, `AA_KBC_PARAMS` or kernel command line) and attestation-service
/// URLs and the KBS's `tee_key_algorithm`, checked at start as their clients will
/// check them at the first GetToken. The KBS's root certificate is checked as
/// upstream checks it, at the first contact (GetToken, a resource), with the
/// error that caller gets; at start a bad one is only warned of, so the AA API
/// (evidence) still serves.
pub fn check_token_configs(config: &Config) -> Result<()> {
    let kbs = config.token_configs.kbs.as_ref();
    if let Some(url) = crate::kbs::kbs_url(kbs.map(|k| k.url.as_str())) {
        crate::kbs::check_url("KBS", &url, kbs.is_some_and(|k| k.allow_insecure_http))?;
        if let Some(pem) = kbs.and_then(|k| k.cert.as_deref()) {
            if let Err(e) = crate::kbs::root_certs("KBS", pem) {
                tracing::warn!(
                    "{}: GetToken(\"kbs\") and KBS resources fail with this until it is fixed",
                    e.chain()
                );
            }
        }
    }
    if let Some(alg) = kbs.and_then(|k| k.tee_key_algorithm.as_deref()) {
        crate::kbs::tee_key::check_algorithm(alg)?;
    }
    if let Some(a) = &config.token_configs.coco_as {
        crate::kbs::check_url("attestation service", &a.url, a.allow_insecure_http)?;
    }
    Ok(())
}

/// Whether Trustee's TPM verifier would be handed init-data it cannot take: it
/// fails on SHA-384 and SHA-512 init-data (measured against Trustee), so a TPM
/// guest that talks to a KBS should use SHA-256.
pub fn trustee_tpm_initdata_warning(
    tee: &str,
    kbs: Option<&str>,
    init: &InitData,
) -> Option<String> {
    let alg = init.algorithm.as_deref()?;
    (tee == "tpm" && kbs.is_some() && matches!(alg, "sha384" | "sha512")).then(|| {
        format!(
            "init-data is {alg}, and Trustee's TPM verifier fails on SHA-384 and SHA-512 \
             init-data: write the init-data document with algorithm = \"sha256\" \
             (docs/attesters/tpm.md)"
        )
    })
}

/// The mark of a start whose init-data the primary cannot bind (the message
/// says it all: this adds nothing to it).
#[derive(Debug, thiserror::Error)]
#[error("")]
struct Unbound;

/// Whether `e` is a start refused because nothing binds its init-data (the
/// caller may start again with the `-c` file read as user-data's).
pub fn is_unbound(e: &Error) -> bool {
    e.caused_by::<Unbound>()
}

/// Bind init-data through the primary plugin: a mismatch aborts the start, and
/// so does a plugin that cannot bind, unless that is `tolerated`.
async fn bind_init_data(service: &Service, init: &InitData, tolerated: bool) -> Result<()> {
    let kbs = crate::kbs::kbs_url(service.token_configs().kbs.as_ref().map(|k| k.url.as_str()));
    if let Some(w) = trustee_tpm_initdata_warning(&service.get_tee_type(), kbs.as_deref(), init) {
        tracing::warn!("{w}");
    }
    match service.bind_init_data(init.digest.clone()).await {
        Ok(()) => {
            tracing::info!(digest = %hex::encode(&init.digest), "init-data bound");
            Ok(())
        }
        Err(e) if e.code() == Code::Unsupported && tolerated => {
            tracing::warn!(
                "init-data not bound ({}): the -c file was read as user-data's",
                e.chain()
            );
            Ok(())
        }
        Err(e) if e.code() == Code::Unsupported => {
            let why = e.chain();
            Err(Error::failed_precondition(format!(
                "init-data was given, but the primary plugin cannot bind it into its evidence \
                 ({why}): nothing measures it, so it may not configure what is trusted. Start \
                 without init-data, or let the image's configuration take it as user-data \
                 ([config_file] unbound_init_data = \"treat-as-user-data\")"
            ))
            .with_source(Unbound))
        }
        Err(e) => Err(e.context("init-data binding failed")),
    }
}

/// The path of a `unix://` address.
pub fn unix_path(addr: &str) -> Result<PathBuf> {
    addr.strip_prefix("unix://")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "--attestation_sock {addr:?}: expected unix:///path/to/socket"
            ))
        })
}

#[cfg(test)]
mod tests {
    /// MAX_PENDING_KEYS at its bound: 32 changed keys are all named; 33 are
    /// 32 and a count.
    #[test]
    fn pending_keys_are_listed_up_to_their_bound() {
        let with = |n: usize, v: u64| {
            serde_json::Value::Object(
                (0..n)
                    .map(|i| (format!("k{i:02}"), serde_json::json!({ "x": v })))
                    .collect(),
            )
        };
        let at = super::changed_keys(
            &with(super::MAX_PENDING_KEYS, 1),
            &with(super::MAX_PENDING_KEYS, 2),
        );
        assert_eq!(at.len(), super::MAX_PENDING_KEYS);
        assert_eq!(at[0], "k00.x");
        let past = super::changed_keys(
            &with(super::MAX_PENDING_KEYS + 1, 1),
            &with(super::MAX_PENDING_KEYS + 1, 2),
        );
        assert_eq!(past.len(), super::MAX_PENDING_KEYS + 1);
        assert_eq!(past[super::MAX_PENDING_KEYS], "(and 1 more)");
        assert!(super::changed_keys(&with(3, 1), &with(3, 1)).is_empty());
    }

    use super::*;

    #[test]
    fn only_the_default_event_log_directory_is_made_before_the_launch() {
        let with = |extra: &str| {
            Config::parse(&format!(
                "[eventlog_config]\nenable_eventlog = true\n{extra}\n\n[plugins]\nprimary = \"x\"\n\n\
                 [plugins.attester.x]\nlaunch = \"process\"\ncommand = \"/x\"\ntransport = \"ttrpc\"\n"
            ))
            .unwrap()
        };
        assert!(log_dir_before_launch(&with("")));
        assert!(log_dir_before_launch(&with(
            "path = \"/run/attestation-agent/other-name\""
        )));
        assert!(!log_dir_before_launch(&with(
            "path = \"/etc/evil/eventlog\""
        )));
        let mut off = with("");
        off.eventlog_config.enable_eventlog = false;
        assert!(!log_dir_before_launch(&off));
    }

    /// Issue 41 (high): a path from configuration (init-data's, in a pod VM)
    /// is made only once the primary started and init-data is bound: a primary
    /// that cannot start leaves nothing behind.
    #[tokio::test]
    async fn a_configured_event_log_directory_waits_for_the_primary() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("attestation-agent");
        let text = |primary: &str| {
            format!(
                "[eventlog_config]\nenable_eventlog = true\npath = {:?}\n\n\
                 [plugins]\nprimary = \"x\"\nsocket_dir = {:?}\nstartup_timeout_ms = 2000\n\n\
                 [plugins.attester.x]\nlaunch = \"process\"\ncommand = {primary:?}\n\
                 transport = \"ttrpc\"\n",
                dir.join("eventlog").display().to_string(),
                t.path().join("plugins").display().to_string(),
            )
        };
        let config = Config::parse(&text("/nonexistent/attester")).unwrap();
        assert!(start_primary(&config).await.is_err());
        assert!(!dir.exists());
    }

    /// Issue 41 (medium): a reload that cannot apply a key says which.
    #[test]
    fn keys_only_a_restart_applies_are_listed() {
        let base = "[plugins]\nprimary = \"x\"\n\n[plugins.attester.x]\nlaunch = \"process\"\n\
                    command = \"/x\"\ntransport = \"ttrpc\"\n";
        let a = Config::parse(base).unwrap();
        assert!(pending_keys(&a, &a).is_empty());
        let b = Config::parse(&format!(
            "[token_configs.kbs]\nurl = \"https://kbs.example\"\n\n[keyprovider]\n\
             grpc = \"127.0.0.1:50000\"\n\n{}",
            base.replace("/x", "/y")
        ))
        .unwrap();
        let pending = pending_keys(&a, &b);
        assert!(
            pending.contains(&"token_configs.kbs".to_string()),
            "{pending:?}"
        );
        assert!(
            pending.contains(&"keyprovider.grpc".to_string()),
            "{pending:?}"
        );
        // The plugins' tables are what a reload applies.
        assert!(
            !pending.iter().any(|k| k.starts_with("plugins")),
            "{pending:?}"
        );
        let moved = Config::parse(&base.replace(
            "primary = \"x\"",
            "primary = \"x\"\nsocket_dir = \"/elsewhere\"",
        ))
        .unwrap();
        assert_eq!(pending_keys(&a, &moved), ["plugins.socket_dir"]);
    }

    #[test]
    fn unix_path_parses() {
        assert_eq!(
            unix_path("unix:///a/b.sock").unwrap(),
            PathBuf::from("/a/b.sock")
        );
        let e = unix_path("/a/b.sock").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(unix_path("unix://").is_err());
    }

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x/aa.sock");
        prepare_socket(&p).unwrap();
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = prepare_socket(&p).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e
            .message()
            .starts_with("another process is already serving on"));
        drop(l);
        // The file stays behind, nothing listens: stale.
        assert!(p.exists());
        prepare_socket(&p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn sha384_init_data_for_a_tpm_with_a_kbs_is_warned_about() {
        let init = |alg: &str| InitData {
            digest: vec![0; 48],
            toml: None,
            algorithm: Some(alg.into()),
        };
        let kbs = Some("https://kbs.example");
        assert!(trustee_tpm_initdata_warning("tpm", kbs, &init("sha384"))
            .unwrap()
            .contains("algorithm = \"sha256\""));
        assert!(trustee_tpm_initdata_warning("tpm", kbs, &init("sha512")).is_some());
        assert!(trustee_tpm_initdata_warning("tpm", kbs, &init("sha256")).is_none());
        assert!(trustee_tpm_initdata_warning("tdx", kbs, &init("sha384")).is_none());
        assert!(trustee_tpm_initdata_warning("tpm", None, &init("sha384")).is_none());
    }

    #[tokio::test]
    async fn no_plugin_configured_selects_from_the_image_list_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.plugins.socket_dir = d.path().join("plugins");
        c.plugins.images_lock = d.path().join("images.lock");
        c.plugins.sysroot = d.path().to_path_buf();
        let e = start_plugins(&c).await.err().unwrap();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let s = e.chain();
        assert!(s.starts_with("no attester plugin configured"), "{s}");
        assert!(s.contains("so one is selected from the image list"), "{s}");
        assert!(s.contains("no TEE selected under"), "{s}");
        // Marked as such under the context, and the mark prints nothing.
        assert!(crate::select::is_no_tee(&e));
        assert!(!s.ends_with(": "), "{s}");
        assert!(!crate::select::is_no_tee(&Error::failed_precondition(
            s.clone()
        )));
        assert!(
            s.contains("does not fall back to the sample attester"),
            "{s}"
        );
    }
}

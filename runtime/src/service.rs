//! The AA service written against domain types. The ttrpc and gRPC adapters are
//! thin translations onto these methods; errors map to statuses in one place
//! (`attester_sdk::status`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use attester_sdk::{Code, Error, InitDataBinding, ReportData, Result};

use crate::config::{Config, EventlogConfig, TokenConfigs};
use crate::eventlog::{EventLog, HashAlg, Layout};
use crate::kbs::{Fetched, KbsSession, Reuse, Sessions};
use crate::launch::PluginSpec;
use crate::supervisor::{SocketDirLock, Supervisor};

/// The event-log domain and operation of attestd's own entries.
pub const IDENTITY_DOMAIN: &str = "github.com/confidential-containers/attestd";

/// A client's event-log domain: ASCII (a domain name and path; a homoglyph of
/// another's cannot pass), and not attestd's own, nor under it, however
/// written (case, a scheme, `www.`, percent-encoding, doubled or trailing
/// slashes).
pub fn check_domain(domain: &str) -> Result<()> {
    if !domain.is_ascii() {
        return Err(Error::invalid_argument(format!(
            "domain {} is not ASCII: a domain is a host name and a path",
            crate::echo::quoted(domain)
        )));
    }
    let decoded = percent_encoding::percent_decode_str(domain).decode_utf8_lossy();
    let lower = decoded.to_ascii_lowercase();
    let mut d = lower.as_str();
    for prefix in ["https://", "http://", "www."] {
        d = d.strip_prefix(prefix).unwrap_or(d);
    }
    let parts: Vec<&str> = d.split('/').filter(|p| !p.is_empty()).collect();
    let normal = parts.join("/");
    let reserved = IDENTITY_DOMAIN;
    if normal == reserved || normal.starts_with(&format!("{reserved}/")) {
        return Err(Error::invalid_argument(format!(
            "domain {IDENTITY_DOMAIN:?} is reserved for attestd's own entries"
        )));
    }
    Ok(())
}
pub const IDENTITY_OPERATION: &str = "LoadAttester";

/// A client's entry may not carry attestd's own operation, whatever its
/// domain: the reservation is structural (a verifier tells attestd's identity
/// entries by their operation, which no client can write), where a list of
/// look-alike domains (`github.com./…`, `github.com:443/…`, a leading space,
/// `/./`, backslashes) could never be complete. Compared letters and digits
/// only, without case, so `loadattester` or `Load-Attester ` is refused too.
pub fn check_operation(operation: &str) -> Result<()> {
    let letters: String = operation
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if letters == IDENTITY_OPERATION.to_ascii_lowercase() {
        return Err(Error::invalid_argument(format!(
            "operation {} is attestd's own (its identity entries), which no client may write",
            crate::echo::quoted(operation)
        )));
    }
    Ok(())
}

/// `ExtendRuntimeMeasurement`'s result, as upstream's enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasurementResult {
    Ok,
    NotSupported,
    NotEnabled,
}

/// As the CLI prints it: lowercase, like its other answers.
impl std::fmt::Display for MeasurementResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeasurementResult::Ok => "ok",
            MeasurementResult::NotSupported => "not supported",
            MeasurementResult::NotEnabled => "not enabled",
        })
    }
}

/// One `ExtendRuntimeMeasurement` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementEvent {
    pub domain: String,
    pub operation: String,
    pub content: String,
    pub register_index: Option<u64>,
}

/// What `attestd reload` did to one plugin.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Its configuration did not change.
    Unchanged,
    /// A new instance serves; the old one is stopped once its calls finish.
    Replaced(crate::supervisor::Replaced),
    /// It keeps running as it was: the reason the new configuration was not taken.
    Kept(String),
}

/// Whether two plugin configurations start the same plugin.
fn same_config(a: &crate::config::PluginConfig, b: &crate::config::PluginConfig) -> bool {
    // Every field matters (a changed env or device list is a different plugin);
    // the serialized form compares them all without a PartialEq to keep up.
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

pub struct Service {
    _lock: SocketDirLock,
    primary: Arc<Supervisor>,
    additional: Vec<Arc<Supervisor>>,
    tokens: TokenConfigs,
    eventlog_config: EventlogConfig,
    /// Open when enabled and the primary plugin can extend and read back.
    eventlog: Option<EventLog<Supervisor>>,
    /// Plugin name → the launch instance whose identity is in the log (0: none),
    /// one lock per plugin: a plugin that is restarting holds up only the calls
    /// that need it.
    measured: HashMap<String, tokio::sync::Mutex<u64>>,
    initdata: Option<crate::initdata::InitData>,
    keyprovider: crate::config::KeyProviderConfig,
    /// The last RCAR session: reused for resources, and for GetToken("kbs") when
    /// `reuse_token_secs` is set; never held across a resource fetch.
    kbs_sessions: Sessions,
}

impl Service {
    pub fn new(
        lock: SocketDirLock,
        primary: Arc<Supervisor>,
        additional: Vec<Arc<Supervisor>>,
        config: &Config,
    ) -> Self {
        let measured = std::iter::once(&primary)
            .chain(additional.iter())
            .map(|s| (s.name().to_string(), tokio::sync::Mutex::new(0)))
            .collect();
        Service {
            _lock: lock,
            primary,
            additional,
            tokens: config.token_configs.clone(),
            eventlog_config: config.eventlog_config.clone(),
            eventlog: None,
            measured,
            initdata: None,
            keyprovider: config.keyprovider.clone(),
            kbs_sessions: Sessions::default(),
        }
    }

    /// An additional plugin started after the primary (init-data bound).
    pub fn add_additional(&mut self, s: Arc<Supervisor>) {
        self.measured
            .insert(s.name().to_string(), tokio::sync::Mutex::new(0));
        self.additional.push(s);
    }

    /// Open the event log when enabled (settling a crash's pending entry) and record
    /// every plugin's identity before anything is served.
    pub async fn open_eventlog(&mut self) -> Result<()> {
        let cfg = &self.eventlog_config;
        if !cfg.enable_eventlog {
            return Ok(());
        }
        let hs = self.primary.identity();
        let Some(layout) = Layout::of(&hs.info.tee, &hs.info.capabilities)? else {
            tracing::warn!(
                plugin = %self.primary.name(),
                "event log enabled, but the primary plugin cannot extend and read registers: \
                 ExtendRuntimeMeasurement answers NOT_SUPPORTED and no identity is recorded"
            );
            return Ok(());
        };
        if let Some(want) = &cfg.eventlog_algorithm {
            if HashAlg::parse(want)? != layout.alg {
                return Err(Error::failed_precondition(format!(
                    "[eventlog_config] eventlog_algorithm = {want:?}, but plugin {} measures with {}",
                    self.primary.name(),
                    layout.alg.name()
                )));
            }
        }
        let log = EventLog::open(&cfg.path, cfg.init_pcr, layout, self.primary.clone())
            .await
            .map_err(|e| e.context("cannot open the event log"))?;
        tracing::info!(path = %log.path().display(), "event log open");
        self.eventlog = Some(log);
        let measured = self.measure(self.plugins()).await;
        if measured.is_err() {
            if let Some(log) = &self.eventlog {
                log.abandon().await;
            }
        }
        measured
    }

    /// Record the identity of each of `plugins` whose running instance is not yet
    /// in the log (at start, and after a restart, before that instance serves
    /// anything). Each plugin is waited for under its own lock, so a plugin that is
    /// down delays only the calls that need it.
    async fn measure<'a>(
        &self,
        plugins: impl IntoIterator<Item = &'a Arc<Supervisor>>,
    ) -> Result<()> {
        let Some(log) = &self.eventlog else {
            return Ok(());
        };
        for s in plugins {
            let Some(slot) = self.measured.get(s.name()) else {
                continue;
            };
            let mut measured = slot.lock().await;
            let live = s
                .live()
                .await
                .map_err(|e| e.context(format!("plugin {}", s.name())))?;
            if *measured == live.instance {
                continue;
            }
            let content = identity_content(s.name(), &live.handshake.info, &live.provenance);
            log.record(IDENTITY_DOMAIN, IDENTITY_OPERATION, &content, None)
                .await
                .map_err(|e| {
                    e.context(format!(
                        "cannot record plugin {}'s identity in the event log",
                        s.name()
                    ))
                })?;
            tracing::info!(plugin = %s.name(), %content, "plugin identity recorded");
            *measured = live.instance;
        }
        Ok(())
    }

    /// `attestd reload`: every plugin whose configuration in `config` differs
    /// from the one it runs (image, command, arguments, environment, launch…)
    /// is replaced without a failed call ([`Supervisor::replace`]); the others
    /// keep running. One outcome per plugin, in order.
    pub async fn reload(&self, config: &Config) -> Vec<(String, ReloadOutcome)> {
        let mut out = Vec::new();
        for s in self.plugins() {
            let name = s.name().to_string();
            // A table of its own, else (a plugin selected at start) images.lock.
            let wanted = match config.plugins.attester.get(&name) {
                Some(pc) => Ok(pc.clone()),
                None => crate::select::plugin_config(&name, &config.plugins),
            };
            let outcome = match wanted {
                Err(e) => ReloadOutcome::Kept(e.chain()),
                Ok(pc) if same_config(&pc, &s.current_config()) => ReloadOutcome::Unchanged,
                Ok(pc) => {
                    let mut spec = PluginSpec::with_config(&name, pc, s.role(), &config.plugins);
                    spec.record_provenance = self.eventlog_config.enable_eventlog;
                    match s.replace(spec).await {
                        Ok(r) => ReloadOutcome::Replaced(r),
                        Err(e) => ReloadOutcome::Kept(e.chain()),
                    }
                }
            };
            out.push((name, outcome));
        }
        out
    }

    /// Resolves when any plugin's supervisor ends unexpectedly: which and why.
    pub async fn supervisor_ended(&self) -> Error {
        let all = self.plugins().map(|s| Box::pin(s.ended()));
        futures::future::select_all(all).await.0
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Supervisor>> {
        std::iter::once(&self.primary).chain(self.additional.iter())
    }

    /// The primary TEE's evidence for `runtime_data`, untouched.
    pub async fn get_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        self.measure([&self.primary]).await?;
        Ok(evidence_of(&self.primary, runtime_data).await?.1)
    }

    /// `{"<tee>": <evidence>, …}` over the additional attesters, or empty bytes when
    /// there are none (what upstream clients expect).
    pub async fn get_additional_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        if self.additional.is_empty() {
            return Ok(Vec::new());
        }
        self.measure(&self.additional).await?;
        // All at once, each under its plugin's call deadline: the slowest device
        // sets the pace, not their sum. The first failure answers, naming its plugin.
        let gathered = futures::future::try_join_all(self.additional.iter().map(|s| {
            let rd = runtime_data.clone();
            async move {
                // Its error already names the plugin ("plugin dev: …").
                let (tee, bytes) = evidence_of(s, rd).await?;
                let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!(
                        "plugin {} returned evidence that is not JSON",
                        s.name()
                    ))
                    .with_source(e)
                })?;
                Ok::<_, Error>((tee, value))
            }
        }))
        .await?;
        let all: BTreeMap<String, serde_json::Value> = gathered.into_iter().collect();
        serde_json::to_vec(&all)
            .map_err(|e| Error::internal("cannot serialise additional evidence").with_source(e))
    }

    /// `[token_configs]` as configured.
    pub fn token_configs(&self) -> &crate::config::TokenConfigs {
        &self.tokens
    }

    pub fn get_tee_type(&self) -> String {
        self.primary.identity().info.tee.clone()
    }

    pub fn get_additional_tees(&self) -> Vec<String> {
        self.additional
            .iter()
            .map(|s| s.identity().info.tee.clone())
            .collect()
    }

    /// How the primary plugin binds init-data (its handshake's word).
    pub fn primary_binding(&self) -> InitDataBinding {
        self.primary.identity().info.capabilities.init_data
    }

    /// Bind an init-data digest through the primary plugin's capability.
    pub async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        let s = &self.primary;
        if s.identity().info.capabilities.init_data == InitDataBinding::None {
            return Err(Error::unsupported("init-data binding").context(format!(
                "plugin {} ({})",
                s.name(),
                s.identity().info.tee
            )));
        }
        let live = s.live().await?;
        let r = live
            .client
            .bind_init_data(digest)
            .await
            .map_err(|e| e.context(format!("plugin {}", s.name())));
        // Whatever the outcome, a token from before no longer attests this state.
        self.kbs_sessions.invalidate();
        r
    }

    pub async fn extend_runtime_measurement(
        &self,
        event: MeasurementEvent,
    ) -> Result<MeasurementResult> {
        // CDH fails an image pull on an RPC error, so "off" and "cannot" are results.
        if !self.eventlog_config.enable_eventlog {
            return Ok(MeasurementResult::NotEnabled);
        }
        let Some(log) = &self.eventlog else {
            return Ok(MeasurementResult::NotSupported);
        };
        // attestd's own entries (plugin identities) are its alone to write:
        // refused before anything is recorded, look-alikes too.
        check_domain(&event.domain)?;
        check_operation(&event.operation)?;
        // The entry goes through the primary's registers; nothing else serves.
        self.measure([&self.primary]).await?;
        let r = log
            .record(
                &event.domain,
                &event.operation,
                &event.content,
                event.register_index,
            )
            .await;
        // A token from before the extension no longer attests the registers.
        self.kbs_sessions.invalidate();
        r?;
        Ok(MeasurementResult::Ok)
    }

    /// The open event log, if any (for `attestd` subcommands and tests).
    pub fn eventlog(&self) -> Option<&EventLog<Supervisor>> {
        self.eventlog.as_ref()
    }

    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>> {
        match token_type {
            "kbs" => {
                let (client, alg) = self.kbs_client().map_err(|e| {
                    if e.code() == Code::FailedPrecondition {
                        Error::failed_precondition(
                            "token type \"kbs\" is not configured: set [token_configs.kbs] url \
                             (or AA_KBC_PARAMS=cc_kbc::<url>)",
                        )
                    } else {
                        e
                    }
                })?;
                let session = match self.tokens.kbs.as_ref().and_then(|k| k.reuse_token_secs) {
                    // Opted in: the cached session while its token has more than
                    // the margin left (docs/key-release.md: the trade-off).
                    Some(secs) => {
                        self.kbs_session(
                            &client,
                            &alg,
                            Reuse::WithMargin(Duration::from_secs(secs)),
                        )
                        .await?
                    }
                    // Upstream's behaviour: a fresh handshake per call.
                    None => Arc::new(
                        self.rcar(&client, &alg)
                            .await
                            .map_err(|e| e.context(format!("KBS {}", client.url())))?,
                    ),
                };
                // Exactly what CDH parses.
                serde_json::to_vec(&serde_json::json!({
                    "token": session.token,
                    "tee_keypair": session.key.to_pem()?,
                }))
                .map_err(|e| Error::internal("cannot serialise the token").with_source(e))
            }
            "coco_as" if self.tokens.coco_as.is_none() => Err(Error::failed_precondition(
                "token type \"coco_as\" is not configured: set [token_configs.coco_as] url",
            )),
            "coco_as" => {
                let (url, insecure) = self
                    .tokens
                    .coco_as
                    .as_ref()
                    .map(|c| (c.url.clone(), c.allow_insecure_http))
                    .unwrap_or_default();
                let client = crate::coco_as::AsClient::new(&url, insecure)?;
                // get_evidence records the primary's identity before its evidence
                // leaves the core.
                let evidence = self.get_evidence(Vec::new()).await?;
                client
                    .token(&self.get_tee_type(), &evidence)
                    .await
                    .map_err(|e| e.context(format!("attestation service {}", client.url())))
            }
            other => Err(Error::invalid_argument(format!(
                "unknown token type {}: expected \"kbs\" or \"coco_as\"",
                crate::echo::quoted(other)
            ))),
        }
    }

    /// One RCAR handshake: challenge, an ephemeral TEE key, evidence bound to
    /// `H(JCS(runtime data))` (additional evidence bound first, then folded into the
    /// primary's), attestation; the token and the key.
    pub async fn rcar(&self, client: &crate::kbs::KbsClient, alg: &str) -> Result<KbsSession> {
        use crate::kbs::bind;
        // Every plugin gives evidence here: their identities first.
        self.measure(self.plugins()).await?;
        // Taken before any evidence: a restart during the handshake shows as a
        // mismatch later, and the session is not reused.
        let instances = self.instances();
        let (challenge, cookie) = client.auth(&self.get_tee_type()).await?;
        let hash = challenge.extra_params["selected-hash-algorithm"]
            .as_str()
            .unwrap_or("sha384")
            .to_string();
        let key = crate::kbs::TeeKey::generate(alg)?;
        let runtime_data = kbs_types::RuntimeData {
            nonce: challenge.nonce.clone(),
            tee_pubkey: key.public_jwk(),
        };
        let rd = serde_json::to_value(&runtime_data)
            .map_err(|e| Error::internal("cannot serialise the runtime data").with_source(e))?;
        let additional = if self.additional.is_empty() {
            String::new()
        } else {
            let ev = self.get_additional_evidence(bind(&hash, &rd)?).await?;
            String::from_utf8(ev)
                .map_err(|e| Error::internal("additional evidence is not UTF-8").with_source(e))?
        };
        let primary_rd = bind(
            &hash,
            &serde_json::json!({
                "tee-pubkey": rd["tee-pubkey"],
                "nonce": challenge.nonce,
                "additional-evidence": additional,
            }),
        )?;
        let evidence = self.get_evidence(primary_rd).await?;
        let primary: serde_json::Value = serde_json::from_slice(&evidence).map_err(|e| {
            Error::internal("the primary plugin's evidence is not JSON").with_source(e)
        })?;
        let att = kbs_types::Attestation {
            init_data: self.initdata.as_ref().and_then(|i| {
                i.toml.as_ref().map(|body| kbs_types::InitData {
                    format: "toml".into(),
                    body: body.clone(),
                })
            }),
            runtime_data,
            tee_evidence: kbs_types::CompositeEvidence {
                primary_evidence: primary,
                additional_evidence: additional,
            },
        };
        let token = client.attest(&att, cookie.as_deref()).await?;
        Ok(KbsSession::new(token, key, cookie, instances))
    }

    /// The plugin instances running now, primary first: a session attests these.
    fn instances(&self) -> Vec<Option<u64>> {
        self.plugins().map(|s| s.instance()).collect()
    }

    /// The cached KBS session if `reuse` allows it, else one new handshake shared
    /// by every caller waiting for one.
    async fn kbs_session(
        &self,
        client: &crate::kbs::KbsClient,
        alg: &str,
        reuse: Reuse,
    ) -> Result<Arc<KbsSession>> {
        self.kbs_sessions
            .get(reuse, &self.instances(), || self.rcar(client, alg))
            .await
            .map_err(|e| e.context(format!("KBS {}", client.url())))
    }

    fn kbs_client(&self) -> Result<(crate::kbs::KbsClient, String)> {
        let kbs = self.tokens.kbs.as_ref();
        let url = crate::kbs::kbs_url(kbs.map(|k| k.url.as_str())).ok_or_else(|| {
            Error::failed_precondition(
                "no KBS configured: set [token_configs.kbs] url (or AA_KBC_PARAMS=cc_kbc::<url>)",
            )
        })?;
        let client = crate::kbs::KbsClient::new(
            &url,
            kbs.and_then(|k| k.cert.as_deref()),
            kbs.is_some_and(|k| k.allow_insecure_http),
        )?;
        let alg = kbs
            .and_then(|k| k.tee_key_algorithm.clone())
            .unwrap_or_else(|| crate::kbs::tee_key::EC_ALG.to_string());
        Ok((client, alg))
    }

    /// A KBS resource (`<repo>/<type>/<tag>`), decrypted. The session is reused
    /// while the KBS accepts its token. A 401 means attest again, up to
    /// `ATTEMPTS` times, unless the KBS's reason is one a fresh token cannot change
    /// (the policy denies, the resource is missing): that is said at once.
    pub async fn kbs_resource(&self, path: &str) -> Result<Vec<u8>> {
        const ATTEMPTS: usize = 3;
        let (client, alg) = self.kbs_client()?;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let s = self.kbs_session(&client, &alg, Reuse::UntilExpired).await?;
            let refusal = match client.resource(path, &s.token, s.cookie.as_deref()).await? {
                Fetched::Resource { jwe, protected } => return s.key.decrypt(&jwe, &protected),
                Fetched::Refused(r) => r,
            };
            // Any 401 ends the session (a concurrent caller's newer one stays).
            self.kbs_sessions.refused(&s);
            // Logged once, with the reason, where the RPC fails (server::handle).
            if !refusal.fresh_token_may_help() {
                return Err(Error::failed_precondition(format!(
                    "KBS {}: resource {path} refused: {refusal}",
                    client.url()
                )));
            }
            tracing::info!(kbs = %client.url(), %path, reason = %refusal, "the KBS answered 401: attesting again");
            last = Some(refusal);
        }
        let last = last.map(|r| r.to_string()).unwrap_or_default();
        Err(Error::failed_precondition(format!(
            "KBS {}: resource {path} answered 401 to {ATTEMPTS} fresh tokens; last: {last}",
            client.url()
        )))
    }

    /// ocicrypt's UnWrapKey: the KEK named by the annotation's kid, from the KBS.
    pub async fn unwrap_key(&self, input: Vec<u8>) -> Result<Vec<u8>> {
        let u = crate::keyprovider::parse_unwrap(&input)?;
        let kek = self.kbs_resource(&u.resource).await.map_err(|e| {
            e.context(format!(
                "cannot fetch the KEK {}",
                crate::echo::quoted(&u.packet.kid)
            ))
        })?;
        let key = crate::keyprovider::unwrap_key(&u.packet, &kek)?;
        Ok(crate::keyprovider::unwrap_output(&key))
    }

    /// ocicrypt's WrapKey, for image builders: wrap with the local KEK file.
    pub async fn wrap_key(&self, input: Vec<u8>) -> Result<Vec<u8>> {
        let path = self.keyprovider.wrap_kek.as_ref().ok_or_else(|| {
            Error::failed_precondition("WrapKey needs [keyprovider] wrap_kek (a 32-byte KEK file)")
        })?;
        let kek = std::fs::read(path).map_err(|e| {
            Error::failed_precondition(format!("cannot read the KEK {}", path.display()))
                .with_source(e)
        })?;
        crate::keyprovider::wrap(&input, &kek, &self.keyprovider.name)
    }

    /// Init-data given at start, sent to the KBS.
    pub fn set_initdata(&mut self, initdata: Option<crate::initdata::InitData>) {
        self.initdata = initdata;
    }

    /// The init-data to bind and to send the KBS, if any.
    pub fn initdata(&self) -> Option<&crate::initdata::InitData> {
        self.initdata.as_ref()
    }

    /// Stop every plugin.
    pub async fn stop(&self) {
        // All at once: each stop request is sent on the first poll, so a plugin
        // that exits from the same process-group SIGTERM is not taken for a crash
        // (and restarted) while an earlier plugin is still being waited for.
        futures::future::join_all(self.plugins().map(|s| s.stop())).await;
    }
}

/// The identity entry's content: canonical JSON (RFC 8785: sorted keys, no
/// whitespace; every value is a string or an array of strings, so serde_json's
/// escaping is JCS's).
pub fn identity_content(
    name: &str,
    info: &attester_sdk::PluginInfo,
    p: &crate::launch::Provenance,
) -> String {
    use serde_json::Value;
    let mut fields: BTreeMap<&str, Value> = [
        ("name", name.to_string()),
        ("tee", info.tee.clone()),
        ("plugin", info.name.clone()),
        ("version", info.version.clone()),
        ("launch", p.launch.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k, Value::String(v)))
    .collect();
    let optional = [
        (
            "command",
            p.command.as_ref().map(|c| c.display().to_string()),
        ),
        ("sha256", p.sha256.clone()),
        ("image", p.image.clone()),
        ("digest", p.digest.clone()),
        ("socket", p.socket.as_ref().map(|s| s.display().to_string())),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            fields.insert(k, Value::String(v));
        }
    }
    if !p.args.is_empty() {
        fields.insert(
            "args",
            Value::Array(p.args.iter().cloned().map(Value::String).collect()),
        );
    }
    // A map of strings and string arrays cannot fail to serialise; serialised
    // through the BTreeMap, its keys stay sorted whatever serde_json's features.
    serde_json::to_string(&fields).unwrap_or_default()
}

/// Checks runtime data against the plugin's advertised maximum before the round trip.
async fn evidence_of(s: &Supervisor, runtime_data: Vec<u8>) -> Result<(String, Vec<u8>)> {
    let info = &s.identity().info;
    let max = info.capabilities.max_report_data as usize;
    let rd = ReportData::new(runtime_data, max)
        .map_err(|e| e.context(format!("runtime data for {}", info.tee)))?;
    let rd = rd.into_bytes();
    let ev = s
        .call_idempotent(|live| {
            let rd = rd.clone();
            async move { live.client.evidence(rd).await }
        })
        .await
        .map_err(|e| e.context(format!("plugin {}", s.name())))?;
    Ok((info.tee.clone(), ev.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26 (low): look-alikes of attestd's own domain are refused too.
    #[test]
    fn the_reserved_domain_and_its_look_alikes_are_refused() {
        for d in [
            "github.com/confidential-containers/attestd",
            "GitHub.com/Confidential-Containers/attestd",
            "github.com/confidential-containers/attestd/",
            "github.com//confidential-containers/attestd",
            "https://github.com/confidential-containers/attestd",
            "www.github.com/confidential-containers/attestd",
            "github.com%2Fconfidential-containers%2Fattestd",
            "github.com/confidential-containers/attestd/sub",
        ] {
            let e = check_domain(d).unwrap_err();
            assert_eq!(
                e.message(),
                "domain \"github.com/confidential-containers/attestd\" is reserved for attestd's own entries",
                "{d}"
            );
        }
        // A Cyrillic "а" in place of "a": not ASCII.
        let e = check_domain("github.com/confidential-containers/\u{430}ttestd").unwrap_err();
        assert!(
            e.message()
                .ends_with("is not ASCII: a domain is a host name and a path"),
            "{}",
            e.message()
        );
        for ok in [
            "github.com/confidential-containers",
            "github.com/confidential-containers/attestd-extra",
            "example.com/attestd",
        ] {
            check_domain(ok).unwrap();
        }
    }

    /// Issue 41 (medium): look-alike domains the list does not catch cannot
    /// pass for attestd's entries either: those are told by their operation,
    /// which no client may write, whatever the domain.
    #[test]
    fn attestd_s_own_operation_is_refused_whatever_the_domain() {
        for op in [
            "LoadAttester",
            "loadattester",
            "Load-Attester ",
            " LOADATTESTER",
        ] {
            let e = check_operation(op).unwrap_err();
            assert!(
                e.message().ends_with(
                    "is attestd's own (its identity entries), which no client may write"
                ),
                "{op}: {}",
                e.message()
            );
        }
        for ok in ["PullImage", "LoadAttesters", "Attester", ""] {
            check_operation(ok).unwrap();
        }
    }
    use crate::launch::Provenance;

    #[test]
    fn identity_is_canonical_json_with_what_was_started() {
        let info = attester_sdk::PluginInfo {
            name: "attester-tdx".into(),
            version: "0.1.0".into(),
            tee: "tdx".into(),
            evidence_format: "tdx/1".into(),
            capabilities: Default::default(),
        };
        let image = Provenance {
            launch: "podman",
            image: Some("localhost/attestd/attester-tdx@sha256:ab".into()),
            digest: Some("sha256:ab".into()),
            ..Default::default()
        };
        assert_eq!(
            identity_content("tdx", &info, &image),
            r#"{"digest":"sha256:ab","image":"localhost/attestd/attester-tdx@sha256:ab","launch":"podman","name":"tdx","plugin":"attester-tdx","tee":"tdx","version":"0.1.0"}"#
        );
        let process = Provenance {
            launch: "process",
            command: Some("/usr/libexec/a \"b\"".into()),
            sha256: Some("cd".into()),
            ..Default::default()
        };
        assert_eq!(
            identity_content("tdx", &info, &process),
            r#"{"command":"/usr/libexec/a \"b\"","launch":"process","name":"tdx","plugin":"attester-tdx","sha256":"cd","tee":"tdx","version":"0.1.0"}"#
        );
        // Arguments, when configured, are part of what was started.
        let with_args = Provenance {
            args: vec!["--imds-url".into(), "http://10.0.0.1".into()],
            ..process
        };
        assert_eq!(
            identity_content("tdx", &info, &with_args),
            r#"{"args":["--imds-url","http://10.0.0.1"],"command":"/usr/libexec/a \"b\"","launch":"process","name":"tdx","plugin":"attester-tdx","sha256":"cd","tee":"tdx","version":"0.1.0"}"#
        );
    }
}

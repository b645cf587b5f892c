//! The AA service written against domain types. The ttrpc and gRPC adapters are
//! thin translations onto these methods; errors map to statuses in one place
//! (`attester_sdk::status`).

use std::collections::BTreeMap;
use std::sync::Arc;

use attester_sdk::{Code, Error, InitDataBinding, ReportData, Result};

use crate::config::{Config, EventlogConfig, TokenConfigs};
use crate::supervisor::{SocketDirLock, Supervisor};

/// `ExtendRuntimeMeasurement`'s result, as upstream's enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasurementResult {
    Ok,
    NotSupported,
    NotEnabled,
}

/// One `ExtendRuntimeMeasurement` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementEvent {
    pub domain: String,
    pub operation: String,
    pub content: String,
    pub register_index: Option<u64>,
}

pub struct Service {
    _lock: SocketDirLock,
    primary: Arc<Supervisor>,
    additional: Vec<Arc<Supervisor>>,
    tokens: TokenConfigs,
    eventlog: EventlogConfig,
}

impl Service {
    pub fn new(
        lock: SocketDirLock,
        primary: Arc<Supervisor>,
        additional: Vec<Arc<Supervisor>>,
        config: &Config,
    ) -> Self {
        Service {
            _lock: lock,
            primary,
            additional,
            tokens: config.token_configs.clone(),
            eventlog: config.eventlog_config.clone(),
        }
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Supervisor>> {
        std::iter::once(&self.primary).chain(self.additional.iter())
    }

    /// The primary TEE's evidence for `runtime_data`, untouched.
    pub async fn get_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        Ok(evidence_of(&self.primary, runtime_data).await?.1)
    }

    /// `{"<tee>": <evidence>, …}` over the additional attesters, or empty bytes when
    /// there are none (what upstream clients expect).
    pub async fn get_additional_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        if self.additional.is_empty() {
            return Ok(Vec::new());
        }
        let mut all = BTreeMap::new();
        for s in &self.additional {
            let (tee, bytes) = evidence_of(s, runtime_data.clone()).await?;
            let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                Error::internal(format!(
                    "plugin {} returned evidence that is not JSON",
                    s.name()
                ))
                .with_source(e)
            })?;
            all.insert(tee, value);
        }
        serde_json::to_vec(&all)
            .map_err(|e| Error::internal("cannot serialise additional evidence").with_source(e))
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
        live.client
            .bind_init_data(digest)
            .await
            .map_err(|e| e.context(format!("plugin {}", s.name())))
    }

    pub async fn extend_runtime_measurement(
        &self,
        event: MeasurementEvent,
    ) -> Result<MeasurementResult> {
        // CDH fails an image pull on an RPC error, so "off" and "cannot" are results.
        if !self.eventlog.enable_eventlog {
            return Ok(MeasurementResult::NotEnabled);
        }
        if !self
            .primary
            .identity()
            .info
            .capabilities
            .runtime_measurement
        {
            return Ok(MeasurementResult::NotSupported);
        }
        let _ = event;
        Err(Error::new(
            Code::Unsupported,
            "extend runtime measurement: this attestd does not keep an event log yet",
        ))
    }

    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>> {
        let configured = match token_type {
            "kbs" => self.tokens.kbs.is_some() || std::env::var_os("AA_KBC_PARAMS").is_some(),
            "coco_as" => self.tokens.coco_as.is_some(),
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown token type {other:?}: expected \"kbs\" or \"coco_as\""
                )))
            }
        };
        if !configured {
            return Err(Error::failed_precondition(format!(
                "token type {token_type:?} is not configured: set [token_configs.{token_type}] url"
            )));
        }
        Err(Error::new(
            Code::Unsupported,
            format!("get token {token_type:?}: this attestd has no client for it yet"),
        ))
    }

    /// Stop every plugin.
    pub async fn stop(&self) {
        for s in self.plugins() {
            s.stop().await;
        }
    }
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

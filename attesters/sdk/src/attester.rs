//! The trait every attester plugin implements.

use std::future::Future;

use crate::{Error, Evidence, PluginInfo, ReportData, Result};

/// One TEE's attester. `serve()` exposes it over ttrpc or gRPC.
///
/// Only [`Attester::info`], [`Attester::detect`] and [`Attester::evidence`] are required;
/// the optional operations answer [`crate::Code::Unsupported`] by default. Implementations
/// must not panic: every failure is an [`Error`] with a code.
///
/// Methods return `Send` futures so the server can run them on any runtime. A plugin
/// whose device calls block (ioctls, TPM commands) should move them onto
/// `tokio::task::spawn_blocking`.
pub trait Attester: Send + Sync + 'static {
    /// Static description: name, TEE, evidence format, capabilities.
    fn info(&self) -> PluginInfo;

    /// Whether this TEE is present here. Cheap and free of side effects.
    fn detect(&self) -> Result<bool>;

    /// Whether the attester can still serve, answered to every health check: an
    /// error (say, its device thread has died) reports NOT_SERVING, and the core
    /// restarts the plugin after two such checks. Cheap; must not block. Default:
    /// serving.
    fn health(&self) -> Result<()> {
        Ok(())
    }

    /// Evidence binding `report_data` (already checked against `max_report_data`).
    fn evidence(&self, report_data: ReportData) -> impl Future<Output = Result<Evidence>> + Send;

    /// Extend `digest` into `register`.
    fn extend_measurement(
        &self,
        register: u64,
        digest: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (register, digest);
        async { Err(Error::unsupported("runtime measurement")) }
    }

    /// Read `register` back.
    fn read_measurement(&self, register: u64) -> impl Future<Output = Result<Vec<u8>>> + Send {
        let _ = register;
        async { Err(Error::unsupported("register read")) }
    }

    /// Bind an init-data digest (compare or extend, per `capabilities.init_data`).
    fn bind_init_data(&self, digest: Vec<u8>) -> impl Future<Output = Result<()>> + Send {
        let _ = digest;
        async { Err(Error::unsupported("init-data binding")) }
    }
}

//! AA API servers: thin ttrpc and gRPC adapters over [`crate::service::Service`].

pub mod accept;
#[cfg(feature = "grpc-server")]
pub mod grpc;
/// A build without the `grpc-server` feature: the same interface, refusing to
/// start, so the callers are one code for both builds.
#[cfg(not(feature = "grpc-server"))]
#[path = "grpc_off.rs"]
pub mod grpc;
pub mod keyprovider;
pub mod refusals;
pub mod ttrpc;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use attester_sdk::{Error, Result};
use tracing::Instrument as _;

/// Run one RPC in its own span and log a failure once, here at the boundary.
pub(crate) async fn handle<T>(
    rpc: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    // The plugin that answers records itself in the span (see the supervisor).
    let span = tracing::debug_span!("rpc", method = rpc, plugin = tracing::field::Empty);
    let started = std::time::Instant::now();
    let r = fut.instrument(span.clone()).await;
    let micros = started.elapsed().as_micros() as u64;
    match &r {
        Ok(_) => tracing::debug!(parent: &span, status = "ok", micros, "answered"),
        Err(e) => {
            tracing::debug!(parent: &span, status = %e.code(), micros, "answered");
            warn_failed(rpc, e);
        }
    }
    r
}

/// A failed call, warned about at most [`crate::logging::WARNINGS_PER_WINDOW`]
/// times per method and code per window; the rest are counted.
fn warn_failed(rpc: &'static str, e: &Error) {
    use crate::logging::{Throttle, Verdict};
    static FAILED: std::sync::OnceLock<Throttle<(&'static str, attester_sdk::Code)>> =
        std::sync::OnceLock::new();
    let verdict = FAILED
        .get_or_init(|| {
            // The counts of floods that stopped, said once their window ends.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async {
                    let mut tick = tokio::time::interval(crate::logging::WARNING_WINDOW);
                    loop {
                        tick.tick().await;
                        let Some(t) = FAILED.get() else { continue };
                        for ((rpc, code), n) in t.flush(std::time::Instant::now()) {
                            tracing::warn!(
                                method = rpc,
                                code = %code,
                                suppressed = n,
                                "{n} more failures like the last one logged were not logged"
                            );
                        }
                    }
                });
            }
            Throttle::default()
        })
        .check((rpc, e.code()), std::time::Instant::now());
    match verdict {
        Verdict::Say { suppressed: 0 } => {
            tracing::warn!(method = rpc, code = %e.code(), "{}", e.chain())
        }
        Verdict::Say { suppressed } => tracing::warn!(
            method = rpc,
            code = %e.code(),
            suppressed,
            "{} ({suppressed} more like it were not logged since the last one logged)",
            e.chain()
        ),
        Verdict::SayLast => tracing::warn!(
            method = rpc,
            code = %e.code(),
            "{} (more failures like it are counted, not logged, for {:?})",
            e.chain(),
            crate::logging::WARNING_WINDOW
        ),
        Verdict::Quiet => {}
    }
}

/// Where the gRPC AA server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for GrpcAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err("unix:// needs a path".into());
            }
            return Ok(GrpcAddr::Unix(PathBuf::from(p)));
        }
        let s = s.strip_prefix("tcp://").unwrap_or(s);
        s.parse()
            .map(GrpcAddr::Tcp)
            .map_err(|e| format!("{s:?} is neither host:port nor unix:///path: {e}"))
    }
}

impl std::fmt::Display for GrpcAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcAddr::Tcp(a) => write!(f, "{a}"),
            GrpcAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

//! AA API servers: thin ttrpc and gRPC adapters over [`crate::service::Service`].

pub mod grpc;
pub mod keyprovider;
pub mod ttrpc;

use std::future::Future;

use attester_sdk::Result;
use tracing::Instrument as _;

/// Run one RPC in its own span and log a failure once, here at the boundary.
pub(crate) async fn handle<T>(
    rpc: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::debug_span!("rpc", method = rpc);
    let r = fut.instrument(span).await;
    if let Err(e) = &r {
        tracing::warn!(method = rpc, code = %e.code(), "{}", e.chain());
    }
    r
}

//! AA API servers: thin ttrpc and gRPC adapters over [`crate::service::Service`].

pub mod grpc;
pub mod keyprovider;
pub mod ttrpc;

use std::future::Future;
use std::path::Path;

use attester_sdk::{Error, Result};
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

/// Make `path` bindable: create its directory and remove a stale socket, but refuse
/// when a live server answers there.
pub fn prepare_socket(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::internal(format!("cannot create {}", dir.display())).with_source(e)
        })?;
    }
    if path.exists() || path.is_symlink() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::failed_precondition(format!(
                "another process is already serving on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            Error::internal(format!("cannot remove stale socket {}", path.display())).with_source(e)
        })?;
    }
    Ok(())
}

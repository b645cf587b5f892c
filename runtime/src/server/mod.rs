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
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

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
        .get_or_init(Throttle::default)
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

/// Make `path` bindable: create its directory and remove a stale socket, but refuse
/// when a live server answers there.
pub fn prepare_socket(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(
                Error::internal(format!("cannot inspect {}", path.display())).with_source(e),
            )
        }
        Ok(m) if !m.file_type().is_socket() => {
            // A mistyped --attestation_sock must not cost the operator a file.
            return Err(Error::failed_precondition(format!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            )));
        }
        Ok(_) => {}
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::failed_precondition(format!(
            "another process is already serving on {}",
            path.display()
        )));
    }
    remove_socket(path).map_err(|e| {
        Error::internal(format!("cannot remove stale socket {}", path.display())).with_source(e)
    })
}

/// Remove `path` if it is a socket (and nothing else: never a file someone put
/// there); gone already is fine.
pub fn remove_socket(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is not a socket",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sockets attestd serves on: owner and group (a client group can be given the
/// socket with chgrp), whatever the umask.
pub const SOCKET_MODE: u32 = 0o660;

/// `dir` and missing parents, created 0750 whatever the umask (existing
/// directories are left as they are: they are the operator's).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p);
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(p)
            .or_else(|e| if p.is_dir() { Ok(()) } else { Err(e) })
            .map_err(|e| {
                Error::internal(format!("cannot create {}", p.display())).with_source(e)
            })?;
        // The mode above is filtered by the umask: set it outright.
        set_mode(p, 0o750)?;
    }
    Ok(())
}

/// `chmod path mode`, whatever the umask made of it.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::internal(format!("cannot set the mode of {}", path.display())).with_source(e)
    })
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

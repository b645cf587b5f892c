//! `serve()`: run an [`Attester`] as a plugin on a Unix socket, over ttrpc or gRPC.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::convert::InfoReply;
use crate::{negotiate, Attester, Error, Evidence, PluginInfo, ReportData, Result, Transport};

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "ttrpc")]
mod ttrpc;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Unix socket path; the directory is the core's (mode 0700).
    pub socket: PathBuf,
    pub transport: Transport,
    /// Protocol versions to offer; [`crate::PROTOCOL_VERSIONS`] unless testing.
    pub protocol_versions: Vec<u32>,
    /// Probe the plugin serving on `socket` instead of serving ([`crate::run`]).
    pub probe: bool,
}

/// The transport-independent half of a plugin server: both adapters call these.
pub(crate) struct Plugin<A> {
    attester: A,
    info: PluginInfo,
    versions: Vec<u32>,
    transport: Transport,
}

impl<A: Attester> Plugin<A> {
    pub(crate) fn info(&self, core_versions: &[u32]) -> InfoReply<'_> {
        InfoReply {
            info: &self.info,
            versions: &self.versions,
            selected: negotiate(&self.versions, core_versions, "the core").unwrap_or(0),
            transport: self.transport,
        }
    }

    pub(crate) fn detect(&self) -> Result<bool> {
        self.attester.detect()
    }

    /// What a health check answers; the reason for NOT_SERVING goes to the log.
    pub(crate) fn healthy(&self) -> bool {
        match self.attester.health() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not serving: {}", e.chain());
                false
            }
        }
    }

    pub(crate) async fn evidence(&self, report_data: Vec<u8>) -> Result<Evidence> {
        let max = self.info.capabilities.max_report_data as usize;
        let rd = ReportData::new(report_data, max)?;
        self.attester.evidence(rd).await
    }

    pub(crate) async fn extend_measurement(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        self.attester.extend_measurement(register, digest).await
    }

    pub(crate) async fn read_measurement(&self, register: u64) -> Result<Vec<u8>> {
        self.attester.read_measurement(register).await
    }

    pub(crate) async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        self.attester.bind_init_data(digest).await
    }
}

/// Serve `attester` until SIGTERM or SIGINT, then remove the socket.
pub async fn serve<A: Attester>(attester: A, opts: ServeOptions) -> Result<()> {
    let info = attester.info();
    let plugin = Arc::new(Plugin {
        attester,
        info,
        versions: opts.protocol_versions.clone(),
        transport: opts.transport,
    });
    remove_socket_file(&opts.socket)?;
    let result = serve_on(plugin, &opts, shutdown_signal()?).await;
    // Remove the socket even when serving failed, so no stale file is left.
    let _ = remove_socket_file(&opts.socket);
    result
}

async fn serve_on<A: Attester>(
    plugin: Arc<Plugin<A>>,
    opts: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    match opts.transport {
        #[cfg(feature = "ttrpc")]
        Transport::Ttrpc => ttrpc::serve(plugin, &opts.socket, shutdown).await,
        #[cfg(feature = "grpc")]
        Transport::Grpc => grpc::serve(plugin, &opts.socket, shutdown).await,
        #[allow(unreachable_patterns)]
        other => Err(Error::invalid_argument(format!(
            "this plugin was built without the {other} transport"
        ))),
    }
}

/// Remove a socket left by a previous instance (it would make bind fail). Only a
/// socket: anything else at that path is refused, never deleted.
pub fn remove_socket_file(socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let fail = |e: std::io::Error| {
        Error::internal(format!("cannot remove stale socket {}", socket.display())).with_source(e)
    };
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(e)),
        Ok(m) if !m.file_type().is_socket() => Err(Error::failed_precondition(format!(
            "{} exists and is not a socket: refusing to replace it",
            socket.display()
        ))),
        Ok(_) => match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
            _ => Ok(()),
        },
    }
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |k: SignalKind, name: &str| {
        signal(k)
            .map_err(|e| Error::internal(format!("cannot install {name} handler")).with_source(e))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    })
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[test]
    fn only_sockets_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(
            remove_socket_file(&f).unwrap_err().message(),
            format!(
                "{} exists and is not a socket: refusing to replace it",
                f.display()
            )
        );
        assert!(f.exists());
        let s = d.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&s).unwrap());
        remove_socket_file(&s).unwrap();
        assert!(!s.exists());
        remove_socket_file(&s).unwrap();
    }
}

//! `RemoteAttester`: the client the core uses to talk to a plugin, over either
//! transport, with a deadline on every call.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::convert::InfoFromPeer;
use crate::{Code, Error, Evidence, Handshake, Result, Transport};

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "grpc")]
pub use grpc::unix_channel as grpc_unix_channel;
#[cfg(feature = "ttrpc")]
mod ttrpc;

/// Upstream AA clients give up after 50 s; a plugin call gets the same by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(50);

enum Inner {
    #[cfg(feature = "ttrpc")]
    Ttrpc(ttrpc::Client),
    #[cfg(feature = "grpc")]
    Grpc(Box<grpc::Client>),
}

/// A connection to one plugin.
pub struct RemoteAttester {
    inner: Inner,
    socket: PathBuf,
    transport: Transport,
    deadline: Duration,
}

impl RemoteAttester {
    /// Connect to the plugin listening on `socket`. Fails with `Unavailable` when
    /// nothing listens there.
    pub async fn connect(socket: &Path, transport: Transport) -> Result<Self> {
        let inner = match transport {
            #[cfg(feature = "ttrpc")]
            Transport::Ttrpc => Inner::Ttrpc(ttrpc::Client::connect(socket).await?),
            #[cfg(feature = "grpc")]
            Transport::Grpc => Inner::Grpc(Box::new(grpc::Client::connect(socket).await?)),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::invalid_argument(format!(
                    "built without the {other} transport"
                )))
            }
        };
        Ok(RemoteAttester {
            inner,
            socket: socket.to_path_buf(),
            transport,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Every later call fails with `DeadlineExceeded` after `deadline`.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// `Info` plus version negotiation: the highest common version, or a readable
    /// `FailedPrecondition`. Also refuses a plugin that claims another transport.
    pub async fn handshake(&self, versions: &[u32]) -> Result<Handshake> {
        let peer: InfoFromPeer = self
            .call("Info", |d| async move {
                match &self.inner {
                    #[cfg(feature = "ttrpc")]
                    Inner::Ttrpc(c) => c.info(versions, d).await,
                    #[cfg(feature = "grpc")]
                    Inner::Grpc(c) => c.info(versions, d).await,
                }
            })
            .await?;
        crate::handshake::accept(versions, peer, self.transport)
    }

    pub async fn detect(&self) -> Result<bool> {
        self.call("Detect", |d| async move {
            match &self.inner {
                #[cfg(feature = "ttrpc")]
                Inner::Ttrpc(c) => c.detect(d).await,
                #[cfg(feature = "grpc")]
                Inner::Grpc(c) => c.detect(d).await,
            }
        })
        .await
    }

    pub async fn evidence(&self, report_data: Vec<u8>) -> Result<Evidence> {
        self.call("GetEvidence", |d| async move {
            match &self.inner {
                #[cfg(feature = "ttrpc")]
                Inner::Ttrpc(c) => c.evidence(report_data, d).await,
                #[cfg(feature = "grpc")]
                Inner::Grpc(c) => c.evidence(report_data, d).await,
            }
        })
        .await
    }

    pub async fn extend_measurement(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        self.call("ExtendMeasurement", |d| async move {
            match &self.inner {
                #[cfg(feature = "ttrpc")]
                Inner::Ttrpc(c) => c.extend_measurement(register, digest, d).await,
                #[cfg(feature = "grpc")]
                Inner::Grpc(c) => c.extend_measurement(register, digest, d).await,
            }
        })
        .await
    }

    pub async fn read_measurement(&self, register: u64) -> Result<Vec<u8>> {
        self.call("ReadMeasurement", |d| async move {
            match &self.inner {
                #[cfg(feature = "ttrpc")]
                Inner::Ttrpc(c) => c.read_measurement(register, d).await,
                #[cfg(feature = "grpc")]
                Inner::Grpc(c) => c.read_measurement(register, d).await,
            }
        })
        .await
    }

    pub async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        self.call("BindInitData", |d| async move {
            match &self.inner {
                #[cfg(feature = "ttrpc")]
                Inner::Ttrpc(c) => c.bind_init_data(digest, d).await,
                #[cfg(feature = "grpc")]
                Inner::Grpc(c) => c.bind_init_data(digest, d).await,
            }
        })
        .await
    }

    /// Health check: `Ok` only when the plugin reports SERVING.
    pub async fn check(&self) -> Result<()> {
        self.check_within(self.deadline).await
    }

    /// Health check under its own (usually shorter) deadline: a frozen plugin
    /// should be noticed long before an evidence call would give up on it.
    pub async fn check_within(&self, deadline: Duration) -> Result<()> {
        let serving = self
            .call_within("Check", deadline, |d| async move {
                match &self.inner {
                    #[cfg(feature = "ttrpc")]
                    Inner::Ttrpc(c) => c.check(d).await,
                    #[cfg(feature = "grpc")]
                    Inner::Grpc(c) => c.check(d).await,
                }
            })
            .await?;
        if serving {
            Ok(())
        } else {
            Err(Error::unavailable("plugin reports NOT_SERVING"))
        }
    }

    /// Run one RPC under the deadline. The transport gets the deadline too (so a
    /// ttrpc client drops its pending request); the outer timer is the backstop.
    async fn call<'a, T, F, Fut>(&'a self, rpc: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        self.call_within(rpc, self.deadline, f).await
    }

    async fn call_within<'a, T, F, Fut>(
        &'a self,
        rpc: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let backstop = deadline + Duration::from_millis(100);
        let start = tokio::time::Instant::now();
        match tokio::time::timeout(backstop, f(deadline)).await {
            Ok(Ok(v)) => Ok(v),
            // The transport's own timeout; a plugin answering DEADLINE_EXCEEDED early
            // (its device or IMDS timed out) keeps its message.
            Ok(Err(e)) if e.code() == Code::DeadlineExceeded && start.elapsed() >= deadline => {
                Err(timed_out(rpc, deadline))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timed_out(rpc, deadline)),
        }
    }
}

fn timed_out(rpc: &str, deadline: Duration) -> Error {
    Error::new(
        Code::DeadlineExceeded,
        format!("plugin call {rpc} did not answer within {deadline:?}"),
    )
}

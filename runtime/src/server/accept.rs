//! The accept loop both transports' servers take their connections from (ttrpc
//! through `Listener::new`, tonic through `serve_with_incoming`), so what a local
//! client can do to it is bounded in one place:
//! - **fd exhaustion**: at EMFILE/ENFILE (or ENOBUFS/ENOMEM) the loop backs off,
//!   10 ms doubling to 1 s, and says so at most once a second, instead of spinning
//!   on the error (70 % CPU and 700 MB of log in 12 s, found in review);
//!   established connections keep being served meanwhile;
//! - **connections**: at most `max` open at once; the next accept waits for one to
//!   close (each holds a slot until it is dropped).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 256;
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// A listener whose accept yields a stream.
pub trait Accept: Send + 'static {
    type Io: Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// An accepted connection holding one of the listener's slots until dropped.
pub struct Conn<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
}

/// Errors that mean "out of descriptors or memory for now": wait, do not spin.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The connections `listener` accepts, at most `max` open at once, with back-off
/// on resource exhaustion. `what` names the server in log lines. Accept errors
/// are handled here and never reach the server.
pub fn incoming<L: Accept>(
    listener: L,
    max: usize,
    what: &'static str,
) -> impl Stream<Item = io::Result<Conn<L::Io>>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    let state = (listener, slots, FIRST_PAUSE, None::<Instant>, 0u64);
    futures::stream::unfold(
        state,
        move |(l, slots, mut pause, mut said, mut missed)| async move {
            // Wait for a free slot before accepting: a flood queues in the kernel's
            // backlog, not in attestd's memory.
            let slot = slots.clone().acquire_owned().await.ok()?;
            loop {
                match l.accept().await {
                    Ok(io) => {
                        let conn = Conn { io, _slot: slot };
                        return Some((Ok(conn), (l, slots, FIRST_PAUSE, said, missed)));
                    }
                    Err(e) => {
                        missed += 1;
                        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(
                                server = what,
                                failed = missed,
                                "cannot accept connections: {e}; backing off"
                            );
                            said = Some(Instant::now());
                            missed = 0;
                        }
                        let wait = if exhausted(&e) { pause } else { FIRST_PAUSE };
                        tokio::time::sleep(wait).await;
                        pause = (pause * 2).min(LONGEST_PAUSE);
                    }
                }
            }
        },
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Raise the soft open-files limit to the hard one: the soft default (1024) is
/// what a local flood exhausts first.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "open-files limit raised"),
                Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn at_most_max_connections_are_open_at_once() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let mut conns = Box::pin(incoming(l, 2, "test"));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        let a = conns.next().await.unwrap().unwrap();
        let _b = conns.next().await.unwrap().unwrap();
        // The third waits for a slot...
        let third = tokio::time::timeout(Duration::from_millis(200), conns.next()).await;
        assert!(third.is_err(), "a third connection was accepted");
        // ...and gets one as soon as a connection closes.
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(2), conns.next()).await;
        assert!(c.unwrap().unwrap().is_ok());
    }

    #[test]
    fn exhaustion_is_told_apart_from_other_errors() {
        assert!(exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}

//! The accept loop both transports' servers take their connections from (ttrpc
//! through `Listener::new`, tonic through `serve_with_incoming`), so what a local
//! client can do to it is bounded in one place:
//! - **fd exhaustion**: at EMFILE/ENFILE (or ENOBUFS/ENOMEM) the loop backs off,
//!   10 ms doubling to 1 s, and says so at most once a second, instead of spinning
//!   on the error (70 % CPU and 700 MB of log in 12 s, found in review);
//!   established connections keep being served meanwhile;
//! - **connections**: at most `max` open at once; the next accept waits for one to
//!   close (each holds a slot until it is dropped);
//! - **idle connections**: while a new connection waits for a slot, every *quiet*
//!   connection closes itself: nothing in flight and nothing read for
//!   `quiet_after`. Without that pressure nothing is closed for being idle, since
//!   guest-components' clients (CDH, kata-agent) connect once at start and keep
//!   the connection for every later call, and the Rust ttrpc client does not
//!   reconnect. A flood of idle connections thus delays a newcomer by seconds
//!   instead of shutting it out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A ttrpc connection with no request in flight is quiet after this long without
/// a byte from its client.
pub const TTRPC_QUIET_AFTER: Duration = Duration::from_secs(10);
/// A gRPC connection is quiet after this long without a byte from its client:
/// two keepalive intervals, so a live client (which answers the pings, even
/// while it waits for a slow call) never is.
pub const GRPC_QUIET_AFTER: Duration = Duration::from_secs(60);
/// While a newcomer waits for a slot, quiet connections are asked this often.
const PRESSURE_TICK: Duration = Duration::from_secs(1);
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

/// How many connections a listener holds and when one of them is quiet.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max: usize,
    pub quiet_after: Duration,
}

/// A listener's connections are asked to close if quiet, while a newcomer waits.
#[derive(Default)]
struct Pressure {
    on: AtomicBool,
    asked: Notify,
}

type Waiting = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// An accepted connection holding one of the listener's slots until dropped, and
/// closing itself (an end of file to its server) when quiet under pressure.
pub struct Conn<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
    pressure: Arc<Pressure>,
    quiet_after: Duration,
    last_read: Instant,
    /// Something is in flight (said by the protocol layer above: [`TtrpcConn`]).
    busy: bool,
    asked: Option<Waiting>,
}

impl<S> Conn<S> {
    /// Whether to close now: asked while quiet. Registers for the next ask
    /// otherwise (a busy connection is never asked).
    fn closing(&mut self, cx: &mut Context<'_>) -> bool {
        if self.busy {
            self.asked = None;
            return false;
        }
        loop {
            // Registered once per wait, not on every read that finds nothing.
            let pressure = &self.pressure;
            let asked = self.asked.get_or_insert_with(|| {
                let pressure = pressure.clone();
                Box::pin(async move { pressure.asked.notified().await })
            });
            if asked.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.asked = None;
            if self.pressure.on.load(Ordering::Relaxed)
                && self.last_read.elapsed() >= self.quiet_after
            {
                return true;
            }
        }
    }
}

/// What a protocol layer tells the connection under it about calls in flight.
pub trait InFlight {
    fn set_busy(&mut self, _busy: bool) {}
}

impl<S> InFlight for Conn<S> {
    fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }
}

impl InFlight for tokio::io::DuplexStream {}

/// Errors that mean "out of descriptors or memory for now": wait, do not spin.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The connections `listener` accepts, at most `limits.max` open at once, with
/// back-off on resource exhaustion. `what` names the server in log lines. Accept
/// errors are handled here and never reach the server.
pub fn incoming<L: Accept>(
    listener: L,
    limits: Limits,
    what: &'static str,
) -> impl Stream<Item = io::Result<Conn<L::Io>>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max));
    let pressure = Arc::new(Pressure::default());
    let state = (listener, slots, FIRST_PAUSE, None::<Instant>, 0u64);
    futures::stream::unfold(state, move |(l, slots, mut pause, mut said, mut missed)| {
        let pressure = pressure.clone();
        async move {
            // Wait for a free slot before accepting: a flood queues in the kernel's
            // backlog, not in attestd's memory.
            let slot = free_slot(&slots, &pressure, what).await?;
            loop {
                match l.accept().await {
                    Ok(io) => {
                        let conn = Conn {
                            io,
                            _slot: slot,
                            pressure: pressure.clone(),
                            quiet_after: limits.quiet_after,
                            last_read: Instant::now(),
                            busy: false,
                            asked: None,
                        };
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
        }
    })
}

/// A slot for the next connection; at the cap, quiet connections are asked to
/// close (every [`PRESSURE_TICK`]) until one is free. `None` once closed.
async fn free_slot(
    slots: &Arc<Semaphore>,
    pressure: &Pressure,
    what: &'static str,
) -> Option<OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(slot) => return Some(slot),
        Err(TryAcquireError::Closed) => return None,
        Err(TryAcquireError::NoPermits) => {}
    }
    tracing::warn!(
        server = what,
        "all connection slots are taken; closing quiet connections"
    );
    pressure.on.store(true, Ordering::Relaxed);
    let slot = loop {
        pressure.asked.notify_waiters();
        match tokio::time::timeout(PRESSURE_TICK, slots.clone().acquire_owned()).await {
            Ok(slot) => break slot.ok(),
            Err(_) => continue,
        }
    };
    pressure.on.store(false, Ordering::Relaxed);
    slot
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.closing(cx) => {
                tracing::debug!("a quiet connection closed to make room");
                // Nothing read: an end of file, and the server lets it go.
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.last_read = Instant::now();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
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

/// Requests one ttrpc connection may have outstanding (read, not yet answered).
/// At the cap attestd stops reading that connection until answers go out: a
/// client that pipelines requests and never reads its answers (the connection
/// grew attestd by gigabytes) gets backpressure, not memory.
pub const MAX_IN_FLIGHT: usize = 32;

/// ttrpc's frame header: payload length (u32 BE), stream id (u32 BE), type, flags.
const HEADER: usize = 10;
const REQUEST: u8 = 0x1;
const RESPONSE: u8 = 0x2;

/// Where a byte stream is in its sequence of ttrpc frames.
#[derive(Default)]
struct Frames {
    header: [u8; HEADER],
    have: usize,
    /// Payload bytes still to pass before the next header.
    payload: usize,
}

impl Frames {
    /// How many bytes may pass before the current part (header or payload) ends.
    fn part(&self) -> usize {
        if self.payload > 0 {
            self.payload
        } else {
            HEADER - self.have
        }
    }

    /// Account for `bytes` (at most `part()` of them); the frame type of a header
    /// they complete.
    fn pass(&mut self, bytes: &[u8]) -> Option<u8> {
        if self.payload > 0 {
            self.payload -= bytes.len();
            return None;
        }
        self.header[self.have..self.have + bytes.len()].copy_from_slice(bytes);
        self.have += bytes.len();
        if self.have < HEADER {
            return None;
        }
        self.have = 0;
        let h = &self.header;
        self.payload = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        Some(h[8])
    }
}

/// A ttrpc connection with at most [`MAX_IN_FLIGHT`] requests outstanding. It
/// reads frame by frame (never past the current header or payload) and counts
/// requests in and responses out; the bytes are passed through unchanged.
pub struct TtrpcConn<S> {
    io: S,
    read: Frames,
    written: Frames,
    in_flight: usize,
    max: usize,
    /// The reader waiting for an answer to go out.
    blocked: Option<std::task::Waker>,
}

impl<S> TtrpcConn<S> {
    pub fn new(io: S, max: usize) -> Self {
        TtrpcConn {
            io,
            read: Frames::default(),
            written: Frames::default(),
            in_flight: 0,
            max,
            blocked: None,
        }
    }
}

impl<S: AsyncRead + InFlight + Unpin> AsyncRead for TtrpcConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // At a frame boundary with the cap reached: wait for an answer to go out.
        if this.read.have == 0 && this.read.payload == 0 && this.in_flight >= this.max {
            this.blocked = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let want = this.read.part().min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        match Pin::new(&mut this.io).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let n = part.filled().len();
        if this.read.pass(&buf.initialize_unfilled_to(want)[..n]) == Some(REQUEST) {
            this.in_flight += 1;
            this.io.set_busy(true);
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + InFlight + Unpin> TtrpcConn<S> {
    /// Account for `bytes` written: each response header completed frees a slot.
    fn wrote(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.written.part().min(bytes.len());
            if self.written.pass(&bytes[..n]) == Some(RESPONSE) {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.io.set_busy(self.in_flight > 0);
                if let Some(w) = self.blocked.take() {
                    w.wake();
                }
            }
            bytes = &bytes[n..];
        }
    }
}

impl<S: AsyncWrite + InFlight + Unpin> AsyncWrite for TtrpcConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.wrote(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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

    type Incoming =
        std::pin::Pin<Box<dyn Stream<Item = io::Result<Conn<tokio::net::UnixStream>>> + Send>>;

    /// A listener with two slots whose connections are quiet after `quiet_after`:
    /// its directory, socket path and accepted connections.
    fn listen(quiet_after: Duration) -> (tempfile::TempDir, std::path::PathBuf, Incoming) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = Limits {
            max: 2,
            quiet_after,
        };
        (d, path, Box::pin(incoming(l, limits, "test")))
    }

    #[tokio::test]
    async fn at_most_max_connections_are_open_at_once() {
        let (_d, path, mut conns) = listen(Duration::from_secs(3600));
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

    #[tokio::test]
    async fn at_the_cap_quiet_connections_make_room_and_busy_ones_stay() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (_d, path, mut conns) = listen(Duration::from_millis(300));
        // A quiet client, and a busy one: its request is read and not answered.
        let _quiet = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut busy = tokio::net::UnixStream::connect(&path).await.unwrap();
        let serve = |c: Conn<tokio::net::UnixStream>| {
            tokio::spawn(async move {
                let mut c = TtrpcConn::new(c, 4);
                let mut buf = [0u8; 64];
                let started = Instant::now();
                // Read until the end of file: the client left or attestd closed it.
                while c.read(&mut buf).await.unwrap() > 0 {}
                started.elapsed()
            })
        };
        let quiet = serve(conns.next().await.unwrap().unwrap());
        let busy_served = serve(conns.next().await.unwrap().unwrap());
        busy.write_all(&frame(REQUEST, b"slow call")).await.unwrap();
        // A newcomer at the cap: no slot until the quiet connection goes, which
        // it does once it has been quiet for 300 ms.
        let _newcomer = tokio::net::UnixStream::connect(&path).await.unwrap();
        let t = Instant::now();
        let third = tokio::time::timeout(Duration::from_secs(5), conns.next()).await;
        let newcomer = serve(third.unwrap().unwrap().unwrap());
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        let lived = tokio::time::timeout(Duration::from_secs(1), quiet).await;
        assert!(lived.unwrap().unwrap() >= Duration::from_millis(300));
        // The busy connection was not closed under it.
        assert!(
            !busy_served.is_finished(),
            "a connection with a call in flight was closed"
        );
        // Without pressure, nothing is closed for being quiet.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            !newcomer.is_finished(),
            "closed for being quiet without pressure"
        );
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn requests_beyond_the_cap_wait_for_answers_and_bytes_pass_unchanged() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut conn = TtrpcConn::new(server, 2);
        let mut client = client;
        // Three requests sent at once; the server side reads two, then waits.
        let mut sent = Vec::new();
        for p in [&b"one"[..], b"two", b"three"] {
            sent.extend(frame(REQUEST, p));
        }
        client.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        let first_two = frame(REQUEST, b"one").len() + frame(REQUEST, b"two").len();
        conn.read_exact(&mut got[..first_two]).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(100), conn.read_u8()).await;
        assert!(blocked.is_err(), "read past the cap");
        // One answer goes out (in two writes, split inside the header): room again.
        let answer = frame(RESPONSE, b"ok");
        conn.write_all(&answer[..4]).await.unwrap();
        conn.write_all(&answer[4..]).await.unwrap();
        conn.read_exact(&mut got[first_two..]).await.unwrap();
        assert_eq!(got, sent, "bytes pass unchanged");
        let mut back = vec![0u8; answer.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, answer);
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

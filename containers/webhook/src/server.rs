//! HTTPS for the API server: `POST /mutate` (pods), `POST /workloads/<level>`
//! (warnings at Deployments and the like), `GET /healthz` and `/readyz`. HTTP/1.1
//! with keep-alive (the API server reuses connections), every stage bounded:
//! connections (a newcomer is accepted at once, and one that sat a second in
//! its TLS handshake gives its slot up to it), the TLS handshake, headers, the
//! body's size and arrival, and the
//! memory reviews in flight hold together ([`MAX_REVIEW_MEMORY`]): a review is
//! charged its body's bytes as they arrive (and [`REVIEW_OVERHEAD`] once they
//! all have), and waits (at most [`QUEUE_TIMEOUT`] in all, well under the
//! manifest's `timeoutSeconds`) for room, so no burst of large pods can outgrow
//! the Deployment's memory limit; a body slower than [`MIN_BODY_RATE`] after its
//! first [`BODY_GRACE`] is dropped, so slow clients cannot hold the room either.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Lock};
use crate::review::{busy, review, unreadable, MAX_REVIEW_BYTES};
use crate::tls::Reloading;
use crate::workloads::Level;

/// Connections served at once; more wait in the listen backlog. An API server
/// keeps a few; each waiting review holds its read buffers (about 0.1 MiB with
/// [`READ_BUFFER`]), so this, with [`MAX_REVIEW_MEMORY`], bounds the process.
pub const MAX_CONNECTIONS: usize = 128;
/// HTTP/1 read buffer per connection (hyper's default is 400 KiB: what a
/// connection waiting for room held of its body).
pub const READ_BUFFER: usize = 64 << 10;
/// Bytes reviews in flight hold at once in the pool (each is charged its
/// body's bytes as they arrive and [`REVIEW_OVERHEAD`]); the express lane
/// holds room for one more whole review (5 MiB), 16 MiB in all: with the
/// process's own few MiB, what the Deployment's memory limit is set from
/// (docs/benchmarks.md, "Webhook": two reviews at the body bound fit in the
/// pool, a third in the lane).
pub const MAX_REVIEW_MEMORY: usize = 11 << 20;
/// What a review holds besides its body, at most: the pod's view (1024
/// containers of each kind), attestd's annotations (256 KiB), the pod's
/// configuration parsed (64 KiB of TOML), the patch and the answer.
pub const REVIEW_OVERHEAD: usize = 2 << 20;
/// How long a review waits for room, in all, before it is answered busy: well
/// under the manifest's `timeoutSeconds` (5), so the API server hears why.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// A body must arrive at this rate at least, on average, once [`BODY_GRACE`]
/// has passed (an API server sends a review at once; 64 KiB is more than most
/// reviews, and the 3 MiB bound then takes at most [`BODY_TIMEOUT`]).
pub const MIN_BODY_RATE: usize = 64 << 10;
pub const BODY_GRACE: Duration = Duration::from_secs(1);
/// How long the rest of a body answered busy is read and dropped, at most.
const BUSY_DRAIN: Duration = Duration::from_secs(1);
/// How long a review waits for room in the pool before it asks for the
/// express lane.
pub const EXPRESS_AFTER: Duration = Duration::from_millis(100);
/// How often a body that sends nothing is checked against [`MIN_BODY_RATE`].
const BODY_TICK: Duration = Duration::from_millis(100);
/// A TLS handshake, the headers, or a body taking longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request sees.
pub struct State {
    pub config: Config,
    pub lock: Lock,
    /// Review memory, in KiB: [`MAX_REVIEW_MEMORY`] in all.
    pub memory: Semaphore,
    /// Room for one whole review beside it, in KiB (see `Charge`).
    pub express: Semaphore,
}

impl State {
    pub fn new(config: Config, lock: Lock) -> State {
        State {
            config,
            lock,
            memory: Semaphore::new(MAX_REVIEW_MEMORY >> 10),
            express: Semaphore::new(kib(MAX_REVIEW_BYTES + REVIEW_OVERHEAD) as usize),
        }
    }
}

/// Why a body was not read whole.
enum Unread {
    /// Its reason and status.
    Refused(String, u16),
    /// No room for it within [`QUEUE_TIMEOUT`]: what arrived, for its uid.
    Busy(Vec<u8>),
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Review memory taken from [`State::memory`] a KiB at a time, as bytes
/// arrive. Charging as bytes arrive lets reviews hold part of the room and
/// wait for more, which alone could leave every review waiting on the others
/// (16 bodies at the bound, all arriving at once, did): a review that finds no
/// room within [`EXPRESS_AFTER`] takes the express lane instead, room for one
/// whole review ([`State::express`]), for all it can still need, and gives its
/// share of the pool back. So one review always moves, and the others follow.
struct Charge<'a> {
    state: &'a State,
    permit: Option<tokio::sync::SemaphorePermit<'a>>,
    lane: Option<tokio::sync::SemaphorePermit<'a>>,
    /// The most this review may need: its declared size (or the bound) and
    /// [`REVIEW_OVERHEAD`].
    cap: usize,
    /// Until when a review may wait for room, in all.
    until: tokio::time::Instant,
    /// How long it waited so far (not the client's slowness).
    waited: Duration,
}

impl<'a> Charge<'a> {
    fn new(state: &'a State, declared: Option<usize>) -> Charge<'a> {
        Charge {
            state,
            permit: None,
            lane: None,
            cap: declared.unwrap_or(MAX_REVIEW_BYTES).min(MAX_REVIEW_BYTES) + REVIEW_OVERHEAD,
            until: tokio::time::Instant::now() + QUEUE_TIMEOUT,
            waited: Duration::ZERO,
        }
    }

    /// Hold room for `bytes` in all; `false` when there was none in time.
    async fn cover(&mut self, bytes: usize) -> bool {
        if self.lane.is_some() {
            return bytes <= self.cap;
        }
        let (want, held) = (
            kib(bytes),
            self.permit.as_ref().map_or(0, |p| p.num_permits() as u32),
        );
        if want <= held {
            return true;
        }
        let asked = tokio::time::Instant::now();
        let quick = self.until.min(asked + EXPRESS_AFTER);
        let got = tokio::time::timeout_at(quick, self.state.memory.acquire_many(want - held)).await;
        if let Ok(Ok(p)) = got {
            self.waited += asked.elapsed();
            match &mut self.permit {
                Some(held) => held.merge(p),
                None => self.permit = Some(p),
            }
            return true;
        }
        let lane = self.state.express.acquire_many(kib(self.cap));
        let got = tokio::time::timeout_at(self.until, lane).await;
        self.waited += asked.elapsed();
        match got {
            Ok(Ok(p)) if bytes <= self.cap => {
                self.lane = Some(p);
                // The lane covers it all: the pool's share goes to the others.
                self.permit = None;
                true
            }
            _ => false,
        }
    }
}

/// The body of a review, at most [`MAX_REVIEW_BYTES`], each byte charged to
/// `charge` as it arrives; dropped when slower than [`MIN_BODY_RATE`] after
/// [`BODY_GRACE`], or not whole within [`BODY_TIMEOUT`].
async fn read_body(mut body: Incoming, charge: &mut Charge<'_>) -> Result<Vec<u8>, Unread> {
    let started = tokio::time::Instant::now();
    // Grown as bytes arrive, never reserved ahead: a reservation of the
    // declared size landed on memory freed by earlier reviews, resident
    // already, and doubled the peak (32.7 → 67 MiB at 16 reviews at the bound).
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let elapsed = started.elapsed();
        // The client's own pace: not the time this review waited for room.
        let sending = elapsed.saturating_sub(charge.waited);
        if elapsed > BODY_TIMEOUT {
            return Err(Unread::Refused(
                format!("the body took more than {BODY_TIMEOUT:?}"),
                408,
            ));
        }
        if sending > BODY_GRACE && buf.len() < MIN_BODY_RATE * sending.as_millis() as usize / 1000 {
            return Err(Unread::Refused(
                format!(
                    "the body arrived slower than {} KiB/s ({} bytes in {sending:.1?})",
                    MIN_BODY_RATE >> 10,
                    buf.len()
                ),
                408,
            ));
        }
        let frame = match tokio::time::timeout(BODY_TICK, body.frame()).await {
            Err(_) => continue,
            Ok(None) => return Ok(buf),
            Ok(Some(f)) => {
                f.map_err(|e| Unread::Refused(format!("the body could not be read: {e}"), 400))?
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len() + data.len();
        if len > MAX_REVIEW_BYTES {
            drop(buf);
            drain(body, BODY_TIMEOUT).await;
            return Err(Unread::Refused(
                format!("the body is larger than {MAX_REVIEW_BYTES} bytes"),
                413,
            ));
        }
        if !charge.cover(len).await {
            // What arrived is enough to name the request; the rest is read and
            // dropped a frame at a time (briefly), so the client hears why.
            let head = buf.len().min(4096);
            buf.truncate(head);
            buf.extend_from_slice(&data[..data.len().min(4096 - head)]);
            drain(body, BUSY_DRAIN).await;
            return Err(Unread::Busy(buf));
        }
        buf.extend_from_slice(&data);
    }
}

/// Read and drop what is left of a refused body: at most [`MAX_REVIEW_BYTES`]
/// more, within `within`, one frame held at a time.
async fn drain(mut body: Incoming, within: Duration) {
    let mut left = MAX_REVIEW_BYTES;
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n > left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

/// Review the request's body within the memory bound: a pod's (`level`
/// None) or a workload's in a namespace enforcing `level`.
async fn mutate(
    state: &State,
    req: Request<Incoming>,
    level: Option<Level>,
) -> (Vec<u8>, crate::review::Outcome) {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
        // Refused unread; what was sent is read and dropped first (up to a
        // bound), so the client hears the answer rather than a reset.
        drain(req.into_body(), BODY_TIMEOUT).await;
        return unreadable(
            format!("the body is larger than {MAX_REVIEW_BYTES} bytes"),
            413,
        );
    }
    let mut charge = Charge::new(state, declared);
    let answer_busy = |got: &[u8]| {
        busy(
            got,
            format!(
                "attestd-webhook is busy: no room for this review within {QUEUE_TIMEOUT:?}; the API server retries"
            ),
        )
    };
    match read_body(req.into_body(), &mut charge).await {
        Ok(b) => {
            // What reviewing it holds besides the body.
            if !charge.cover(b.len() + REVIEW_OVERHEAD).await {
                return answer_busy(&b);
            }
            review(&b, level, &state.config, &state.lock)
        }
        Err(Unread::Busy(got)) => answer_busy(&got),
        Err(Unread::Refused(why, code)) => unreadable(why, code),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

fn json(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let workloads = Level::from_path(req.uri().path());
    match (req.method(), req.uri().path()) {
        // Live while it answers; ready once its configuration and certificate
        // loaded, which happened before it listened.
        (&Method::GET, "/healthz") | (&Method::GET, "/readyz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, path) if path == "/mutate" || workloads.is_some() => {
            let started = Instant::now();
            // A refusal in AdmissionReview form, answered 200: the API server shows
            // its message rather than a bare "webhook call failed".
            let (body, outcome) = mutate(&state, req, workloads).await;
            tracing::info!(
                uid = %outcome.uid,
                allowed = outcome.allowed,
                patched = outcome.patched,
                micros = started.elapsed().as_micros() as u64,
                "{}",
                outcome.message
            );
            json(body)
        }
        (_, "/mutate") | (_, "/healthz") | (_, "/readyz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ if workloads.is_some() => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serve on `listener` until the process ends.
/// Connections still in their TLS handshake from one source address at most;
/// a newer one from there closes its oldest.
pub const MAX_HANDSHAKING_PER_SOURCE: usize = 32;

/// How long a connection has been in its TLS handshake before it may be closed
/// to make room: a client that means it completes one in milliseconds.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// One connection still in its TLS handshake.
struct Pending {
    id: u64,
    source: std::net::IpAddr,
    since: tokio::time::Instant,
    stop: Arc<tokio::sync::Notify>,
}

/// The connections in their TLS handshake, oldest first: those closed to make
/// room (once [`EVICT_AFTER`] old). A client that connects and never says
/// hello costs the webhook a slot only until a newcomer needs it, never the
/// API server's turn.
#[derive(Default)]
struct Handshaking(std::sync::Mutex<std::collections::VecDeque<Pending>>);

impl Handshaking {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Pending>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, id: u64, source: std::net::IpAddr) -> Arc<tokio::sync::Notify> {
        let stop = Arc::new(tokio::sync::Notify::new());
        self.lock().push_back(Pending {
            id,
            source,
            since: tokio::time::Instant::now(),
            stop: stop.clone(),
        });
        stop
    }

    fn done(&self, id: u64) {
        self.lock().retain(|p| p.id != id);
    }

    /// Close the oldest (from `source`, if given) that has been in its
    /// handshake for [`EVICT_AFTER`]; `false` when there is none.
    fn evict(&self, source: Option<std::net::IpAddr>) -> bool {
        let mut q = self.lock();
        let aged = tokio::time::Instant::now() - EVICT_AFTER;
        let at = q
            .iter()
            .position(|p| p.since <= aged && source.is_none_or(|s| p.source == s));
        match at.and_then(|i| q.remove(i)) {
            Some(p) => {
                p.stop.notify_one();
                true
            }
            None => false,
        }
    }

    fn from(&self, source: std::net::IpAddr) -> usize {
        self.lock().iter().filter(|p| p.source == source).count()
    }
}

/// Removes a connection from [`Handshaking`] however its handshake ends.
struct Shaken<'a>(&'a Handshaking, u64);

impl Drop for Shaken<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

/// `client_ca`: only clients with a certificate it signed are served.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<Reloading>,
    client_ca: Option<Vec<u8>>,
    state: Arc<State>,
) -> Result<(), std::io::Error> {
    let tls = certs
        .server_config(client_ca.as_deref())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshaking = Arc::new(Handshaking::default());
    let waiting = Arc::new(AtomicUsize::new(0));
    for id in 0u64.. {
        // Accepted first, then given a slot: a newcomer is seen, and a silent
        // connection makes room for it, instead of the newcomer waiting in the
        // listen backlog behind silent ones for their handshake deadline.
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            // Out of descriptors or a reset before accept: wait a little, go on.
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if handshaking.from(peer.ip()) >= MAX_HANDSHAKING_PER_SOURCE {
            handshaking.evict(Some(peer.ip()));
        }
        let permit = slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            // Full: the newcomer waits for a slot in a task of its own, so the
            // loop goes on accepting and the kernel's backlog never fills (a
            // full one drops the API server's SYNs); few may wait at once.
            if waiting.load(Ordering::Relaxed) >= MAX_WAITING {
                tracing::debug!(%peer, "closed: {MAX_WAITING} connections already wait for a slot");
                continue;
            }
            // Counted here, not in its task: a burst is bounded before any
            // of its tasks has run.
            waiting.fetch_add(1, Ordering::Relaxed);
            handshaking.evict(None);
        }
        let (acceptor, state, handshaking, slots, waiting) = (
            acceptor.clone(),
            state.clone(),
            handshaking.clone(),
            slots.clone(),
            waiting.clone(),
        );
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => {
                    let p = slot(&slots, &handshaking).await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    match p {
                        Some(p) => p,
                        None => return,
                    }
                }
            };
            connection(tcp, peer, acceptor, state, &handshaking, id).await;
        });
    }
    Ok(())
}

/// Accepted connections waiting for a slot at most; more are closed at once.
pub const MAX_WAITING: usize = 512;

/// A slot for a connection accepted while all were taken: its turn in order,
/// closing connections that aged in their handshake as it waits; `None` after
/// [`HANDSHAKE_TIMEOUT`].
async fn slot(
    slots: &Arc<Semaphore>,
    handshaking: &Handshaking,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // One acquire, kept across the loop: its place in the queue stays.
    let acquire = slots.clone().acquire_owned();
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            p = &mut acquire => return p.ok(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                handshaking.evict(None);
            }
        }
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    handshaking: &Handshaking,
    id: u64,
) {
    let _ = tcp.set_nodelay(true);
    let stop = handshaking.add(id, peer.ip());
    let shaken = Shaken(handshaking, id);
    let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        r = hs => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = stop.notified() => {
            tracing::debug!(%peer, "closed in its TLS handshake to make room for a newer connection");
            return;
        }
    };
    drop(shaken);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(READ_BUFFER)
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

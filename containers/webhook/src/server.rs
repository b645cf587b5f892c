//! HTTPS for the API server: `POST /mutate`, `GET /healthz` and `/readyz`. HTTP/1.1
//! with keep-alive (the API server reuses connections), every stage bounded:
//! connections, the TLS handshake, headers, the body's size and arrival, and the
//! memory reviews in flight hold together ([`MAX_REVIEW_MEMORY`]): a review is
//! charged its body's size before the body is read, and waits (at most
//! [`QUEUE_TIMEOUT`]) for room, so no burst of large pods can outgrow the
//! Deployment's memory limit.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use crate::review::{review, unreadable, MAX_REVIEW_BYTES};
use crate::tls::Reloading;

/// Connections served at once; more wait in the listen backlog. An API server
/// keeps a few; each waiting review holds its read buffers (about 0.1 MiB with
/// [`READ_BUFFER`]), so this, with [`MAX_REVIEW_MEMORY`], bounds the process.
pub const MAX_CONNECTIONS: usize = 128;
/// HTTP/1 read buffer per connection (hyper's default is 400 KiB: what a
/// connection waiting for room held of its body).
pub const READ_BUFFER: usize = 64 << 10;
/// Bytes reviews in flight hold at once (each is charged its body's size and
/// [`REVIEW_OVERHEAD`]): with the process's own few MiB, what the Deployment's
/// memory limit is set from (docs/benchmarks.md, "Webhook": three reviews at
/// the body bound fit).
pub const MAX_REVIEW_MEMORY: usize = 16 << 20;
/// What a review holds besides its body, at most: the pod's view (1024
/// containers of each kind), attestd's annotations (256 KiB), the pod's
/// configuration parsed (64 KiB of TOML), the patch and the answer.
pub const REVIEW_OVERHEAD: usize = 2 << 20;
/// How long a review waits for room before it is refused as busy (the API
/// server gives a webhook 10 s by default).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl State {
    pub fn new(config: Config, lock: Lock) -> State {
        State {
            config,
            lock,
            memory: Semaphore::new(MAX_REVIEW_MEMORY >> 10),
        }
    }
}

/// The body of a review, read into one buffer of the size it declared, at most
/// [`MAX_REVIEW_BYTES`]; `Err` is the refusal (its reason and status).
async fn read_body(mut body: Incoming, declared: Option<usize>) -> Result<Vec<u8>, (String, u16)> {
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(MAX_REVIEW_BYTES));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| (format!("the body could not be read: {e}"), 400))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_REVIEW_BYTES {
                    return Err((
                        format!("the body is larger than {MAX_REVIEW_BYTES} bytes"),
                        413,
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let read = tokio::time::timeout(BODY_TIMEOUT, read).await;
    match read {
        Err(_) => Err((format!("the body took more than {BODY_TIMEOUT:?}"), 408)),
        Ok(Err(e)) => {
            drop(buf);
            drain(body).await;
            Err(e)
        }
        Ok(Ok(())) => Ok(buf),
    }
}

/// Read and drop what is left of a refused body: at most [`MAX_REVIEW_BYTES`]
/// more, within [`BODY_TIMEOUT`], one frame held at a time.
async fn drain(mut body: Incoming) {
    let mut left = MAX_REVIEW_BYTES;
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
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

/// Review the request's body within the memory bound.
async fn mutate(state: &State, req: Request<Incoming>) -> (Vec<u8>, crate::review::Outcome) {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
        // Refused unread; what was sent is read and dropped first (up to a
        // bound), so the client hears the answer rather than a reset.
        drain(req.into_body()).await;
        return unreadable(
            format!("the body is larger than {MAX_REVIEW_BYTES} bytes"),
            413,
        );
    }
    // Charged before reading: the declared size, or the bound when none is
    // declared (chunked).
    let charge = declared.unwrap_or(MAX_REVIEW_BYTES) + REVIEW_OVERHEAD;
    let kib = u32::try_from(charge.div_ceil(1024)).unwrap_or(u32::MAX);
    let _room = match tokio::time::timeout(QUEUE_TIMEOUT, state.memory.acquire_many(kib)).await {
        Ok(Ok(p)) => p,
        _ => {
            return unreadable(
                format!("attestd-webhook is busy: no room for a {charge}-byte review within {QUEUE_TIMEOUT:?}; the API server retries"),
                429,
            )
        }
    };
    match read_body(req.into_body(), declared).await {
        Ok(b) => review(&b, &state.config, &state.lock),
        Err((why, code)) => unreadable(why, code),
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
    match (req.method(), req.uri().path()) {
        // Live while it answers; ready once its configuration and certificate
        // loaded, which happened before it listened.
        (&Method::GET, "/healthz") | (&Method::GET, "/readyz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/mutate") => {
            let started = Instant::now();
            // A refusal in AdmissionReview form, answered 200: the API server shows
            // its message rather than a bare "webhook call failed".
            let (body, outcome) = mutate(&state, req).await;
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
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serve on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<Reloading>,
    state: Arc<State>,
) -> Result<(), std::io::Error> {
    let tls = certs
        .server_config()
        .map_err(|e| std::io::Error::other(format!("cannot configure TLS: {e}")))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            // Out of descriptors or a reset before accept: wait a little, go on.
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(tcp, peer, acceptor, state).await;
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
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

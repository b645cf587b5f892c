//! HTTPS for the API server: `POST /mutate`, `GET /healthz` and `/readyz`. HTTP/1.1
//! with keep-alive (the API server reuses connections), every stage bounded:
//! connections, the TLS handshake, headers, the body's size and arrival.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Lock};
use crate::review::{review, unreadable, MAX_REVIEW_BYTES};
use crate::tls::Reloading;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// A TLS handshake, the headers, or a body taking longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request sees.
pub struct State {
    pub config: Config,
    pub lock: Lock,
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
            let body = Limited::new(req.into_body(), MAX_REVIEW_BYTES);
            // A refusal in AdmissionReview form, answered 200: the API server shows
            // its message rather than a bare "webhook call failed".
            let (body, outcome) = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
                Err(_) => unreadable(format!("the body took more than {BODY_TIMEOUT:?}"), 408),
                Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => unreadable(
                    format!("the body is larger than {MAX_REVIEW_BYTES} bytes"),
                    413,
                ),
                Ok(Err(e)) => unreadable(format!("the body could not be read: {e}"), 400),
                Ok(Ok(b)) => review(&b.to_bytes(), &state.config, &state.lock),
            };
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
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

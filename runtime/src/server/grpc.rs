//! `attestation_agent.AttestationAgentService` over gRPC, on TCP or a Unix socket.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use attestd_proto::grpc::attestation_agent::{self as pb, attestation_agent_service_server as svc};
use attester_sdk::status::to_grpc;
use attester_sdk::Error;
use tonic::{Request, Response, Status};

use super::handle;
pub use super::GrpcAddr;
use crate::service::{MeasurementEvent, MeasurementResult, Service};

struct Adapter(Arc<Service>);

fn status(e: Error) -> Status {
    to_grpc(&e)
}

#[tonic::async_trait]
impl svc::AttestationAgentService for Adapter {
    async fn get_evidence(
        &self,
        req: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let evidence = handle(
            "GetEvidence",
            self.0.get_evidence(req.into_inner().runtime_data),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::GetEvidenceResponse { evidence }))
    }

    async fn get_additional_evidence(
        &self,
        req: Request<pb::GetAdditionalEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let evidence = handle(
            "GetAdditionalEvidence",
            self.0
                .get_additional_evidence(req.into_inner().runtime_data),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::GetEvidenceResponse { evidence }))
    }

    async fn get_token(
        &self,
        req: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        let token = handle("GetToken", self.0.get_token(&req.into_inner().token_type))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetTokenResponse { token }))
    }

    async fn extend_runtime_measurement(
        &self,
        req: Request<pb::ExtendRuntimeMeasurementRequest>,
    ) -> Result<Response<pb::ExtendRuntimeMeasurementResponse>, Status> {
        let r = req.into_inner();
        let event = MeasurementEvent {
            domain: r.domain,
            operation: r.operation,
            content: r.content,
            register_index: r.register_index,
        };
        let r = handle(
            "ExtendRuntimeMeasurement",
            self.0.extend_runtime_measurement(event),
        )
        .await
        .map_err(status)?;
        let result = match r {
            MeasurementResult::Ok => pb::RuntimeMeasurementResult::Ok,
            MeasurementResult::NotSupported => pb::RuntimeMeasurementResult::NotSupported,
            MeasurementResult::NotEnabled => pb::RuntimeMeasurementResult::NotEnabled,
        };
        Ok(Response::new(pb::ExtendRuntimeMeasurementResponse {
            result: result as i32,
        }))
    }

    async fn bind_init_data(
        &self,
        req: Request<pb::BindInitDataRequest>,
    ) -> Result<Response<pb::BindInitDataResponse>, Status> {
        handle(
            "BindInitData",
            self.0.bind_init_data(req.into_inner().digest),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(pb::BindInitDataResponse {}))
    }

    async fn get_tee_type(
        &self,
        _: Request<pb::GetTeeTypeRequest>,
    ) -> Result<Response<pb::GetTeeTypeResponse>, Status> {
        Ok(Response::new(pb::GetTeeTypeResponse {
            tee: self.0.get_tee_type(),
        }))
    }

    async fn get_additional_tees(
        &self,
        _: Request<pb::GetAdditionalTeesRequest>,
    ) -> Result<Response<pb::GetAdditionalTeesResponse>, Status> {
        Ok(Response::new(pb::GetAdditionalTeesResponse {
            additional_tees: self.0.get_additional_tees(),
        }))
    }
}

/// A bound gRPC listener, ready to serve.
pub enum GrpcListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Bind `addr` (a Unix path must not exist: see `crate::socket_files::prepare_socket`).
pub async fn bind(addr: &GrpcAddr) -> Result<GrpcListener, Error> {
    let fail = |e: std::io::Error| {
        Error::internal(format!("cannot listen for gRPC on {addr}")).with_source(e)
    };
    Ok(match addr {
        GrpcAddr::Tcp(a) => {
            GrpcListener::Tcp(tokio::net::TcpListener::bind(a).await.map_err(fail)?)
        }
        GrpcAddr::Unix(p) => {
            let l = tokio::net::UnixListener::bind(p).map_err(fail)?;
            crate::socket_files::set_mode(p, crate::socket_files::SOCKET_MODE)?;
            GrpcListener::Unix(l, p.clone())
        }
    })
}

/// The AA API's gRPC router.
pub fn router(service: Arc<Service>) -> Router {
    builder().add_service(
        svc::AttestationAgentServiceServer::new(Adapter(service))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
}

/// Streams (calls) one connection may have open at once: a client that opens
/// more waits for one to finish (it used to get some 57 000, and the memory with
/// them).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// The largest request body any RPC takes: the key provider's input (1 MiB) with
/// room for its framing; the AA API's requests are far smaller.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// A connection is pinged after this long without traffic, and closed when the
/// ping is not answered within `KEEPALIVE_TIMEOUT`: dead peers do not hold memory.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// No call outlives this, whatever the client's deadline (a KBS handshake with a
/// slow device and a slow KBS stays well under it).
pub const MAX_CALL: std::time::Duration = std::time::Duration::from_secs(150);

/// A router from [`builder`].
pub type Router = tonic::transport::server::Router<Layers>;

/// The layers every gRPC server here has: calls counted per connection (for
/// eviction, `accept`), then the refusals' rewrite.
pub type Layers = tower_layer::Stack<
    super::refusals::GrpcRefusals,
    tower_layer::Stack<super::accept::CountCalls, tower_layer::Identity>,
>;

/// A gRPC server with the bounds above, for the AA API and the key provider
/// alike, answering undecodable requests and unknown methods as ttrpc does.
pub fn builder() -> tonic::transport::Server<Layers> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
        .timeout(MAX_CALL)
        .layer(super::accept::CountCalls)
        .layer(super::refusals::GrpcRefusals)
}

/// How long in-flight gRPC calls get to finish at shutdown.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A gRPC server (the AA API or the key provider) running in its own task, from
/// bind to stop: the one lifecycle both use.
pub struct GrpcServer {
    what: &'static str,
    addr: GrpcAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// `None` once it has ended.
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl GrpcServer {
    /// Checked at start, before any plugin is launched: this build can (a build
    /// without the `grpc-server` feature refuses here).
    pub fn can_serve(_what: &str, _addr: &dyn std::fmt::Display) -> Result<(), Error> {
        Ok(())
    }

    /// Bind `addr` (replacing a stale Unix socket, refusing a live one) and serve
    /// `router` there until [`GrpcServer::stop`].
    pub async fn start(
        what: &'static str,
        router: Router,
        addr: &GrpcAddr,
    ) -> Result<GrpcServer, Error> {
        if let GrpcAddr::Unix(p) = addr {
            crate::socket_files::prepare_socket(p)?;
        }
        let listener = bind(addr).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_router(what, router, listener, async {
            let _ = rx.await;
        }));
        Ok(GrpcServer {
            what,
            addr: addr.clone(),
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Resolves when the server ends before it was asked to stop (it should not),
    /// once: why it ended.
    pub async fn ended(&mut self) -> Error {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let r = task.await;
        self.task = None;
        match r {
            Ok(Ok(())) => Error::internal(format!(
                "the {} gRPC server on {} stopped",
                self.what, self.addr
            )),
            Ok(Err(e)) => e.context(format!("the {} gRPC server on {}", self.what, self.addr)),
            Err(e) => Error::internal(format!(
                "the {} gRPC server on {} panicked",
                self.what, self.addr
            ))
            .with_source(e),
        }
    }

    /// Stop: in-flight calls get [`SHUTDOWN_GRACE`] (graceful shutdown otherwise
    /// lasts as long as clients keep their HTTP/2 connections), then the task is
    /// dropped and a Unix socket removed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        if let GrpcAddr::Unix(p) = &self.addr {
            let _ = crate::socket_files::remove_socket(p);
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves.
async fn serve_router(
    what: &'static str,
    router: Router,
    listener: GrpcListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if crate::fault::hit(&format!("grpc-{what}-ends")) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return Err(Error::internal("its listener failed (fault injection)"));
    }
    let fail = |e: tonic::transport::Error| Error::internal("grpc server failed").with_source(e);
    use super::accept::{incoming, Limits, GRPC_QUIET_AFTER, PREFACE_TIMEOUT};
    let limits = Limits {
        max: super::accept::connection_cap(),
        quiet_after: GRPC_QUIET_AFTER,
        preface_within: Some(PREFACE_TIMEOUT),
    };
    match listener {
        GrpcListener::Tcp(l) => router
            .serve_with_incoming_shutdown(incoming(l, limits, what), shutdown)
            .await
            .map_err(fail),
        GrpcListener::Unix(l, _) => router
            .serve_with_incoming_shutdown(incoming(l, limits, what), shutdown)
            .await
            .map_err(fail),
    }
}

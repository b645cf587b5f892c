//! gRPC adapter: proto messages in, [`Plugin`] calls, proto messages out; plus the
//! standard grpc.health.v1 service.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use attestd_proto::grpc::attester::{self as pb, attester_server};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::Plugin;
use crate::convert::grpc::info_to_pb;
use crate::status::to_grpc;
use crate::{Attester, Error, Result};

struct Adapter<A>(Arc<Plugin<A>>);

#[tonic::async_trait]
impl<A: Attester> attester_server::Attester for Adapter<A> {
    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(info_to_pb(
            &self.0.info(&req.into_inner().protocol_versions),
        )))
    }

    async fn detect(
        &self,
        _: Request<pb::DetectRequest>,
    ) -> Result<Response<pb::DetectResponse>, Status> {
        let present = self.0.detect().map_err(|e| to_grpc(&e))?;
        Ok(Response::new(pb::DetectResponse { present }))
    }

    async fn get_evidence(
        &self,
        req: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let ev = self
            .0
            .evidence(req.into_inner().report_data)
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(Response::new(pb::GetEvidenceResponse {
            evidence: ev.bytes,
            format: ev.format,
        }))
    }

    async fn extend_measurement(
        &self,
        req: Request<pb::ExtendMeasurementRequest>,
    ) -> Result<Response<pb::ExtendMeasurementResponse>, Status> {
        let req = req.into_inner();
        self.0
            .extend_measurement(req.register, req.digest)
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(Response::new(pb::ExtendMeasurementResponse {}))
    }

    async fn read_measurement(
        &self,
        req: Request<pb::ReadMeasurementRequest>,
    ) -> Result<Response<pb::ReadMeasurementResponse>, Status> {
        let value = self
            .0
            .read_measurement(req.into_inner().register)
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(Response::new(pb::ReadMeasurementResponse { value }))
    }

    async fn bind_init_data(
        &self,
        req: Request<pb::BindInitDataRequest>,
    ) -> Result<Response<pb::BindInitDataResponse>, Status> {
        self.0
            .bind_init_data(req.into_inner().digest)
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(Response::new(pb::BindInitDataResponse {}))
    }
}

/// grpc.health.v1's Check, answered by [`Attester::health`] (tonic-health's own
/// service only reports what it is told, once).
struct Health<A>(Arc<Plugin<A>>);

#[tonic::async_trait]
impl<A: Attester> tonic_health::pb::health_server::Health for Health<A> {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> std::result::Result<Response<HealthCheckResponse>, Status> {
        let status = if self.0.healthy() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = std::result::Result<HealthCheckResponse, Status>>
                + Send,
        >,
    >;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("Watch: poll Check instead"))
    }
}

pub(super) async fn serve<A: Attester>(
    plugin: Arc<Plugin<A>>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| {
        Error::internal(format!("cannot listen on {}", socket.display())).with_source(e)
    })?;
    tracing::info!(socket = %socket.display(), "serving over grpc");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(HealthServer::new(Health(plugin.clone())))
        .add_service(attester_server::AttesterServer::new(Adapter(plugin)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(|e| Error::internal("grpc server failed").with_source(e)),
        _ = shutdown => {}
    }
    let _ = stop_tx.send(true);
    // Graceful shutdown lasts until the core closes its (long-lived) connection;
    // in-flight calls get SHUTDOWN_GRACE, then the rest is dropped.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(r) => r.map_err(|e| Error::internal("grpc server failed").with_source(e)),
        Err(_) => Ok(()),
    }
}

/// How long in-flight calls get to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

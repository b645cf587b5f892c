//! ttrpc adapter: proto messages in, [`Plugin`] calls, proto messages out.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use attestd_proto::ttrpc::{attester as pb, attester_ttrpc, health, health_ttrpc};
use ttrpc::r#async::TtrpcContext;

use super::Plugin;
use crate::convert::ttrpc::info_to_pb;
use crate::status::to_ttrpc;
use crate::{Attester, Error, Result};

struct Adapter<A>(Arc<Plugin<A>>);

#[async_trait::async_trait]
impl<A: Attester> attester_ttrpc::Attester for Adapter<A> {
    async fn info(
        &self,
        _: &TtrpcContext,
        req: pb::InfoRequest,
    ) -> ttrpc::Result<pb::InfoResponse> {
        Ok(info_to_pb(&self.0.info(&req.protocol_versions)))
    }

    async fn detect(
        &self,
        _: &TtrpcContext,
        _: pb::DetectRequest,
    ) -> ttrpc::Result<pb::DetectResponse> {
        let present = self.0.detect().map_err(|e| to_ttrpc(&e))?;
        Ok(pb::DetectResponse {
            present,
            ..Default::default()
        })
    }

    async fn get_evidence(
        &self,
        _: &TtrpcContext,
        req: pb::GetEvidenceRequest,
    ) -> ttrpc::Result<pb::GetEvidenceResponse> {
        let ev = self
            .0
            .evidence(req.report_data)
            .await
            .map_err(|e| to_ttrpc(&e))?;
        Ok(pb::GetEvidenceResponse {
            evidence: ev.bytes,
            format: ev.format,
            ..Default::default()
        })
    }

    async fn extend_measurement(
        &self,
        _: &TtrpcContext,
        req: pb::ExtendMeasurementRequest,
    ) -> ttrpc::Result<pb::ExtendMeasurementResponse> {
        self.0
            .extend_measurement(req.register, req.digest)
            .await
            .map_err(|e| to_ttrpc(&e))?;
        Ok(Default::default())
    }

    async fn read_measurement(
        &self,
        _: &TtrpcContext,
        req: pb::ReadMeasurementRequest,
    ) -> ttrpc::Result<pb::ReadMeasurementResponse> {
        let value = self
            .0
            .read_measurement(req.register)
            .await
            .map_err(|e| to_ttrpc(&e))?;
        Ok(pb::ReadMeasurementResponse {
            value,
            ..Default::default()
        })
    }

    async fn bind_init_data(
        &self,
        _: &TtrpcContext,
        req: pb::BindInitDataRequest,
    ) -> ttrpc::Result<pb::BindInitDataResponse> {
        self.0
            .bind_init_data(req.digest)
            .await
            .map_err(|e| to_ttrpc(&e))?;
        Ok(Default::default())
    }
}

/// The same Check shape as grpc.health.v1, answered by [`Attester::health`].
struct Health<A>(Arc<Plugin<A>>);

#[async_trait::async_trait]
impl<A: Attester> health_ttrpc::Health for Health<A> {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::HealthCheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        use health::health_check_response::ServingStatus;
        let status = if self.0.healthy() {
            ServingStatus::SERVING
        } else {
            ServingStatus::NOT_SERVING
        };
        Ok(health::HealthCheckResponse {
            status: status.into(),
            ..Default::default()
        })
    }
}

pub(super) async fn serve<A: Attester>(
    plugin: Arc<Plugin<A>>,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut services = attester_ttrpc::create_attester(Arc::new(Adapter(plugin.clone())));
    services.extend(health_ttrpc::create_health(Arc::new(Health(plugin))));
    let addr = format!("unix://{}", socket.display());
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)
        .map_err(|e| bind_error(socket, e))?
        .register_service(services);
    server.start().await.map_err(|e| bind_error(socket, e))?;
    tracing::info!(socket = %socket.display(), "serving over ttrpc");
    shutdown.await;
    server
        .shutdown()
        .await
        .map_err(|e| Error::internal("ttrpc server shutdown failed").with_source(e))
}

fn bind_error(socket: &Path, e: ttrpc::Error) -> Error {
    Error::internal(format!("cannot listen on {}", socket.display())).with_source(e)
}

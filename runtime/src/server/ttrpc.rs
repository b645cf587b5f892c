//! `attestation_agent.AttestationAgentService` over ttrpc on a Unix socket.

use std::path::Path;
use std::sync::Arc;

use attestd_proto::ttrpc::{attestation_agent as pb, attestation_agent_ttrpc as svc};
use attester_sdk::status::to_ttrpc;
use attester_sdk::Error;
use ttrpc::r#async::TtrpcContext;

use super::handle;
use crate::service::{MeasurementEvent, MeasurementResult, Service};

struct Adapter(Arc<Service>);

fn status(e: Error) -> ttrpc::Error {
    to_ttrpc(&e)
}

#[async_trait::async_trait]
impl svc::AttestationAgentService for Adapter {
    async fn get_evidence(
        &self,
        _: &TtrpcContext,
        req: pb::GetEvidenceRequest,
    ) -> ttrpc::Result<pb::GetEvidenceResponse> {
        let evidence = handle("GetEvidence", self.0.get_evidence(req.RuntimeData))
            .await
            .map_err(status)?;
        Ok(pb::GetEvidenceResponse {
            Evidence: evidence,
            ..Default::default()
        })
    }

    async fn get_additional_evidence(
        &self,
        _: &TtrpcContext,
        req: pb::GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<pb::GetEvidenceResponse> {
        let evidence = handle(
            "GetAdditionalEvidence",
            self.0.get_additional_evidence(req.RuntimeData),
        )
        .await
        .map_err(status)?;
        Ok(pb::GetEvidenceResponse {
            Evidence: evidence,
            ..Default::default()
        })
    }

    async fn get_token(
        &self,
        _: &TtrpcContext,
        req: pb::GetTokenRequest,
    ) -> ttrpc::Result<pb::GetTokenResponse> {
        let token = handle("GetToken", self.0.get_token(&req.TokenType))
            .await
            .map_err(status)?;
        Ok(pb::GetTokenResponse {
            Token: token,
            ..Default::default()
        })
    }

    async fn extend_runtime_measurement(
        &self,
        _: &TtrpcContext,
        req: pb::ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<pb::ExtendRuntimeMeasurementResponse> {
        let event = MeasurementEvent {
            domain: req.Domain,
            operation: req.Operation,
            content: req.Content,
            register_index: req.RegisterIndex,
        };
        let r = handle(
            "ExtendRuntimeMeasurement",
            self.0.extend_runtime_measurement(event),
        )
        .await
        .map_err(status)?;
        let r = match r {
            MeasurementResult::Ok => pb::RuntimeMeasurementResult::OK,
            MeasurementResult::NotSupported => pb::RuntimeMeasurementResult::NOT_SUPPORTED,
            MeasurementResult::NotEnabled => pb::RuntimeMeasurementResult::NOT_ENABLED,
        };
        Ok(pb::ExtendRuntimeMeasurementResponse {
            Result: r.into(),
            ..Default::default()
        })
    }

    async fn bind_init_data(
        &self,
        _: &TtrpcContext,
        req: pb::BindInitDataRequest,
    ) -> ttrpc::Result<pb::BindInitDataResponse> {
        handle("BindInitData", self.0.bind_init_data(req.Digest))
            .await
            .map_err(status)?;
        Ok(Default::default())
    }

    async fn get_tee_type(
        &self,
        _: &TtrpcContext,
        _: pb::GetTeeTypeRequest,
    ) -> ttrpc::Result<pb::GetTeeTypeResponse> {
        Ok(pb::GetTeeTypeResponse {
            tee: self.0.get_tee_type(),
            ..Default::default()
        })
    }

    async fn get_additional_tees(
        &self,
        _: &TtrpcContext,
        _: pb::GetAdditionalTeesRequest,
    ) -> ttrpc::Result<pb::GetAdditionalTeesResponse> {
        Ok(pb::GetAdditionalTeesResponse {
            additional_tees: self.0.get_additional_tees(),
            ..Default::default()
        })
    }
}

/// A started ttrpc server; [`TtrpcServer::shutdown`] stops it and removes the socket.
pub struct TtrpcServer {
    server: ttrpc::r#async::Server,
    socket: std::path::PathBuf,
}

/// Bind `socket` (which must not exist: see `crate::socket_files::prepare_socket`) and serve.
pub async fn start(service: Arc<Service>, socket: &Path) -> Result<TtrpcServer, Error> {
    let services = svc::create_attestation_agent_service(Arc::new(Adapter(service)));
    start_services(services, socket).await
}

/// Serve ttrpc `services` on `socket` (shared with the key provider's server).
pub async fn start_services(
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
    socket: &Path,
) -> Result<TtrpcServer, Error> {
    let fail = |e: ttrpc::Error| {
        Error::internal(format!("cannot serve ttrpc on {}", socket.display())).with_source(e)
    };
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| {
        Error::internal(format!("cannot serve ttrpc on {}", socket.display())).with_source(e)
    })?;
    // The mode the umask left is not the one we want (0777 under umask 000).
    crate::socket_files::set_mode(socket, crate::socket_files::SOCKET_MODE)?;
    // attestd's own accept loop (bounded, backs off at the fd limit), handed to
    // ttrpc through its listener extension point.
    use super::accept::{incoming, Limits, TtrpcConn, MAX_IN_FLIGHT};
    use futures::StreamExt as _;
    let limits = Limits {
        max: super::accept::connection_cap(),
        quiet_after: super::accept::TTRPC_QUIET_AFTER,
        preface_within: None,
    };
    let known: std::sync::Arc<[String]> = services.keys().cloned().collect();
    let incoming = incoming(listener, limits, "ttrpc")
        .map(move |c| c.map(|c| TtrpcConn::new(c, MAX_IN_FLIGHT, known.clone())));
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(ttrpc::r#async::transport::Listener::new(incoming))
        .register_service(super::refusals::ttrpc_services(services));
    server.start().await.map_err(fail)?;
    Ok(TtrpcServer {
        server,
        socket: socket.to_path_buf(),
    })
}

impl TtrpcServer {
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown().await;
        let _ = crate::socket_files::remove_socket(&self.socket);
    }
}

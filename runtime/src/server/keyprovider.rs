//! `keyprovider.KeyProviderService` (ocicrypt's key-provider protocol) over ttrpc
//! and gRPC: thin adapters over `Service::{wrap_key, unwrap_key}`.

use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "grpc-server")]
use attestd_proto::grpc::keyprovider as gpb;
#[cfg(feature = "grpc-server")]
use attestd_proto::grpc::keyprovider::key_provider_service_server as gsvc;
use attestd_proto::ttrpc::{keyprovider as tpb, keyprovider_ttrpc as tsvc};
#[cfg(feature = "grpc-server")]
use attester_sdk::status::to_grpc;
use attester_sdk::status::to_ttrpc;
use attester_sdk::Error;

use super::handle;
use crate::service::Service;

struct Adapter(Arc<Service>);

#[async_trait::async_trait]
impl tsvc::KeyProviderService for Adapter {
    async fn wrap_key(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: tpb::KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<tpb::KeyProviderKeyWrapProtocolOutput> {
        let out = handle(
            "WrapKey",
            self.0.wrap_key(req.KeyProviderKeyWrapProtocolInput),
        )
        .await
        .map_err(|e| to_ttrpc(&e))?;
        Ok(tpb::KeyProviderKeyWrapProtocolOutput {
            KeyProviderKeyWrapProtocolOutput: out,
            ..Default::default()
        })
    }

    async fn un_wrap_key(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: tpb::KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<tpb::KeyProviderKeyWrapProtocolOutput> {
        let out = handle(
            "UnWrapKey",
            self.0.unwrap_key(req.KeyProviderKeyWrapProtocolInput),
        )
        .await
        .map_err(|e| to_ttrpc(&e))?;
        Ok(tpb::KeyProviderKeyWrapProtocolOutput {
            KeyProviderKeyWrapProtocolOutput: out,
            ..Default::default()
        })
    }
}

#[cfg(feature = "grpc-server")]
#[tonic::async_trait]
impl gsvc::KeyProviderService for Adapter {
    async fn wrap_key(
        &self,
        req: tonic::Request<gpb::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<tonic::Response<gpb::KeyProviderKeyWrapProtocolOutput>, tonic::Status> {
        let input = req.into_inner().key_provider_key_wrap_protocol_input;
        let out = handle("WrapKey", self.0.wrap_key(input))
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(tonic::Response::new(
            gpb::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            },
        ))
    }

    async fn un_wrap_key(
        &self,
        req: tonic::Request<gpb::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<tonic::Response<gpb::KeyProviderKeyWrapProtocolOutput>, tonic::Status> {
        let input = req.into_inner().key_provider_key_wrap_protocol_input;
        let out = handle("UnWrapKey", self.0.unwrap_key(input))
            .await
            .map_err(|e| to_grpc(&e))?;
        Ok(tonic::Response::new(
            gpb::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            },
        ))
    }
}

pub async fn start_ttrpc(
    service: Arc<Service>,
    socket: &Path,
) -> Result<super::ttrpc::TtrpcServer, Error> {
    super::ttrpc::start_services(
        tsvc::create_key_provider_service(Arc::new(Adapter(service))),
        socket,
    )
    .await
}

#[cfg(feature = "grpc-server")]
pub fn grpc_router(service: Arc<Service>) -> super::grpc::Router {
    super::grpc::builder().add_service(
        gsvc::KeyProviderServiceServer::new(Adapter(service))
            .max_decoding_message_size(super::grpc::MAX_REQUEST_BYTES),
    )
}

/// Without the gRPC server: nothing to route; starting it is refused.
#[cfg(not(feature = "grpc-server"))]
pub fn grpc_router(_: Arc<Service>) -> super::grpc::Router {
    super::grpc::Router::none()
}

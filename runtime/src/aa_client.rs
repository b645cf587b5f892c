//! A client of the AA API over either transport, as CDH and kbs_protocol speak it.
//! Used by `attestd client` and the benchmarks.

use std::time::Duration;

use attestd_proto::grpc::attestation_agent::{
    self as gpb, attestation_agent_service_client::AttestationAgentServiceClient as GrpcClient,
};
use attestd_proto::ttrpc::{attestation_agent as tpb, attestation_agent_ttrpc};
use attester_sdk::status::{from_grpc, from_ttrpc};
use attester_sdk::{Error, Result};
use tonic::transport::Channel;

use crate::run::unix_path;
use crate::server::grpc::GrpcAddr;
use crate::service::{MeasurementEvent, MeasurementResult};

/// Upstream clients' deadline.
const DEADLINE: Duration = Duration::from_secs(50);

pub enum AaClient {
    Ttrpc(attestation_agent_ttrpc::AttestationAgentServiceClient),
    Grpc(GrpcClient<Channel>),
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(DEADLINE)
}

impl AaClient {
    /// Connect over ttrpc to `unix:///path`.
    pub async fn ttrpc(addr: &str) -> Result<Self> {
        unix_path(addr)?;
        let c = ttrpc::r#async::Client::connect(addr)
            .await
            .map_err(|e| Error::unavailable(format!("cannot connect to {addr}")).with_source(e))?;
        Ok(AaClient::Ttrpc(
            attestation_agent_ttrpc::AttestationAgentServiceClient::new(c),
        ))
    }

    /// Connect over gRPC to `host:port` or `unix:///path`.
    pub async fn grpc(addr: &GrpcAddr) -> Result<Self> {
        let ch = match addr {
            GrpcAddr::Unix(p) => attester_sdk::grpc_unix_channel(p).await?,
            GrpcAddr::Tcp(a) => tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| Error::invalid_argument(format!("bad address {a}")).with_source(e))?
                .connect()
                .await
                .map_err(|e| Error::unavailable(format!("cannot connect to {a}")).with_source(e))?,
        };
        Ok(AaClient::Grpc(GrpcClient::new(ch)))
    }

    pub async fn get_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        match self {
            AaClient::Ttrpc(c) => {
                let req = tpb::GetEvidenceRequest {
                    RuntimeData: runtime_data,
                    ..Default::default()
                };
                Ok(c.get_evidence(ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Evidence)
            }
            AaClient::Grpc(c) => {
                let req = gpb::GetEvidenceRequest { runtime_data };
                Ok(c.clone()
                    .get_evidence(req)
                    .await
                    .map_err(from_grpc)?
                    .into_inner()
                    .evidence)
            }
        }
    }

    pub async fn get_additional_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        match self {
            AaClient::Ttrpc(c) => {
                let req = tpb::GetAdditionalEvidenceRequest {
                    RuntimeData: runtime_data,
                    ..Default::default()
                };
                Ok(c.get_additional_evidence(ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Evidence)
            }
            AaClient::Grpc(c) => {
                let req = gpb::GetAdditionalEvidenceRequest { runtime_data };
                Ok(c.clone()
                    .get_additional_evidence(req)
                    .await
                    .map_err(from_grpc)?
                    .into_inner()
                    .evidence)
            }
        }
    }

    pub async fn get_tee_type(&self) -> Result<String> {
        match self {
            AaClient::Ttrpc(c) => Ok(c
                .get_tee_type(ctx(), &tpb::GetTeeTypeRequest::default())
                .await
                .map_err(from_ttrpc)?
                .tee),
            AaClient::Grpc(c) => Ok(c
                .clone()
                .get_tee_type(gpb::GetTeeTypeRequest {})
                .await
                .map_err(from_grpc)?
                .into_inner()
                .tee),
        }
    }

    pub async fn get_additional_tees(&self) -> Result<Vec<String>> {
        match self {
            AaClient::Ttrpc(c) => Ok(c
                .get_additional_tees(ctx(), &tpb::GetAdditionalTeesRequest::default())
                .await
                .map_err(from_ttrpc)?
                .additional_tees),
            AaClient::Grpc(c) => Ok(c
                .clone()
                .get_additional_tees(gpb::GetAdditionalTeesRequest {})
                .await
                .map_err(from_grpc)?
                .into_inner()
                .additional_tees),
        }
    }

    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>> {
        match self {
            AaClient::Ttrpc(c) => {
                let req = tpb::GetTokenRequest {
                    TokenType: token_type.into(),
                    ..Default::default()
                };
                Ok(c.get_token(ctx(), &req).await.map_err(from_ttrpc)?.Token)
            }
            AaClient::Grpc(c) => {
                let req = gpb::GetTokenRequest {
                    token_type: token_type.into(),
                };
                Ok(c.clone()
                    .get_token(req)
                    .await
                    .map_err(from_grpc)?
                    .into_inner()
                    .token)
            }
        }
    }

    pub async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        match self {
            AaClient::Ttrpc(c) => {
                let req = tpb::BindInitDataRequest {
                    Digest: digest,
                    ..Default::default()
                };
                c.bind_init_data(ctx(), &req).await.map_err(from_ttrpc)?;
            }
            AaClient::Grpc(c) => {
                let req = gpb::BindInitDataRequest { digest };
                c.clone().bind_init_data(req).await.map_err(from_grpc)?;
            }
        }
        Ok(())
    }

    pub async fn extend_runtime_measurement(
        &self,
        e: MeasurementEvent,
    ) -> Result<MeasurementResult> {
        let code = match self {
            AaClient::Ttrpc(c) => {
                let req = tpb::ExtendRuntimeMeasurementRequest {
                    Domain: e.domain,
                    Operation: e.operation,
                    Content: e.content,
                    RegisterIndex: e.register_index,
                    ..Default::default()
                };
                c.extend_runtime_measurement(ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Result
                    .value()
            }
            AaClient::Grpc(c) => {
                let req = gpb::ExtendRuntimeMeasurementRequest {
                    domain: e.domain,
                    operation: e.operation,
                    content: e.content,
                    register_index: e.register_index,
                };
                c.clone()
                    .extend_runtime_measurement(req)
                    .await
                    .map_err(from_grpc)?
                    .into_inner()
                    .result
            }
        };
        match code {
            0 => Ok(MeasurementResult::Ok),
            1 => Ok(MeasurementResult::NotSupported),
            2 => Ok(MeasurementResult::NotEnabled),
            other => Err(Error::internal(format!(
                "unknown RuntimeMeasurementResult {other}"
            ))),
        }
    }
}

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
use crate::server::GrpcAddr;
use crate::service::{MeasurementEvent, MeasurementResult};

/// Upstream clients' deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(50);

/// A client with a deadline on connecting and on every call, on either transport.
pub struct AaClient {
    inner: Inner,
    deadline: Duration,
}

enum Inner {
    Ttrpc(attestation_agent_ttrpc::AttestationAgentServiceClient),
    Grpc(GrpcClient<Channel>),
}

/// Bound `f` by `deadline`: `DeadlineExceeded` naming `what` when it is late.
async fn within<T>(
    deadline: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(deadline, f).await.map_err(|_| {
        Error::new(
            attester_sdk::Code::DeadlineExceeded,
            format!("{what} did not answer within {deadline:?}"),
        )
    })?
}

impl AaClient {
    /// Every later connection step and call gives up after `deadline`.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.deadline)
    }

    /// One gRPC call under the deadline (tonic's channel enforces none itself).
    async fn grpc_call<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        within(self.deadline, "the AA API (gRPC)", async {
            call.await.map(|r| r.into_inner()).map_err(from_grpc)
        })
        .await
    }

    /// Connect over ttrpc to `unix:///path`.
    pub async fn ttrpc(addr: &str) -> Result<Self> {
        unix_path(addr)?;
        let c = ttrpc::r#async::Client::connect(addr)
            .await
            .map_err(|e| Error::unavailable(format!("cannot connect to {addr}")).with_source(e))?;
        Ok(AaClient {
            inner: Inner::Ttrpc(attestation_agent_ttrpc::AttestationAgentServiceClient::new(
                c,
            )),
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Connect over gRPC to `host:port` or `unix:///path`, within `deadline`.
    pub async fn grpc(addr: &GrpcAddr, deadline: Duration) -> Result<Self> {
        let ch = within(deadline, &format!("{addr}"), async {
            match addr {
                GrpcAddr::Unix(p) => attester_sdk::grpc_unix_channel(p).await,
                GrpcAddr::Tcp(a) => tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                    .map_err(|e| {
                        Error::invalid_argument(format!("bad address {a}")).with_source(e)
                    })?
                    .connect()
                    .await
                    .map_err(|e| {
                        Error::unavailable(format!("cannot connect to {a}")).with_source(e)
                    }),
            }
        })
        .await?;
        Ok(AaClient {
            inner: Inner::Grpc(GrpcClient::new(ch)),
            deadline,
        })
    }

    pub async fn get_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Ttrpc(c) => {
                let req = tpb::GetEvidenceRequest {
                    RuntimeData: runtime_data,
                    ..Default::default()
                };
                Ok(c.get_evidence(self.ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Evidence)
            }
            Inner::Grpc(c) => {
                let req = gpb::GetEvidenceRequest { runtime_data };
                Ok(self.grpc_call(c.clone().get_evidence(req)).await?.evidence)
            }
        }
    }

    pub async fn get_additional_evidence(&self, runtime_data: Vec<u8>) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Ttrpc(c) => {
                let req = tpb::GetAdditionalEvidenceRequest {
                    RuntimeData: runtime_data,
                    ..Default::default()
                };
                Ok(c.get_additional_evidence(self.ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Evidence)
            }
            Inner::Grpc(c) => {
                let req = gpb::GetAdditionalEvidenceRequest { runtime_data };
                Ok(self
                    .grpc_call(c.clone().get_additional_evidence(req))
                    .await?
                    .evidence)
            }
        }
    }

    pub async fn get_tee_type(&self) -> Result<String> {
        match &self.inner {
            Inner::Ttrpc(c) => Ok(c
                .get_tee_type(self.ctx(), &tpb::GetTeeTypeRequest::default())
                .await
                .map_err(from_ttrpc)?
                .tee),
            Inner::Grpc(c) => Ok(self
                .grpc_call(c.clone().get_tee_type(gpb::GetTeeTypeRequest {}))
                .await?
                .tee),
        }
    }

    pub async fn get_additional_tees(&self) -> Result<Vec<String>> {
        match &self.inner {
            Inner::Ttrpc(c) => Ok(c
                .get_additional_tees(self.ctx(), &tpb::GetAdditionalTeesRequest::default())
                .await
                .map_err(from_ttrpc)?
                .additional_tees),
            Inner::Grpc(c) => Ok(self
                .grpc_call(
                    c.clone()
                        .get_additional_tees(gpb::GetAdditionalTeesRequest {}),
                )
                .await?
                .additional_tees),
        }
    }

    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Ttrpc(c) => {
                let req = tpb::GetTokenRequest {
                    TokenType: token_type.into(),
                    ..Default::default()
                };
                Ok(c.get_token(self.ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Token)
            }
            Inner::Grpc(c) => {
                let req = gpb::GetTokenRequest {
                    token_type: token_type.into(),
                };
                Ok(self.grpc_call(c.clone().get_token(req)).await?.token)
            }
        }
    }

    pub async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        match &self.inner {
            Inner::Ttrpc(c) => {
                let req = tpb::BindInitDataRequest {
                    Digest: digest,
                    ..Default::default()
                };
                c.bind_init_data(self.ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?;
            }
            Inner::Grpc(c) => {
                let req = gpb::BindInitDataRequest { digest };
                self.grpc_call(c.clone().bind_init_data(req)).await?;
            }
        }
        Ok(())
    }

    pub async fn extend_runtime_measurement(
        &self,
        e: MeasurementEvent,
    ) -> Result<MeasurementResult> {
        let code = match &self.inner {
            Inner::Ttrpc(c) => {
                let req = tpb::ExtendRuntimeMeasurementRequest {
                    Domain: e.domain,
                    Operation: e.operation,
                    Content: e.content,
                    RegisterIndex: e.register_index,
                    ..Default::default()
                };
                c.extend_runtime_measurement(self.ctx(), &req)
                    .await
                    .map_err(from_ttrpc)?
                    .Result
                    .value()
            }
            Inner::Grpc(c) => {
                let req = gpb::ExtendRuntimeMeasurementRequest {
                    domain: e.domain,
                    operation: e.operation,
                    content: e.content,
                    register_index: e.register_index,
                };
                self.grpc_call(c.clone().extend_runtime_measurement(req))
                    .await?
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

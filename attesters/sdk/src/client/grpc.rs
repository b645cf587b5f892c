use std::path::{Path, PathBuf};
use std::time::Duration;

use attestd_proto::grpc::attester::{self as pb, attester_client::AttesterClient};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::convert::{grpc::info_from_pb, InfoFromPeer};
use crate::status::from_grpc;
use crate::{Error, Evidence, Result};

pub(super) struct Client {
    attester: AttesterClient<Channel>,
    health: HealthClient<Channel>,
}

fn req<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

/// A channel over a Unix socket. The URI is a placeholder: tonic needs one, the
/// connector ignores it.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://attestd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| {
            Error::unavailable(format!("cannot connect to {}", socket.display())).with_source(e)
        })
}

impl Client {
    pub(super) async fn connect(socket: &Path) -> Result<Self> {
        let ch = unix_channel(socket).await?;
        Ok(Client {
            attester: AttesterClient::new(ch.clone()),
            health: HealthClient::new(ch),
        })
    }

    pub(super) async fn info(&self, versions: &[u32], d: Duration) -> Result<InfoFromPeer> {
        let r = self
            .attester
            .clone()
            .info(req(
                pb::InfoRequest {
                    protocol_versions: versions.to_vec(),
                },
                d,
            ))
            .await
            .map_err(from_grpc)?;
        Ok(info_from_pb(r.into_inner()))
    }

    pub(super) async fn detect(&self, d: Duration) -> Result<bool> {
        let r = self
            .attester
            .clone()
            .detect(req(pb::DetectRequest {}, d))
            .await
            .map_err(from_grpc)?;
        Ok(r.into_inner().present)
    }

    pub(super) async fn evidence(&self, report_data: Vec<u8>, d: Duration) -> Result<Evidence> {
        let r = self
            .attester
            .clone()
            .get_evidence(req(pb::GetEvidenceRequest { report_data }, d))
            .await
            .map_err(from_grpc)?
            .into_inner();
        Ok(Evidence {
            bytes: r.evidence,
            format: r.format,
        })
    }

    pub(super) async fn extend_measurement(
        &self,
        register: u64,
        digest: Vec<u8>,
        d: Duration,
    ) -> Result<()> {
        self.attester
            .clone()
            .extend_measurement(req(pb::ExtendMeasurementRequest { register, digest }, d))
            .await
            .map_err(from_grpc)?;
        Ok(())
    }

    pub(super) async fn read_measurement(&self, register: u64, d: Duration) -> Result<Vec<u8>> {
        let r = self
            .attester
            .clone()
            .read_measurement(req(pb::ReadMeasurementRequest { register }, d))
            .await
            .map_err(from_grpc)?;
        Ok(r.into_inner().value)
    }

    pub(super) async fn bind_init_data(&self, digest: Vec<u8>, d: Duration) -> Result<()> {
        self.attester
            .clone()
            .bind_init_data(req(pb::BindInitDataRequest { digest }, d))
            .await
            .map_err(from_grpc)?;
        Ok(())
    }

    pub(super) async fn check(&self, d: Duration) -> Result<bool> {
        let r = self
            .health
            .clone()
            .check(req(
                tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                },
                d,
            ))
            .await
            .map_err(from_grpc)?;
        Ok(r.into_inner().status() == ServingStatus::Serving)
    }
}

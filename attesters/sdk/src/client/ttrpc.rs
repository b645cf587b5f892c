use std::path::Path;
use std::time::Duration;

use attestd_proto::ttrpc::{attester as pb, attester_ttrpc, health, health_ttrpc};

use crate::convert::{ttrpc::info_from_pb, InfoFromPeer};
use crate::status::from_ttrpc;
use crate::{Error, Evidence, Result};

pub(super) struct Client {
    attester: attester_ttrpc::AttesterClient,
    health: health_ttrpc::HealthClient,
}

fn ctx(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_duration(d)
}

impl Client {
    pub(super) async fn connect(socket: &Path) -> Result<Self> {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .map_err(|e| {
                Error::unavailable(format!("cannot connect to {}", socket.display())).with_source(e)
            })?;
        Ok(Client {
            attester: attester_ttrpc::AttesterClient::new(c.clone()),
            health: health_ttrpc::HealthClient::new(c),
        })
    }

    pub(super) async fn info(&self, versions: &[u32], d: Duration) -> Result<InfoFromPeer> {
        let req = pb::InfoRequest {
            protocol_versions: versions.to_vec(),
            ..Default::default()
        };
        let r = self.attester.info(ctx(d), &req).await.map_err(from_ttrpc)?;
        Ok(info_from_pb(r))
    }

    pub(super) async fn detect(&self, d: Duration) -> Result<bool> {
        let r = self
            .attester
            .detect(ctx(d), &pb::DetectRequest::default())
            .await
            .map_err(from_ttrpc)?;
        Ok(r.present)
    }

    pub(super) async fn evidence(&self, report_data: Vec<u8>, d: Duration) -> Result<Evidence> {
        let req = pb::GetEvidenceRequest {
            report_data,
            ..Default::default()
        };
        let r = self
            .attester
            .get_evidence(ctx(d), &req)
            .await
            .map_err(from_ttrpc)?;
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
        let req = pb::ExtendMeasurementRequest {
            register,
            digest,
            ..Default::default()
        };
        self.attester
            .extend_measurement(ctx(d), &req)
            .await
            .map_err(from_ttrpc)?;
        Ok(())
    }

    pub(super) async fn read_measurement(&self, register: u64, d: Duration) -> Result<Vec<u8>> {
        let req = pb::ReadMeasurementRequest {
            register,
            ..Default::default()
        };
        let r = self
            .attester
            .read_measurement(ctx(d), &req)
            .await
            .map_err(from_ttrpc)?;
        Ok(r.value)
    }

    pub(super) async fn bind_init_data(&self, digest: Vec<u8>, d: Duration) -> Result<()> {
        let req = pb::BindInitDataRequest {
            digest,
            ..Default::default()
        };
        self.attester
            .bind_init_data(ctx(d), &req)
            .await
            .map_err(from_ttrpc)?;
        Ok(())
    }

    pub(super) async fn check(&self, d: Duration) -> Result<bool> {
        let r = self
            .health
            .check(ctx(d), &health::HealthCheckRequest::default())
            .await
            .map_err(from_ttrpc)?;
        Ok(r.status.enum_value() == Ok(health::health_check_response::ServingStatus::SERVING))
    }
}

//! The AMD SEV-SNP attester: extended reports through `/dev/sev-guest` (as
//! upstream) or configfs-tsm (provider `sev_guest`), evidence as upstream's
//! `{"attestation_report","cert_chain"}`, init-data compared with HOSTDATA.
//! `device` is the seam, `report` reads the raw report, `certs` the certificate
//! table, `evidence` is pure.

pub mod certs;
pub mod device;
pub mod evidence;
pub mod report;
mod sys;

use std::path::PathBuf;
use std::sync::Arc;

use attester_sdk::worker::Worker;
use attester_sdk::{
    Attester, Capabilities, Error, Evidence, InitDataBinding, PluginInfo, ReportData, Result,
};

use device::SnpDevice;

pub const MAX_REPORT_DATA: usize = 64;
pub const HOST_DATA_LEN: usize = 32;
/// The longest init-data digest taken (sha512). A longer one than HOSTDATA is
/// compared by its first 32 bytes: kata puts those there, and upstream's
/// attester compares the same.
pub const MAX_INIT_DATA_DIGEST: usize = 64;
/// Requests that may wait for the device thread; one more is `RESOURCE_EXHAUSTED`.
pub const MAX_QUEUED: usize = 16;

/// The SNP plugin: every report request (the PSP can take a while) runs on one
/// device thread, so the async runtime keeps answering health checks.
pub struct Snp {
    device: Arc<dyn SnpDevice>,
    /// Present on SNP guests whose kernel has the sev-guest driver.
    platform: PathBuf,
    worker: Worker<()>,
}

impl Snp {
    pub fn new(device: Box<dyn SnpDevice>, platform: PathBuf) -> Result<Self> {
        Ok(Snp {
            device: Arc::from(device),
            platform,
            worker: Worker::start("SNP device", MAX_QUEUED, || Ok(()))?,
        })
    }

    /// A report for `rd`, made on the device thread.
    async fn report(&self, rd: [u8; 64]) -> Result<device::RawReport> {
        let dev = self.device.clone();
        self.worker.run(move |_| report(&*dev, &rd)).await
    }
}

fn report(dev: &dyn SnpDevice, rd: &[u8; 64]) -> Result<device::RawReport> {
    let raw = dev
        .ext_report(rd)
        .map_err(|e| e.context(format!("SNP report from {}", dev.describe())))?;
    // Refuse to hand out a report that does not carry what was asked for.
    if report::report_data(&raw.report)? != rd {
        return Err(Error::internal(
            "the report's REPORT_DATA is not the requested report data",
        ));
    }
    Ok(raw)
}

impl Attester for Snp {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-snp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            tee: "snp".into(),
            evidence_format: evidence::FORMAT.into(),
            capabilities: Capabilities {
                max_report_data: MAX_REPORT_DATA as u32,
                init_data: InitDataBinding::Compare,
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        Ok(self.platform.exists() || self.device.present())
    }

    fn health(&self) -> Result<()> {
        self.worker.health()
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        let raw = self.report(pad64(report_data.as_bytes())?).await?;
        let parsed = report::parse(&raw.report)?;
        evidence::evidence(&parsed, raw.certs.as_deref())
    }

    async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        if digest.len() > MAX_INIT_DATA_DIGEST {
            return Err(Error::invalid_argument(format!(
                "init-data digest is {} bytes; at most {MAX_INIT_DATA_DIGEST} (sha512)",
                digest.len()
            )));
        }
        let cut = digest.len() > HOST_DATA_LEN;
        let mut want = digest;
        want.truncate(HOST_DATA_LEN);
        want.resize(HOST_DATA_LEN, 0);
        let raw = self.report([0; 64]).await?;
        let have = report::host_data(&raw.report)?;
        if have != want.as_slice() {
            return Err(Error::failed_precondition(format!(
                "init-data digest {}{} does not match HOSTDATA {}",
                hex::encode(&want),
                if cut { " (its first 32 bytes)" } else { "" },
                hex::encode(have)
            )));
        }
        Ok(())
    }
}

/// Zero-padded to the report's 64 bytes, as upstream.
fn pad64(rd: &[u8]) -> Result<[u8; 64]> {
    if rd.len() > MAX_REPORT_DATA {
        return Err(Error::invalid_argument(format!(
            "report data is {} bytes; SNP takes at most {MAX_REPORT_DATA}",
            rd.len()
        )));
    }
    let mut out = [0u8; 64];
    out[..rd.len()].copy_from_slice(rd);
    Ok(out)
}

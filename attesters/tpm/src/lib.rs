//! The TPM 2.0 attester: quotes over the SHA-256 PCR bank signed by a persistent
//! attestation key, in upstream's evidence format; PCR extend and read; init-data
//! bound by extending PCR 8.
//!
//! `device` is the seam to the TPM (tss-esapi, any TCTI: the kernel resource
//! manager on hardware, swtpm in tests); `evidence` is pure.

pub mod device;
pub mod evidence;

use attester_sdk::{
    Attester, Capabilities, Error, Evidence, InitDataBinding, PluginInfo, ReportData, Result,
};

use device::Tpm;

/// PCR that init-data is extended into, as upstream.
pub const INIT_DATA_PCR: u64 = 8;

pub struct TpmAttester {
    tpm: Tpm,
    tcti: String,
}

impl TpmAttester {
    pub fn new(tpm: Tpm, tcti: String) -> Self {
        TpmAttester { tpm, tcti }
    }
}

impl Attester for TpmAttester {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-tpm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            tee: "tpm".into(),
            evidence_format: evidence::FORMAT.into(),
            capabilities: Capabilities {
                // Accepted up to 64 bytes like the other TEEs; the quote binds the
                // first 32 (see evidence::NONCE_LEN).
                max_report_data: 64,
                runtime_measurement: true,
                measurement_hash: Some("sha256".into()),
                register_read: true,
                init_data: InitDataBinding::Extend,
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        Ok(device::detect(&self.tcti))
    }

    fn health(&self) -> Result<()> {
        self.tpm.health()
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        let q = self
            .tpm
            .quote(evidence::nonce(report_data.as_bytes()))
            .await?;
        evidence::evidence(&q)
    }

    async fn extend_measurement(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        self.tpm.extend(register, digest).await
    }

    async fn read_measurement(&self, register: u64) -> Result<Vec<u8>> {
        self.tpm.read(register).await
    }

    async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        // PCR 8 is SHA-256: a longer init-data digest (sha384/512) binds by its
        // first 32 bytes, as upstream's extend does; shorter ones are refused.
        if digest.len() < 32 {
            return Err(Error::invalid_argument(format!(
                "init-data digest is {} bytes; at least 32 are needed",
                digest.len()
            )));
        }
        self.tpm.extend(INIT_DATA_PCR, digest[..32].to_vec()).await
    }
}

//! The attester both Azure plugins run, parameterised by [`Platform`]: which HCL
//! report type it serves and which endorsement completes its evidence.

use std::sync::Arc;

use attester_sdk::{
    Attester, Capabilities, Error, Evidence, InitDataBinding, PluginInfo, ReportData, Result,
};

use attester_sdk::worker::Worker;

use crate::evidence::{self, Endorsement};
use crate::hcl::{self, ReportType};
use crate::imds::Imds;
use crate::vtpm::{Vtpm, USER_DATA_LEN};

/// PCR that init-data is extended into, as upstream.
pub const INIT_DATA_PCR: u8 = 8;

/// What tells the two Azure plugins apart.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// TEE name as kbs-types spells it.
    pub tee: &'static str,
    /// Plugin (binary) name.
    pub name: &'static str,
    /// The plugin crate's version.
    pub version: &'static str,
    /// The hardware report the HCL report must hold.
    pub report_type: ReportType,
    pub endorsement: Endorsement,
}

/// Requests that may wait for the vTPM; one more is `RESOURCE_EXHAUSTED`. Evidence
/// takes over 3 s (az-cvm-vtpm sleeps after writing report data), so 8 waiting is
/// already half a minute.
pub const MAX_QUEUED: usize = 8;

/// An Azure vTPM attester on some [`Vtpm`].
pub struct AzureAttester {
    platform: Platform,
    vtpm: Arc<dyn Vtpm>,
    imds: Imds,
    /// The device thread every vTPM call runs on, one at a time.
    worker: Worker<()>,
    /// IMDS's own thread: its retries (up to its timeout, 10 s) never hold the
    /// vTPM, so an extend or the init-data binding does not wait behind them.
    imds_worker: Worker<()>,
}

impl AzureAttester {
    pub fn new(platform: Platform, vtpm: Arc<dyn Vtpm>, imds: Imds) -> Result<Self> {
        Ok(AzureAttester {
            platform,
            vtpm,
            imds,
            worker: Worker::start("vTPM", MAX_QUEUED, || Ok(()))?,
            imds_worker: Worker::start("IMDS", MAX_QUEUED, || Ok(()))?,
        })
    }

    /// Run blocking vTPM work on the device thread, off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.worker.run(move |_| f()).await
    }

    fn format(&self) -> String {
        format!("{}/{}", self.platform.tee, evidence::VERSION)
    }
}

fn sha256_digest(digest: &[u8], what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(digest).map_err(|_| {
        Error::invalid_argument(format!(
            "{what} is {} bytes; the vTPM's SHA-256 bank takes 32",
            digest.len()
        ))
    })
}

impl Attester for AzureAttester {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.platform.name.into(),
            version: self.platform.version.into(),
            tee: self.platform.tee.into(),
            evidence_format: self.format(),
            capabilities: Capabilities {
                max_report_data: USER_DATA_LEN as u32,
                runtime_measurement: true,
                measurement_hash: Some("sha256".into()),
                register_read: true,
                init_data: InitDataBinding::Extend,
                ..Default::default()
            },
        }
    }

    /// An HCL report of this plugin's type is in the vTPM: az-tdx-vtpm never claims
    /// an SNP CVM, nor the reverse. No vTPM, or no HCL report, is "no".
    fn detect(&self) -> Result<bool> {
        Ok(match self.vtpm.current_hcl_report() {
            Ok(b) => hcl::is_type(b, self.platform.report_type),
            Err(e) => {
                tracing::debug!("no HCL report: {}", e.chain());
                false
            }
        })
    }

    fn health(&self) -> Result<()> {
        self.worker.health()?;
        self.imds_worker.health()
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        let vtpm = self.vtpm.clone();
        let imds = self.imds.clone();
        let p = self.platform;
        let format = self.format();
        // The paravisor takes 64 bytes of user data (and pads shorter data with
        // zeros itself); the quote binds the report data as given, as upstream.
        let (v, rd) = (vtpm.clone(), report_data.zero_padded(USER_DATA_LEN));
        let (hcl_bytes, report) = self
            .blocking(move || {
                let hcl_bytes = v.hcl_report(&rd)?;
                let report = hcl::parse(hcl_bytes.clone(), p.report_type)?;
                Ok((hcl_bytes, report))
            })
            .await?;
        // The endorsement from IMDS on its own thread: the vTPM is free
        // meanwhile (the HCL report is read, the quote not yet taken).
        let endorsement = self
            .imds_worker
            .run(move |_| match p.endorsement {
                Endorsement::Vcek => imds.vcek_der(),
                Endorsement::TdQuote => imds.td_quote(&hcl::td_report_bytes(&report)?),
            })
            .await?;
        self.blocking(move || {
            let quote = vtpm.quote(report_data.as_bytes())?;
            evidence::evidence(&format, &quote, &hcl_bytes, p.endorsement, &endorsement)
        })
        .await
    }

    async fn extend_measurement(&self, register_index: u64, digest: Vec<u8>) -> Result<()> {
        let pcr = crate::vtpm::pcr_index(register_index)?;
        let d = sha256_digest(&digest, "the measurement digest")?;
        let vtpm = self.vtpm.clone();
        self.blocking(move || vtpm.extend(pcr, &d)).await
    }

    async fn read_measurement(&self, register_index: u64) -> Result<Vec<u8>> {
        let pcr = crate::vtpm::pcr_index(register_index)?;
        let vtpm = self.vtpm.clone();
        self.blocking(move || vtpm.read_pcr(pcr).map(|v| v.to_vec()))
            .await
    }

    async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        // PCR 8 is SHA-256: a longer init-data digest (sha384/512) binds by its
        // first 32 bytes, as the TPM attester does; shorter ones are refused.
        if digest.len() < 32 {
            return Err(Error::invalid_argument(format!(
                "init-data digest is {} bytes; at least 32 are needed",
                digest.len()
            )));
        }
        let d = sha256_digest(&digest[..32], "the init-data digest")?;
        let vtpm = self.vtpm.clone();
        self.blocking(move || vtpm.extend(INIT_DATA_PCR, &d)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::path as fixture;
    use crate::vtpm::{Recorded, Recording};
    use attester_sdk::Code;

    const SNP: Platform = Platform {
        tee: "az-snp-vtpm",
        name: "attester-az-snp-vtpm",
        version: "0",
        report_type: ReportType::Snp,
        endorsement: Endorsement::Vcek,
    };
    const TDX: Platform = Platform {
        tee: "az-tdx-vtpm",
        name: "attester-az-tdx-vtpm",
        version: "0",
        report_type: ReportType::Tdx,
        endorsement: Endorsement::TdQuote,
    };

    fn attester(p: Platform, hcl: &str) -> (AzureAttester, Arc<Recorded>) {
        let v = Arc::new(
            Recorded::open(&Recording {
                hcl_report: fixture(hcl),
                quote: Some(fixture("snp-tpm-quote.json")),
            })
            .unwrap(),
        );
        // Nothing listens on port 9 of loopback: IMDS is down.
        let imds = Imds::new("http://127.0.0.1:9", std::time::Duration::from_secs(2));
        (AzureAttester::new(p, v.clone(), imds).unwrap(), v)
    }

    #[test]
    fn detect_tells_the_two_cvms_apart() {
        assert!(attester(SNP, "snp-hcl-report.bin").0.detect().unwrap());
        assert!(!attester(TDX, "snp-hcl-report.bin").0.detect().unwrap());
        assert!(attester(TDX, "tdx-hcl-report.bin").0.detect().unwrap());
        assert!(!attester(SNP, "tdx-hcl-report.bin").0.detect().unwrap());
    }

    #[tokio::test]
    async fn evidence_on_the_other_cvm_is_failed_precondition() {
        let (a, _) = attester(TDX, "snp-hcl-report.bin");
        let e = a
            .evidence(ReportData::new(vec![1; 48], 64).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("this is an Azure SNP CVM"),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn report_data_reaches_the_paravisor_padded_to_64() {
        let (a, v) = attester(SNP, "snp-hcl-report.bin");
        // IMDS is down, so evidence fails after the HCL report was requested.
        let e = a
            .evidence(ReportData::new(vec![5; 48], 64).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message().starts_with("cannot fetch the VCEK"),
            "{}",
            e.message()
        );
        let mut want = vec![5; 48];
        want.resize(64, 0);
        assert_eq!(v.last_report_data(), want);
    }

    /// Issue 41 (low): IMDS's retries (up to its timeout) ran on the vTPM's
    /// thread, so an extend (and the init-data binding) waited behind them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_extend_does_not_wait_for_imds_retries() {
        let (a, _) = attester(SNP, "snp-hcl-report.bin");
        let a = Arc::new(a);
        let started = std::time::Instant::now();
        let evidence = tokio::spawn({
            let a = a.clone();
            async move { a.evidence(ReportData::new(vec![5; 48], 64).unwrap()).await }
        });
        // The evidence call is in IMDS's retries (down: 2 s) by now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        a.extend_measurement(16, vec![1; 32]).await.unwrap();
        let extended = started.elapsed();
        assert!(
            extended < std::time::Duration::from_secs(1),
            "the extend waited {extended:?}"
        );
        assert!(!evidence.is_finished(), "IMDS gave up too early to tell");
        let e = evidence.await.unwrap().unwrap_err();
        assert!(
            e.message().starts_with("cannot fetch the VCEK"),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn measurement_checks_register_and_digest() {
        let (a, _) = attester(SNP, "snp-hcl-report.bin");
        let e = a.extend_measurement(24, vec![0; 32]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = a.extend_measurement(300, vec![0; 32]).await.unwrap_err();
        assert_eq!(
            e.message(),
            "PCR 300 does not exist: the vTPM has PCRs 0 to 23"
        );
        let e = a.extend_measurement(16, vec![0; 48]).await.unwrap_err();
        assert_eq!(
            e.message(),
            "the measurement digest is 48 bytes; the vTPM's SHA-256 bank takes 32"
        );
        let before = a.read_measurement(16).await.unwrap();
        a.extend_measurement(16, vec![1; 32]).await.unwrap();
        assert_ne!(a.read_measurement(16).await.unwrap(), before);
    }

    #[tokio::test]
    async fn init_data_extends_pcr_8_with_the_first_32_bytes() {
        use sha2::{Digest, Sha256};
        let (a, _) = attester(SNP, "snp-hcl-report.bin");
        let before = a.read_measurement(8).await.unwrap();
        let digest: Vec<u8> = (0..48).collect();
        a.bind_init_data(digest.clone()).await.unwrap();
        let mut h = Sha256::new();
        h.update(&before);
        h.update(&digest[..32]);
        assert_eq!(a.read_measurement(8).await.unwrap(), h.finalize().to_vec());
        let e = a.bind_init_data(vec![0; 31]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn info_advertises_sha256_pcrs_and_extend_binding() {
        let (a, _) = attester(TDX, "tdx-hcl-report.bin");
        let i = a.info();
        assert_eq!(i.tee, "az-tdx-vtpm");
        assert_eq!(i.evidence_format, "az-tdx-vtpm/2");
        assert_eq!(i.capabilities.max_report_data, 64);
        assert_eq!(i.capabilities.measurement_hash.as_deref(), Some("sha256"));
        assert_eq!(i.capabilities.init_data, InitDataBinding::Extend);
    }
}

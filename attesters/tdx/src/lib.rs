//! The Intel TDX attester: quotes through the kernel's configfs-tsm interface
//! (provider `tdx_guest`), the ACPI CCEL as event log, init-data compared with
//! MRCONFIGID. `device` is the seam (real configfs or a recorded device), `quote`
//! finds TD report fields, `evidence` is pure.
//!
//! `tdx-attest-rs` (Intel's library over /dev/tdx_guest) is not on crates.io; it
//! would be a second backend behind the same seam.

pub mod device;
pub mod evidence;
pub mod quote;

use std::path::PathBuf;
use std::sync::Arc;

use attester_sdk::worker::Worker;
use attester_sdk::{
    Attester, Capabilities, Error, Evidence, InitDataBinding, PluginInfo, RegisterMapping,
    ReportData, Result,
};

use device::{ConfigfsTsm, TsmFs};

pub const MAX_REPORT_DATA: usize = 64;
pub const MRCONFIGID_LEN: usize = 48;
/// The longest init-data digest taken (sha512). A longer one than MRCONFIGID
/// is compared by its first 48 bytes: kata puts those there, and upstream's
/// attester compares the same.
pub const MAX_INIT_DATA_DIGEST: usize = 64;
/// Requests that may wait for the device thread; one more is `RESOURCE_EXHAUSTED`.
pub const MAX_QUEUED: usize = 16;

/// The TDX plugin: every device call (a quote can take the firmware a while) runs
/// on one device thread, so the async runtime keeps answering health checks.
pub struct Tdx<F> {
    device: Arc<TdxDevice<F>>,
    worker: Worker<()>,
}

impl<F: TsmFs + 'static> Tdx<F> {
    pub fn new(device: TdxDevice<F>) -> Result<Self> {
        Ok(Tdx {
            device: Arc::new(device),
            worker: Worker::start("TDX device", MAX_QUEUED, || Ok(()))?,
        })
    }

    async fn on_device<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TdxDevice<F>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let d = self.device.clone();
        self.worker.run(move |_| f(&d)).await
    }
}

/// What the device work needs: blocking calls, made on the device thread.
pub struct TdxDevice<F> {
    pub tsm: ConfigfsTsm<F>,
    /// The ACPI CCEL table (absent on some firmware).
    pub ccel: PathBuf,
    /// attestd's runtime event log (AAEL records), appended to the CCEL as
    /// upstream's `cc_eventlog` carries it.
    pub runtime_log: PathBuf,
    /// `/dev/tdx_guest`, for detection.
    pub dev: PathBuf,
    /// The kernel's RTMR interface (`…/tdx_guest/measurements`), when it has one.
    pub rtmrs: Option<device::Rtmrs>,
}

/// Upstream's PCR → RTMR map: PCR 1, 7 → RTMR0; 2–6 → RTMR1; 8–15 → RTMR2; others → RTMR3.
pub fn rtmr_for_pcr(pcr: u64) -> u64 {
    match pcr {
        1 | 7 => 0,
        2..=6 => 1,
        8..=15 => 2,
        _ => 3,
    }
}

impl<F: TsmFs + 'static> Attester for Tdx<F> {
    fn info(&self) -> PluginInfo {
        let rtmrs = self.device.rtmrs.is_some();
        PluginInfo {
            name: "attester-tdx".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            tee: "tdx".into(),
            evidence_format: evidence::FORMAT.into(),
            capabilities: Capabilities {
                max_report_data: MAX_REPORT_DATA as u32,
                init_data: InitDataBinding::Compare,
                runtime_measurement: rtmrs,
                register_read: rtmrs,
                measurement_hash: rtmrs.then(|| "sha384".into()),
                register_map: if rtmrs {
                    (0..24)
                        .map(|pcr| RegisterMapping {
                            pcr,
                            register: rtmr_for_pcr(pcr),
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                // Upstream maps every PCR outside 0–15 to RTMR 3, 24 and up too.
                default_register: rtmrs.then(|| rtmr_for_pcr(u64::MAX)),
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        let d = &self.device;
        Ok(d.dev.exists() || attester_tsm::provider_is(&d.tsm.fs, device::PROVIDER))
    }

    fn health(&self) -> Result<()> {
        self.worker.health()
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        let rd = pad64(report_data.as_bytes());
        self.on_device(move |d| d.evidence(&rd)).await
    }

    async fn extend_measurement(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        self.on_device(move |d| match &d.rtmrs {
            Some(r) => r.extend(register, &digest),
            None => Err(Error::unsupported(
                "runtime measurement (no RTMR interface)",
            )),
        })
        .await
    }

    async fn read_measurement(&self, register: u64) -> Result<Vec<u8>> {
        self.on_device(move |d| match &d.rtmrs {
            Some(r) => r.read(register),
            None => Err(Error::unsupported("register read (no RTMR interface)")),
        })
        .await
    }

    async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        if digest.len() > MAX_INIT_DATA_DIGEST {
            return Err(Error::invalid_argument(format!(
                "init-data digest is {} bytes; at most {MAX_INIT_DATA_DIGEST} (sha512)",
                digest.len()
            )));
        }
        self.on_device(move |d| d.bind_init_data(digest)).await
    }
}

impl<F: TsmFs + 'static> TdxDevice<F> {
    fn evidence(&self, rd: &[u8; 64]) -> Result<Evidence> {
        let quote = self.tsm.report(rd, false)?.outblob;
        // Refuse to hand out a quote that does not carry what was asked for.
        if quote::report_data(&quote)? != rd {
            return Err(Error::internal(
                "the quote's REPORTDATA is not the requested report data",
            ));
        }
        // The runtime log only means something after the CCEL's own header and
        // boot events: without a CCEL, none is sent.
        let log = match device::read_ccel(&self.ccel)? {
            Some(mut ccel) => {
                if let Some(aael) = device::read_ccel(&self.runtime_log)? {
                    ccel.extend_from_slice(&aael);
                }
                Some(ccel)
            }
            None => None,
        };
        evidence::evidence(&quote, log.as_deref())
    }

    fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        let cut = digest.len() > MRCONFIGID_LEN;
        let mut want = digest;
        want.truncate(MRCONFIGID_LEN);
        want.resize(MRCONFIGID_LEN, 0);
        let quote = self.tsm.report(&[0; 64], false)?.outblob;
        let have = quote::mrconfigid(&quote)?;
        if have != want.as_slice() {
            return Err(Error::failed_precondition(format!(
                "init-data digest {}{} does not match MRCONFIGID {}",
                hex::encode(&want),
                if cut { " (its first 48 bytes)" } else { "" },
                hex::encode(have)
            )));
        }
        Ok(())
    }
}

fn pad64(rd: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..rd.len()].copy_from_slice(rd);
    out
}

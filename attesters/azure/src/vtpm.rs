//! The device seam: the Azure paravisor's vTPM. [`Device`] is the real one, through
//! az-cvm-vtpm (which opens the device TCTI, `/dev/tpm0`); [`Recorded`] serves
//! recorded HCL reports and quotes, with a software PCR bank, for tests and demos.
//!
//! Calls block (TPM commands; az-cvm-vtpm sleeps 3 s after writing report data so
//! the paravisor refreshes the HCL report): callers run them off the async runtime,
//! one at a time (the device TCTI serves one open context).

use std::sync::Mutex;

use attester_sdk::{Code, Error, Result};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;

/// PCRs in a vTPM quote: the whole SHA-256 bank, as az-cvm-vtpm quotes it.
pub const PCR_COUNT: u8 = 24;
/// Bytes the paravisor takes as report data (the HCL report's `user-data`).
pub const USER_DATA_LEN: usize = 64;

/// One vTPM quote as az-cvm-vtpm returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Quote {
    /// RSASSA signature bytes.
    pub signature: Vec<u8>,
    /// Marshalled TPMS_ATTEST.
    pub message: Vec<u8>,
    /// The SHA-256 bank, PCR 0 to 23.
    pub pcrs: Vec<[u8; 32]>,
}

/// What the attesters need from a vTPM.
pub trait Vtpm: Send + Sync + 'static {
    /// Write `report_data` to the paravisor's report-data index and read back the
    /// refreshed HCL report.
    fn hcl_report(&self, report_data: &[u8]) -> Result<Vec<u8>>;
    /// The HCL report as it stands, without writing report data (Detect).
    fn current_hcl_report(&self) -> Result<Vec<u8>>;
    /// A quote by the vTPM's AK over the SHA-256 bank with `nonce` as qualifying data.
    fn quote(&self, nonce: &[u8]) -> Result<Quote>;
    /// Extend SHA-256 PCR `pcr` with `digest`.
    fn extend(&self, pcr: u8, digest: &[u8; 32]) -> Result<()>;
    /// Read SHA-256 PCR `pcr`.
    fn read_pcr(&self, pcr: u8) -> Result<[u8; 32]>;
}

/// The vTPM through az-cvm-vtpm and the device TCTI.
#[derive(Default)]
pub struct Device {
    // The device TCTI allows one open context: serialise every call.
    lock: Mutex<()>,
}

impl Device {
    pub fn new() -> Self {
        Device::default()
    }

    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _g = self
            .lock
            .lock()
            .map_err(|_| Error::internal("the vTPM lock is poisoned"))?;
        f()
    }
}

/// The status code for a TPM failure: busy states are retryable, a missing device
/// is unavailable, the rest internal.
fn tss_code(e: &tss_esapi::Error) -> Code {
    match e {
        tss_esapi::Error::Tss2Error(rc) => match rc.kind() {
            Some(
                Tss2ResponseCodeKind::Lockout
                | Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
                | Tss2ResponseCodeKind::NvRate
                | Tss2ResponseCodeKind::NvUnavailable,
            ) => Code::Unavailable,
            Some(Tss2ResponseCodeKind::Locality) => Code::FailedPrecondition,
            // No kind: a TCTI or loader failure, i.e. no vTPM to talk to.
            None => Code::Unavailable,
            _ => Code::Internal,
        },
        _ => Code::Internal,
    }
}

fn report_error(what: &str, e: az_cvm_vtpm::vtpm::ReportError) -> Error {
    use az_cvm_vtpm::vtpm::ReportError;
    let code = match &e {
        ReportError::Tpm(t) => tss_code(t),
        _ => Code::Internal,
    };
    Error::new(code, format!("cannot {what}")).with_source(e)
}

impl Vtpm for Device {
    fn hcl_report(&self, report_data: &[u8]) -> Result<Vec<u8>> {
        self.locked(|| {
            az_cvm_vtpm::vtpm::get_report_with_report_data(report_data)
                .map_err(|e| report_error("read the HCL report from the vTPM", e))
        })
    }

    fn current_hcl_report(&self) -> Result<Vec<u8>> {
        self.locked(|| {
            az_cvm_vtpm::vtpm::get_report()
                .map_err(|e| report_error("read the HCL report from the vTPM", e))
        })
    }

    fn quote(&self, nonce: &[u8]) -> Result<Quote> {
        use az_cvm_vtpm::vtpm::QuoteError;
        let q = self.locked(|| {
            az_cvm_vtpm::vtpm::get_quote(nonce).map_err(|e| {
                let code = match &e {
                    QuoteError::Tpm(t) => tss_code(t),
                    QuoteError::DataTooLarge => Code::InvalidArgument,
                    _ => Code::Internal,
                };
                Error::new(code, "cannot quote with the vTPM's AK").with_source(e)
            })
        })?;
        // The crate keeps its fields private but serialises them all.
        let v = serde_json::to_value(&q)
            .map_err(|e| Error::internal("cannot read the vTPM quote").with_source(e))?;
        serde_json::from_value(v)
            .map_err(|e| Error::internal("cannot read the vTPM quote").with_source(e))
    }

    fn extend(&self, pcr: u8, digest: &[u8; 32]) -> Result<()> {
        use az_cvm_vtpm::vtpm::ExtendError;
        check_pcr(pcr)?;
        self.locked(|| {
            az_cvm_vtpm::vtpm::extend_pcr(pcr, digest).map_err(|e| {
                let code = match &e {
                    ExtendError::Tpm(t) => tss_code(t),
                    ExtendError::InvalidPcr => Code::InvalidArgument,
                };
                Error::new(code, format!("cannot extend vTPM PCR {pcr}")).with_source(e)
            })
        })
    }

    fn read_pcr(&self, pcr: u8) -> Result<[u8; 32]> {
        check_pcr(pcr)?;
        self.locked(|| read_pcr_device(pcr))
    }
}

/// az-cvm-vtpm has no PCR read; this opens the same device TCTI it uses.
fn read_pcr_device(pcr: u8) -> Result<[u8; 32]> {
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::structures::{PcrSelectionListBuilder, PcrSlot};
    use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};

    let fail = |e: tss_esapi::Error| {
        Error::new(tss_code(&e), format!("cannot read vTPM PCR {pcr}")).with_source(e)
    };
    let mut ctx =
        tss_esapi::Context::new(TctiNameConf::Device(DeviceConfig::default())).map_err(fail)?;
    let slot = PcrSlot::try_from(1u32 << pcr).map_err(fail)?;
    let sel = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &[slot])
        .build()
        .map_err(fail)?;
    let (_, _, digests) = ctx.pcr_read(sel).map_err(fail)?;
    let d = digests
        .value()
        .first()
        .ok_or_else(|| Error::internal(format!("the vTPM returned no value for PCR {pcr}")))?;
    <[u8; 32]>::try_from(d.value()).map_err(|_| {
        Error::internal(format!(
            "the vTPM returned {} bytes for SHA-256 PCR {pcr}",
            d.value().len()
        ))
    })
}

/// `pcr` as a vTPM PCR index, if the vTPM has it.
pub fn pcr_index(pcr: u64) -> Result<u8> {
    u8::try_from(pcr)
        .ok()
        .filter(|p| *p < PCR_COUNT)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "PCR {pcr} does not exist: the vTPM has PCRs 0 to {}",
                PCR_COUNT - 1
            ))
        })
}

pub(crate) fn check_pcr(pcr: u8) -> Result<()> {
    pcr_index(pcr.into()).map(|_| ())
}

#[cfg(any(test, feature = "recorded"))]
pub use crate::recorded::{parse_hex_quote, Recorded, Recording};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::path as fixture;
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    fn recorded() -> Recorded {
        Recorded::open(&Recording {
            hcl_report: fixture("snp-hcl-report.bin"),
            quote: Some(fixture("snp-tpm-quote.json")),
        })
        .unwrap()
    }

    #[test]
    fn recorded_quote_parses_with_24_pcrs() {
        let q = recorded().quote(&[1; 48]).unwrap();
        assert_eq!(q.pcrs.len(), 24);
        assert_eq!(q.signature.len(), 256);
        // TPMS_ATTEST starts with TPM_GENERATED_VALUE.
        assert_eq!(&q.message[..4], b"\xffTCG");
    }

    #[test]
    fn recorded_bank_extends_like_a_tpm() {
        let v = recorded();
        let before = v.read_pcr(16).unwrap();
        let d = [7u8; 32];
        v.extend(16, &d).unwrap();
        let mut h = Sha256::new();
        h.update(before);
        h.update(d);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(v.read_pcr(16).unwrap(), want);
    }

    #[test]
    fn pcr_24_is_invalid_argument() {
        let v = recorded();
        let e = v.extend(24, &[0; 32]).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "PCR 24 does not exist: the vTPM has PCRs 0 to 23"
        );
        assert_eq!(v.read_pcr(30).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn missing_recording_is_unavailable_and_names_the_file() {
        let e = Recorded::open(&Recording {
            hcl_report: PathBuf::from("/nonexistent/hcl.bin"),
            quote: None,
        })
        .err()
        .unwrap();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(
            e.message().contains("/nonexistent/hcl.bin"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn no_recorded_quote_is_unavailable() {
        let v = Recorded::open(&Recording {
            hcl_report: fixture("snp-hcl-report.bin"),
            quote: None,
        })
        .unwrap();
        assert_eq!(v.quote(&[0; 32]).unwrap_err().code(), Code::Unavailable);
    }

    #[test]
    fn malformed_quotes_are_refused() {
        for (bad, want) in [
            (&b"{"[..], "recorded vTPM quote: EOF"),
            (
                br#"{"signature":"zz","message":"00","pcrs":[]}"#,
                "recorded vTPM quote: signature",
            ),
            (
                br#"{"signature":"00","message":"00","pcrs":["00"]}"#,
                "recorded vTPM quote: PCR 0 is 1 bytes, not 32",
            ),
            (
                br#"{"signature":"00","message":"00","pcrs":[]}"#,
                "recorded vTPM quote: 0 PCRs, not 24",
            ),
        ] {
            let e = parse_hex_quote(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().starts_with(want), "{}", e.message());
        }
    }

    #[test]
    fn recorded_hcl_report_remembers_report_data() {
        let v = recorded();
        v.hcl_report(&[9; 64]).unwrap();
        assert_eq!(v.last_report_data(), vec![9; 64]);
    }
}

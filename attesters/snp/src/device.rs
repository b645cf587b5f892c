//! The device seam: "give me a report for these 64 bytes, with the certificate
//! table". Two real backends — the `/dev/sev-guest` extended-report ioctl (through
//! `sev`, as upstream) and configfs-tsm with provider `sev_guest` (the shared
//! `attester-tsm` client) — and a recorded device, which is configfs-tsm emulated
//! like the kernel, answering with a recorded report.

use attester_sdk::{Error, Result};
#[cfg(any(test, feature = "recorded"))]
use attester_tsm::Emulated;
use attester_tsm::{ConfigfsTsm, TsmFs};
use sev::firmware::host::CertTableEntry;

pub const PROVIDER: &str = "sev_guest";
/// The guest device `sev` opens (its path is fixed in the crate).
pub const SEV_GUEST: &str = "/dev/sev-guest";

/// A raw report and, when the host provisioned one, the certificate table.
pub struct RawReport {
    pub report: Vec<u8>,
    pub certs: Option<Vec<CertTableEntry>>,
}

pub trait SnpDevice: Send + Sync + 'static {
    /// An extended report at VMPL 0 carrying `report_data`.
    fn ext_report(&self, report_data: &[u8; 64]) -> Result<RawReport>;
    /// What this backend is, for logs and errors.
    fn describe(&self) -> String;
    /// Whether this backend's device is here.
    fn present(&self) -> bool;
}

/// `/dev/sev-guest` through the SNP_GET_EXT_REPORT ioctl ([`crate::sys`]): the
/// report, and the host's certificate table as raw bytes read by our bounds-checked
/// parser (`sev`'s own would panic on a bad table, and the host is untrusted).
pub struct SevGuest;

impl SnpDevice for SevGuest {
    fn ext_report(&self, report_data: &[u8; 64]) -> Result<RawReport> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(SEV_GUEST)
            .map_err(|e| Error::unavailable(format!("cannot open {SEV_GUEST}")).with_source(e))?;
        // VMPL 0, as upstream: the verifier expects the guest's most privileged level.
        let (report, table) = crate::sys::ext_report(&dev, report_data, 0)?;
        let certs = crate::certs::parse(&table)?;
        Ok(RawReport {
            report,
            certs: (!certs.is_empty()).then_some(certs),
        })
    }
    fn describe(&self) -> String {
        SEV_GUEST.into()
    }
    fn present(&self) -> bool {
        std::path::Path::new(SEV_GUEST).exists()
    }
}

/// configfs-tsm with provider `sev_guest`: outblob is the report, auxblob the
/// certificate table.
pub struct Tsm<F> {
    pub tsm: ConfigfsTsm<F>,
    /// Where it is, for errors: the configfs root or the recording.
    pub name: String,
}

impl<F: TsmFs + 'static> SnpDevice for Tsm<F> {
    fn ext_report(&self, report_data: &[u8; 64]) -> Result<RawReport> {
        let r = self.tsm.report(report_data, true)?;
        let certs = r.auxblob.as_deref().map(crate::certs::parse).transpose()?;
        Ok(RawReport {
            report: r.outblob,
            certs,
        })
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn present(&self) -> bool {
        attester_tsm::provider_is(&self.tsm.fs, PROVIDER)
    }
}

/// A recorded SNP device: configfs-tsm emulated like the kernel, answering with
/// `report` whose REPORT_DATA is set to the request, and `certs` as auxblob, after
/// `delay` (a slow firmware). Tests and demos only (feature `recorded`).
#[cfg(any(test, feature = "recorded"))]
pub fn recorded(
    report: Vec<u8>,
    certs: &[CertTableEntry],
    delay: std::time::Duration,
) -> Result<Emulated> {
    crate::report::parse(&report)?;
    let auxblob = (!certs.is_empty())
        .then(|| crate::certs::build(certs))
        .transpose()?;
    let answer: attester_tsm::Answer = Box::new(move |rd| {
        std::thread::sleep(delay);
        crate::report::with_report_data(&report, rd).map_err(|e| e.message().to_string())
    });
    Ok(Emulated::new(PROVIDER, answer, auxblob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::firmware::host::CertType;

    const REPORT: &[u8] = include_bytes!("../tests/fixtures/test-report.bin");
    const VCEK: &[u8] = include_bytes!("../tests/fixtures/test-vcek.der");

    fn dev(certs: &[CertTableEntry]) -> Tsm<Emulated> {
        Tsm {
            tsm: ConfigfsTsm::new(
                recorded(REPORT.to_vec(), certs, std::time::Duration::ZERO).unwrap(),
                PROVIDER,
            ),
            name: "recorded".into(),
        }
    }

    #[test]
    fn recorded_device_answers_with_our_report_data_and_certs() {
        let d = dev(&[CertTableEntry::new(CertType::VCEK, VCEK.to_vec())]);
        let r = d.ext_report(&[7; 64]).unwrap();
        assert_eq!(crate::report::report_data(&r.report).unwrap(), &[7; 64]);
        let certs = r.certs.unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].cert_type, CertType::VCEK);
        assert_eq!(certs[0].data, VCEK);
        assert_eq!(d.tsm.fs.entries(), 0);
        assert!(
            d.present(),
            "the recorded device presents a sev_guest provider"
        );
    }

    #[test]
    fn no_certificates_means_none() {
        assert!(dev(&[]).ext_report(&[0; 64]).unwrap().certs.is_none());
    }

    #[test]
    fn a_truncated_recording_is_refused() {
        let e = recorded(REPORT[..1000].to_vec(), &[], std::time::Duration::ZERO)
            .err()
            .unwrap();
        assert_eq!(
            e.message(),
            "SNP attestation report is 1000 bytes, expected 1184"
        );
    }

    #[test]
    fn a_missing_device_is_unavailable() {
        if std::path::Path::new(SEV_GUEST).exists() {
            return; // on SNP hardware this is a real device, not a missing one
        }
        let e = SevGuest.ext_report(&[0; 64]).err().unwrap();
        assert_eq!(e.code(), attester_sdk::Code::Unavailable);
        assert_eq!(e.message(), "cannot open /dev/sev-guest");
    }
}

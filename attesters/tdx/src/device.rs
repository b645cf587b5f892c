//! The device seam: configfs-tsm (the shared `attester-tsm` client, over the real
//! configfs or a recorded device that behaves like the kernel), the kernel's RTMR
//! files and the ACPI CCEL.

use std::path::{Path, PathBuf};

use attester_sdk::{Error, Result};
#[cfg(any(test, feature = "recorded"))]
pub use attester_tsm::Emulated;
pub use attester_tsm::{ConfigfsTsm, RealFs, TsmFs};

pub const PROVIDER: &str = "tdx_guest";

/// A recorded TDX device: configfs-tsm emulated like the kernel, answering with
/// `quote` whose REPORTDATA is set to the request, after `delay` (a slow firmware).
/// Tests and demos only (feature `recorded`).
#[cfg(any(test, feature = "recorded"))]
pub fn recorded(quote: Vec<u8>, delay: std::time::Duration) -> Result<Emulated> {
    crate::quote::body_offset(&quote)?;
    let answer: attester_tsm::Answer = Box::new(move |rd| {
        std::thread::sleep(delay);
        crate::quote::with_report_data(&quote, rd).map_err(|e| e.message().to_string())
    });
    Ok(Emulated::new(PROVIDER, answer, None))
}

/// The kernel's RTMR files (`rtmr<N>:sha384` under
/// `/sys/devices/virtual/misc/tdx_guest/measurements`): writing 48 bytes extends,
/// reading returns the register.
pub struct Rtmrs {
    dir: PathBuf,
}

impl Rtmrs {
    /// The interface at `dir`, if this kernel has it.
    pub fn probe(dir: &Path) -> Option<Rtmrs> {
        dir.join("rtmr3:sha384").exists().then(|| Rtmrs {
            dir: dir.to_path_buf(),
        })
    }

    fn file(&self, rtmr: u64) -> Result<PathBuf> {
        if rtmr > 3 {
            return Err(Error::invalid_argument(format!(
                "RTMR {rtmr} does not exist: TDX has RTMR 0 to 3"
            )));
        }
        Ok(self.dir.join(format!("rtmr{rtmr}:sha384")))
    }

    pub fn extend(&self, rtmr: u64, digest: &[u8]) -> Result<()> {
        let f = self.file(rtmr)?;
        if digest.len() != 48 {
            return Err(Error::invalid_argument(format!(
                "digest is {} bytes; RTMRs take 48 (SHA-384)",
                digest.len()
            )));
        }
        std::fs::write(&f, digest).map_err(|e| {
            Error::unavailable(format!("cannot extend RTMR {rtmr} through {}", f.display()))
                .with_source(e)
        })
    }

    pub fn read(&self, rtmr: u64) -> Result<Vec<u8>> {
        let f = self.file(rtmr)?;
        std::fs::read(&f).map_err(|e| {
            Error::unavailable(format!("cannot read RTMR {rtmr} from {}", f.display()))
                .with_source(e)
        })
    }
}

/// An event log file (the ACPI CCEL, attestd's runtime log), if present.
pub fn read_ccel(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::internal(format!("cannot read {}", path.display())).with_source(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q4: &[u8] = include_bytes!("../tests/fixtures/tdx_quote_4.dat");

    #[test]
    fn recorded_device_answers_with_our_report_data() {
        let tsm = ConfigfsTsm::new(
            recorded(Q4.to_vec(), std::time::Duration::ZERO).unwrap(),
            PROVIDER,
        );
        let q = tsm.report(&[9; 64], false).unwrap().outblob;
        assert_eq!(crate::quote::report_data(&q).unwrap(), &[9; 64]);
        // v4: REPORTDATA is at 48 + 520; nothing else changes.
        assert!(q[..568] == Q4[..568] && q[632..] == Q4[632..]);
        assert_eq!(tsm.fs.entries(), 0, "the entry is removed");
    }

    #[test]
    fn a_truncated_recording_is_refused() {
        let e = recorded(Q4[..100].to_vec(), std::time::Duration::ZERO)
            .err()
            .unwrap();
        assert_eq!(e.code(), attester_sdk::Code::Internal);
        assert_eq!(e.message(), "TDX quote is 100 bytes: truncated");
    }

    #[test]
    fn rtmrs_extend_by_writing_48_bytes() {
        let t = tempfile::tempdir().unwrap();
        assert!(Rtmrs::probe(t.path()).is_none());
        for i in 0..4 {
            std::fs::write(t.path().join(format!("rtmr{i}:sha384")), [0u8; 48]).unwrap();
        }
        let r = Rtmrs::probe(t.path()).unwrap();
        r.extend(3, &[7; 48]).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("rtmr3:sha384")).unwrap(),
            vec![7; 48]
        );
        assert_eq!(r.read(3).unwrap(), vec![7; 48]);
        let e = r.extend(4, &[7; 48]).unwrap_err();
        assert_eq!(e.message(), "RTMR 4 does not exist: TDX has RTMR 0 to 3");
        let e = r.extend(2, &[7; 32]).unwrap_err();
        assert_eq!(e.message(), "digest is 32 bytes; RTMRs take 48 (SHA-384)");
    }

    #[test]
    fn ccel_absent_is_none() {
        assert_eq!(read_ccel(Path::new("/nonexistent/CCEL")).unwrap(), None);
    }
}

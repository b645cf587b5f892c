//! A client for the kernel's configfs-tsm report interface
//! (Documentation/ABI/testing/configfs-tsm), shared by the TDX and SNP attesters,
//! over a small filesystem trait with two implementations: the real configfs and
//! `Emulated` (feature `emulated`: tests and recordings only), which behaves like
//! the kernel and answers from a recording.
//!
//! Why a crate of its own: attesters never depend on each other, and this is the
//! one piece TDX (`tdx_guest`) and SNP (`sev_guest`) share.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(any(test, feature = "emulated"))]
mod emulated;
#[cfg(any(test, feature = "emulated"))]
pub use emulated::{Answer, Emulated};

use attester_sdk::{Error, Result};

/// What a configfs-tsm report directory offers; `entry` is a directory name under
/// `…/tsm/report/`.
pub trait TsmFs: Send + Sync {
    fn mkdir(&self, entry: &str) -> std::io::Result<()>;
    fn rmdir(&self, entry: &str) -> std::io::Result<()>;
    fn read(&self, entry: &str, attr: &str) -> std::io::Result<Vec<u8>>;
    fn write(&self, entry: &str, attr: &str, data: &[u8]) -> std::io::Result<()>;
    /// Whether the report interface exists at all.
    fn present(&self) -> bool;
}

/// The kernel's configfs, rooted at `…/tsm/report` (default
/// `/sys/kernel/config/tsm/report`).
pub struct RealFs {
    pub root: PathBuf,
}

pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";

impl TsmFs for RealFs {
    fn mkdir(&self, entry: &str) -> std::io::Result<()> {
        std::fs::create_dir(self.root.join(entry))
    }
    fn rmdir(&self, entry: &str) -> std::io::Result<()> {
        std::fs::remove_dir(self.root.join(entry))
    }
    fn read(&self, entry: &str, attr: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.root.join(entry).join(attr))
    }
    fn write(&self, entry: &str, attr: &str, data: &[u8]) -> std::io::Result<()> {
        std::fs::write(self.root.join(entry).join(attr), data)
    }
    fn present(&self) -> bool {
        self.root.is_dir()
    }
}

/// Attempts when another writer races us on the same entry.
pub const ATTEMPTS: u32 = 3;

/// What one report entry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outblob: Vec<u8>,
    /// `auxblob` (SNP: the certificate table), `None` when absent or empty.
    pub auxblob: Option<Vec<u8>>,
}

/// A configfs-tsm client for one provider (`tdx_guest`, `sev_guest`).
pub struct ConfigfsTsm<F> {
    pub fs: F,
    pub provider: &'static str,
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

impl<F: TsmFs> ConfigfsTsm<F> {
    pub fn new(fs: F, provider: &'static str) -> Self {
        ConfigfsTsm { fs, provider }
    }

    /// A report for `inblob` (64 bytes of report data, zero-padded by the caller);
    /// with `aux`, also the entry's auxblob from the same generation.
    pub fn report(&self, inblob: &[u8; 64], aux: bool) -> Result<Report> {
        let entry = format!(
            "attestd-{}-{}",
            std::process::id(),
            NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
        );
        self.fs.mkdir(&entry).map_err(|e| {
            Error::unavailable("cannot create a configfs-tsm report entry").with_source(e)
        })?;
        let r = self.report_in(&entry, inblob, aux);
        // Entries are per request: leaving one behind would leak kernel memory.
        let _ = self.fs.rmdir(&entry);
        r
    }

    fn report_in(&self, entry: &str, inblob: &[u8; 64], aux: bool) -> Result<Report> {
        let provider = self.read_text(entry, "provider")?;
        if provider != self.provider {
            return Err(Error::failed_precondition(format!(
                "configfs-tsm provider is {provider:?}, not {}",
                self.provider
            )));
        }
        let mut last = 0;
        for _ in 0..ATTEMPTS {
            self.fs.write(entry, "inblob", inblob).map_err(|e| {
                Error::unavailable("cannot write configfs-tsm inblob").with_source(e)
            })?;
            let before = self.generation(entry)?;
            let outblob = self.fs.read(entry, "outblob").map_err(|e| {
                Error::unavailable("cannot read configfs-tsm outblob").with_source(e)
            })?;
            let auxblob = if aux { self.auxblob(entry)? } else { None };
            let after = self.generation(entry)?;
            // The kernel bumps generation on every inblob write: if it moved while
            // we read, the blobs may answer someone else's report data.
            if after == before {
                return Ok(Report { outblob, auxblob });
            }
            // A kernel (or host) may move it either way: never underflow.
            last = after.abs_diff(before);
        }
        Err(Error::unavailable(format!(
            "configfs-tsm entry changed while reading the report ({last} other write(s)) {ATTEMPTS} times: concurrent writers"
        )))
    }

    fn auxblob(&self, entry: &str) -> Result<Option<Vec<u8>>> {
        match self.fs.read(entry, "auxblob") {
            Ok(b) if b.is_empty() => Ok(None),
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::unavailable("cannot read configfs-tsm auxblob").with_source(e)),
        }
    }

    fn generation(&self, entry: &str) -> Result<u64> {
        self.read_text(entry, "generation")?
            .parse()
            .map_err(|e| Error::internal("configfs-tsm generation is not a number").with_source(e))
    }

    fn read_text(&self, entry: &str, attr: &str) -> Result<String> {
        let b = self.fs.read(entry, attr).map_err(|e| {
            Error::unavailable(format!("cannot read configfs-tsm {attr}")).with_source(e)
        })?;
        Ok(String::from_utf8_lossy(&b).trim().to_string())
    }
}

/// Whether the configfs-tsm root at `fs` serves `provider`: creates a probe entry,
/// reads its provider and removes it.
pub fn provider_is<F: TsmFs>(fs: &F, provider: &str) -> bool {
    if !fs.present() {
        return false;
    }
    let entry = format!("attestd-probe-{}", std::process::id());
    if fs.mkdir(&entry).is_err() {
        return false;
    }
    let ok = fs
        .read(&entry, "provider")
        .map(|p| String::from_utf8_lossy(&p).trim() == provider)
        .unwrap_or(false);
    let _ = fs.rmdir(&entry);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use attester_sdk::Code;

    fn echo(provider: &'static str, aux: Option<Vec<u8>>) -> ConfigfsTsm<Emulated> {
        let answer: Answer = Box::new(|rd| Ok([b"report:".as_slice(), rd].concat()));
        ConfigfsTsm::new(Emulated::new(provider, answer, aux), provider)
    }

    #[test]
    fn emulation_answers_with_our_report_data_and_the_entry_is_removed() {
        let tsm = echo("tdx_guest", None);
        let r = tsm.report(&[9; 64], true).unwrap();
        assert_eq!(r.outblob, [b"report:".as_slice(), &[9; 64]].concat());
        assert_eq!(r.auxblob, None, "no auxblob attribute means none");
        assert_eq!(tsm.fs.entries(), 0);
    }

    #[test]
    fn auxblob_is_read_when_asked() {
        let tsm = echo("sev_guest", Some(vec![1, 2, 3]));
        assert_eq!(
            tsm.report(&[0; 64], true).unwrap().auxblob,
            Some(vec![1, 2, 3])
        );
        assert_eq!(tsm.report(&[0; 64], false).unwrap().auxblob, None);
        let tsm = echo("sev_guest", Some(vec![]));
        assert_eq!(
            tsm.report(&[0; 64], true).unwrap().auxblob,
            None,
            "empty is none"
        );
    }

    #[test]
    fn one_concurrent_write_is_retried() {
        let tsm = echo("tdx_guest", None);
        tsm.fs.interfere(1, 1);
        let r = tsm.report(&[3; 64], false).unwrap();
        assert_eq!(&r.outblob[7..], &[3; 64]);
    }

    #[test]
    fn persistent_concurrent_writers_are_an_error() {
        let tsm = echo("tdx_guest", None);
        tsm.fs.interfere(3, 1);
        let e = tsm.report(&[3; 64], false).unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            e.message(),
            "configfs-tsm entry changed while reading the report (1 other write(s)) 3 times: concurrent writers"
        );
        assert_eq!(tsm.fs.entries(), 0);
    }

    #[test]
    fn a_generation_going_backwards_is_retried_not_an_underflow() {
        let tsm = echo("tdx_guest", None);
        // The generation steps back by 2 during each read, through zero and
        // u64::MAX (where `after - before` used to underflow).
        tsm.fs.interfere(3, -2);
        let e = tsm.report(&[3; 64], false).unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            e.message(),
            "configfs-tsm entry changed while reading the report (2 other write(s)) 3 times: concurrent writers"
        );
        tsm.fs.interfere(1, -1);
        assert_eq!(&tsm.report(&[4; 64], false).unwrap().outblob[7..], &[4; 64]);
    }

    #[test]
    fn a_failing_answer_is_unavailable_with_its_cause() {
        let answer: Answer = Box::new(|_| Err("device said no".into()));
        let tsm = ConfigfsTsm::new(Emulated::new("sev_guest", answer, None), "sev_guest");
        let e = tsm.report(&[0; 64], false).unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            e.chain(),
            "cannot read configfs-tsm outblob: device said no"
        );
    }

    #[test]
    fn missing_configfs_is_unavailable() {
        let t = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::new(
            RealFs {
                root: t.path().join("nope"),
            },
            "tdx_guest",
        );
        assert!(!tsm.fs.present());
        assert!(!provider_is(&tsm.fs, "tdx_guest"));
        let e = tsm.report(&[0; 64], false).unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(e.message(), "cannot create a configfs-tsm report entry");
    }

    #[test]
    fn a_foreign_provider_is_refused() {
        let tsm = echo("sev_guest", None);
        let tdx = ConfigfsTsm::new(tsm.fs, "tdx_guest");
        let e = tdx.report(&[0; 64], false).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "configfs-tsm provider is \"sev_guest\", not tdx_guest"
        );
        assert!(provider_is(&tdx.fs, "sev_guest"));
        assert!(!provider_is(&tdx.fs, "tdx_guest"));
        assert_eq!(tdx.fs.entries(), 0, "the probe entry is removed");
    }

    #[test]
    fn real_fs_reads_and_writes_files_under_the_root() {
        // A plain directory laid out like configfs (the kernel creates the
        // attributes itself; here the test does).
        let t = tempfile::tempdir().unwrap();
        let fs = RealFs {
            root: t.path().to_path_buf(),
        };
        fs.mkdir("e").unwrap();
        fs.write("e", "inblob", &[1; 64]).unwrap();
        assert_eq!(fs.read("e", "inblob").unwrap(), vec![1; 64]);
        std::fs::remove_file(t.path().join("e/inblob")).unwrap();
        fs.rmdir("e").unwrap();
        assert!(!t.path().join("e").exists());
    }
}

//! The device seam: a configfs-tsm client (the ~50 lines the kernel ABI needs, see
//! Documentation/ABI/testing/configfs-tsm) over a small filesystem trait, with the
//! real filesystem and a recorded device that behaves like the kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// One emulated report entry: its generation and the last inblob written.
type Entries = HashMap<String, (u64, Option<[u8; 64]>)>;

/// A recorded TDX device behaving like the kernel: an entry has `provider`
/// (`tdx_guest`), `generation` (bumped by every inblob write) and `outblob` (the
/// recorded quote with REPORTDATA set to the last inblob).
pub struct Recorded {
    quote: Vec<u8>,
    entries: Mutex<Entries>,
    /// Test hook: extra writes by "another process" before the next outblob read.
    interfere: AtomicU64,
}

impl Recorded {
    pub fn new(quote: Vec<u8>) -> Result<Self> {
        crate::quote::body_offset(&quote)?;
        Ok(Recorded {
            quote,
            entries: Mutex::new(HashMap::new()),
            interfere: AtomicU64::new(0),
        })
    }

    /// Make the next `n` outblob reads see a concurrent writer.
    pub fn interfere(&self, n: u64) {
        self.interfere.store(n, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string())
}

impl TsmFs for Recorded {
    fn mkdir(&self, entry: &str) -> std::io::Result<()> {
        self.lock().insert(entry.into(), (0, None));
        Ok(())
    }
    fn rmdir(&self, entry: &str) -> std::io::Result<()> {
        self.lock()
            .remove(entry)
            .map(|_| ())
            .ok_or_else(|| not_found(entry))
    }
    fn read(&self, entry: &str, attr: &str) -> std::io::Result<Vec<u8>> {
        let mut entries = self.lock();
        let e = entries.get_mut(entry).ok_or_else(|| not_found(entry))?;
        match attr {
            "provider" => Ok(b"tdx_guest\n".to_vec()),
            "generation" => Ok(format!("{}\n", e.0).into_bytes()),
            "outblob" => {
                if self.interfere.load(Ordering::SeqCst) > 0 {
                    self.interfere.fetch_sub(1, Ordering::SeqCst);
                    e.0 += 1; // someone else wrote inblob meanwhile
                }
                let rd =
                    e.1.ok_or_else(|| std::io::Error::other("no inblob written"))?;
                crate::quote::with_report_data(&self.quote, &rd)
                    .map_err(|err| std::io::Error::other(err.message().to_string()))
            }
            other => Err(not_found(other)),
        }
    }
    fn write(&self, entry: &str, attr: &str, data: &[u8]) -> std::io::Result<()> {
        let mut entries = self.lock();
        let e = entries.get_mut(entry).ok_or_else(|| not_found(entry))?;
        match attr {
            "inblob" => {
                let rd: [u8; 64] = data
                    .try_into()
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                e.0 += 1;
                e.1 = Some(rd);
                Ok(())
            }
            other => Err(not_found(other)),
        }
    }
    fn present(&self) -> bool {
        true
    }
}

/// Attempts when another writer races us on the same entry.
const ATTEMPTS: u32 = 3;

/// A configfs-tsm client for the `tdx_guest` provider.
pub struct ConfigfsTsm<F> {
    pub fs: F,
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

impl<F: TsmFs> ConfigfsTsm<F> {
    /// A quote whose REPORTDATA is `report_data` (64 bytes, zero-padded by the caller).
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let entry = format!(
            "attestd-{}-{}",
            std::process::id(),
            NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
        );
        self.fs.mkdir(&entry).map_err(|e| {
            Error::unavailable("cannot create a configfs-tsm report entry").with_source(e)
        })?;
        let r = self.quote_in(&entry, report_data);
        let _ = self.fs.rmdir(&entry);
        r
    }

    fn quote_in(&self, entry: &str, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let provider = self.read_text(entry, "provider")?;
        if provider != "tdx_guest" {
            return Err(Error::failed_precondition(format!(
                "configfs-tsm provider is {provider:?}, not tdx_guest"
            )));
        }
        let mut last = 0;
        for _ in 0..ATTEMPTS {
            self.fs.write(entry, "inblob", report_data).map_err(|e| {
                Error::unavailable("cannot write configfs-tsm inblob").with_source(e)
            })?;
            let before = self.generation(entry)?;
            let quote = self.fs.read(entry, "outblob").map_err(|e| {
                Error::unavailable("cannot read configfs-tsm outblob").with_source(e)
            })?;
            let after = self.generation(entry)?;
            // The kernel bumps generation on every inblob write: if it moved while
            // we read, the outblob may answer someone else's report data.
            if after == before {
                return Ok(quote);
            }
            last = after - before;
        }
        Err(Error::unavailable(format!(
            "configfs-tsm entry changed while reading the quote ({last} other write(s)) {ATTEMPTS} times: concurrent writers"
        )))
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

/// The ACPI CCEL event log, if the firmware published one.
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
        let tsm = ConfigfsTsm {
            fs: Recorded::new(Q4.to_vec()).unwrap(),
        };
        let q = tsm.quote(&[9; 64]).unwrap();
        assert_eq!(crate::quote::report_data(&q).unwrap(), &[9; 64]);
        assert!(tsm.fs.lock().is_empty(), "the entry is removed");
    }

    #[test]
    fn one_concurrent_write_is_retried() {
        let tsm = ConfigfsTsm {
            fs: Recorded::new(Q4.to_vec()).unwrap(),
        };
        tsm.fs.interfere(1);
        let q = tsm.quote(&[3; 64]).unwrap();
        assert_eq!(crate::quote::report_data(&q).unwrap(), &[3; 64]);
    }

    #[test]
    fn persistent_concurrent_writers_are_an_error() {
        let tsm = ConfigfsTsm {
            fs: Recorded::new(Q4.to_vec()).unwrap(),
        };
        tsm.fs.interfere(3);
        let e = tsm.quote(&[3; 64]).unwrap_err();
        assert_eq!(e.code(), attester_sdk::Code::Unavailable);
        assert_eq!(
            e.message(),
            "configfs-tsm entry changed while reading the quote (1 other write(s)) 3 times: concurrent writers"
        );
        assert!(tsm.fs.lock().is_empty());
    }

    #[test]
    fn missing_configfs_is_unavailable() {
        let t = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm {
            fs: RealFs {
                root: t.path().join("nope"),
            },
        };
        assert!(!tsm.fs.present());
        let e = tsm.quote(&[0; 64]).unwrap_err();
        assert_eq!(e.code(), attester_sdk::Code::Unavailable);
        assert_eq!(e.message(), "cannot create a configfs-tsm report entry");
    }

    #[test]
    fn real_fs_with_a_foreign_provider_is_refused() {
        // A directory laid out like configfs, but the provider is SNP's.
        let t = tempfile::tempdir().unwrap();
        struct Fake(PathBuf);
        impl TsmFs for Fake {
            fn mkdir(&self, e: &str) -> std::io::Result<()> {
                std::fs::create_dir(self.0.join(e))?;
                std::fs::write(self.0.join(e).join("provider"), "sev_guest\n")
            }
            fn rmdir(&self, e: &str) -> std::io::Result<()> {
                std::fs::remove_dir_all(self.0.join(e))
            }
            fn read(&self, e: &str, a: &str) -> std::io::Result<Vec<u8>> {
                std::fs::read(self.0.join(e).join(a))
            }
            fn write(&self, e: &str, a: &str, d: &[u8]) -> std::io::Result<()> {
                std::fs::write(self.0.join(e).join(a), d)
            }
            fn present(&self) -> bool {
                true
            }
        }
        let tsm = ConfigfsTsm {
            fs: Fake(t.path().to_path_buf()),
        };
        let e = tsm.quote(&[0; 64]).unwrap_err();
        assert_eq!(
            e.message(),
            "configfs-tsm provider is \"sev_guest\", not tdx_guest"
        );
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

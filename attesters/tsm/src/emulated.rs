//! The emulated configfs-tsm: behaves like the kernel, answers from a recording.
//! Compiled only with feature `emulated` (plugins' `recorded` feature, for tests)
//! and for this crate's own tests: a shipped plugin cannot serve a recording.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::TsmFs;

/// Builds the outblob for the report data last written to inblob.
pub type Answer = Box<dyn Fn(&[u8; 64]) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

/// One emulated report entry: its generation and the last inblob written.
type Entries = HashMap<String, (u64, Option<[u8; 64]>)>;

/// A recorded device behaving like the kernel: an entry has `provider`,
/// `generation` (bumped by every inblob write), `outblob` (built by `answer` from
/// the last inblob) and, when the recording has one, `auxblob`.
pub struct Emulated {
    provider: String,
    answer: Answer,
    auxblob: Option<Vec<u8>>,
    entries: Mutex<Entries>,
    /// Test hook: the next outblob reads see the generation move by this step
    /// ("another process" wrote, or a kernel went backwards), this many times.
    #[cfg(test)]
    interfere: Mutex<(u64, i64)>,
}

impl Emulated {
    pub fn new(provider: &str, answer: Answer, auxblob: Option<Vec<u8>>) -> Self {
        Emulated {
            provider: provider.into(),
            answer,
            auxblob,
            entries: Mutex::new(HashMap::new()),
            #[cfg(test)]
            interfere: Mutex::new((0, 0)),
        }
    }

    /// Make the next `n` outblob reads see the generation move by `step`.
    #[cfg(test)]
    pub(crate) fn interfere(&self, n: u64, step: i64) {
        *self.interfere.lock().unwrap_or_else(|p| p.into_inner()) = (n, step);
    }

    /// How many report entries exist (the client must remove its own).
    pub fn entries(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string())
}

impl TsmFs for Emulated {
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
            "provider" => Ok(format!("{}\n", self.provider).into_bytes()),
            "generation" => Ok(format!("{}\n", e.0).into_bytes()),
            "outblob" => {
                #[cfg(test)]
                {
                    let mut i = self.interfere.lock().unwrap_or_else(|p| p.into_inner());
                    if i.0 > 0 {
                        i.0 -= 1;
                        e.0 = e.0.wrapping_add_signed(i.1);
                    }
                }
                let rd =
                    e.1.ok_or_else(|| std::io::Error::other("no inblob written"))?;
                (self.answer)(&rd).map_err(std::io::Error::other)
            }
            // The kernel has no auxblob attribute for providers without one.
            "auxblob" => self.auxblob.clone().ok_or_else(|| not_found(attr)),
            other => Err(not_found(other)),
        }
    }
    fn write(&self, entry: &str, attr: &str, data: &[u8]) -> std::io::Result<()> {
        let mut entries = self.lock();
        let e = entries.get_mut(entry).ok_or_else(|| not_found(entry))?;
        match attr {
            "inblob" => {
                // The kernel takes at most 64 bytes of report data.
                let rd: [u8; 64] = data
                    .try_into()
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                e.0 = e.0.wrapping_add(1);
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

//! The runtime-measurement event log (AAEL): every `ExtendRuntimeMeasurement`
//! appends a record ([`record`]) and extends the primary plugin's register with its
//! digest, so the log replays to the register a quote reports.
//!
//! Crash safety: a write-ahead record (`.<log>.wal`, written atomically) holds the
//! register's value before and the value expected after, the record and its offset.
//! Then the register is extended, the record appended, the WAL removed. Whenever a
//! WAL is found (at start, or after an extend whose outcome is unknown) it is settled
//! by reading the register back: expected value → the record is (re)written at its
//! offset; previous value → the entry never happened and is dropped; anything else →
//! an error naming the three values (someone else extended the register). So the
//! log never holds an entry the register lacks or the reverse, and is never torn.
//! One lock serialises writers.

pub mod record;

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attester_sdk::{Capabilities, Error, Result};
use serde::{Deserialize, Serialize};

pub use record::{HashAlg, Record};

/// Upstream's log location.
pub const DEFAULT_PATH: &str = "/run/attestation-agent/eventlog";

/// The registers of the plugin that measures: the core reaches them only through
/// the plugin API (it opens no device).
pub trait Registers: Send + Sync + 'static {
    fn read(&self, register: u64) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn extend(&self, register: u64, digest: Vec<u8>) -> impl Future<Output = Result<()>> + Send;
}

/// How the measuring plugin's registers are named and hashed.
#[derive(Debug, Clone)]
pub struct Layout {
    pub alg: HashAlg,
    /// PCR → register (TDX: RTMR); identity when the plugin gives no map.
    map: BTreeMap<u64, u64>,
    /// Where PCRs outside a non-empty map go (TDX: RTMR 3, upstream's mapping).
    default_register: Option<u64>,
    /// TDX logs name registers by CC MR index (RTMR + 1), as the CCEL does.
    cc_mr: bool,
}

impl Layout {
    /// The layout a plugin advertises; `None` when it cannot extend and read back
    /// (then `ExtendRuntimeMeasurement` is `NOT_SUPPORTED`).
    pub fn of(tee: &str, caps: &Capabilities) -> Result<Option<Layout>> {
        if !caps.runtime_measurement || !caps.register_read {
            return Ok(None);
        }
        let alg = caps.measurement_hash.as_deref().ok_or_else(|| {
            Error::failed_precondition(
                "the plugin offers runtime measurement but names no hash algorithm",
            )
        })?;
        Ok(Some(Layout {
            alg: HashAlg::parse(alg)?,
            map: caps
                .register_map
                .iter()
                .map(|m| (m.pcr, m.register))
                .collect(),
            default_register: caps.default_register,
            cc_mr: tee == "tdx",
        }))
    }

    /// The register PCR `pcr` extends: the plugin's map, else its default register;
    /// with neither (no map at all), the PCR itself. A mapped TEE with no default
    /// refuses a PCR outside its map.
    pub fn register(&self, pcr: u64) -> Result<u64> {
        if self.map.is_empty() && self.default_register.is_none() {
            return Ok(pcr);
        }
        self.map
            .get(&pcr)
            .copied()
            .or(self.default_register)
            .ok_or_else(|| Error::invalid_argument(format!("PCR {pcr} has no register here")))
    }

    /// The register's index in the log (TDX: the CC MR index, RTMR + 1).
    pub fn index(&self, register: u64) -> Result<u32> {
        let i = if self.cc_mr {
            register.checked_add(1)
        } else {
            Some(register)
        };
        i.and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::invalid_argument(format!("register {register} is out of range")))
    }

    pub fn register_of_index(&self, index: u32) -> u64 {
        if self.cc_mr {
            u64::from(index).saturating_sub(1)
        } else {
            index.into()
        }
    }
}

/// The write-ahead record of one entry in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    offset: u64,
    register: u64,
    /// false for INIT entries, which are logged but not extended.
    extend: bool,
    #[serde(with = "hex::serde")]
    before: Vec<u8>,
    #[serde(with = "hex::serde")]
    expected: Vec<u8>,
    #[serde(with = "hex::serde")]
    record: Vec<u8>,
}

enum Settled {
    Completed,
    Discarded,
}

struct State {
    file: File,
    len: u64,
    /// Each register's value as the log replays it.
    values: BTreeMap<u32, Vec<u8>>,
    /// The log's length when this attestd opened it (see [`EventLog::abandon`]).
    opened_len: u64,
}

pub struct EventLog<R> {
    path: PathBuf,
    wal: PathBuf,
    layout: Layout,
    default_pcr: u64,
    regs: Arc<R>,
    state: tokio::sync::Mutex<State>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::internal(what).with_source(e)
}

fn sync_dir(path: &Path) {
    // Durability of a rename or unlink needs the directory synced; best effort
    // (some filesystems refuse fsync on directories).
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Create the directory of the log at `path`. attestd does so before it
/// launches any plugin, not only when it opens the log: a container plugin is
/// bound only what exists when it starts, and TDX's reads the log
/// (`/run/attestation-agent`).
pub fn prepare_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    Ok(())
}

impl<R: Registers> EventLog<R> {
    /// Open (or create) the log at `path`, settle a write-ahead record left by a
    /// crash, and make sure the default register has its INIT entry.
    pub async fn open(path: &Path, default_pcr: u64, layout: Layout, regs: Arc<R>) -> Result<Self> {
        prepare_dir(path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(format!("cannot open event log {}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "eventlog".into());
        let log = EventLog {
            wal: path.with_file_name(format!(".{name}.wal")),
            path: path.to_path_buf(),
            layout,
            default_pcr,
            regs,
            state: tokio::sync::Mutex::new(State {
                file,
                len: 0,
                values: BTreeMap::new(),
                opened_len: 0,
            }),
        };
        {
            let mut st = log.state.lock().await;
            if let Some(p) = log.read_wal()? {
                tracing::warn!(log = %log.path.display(), "settling an entry left by a crash");
                match log.settle(&mut st, &p).await? {
                    Settled::Completed => tracing::warn!("the pending entry was completed"),
                    Settled::Discarded => {
                        tracing::warn!("the pending entry never reached the register; dropped")
                    }
                }
            }
            log.reload(&mut st)?;
            st.opened_len = st.len;
            let register = log.layout.register(default_pcr)?;
            log.ensure_init(&mut st, register).await?;
            // A register that moved without the log is worth a loud line: the
            // verifier will refuse this log.
            for (index, value) in st.values.clone() {
                let register = log.layout.register_of_index(index);
                match log.regs.read(register).await {
                    Ok(v) if v == value => {}
                    Ok(v) => tracing::error!(
                        register,
                        log = %hex::encode(&value),
                        actual = %hex::encode(&v),
                        "the event log does not replay to the register: something else extended it"
                    ),
                    Err(e) => {
                        tracing::warn!(register, "cannot read the register back: {}", e.chain())
                    }
                }
            }
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Log `<domain> <operation> <content>` and extend the register for `pcr`
    /// (default: the configured one) with the entry's digest.
    pub async fn record(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        pcr: Option<u64>,
    ) -> Result<()> {
        let text = record::validate(domain, operation, content)?;
        let register = self.layout.register(pcr.unwrap_or(self.default_pcr))?;
        let index = self.layout.index(register)?;
        let mut st = self.state.lock().await;
        if let Some(p) = self.read_wal()? {
            // An earlier extend's outcome was unknown: settle it first.
            self.settle(&mut st, &p).await.map_err(|e| {
                e.context(format!(
                    "event log {} has an unsettled entry",
                    self.path.display()
                ))
            })?;
            self.reload(&mut st)?;
        }
        self.ensure_init(&mut st, register).await?;
        let rec = Record::event(index, self.layout.alg, text);
        let before = self.regs.read(register).await?;
        let p = Pending {
            offset: st.len,
            register,
            extend: true,
            expected: self.layout.alg.extend(&before, &rec.digest),
            before,
            record: rec.encode(),
        };
        self.write_wal(&p)?;
        crate::fault::crash("eventlog-after-wal");
        if let Err(e) = self.regs.extend(register, rec.digest.clone()).await {
            // A timeout or a lost connection leaves it open whether the register
            // moved: read it back and settle.
            return match self.settle(&mut st, &p).await {
                Ok(Settled::Completed) => {
                    self.advance(&mut st, &p, &rec);
                    Ok(())
                }
                Ok(Settled::Discarded) => Err(e),
                Err(s) => Err(e.context(format!("{}; and then", s.chain()))),
            };
        }
        crate::fault::crash("eventlog-after-extend");
        self.append(&st, &p)?;
        crate::fault::crash("eventlog-after-append");
        self.remove_wal()?;
        self.advance(&mut st, &p, &rec);
        Ok(())
    }

    /// Each register's value as the log replays it.
    pub async fn replayed(&self) -> BTreeMap<u32, Vec<u8>> {
        self.state.lock().await.values.clone()
    }

    fn advance(&self, st: &mut State, p: &Pending, rec: &Record) {
        st.len = p.offset + p.record.len() as u64;
        if let Some(v) = st.values.get_mut(&rec.index) {
            *v = self.layout.alg.extend(v, &rec.digest);
        }
    }

    async fn ensure_init(&self, st: &mut State, register: u64) -> Result<()> {
        let index = self.layout.index(register)?;
        if st.values.contains_key(&index) {
            return Ok(());
        }
        let value = self.regs.read(register).await?;
        if value.len() != self.layout.alg.digest_len() {
            return Err(Error::internal(format!(
                "register {register} reads {} bytes; {} registers have {}",
                value.len(),
                self.layout.alg.name(),
                self.layout.alg.digest_len()
            )));
        }
        let rec = Record::init(index, self.layout.alg, &value);
        let p = Pending {
            offset: st.len,
            register,
            extend: false,
            before: value.clone(),
            expected: value.clone(),
            record: rec.encode(),
        };
        self.write_wal(&p)?;
        self.append(st, &p)?;
        self.remove_wal()?;
        st.len = p.offset + p.record.len() as u64;
        st.values.insert(index, value);
        Ok(())
    }

    async fn settle(&self, st: &mut State, p: &Pending) -> Result<Settled> {
        if !p.extend {
            self.append(st, p)?;
            self.remove_wal()?;
            return Ok(Settled::Completed);
        }
        let now = self.regs.read(p.register).await?;
        let outcome = if now == p.expected {
            self.append(st, p)?;
            Settled::Completed
        } else if now == p.before {
            st.file
                .set_len(p.offset)
                .map_err(io(format!("cannot truncate {}", self.path.display())))?;
            Settled::Discarded
        } else {
            return Err(Error::failed_precondition(format!(
                "register {} holds {}: neither its value before the pending entry ({}) nor after it ({}); \
                 something else extended it. Keep {} for inspection, then remove it and the log to start over",
                p.register,
                hex::encode(&now),
                hex::encode(&p.before),
                hex::encode(&p.expected),
                self.wal.display()
            )));
        };
        self.remove_wal()?;
        Ok(outcome)
    }

    /// Write `p`'s record at its offset (dropping anything after it) and sync.
    /// Start-up failed after the log was opened: take back what this attestd
    /// added if none of it extended a register (INIT records only), so a failed
    /// start leaves the log as it found it. Anything that reached a register
    /// stays: the log must replay to it.
    pub async fn abandon(&self) {
        let mut st = self.state.lock().await;
        if st.len <= st.opened_len {
            return;
        }
        let added = std::fs::read(&self.path)
            .ok()
            .and_then(|b| b.get(st.opened_len as usize..).map(<[u8]>::to_vec))
            .and_then(|b| record::parse(&b).ok());
        let Some(added) = added else { return };
        if added
            .iter()
            .any(|(_, r)| r.event_type != record::EV_NO_ACTION)
        {
            return;
        }
        let opened = st.opened_len;
        match st.file.set_len(opened).and_then(|()| st.file.sync_data()) {
            Ok(()) => {
                tracing::info!(log = %self.path.display(), "start-up failed: the records it added to the event log were taken back");
                let _ = self.reload(&mut st);
            }
            Err(e) => {
                tracing::warn!(log = %self.path.display(), "cannot take back the records a failed start added: {e}")
            }
        }
    }

    fn append(&self, st: &State, p: &Pending) -> Result<()> {
        let ctx = || format!("cannot write event log {}", self.path.display());
        st.file
            .write_all_at(&p.record, p.offset)
            .map_err(io(ctx()))?;
        st.file
            .set_len(p.offset + p.record.len() as u64)
            .map_err(io(ctx()))?;
        st.file.sync_data().map_err(io(ctx()))
    }

    fn reload(&self, st: &mut State) -> Result<()> {
        let mut bytes = Vec::new();
        let mut f = File::open(&self.path)
            .map_err(io(format!("cannot read event log {}", self.path.display())))?;
        f.read_to_end(&mut bytes)
            .map_err(io(format!("cannot read event log {}", self.path.display())))?;
        let records = record::parse(&bytes)
            .map_err(|e| e.context(format!("event log {}", self.path.display())))?;
        st.values = record::replay(records.iter().map(|(_, r)| r))
            .map_err(|e| e.context(format!("event log {}", self.path.display())))?;
        st.len = bytes.len() as u64;
        Ok(())
    }

    fn write_wal(&self, p: &Pending) -> Result<()> {
        let tmp = self.wal.with_extension("tmp");
        let ctx = || format!("cannot write the write-ahead record {}", self.wal.display());
        let body = serde_json::to_vec(p).map_err(|e| Error::internal(ctx()).with_source(e))?;
        let f = File::create(&tmp).map_err(io(ctx()))?;
        f.write_all_at(&body, 0).map_err(io(ctx()))?;
        f.sync_all().map_err(io(ctx()))?;
        std::fs::rename(&tmp, &self.wal).map_err(io(ctx()))?;
        sync_dir(&self.wal);
        Ok(())
    }

    fn read_wal(&self) -> Result<Option<Pending>> {
        match std::fs::read(&self.wal) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::failed_precondition(format!(
                    "the write-ahead record {} is unreadable; the log's last entry is in doubt",
                    self.wal.display()
                ))
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("cannot read {}", self.wal.display()))(e)),
        }
    }

    fn remove_wal(&self) -> Result<()> {
        std::fs::remove_file(&self.wal)
            .map_err(io(format!("cannot remove {}", self.wal.display())))?;
        sync_dir(&self.wal);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

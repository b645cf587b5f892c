use std::collections::HashMap;
use std::sync::Mutex;

use attester_sdk::{Code, RegisterMapping};

use super::*;

/// What the fake plugin does on the next extend.
#[derive(Clone, Copy, PartialEq)]
enum OnExtend {
    Extend,
    /// Refuse without touching the register (a TPM locality error).
    Refuse,
    /// Extend, then lose the answer (a timeout after the fact).
    ExtendThenFail,
}

/// A plugin's registers in memory, all starting at zero.
struct Fake {
    alg: HashAlg,
    regs: Mutex<HashMap<u64, Vec<u8>>>,
    on_extend: Mutex<OnExtend>,
}

impl Fake {
    fn new(alg: HashAlg) -> Arc<Fake> {
        Arc::new(Fake {
            alg,
            regs: Mutex::new(HashMap::new()),
            on_extend: Mutex::new(OnExtend::Extend),
        })
    }
    fn get(&self, r: u64) -> Vec<u8> {
        self.regs
            .lock()
            .unwrap()
            .get(&r)
            .cloned()
            .unwrap_or_else(|| vec![0; self.alg.digest_len()])
    }
    fn bump(&self, r: u64, digest: &[u8]) {
        let v = self.alg.extend(&self.get(r), digest);
        self.regs.lock().unwrap().insert(r, v);
    }
}

impl Registers for Fake {
    async fn read(&self, register: u64) -> Result<Vec<u8>> {
        Ok(self.get(register))
    }
    async fn extend(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        let mode = *self.on_extend.lock().unwrap();
        match mode {
            OnExtend::Extend => {
                self.bump(register, &digest);
                Ok(())
            }
            OnExtend::Refuse => Err(Error::failed_precondition("locality")),
            OnExtend::ExtendThenFail => {
                self.bump(register, &digest);
                Err(Error::unavailable("deadline exceeded"))
            }
        }
    }
}

fn tpm_layout() -> Layout {
    Layout::of(
        "tpm",
        &Capabilities {
            runtime_measurement: true,
            register_read: true,
            measurement_hash: Some("sha256".into()),
            ..Default::default()
        },
    )
    .unwrap()
    .unwrap()
}

fn records(path: &Path) -> Vec<Record> {
    record::parse(&std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

async fn open(path: &Path, regs: &Arc<Fake>) -> Result<EventLog<Fake>> {
    EventLog::open(path, 23, tpm_layout(), regs.clone()).await
}

#[tokio::test]
async fn entries_replay_to_the_register() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("run/eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    regs.bump(23, &[7; 32]); // the register is not zero when the log starts
    let start = regs.get(23);
    let log = open(&path, &regs).await.unwrap();
    for i in 0..3 {
        log.record("github.com/x", "PullImage", &format!("{{\"n\":{i}}}"), None)
            .await
            .unwrap();
    }
    let recs = records(&path);
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].text, format!("INIT/sha256 {}", hex::encode(&start)));
    assert_eq!(recs[0].event_type, record::EV_NO_ACTION);
    assert_eq!(recs[3].text, "github.com/x PullImage {\"n\":2}");
    assert_eq!(recs[3].index, 23);
    let replayed = record::replay(&recs).unwrap();
    assert_eq!(replayed[&23], regs.get(23));
    assert_eq!(log.replayed().await[&23], regs.get(23));
    assert!(!log.wal.exists());

    // Reopening keeps going: no second INIT.
    drop(log);
    let log = open(&path, &regs).await.unwrap();
    log.record("d", "op", "four", None).await.unwrap();
    let recs = records(&path);
    assert_eq!(recs.len(), 5);
    assert_eq!(record::replay(&recs).unwrap()[&23], regs.get(23));
}

#[tokio::test]
async fn another_register_gets_its_own_init() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    let log = open(&path, &regs).await.unwrap();
    log.record("d", "op", "c", Some(16)).await.unwrap();
    let recs = records(&path);
    let indices: Vec<_> = recs.iter().map(|r| (r.index, r.event_type)).collect();
    assert_eq!(
        indices,
        [
            (23, record::EV_NO_ACTION),
            (16, record::EV_NO_ACTION),
            (16, record::EV_EVENT_TAG)
        ]
    );
    assert_eq!(record::replay(&recs).unwrap()[&16], regs.get(16));
}

#[tokio::test]
async fn bad_entries_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    let log = open(&path, &regs).await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let e = log.record("a b", "op", "c", None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(regs.get(23), vec![0; 32]);
}

#[tokio::test]
async fn a_refused_extend_is_an_error_and_leaves_no_entry() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    let log = open(&path, &regs).await.unwrap();
    let before = std::fs::read(&path).unwrap();
    *regs.on_extend.lock().unwrap() = OnExtend::Refuse;
    let e = log.record("d", "op", "c", None).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "locality");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!log.wal.exists());
    // The log keeps working afterwards.
    *regs.on_extend.lock().unwrap() = OnExtend::Extend;
    log.record("d", "op", "c", None).await.unwrap();
    assert_eq!(record::replay(&records(&path)).unwrap()[&23], regs.get(23));
}

#[tokio::test]
async fn an_extend_that_happened_but_failed_to_answer_is_logged() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    let log = open(&path, &regs).await.unwrap();
    *regs.on_extend.lock().unwrap() = OnExtend::ExtendThenFail;
    log.record("d", "op", "c", None).await.unwrap();
    assert_eq!(records(&path).len(), 2);
    assert_eq!(record::replay(&records(&path)).unwrap()[&23], regs.get(23));
    assert!(!log.wal.exists());
}

/// Leave the state a crash after the write-ahead record (and optionally after the
/// extend, and a torn append) would leave.
async fn crash(path: &Path, regs: &Arc<Fake>, extended: bool, torn: bool) -> Pending {
    let log = open(path, regs).await.unwrap();
    let st = log.state.lock().await;
    let rec = Record::event(23, HashAlg::Sha256, "d op crashed".into());
    let before = regs.get(23);
    let p = Pending {
        offset: st.len,
        register: 23,
        extend: true,
        expected: HashAlg::Sha256.extend(&before, &rec.digest),
        before,
        record: rec.encode(),
    };
    log.write_wal(&p).unwrap();
    if extended {
        regs.bump(23, &rec.digest);
    }
    if torn {
        st.file.write_all_at(&p.record[..10], p.offset).unwrap();
    }
    p
}

#[tokio::test]
async fn a_crash_before_the_extend_drops_the_entry() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    crash(&path, &regs, false, false).await;
    let log = open(&path, &regs).await.unwrap();
    assert_eq!(records(&path).len(), 1, "INIT only");
    assert!(!log.wal.exists());
    assert_eq!(log.replayed().await[&23], regs.get(23));
}

#[tokio::test]
async fn a_crash_after_the_extend_completes_the_entry() {
    for torn in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("eventlog");
        let regs = Fake::new(HashAlg::Sha256);
        crash(&path, &regs, true, torn).await;
        let log = open(&path, &regs).await.unwrap();
        let recs = records(&path);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].text, "d op crashed");
        assert_eq!(record::replay(&recs).unwrap()[&23], regs.get(23));
        assert!(!log.wal.exists());
    }
}

#[tokio::test]
async fn a_register_moved_by_someone_else_is_refused_with_the_values() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    let p = crash(&path, &regs, false, false).await;
    regs.bump(23, &[9; 32]);
    let e = open(&path, &regs).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().starts_with(&format!(
            "register 23 holds {}: neither its value before the pending entry ({}) nor after it ({})",
            hex::encode(regs.get(23)),
            hex::encode(&p.before),
            hex::encode(&p.expected)
        )),
        "{}",
        e.message()
    );
    // The evidence is kept for inspection.
    assert!(path.with_file_name(".eventlog.wal").exists());
}

#[tokio::test]
async fn an_unreadable_wal_or_a_torn_log_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha256);
    drop(open(&path, &regs).await.unwrap());
    let wal = path.with_file_name(".eventlog.wal");
    std::fs::write(&wal, b"{not json").unwrap();
    let e = open(&path, &regs).await.err().unwrap();
    assert_eq!(
        e.message(),
        format!(
            "the write-ahead record {} is unreadable; the log's last entry is in doubt",
            wal.display()
        )
    );
    std::fs::remove_file(&wal).unwrap();
    // A torn tail without a write-ahead record: not ours to repair silently.
    let mut b = std::fs::read(&path).unwrap();
    b.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&path, &b).unwrap();
    let e = open(&path, &regs).await.err().unwrap();
    assert!(
        e.chain().starts_with(&format!(
            "event log {}: malformed event log record at byte",
            path.display()
        )),
        "{}",
        e.chain()
    );
}

#[tokio::test]
async fn concurrent_entries_are_serialised() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("eventlog");
    let regs = Fake::new(HashAlg::Sha384);
    let layout = Layout::of(
        "tdx",
        &Capabilities {
            runtime_measurement: true,
            register_read: true,
            measurement_hash: Some("sha384".into()),
            register_map: vec![RegisterMapping {
                pcr: 17,
                register: 3,
            }],
            ..Default::default()
        },
    )
    .unwrap()
    .unwrap();
    let log = Arc::new(
        EventLog::open(&path, 17, layout, regs.clone())
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record("d", "op", &format!("entry-{i}"), None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let recs = records(&path);
    assert_eq!(recs.len(), 101);
    // TDX: PCR 17 → RTMR 3, logged as CC MR index 4.
    assert!(recs.iter().all(|r| r.index == 4));
    let mut texts: Vec<_> = recs[1..].iter().map(|r| r.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 100, "every entry once");
    assert_eq!(record::replay(&recs).unwrap()[&4], regs.get(3));
}

#[test]
fn layouts() {
    assert!(Layout::of("sample", &Capabilities::default())
        .unwrap()
        .is_none());
    let e = Layout::of(
        "x",
        &Capabilities {
            runtime_measurement: true,
            register_read: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.message(),
        "the plugin offers runtime measurement but names no hash algorithm"
    );
    let l = tpm_layout();
    assert_eq!(
        (
            l.register(17).unwrap(),
            l.index(17).unwrap(),
            l.register_of_index(17)
        ),
        (17, 17, 17)
    );
    // The bounds: the largest index, and one past it (the plugin refuses PCRs it
    // does not have; the core only refuses what the log cannot name).
    assert_eq!(l.index(u64::from(u32::MAX)).unwrap(), u32::MAX);
    assert_eq!(
        l.index(u64::from(u32::MAX) + 1).unwrap_err().message(),
        "register 4294967296 is out of range"
    );
}

#[test]
fn tdx_maps_pcrs_as_upstream_and_never_overflows() {
    let caps = Capabilities {
        runtime_measurement: true,
        register_read: true,
        measurement_hash: Some("sha384".into()),
        register_map: [(1, 0), (7, 0), (2, 1), (8, 2), (17, 3)]
            .into_iter()
            .map(|(pcr, register)| attester_sdk::RegisterMapping { pcr, register })
            .collect(),
        default_register: Some(3),
        ..Default::default()
    };
    let l = Layout::of("tdx", &caps).unwrap().unwrap();
    assert_eq!(l.register(7).unwrap(), 0);
    assert_eq!(l.register(8).unwrap(), 2);
    // Outside the map: RTMR 3, as upstream maps "anything else".
    assert_eq!(l.register(24).unwrap(), 3);
    assert_eq!(l.register(u64::MAX).unwrap(), 3);
    assert_eq!(l.index(3).unwrap(), 4, "CC MR index");
    // A caller-chosen u64 cannot wrap the CC MR index (it used to: + 1).
    assert_eq!(
        l.index(u64::MAX).unwrap_err().message(),
        format!("register {} is out of range", u64::MAX)
    );
    assert_eq!(
        l.index(u64::from(u32::MAX)).unwrap_err().message(),
        "register 4294967295 is out of range"
    );
    // A mapped TEE without a default refuses PCRs outside its map.
    let strict = Layout::of(
        "x",
        &Capabilities {
            default_register: None,
            ..caps
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        strict.register(24).unwrap_err().message(),
        "PCR 24 has no register here"
    );
}

//! The runtime-measurement event log through attestd's AA API, with the TPM
//! attester on swtpm as the real register. The log is read back by this file's own
//! parser (not the runtime's) and replayed; the result must equal the PCR as
//! `tpm2_pcrread` reads it. Crash safety uses attestd's fault-injection points
//! (feature `fault-injection`, on for this crate only): attestd SIGKILLs itself
//! after the write-ahead record, after the extend, after the append.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use attestd_e2e::swtpm::{tpm_plugin, Swtpm};
use attestd_e2e::{attestd_cli, config, ctx, status, Attestd, Plugin};
use attestd_proto::ttrpc::attestation_agent as t;
use sha2::{Digest as _, Sha256};

const PCR: u64 = 23;

/// One record as TCG_PCR_EVENT2 lays it out, read without the runtime's code.
#[derive(Debug)]
struct Rec {
    index: u32,
    event_type: u32,
    digest: Vec<u8>,
    text: String,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn parse(log: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < log.len() {
        let index = u32_at(log, at);
        let event_type = u32_at(log, at + 4);
        assert_eq!(u32_at(log, at + 8), 1, "one digest");
        assert_eq!(&log[at + 12..at + 14], &[0x0b, 0], "SHA-256");
        let digest = log[at + 14..at + 46].to_vec();
        let size = u32_at(log, at + 46) as usize;
        let event = &log[at + 50..at + 50 + size];
        assert_eq!(u32_at(event, 0), 0x4141_454c, "AAEL tag");
        assert_eq!(u32_at(event, 4) as usize, size - 8);
        assert_eq!(
            Sha256::digest(event).to_vec(),
            digest,
            "digest of the tagged event"
        );
        out.push(Rec {
            index,
            event_type,
            digest,
            text: String::from_utf8(event[8..].to_vec()).unwrap(),
        });
        at += 50 + size;
    }
    out
}

/// INIT sets a register, every EV_EVENT_TAG record extends it.
fn replay(recs: &[Rec], index: u32) -> Vec<u8> {
    let mut value: Option<Vec<u8>> = None;
    for r in recs.iter().filter(|r| r.index == index) {
        match r.event_type {
            3 => {
                let hexv = r.text.strip_prefix("INIT/sha256 ").expect("INIT entry");
                assert!(value.is_none(), "one INIT per register");
                value = Some(hex::decode(hexv).unwrap());
            }
            6 => {
                let v = value.as_ref().expect("INIT first");
                value = Some(Sha256::digest([v.as_slice(), &r.digest].concat()).to_vec());
            }
            other => panic!("event type {other}"),
        }
    }
    value.expect("register in the log")
}

struct Setup {
    tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            tpm: Swtpm::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("run/eventlog")
    }
    fn plugin(&self) -> Plugin {
        tpm_plugin(&self.tpm, &[])
    }
    fn config(&self, d: &Path, pcr: u64) -> String {
        format!(
            "{}\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = {pcr}\npath = {:?}\n",
            config(d, &self.plugin(), &[], ""),
            self.log().display().to_string()
        )
    }
    fn start(&self) -> Attestd {
        Attestd::start(|d| self.config(d, PCR)).unwrap()
    }
    fn records(&self) -> Vec<Rec> {
        parse(&std::fs::read(self.log()).unwrap())
    }
}

fn request(content: &str, register: Option<u64>) -> t::ExtendRuntimeMeasurementRequest {
    t::ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: content.into(),
        RegisterIndex: register,
        ..Default::default()
    }
}

async fn extend(
    a: &Attestd,
    content: &str,
    register: Option<u64>,
) -> Result<t::RuntimeMeasurementResult, ttrpc::Error> {
    a.ttrpc()
        .await
        .extend_runtime_measurement(ctx(), &request(content, register))
        .await
        .map(|r| r.Result.enum_value_or_default())
}

fn pull(n: usize) -> String {
    format!(
        "{{\"digest\":\"sha256:{:064x}\",\"image\":\"registry.example/app:{n}\"}}",
        n
    )
}

#[tokio::test]
async fn entries_replay_to_the_pcr_as_tpm2_pcrread_reads_it() {
    let s = Setup::new();
    let a = s.start();
    let pcr_at_start = s.tpm.pcr(PCR);
    for n in 0..3 {
        assert_eq!(
            extend(&a, &pull(n), None).await.unwrap(),
            t::RuntimeMeasurementResult::OK
        );
    }
    // Another register gets its own INIT entry.
    assert_eq!(
        extend(&a, &pull(9), Some(16)).await.unwrap(),
        t::RuntimeMeasurementResult::OK
    );

    let recs = s.records();
    // INIT for PCR 23, the plugin's identity, three pulls, INIT for 16, one pull.
    assert_eq!(recs.len(), 7, "{recs:#?}");
    assert_eq!((recs[0].index, recs[0].event_type), (23, 3));
    assert!(recs[0].text.starts_with("INIT/sha256 "));
    let identity = &recs[1].text;
    let sha = hex::encode(Sha256::digest(
        std::fs::read(attestd_e2e::attester_bin("tpm", "attester-tpm")).unwrap(),
    ));
    assert!(
        identity.starts_with("github.com/confidential-containers/attestd LoadAttester {\"args\":"),
        "{identity}"
    );
    let content: serde_json::Value =
        serde_json::from_str(identity.splitn(3, ' ').nth(2).unwrap()).unwrap();
    assert_eq!(content["sha256"], sha.as_str());
    // What it was started with: its arguments are part of its identity.
    assert_eq!(content["args"], serde_json::json!(s.plugin().args));
    assert_eq!(content["tee"], "tpm");
    assert_eq!(content["launch"], "process");
    assert_eq!(
        recs[2].text,
        format!("github.com/confidential-containers PullImage {}", pull(0))
    );
    assert_eq!((recs[5].index, recs[5].event_type), (16, 3));

    assert_eq!(replay(&recs, 23), s.tpm.pcr(PCR));
    assert_eq!(replay(&recs, 16), s.tpm.pcr(16));
    assert_ne!(s.tpm.pcr(PCR), pcr_at_start);

    // The operator command agrees, reading the registers through the plugin.
    let cfg = a.dir.path().join("attestd.toml");
    let (status, out, err) = attestd_cli(&["eventlog", "-c", cfg.to_str().unwrap()]);
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("LoadAttester"), "{out}");
    assert_eq!(out.matches("matches the plugin").count(), 2, "{out}");
    let (_, json, _) = attestd_cli(&["eventlog", "-c", cfg.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 7);
    assert_eq!(v["registers"][1]["index"], 23);
    assert_eq!(v["registers"][1]["matches"], true);
    // Asked to check and unable to (its plugin does not start): not a success;
    // --no-check is the way to only print.
    let broken = a.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[plugins]\nprimary = \"x\"\n[plugins.attester.x]\nlaunch = \"process\"\ncommand = \"/nonexistent/attester\"\ntransport = \"ttrpc\"\n",
    )
    .unwrap();
    let log = s.log();
    let (status, out, err) = attestd_cli(&[
        "eventlog",
        "-c",
        broken.to_str().unwrap(),
        "--path",
        log.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(err.contains("could not be checked against the plugin's registers: cannot start plugin x: plugin command /nonexistent/attester does not exist"), "{err}");
    let (status, _, err) = attestd_cli(&[
        "eventlog",
        "-c",
        broken.to_str().unwrap(),
        "--path",
        log.to_str().unwrap(),
        "--no-check",
    ]);
    assert!(status.success(), "{err}");
}

#[tokio::test]
async fn concurrent_extends_keep_the_log_consistent() {
    let s = Setup::new();
    let a = s.start();
    let client = a.ttrpc().await;
    let calls: Vec<_> = (0..100)
        .map(|n| {
            let c = client.clone();
            tokio::spawn(async move {
                c.extend_runtime_measurement(ctx(), &request(&pull(n), None))
                    .await
                    .map(|r| r.Result.enum_value_or_default())
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), t::RuntimeMeasurementResult::OK);
    }
    let recs = s.records();
    assert_eq!(recs.len(), 102);
    let mut texts: Vec<_> = recs[2..].iter().map(|r| r.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 100, "each entry exactly once");
    assert_eq!(replay(&recs, 23), s.tpm.pcr(PCR));
}

#[tokio::test]
async fn a_crash_at_each_step_replays_after_restart() {
    // (fault point, is the entry in the log after the restart?)
    let points = [
        ("eventlog-after-wal", false),
        ("eventlog-after-extend", true),
        ("eventlog-after-append", true),
    ];
    for (point, kept) in points {
        let s = Setup::new();
        // The first pass is the plugin's identity entry at start; the second is ours.
        let fault = format!("{point}#2");
        let mut a =
            Attestd::start_env(|d| s.config(d, PCR), &[], &[("ATTESTD_FAULT", &fault)]).unwrap();
        let e = extend(&a, &pull(1), None).await.unwrap_err();
        assert!(
            matches!(
                e,
                ttrpc::Error::Socket(_) | ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed
            ),
            "{point}: {e:?}"
        );
        let status = a.wait_exit();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{point}: killed at the fault point"
        );
        drop(a);

        let a = s.start();
        let recs = s.records();
        let pulls = recs.iter().filter(|r| r.text.ends_with(&pull(1))).count();
        assert_eq!(pulls, usize::from(kept), "{point}: {recs:#?}");
        assert_eq!(replay(&recs, 23), s.tpm.pcr(PCR), "{point}");
        assert!(!s.log().with_file_name(".eventlog.wal").exists(), "{point}");
        // The restarted plugin is measured again, and the log keeps working.
        assert_eq!(
            recs.iter()
                .filter(|r| r.text.contains(" LoadAttester "))
                .count(),
            2,
            "{point}"
        );
        assert_eq!(
            extend(&a, &pull(2), None).await.unwrap(),
            t::RuntimeMeasurementResult::OK
        );
        assert_eq!(replay(&s.records(), 23), s.tpm.pcr(PCR), "{point}");
    }
}

#[test]
fn a_crash_while_recording_the_identity_replays_after_restart() {
    for point in [
        "eventlog-after-wal",
        "eventlog-after-extend",
        "eventlog-after-append",
    ] {
        let s = Setup::new();
        let e = Attestd::start_env(|d| s.config(d, PCR), &[], &[("ATTESTD_FAULT", point)])
            .err()
            .unwrap();
        assert_eq!(
            e.status
                .and_then(|st| std::os::unix::process::ExitStatusExt::signal(&st)),
            Some(9),
            "{point}"
        );
        let _a = s.start();
        let recs = s.records();
        let identities = recs
            .iter()
            .filter(|r| r.text.contains(" LoadAttester "))
            .count();
        // Completed (after the extend) or dropped (before it), then the new start's own.
        let want = if point == "eventlog-after-wal" { 1 } else { 2 };
        assert_eq!(identities, want, "{point}: {recs:#?}");
        assert_eq!(replay(&recs, 23), s.tpm.pcr(PCR), "{point}");
    }
}

#[tokio::test]
async fn bad_entries_are_invalid_argument_on_both_transports() {
    let s = Setup::new();
    let a = s.start();
    let bad = [
        (
            "github.com/x y",
            "PullImage",
            "{}",
            "domain contains whitespace (' ')",
        ),
        (
            "d",
            "Pull Image",
            "{}",
            "operation contains whitespace (' ')",
        ),
        (
            "d",
            "op",
            "line\nbreak",
            "content contains a line break ('\\n')",
        ),
    ];
    for (domain, operation, content, msg) in bad {
        let req = t::ExtendRuntimeMeasurementRequest {
            Domain: domain.into(),
            Operation: operation.into(),
            Content: content.into(),
            ..Default::default()
        };
        let e = a
            .ttrpc()
            .await
            .extend_runtime_measurement(ctx(), &req)
            .await
            .unwrap_err();
        assert_eq!(status(e), (ttrpc::Code::INVALID_ARGUMENT, msg.to_string()));
        let greq = attestd_proto::grpc::attestation_agent::ExtendRuntimeMeasurementRequest {
            domain: domain.into(),
            operation: operation.into(),
            content: content.into(),
            register_index: None,
        };
        let st = a
            .grpc()
            .await
            .extend_runtime_measurement(greq)
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert_eq!(st.message(), msg);
    }
    // INIT and the identity only: nothing bad got in.
    assert_eq!(s.records().len(), 2);
}

#[tokio::test]
async fn disabled_is_not_enabled_and_a_plugin_without_registers_is_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("eventlog");
    let sample = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| config(d, &sample, &[], "")).unwrap();
    assert_eq!(
        extend(&a, "{}", None).await.unwrap(),
        t::RuntimeMeasurementResult::NOT_ENABLED
    );
    drop(a);
    let a = Attestd::start(|d| {
        format!(
            "{}\n[eventlog_config]\nenable_eventlog = true\npath = {:?}\n",
            config(d, &sample, &[], ""),
            log.display().to_string()
        )
    })
    .unwrap();
    assert_eq!(
        extend(&a, "{}", None).await.unwrap(),
        t::RuntimeMeasurementResult::NOT_SUPPORTED
    );
    assert!(
        !log.exists(),
        "no log is kept for a plugin that cannot extend"
    );
    assert!(
        a.log().contains("cannot extend and read registers"),
        "{}",
        a.log()
    );
}

#[test]
fn an_algorithm_the_plugin_does_not_use_is_refused() {
    let s = Setup::new();
    let e = Attestd::start(|d| format!("{}eventlog_algorithm = \"sha384\"\n", s.config(d, PCR)))
        .err()
        .unwrap();
    assert!(
        e.stderr.contains("[eventlog_config] eventlog_algorithm = \"sha384\", but plugin tpm measures with sha256"),
        "{}",
        e.stderr
    );
}

#[test]
fn a_start_that_cannot_extend_pcr_17_says_to_use_23_and_leaves_no_init_record() {
    // Upstream's default init_pcr is 17; a TPM refuses extends of PCRs 17-22 at
    // locality 0, which is all a guest has.
    let s = Setup::new();
    let e = Attestd::start(|d| s.config(d, 17)).err().unwrap();
    // The identity entry is the first extend: it finds out.
    assert!(
        e.stderr
            .contains("cannot record plugin tpm's identity in the event log: plugin tpm: "),
        "{}",
        e.stderr
    );
    assert!(
        e.stderr.contains(
            "TPM2_PCR_Extend of PCR 17 failed: PCR 17 takes extends only from a locality \
             this guest does not have (PCRs 17-22 need locality 1 and up): measure into \
             PCR 23 ([eventlog_config] init_pcr = 23): bad locality"
        ),
        "{}",
        e.stderr
    );
    // Said once, not "bad locality: bad locality".
    assert!(
        !e.stderr.contains("bad locality: bad locality"),
        "{}",
        e.stderr
    );
    assert!(s.records().is_empty(), "{:#?}", s.records());
    // Started again with PCR 23: one INIT, for 23 only.
    let a = Attestd::start(|d| s.config(d, 23)).unwrap();
    let inits: Vec<u32> = s
        .records()
        .iter()
        .filter(|r| r.event_type == 3)
        .map(|r| r.index)
        .collect();
    assert_eq!(inits, [23]);
    drop(a);
}

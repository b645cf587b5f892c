//! `attestd reload` (SIGHUP): a plugin whose configuration changed is replaced
//! while clients call, and none of their calls fails; a replacement that cannot
//! start leaves the running instance serving and says why; the event log records
//! the new instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attestd_e2e::{alive, attestd_cli, config, signal, Attestd, Plugin};
use attestd_proto::ttrpc::attestation_agent as t;
use nix::sys::signal::Signal;

/// Clients calling at once through the swaps.
const CLIENTS: usize = 16;
/// Swaps in a row.
const SWAPS: usize = 10;

/// The test plugin answering `{"label": label, "pid": …}`, each call taking 20 ms
/// (so calls are in flight at every swap), 300 ms to start serving.
fn plugin(label: &str, extra: &[&str]) -> Plugin {
    let mut args = vec![
        "--label",
        label,
        "--evidence-delay-ms",
        "20",
        "--start-delay-ms",
        "300",
    ];
    args.extend_from_slice(extra);
    Plugin::test("ttrpc", &args)
}

fn write_config(a: &Attestd, p: &Plugin, extra: &str) {
    std::fs::write(
        a.dir.path().join("attestd.toml"),
        config(a.dir.path(), p, &[], extra),
    )
    .unwrap();
}

/// Which instance answers: its label and pid.
async fn answer(a: &Attestd) -> (String, u32) {
    let v: serde_json::Value = serde_json::from_slice(&a.evidence(b"who").await.unwrap()).unwrap();
    (
        v["label"].as_str().unwrap().to_string(),
        v["pid"].as_u64().unwrap() as u32,
    )
}

/// Wait until the log holds `needle` `n` times.
fn wait_log(a: &Attestd, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} ×{n} not in the log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_swaps_under_sixteen_clients_fail_no_call() {
    // Calls wait at most 100 ms for a plugin that is down: replacing the old
    // instance only once the new one serves is what keeps them from failing
    // (stop-then-start would leave them 300 ms without one).
    const WAIT: &str = "restart_wait_ms = 100";
    let a = Attestd::start(|d| config(d, &plugin("gen0", &[]), &[], WAIT)).unwrap();
    let (label, first) = answer(&a).await;
    assert_eq!(label, "gen0");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = a.ttrpc().await;
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let req = t::GetEvidenceRequest {
                RuntimeData: b"under load".to_vec(),
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let ctx = ttrpc::context::with_timeout(30_000_000_000);
                match c.get_evidence(ctx, &req).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        }));
    }
    let mut pids = vec![first];
    for i in 1..=SWAPS {
        let label = format!("gen{i}");
        write_config(&a, &plugin(&label, &[]), WAIT);
        signal(a.pid(), Signal::SIGHUP);
        wait_log(&a, "reload: replaced", i);
        let (now, pid) = answer(&a).await;
        assert_eq!(now, label, "after reload {i}");
        assert!(!pids.contains(&pid), "reload {i} kept pid {pid}");
        pids.push(pid);
    }
    // Calls keep going a little after the last swap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let done = ok.load(Ordering::Relaxed);
    assert!(done >= (CLIENTS * SWAPS) as u64, "only {done} calls");
    // Each replaced instance was stopped once its calls were done; the last serves.
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids[..SWAPS].iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "replaced instances still run: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(pids[SWAPS]));
    eprintln!("{done} calls by {CLIENTS} clients through {SWAPS} swaps, none failed");
}

#[tokio::test]
async fn a_replacement_that_cannot_start_leaves_the_running_one_serving() {
    let a = Attestd::start(|d| config(d, &plugin("gen0", &[]), &[], "")).unwrap();
    let (_, pid) = answer(&a).await;
    let cfg = a.dir.path().join("attestd.toml").display().to_string();
    // Another TEE than the running instance's: refused at its handshake. Asked
    // through the CLI, which finds attestd by its socket directory.
    write_config(&a, &plugin("tdx", &["--tee", "tdx"]), "");
    let (st, out, err) = attestd_cli(&["reload", "-c", &cfg]);
    assert!(st.success(), "{err}");
    assert!(
        out.contains(&format!("asked attestd (pid {})", a.pid())),
        "{out}"
    );
    wait_log(&a, "reload: kept the running instance", 1);
    assert!(
        a.log()
            .contains("it reports TEE \"tdx\" after a restart, \"sample\" before"),
        "{}",
        a.log()
    );
    assert_eq!(answer(&a).await, ("gen0".to_string(), pid));
    // A command that does not exist: the same.
    std::fs::write(
        a.dir.path().join("attestd.toml"),
        config(a.dir.path(), &plugin("gen0", &[]), &[], "").replace(
            &attestd_e2e::bin("attester-test").display().to_string(),
            "/nonexistent/attester",
        ),
    )
    .unwrap();
    signal(a.pid(), Signal::SIGHUP);
    wait_log(&a, "reload: kept the running instance", 2);
    assert!(a.log().contains("/nonexistent/attester"), "{}", a.log());
    assert_eq!(answer(&a).await, ("gen0".to_string(), pid));
    // A configuration that does not read changes nothing.
    std::fs::write(a.dir.path().join("attestd.toml"), "[plugins\n").unwrap();
    signal(a.pid(), Signal::SIGHUP);
    wait_log(
        &a,
        "reload: the configuration does not read, nothing changes",
        1,
    );
    assert_eq!(answer(&a).await, ("gen0".to_string(), pid));
    // The same configuration again: nothing to replace.
    write_config(&a, &plugin("gen0", &[]), "");
    signal(a.pid(), Signal::SIGHUP);
    wait_log(&a, "reload: unchanged", 1);
    assert_eq!(answer(&a).await, ("gen0".to_string(), pid));
    // No attestd on a socket directory: the CLI says so.
    let d = tempfile::tempdir().unwrap();
    let other = d.path().join("attestd.toml");
    std::fs::write(&other, config(d.path(), &plugin("x", &[]), &[], "")).unwrap();
    let (st, _, err) = attestd_cli(&["reload", "-c", other.to_str().unwrap()]);
    assert!(!st.success());
    assert!(
        err.contains("no attestd runs with socket directory"),
        "{err}"
    );
}

#[tokio::test]
async fn the_event_log_records_the_replacement() {
    let extra = |d: &Path| {
        format!(
            "[eventlog_config]\nenable_eventlog = true\ninit_pcr = 17\npath = {:?}\n",
            d.join("eventlog").display().to_string()
        )
    };
    let a =
        Attestd::start(|d| config(d, &plugin("gen0", &["--registers"]), &[], &extra(d))).unwrap();
    answer(&a).await;
    let log = a.dir.path().join("eventlog");
    let count = || {
        let bytes = std::fs::read(&log).unwrap();
        bytes.windows(12).filter(|w| w == b"LoadAttester").count()
    };
    assert_eq!(count(), 1);
    write_config(&a, &plugin("gen1", &["--registers"]), &extra(a.dir.path()));
    signal(a.pid(), Signal::SIGHUP);
    wait_log(&a, "reload: replaced", 1);
    // Recorded before the new instance serves anything.
    assert_eq!(answer(&a).await.0, "gen1");
    assert_eq!(count(), 2);
}

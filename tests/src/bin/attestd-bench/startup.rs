//! `--only startup`: where the time from spawning attestd to its first
//! GetEvidence answered goes, phase by phase, read from attestd's own trace
//! events (and the plugin's, which attestd relays with the plugin's timestamp);
//! and the same total at `warn`, as attestd runs in a pod VM. `--compare PATH`
//! (repeatable) runs other attestd binaries in the same rounds, interleaved, for
//! a before and after on one machine (another build profile, the build before a
//! change), and then a table of size, start, call latency and memory per binary.
//! `--peer-start PATH` adds another AA binary started as upstream's is
//! (`PATH --attestation_sock unix:///…`, `RUST_LOG=warn`): upstream's
//! attestation-agent with its built-in sample attester, say. `--plugin PATH`
//! is the plugin attestd starts (the image's static build, to measure what ships).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use attestd_proto::ttrpc::attestation_agent as t;
use attestd_proto::ttrpc::attestation_agent_ttrpc::AttestationAgentServiceClient;

/// The log filter that shows the phases' events (and the plugin's relayed
/// "serving" line) and nothing at debug.
const PHASE_LOG: &str = "info,attestd::startup=trace";

/// The phases, each ending at the first log line containing its marker.
const PHASES: [(&str, &str); 6] = [
    (
        "exec, runtime, logging, configuration",
        "start-up: configuration read",
    ),
    ("plugin process spawned", "start-up: plugin launched"),
    (
        "plugin exec to its socket bound (plugin's clock)",
        "serving over ttrpc",
    ),
    (
        "socket bound to attestd connected",
        "start-up: plugin connected",
    ),
    ("handshake", "plugin ready"),
    ("AA API listeners bound", "attestd ready"),
];

/// What one start took: the phases' end offsets (the traced runs only), the AA socket
/// accepting, the first evidence answered.
struct Start {
    marks: Vec<Option<Duration>>,
    accepting: Duration,
    first_evidence: Duration,
}

/// The plugin attestd starts: `--plugin PATH` (the shipped static build, say),
/// else the workspace's attester-sample.
static PLUGIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn config(d: &Path) -> String {
    format!(
        "[plugins]\nprimary = \"sample\"\nsocket_dir = {:?}\n[plugins.attester.sample]\nlaunch = \"process\"\ntransport = \"ttrpc\"\ncommand = {:?}\n",
        d.join("plugins").display().to_string(),
        PLUGIN
            .get_or_init(|| attestd_e2e::bin("attester-sample"))
            .display()
            .to_string()
    )
}

/// Seconds into the UTC day of a log line's leading RFC 3339 timestamp, or of
/// the plugin's own timestamp after `line=`.
fn day_secs(ts: &str) -> Option<f64> {
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut hms = time.split(':');
    let h: f64 = hms.next()?.parse().ok()?;
    let m: f64 = hms.next()?.parse().ok()?;
    let s: f64 = hms.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn marks(log: &str, t0_day: f64) -> Vec<Option<Duration>> {
    PHASES
        .iter()
        .map(|(_, marker)| {
            let line = log.lines().find(|l| l.contains(marker))?;
            // A relayed plugin line carries the plugin's time after `line=`.
            let ts = match line.split_once("line=") {
                Some((_, inner)) if inner.contains(marker) => inner,
                _ => line,
            };
            let at = day_secs(ts.split_whitespace().next()?)?;
            // Across midnight the day wraps.
            let d = (at - t0_day).rem_euclid(86_400.0);
            Some(Duration::from_secs_f64(d))
        })
        .collect()
}

/// A binary to start: attestd (with the sample plugin), or another AA started
/// as upstream's is.
pub struct Bin {
    pub name: String,
    pub path: PathBuf,
    pub upstream: bool,
}

/// A started attestd: its child, the directory its sockets live in, the AA socket.
struct Started {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
    log: PathBuf,
    t0: Instant,
    t0_day: f64,
}

fn spawn(bin: &Bin, level: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("attestd.toml"), config(d)).unwrap();
    let sock = d.join("aa.sock");
    let log = d.join("attestd.log");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let t0_day = (now.as_secs() % 86_400) as f64 + f64::from(now.subsec_nanos()) / 1e9;
    let t0 = Instant::now();
    let mut cmd = Command::new(&bin.path);
    if bin.upstream {
        cmd.arg("--attestation_sock")
            .arg(format!("unix://{}", sock.display()))
            .env("RUST_LOG", "warn");
    } else {
        cmd.arg("-c")
            .arg(d.join("attestd.toml"))
            .arg("--attestation_sock")
            .arg(format!("unix://{}", sock.display()))
            .args(["--grpc_sock", "none"])
            .env("ATTESTD_CONFIG_DIR", attestd_e2e::NO_SYSTEM_CONFIG)
            .env("ATTESTD_LOG", level);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Started {
        child,
        _dir: dir,
        sock,
        log,
        t0,
        t0_day,
    }
}

impl Started {
    /// Until its AA socket accepts, in a tight loop (the figure is what the AA
    /// takes, not this loop's pause): how long after the spawn.
    fn accepting(&self) -> Duration {
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            assert!(
                self.t0.elapsed() < Duration::from_secs(20),
                "{} did not start: {}",
                self.child.id(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        self.t0.elapsed()
    }

    /// SIGTERM, and wait for it to exit; its log.
    fn stop(mut self) -> String {
        attestd_e2e::signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn client(sock: &Path) -> AttestationAgentServiceClient {
    let c = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .unwrap();
    AttestationAgentServiceClient::new(c)
}

async fn evidence(aa: &AttestationAgentServiceClient) {
    let req = t::GetEvidenceRequest {
        RuntimeData: vec![0x5a; 64],
        ..Default::default()
    };
    aa.get_evidence(ttrpc::context::with_timeout(0), &req)
        .await
        .unwrap();
}

async fn start_once(attestd: &Bin, level: &str) -> Start {
    let s = spawn(attestd, level);
    let accepting = s.accepting();
    evidence(&client(&s.sock).await).await;
    let first_evidence = s.t0.elapsed();
    let t0_day = s.t0_day;
    let text = s.stop();
    Start {
        marks: if level == PHASE_LOG {
            marks(&text, t0_day)
        } else {
            Vec::new()
        },
        accepting,
        first_evidence,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// A process's resident set, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The resident sets of `pid`'s children (attestd's plugin), in kB.
fn children_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(rss_kb)
        .sum()
}

/// One AA serving: its RSS and its children's after 1,000 GetEvidence calls,
/// then the p50 of `calls` more, one after another.
async fn steady(attestd: &Bin, calls: usize) -> (u64, u64, Duration) {
    let s = spawn(attestd, "warn");
    s.accepting();
    let aa = client(&s.sock).await;
    for _ in 0..1000 {
        evidence(&aa).await;
    }
    let own = rss_kb(s.child.id());
    let plugin = children_rss_kb(s.child.id());
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        evidence(&aa).await;
        lat.push(t.elapsed());
    }
    s.stop();
    (own, plugin, median(lat))
}

/// Drop `path`'s pages from the page cache.
fn evict(path: &std::path::Path) -> std::io::Result<()> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let f = std::fs::File::open(path)?;
    // Dirty pages (a file just written) are not dropped.
    f.sync_data()?;
    posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(std::io::Error::from)
}

pub async fn startup_table(
    starts: usize,
    compare: Vec<PathBuf>,
    peer: Option<PathBuf>,
    plugin: Option<PathBuf>,
) {
    if let Some(p) = plugin {
        let _ = PLUGIN.set(p);
    }
    let attestd = |name: String, path: PathBuf| Bin {
        name,
        path,
        upstream: false,
    };
    let mut binaries = vec![attestd("this build".into(), attestd_e2e::bin("attestd"))];
    for b in compare {
        binaries.push(attestd(b.display().to_string(), b));
    }
    if let Some(p) = peer {
        binaries.push(Bin {
            name: format!("{} (peer, one process)", p.display()),
            path: p,
            upstream: true,
        });
    }
    // Every binary out of the page cache first, so that its first start faults
    // it in from disk, as a booting pod VM does. A binary's resident memory is
    // mostly its file pages, and a fault maps the cached pages around it
    // (fault-around, whole large folios), so it depends on how the cache was
    // filled: the same file measured 5.71 MB faulted in, 6.11 MB just written by
    // `cp`, 6.43 MB read whole (docs/benchmarks.md, "One binary or two").
    for path in binaries
        .iter()
        .map(|b| b.path.clone())
        .chain(PLUGIN.get().cloned())
    {
        if let Err(e) = evict(&path) {
            eprintln!(
                "warning: cannot drop {} from the page cache: {e}",
                path.display()
            );
        }
    }
    for b in &binaries {
        start_once(b, "warn").await;
    }
    let mut runs: Vec<(Vec<Start>, Vec<Start>)> =
        binaries.iter().map(|_| (Vec::new(), Vec::new())).collect();
    // Interleaved: each round starts every binary at both levels.
    for _ in 0..starts {
        for (i, b) in binaries.iter().enumerate() {
            runs[i].0.push(start_once(b, PHASE_LOG).await);
            runs[i].1.push(start_once(b, "warn").await);
        }
    }
    let mut summary = Vec::new();
    for (Bin { name, .. }, (traced, warn)) in binaries.iter().zip(runs) {
        println!("attestd start-up, {name}: {starts} starts, medians in ms, sample plugin (process, ttrpc)\n");
        println!("| phase (from the log) | ends at | takes |");
        println!("| --- | --- | --- |");
        let mut prev = Duration::ZERO;
        for (i, (phase, _)) in PHASES.iter().enumerate() {
            let ends: Vec<Duration> = traced.iter().filter_map(|s| s.marks[i]).collect();
            if ends.is_empty() {
                println!("| {phase} | (not logged) | |");
                continue;
            }
            let at = median(ends);
            println!("| {phase} | {} | {} |", ms(at), ms(at.saturating_sub(prev)));
            prev = at;
        }
        let acc = median(traced.iter().map(|s| s.accepting).collect());
        let first = median(traced.iter().map(|s| s.first_evidence).collect());
        println!(
            "| AA socket accepting (seen by the client) | {} | {} |",
            ms(acc),
            ms(acc.saturating_sub(prev))
        );
        println!(
            "| first GetEvidence answered | {} | {} |",
            ms(first),
            ms(first.saturating_sub(acc))
        );
        let wa = median(warn.iter().map(|s| s.accepting).collect());
        let wf = median(warn.iter().map(|s| s.first_evidence).collect());
        let wmin = warn.iter().map(|s| s.first_evidence).min().unwrap();
        let wmax = warn.iter().map(|s| s.first_evidence).max().unwrap();
        println!(
            "\nAt warn (as deployed): accepting {} ms, first evidence {} ms (min {}, max {})\n",
            ms(wa),
            ms(wf),
            ms(wmin),
            ms(wmax)
        );
        summary.push(wf);
    }
    // Steady state, interleaved too: three rounds, medians.
    let mut steady_runs: Vec<Vec<(u64, u64, Duration)>> =
        binaries.iter().map(|_| Vec::new()).collect();
    for _ in 0..3 {
        for (i, b) in binaries.iter().enumerate() {
            steady_runs[i].push(steady(b, 5000).await);
        }
    }
    println!(
        "\nplugin: {}\n",
        PLUGIN
            .get_or_init(|| attestd_e2e::bin("attester-sample"))
            .display()
    );
    println!("| AA | size MB | start to first evidence p50 ms | GetEvidence p50 µs | RSS after 1000 calls MB | its plugin's RSS MB |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((Bin { name, path, .. }, first), runs) in binaries.iter().zip(summary).zip(steady_runs) {
        let size = std::fs::metadata(path).unwrap().len() as f64 / 1e6;
        let mid = |mut v: Vec<u64>| {
            v.sort();
            v[v.len() / 2] as f64 * 1024.0 / 1e6
        };
        let p50 = median(runs.iter().map(|r| r.2).collect());
        println!(
            "| {name} | {size:.2} | {} | {:.1} | {:.2} | {:.2} |",
            ms(first),
            p50.as_secs_f64() * 1e6,
            mid(runs.iter().map(|r| r.0).collect()),
            mid(runs.iter().map(|r| r.1).collect()),
        );
    }
}

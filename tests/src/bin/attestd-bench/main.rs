//! GetEvidence latency and throughput with 64 bytes of runtime data:
//! (a) straight to the sample plugin (the client the core uses), (b) through
//! attestd's AA API, for ttrpc and gRPC, sequential and with 16 concurrent clients.
//!
//! Build and run: `cargo build --release --workspace --bins && target/release/attestd-bench`.
//! Prints a Markdown table (the one in docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a failed setup should stop it loudly

mod pool;
mod startup;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestd_e2e::{config, spawn_plugin, Attestd, Plugin};
use attestd_proto::grpc::attestation_agent as g;
use attestd_proto::ttrpc::attestation_agent as t;
use attester_sdk::{RemoteAttester, Transport};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Sequential calls per scenario.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Calls per client in the concurrent runs.
    #[arg(long, default_value_t = 5_000)]
    calls_per_client: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Which tables: rpc (call latency), launch (cold start and steady state per
    /// launch backend; needs the sample image from containers/build.sh), keys (key
    /// release against the test KBS), chaos (calls under plugin kills and hostile
    /// clients; not part of "all"), webhook (admission reviews over HTTPS; not part
    /// of "all"), webhook-memory (the webhook's peak RSS on hostile reviews at its
    /// body bound, alone and 16 at once; not part of "all"), additional (GetAdditionalEvidence over devices that each take
    /// 50 ms; not part of "all"), startup (where the time to the first evidence
    /// goes; not part of "all"), pool (concurrent calls to the plugin over one
    /// connection or a pool of them; not part of "all"), or all.
    #[arg(long, default_value = "all")]
    only: String,
    /// Starts per backend in the launch table.
    #[arg(long, default_value_t = 10)]
    starts: usize,
    /// Another AA-API server (ttrpc, `unix:///path`: upstream's attestation-agent,
    /// say) measured in the same run as attestd, for ratios on one machine;
    /// repeatable (another attestd build, started by hand, beside upstream's).
    #[arg(long)]
    peer: Vec<String>,
    /// `--only startup`: other attestd binaries started in the same rounds (the
    /// build before a change, another build profile); `--only webhook-memory`:
    /// other attestd-webhook binaries, measured beside this one; repeatable.
    #[arg(long)]
    compare: Vec<PathBuf>,
    /// `--only startup`: another AA binary, started as upstream's attestation-agent
    /// is (`--attestation_sock unix:///…`), in the same rounds.
    #[arg(long)]
    peer_start: Option<PathBuf>,
    /// `--only startup`: the plugin attestd starts (default: the workspace's
    /// attester-sample; the image's static build to measure what ships).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// `--only pool`: rounds, each measuring every pool size once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of the chaos run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// One way of asking for evidence.
#[derive(Clone)]
enum Target {
    Direct(Arc<RemoteAttester>),
    AaTtrpc(attestd_proto::ttrpc::attestation_agent_ttrpc::AttestationAgentServiceClient),
    AaGrpc(
        g::attestation_agent_service_client::AttestationAgentServiceClient<
            tonic::transport::Channel,
        >,
    ),
}

impl Target {
    async fn call(&mut self, rd: &[u8]) {
        let n = match self {
            Target::Direct(c) => c.evidence(rd.to_vec()).await.unwrap().bytes.len(),
            Target::AaTtrpc(c) => {
                let req = t::GetEvidenceRequest {
                    RuntimeData: rd.to_vec(),
                    ..Default::default()
                };
                c.get_evidence(ttrpc::context::with_timeout(0), &req)
                    .await
                    .unwrap()
                    .Evidence
                    .len()
            }
            Target::AaGrpc(c) => {
                let req = g::GetEvidenceRequest {
                    runtime_data: rd.to_vec(),
                };
                c.get_evidence(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .evidence
                    .len()
            }
        };
        assert_eq!(n, 116, "unexpected evidence size");
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn figures(mut lat: Vec<Duration>, wall: Duration) -> Figures {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Figures {
        p50: at(0.50),
        p99: at(0.99),
        per_sec: lat.len() as f64 / wall.as_secs_f64(),
    }
}

async fn sequential(mut target: Target, calls: usize) -> Figures {
    let rd = [0x5a; 64];
    for _ in 0..calls / 10 {
        target.call(&rd).await;
    }
    let mut lat = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t0 = Instant::now();
        target.call(&rd).await;
        lat.push(t0.elapsed());
    }
    figures(lat, start.elapsed())
}

async fn concurrent(targets: Vec<Target>, per_client: usize) -> Figures {
    let rd = [0x5a; 64];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut target in targets {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t0 = Instant::now();
                target.call(&rd).await;
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    figures(all, start.elapsed())
}

async fn direct_client(sock: &Path, transport: Transport) -> RemoteAttester {
    for _ in 0..2000 {
        if let Ok(c) = RemoteAttester::connect(sock, transport).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("plugin did not listen on {}", sock.display());
}

async fn target(kind: &str, transport: Transport, a: Option<&Attestd>, sock: &Path) -> Target {
    match (kind, transport) {
        ("direct", _) => Target::Direct(Arc::new(direct_client(sock, transport).await)),
        (_, Transport::Ttrpc) => Target::AaTtrpc(a.unwrap().ttrpc().await),
        (_, Transport::Grpc) => Target::AaGrpc(a.unwrap().grpc().await),
    }
}

/// The machine's floor: a 128-byte blocking ping-pong over a Unix socket between two
/// threads, no RPC framework at all. Every figure above includes one such round trip
/// per hop, so read them against this.
fn floor(calls: usize) -> Figures {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        while b.read_exact(&mut buf).is_ok() {
            b.write_all(&buf).unwrap();
        }
    });
    let mut buf = [0u8; 128];
    let mut lat = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t0 = Instant::now();
        a.write_all(&buf).unwrap();
        a.read_exact(&mut buf).unwrap();
        lat.push(t0.elapsed());
    }
    let f = figures(lat, start.elapsed());
    drop(a);
    echo.join().unwrap();
    f
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// A config whose primary `sample` is started by `launch`.
fn launch_config(d: &Path, launch: &str, image: &str) -> String {
    let table = match launch {
        "process" => format!(
            "launch = \"process\"\ncommand = {:?}\n",
            attestd_e2e::bin("attester-sample").display().to_string()
        ),
        _ => format!("launch = {launch:?}\nimage = {image:?}\n"),
    };
    format!(
        "[plugins]\n# crun cannot run here; podman picks it when unset.\npodman_runtime = \"runc\"\nprimary = \"sample\"\nsocket_dir = {:?}\noci_dir = {:?}\n[plugins.attester.sample]\ntransport = \"ttrpc\"\n{table}",
        d.join("plugins").display().to_string(),
        // Shared across starts: the unpacked image is cached, as on a real node.
        std::env::temp_dir().join("attestd-bench-oci").display().to_string(),
    )
}

/// Cold start (spawning `attestd run` to the first GetEvidence answered) and the
/// steady-state GetEvidence p50 through attestd, per launch backend.
async fn launch_table(args: &Args) {
    let (name, digest) = attestd_e2e::locked_image("sample");
    let image = format!("{name}@{digest}");
    println!("| launch | first start ms | cold start p50 ms | cold start max ms | steady GetEvidence p50 µs | p99 µs |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for launch in ["process", "podman", "oci"] {
        let mut starts = Vec::new();
        let mut steady = None;
        for i in 0..=args.starts {
            let t0 = Instant::now();
            let a = Attestd::start(|d| launch_config(d, launch, &image)).unwrap();
            a.evidence(&[0x5a; 64]).await.unwrap();
            starts.push(t0.elapsed());
            if i == args.starts {
                let c = a.ttrpc().await;
                let rd = [0x5a; 64];
                let mut lat = Vec::new();
                let t = Instant::now();
                for _ in 0..args.calls / 10 {
                    let req = t::GetEvidenceRequest {
                        RuntimeData: rd.to_vec(),
                        ..Default::default()
                    };
                    let t0 = Instant::now();
                    c.get_evidence(ttrpc::context::with_timeout(0), &req)
                        .await
                        .unwrap();
                    lat.push(t0.elapsed());
                }
                steady = Some(figures(lat, t.elapsed()));
            }
            a.stop();
        }
        let first = starts.remove(0);
        let f = figures(starts, Duration::from_secs(1));
        let max = f.p99;
        let s = steady.unwrap();
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        println!(
            "| {launch} | {} | {} | {} | {} | {} |",
            ms(first),
            ms(f.p50),
            ms(max),
            us(s.p50),
            us(s.p99)
        );
    }
}

/// One key release as CDH does it: GetToken("kbs") over the AA's ttrpc API, the
/// resource fetched with that token, its JWE opened with the returned key pair.
async fn cdh_release(a: &Attestd, kbs: &attestd_e2e::kbs::TestKbs, http: &reqwest::Client) {
    let v: serde_json::Value = serde_json::from_slice(&a.get_token("kbs").await.unwrap()).unwrap();
    let raw: serde_json::Value = http
        .get(format!("{}/kbs/v0/resource/default/key/bench", kbs.url()))
        .bearer_auth(v["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let protected = raw["protected"].as_str().unwrap().to_string();
    let jwe: kbs_types::Response = serde_json::from_value(raw).unwrap();
    let key = attestd::kbs::TeeKey::from_pem(v["tee_keypair"].as_str().unwrap()).unwrap();
    assert_eq!(key.decrypt(&jwe, &protected).unwrap(), [9u8; 32]);
}

/// Key release: UnWrapKey with a fresh RCAR handshake (the test KBS answers the
/// cached token with 401 first, so each call attests again) and with the token
/// cached, through attestd's gRPC key provider, the sample attester and the test KBS;
/// then CDH's way (GetToken + resource + JWE), with and without `reuse_token_secs`.
async fn keys_table(args: &Args) {
    use attestd_proto::grpc::keyprovider as kp;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let kbs = attestd_e2e::kbs::TestKbs::start().await;
    let kek = [9u8; 32];
    kbs.put("default/key/bench", &kek);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kek"), kek).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Plugin::sample("ttrpc");
    let _a = Attestd::start(|d| {
        format!(
            "[token_configs.kbs]\nurl = {:?}\n[keyprovider]\ngrpc = \"127.0.0.1:{port}\"\nwrap_kek = {:?}\n{}",
            kbs.url(),
            dir.path().join("kek").display().to_string(),
            config(d, &p, &[], "")
        )
    })
    .unwrap();
    let mut c = kp::key_provider_service_client::KeyProviderServiceClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    let input = |v: serde_json::Value| kp::KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: v.to_string().into_bytes(),
    };
    let wrapped = c
        .wrap_key(input(
            serde_json::json!({"op": "keywrap", "keywrapparams": {
            "ec": {"Parameters": {"attestd": [b64.encode("kbs:///default/key/bench")]}},
            "optsdata": b64.encode([1u8; 48])}}),
        ))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value =
        serde_json::from_slice(&wrapped.key_provider_key_wrap_protocol_output).unwrap();
    let unwrap = serde_json::json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": v["keywrapresults"]["annotation"]}});
    println!("| key release | calls | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- |");
    for (label, fresh, n) in [
        (
            "UnWrapKey, fresh RCAR handshake + resource",
            true,
            args.starts * 5,
        ),
        (
            "UnWrapKey, cached token (resource + unwrap)",
            false,
            args.starts * 50,
        ),
    ] {
        let mut lat = Vec::new();
        let t = Instant::now();
        for _ in 0..n {
            if fresh {
                kbs.knobs().unauthorized = 1;
            }
            let t0 = Instant::now();
            c.un_wrap_key(input(unwrap.clone())).await.unwrap();
            lat.push(t0.elapsed());
        }
        let f = figures(lat, t.elapsed());
        println!(
            "| {label} | {n} | {:.2} | {:.2} |",
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
    let http = reqwest::Client::new();
    let reusing = Attestd::start(|d| {
        format!(
            "[token_configs.kbs]\nurl = {:?}\nreuse_token_secs = 60\n{}",
            kbs.url(),
            config(d, &p, &[], "")
        )
    })
    .unwrap();
    let n = args.starts * 20;
    for (label, a) in [
        (
            "CDH-style: GetToken + resource + JWE, a handshake per token (default)",
            &_a,
        ),
        (
            "CDH-style: GetToken + resource + JWE, reuse_token_secs = 60",
            &reusing,
        ),
    ] {
        for _ in 0..n / 10 {
            cdh_release(a, &kbs, &http).await;
        }
        let before = kbs.attestations().len();
        let mut lat = Vec::new();
        let t = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            cdh_release(a, &kbs, &http).await;
            lat.push(t0.elapsed());
        }
        let f = figures(lat, t.elapsed());
        println!(
            "| {label} ({} handshakes) | {n} | {:.2} | {:.2} |",
            kbs.attestations().len() - before,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A process's peak RSS (its high-water mark), in MiB.
fn peak_mib(pid: u32) -> f64 {
    attestd_e2e::peak_mib(pid)
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// `clients` callers asking for evidence for `seconds` while the plugin is
/// SIGKILLed every 2 s and SIGSTOPped once (for 2 s), with one client that
/// pipelines requests and never reads, and 200 idle connections held open.
async fn chaos(args: &Args) {
    use std::io::Write as _;
    let p = Plugin::sample("ttrpc");
    let a = Arc::new(
        Attestd::start(|d| {
            config(
                d,
                &p,
                &[],
                "health_interval_ms = 500\nhealth_timeout_ms = 500\nrestart_stable_ms = 1000",
            )
        })
        .unwrap(),
    );
    a.evidence(b"warm up").await.unwrap();
    let pid = a.pid();
    let rss_start = rss_mib(pid);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    // The hostile clients: idle connections, and one that never reads.
    let idle: Vec<_> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&a.aa_sock).unwrap())
        .collect();
    let sock = a.aa_sock.clone();
    let pipelined = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut id = 1u32;
        while Instant::now() < deadline {
            let mut req = Vec::new();
            for (tag, v) in [
                (0x0a, &b"attestation_agent.AttestationAgentService"[..]),
                (0x12, b"GetEvidence"),
                (0x1a, b"\x0a\x01x"),
            ] {
                req.extend([tag, v.len() as u8]);
                req.extend_from_slice(v);
            }
            let mut frame = (req.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&[1, 0]);
            frame.extend(req);
            if s.write_all(&frame).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
            id += 2;
        }
        s
    });
    // The callers.
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let c = a.ttrpc().await;
            let mut lat = Vec::new();
            let mut failed: std::collections::BTreeMap<String, usize> = Default::default();
            while Instant::now() < deadline {
                let req = t::GetEvidenceRequest {
                    RuntimeData: vec![0x5a; 64],
                    ..Default::default()
                };
                let t0 = Instant::now();
                match c
                    .get_evidence(ttrpc::context::with_timeout(60_000_000_000), &req)
                    .await
                {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(e) => {
                        *failed
                            .entry(format!("{:?}", attestd_e2e::status(e).0))
                            .or_default() += 1
                    }
                }
            }
            (lat, failed)
        }));
    }
    // The chaos: SIGKILL every 2 s, one SIGSTOP of 2 s in the middle.
    let mut rss_mid = 0.0;
    let mut kills = 0;
    let stop_at = args.seconds / 2;
    let mut second = 0;
    while Instant::now() + Duration::from_secs(2) < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        second += 2;
        if let Some(plugin) = a.plugin_pid("sample") {
            if second == stop_at + stop_at % 2 {
                attestd_e2e::signal(plugin, nix::sys::signal::Signal::SIGSTOP);
                rss_mid = rss_mib(pid);
            } else {
                attestd_e2e::signal(plugin, nix::sys::signal::Signal::SIGKILL);
                kills += 1;
            }
        }
    }
    let mut lat = Vec::new();
    let mut failed: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        for (k, n) in f {
            *failed.entry(k).or_default() += n;
        }
    }
    let rss_end = rss_mib(pid);
    drop(pipelined.join().unwrap());
    drop(idle);
    // (The bench logs at warn: each restart follows one "plugin down" warning.)
    let restarts = a.log().matches("plugin down").count();
    let ok = lat.len();
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "| chaos ({} s, {} clients) | figure |",
        args.seconds, args.clients
    );
    println!("| --- | --- |");
    println!("| calls answered | {ok} |");
    println!("| calls failed, by status | {failed:?} |");
    println!(
        "| latency p50 / p99 / max | {} / {} / {} µs |",
        us(at(0.5)),
        us(at(0.99)),
        us(at(1.0))
    );
    println!("| plugin SIGKILLs / SIGSTOPs / restarts | {kills} / 1 / {restarts} |");
    println!(
        "| attestd RSS start / middle / end | {rss_start:.1} / {rss_mid:.1} / {rss_end:.1} MiB |"
    );
}

/// GetAdditionalEvidence through attestd with 1 and 3 device plugins whose
/// evidence each takes 50 ms: gathered at once, three cost what one does.
async fn additional_table() {
    const DELAY_MS: &str = "50";
    const CALLS: usize = 40;
    let tees = ["sampledevice", "nvidia", "tpm"];
    println!("| devices (50 ms each) | p50 ms | p99 ms | sum of the devices' delays ms |");
    println!("| --- | --- | --- | --- |");
    for n in [1usize, 3] {
        let devs: Vec<Plugin> = tees[..n]
            .iter()
            .enumerate()
            .map(|(i, tee)| {
                let mut p = Plugin::test(
                    "ttrpc",
                    &[
                        "--additional",
                        "--tee",
                        tee,
                        "--evidence-delay-ms",
                        DELAY_MS,
                    ],
                );
                p.name = format!("dev{i}");
                p
            })
            .collect();
        let a = Attestd::start(|d| config(d, &Plugin::sample("ttrpc"), &devs, "")).unwrap();
        let c = attestd::aa_client::AaClient::ttrpc(&format!("unix://{}", a.aa_sock.display()))
            .await
            .unwrap();
        let mut lat = Vec::with_capacity(CALLS);
        let start = Instant::now();
        for _ in 0..CALLS {
            let t0 = Instant::now();
            c.get_additional_evidence(vec![0x5a; 32]).await.unwrap();
            lat.push(t0.elapsed());
        }
        let f = figures(lat, start.elapsed());
        println!(
            "| {n} | {:.1} | {:.1} | {} |",
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            n * 50
        );
    }
}

/// `attestd reload` under load: 16 clients call GetEvidence without pause while
/// the plugin is replaced 10 times; latency in steady state and during the swaps
/// (from SIGHUP until the new instance answers), and failed calls.
async fn reload_table() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    const CLIENTS: usize = 16;
    const SWAPS: usize = 10;
    let p = |label: &str| Plugin::test("ttrpc", &["--label", label]);
    let a = Attestd::start(|d| config(d, &p("gen0"), &[], "")).unwrap();
    let addr = format!("unix://{}", a.aa_sock.display());
    let stop = Arc::new(AtomicBool::new(false));
    // (start, latency, ok)
    let samples = Arc::new(Mutex::new(Vec::<(Instant, Duration, bool)>::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = attestd::aa_client::AaClient::ttrpc(&addr).await.unwrap();
        let (stop, samples) = (stop.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = c.get_evidence(vec![0x5a; 32]).await.is_ok();
                samples.lock().unwrap().push((t0, t0.elapsed(), ok));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady_end = Instant::now();
    let probe = attestd::aa_client::AaClient::ttrpc(&addr).await.unwrap();
    let mut windows = Vec::new();
    for i in 1..=SWAPS {
        let label = format!("gen{i}");
        std::fs::write(
            a.dir.path().join("attestd.toml"),
            config(a.dir.path(), &p(&label), &[], ""),
        )
        .unwrap();
        let t0 = Instant::now();
        attestd_e2e::signal(a.pid(), nix::sys::signal::Signal::SIGHUP);
        loop {
            let ev = probe.get_evidence(vec![0; 32]).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
            if v["label"] == label.as_str() {
                break;
            }
        }
        windows.push((t0, Instant::now()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let samples = samples.lock().unwrap().clone();
    let swap_ms: Vec<f64> = windows
        .iter()
        .map(|(a, b)| (*b - *a).as_secs_f64() * 1e3)
        .collect();
    println!("| phase | calls | failed | p50 µs | p99 µs |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |what: &str, pick: &dyn Fn(&Instant) -> bool| {
        let picked: Vec<_> = samples.iter().filter(|(t, _, _)| pick(t)).collect();
        let failed = picked.iter().filter(|(_, _, ok)| !ok).count();
        let f = figures(
            picked.iter().map(|(_, l, _)| *l).collect(),
            Duration::from_secs(1),
        );
        println!(
            "| {what} | {} | {failed} | {} | {} |",
            picked.len(),
            us(f.p50),
            us(f.p99)
        );
    };
    row("steady (2 s, no swap)", &|t| *t < steady_end);
    row("during the 10 swaps", &|t| {
        windows.iter().any(|(a, b)| t >= a && t < b)
    });
    println!(
        "\nswap (SIGHUP to the new instance answering): {:.1}–{:.1} ms",
        swap_ms.iter().cloned().fold(f64::MAX, f64::min),
        swap_ms.iter().cloned().fold(0.0, f64::max)
    );
}

/// A TDX pod as the API server sends it for review.
fn review_body(runtime_class: &str, n: usize) -> Vec<u8> {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("app-{n}"), "namespace": "apps"},
        "spec": {
            "runtimeClassName": runtime_class,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]
        }
    });
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{n}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps", "operation": "CREATE",
            "userInfo": {"username": "bench"}, "object": pod
        }
    }))
    .unwrap()
}

/// Admission reviews over HTTPS with keep-alive, as the API server sends them:
/// the injection of a TDX pod, a pod left alone, and a fresh TLS connection per
/// review.
async fn webhook_table(args: &Args) {
    use attestd_e2e::webhook::{Webhook, SERVICE_HOST};
    let digest = format!("sha256:{}", "1".repeat(64));
    // Its log at warn, as for every daemon here (main sets ATTESTD_LOG).
    let w = Webhook::start(
        "",
        &format!(
            "[images.tdx]\nimage = \"localhost/attestd/attester-tdx\"\ndigest = \"{digest}\"\ntransport = \"ttrpc\"\napi = 1\n\n[components.attestd]\nimage = \"localhost/attestd/attestd\"\ndigest = \"{digest}\"\n"
        ),
    );
    let ca = w.ca();
    let client = |keep_alive: bool| {
        if keep_alive {
            w.client_trusting(&ca)
        } else {
            // A fresh connection and TLS handshake for every review.
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .resolve(SERVICE_HOST, w.addr)
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        }
    };
    let url = w.url("/mutate");
    let review = |c: reqwest::Client, body: Vec<u8>, url: String| async move {
        let r = c.post(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
    };
    println!("| review | connection | clients | p50 µs | p99 µs | reviews/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let rows = [
        ("inject (TDX pod)", "kata-qemu-tdx", true, 1),
        ("inject (TDX pod)", "kata-qemu-tdx", true, args.clients),
        ("left alone (runc pod)", "runc", true, 1),
        ("inject (TDX pod)", "kata-qemu-tdx", false, 1),
    ];
    for (what, class, keep_alive, clients) in rows {
        let calls = if keep_alive {
            args.calls / 4
        } else {
            args.calls / 40
        };
        let per_client = (calls / clients).max(1);
        // Warm-up, then measured.
        let c = client(keep_alive);
        for n in 0..per_client / 10 {
            review(c.clone(), review_body(class, n), url.clone()).await;
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..clients {
            let (c, url) = (client(keep_alive), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let body = review_body(class, k * per_client + n);
                    let t0 = Instant::now();
                    review(c.clone(), body, url.clone()).await;
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let f = figures(lat, start.elapsed());
        let conn = if keep_alive {
            "keep-alive"
        } else {
            "new TLS per review"
        };
        println!(
            "| {what} | {conn} | {clients} | {} | {} | {:.0} |",
            us(f.p50),
            us(f.p99),
            f.per_sec
        );
    }
    println!("\nwebhook RSS after the runs: {:.1} MiB", rss_mib(w.pid()));
}

/// The webhook's peak RSS on each hostile shape at its body bound, alone and
/// 16 at once, for this build and each `--compare` build: a fresh webhook per
/// row, its high-water mark read after.
async fn webhook_memory(args: &Args) {
    use attestd_e2e::webhook::Webhook;
    let digest = format!("sha256:{}", "1".repeat(64));
    let lock = format!(
        "[images.tdx]\nimage = \"localhost/attestd/attester-tdx\"\ndigest = \"{digest}\"\ntransport = \"ttrpc\"\napi = 1\n\n[components.attestd]\nimage = \"localhost/attestd/attestd\"\ndigest = \"{digest}\"\n"
    );
    let config = "[runtime_classes]\nkata-qemu-tdx = \"tdx\"\n";
    let mut builds = vec![attestd_e2e::bin("attestd-webhook")];
    builds.extend(args.compare.iter().cloned());
    let cap = attestd_webhook::review::MAX_REVIEW_BYTES;
    println!("| build | review | bytes | at once | answered | peak RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, build) in builds.iter().enumerate() {
        // Every connection slot posting at once, for this build; a build
        // without the memory bound is not asked that (it would take the machine).
        let counts: &[usize] = if i == 0 {
            &[1, 16, attestd_webhook::server::MAX_CONNECTIONS]
        } else {
            &[1, 16]
        };
        for (name, body) in attestd_e2e::webhook::memory_shapes(cap) {
            for &at_once in counts {
                let w = Webhook::start_bin(build, config, &lock);
                let c = w.client_trusting(&w.ca());
                let url = w.url("/mutate");
                let mut tasks = Vec::new();
                for _ in 0..at_once {
                    let (c, url, body) = (c.clone(), url.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        match c.post(&url).body(body).send().await {
                            Ok(r) => {
                                let v: serde_json::Value = r.json().await.unwrap_or_default();
                                v["response"]["status"]["code"]
                                    .as_u64()
                                    .map_or("allowed".to_string(), |c| c.to_string())
                            }
                            Err(_) => "no answer".to_string(),
                        }
                    }));
                }
                let mut answers = std::collections::BTreeMap::<String, usize>::new();
                for t in tasks {
                    *answers.entry(t.await.unwrap()).or_default() += 1;
                }
                let answered: Vec<String> =
                    answers.iter().map(|(k, n)| format!("{n}× {k}")).collect();
                println!(
                    "| {} | {name} | {} | {at_once} | {} | {:.1} |",
                    build.display(),
                    body.len(),
                    answered.join(", "),
                    peak_mib(w.pid())
                );
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    // Measure the daemons, not their logging.
    std::env::set_var("ATTESTD_LOG", "warn");
    // The client runs on one thread, like the daemons: the numbers are then the
    // round trip, not the scheduler.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if args.only == "chaos" {
            chaos(&args).await;
            return;
        }
        if args.only == "webhook-memory" {
            webhook_memory(&args).await;
            return;
        }
        if args.only == "webhook" {
            webhook_table(&args).await;
            return;
        }
        if args.only == "additional" {
            additional_table().await;
            return;
        }
        if args.only == "startup" {
            startup::startup_table(
                args.starts,
                args.compare.clone(),
                args.peer_start.clone(),
                args.plugin.clone(),
            )
            .await;
            return;
        }
        if args.only == "pool" {
            pool::pool_table(args.clients, args.calls_per_client, args.rounds).await;
            return;
        }
        if args.only == "reload" {
            reload_table().await;
            return;
        }
        if args.only == "launch" || args.only == "all" {
            launch_table(&args).await;
            println!();
        }
        if args.only == "keys" || args.only == "all" {
            keys_table(&args).await;
            println!();
        }
        if args.only == "launch" || args.only == "keys" {
            return;
        }
        println!("| path | AA API | plugin | clients | p50 µs | p99 µs | calls/s |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let f = floor(args.calls);
        println!(
            "| floor: socket ping-pong | - | - | 1 | {} | {} | {:.0} |",
            us(f.p50),
            us(f.p99),
            f.per_sec
        );
        for peer in &args.peer {
            let connect = || async {
                let c = ttrpc::r#async::Client::connect(peer)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to the peer {peer}: {e}"));
                Target::AaTtrpc(
                    attestd_proto::ttrpc::attestation_agent_ttrpc::AttestationAgentServiceClient::new(c),
                )
            };
            let seq = sequential(connect().await, args.calls).await;
            let mut ts = Vec::new();
            for _ in 0..args.clients {
                ts.push(connect().await);
            }
            let con = concurrent(ts, args.calls_per_client).await;
            for (n, f) in [(1, seq), (args.clients, con)] {
                println!(
                    "| peer: {peer} | ttrpc | its own | {n} | {} | {} | {:.0} |",
                    us(f.p50),
                    us(f.p99),
                    f.per_sec
                );
            }
        }
        for plugin_tr in [Transport::Ttrpc, Transport::Grpc] {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("sample.sock");
            let mut plugin = spawn_plugin("attester-sample", &sock, &plugin_tr.to_string(), &[]);
            let p = Plugin::sample(&plugin_tr.to_string());
            let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
            let runs = [
                ("direct", "-", plugin_tr, None),
                ("attestd", "ttrpc", Transport::Ttrpc, Some(&a)),
                ("attestd", "grpc", Transport::Grpc, Some(&a)),
            ];
            for (kind, api, tr, attestd) in runs {
                let seq = sequential(target(kind, tr, attestd, &sock).await, args.calls).await;
                let mut ts = Vec::new();
                for _ in 0..args.clients {
                    ts.push(target(kind, tr, attestd, &sock).await);
                }
                let con = concurrent(ts, args.calls_per_client).await;
                for (n, f) in [(1, seq), (args.clients, con)] {
                    println!(
                        "| {kind} | {api} | {plugin_tr} | {n} | {} | {} | {:.0} |",
                        us(f.p50),
                        us(f.p99),
                        f.per_sec
                    );
                }
            }
            drop(a);
            attestd_e2e::signal(plugin.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = plugin.wait();
        }
    });
}

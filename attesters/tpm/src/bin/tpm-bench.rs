//! GetEvidence through attestd (AA API over ttrpc → attester-tpm → swtpm) against a
//! quote made in-process with tss-esapi on the same swtpm: the framework's cost as a
//! share of the TPM's.
//!
//! `cargo build --release --workspace --bins` (root) and
//! `cargo build --release --manifest-path attesters/tpm/Cargo.toml`, then
//! `attesters/tpm/target/release/tpm-bench [--attestd PATH]`. Needs swtpm.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a failed setup should stop it loudly

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attestd_proto::ttrpc::{
    attestation_agent as aa, attestation_agent_ttrpc::AttestationAgentServiceClient,
};
use attester_tpm::device::{Tpm, TpmConfig, DEFAULT_AK_HANDLE};
use attester_tpm::evidence;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// The attestd binary (default: the root workspace's release build).
    #[arg(long)]
    attestd: Option<PathBuf>,
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn p50(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() {
    let args = Args::parse();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let attestd = args
        .attestd
        .unwrap_or_else(|| here.join("../../target/release/attestd"));
    let plugin = std::env::current_exe()
        .unwrap()
        .with_file_name("attester-tpm");
    let dir = tempfile::tempdir().unwrap();
    // Two adjacent free ports: swtpm's server and control sockets.
    let port = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let _swtpm = Killed(
        Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg(format!("--server=type=tcp,port={port}"))
            .arg(format!("--ctrl=type=tcp,port={}", port + 1))
            .arg(format!("--tpmstate=dir={}", dir.path().display()))
            .spawn()
            .expect("swtpm"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    std::env::set_var("TSS2_LOG", "all+none");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // In-process: the same device code the plugin runs, no framework.
    let direct = rt.block_on(async {
        let tpm = Tpm::open(TpmConfig {
            tcti: tcti.clone(),
            ak_handle: DEFAULT_AK_HANDLE,
        })
        .unwrap();
        let mut lat = Vec::new();
        for i in 0..args.calls {
            let t0 = Instant::now();
            let q = tpm.quote(evidence::nonce(&[i as u8; 32])).await.unwrap();
            evidence::evidence(&q).unwrap();
            lat.push(t0.elapsed());
        }
        lat
    });
    // The TPM thread has ended with the handle: swtpm takes one client at a time.
    std::thread::sleep(Duration::from_millis(200));

    let cfg = dir.path().join("attestd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[plugins]\nprimary = \"tpm\"\nsocket_dir = {:?}\n[plugins.attester.tpm]\nlaunch = \"process\"\ncommand = {:?}\nargs = [\"--tcti\", {:?}]\ntransport = \"ttrpc\"\n",
            dir.path().join("plugins").display().to_string(),
            plugin.display().to_string(),
            tcti
        ),
    )
    .unwrap();
    let sock = dir.path().join("aa.sock");
    let _attestd = Killed(
        Command::new(&attestd)
            .arg("-c")
            .arg(&cfg)
            .arg("--attestation_sock")
            .arg(format!("unix://{}", sock.display()))
            .args(["--grpc_sock", "none"])
            .env("ATTESTD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", attestd.display())),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "attestd did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let through = rt.block_on(async {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
            .await
            .unwrap();
        let c = AttestationAgentServiceClient::new(c);
        let mut lat = Vec::new();
        for i in 0..args.calls {
            let req = aa::GetEvidenceRequest {
                RuntimeData: vec![i as u8; 32],
                ..Default::default()
            };
            let t0 = Instant::now();
            c.get_evidence(ttrpc::context::with_timeout(0), &req)
                .await
                .unwrap();
            lat.push(t0.elapsed());
        }
        lat
    });

    let (d50, d99) = p50(direct);
    let (t50, t99) = p50(through);
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!("| path | calls | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| in-process tss-esapi quote | {} | {} | {} |",
        args.calls,
        ms(d50),
        ms(d99)
    );
    println!(
        "| attestd → attester-tpm | {} | {} | {} |",
        args.calls,
        ms(t50),
        ms(t99)
    );
    let overhead = t50.as_secs_f64() - d50.as_secs_f64();
    println!(
        "\nframework overhead at p50: {:.1} µs = {:.2} % of the in-process quote",
        overhead * 1e6,
        100.0 * overhead / d50.as_secs_f64()
    );
}

//! `--only pool`: the core holds one connection to its plugin and multiplexes every
//! concurrent call over it. Would a pool of connections serve concurrent callers
//! better? The same 16 callers on one client thread (as in the core) ask the sample
//! plugin directly over 1, 2, 4 or 16 connections, alternated over rounds so drift
//! on the machine falls on every row alike.

use std::sync::Arc;

use attestd_e2e::spawn_plugin;
use attester_sdk::Transport;

use super::{concurrent, direct_client, us, Target};

const POOLS: [usize; 4] = [1, 2, 4, 16];

pub async fn pool_table(clients: usize, per_client: usize, rounds: usize) {
    println!("| plugin | connections | clients | round | p50 µs | p99 µs | calls/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for tr in [Transport::Ttrpc, Transport::Grpc] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sample.sock");
        let mut plugin = spawn_plugin("attester-sample", &sock, &tr.to_string(), &[]);
        let mut pools = Vec::new();
        for n in POOLS {
            let mut conns = Vec::new();
            for _ in 0..n.min(clients) {
                conns.push(Arc::new(direct_client(&sock, tr).await));
            }
            pools.push(conns);
        }
        for round in 1..=rounds {
            for conns in &pools {
                // Caller i uses connection i mod n, as a round-robin pool would.
                let targets = (0..clients)
                    .map(|i| Target::Direct(conns[i % conns.len()].clone()))
                    .collect();
                let f = concurrent(targets, per_client).await;
                println!(
                    "| {tr} | {} | {clients} | {round} | {} | {} | {:.0} |",
                    conns.len(),
                    us(f.p50),
                    us(f.p99),
                    f.per_sec
                );
            }
        }
        drop(pools);
        attestd_e2e::signal(plugin.id(), nix::sys::signal::Signal::SIGTERM);
        let _ = plugin.wait();
    }
}

//! Failures only attestd's fault-injection points can cause (feature
//! `fault-injection`, on for the test build; the pass against the daemon as it
//! ships leaves this file out): parts that should run as long as attestd does end
//! on their own. attestd must say so and exit non-zero — systemd and kata restart
//! it — never stay "ready" with a dead listener or an unsupervised plugin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd_e2e::{config, signal, Attestd, Plugin};
use nix::sys::signal::Signal;

fn exits_with(a: &mut Attestd, line: &str) {
    let st = a.wait_exit();
    assert!(!st.success(), "{st:?}");
    let log = a.log();
    assert!(log.contains(line), "{log}");
}

#[test]
fn a_grpc_listener_that_ends_stops_attestd_non_zero() {
    // The AA API's gRPC server, and the key provider's.
    for (point, extra, line) in [
        (
            "grpc-AA API-ends",
            "",
            "the AA API gRPC server on unix://",
        ),
        (
            "grpc-key provider-ends",
            "[keyprovider]\ngrpc = \"127.0.0.1:0\"\n",
            "the key provider gRPC server on 127.0.0.1:0: its listener failed (fault injection): shutting down",
        ),
    ] {
        let p = Plugin::sample("ttrpc");
        let mut a = Attestd::start_env(
            |d| format!("{extra}{}", config(d, &p, &[], "")),
            &[],
            &[("ATTESTD_FAULT", point)],
        )
        .unwrap();
        exits_with(&mut a, line);
        // Everything it started is gone, sockets included.
        assert!(!a.aa_sock.exists());
        assert!(a.plugin_pid("sample").is_none());
    }
}

#[test]
fn a_supervisor_that_panics_stops_attestd_non_zero() {
    let p = Plugin::sample("ttrpc");
    let mut a = Attestd::start_env(
        |d| config(d, &p, &[], ""),
        &[],
        &[("ATTESTD_FAULT", "supervisor-panics")],
    )
    .unwrap();
    signal(a.plugin_pid("sample").unwrap(), Signal::SIGKILL);
    exits_with(
        &mut a,
        "the supervisor of plugin sample ended: shutting down",
    );
    assert!(!a.aa_sock.exists());
}

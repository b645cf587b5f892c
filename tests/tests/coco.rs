//! The peer pod VM (`containers/podvm/build.sh --coco`): upstream's
//! Confidential Containers guest — kata-agent, agent-protocol-forwarder (APF),
//! the Confidential Data Hub (CDH), api-server-rest — around attestd, booted
//! under qemu with a vTPM and driven as cloud-api-adaptor drives it: user-data
//! rendered by the adaptor's own code, kata's agent protocol over APF's mutual
//! TLS on a port forwarded to 127.0.0.1.
//!
//! Runs when the peers cache holds the programs the image was built from
//! (`scripts/peers-build.sh`), and says so either way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attestd_e2e::agent::{Agent, ApfTls};
use attestd_e2e::peers::peer_or_skip;
use attestd_e2e::podvm::{self, Boot, PodVm, VmTpm};
use serde_json::{json, Value};

/// Under TCG a boot takes tens of seconds; on a loaded CI machine, more.
const BOOT_WITHIN: Duration = Duration::from_secs(420);
/// agent-protocol-forwarder's port (cloud-api-adaptor dials it).
const APF_PORT: u16 = 15150;

/// The peers the image holds, and the image (scripts/test.sh builds it when
/// the cache has them): `None`, said, when the cache lacks one.
fn peers_and_image(test: &str) -> Option<(PathBuf, podvm::Image)> {
    let mut caa = None;
    for project in [
        "kata-agent",
        "guest-components",
        "kata-containers",
        "cloud-api-adaptor",
    ] {
        caa = Some(peer_or_skip(project, test)?);
    }
    Some((caa?, podvm::coco_image()))
}

/// The user-data cloud-api-adaptor writes for a pod: apf.json, rendered by the
/// adaptor's own code (`attestd-caa-userdata`).
fn user_data(caa: &Path, dir: &Path, tls: &ApfTls, pod: &str) -> String {
    let apf = dir.join("apf.json");
    std::fs::write(&apf, tls.apf_json(pod).to_string()).unwrap();
    let o = std::process::Command::new(caa.join("attestd-caa-userdata"))
        .arg("--apf-json")
        .arg(&apf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "attestd-caa-userdata: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `path args` run in the guest (the image's test hook), which must succeed.
fn in_guest(vm: &PodVm, path: &str, args: &[&str]) -> String {
    let (code, out, err) = vm.exec(path, args, Duration::from_secs(60)).unwrap();
    assert_eq!(code, 0, "{path} {args:?}: {out}{err}");
    out
}

/// A unit's monotonic timestamp `property` (µs) in the guest.
fn guest_usec(vm: &PodVm, unit: &str, property: &str) -> u64 {
    let out = in_guest(
        vm,
        "/usr/bin/systemctl",
        &["show", unit, "-p", property, "--value"],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{unit} {property}: {out:?}"))
}

/// An HTTP GET to api-server-rest, from the pod's network namespace (where
/// upstream's unit runs it and where the pod's containers reach it): the body.
fn api_server_rest(vm: &PodVm, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/8006 && printf 'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = in_guest(
        vm,
        "/usr/bin/ip",
        &["netns", "exec", "podns", "/bin/bash", "-c", &script],
    );
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("api-server-rest {path}: {out:?}"));
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_string()
}

fn figure(what: &str, d: Duration) {
    eprintln!(
        "coco figure: {what} {:.1} s (accel {})",
        d.as_secs_f64(),
        podvm::accel()
    );
}

/// Scenario 1: the guest boots with the whole stack up, in upstream's order
/// (attestd serves before CDH starts, kata-agent after CDH, APF after the
/// agent), APF answers kata's agent protocol over the adaptor's mutual TLS,
/// and api-server-rest, in the pod's network namespace, reports the TEE
/// attestd selected (GetTeeType: `tpm`).
#[test]
fn the_peer_pod_vm_comes_up_with_the_whole_guest_stack() {
    let Some((caa, img)) = peers_and_image("the_peer_pod_vm_comes_up_with_the_whole_guest_stack")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = ApfTls::new(&dir.path().join("tls"));
    let mut vm = PodVm::boot(
        &img,
        Boot {
            user_data: user_data(&caa, dir.path(), &tls, "coco-1"),
            tpm: Some(VmTpm::new()),
            hostfwd: vec![APF_PORT],
            ..Default::default()
        },
    );
    let t = vm
        .wait_journal(0, "Started agent-protocol-forwarder.service", BOOT_WITHIN)
        .unwrap_or_else(|e| panic!("{e}"));
    figure("boot to agent-protocol-forwarder ready", t);

    // kata's agent protocol through APF, as the adaptor connects.
    let start = Instant::now();
    let mut agent = loop {
        let mut a = Agent::connect(
            &caa.join("attestd-agent-client"),
            vm.host_port(APF_PORT),
            &tls,
        );
        match a.call("grpc.Health", "Check", json!({}), 10) {
            Ok(r) => {
                assert_eq!(r["status"], "SERVING", "{r}");
                break a;
            }
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("coco: APF not answering yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("APF's health check: {e}"),
        }
    };
    let details = agent
        .agent("GetGuestDetails", json!({"mem_block_size": true}))
        .unwrap();
    assert!(details.get("agent_details").is_some(), "{details}");
    agent
        .agent(
            "CreateSandbox",
            json!({"hostname": "coco-1", "sandbox_id": "coco-1"}),
        )
        .unwrap();

    // Upstream's order, by the units' own timestamps.
    let attestd_ready = guest_usec(&vm, "attestd.service", "ActiveEnterTimestampMonotonic");
    let cdh = guest_usec(
        &vm,
        "confidential-data-hub.service",
        "ExecMainStartTimestampMonotonic",
    );
    let agent_start = guest_usec(&vm, "kata-agent.service", "ExecMainStartTimestampMonotonic");
    let apf = guest_usec(
        &vm,
        "agent-protocol-forwarder.service",
        "ExecMainStartTimestampMonotonic",
    );
    assert!(
        attestd_ready > 0 && attestd_ready <= cdh,
        "attestd ready {attestd_ready} µs, CDH started {cdh} µs"
    );
    assert!(
        cdh <= agent_start && agent_start <= apf,
        "CDH {cdh}, kata-agent {agent_start}, APF {apf} µs"
    );

    // api-server-rest asks attestd (GetTeeType) through the AA socket.
    let info: Value = serde_json::from_str(&api_server_rest(&vm, "/info")).unwrap();
    assert_eq!(info["tee"], "tpm", "{info}");
    eprintln!("coco: scenario 1: attestd, CDH, kata-agent, APF and api-server-rest up in order; /info says {info}");
}

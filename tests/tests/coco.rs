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

/// The user-data cloud-api-adaptor writes for a pod, rendered by the
/// adaptor's own code (`attestd-caa-userdata`): apf.json (the pod network and
/// the forwarder's TLS keys) and, from the pod's annotation, init-data.
fn user_data(caa: &Path, dir: &Path, tls: &ApfTls, pod: &str, initdata: Option<&str>) -> String {
    let apf = dir.join("apf.json");
    std::fs::write(&apf, tls.apf_json(pod).to_string()).unwrap();
    let mut cmd = std::process::Command::new(caa.join("attestd-caa-userdata"));
    cmd.arg("--apf-json").arg(&apf);
    if let Some(initdata) = initdata {
        let ann = dir.join("annotation");
        std::fs::write(&ann, initdata).unwrap();
        cmd.arg("--annotation").arg(&ann);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "attestd-caa-userdata: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// kata's agent protocol through the forwarder, once it answers its health
/// check (it listens a moment after systemd says it started).
fn connect(vm: &PodVm, caa: &Path, tls: &ApfTls) -> Agent {
    let start = Instant::now();
    loop {
        let mut a = Agent::connect(
            &caa.join("attestd-agent-client"),
            vm.host_port(APF_PORT),
            tls,
        );
        match a.call("grpc.Health", "Check", json!({}), 10) {
            Ok(r) => {
                assert_eq!(r["status"], "SERVING", "{r}");
                return a;
            }
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("coco: APF not answering yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("APF's health check: {e}"),
        }
    }
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
            user_data: user_data(&caa, dir.path(), &tls, "coco-1", None),
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
    let mut agent = connect(&vm, &caa, &tls);
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

/// Init-data a tenant writes for the peer pod: CDH's config (the KBS, and the
/// CA of the registry its images come from).
fn initdata(registry_ca: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\nsocket = \"unix:///run/confidential-containers/cdh.sock\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n\n[image]\nextra_root_certificates = [\"\"\"\n{}\"\"\"]\n'''\n",
        registry_ca.trim_end()
    )
}

/// The OCI spec kata's runtime sends for a container of the pod `sandbox`
/// (what containerd gave it, trimmed to what a pod of one process needs).
fn oci(sandbox: &str, cid: &str, kind: &str, image: &str, args: &[&str]) -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({
        "Version": "1.1.0",
        "Process": {
            "Terminal": false,
            "User": {"UID": 0, "GID": 0},
            "Args": args,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cwd": "/",
            // containerd's default set.
            "Capabilities": {
                "Bounding": caps, "Effective": caps, "Permitted": caps,
                "Inheritable": [], "Ambient": [],
            },
            "NoNewPrivileges": true,
        },
        "Root": {"Path": format!("/run/kata-containers/{cid}/rootfs"), "Readonly": false},
        "Hostname": sandbox,
        "Mounts": [
            {"destination": "/proc", "source": "proc", "type": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "source": "tmpfs", "type": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "source": "sysfs", "type": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "Annotations": {
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-id": sandbox,
            "io.kubernetes.cri.image-name": image,
        },
        "Linux": {
            "CgroupsPath": format!("/kubepods/{sandbox}/{cid}"),
            "Namespaces": [{"Type": "pid"}, {"Type": "ipc"}, {"Type": "uts"}, {"Type": "mount"}],
        },
    })
}

/// CreateContainer as kata's runtime sends it for guest pull: the rootfs a
/// storage of driver `image_guest_pull` (the sandbox's from the VM's pause
/// bundle, a container's pulled by CDH).
fn create(
    agent: &mut Agent,
    sandbox: &str,
    cid: &str,
    kind: &str,
    image: &str,
    args: &[&str],
) -> Result<Value, String> {
    let pull = json!({"metadata": {"io.kubernetes.cri.container-type": kind}});
    agent.agent(
        "CreateContainer",
        json!({
            "container_id": cid,
            "exec_id": cid,
            "storages": [{
                "driver": "image_guest_pull",
                "driver_options": [format!("image_guest_pull={pull}")],
                "source": image,
                "fstype": "overlay",
                "mount_point": format!("/run/kata-containers/{cid}/rootfs"),
            }],
            "OCI": oci(sandbox, cid, kind, image, args),
        }),
    )
}

/// A peer pod VM booted with `initdata` and the test registry forwarded into
/// it at 10.0.2.100:5000, and its pod's sandbox started (CreateSandbox, the
/// sandbox container from the pause bundle) through the forwarder: the VM,
/// the agent connection and the sandbox's id.
fn pod_with_sandbox(
    caa: &Path,
    img: &podvm::Image,
    dir: &Path,
    initdata: &str,
    reg_port: u16,
    pod: &str,
) -> (PodVm, Agent, String) {
    let tls = ApfTls::new(&dir.join("tls"));
    let user_data = user_data(caa, dir, &tls, pod, Some(initdata));
    let mut vm = PodVm::boot(
        img,
        Boot {
            user_data,
            tpm: Some(VmTpm::new()),
            hostfwd: vec![APF_PORT],
            forwards: vec![("10.0.2.100:5000".into(), reg_port)],
            ..Default::default()
        },
    );
    vm.wait_journal(0, "Started agent-protocol-forwarder.service", BOOT_WITHIN)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut agent = connect(&vm, caa, &tls);
    let sandbox = format!("{}sandbox", pod.replace('-', ""));
    agent
        .agent(
            "CreateSandbox",
            json!({"hostname": pod, "sandbox_id": sandbox}),
        )
        .unwrap();
    create(
        &mut agent,
        &sandbox,
        &sandbox,
        "sandbox",
        "pause",
        &["/pause"],
    )
    .unwrap_or_else(|e| panic!("the sandbox: {e}"));
    agent
        .agent("StartContainer", json!({"container_id": sandbox}))
        .unwrap_or_else(|e| panic!("start the sandbox: {e}"));
    (vm, agent, sandbox)
}

/// A container's standard output, read until `done` says it is complete: the
/// agent's ReadStdout blocks while the stream is open, and kata-agent keeps it
/// open after the process exited (the runtime stops reading at WaitProcess).
fn read_stdout_until(agent: &mut Agent, cid: &str, done: impl Fn(&str) -> bool) -> String {
    use base64::Engine as _;
    let mut out = Vec::new();
    while !done(&String::from_utf8_lossy(&out)) {
        let r = agent
            .call(
                "grpc.AgentService",
                "ReadStdout",
                json!({"container_id": cid, "exec_id": cid, "len": 65536}),
                60,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "ReadStdout {cid} after {:?}: {e}",
                    String::from_utf8_lossy(&out)
                )
            });
        let data = r["data"].as_str().unwrap_or_default();
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Scenario 6's ground, on the way to the encrypted image: a pod created
/// through the forwarder as the adaptor creates it — the sandbox from the VM's
/// pause bundle, then a container whose image CDH pulls from a registry (the
/// test's, at 10.0.2.100:5000, trusted by init-data's CDH config) — and the
/// container asks api-server-rest in its pod for the TEE: attestd answers.
#[test]
fn a_guest_pulled_container_reaches_attestd_through_api_server_rest() {
    let Some((caa, img)) =
        peers_and_image("a_guest_pulled_container_reaches_attestd_through_api_server_rest")
    else {
        return;
    };
    let app = attestd_e2e::kube::app_image();
    let reg = attestd_e2e::registry::Registry::start_for(&["10.0.2.100"]);
    reg.push(&app, "attestd-tests/app", "coco", None);
    let reg_port: u16 = reg.host.rsplit(':').next().unwrap().parse().unwrap();
    let image = "10.0.2.100:5000/attestd-tests/app:coco";

    let dir = tempfile::tempdir().unwrap();
    let (vm, mut agent, sandbox) = pod_with_sandbox(
        &caa,
        &img,
        dir.path(),
        &initdata(&reg.ca_pem),
        reg_port,
        "coco-2",
    );
    let sandbox = sandbox.as_str();
    let t = Instant::now();
    let cid = "coco2app";
    create(
        &mut agent,
        sandbox,
        cid,
        "container",
        image,
        &["/busybox", "wget", "-qO-", "http://127.0.0.1:8006/info"],
    )
    .unwrap_or_else(|e| panic!("the app (pulled by CDH): {e}"));
    figure("CreateContainer with CDH's guest pull", t.elapsed());
    agent
        .agent("StartContainer", json!({"container_id": cid}))
        .unwrap_or_else(|e| panic!("start the app: {e}"));
    let out = read_stdout_until(&mut agent, cid, |o| {
        serde_json::from_str::<Value>(o.trim()).is_ok()
    });
    let status = agent
        .agent("WaitProcess", json!({"container_id": cid, "exec_id": cid}))
        .unwrap();
    let info: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the app printed {out:?} ({e}), exit {status}"));
    assert_eq!(info["tee"], "tpm", "{info}");
    let j = vm.journal();
    assert!(j.contains(image), "CDH's pull is not in the journal");
    eprintln!("coco: a container pulled by CDH asked api-server-rest: {info}");
}

/// The KEK the image is encrypted with, held by the KBS.
const KEK: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Where the KBS holds it, as the image's layers name it.
const KID: &str = "kbs:///default/key/image-kek";

/// Init-data for a pod whose images CDH decrypts with keys from the KBS at
/// `kbs` (as the guest reaches it): CDH's config, and attestd's (upstream's
/// aa.toml), since CDH's KBS client has the attestation agent attest
/// (GetToken "kbs") and uses the token it returns.
fn initdata_with_kbs(registry_ca: &str, kbs: &str) -> String {
    let aa = format!("\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"{kbs}\"\n'''\n");
    initdata(registry_ca)
        .replace("http://10.0.2.2:8080", kbs)
        .replace("[data]\n", &format!("[data]\n{aa}"))
}

/// A KBS resource policy releasing keys only to a TPM guest whose PCR 8
/// carries `initdata` bound as attestd binds it (extended once into zeros
/// with the document's SHA-256): Trustee's TPM verifier reports PCR 8 as the
/// `init_data` claim, which its token puts at the top of the annotated
/// evidence.
fn requiring_initdata(initdata: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(initdata.as_bytes());
    let pcr8 = Sha256::digest([[0u8; 32].as_slice(), &digest[..]].concat());
    format!(
        "package policy\n\ndefault allow = false\n\nallow if {{\n\tinput[\"submods\"][\"cpu0\"][\"ear.veraison.annotated-evidence\"][\"init_data\"] == \"{}\"\n}}\n",
        hex::encode(pcr8)
    )
}

/// `app` encrypted by skopeo (the Go build, ocicrypt's key providers) with
/// attestd as the image builder's key provider, holding the KEK: pushed to
/// `reg` as `repo:tag`. The provider is named `attestation-agent`, the name
/// the layers' annotation carries and the guest's ocicrypt config resolves.
fn encrypt_and_push(app: &str, reg: &attestd_e2e::registry::Registry, repo: &str, tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", attestd_e2e::free_port());
    std::fs::write(dir.path().join("kek"), KEK).unwrap();
    let kp = format!(
        "[keyprovider]\nname = \"attestation-agent\"\ngrpc = {addr:?}\nwrap_kek = {:?}\n",
        dir.path().join("kek").display().to_string()
    );
    let _builder = attestd_e2e::Attestd::start(|d| {
        attestd_e2e::kbs::attestd_config(d, "http://127.0.0.1:9", &kp)
    })
    .unwrap();
    let config = dir.path().join("ocicrypt.json");
    std::fs::write(
        &config,
        json!({"key-providers": {"attestation-agent": {"grpc": addr}}}).to_string(),
    )
    .unwrap();
    let o = std::process::Command::new(attestd_e2e::go_bin("skopeo"))
        .env("OCICRYPT_KEYPROVIDER_CONFIG", &config)
        .args(["copy", "-q", "--encryption-key"])
        .arg(format!("provider:attestation-agent:{KID}"))
        .arg("--dest-cert-dir")
        .arg(reg.cert_dir())
        .arg(format!("containers-storage:{app}"))
        .arg(format!("docker://{}/{repo}:{tag}", reg.host))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo copy --encryption-key: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Scenarios 2 and 3: the pod's image is encrypted with a KEK only Trustee's
/// KBS holds. In the guest CDH pulls it; to decrypt its layers it asks the KBS
/// for the KEK. While the KBS's policy denies the key, CreateContainer fails;
/// once it allows it, the KBS releases the key after an attestation (RCAR) on
/// attestd's TPM evidence, checked by Trustee's TPM verifier, and the
/// container runs, its output coming back through the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_image_is_refused_then_runs_as_the_kbs_policy_says() {
    let test = "an_encrypted_image_is_refused_then_runs_as_the_kbs_policy_says";
    let Some((caa, img)) = peers_and_image(test) else {
        return;
    };
    let Some(trustee) = peer_or_skip("trustee", test) else {
        return;
    };
    let kbs = attestd_e2e::guest::Trustee::start(&trustee);
    kbs.put("default/key/image-kek", KEK).await;
    let kbs_port = kbs.url().rsplit(':').next().unwrap().to_string();

    let app = attestd_e2e::kube::app_image();
    let reg = attestd_e2e::registry::Registry::start_for(&["10.0.2.100"]);
    encrypt_and_push(&app, &reg, "attestd-tests/app", "encrypted");
    let reg_port: u16 = reg.host.rsplit(':').next().unwrap().parse().unwrap();
    let image = "10.0.2.100:5000/attestd-tests/app:encrypted";

    let dir = tempfile::tempdir().unwrap();
    // The guest reaches the host's loopback at 10.0.2.2 (qemu's user network).
    let initdata = initdata_with_kbs(&reg.ca_pem, &format!("http://10.0.2.2:{kbs_port}"));
    let (vm, mut agent, sandbox) =
        pod_with_sandbox(&caa, &img, dir.path(), &initdata, reg_port, "coco-3");
    let sandbox = sandbox.as_str();
    // Scenarios 3 and 4: a policy that releases the key only to a guest
    // bound to other init-data (the same, but for its KBS address) denies it.
    // CreateContainer fails; the KBS's reason (PolicyDeny) is in the guest's
    // journal, where CDH's KBS client logs it, but what reaches the agent's
    // caller is image-rs's generic decryption error: upstream's behaviour,
    // recorded so a change shows.
    let other = initdata_with_kbs(&reg.ca_pem, "http://10.0.2.2:1");
    kbs.resource_policy(&requiring_initdata(&other)).await;
    let denied = create(
        &mut agent,
        sandbox,
        "coco3denied",
        "container",
        image,
        &["/busybox", "echo", "must not run"],
    )
    .expect_err("CreateContainer succeeded though the KBS denies the key");
    assert!(
        denied.contains("Failed to decrypt the image layer"),
        "{denied}"
    );
    assert!(
        !denied.contains("PolicyDeny"),
        "the reason reached the caller now: {denied}"
    );
    let j = vm.journal();
    assert!(
        j.contains("errors/PolicyDeny"),
        "the KBS's reason is not in the guest's journal either"
    );
    eprintln!("coco: scenarios 3 and 4: denied to init-data the policy does not name; the caller sees {denied:?}");

    // Scenarios 2 and 4: released to the guest bound to this init-data.
    kbs.resource_policy(&requiring_initdata(&initdata)).await;
    let before = kbs.attestations();
    let t = Instant::now();
    let cid = "coco3app";
    create(
        &mut agent,
        sandbox,
        cid,
        "container",
        image,
        &["/busybox", "echo", "decrypted in the guest"],
    )
    .unwrap_or_else(|e| panic!("the encrypted app: {e}\n--- KBS\n{}", kbs.log()));
    figure(
        "CreateContainer of an encrypted image (pull, key release, decryption)",
        t.elapsed(),
    );
    assert!(
        kbs.attestations() > before,
        "the KBS released the key without an attestation:\n{}",
        kbs.log()
    );
    agent
        .agent("StartContainer", json!({"container_id": cid}))
        .unwrap_or_else(|e| panic!("start the app: {e}"));
    let out = read_stdout_until(&mut agent, cid, |o| o.contains('\n'));
    assert_eq!(out, "decrypted in the guest\n");
    eprintln!(
        "coco: scenario 2: the encrypted image ran after {} attestation(s) with Trustee",
        kbs.attestations() - before
    );
}

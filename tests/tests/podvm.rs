//! The generic pod VM booted for real (qemu; TCG unless KVM boots here): one
//! image, built by `containers/podvm/build.sh --test-hooks`, that finds its TEE
//! at boot and runs the pinned attester image for it, or refuses. Every check
//! runs from the host: the AA API through the CDH stand-in's forwarded port,
//! commands in the guest through the qemu guest agent, and the guest's journal
//! from its second serial port (printed when a test fails).
//!
//! Figures (boot to the AA API answering, to the first evidence) are printed as
//! `podvm figure: …` lines; docs/benchmarks.md records them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use attestd_e2e::podvm::{self, Boot, PodVm, VmTpm};
use attestd_e2e::swtpm::{checkquote, nonce, parse};
use attestd_proto::ttrpc::attestation_agent as t;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Under TCG a boot takes tens of seconds; on a loaded CI machine, more.
const BOOT_WITHIN: Duration = Duration::from_secs(420);

/// Init-data as a tenant writes it (upstream's aa.toml, unchanged), with the
/// event log on a register a vTPM lets the OS extend; SHA-256, which Trustee's
/// TPM verifier needs (docs/attesters/tpm.md).
const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://10.0.2.2:8080\"\n\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 23\n'''\n";

/// Init-data with no aa.toml (a tenant who sets only kata-agent's policy).
const INITDATA_WITHOUT_AA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\\n\"\n";

/// User-data as cloud-api-adaptor writes it: init-data in kata's annotation form
/// (base64 of the gzip) at /run/peerpod/initdata.
fn user_data(initdata: &str) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(initdata.as_bytes()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    format!("#cloud-config\nwrite_files:\n- path: /run/peerpod/initdata\n  content: {b64}\n")
}

/// PCR 8 of a fresh boot once init-data is bound: the document's SHA-256
/// extended into zeros.
fn pcr8_after_binding(initdata: &str) -> Vec<u8> {
    let d = Sha256::digest(initdata.as_bytes());
    Sha256::digest([[0u8; 32].as_slice(), &d[..]].concat()).to_vec()
}

/// A guest with a fresh vTPM and the tenant's init-data; `more` sets the rest.
fn boot_vtpm(img: &podvm::Image, more: Boot) -> PodVm {
    PodVm::boot(
        img,
        Boot {
            user_data: user_data(INITDATA),
            tpm: Some(VmTpm::new()),
            ..more
        },
    )
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

async fn evidence(vm: &PodVm, rd: &[u8]) -> Result<Vec<u8>, String> {
    let req = t::GetEvidenceRequest {
        RuntimeData: rd.to_vec(),
        ..Default::default()
    };
    vm.aa()
        .await?
        .get_evidence(ctx(), &req)
        .await
        .map(|r| r.Evidence)
        .map_err(|e| e.to_string())
}

/// Until the AA API answers, reporting `tee`; the time it took is a figure.
async fn ready_as(vm: &mut PodVm, tee: &str, scenario: &str, what: &str) {
    let (got, t) = vm
        .ready(BOOT_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, tee);
    figure(scenario, what, t);
}

/// `path args` run in the guest, which must succeed: its output.
fn in_guest(vm: &PodVm, path: &str, args: &[&str]) -> String {
    let (code, out, err) = vm.exec(path, args, Duration::from_secs(60)).unwrap();
    assert_eq!(code, 0, "{path} {args:?}: {out}{err}");
    out
}

/// The attester containers runc runs in the guest (attestd's `oci` launch).
fn runc_containers(vm: &PodVm) -> Vec<String> {
    in_guest(vm, "/usr/sbin/runc", &["list", "-q"])
        .lines()
        .filter(|l| l.starts_with("attestd-"))
        .map(String::from)
        .collect()
}

/// podman in the guest, which must succeed: its output.
fn podman(vm: &PodVm, args: &[&str]) -> String {
    in_guest(vm, "/usr/bin/podman", args)
}

fn figure(scenario: &str, what: &str, d: Duration) {
    eprintln!(
        "podvm figure: {scenario} {what} {:.1} s (accel {})",
        d.as_secs_f64(),
        podvm::accel()
    );
}

/// A unit's `property` (a monotonic timestamp, µs) in the guest.
fn guest_usec(vm: &PodVm, unit: &str, property: &str) -> u64 {
    let out = in_guest(
        vm,
        "/usr/bin/systemctl",
        &["show", unit, &format!("--property={property}"), "--value"],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{unit} {property}: {out:?}"))
}

/// The monotonic time (µs) of a `journalctl -o short-monotonic` line:
/// "[   11.327216] host unit[pid]: …".
fn monotonic_usec(line: &str) -> Option<u64> {
    let inner = line.strip_prefix('[')?.split(']').next()?.trim();
    let (secs, frac) = inner.split_once('.')?;
    Some(secs.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?)
}

/// The guest's own clock, once the AA API answers: when attestd was started,
/// and attestd's part (its start to its "attestd ready" line, logged once the
/// AA socket listens), as figures; then when the CDH stand-in started
/// (confidential-data-hub.path starts it when the socket appears, once the
/// boot's basic.target is reached, as the real CDH's would), and where the boot
/// went (`systemd-analyze`), printed.
fn guest_figures(vm: &PodVm, scenario: &str) {
    let started = guest_usec(vm, "attestd.service", "ExecMainStartTimestampMonotonic");
    let cdh = guest_usec(
        vm,
        "confidential-data-hub.service",
        "ExecMainStartTimestampMonotonic",
    );
    figure(
        scenario,
        "guest clock: attestd started at",
        Duration::from_micros(started),
    );
    // attestd's own steps, on the same clock.
    let journal = in_guest(
        vm,
        "/usr/bin/journalctl",
        &[
            "-b",
            "-u",
            "attestd.service",
            "-o",
            "short-monotonic",
            "--no-pager",
        ],
    );
    for line in journal.lines().take(40) {
        eprintln!("podvm {scenario} journal: {line}");
    }
    let ready = journal
        .lines()
        .filter(|l| l.contains("attestd ready"))
        .find_map(monotonic_usec)
        .unwrap_or_else(|| panic!("no \"attestd ready\" line: {journal}"));
    figure(
        scenario,
        "guest clock: attestd started to AA socket (attestd's part)",
        Duration::from_micros(ready.saturating_sub(started)),
    );
    figure(
        scenario,
        "guest clock: CDH stand-in started at",
        Duration::from_micros(cdh),
    );
    for args in [
        &["time"][..],
        &["critical-chain", "attestd.service"][..],
        &["blame", "--no-pager"][..],
    ] {
        if let Ok((0, out, _)) = vm.exec("/usr/bin/systemd-analyze", args, Duration::from_secs(60))
        {
            for line in out.lines().take(25) {
                eprintln!("podvm {scenario} systemd-analyze {}: {line}", args[0]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tee_attestd_refuses_visibly_and_nothing_answers() {
    let img = podvm::image();
    // The host's user-data also brings an aa.toml naming a command for attestd
    // to run as its plugin, and a policy accepting any image (issue 26): init-data
    // carries neither, so the aa.toml is the host's, read for upstream's keys only.
    let hostile_aa = "[token_configs.kbs]\nurl = \"https://10.0.2.2:8080\"\n\n[plugins]\nprimary = \"evil\"\ndev_mode = true\n\n[plugins.attester.evil]\nlaunch = \"process\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"touch /run/host-command-ran; exec sleep 600\"]\ntransport = \"ttrpc\"\n";
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let hostile = format!(
        "{}- path: /run/peerpod/aa.toml\n  content: |\n{}- path: /run/peerpod/policy.json\n  content: '{{\"default\": [{{\"type\": \"insecureAcceptAnything\"}}]}}'\n",
        user_data(INITDATA_WITHOUT_AA),
        indent(hostile_aa)
    );
    let mut vm = PodVm::boot(
        &img,
        Boot {
            user_data: hostile,
            ..Default::default()
        },
    );
    // The refusal's line to its end (the serial port may be read mid-line).
    let t = vm
        .wait_journal(0, "(attestd never falls back to it unasked)", BOOT_WITHIN)
        .unwrap_or_else(|e| panic!("{e}"));
    figure("no-tee", "boot to refusal", t);
    let j = vm.journal();
    // The first-boot step ran on the user-data before attestd.
    assert!(j.contains("with init-data"), "provisioning did not run");
    // It probed every hardware TEE of the image's lock and says so; no sample.
    for tee in ["tdx", "snp", "tpm", "az-snp-vtpm", "az-tdx-vtpm"] {
        assert!(
            j.contains(&format!("{tee} (not found)")),
            "{tee} not probed"
        );
    }
    assert!(
        j.contains("attestd never falls back to it unasked"),
        "no word on the sample"
    );
    // The host's files: its policy never written, its aa.toml read as
    // unmeasured, its [plugins] ignored, its command never run.
    assert!(
        j.contains("skipped \"/run/peerpod/policy.json\": only init-data (measured) may supply it"),
        "the host's policy.json was not refused"
    );
    assert!(
        j.contains("the -c file comes from user-data, which is unmeasured"),
        "no word that aa.toml is unmeasured"
    );
    assert!(
        j.contains("key=plugins"),
        "the host's [plugins] was not ignored"
    );
    for (path, what) in [
        ("/run/host-command-ran", "the host's command ran"),
        (
            "/run/peerpod/policy.json",
            "the host's policy.json was written",
        ),
    ] {
        let (code, _, _) = vm
            .exec("/usr/bin/test", &["-e", path], Duration::from_secs(60))
            .unwrap();
        assert_eq!(code, 1, "{what}");
    }
    // A refusal for good: attestd's own status, which its unit does not restart
    // (RestartPreventExitStatus), so the refusal is said once.
    // (Asked of systemd, not read from the serial port: attestd starts beside
    // sysinit.target, and what systemd says before journald runs is not
    // forwarded there.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = in_guest(
            &vm,
            "/usr/bin/systemctl",
            &[
                "show",
                "attestd.service",
                "--property=NRestarts,ExecMainStatus,ActiveState",
            ],
        );
        if out.contains("ActiveState=failed") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut props: Vec<&str> = out.lines().collect();
    props.sort();
    assert_eq!(
        props,
        ["ActiveState=failed", "ExecMainStatus=69", "NRestarts=0"],
        "{out}"
    );
    assert_eq!(
        vm.journal().matches("no TEE selected").count(),
        1,
        "the refusal was retried"
    );
    // On the host: the AA API is not there (CDH was never started on its socket).
    assert!(
        !vm.journal()
            .contains("Started confidential-data-hub.service"),
        "CDH started without attestd"
    );
    let (guest_sees, _, _) = vm
        .exec(
            "/usr/bin/test",
            &[
                "-S",
                "/run/confidential-containers/attestation-agent/attestation-agent.sock",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(guest_sees, 1, "the AA socket exists in the guest");
    let e = evidence(&vm, b"x").await.unwrap_err();
    eprintln!("the host's GetEvidence: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_vtpm_the_pinned_tpm_image_serves_survives_a_kill_and_a_reboot() {
    let img = podvm::image();
    // The user-data on a cidata disk, as libvirt's provider gives it (issue 39).
    let mut vm = boot_vtpm(
        &img,
        Boot {
            cidata: true,
            ..Boot::default()
        },
    );
    ready_as(&mut vm, "tpm", "vtpm", "boot to AA API ready").await;
    let j = vm.journal();
    assert!(
        j.contains("selected tee=tpm plugin=tpm"),
        "no selection in the journal"
    );
    // Found by its label and read from the device: never mounted, so no
    // isofs module was loaded for it, and nothing is left for others to read.
    assert!(
        j.contains("user-data from cidata (disk /dev/vdb)"),
        "the cidata disk was not read"
    );
    let mounts = in_guest(&vm, "/bin/cat", &["/proc/mounts"]);
    assert!(!mounts.contains("/media/cidata"), "{mounts}");
    let modules = in_guest(&vm, "/bin/cat", &["/proc/modules"]);
    assert!(!modules.contains("isofs"), "{modules}");
    // This image's tmpfiles.d puts nothing in /run/peerpod, so the generator
    // (which ran: its drop-in is there) left provisioning free of
    // systemd-tmpfiles-setup (and the journal's flush it waits for).
    let drop_ins = in_guest(
        &vm,
        "/usr/bin/systemctl",
        &[
            "show",
            "attestd-provision.service",
            "--property=DropInPaths",
            "--value",
        ],
    );
    assert!(
        drop_ins.contains("/run/systemd/generator/attestd-provision.service.d/50-tmpfiles.conf"),
        "{drop_ins}"
    );
    let after = in_guest(
        &vm,
        "/usr/bin/systemctl",
        &[
            "show",
            "attestd-provision.service",
            "--property=After",
            "--value",
        ],
    );
    assert!(!after.contains("systemd-tmpfiles-setup"), "{after}");

    // Evidence: the quote verifies on the host against the AK the guest reports,
    // with tpm2_checkquote, over the nonce the host chose.
    let rd: Vec<u8> = (100..148).collect();
    let ev = evidence(&vm, &rd).await.unwrap();
    figure("vtpm", "boot to first evidence", vm.started.elapsed());
    guest_figures(&vm, "vtpm");
    let q = parse(&ev);
    assert_eq!(q.pcrs.len(), 24);
    assert!(
        checkquote(&q, &nonce(&rd)),
        "tpm2_checkquote refused the quote"
    );
    assert!(!checkquote(&q, &nonce(b"another nonce")));
    // The swtpm's PCR 8 holds the init-data the host sent, bound once.
    assert_eq!(q.pcrs[8], pcr8_after_binding(INITDATA), "PCR 8");
    let pcr23_at_start = q.pcrs[23].clone();
    // SeaBIOS (qemu's default) measures nothing of a directly booted kernel:
    // PCR 9 stays zero, and only a UEFI boot carries the root hash (below).
    assert_eq!(q.pcrs[9], vec![0u8; 32], "PCR 9 under SeaBIOS");
    root_is_verified_and_read_only(&vm);
    // configfs (configfs-tsm's reports) was mounted before attestd started.
    let mounted = guest_usec(
        &vm,
        "sys-kernel-config.mount",
        "ActiveEnterTimestampMonotonic",
    );
    let attestd_started = guest_usec(&vm, "attestd.service", "ExecMainStartTimestampMonotonic");
    assert!(
        mounted > 0 && mounted <= attestd_started,
        "configfs mounted at {mounted} µs, attestd started at {attestd_started} µs"
    );

    // A runtime measurement moves the event log's register.
    let req = t::ExtendRuntimeMeasurementRequest {
        Domain: "github.com/confidential-containers".into(),
        Operation: "PullImage".into(),
        Content: "{\"image\":\"x\",\"digest\":\"sha256:00\"}".into(),
        ..Default::default()
    };
    let r = vm
        .aa()
        .await
        .unwrap()
        .extend_runtime_measurement(ctx(), &req)
        .await
        .unwrap();
    assert_eq!(
        r.Result.enum_value_or_default(),
        t::RuntimeMeasurementResult::OK
    );
    let q = parse(&evidence(&vm, &rd).await.unwrap());
    assert_ne!(q.pcrs[23], pcr23_at_start, "PCR 23 did not move");

    // The attester runs under runc from the prefetched layout: no container
    // engine in the boot path.
    assert!(
        j.contains("plugin ready plugin=tpm launch=oci"),
        "the attester was not launched by the oci backend"
    );
    // Kill the attester's container in the guest: attestd restarts it and
    // calls succeed again.
    let ps = runc_containers;
    let before = ps(&vm);
    assert_eq!(before.len(), 1, "containers: {before:?}");
    in_guest(&vm, "/usr/sbin/runc", &["kill", &before[0], "KILL"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let ev = loop {
        match evidence(&vm, &rd).await {
            Ok(ev) => {
                let now = ps(&vm);
                if now.len() == 1 && now != before {
                    break ev;
                }
            }
            Err(e) => eprintln!("while restarting: {e}"),
        }
        assert!(Instant::now() < deadline, "the attester did not come back");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(checkquote(&parse(&ev), &nonce(&rd)));

    // systemctl reload after a drop-in changed the plugin's table (here its
    // environment): a second container starts beside the first, takes the calls,
    // and the first is stopped; calls go on succeeding.
    let images = img.manifest["images"].as_array().unwrap();
    let tpm_image = images
        .iter()
        .filter_map(|i| i.as_str()?.strip_prefix("tpm "))
        .next()
        .expect("the tpm image in the pod VM");
    let drop_in = format!(
        "[plugins.attester.tpm]\nlaunch = \"oci\"\ntransport = \"ttrpc\"\ntee = \"tpm\"\nimage = \"{tpm_image}\"\nenv = {{ ATTESTD_LOG = \"debug\" }}\n"
    );
    let before_reload = ps(&vm);
    let mark = vm.journal().len();
    // The root is read-only (dm-verity): an operator in the guest puts memory
    // over the drop-in directory first. systemctl reload returns once attestd
    // reports the reload (attestd reload waits for it), and fails if the
    // plugin kept its old instance.
    in_guest(
        &vm,
        "/bin/sh",
        &["-c", &format!("mount -t tmpfs -o mode=0755 drop-ins /etc/attestd/attestd.toml.d && printf '%s' '{drop_in}' > /etc/attestd/attestd.toml.d/50-reload.toml && systemctl reload attestd.service")],
    );
    vm.wait_journal(mark, "reload: replaced", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = evidence(&vm, &rd).await.unwrap();
    assert!(checkquote(&parse(&ev), &nonce(&rd)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = ps(&vm);
        if now.len() == 1 && now != before_reload {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers after the reload: {now:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Reboot: the TPM resets, the event log starts again, and init-data is bound
    // again, once.
    let mark = vm.journal().len();
    vm.reset();
    // attestd's own line: systemd's "Started attestd.service" may come before
    // journald runs (attestd starts beside sysinit.target), and is then not
    // forwarded to the serial port.
    vm.wait_journal(mark, "attestd ready", BOOT_WITHIN)
        .unwrap_or_else(|e| panic!("{e}"));
    ready_as(&mut vm, "tpm", "vtpm", "reboot to AA API ready").await;
    let q = parse(&evidence(&vm, &rd).await.unwrap());
    assert!(checkquote(&q, &nonce(&rd)));
    assert_eq!(
        q.pcrs[8],
        pcr8_after_binding(INITDATA),
        "PCR 8 after the reboot"
    );
    assert_eq!(q.pcrs[23], pcr23_at_start, "PCR 23 after the reboot");
}

/// The guest's root is the dm-verity device, mounted read-only; what must be
/// writable is memory.
fn root_is_verified_and_read_only(vm: &PodVm) {
    let mounts = in_guest(
        vm,
        "/usr/bin/findmnt",
        &["-n", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS", "-T", "/"],
    );
    let mut f = mounts.split_whitespace();
    let (target, source, fstype, options) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
    assert_eq!(target, Some("/"), "{mounts}");
    assert!(
        matches!(source, Some("/dev/mapper/root" | "/dev/dm-0")),
        "the root is not the dm-verity device: {mounts}"
    );
    assert_eq!(fstype, Some("ext4"), "{mounts}");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the root is writable: {mounts}"
    );
    let table = in_guest(vm, "/usr/sbin/dmsetup", &["table", "root"]);
    assert!(table.contains(" verity 1 "), "not a verity table: {table}");
    // Nothing on the disk can be changed from inside either.
    let (code, _, err) = vm
        .exec(
            "/usr/bin/touch",
            &["/etc/attestd/x"],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_ne!(code, 0, "/etc is writable");
    assert!(err.contains("Read-only file system"), "{err}");
    for (dir, fstype) in [("/run", "tmpfs"), ("/var", "overlay"), ("/tmp", "tmpfs")] {
        let out = in_guest(vm, "/usr/bin/findmnt", &["-n", "-o", "FSTYPE", dir]);
        assert_eq!(out.trim(), fstype, "{dir}");
    }
}

/// The firmware's and the EFI stub's measurements in the guest, as
/// tpm2_eventlog reads them.
fn guest_event_log(vm: &PodVm) -> String {
    let b64 = in_guest(
        vm,
        "/usr/bin/base64",
        &["-w0", "/sys/kernel/security/tpm0/binary_bios_measurements"],
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), raw).unwrap();
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(f.path())
        .output()
        .expect("tpm2_eventlog is missing: apt-get install tpm2-tools");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first block of `attestd.toml` (the `[config_file]` ceiling) on the root
/// disk, one byte of it inverted in a VM's copy-on-write layer.
fn attestd_toml_tampered(img: &podvm::Image) -> Vec<u64> {
    vec![podvm::offset_of(img, "/etc/attestd/attestd.toml") + 16]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_disk_the_host_changed_stops_the_boot_in_the_initramfs() {
    let img = podvm::image();
    let mut vm = boot_vtpm(
        &img,
        Boot {
            tamper: attestd_toml_tampered(&img),
            no_reboot: true,
            ..Default::default()
        },
    );
    let (console, took) = stopped_in_the_initramfs(&mut vm).await;
    figure("tampered", "boot to the initramfs's refusal", took);
    let refusal = console
        .lines()
        .find(|l| l.contains("attestd initramfs: dm-verity refused the root disk"))
        .unwrap_or_else(|| panic!("no refusal on the console: {console}"));
    assert!(
        refusal.contains("cannot read /etc/attestd/attestd.toml (blocks differ"),
        "{refusal}"
    );
    // dm-verity's own word for the block.
    assert!(
        console.contains("device-mapper: verity") && console.contains("is corrupted"),
        "no dm-verity error on the console"
    );
    drop(vm);

    // A test image booted without the check says so, and the host's change
    // reaches attestd: what dm-verity stopped above.
    let mut vm = PodVm::boot(
        &img,
        Boot {
            user_data: user_data(INITDATA),
            tamper: attestd_toml_tampered(&img),
            append: "attestd.unverified_root".into(),
            ..Default::default()
        },
    );
    vm.wait_journal(0, "/etc/attestd/attestd.toml", BOOT_WITHIN)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm.console()
            .contains("attestd initramfs: WARNING: the root /dev/vda is mounted WITHOUT dm-verity"),
        "an unverified boot did not say so"
    );
}

/// Until the initramfs stops `vm` (booted with `no_reboot`: panic=-1 resets
/// the machine, and -no-reboot ends qemu instead), and systemd never ran
/// (nothing reached the journal's port): the console, and how long it took.
async fn stopped_in_the_initramfs(vm: &mut PodVm) -> (String, Duration) {
    let deadline = Instant::now() + BOOT_WITHIN;
    while !vm.exited() {
        assert!(
            Instant::now() < deadline,
            "the VM did not stop: {}",
            vm.console()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = vm.started.elapsed();
    assert_eq!(vm.journal(), "", "the boot went past the initramfs");
    (vm.console(), took)
}

/// The console of a boot of `initrd` (with `append`), stopped in the initramfs.
async fn initrd_refusal(img: &podvm::Image, initrd: PathBuf, append: &str) -> String {
    let mut vm = PodVm::boot(
        img,
        Boot {
            initrd: Some(initrd),
            append: append.into(),
            no_reboot: true,
            ..Default::default()
        },
    );
    stopped_in_the_initramfs(&mut vm).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_not_built_for_tests_boots_no_unverified_root() {
    let img = podvm::image();
    let dir = tempfile::tempdir().unwrap();
    // The test image's initramfs less its marker is a production image's.
    let production = podvm::initramfs_without(&img, &["test-image"], &dir.path().join("prod"));
    let console = initrd_refusal(&img, production, "attestd.unverified_root").await;
    assert!(
        console.contains(
            "attestd initramfs: attestd.unverified_root on the command line: refused, this image was not built for tests"
        ),
        "{console}"
    );
    // Without its root hash, no image mounts its root.
    let hashless = podvm::initramfs_without(&img, &["root.verity"], &dir.path().join("hashless"));
    let console = initrd_refusal(&img, hashless, "").await;
    assert!(
        console.contains(
            "attestd initramfs: no root hash in the initramfs (/root.verity): refusing an unverified root"
        ),
        "{console}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_uefi_the_vtpm_quote_carries_the_pcrs_build_sh_computed() {
    let img = podvm::image();
    let mut vm = boot_vtpm(
        &img,
        Boot {
            uefi: true,
            ..Default::default()
        },
    );
    ready_as(&mut vm, "tpm", "vtpm-uefi", "boot to AA API ready").await;
    let rd: Vec<u8> = (3..51).collect();
    let q = parse(&evidence(&vm, &rd).await.unwrap());
    assert!(
        checkquote(&q, &nonce(&rd)),
        "tpm2_checkquote refused the quote"
    );
    // The kernel (PCR 4) and the initramfs with the root hash and the command
    // line (PCR 9), as containers/podvm/reference-values.py computed them.
    for pcr in [4, 9] {
        let want = img.reference(&format!("pcr{pcr}"));
        if q.pcrs[pcr] != want {
            panic!(
                "PCR {pcr}: the quote has {}, build.sh computed {}; the guest's event log:\n{}",
                hex::encode(&q.pcrs[pcr]),
                hex::encode(&want),
                guest_event_log(&vm)
            );
        }
    }
    // Init-data is bound as under SeaBIOS: the firmware leaves PCR 8 to it.
    assert_eq!(q.pcrs[8], pcr8_after_binding(INITDATA), "PCR 8");
    root_is_verified_and_read_only(&vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_emulated_azure_snp_cvm_az_snp_vtpm_is_selected_through_the_kernels_tpm() {
    let img = podvm::image();
    let images = img.manifest["images"].to_string();
    assert!(
        images.contains("az-snp-vtpm "),
        "the pod VM image lacks az-snp-vtpm: containers/build.sh az-snp-vtpm, then rebuild it ({images})"
    );
    let tpm = VmTpm::new();
    let ak_pem = tpm.provision(attestd_e2e::azure::provision_vtpm);
    let ak = openssl::pkey::PKey::public_key_from_pem(&std::fs::read(ak_pem).unwrap()).unwrap();
    let imds = attestd_e2e::azure::FakeImds::start(Duration::ZERO).await;
    let imds_port: u16 = imds.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut vm = PodVm::boot(
        &img,
        Boot {
            user_data: user_data(INITDATA),
            tpm: Some(tpm),
            vendor: Some("Microsoft Corporation".into()),
            imds_port: Some(imds_port),
            ..Default::default()
        },
    );
    ready_as(
        &mut vm,
        "az-snp-vtpm",
        "azure-snp-vtpm",
        "boot to AA API ready",
    )
    .await;
    let rd: Vec<u8> = (1..=48).collect();
    let ev: serde_json::Value = serde_json::from_slice(&evidence(&vm, &rd).await.unwrap()).unwrap();
    figure(
        "azure-snp-vtpm",
        "boot to first evidence",
        vm.started.elapsed(),
    );
    guest_figures(&vm, "azure-snp-vtpm");
    // The HCL report is the one provisioned into the vTPM, read by the plugin
    // through the guest kernel's TPM device; the VCEK came from the fake IMDS
    // over the forwarded 169.254.169.254.
    let b64url = |k: &str| {
        base64::engine::general_purpose::URL_SAFE
            .decode(ev[k].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(
        b64url("hcl_report"),
        attestd_e2e::azure::read_fixture("snp-hcl-report-2048.bin")
    );
    let vcek = openssl::x509::X509::from_pem(&attestd_e2e::azure::read_fixture("snp-vcek.pem"))
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(b64url("vcek"), vcek);
    let quote = attestd_e2e::azure::quote_of(&ev);
    quote.verify(&ak, &rd).unwrap();
    assert_eq!(vm.journal().matches("selected tee=az-snp-vtpm").count(), 1);
}

/// The policy a tenant puts in init-data: images of the pulling VM's registry
/// must be signed by this GPG key (inline, `keyData`), and nothing else runs.
fn policy_trusting(key: &[u8]) -> String {
    serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {podvm::PULL_REGISTRY.split('/').next().unwrap(): [{
            "type": "signedBy", "keyType": "GPGKeys",
            "keyData": base64::engine::general_purpose::STANDARD.encode(key)
        }]}}
    })
    .to_string()
}

/// User-data for the pulling VM: init-data (measured) carrying the policy; the
/// registry's CA and where its signatures are (unmeasured: the digest pin and
/// the policy decide what runs, whoever serves it).
fn pulling_user_data(policy: &str, ca: &str, lookaside: &str) -> String {
    let host = podvm::PULL_REGISTRY.split('/').next().unwrap();
    let initdata = format!("{INITDATA}\"policy.json\" = '''{policy}'''\n");
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "{}- path: /run/peerpod/certs.d/{host}/ca.crt\n  content: |\n{}- path: /run/peerpod/registries.d/attestd.yaml\n  content: |\n{}",
        user_data(&initdata),
        indent(ca),
        indent(&format!("docker:\n  {host}:\n    lookaside: {lookaside}\n"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_vm_with_only_its_lock_and_a_policy_pulls_verifies_and_runs_its_attester() {
    let img = podvm::pulling_image();
    let images = img.manifest["images"].as_array().unwrap();
    let pinned = images
        .iter()
        .filter_map(|i| i.as_str()?.strip_prefix("tpm "))
        .next()
        .expect("the tpm image in the pulling pod VM's lock");
    let (name, digest) = pinned.split_once('@').unwrap();
    let guest_host = podvm::PULL_REGISTRY.split('/').next().unwrap();
    let repo = name.strip_prefix(&format!("{guest_host}/")).unwrap();
    // Published as an operator would: from the store this checkout built, the
    // digest kept, signed by key 0 for the name the VM pulls it by.
    let (local, local_digest) = attestd_e2e::locked_image("tpm");
    assert_eq!(
        local_digest, digest,
        "the pulling VM pins another tpm image"
    );
    let reg = attestd_e2e::registry::Registry::start_for(&[guest_host.split(':').next().unwrap()]);
    let pushed = reg.push_as(
        &format!("{local}@{digest}"),
        repo,
        "boot",
        Some(0),
        Some(&format!("{name}:boot")),
    );
    assert_eq!(pushed, digest, "the registry changed the digest");
    let reg_port: u16 = reg.host.rsplit(':').next().unwrap().parse().unwrap();
    let sigs_port = reg.serve_signatures();
    let lookaside_at = "10.0.2.100:5001";
    let forwards = vec![
        (guest_host.to_string(), reg_port),
        (lookaside_at.to_string(), sigs_port),
    ];
    let lookaside = format!("http://{lookaside_at}");
    // A vTPM guest whose init-data's policy trusts registry key `key`.
    let boot_trusting = |key: usize| {
        PodVm::boot(
            &img,
            Boot {
                user_data: pulling_user_data(
                    &policy_trusting(&reg.public_key(key)),
                    &reg.ca_pem,
                    &lookaside,
                ),
                tpm: Some(VmTpm::new()),
                forwards: forwards.clone(),
                ..Default::default()
            },
        )
    };

    // A policy trusting another key: the pull is refused with the reason, and
    // no attester runs.
    {
        let mut vm = boot_trusting(1);
        let t = vm
            .wait_journal(0, "Invalid GPG signature", BOOT_WITHIN)
            .unwrap_or_else(|e| panic!("{e}"));
        figure("pull", "boot to refusal (untrusted signer)", t);
        let j = vm.journal();
        assert!(
            j.contains(&format!("cannot pull {pinned}")),
            "the refusal does not name the image"
        );
        let out = podman(
            &vm,
            &["images", "--noheading", "--format", "{{.Repository}}"],
        );
        assert!(
            !out.contains(name),
            "the refused image is in the store: {out}"
        );
        let e = evidence(&vm, b"x").await.unwrap_err();
        eprintln!("the host's GetEvidence with the image refused: {e}");
    }

    // The tenant's key: pulled by digest, verified, run; its quote verifies.
    let mut vm = boot_trusting(0);
    ready_as(
        &mut vm,
        "tpm",
        "pull",
        "boot to AA API ready (image pulled)",
    )
    .await;
    let j = vm.journal();
    assert!(
        j.contains(
            "pulled: pulled from 10.0.2.100:5000, accepted by /run/peerpod/policy.json (signedBy)"
        ),
        "no pull in the journal"
    );
    for line in j
        .lines()
        .filter(|l| l.contains("pulled") || l.contains("pulling"))
    {
        eprintln!("guest: {line}");
    }
    let rd: Vec<u8> = (7..55).collect();
    let q = parse(&evidence(&vm, &rd).await.unwrap());
    assert!(
        checkquote(&q, &nonce(&rd)),
        "tpm2_checkquote refused the quote"
    );
    // The policy came in init-data, which PCR 8 binds.
    let initdata = format!(
        "{INITDATA}\"policy.json\" = '''{}'''\n",
        policy_trusting(&reg.public_key(0))
    );
    assert_eq!(q.pcrs[8], pcr8_after_binding(&initdata), "PCR 8");
    // The guest's store holds the image under the pinned name and digest, and
    // the running container is that image.
    let running = podman(
        &vm,
        &[
            "ps",
            "--filter",
            "name=attestd-",
            "--format",
            "{{.ImageID}}",
        ],
    );
    let running = running.trim();
    assert!(!running.is_empty(), "no attester container runs");
    let out = podman(
        &vm,
        &[
            "image",
            "inspect",
            "--format",
            "{{.ID}} {{range .RepoDigests}}{{.}} {{end}}",
            pinned,
        ],
    );
    assert!(out.contains(pinned), "{out}");
    assert!(
        out.starts_with(&running[..12]),
        "running {running}, pulled {out}"
    );
}

//! The pod VM of `containers/podvm/build.sh --test-hooks`, booted under qemu for
//! the boot tests: user-data over fw_cfg, a TPM from swtpm, the AA API reached
//! through the CDH stand-in on a forwarded port, the guest's journal on its
//! second serial port, and commands in the guest through the qemu guest agent.
//! A test that fails prints the guest's journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::swtpm::Swtpm;
use attestd_proto::ttrpc::attestation_agent_ttrpc::AttestationAgentServiceClient as TtrpcAa;

/// The port the CDH stand-in relays to the AA socket, in the guest.
const GUEST_AA_PORT: u16 = 50000;
/// What systemd logs once attestd failed too often to be restarted again.
const GAVE_UP: &str = "Failed to start attestd.service";

/// A built pod VM image.
pub struct Image {
    pub dir: PathBuf,
    /// podvm.json: what the build wrote about the image.
    pub manifest: serde_json::Value,
}

impl Image {
    /// The kernel command line the image was built for (its reference values
    /// cover it): every boot starts from it, `Boot::append` follows.
    pub fn cmdline(&self) -> &str {
        self.manifest["reference_values"]["cmdline"]
            .as_str()
            .unwrap_or(CMDLINE)
    }

    /// The memory the image was built for (its reference values cover it).
    pub fn memory_mib(&self) -> u64 {
        self.manifest["reference_values"]["memory_mib"]
            .as_u64()
            .unwrap_or(1024)
    }

    /// A reference value build.sh computed (`pcr4`, `pcr9`).
    pub fn reference(&self, key: &str) -> Vec<u8> {
        let v = self.manifest["reference_values"][key]
            .as_str()
            .unwrap_or_else(|| {
                panic!("podvm.json has no reference_values.{key}: rebuild the image")
            });
        hex::decode(v).unwrap()
    }
}

/// The image containers/podvm/build.sh wrote (`ATTESTD_PODVM_DIR`, default
/// target/podvm).
pub fn image() -> Image {
    image_in("ATTESTD_PODVM_DIR", "target/podvm", "")
}

/// The image `containers/podvm/build.sh --registry 10.0.2.100:5000/attestd
/// --out target/podvm-pull` wrote (`ATTESTD_PODVM_PULL_DIR`): nothing
/// prefetched, its attester pulled at boot.
pub fn pulling_image() -> Image {
    let img = image_in(
        "ATTESTD_PODVM_PULL_DIR",
        "target/podvm-pull",
        " --registry 10.0.2.100:5000/attestd --out target/podvm-pull",
    );
    assert_eq!(
        img.manifest["registry"],
        PULL_REGISTRY,
        "the pod VM in {} does not pull from {PULL_REGISTRY}",
        img.dir.display()
    );
    img
}

/// The image `containers/podvm/build.sh --coco --test-hooks --out
/// target/podvm-coco` wrote (`ATTESTD_PODVM_COCO_DIR`): upstream's
/// Confidential Containers guest (kata-agent, agent-protocol-forwarder, CDH,
/// api-server-rest) around attestd.
pub fn coco_image() -> Image {
    let img = image_in(
        "ATTESTD_PODVM_COCO_DIR",
        "target/podvm-coco",
        " --coco --out target/podvm-coco",
    );
    assert_eq!(
        img.manifest["coco"],
        true,
        "the pod VM in {} was built without --coco",
        img.dir.display()
    );
    img
}

/// Where the pulling pod VM's lock names its images (a guest address the
/// boot test forwards to its registry).
pub const PULL_REGISTRY: &str = "10.0.2.100:5000/attestd";

fn image_in(var: &str, default: &str, args: &str) -> Image {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(default));
    let manifest = std::fs::read(dir.join("podvm.json")).unwrap_or_else(|e| {
        panic!(
            "no pod VM image in {} ({e}): build it with containers/podvm/build.sh --test-hooks{args} (as root)",
            dir.display()
        )
    });
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["test_hooks"], true,
        "the pod VM in {} was built without --test-hooks: the boot tests reach the guest through them",
        dir.display()
    );
    Image { dir, manifest }
}

/// qemu's accelerator: `ATTESTD_PODVM_ACCEL`, else KVM where a probe boots the
/// kernel with it (nested KVM hangs on some machines), else TCG.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<String> = OnceLock::new();
    ACCEL.get_or_init(|| {
        if let Ok(a) = std::env::var("ATTESTD_PODVM_ACCEL") {
            return a;
        }
        if Path::new("/dev/kvm").exists() && kvm_boots(&image()) {
            "kvm".into()
        } else {
            "tcg".into()
        }
    })
}

/// Whether the image's kernel gets as far as looking for its root disk under
/// KVM within 10 s (without one it panics, which is the sign it ran).
fn kvm_boots(img: &Image) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "256",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-monitor", "none"])
        .arg("-kernel")
        .arg(img.dir.join("vmlinuz"))
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is missing: apt-get install qemu-system-x86");
    let deadline = Instant::now() + Duration::from_secs(10);
    let booted = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Kernel panic") || text.contains("VFS:") {
            break true;
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    booted
}

/// A TPM for a VM: swtpm state that can be provisioned first (over swtpm's TCP
/// interface, with tpm2-tools) and then served to qemu (`-tpmdev emulator`).
pub struct VmTpm {
    dir: tempfile::TempDir,
    child: Option<crate::Reaped>,
}

impl Default for VmTpm {
    fn default() -> Self {
        Self::new()
    }
}

impl VmTpm {
    pub fn new() -> VmTpm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        VmTpm { dir, child: None }
    }

    /// Run `f` on this TPM's state, before a VM uses it.
    pub fn provision<T>(&self, f: impl FnOnce(&Swtpm, &Path) -> T) -> T {
        let tpm = Swtpm::start_in(
            &self.dir.path().join("state"),
            "not-need-init,startup-clear",
        );
        let out = f(&tpm, self.dir.path());
        // Shut down cleanly: the state is saved for the VM's swtpm.
        let _ = tpm.tool(&["tpm2_shutdown", "-c"]);
        drop(tpm);
        out
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("swtpm.sock")
    }

    /// Serve the state to qemu on a control socket.
    fn start(&mut self) {
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", self.dir.path().join("state").display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", self.sock().display()))
            .arg("--log")
            .arg(format!(
                "file={},level=1",
                self.dir.path().join("swtpm.log").display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("swtpm is missing: apt-get install swtpm");
        self.child = Some(crate::Reaped(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.sock()).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen for qemu");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How to boot.
#[derive(Default)]
pub struct Boot {
    /// The user-data the provider passes (cloud-config).
    pub user_data: String,
    pub tpm: Option<VmTpm>,
    /// SMBIOS system manufacturer (`/sys/class/dmi/id/sys_vendor` in the guest).
    pub vendor: Option<String>,
    /// A host port the guest reaches as Azure's IMDS, 169.254.169.254:80.
    pub imds_port: Option<u16>,
    /// (guest address `ip:port`, host port on 127.0.0.1): what the guest
    /// reaches there, e.g. a registry. The address must be inside the user
    /// network (10.0.2.0/24; 169.254.0.0/16 with `imds_port`).
    pub forwards: Vec<(String, u16)>,
    /// Boot through Debian's OVMF (UEFI, measuring what it loads into the
    /// TPM's PCRs) instead of qemu's default SeaBIOS, which measures nothing
    /// of a directly booted kernel.
    pub uefi: bool,
    /// Words added to the kernel command line.
    pub append: String,
    /// Byte offsets of the root disk to change (each byte inverted) in this
    /// VM's copy-on-write layer, as a host rewriting the disk would.
    pub tamper: Vec<u64>,
    /// Exit instead of resetting when the guest asks for a reset (a boot that
    /// stops at the initramfs panics, and panic=-1 resets).
    pub no_reboot: bool,
    /// Guest TCP ports forwarded from 127.0.0.1 on the host (a free port
    /// each: [`PodVm::host_port`]), e.g. agent-protocol-forwarder's 15150.
    pub hostfwd: Vec<u16>,
    /// Another initramfs than the image's (see [`initramfs_without`]).
    pub initrd: Option<PathBuf>,
    /// The user-data on a `cidata` ISO disk (libvirt's and byom's form, read
    /// from `/media/cidata/user-data` by process-user-data) instead of qemu's
    /// fw_cfg.
    pub cidata: bool,
}

/// A NoCloud config disk as libvirt's provider makes it (cloud-api-adaptor's
/// smoke test: `genisoimage -volid cidata -joliet -rock user-data meta-data`).
fn cidata_iso(dir: &Path, user_data: &str) -> PathBuf {
    let src = dir.join("cidata");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("user-data"), user_data).unwrap();
    std::fs::write(
        src.join("meta-data"),
        "instance-id: podvm\nlocal-hostname: podvm\n",
    )
    .unwrap();
    let iso = dir.join("cidata.iso");
    must(
        Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(src.join("user-data"))
            .arg(src.join("meta-data")),
        "genisoimage is missing: apt-get install genisoimage",
    );
    iso
}

/// Run `cmd`, which must succeed (`missing`: what to say when it cannot run).
fn must(cmd: &mut Command, missing: &str) {
    let out = cmd.output().expect(missing);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's initramfs without the named files (e.g. `test-image`, which
/// makes it a production image's), repacked as build.sh packs it, in `dir`.
pub fn initramfs_without(img: &Image, names: &[&str], dir: &Path) -> PathBuf {
    let tree = dir.join("initramfs");
    std::fs::create_dir_all(&tree).unwrap();
    let sh = |script: &str| {
        must(
            Command::new("sh").args(["-c", script]).current_dir(&tree),
            "sh",
        )
    };
    sh(&format!(
        "cpio -id --quiet < '{}'",
        img.dir.join("initrd.img").display()
    ));
    for n in names {
        std::fs::remove_file(tree.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    let out = dir.join("initrd.img");
    sh(&format!(
        "find . | LC_ALL=C sort | cpio -o -H newc --quiet > '{}'",
        out.display()
    ));
    out
}

/// The kernel command line an image built before `--cmdline` boots with.
const CMDLINE: &str = "root=/dev/vda console=ttyS0 panic=-1";

/// Debian's OVMF (package ovmf): its code, and the variable store each VM
/// copies.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Where `path` (absolute, in the image's root file system) starts on the
/// root disk: its first block's byte offset (debugfs; 4 KiB blocks).
pub fn offset_of(img: &Image, path: &str) -> u64 {
    let out = Command::new("debugfs")
        .args(["-R", &format!("bmap {path} 0")])
        .arg(img.dir.join("rootfs.img"))
        .output()
        .expect("debugfs is missing: apt-get install e2fsprogs");
    let text = String::from_utf8_lossy(&out.stdout);
    let block: u64 = text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "debugfs bmap {path}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(block > 0, "{path} has no first block");
    block * 4096
}

/// One VM at a time: two emulated guests on a two-core machine each take
/// several times as long to boot, and the boot figures would mean nothing.
static VM_SLOT: Mutex<()> = Mutex::new(());

/// A booted pod VM; killed on drop, its journal printed if the test failed.
pub struct PodVm {
    qemu: Child,
    dir: tempfile::TempDir,
    /// The forwarded AA API (host side, TCP).
    pub port: u16,
    /// (guest port, host port) of `Boot::hostfwd`.
    forwarded: Vec<(u16, u16)>,
    /// When qemu was started (or last reset).
    pub started: Instant,
    /// Where the journal of this boot starts.
    mark: usize,
    _tpm: Option<VmTpm>,
    _slot: MutexGuard<'static, ()>,
}

impl PodVm {
    pub fn boot(img: &Image, mut boot: Boot) -> PodVm {
        // A test that failed holding it poisons it; the next VM may still boot.
        let slot = VM_SLOT.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let disk = d.join("disk.qcow2");
        // A copy-on-write layer per VM: every test boots the image as built.
        must(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(img.dir.join("rootfs.img"))
                .arg(&disk),
            "qemu-img is missing: apt-get install qemu-utils",
        );
        for &at in &boot.tamper {
            let mut byte = [0u8];
            let f = std::fs::File::open(img.dir.join("rootfs.img")).unwrap();
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, at).unwrap();
            must(
                Command::new("qemu-io")
                    .args(["-f", "qcow2", "-c"])
                    .arg(format!("write -P {} {at} 1", !byte[0]))
                    .arg(&disk),
                "qemu-io is missing: apt-get install qemu-utils",
            );
        }
        std::fs::write(d.join("user-data"), &boot.user_data).unwrap();
        let port = crate::free_port();
        // Azure's IMDS address must be inside the user network to be forwarded.
        let mut net = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_AA_PORT}");
        if let Some(imds) = boot.imds_port {
            net = format!(
                "user,id=n0,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_AA_PORT},guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO TCP:127.0.0.1:{imds}"
            );
        }
        // Distinct host ports: free_port can hand the same free port out twice.
        let mut taken = vec![port];
        let forwarded: Vec<(u16, u16)> = boot
            .hostfwd
            .iter()
            .map(|&g| {
                let p = std::iter::repeat_with(crate::free_port)
                    .find(|p| !taken.contains(p))
                    .unwrap();
                taken.push(p);
                (g, p)
            })
            .collect();
        for (guest, host) in &forwarded {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for (guest, host_port) in &boot.forwards {
            // socat per connection: a pull opens several at once.
            net.push_str(&format!(
                ",guestfwd=tcp:{guest}-cmd:socat STDIO TCP:127.0.0.1:{host_port}"
            ));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        // The "pc" machine, qemu's default, named: the reference values
        // depend on where it puts the initramfs.
        cmd.args([
            "-machine",
            "pc",
            "-accel",
            accel(),
            "-smp",
            "2",
            "-m",
            &img.memory_mib().to_string(),
        ]);
        if accel() == "tcg" {
            // RDRAND, as every cloud and TEE VM's CPU has (the kernel trusts it
            // to seed its RNG): TCG's default CPU lacks it, and without an
            // entropy source the kernel's RNG was ready only 10 s into the boot,
            // attestd's start waiting on it.
            cmd.args(["-cpu", "qemu64,+rdrand"]);
        }
        if boot.uefi {
            let vars = d.join("OVMF_VARS.fd");
            std::fs::copy(OVMF_VARS, &vars).expect("OVMF is missing: apt-get install ovmf");
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
        if boot.no_reboot {
            cmd.arg("-no-reboot");
        }
        // ATTESTD_PODVM_APPEND: for a benchmark's other column (e.g.
        // attestd.unverified_root on a test image).
        let extra = std::env::var("ATTESTD_PODVM_APPEND").unwrap_or_default();
        let cmdline = [img.cmdline(), boot.append.as_str(), extra.as_str()]
            .iter()
            .filter(|w| !w.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        cmd.args(["-display", "none", "-monitor", "none"])
            .arg("-kernel")
            .arg(img.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(
                boot.initrd
                    .clone()
                    .unwrap_or_else(|| img.dir.join("initrd.img")),
            )
            .args(["-append", &cmdline])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"]);
        if boot.cidata {
            cmd.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                cidata_iso(d, &boot.user_data).display()
            ));
        } else {
            cmd.arg("-fw_cfg").arg(format!(
                "name=opt/org.attestd/user-data,file={}",
                d.join("user-data").display()
            ));
        }
        cmd.arg("-serial")
            .arg(format!("file:{}", d.join("console.log").display()))
            .arg("-serial")
            .arg(format!("file:{}", d.join("journal.log").display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                d.join("qmp.sock").display()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=qga,path={},server=on,wait=off",
                d.join("qga.sock").display()
            ))
            .args(["-device", "virtio-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            ]);
        if let Some(tpm) = boot.tpm.as_mut() {
            tpm.start();
            cmd.arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", tpm.sock().display()))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .args(["-device", "tpm-tis,tpmdev=tpm0"]);
        }
        if let Some(v) = &boot.vendor {
            cmd.args(["-smbios", &format!("type=1,manufacturer={v}")]);
        }
        let qemu = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("qemu.log")).unwrap())
            .stderr(std::fs::File::create(d.join("qemu.err")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 is missing: apt-get install qemu-system-x86");
        PodVm {
            qemu,
            dir,
            port,
            forwarded,
            started: Instant::now(),
            mark: 0,
            _tpm: boot.tpm,
            _slot: slot,
        }
    }

    /// The host port (on 127.0.0.1) forwarded to `guest` (`Boot::hostfwd`).
    pub fn host_port(&self, guest: u16) -> u16 {
        self.forwarded
            .iter()
            .find(|(g, _)| *g == guest)
            .unwrap_or_else(|| panic!("guest port {guest} is not forwarded (Boot::hostfwd)"))
            .1
    }

    /// The guest's journal so far (its second serial port).
    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("journal.log")).unwrap_or_default()
    }

    /// The guest's console so far (its first serial port: the kernel and the
    /// initramfs).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("console.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Whether qemu has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.qemu.try_wait(), Ok(Some(_)))
    }

    /// Wait until the journal, from byte `from` on, contains `needle`: how long
    /// after the boot (or reset) it appeared.
    pub fn wait_journal(
        &mut self,
        from: usize,
        needle: &str,
        within: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + within;
        loop {
            let j = self.journal();
            if j.get(from..).is_some_and(|j| j.contains(needle)) {
                return Ok(self.started.elapsed());
            }
            if j.get(from..).is_some_and(|j| j.contains(GAVE_UP)) {
                return Err(format!(
                    "{needle:?} not in the guest's journal, and systemd gave up on attestd"
                ));
            }
            if let Ok(Some(s)) = self.qemu.try_wait() {
                return Err(format!("qemu exited ({s}): {}", self.qemu_errors()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{needle:?} not in the guest's journal after {within:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn qemu_errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default()
    }

    /// The AA API, over the forwarded port (ttrpc over TCP to the CDH stand-in).
    pub async fn aa(&self) -> Result<TtrpcAa, String> {
        let c = ttrpc::r#async::Client::connect(&format!("tcp://127.0.0.1:{}", self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(TtrpcAa::new(c))
    }

    /// Wait until the AA API answers GetTeeType: the TEE type, and how long after
    /// the boot (or reset).
    pub async fn ready(&mut self, within: Duration) -> Result<(String, Duration), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(aa) = self.aa().await {
                // Short: until the guest listens, qemu's forwarder accepts the
                // connection and then drops it or leaves it silent, and a long
                // timeout here made every figure a multiple of it (22.6 s in
                // most runs). GetTeeType answers in milliseconds even under TCG.
                let ctx = ttrpc::context::with_timeout(1_000_000_000);
                match aa.get_tee_type(ctx, &Default::default()).await {
                    Ok(r) => return Ok((r.tee, self.started.elapsed())),
                    Err(e) => last = e.to_string(),
                }
            }
            if let Ok(Some(s)) = self.qemu.try_wait() {
                return Err(format!("qemu exited ({s}): {}", self.qemu_errors()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the AA API did not answer within {within:?} (last: {last})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One QMP command; its answer.
    pub fn qmp(&self, command: &str) -> serde_json::Value {
        let s = UnixStream::connect(self.dir.path().join("qmp.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        let mut call = |v: serde_json::Value| -> serde_json::Value {
            writeln!(w, "{v}").unwrap();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                // Events come in between; the answer has "return" or "error".
                if v.get("return").is_some() || v.get("error").is_some() {
                    return v;
                }
            }
        };
        call(serde_json::json!({"execute": "qmp_capabilities"}));
        call(serde_json::json!({"execute": command}))
    }

    /// Reset the machine (a reboot as the host does one): the TPM resets too.
    pub fn reset(&mut self) {
        let r = self.qmp("system_reset");
        assert!(r.get("return").is_some(), "system_reset: {r}");
        self.started = Instant::now();
        self.mark = self.journal().len();
    }

    /// Run a command in the guest through the qemu guest agent: its exit code,
    /// standard output and error.
    pub fn exec(
        &self,
        path: &str,
        args: &[&str],
        within: Duration,
    ) -> Result<(i64, String, String), String> {
        let deadline = Instant::now() + within;
        // The agent starts late in the boot; its socket is connectable before.
        let (mut r, mut w) = loop {
            let s =
                UnixStream::connect(self.dir.path().join("qga.sock")).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let id = Instant::now().elapsed().subsec_nanos();
            writeln!(
                w,
                "{}",
                serde_json::json!({"execute": "guest-sync", "arguments": {"id": id}})
            )
            .unwrap();
            let mut line = String::new();
            if r.read_line(&mut line).is_ok() && line.contains(&id.to_string()) {
                break (r, w);
            }
            if Instant::now() > deadline {
                return Err("the guest agent did not answer".into());
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut call = |v: serde_json::Value| -> Result<serde_json::Value, String> {
            writeln!(w, "{v}").map_err(|e| e.to_string())?;
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
            v.get("return")
                .cloned()
                .ok_or_else(|| format!("guest agent: {v}"))
        };
        let pid = call(serde_json::json!({"execute": "guest-exec", "arguments": {
            "path": path, "arg": args, "capture-output": true}}))?["pid"]
            .as_i64()
            .ok_or("guest-exec: no pid")?;
        loop {
            let st = call(
                serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
            )?;
            if st["exited"] == true {
                let text = |k: &str| {
                    st[k]
                        .as_str()
                        .map(|b| {
                            String::from_utf8_lossy(&STANDARD.decode(b).unwrap_or_default())
                                .into_owned()
                        })
                        .unwrap_or_default()
                };
                return Ok((
                    st["exitcode"].as_i64().unwrap_or(-1),
                    text("out-data"),
                    text("err-data"),
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{path} {args:?} did not exit within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PodVm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- the guest's journal ----\n{}\n---- its console (last 3000 bytes) ----\n{}\n---- qemu ----\n{}",
                self.journal(),
                {
                    let c = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
                    String::from_utf8_lossy(&c[c.len().saturating_sub(3000)..]).into_owned()
                },
                self.qemu_errors()
            );
        }
    }
}

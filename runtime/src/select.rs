//! Per-platform selection: cheap probes of the filesystem, in upstream's precedence
//! (tdx → az-tdx-vtpm → az-snp-vtpm → snp → tpm), then confirmation by the
//! candidate plugin's own `Detect`. The plugin for a TEE is its
//! `[plugins.attester.<tee>]` table, or else its image in `images.lock` started with
//! `auto_launch`. `sample` is chosen only when configured and nothing else is.
//! Probes read under a configurable root so tests can build fake trees.
//! A TEE the core has no probe for is probed by what its plugin declares (its
//! table's `probe`, else its images.lock entry's: [`crate::config::probe`]),
//! after the TEE-specific built-ins and before the generic TPM.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attester_sdk::{DeviceRole, Error, Result, Transport, PROTOCOL_VERSIONS};
use serde::Serialize;

use crate::config::{LaunchKind, PluginConfig, PluginsConfig};
use crate::supervisor::{PluginSpec, Supervisor};

/// attestd's exit status when selection finds no TEE on this machine: no probe
/// found one (sysexits' EX_UNAVAILABLE). A machine does not become a TEE by
/// trying again, so the at-boot unit names it in `RestartPreventExitStatus=`
/// (systemd shows it as `status=69/UNAVAILABLE`). A TEE found whose plugin did
/// not start or confirm is an ordinary failure, retried.
pub const NO_TEE_EXIT_STATUS: u8 = 69;

/// While settling (`[plugins] no_tee_settle_ms`), how often the probes run again.
const SETTLE_STEP: Duration = Duration::from_millis(200);

/// The mark of "no TEE selected" on the error, wherever context was added to
/// it. It prints nothing: the message says it all.
#[derive(Debug, thiserror::Error)]
#[error("")]
struct NoTeeSelected;

/// Whether `e` is selection's "no TEE selected" (see [`NO_TEE_EXIT_STATUS`]).
pub fn is_no_tee(e: &Error) -> bool {
    e.caused_by::<NoTeeSelected>()
}

/// Upstream's detection precedence (reference §3): az-tdx before az-snp, the
/// generic TPM last.
pub const PRECEDENCE: [&str; 5] = ["tdx", "az-tdx-vtpm", "az-snp-vtpm", "snp", "tpm"];

/// What one probe saw.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Probe {
    pub tee: String,
    pub found: bool,
    /// The paths or markers that made it positive, or what was looked for.
    pub seen: Vec<String>,
}

fn exists(root: &Path, p: &str) -> bool {
    root.join(p.trim_start_matches('/')).exists()
}

fn cpu_flag(root: &Path, flag: &str) -> bool {
    std::fs::read_to_string(root.join("proc/cpuinfo"))
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

fn azure(root: &Path) -> bool {
    std::fs::read_to_string(root.join("sys/class/dmi/id/sys_vendor"))
        .map(|v| v.trim() == "Microsoft Corporation")
        .unwrap_or(false)
}

/// Whether the core probes `tee` itself (a declared probe for it is ignored).
pub fn built_in(tee: &str) -> bool {
    PRECEDENCE.contains(&tee) || tee == "sample"
}

/// The probes third parties' plugins declare, by TEE: a table's `probe`, else
/// its images.lock entry's. Built-in TEEs keep the core's own.
pub fn declared(
    plugins: &PluginsConfig,
    lock: &std::collections::BTreeMap<String, LockedImage>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for (tee, l) in lock {
        if !l.probe.is_empty() {
            out.insert(tee.clone(), l.probe.clone());
        }
    }
    for (name, pc) in &plugins.attester {
        if !pc.probe.is_empty() {
            out.insert(name.clone(), pc.probe.clone());
        }
    }
    out.retain(|tee, _| !built_in(tee));
    out
}

/// Every probe, built-in and `declared`, in precedence order. Cheap: file
/// existence and small reads only. A malformed declared probe finds nothing
/// and says why.
pub fn probe_all(
    root: &Path,
    declared: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<Probe> {
    let mut all = probe(root);
    // Before the generic TPM (last): a third party's TEE may well have a TPM too.
    let tpm = all.pop();
    for (tee, conditions) in declared {
        let (found, seen) = match crate::config::probe::parse(conditions) {
            Ok(c) => (
                !c.is_empty() && c.iter().all(|c| c.holds(root)),
                c.iter().map(|c| c.describe()).collect(),
            ),
            Err(e) => (false, vec![format!("malformed probe: {e}")]),
        };
        all.push(Probe {
            tee: tee.clone(),
            found,
            seen,
        });
    }
    all.extend(tpm);
    all
}

/// How long one pass of every probe may take: they are file checks and small
/// reads, done in microseconds; a pass that takes longer waits on something.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`probe_all`] on a blocking thread, within [`PROBE_TIMEOUT`]: a probe that
/// waits cannot hold the daemon's one runtime thread (nor keep it from SIGTERM).
async fn probe_all_bounded(
    root: &Path,
    declared: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<Vec<Probe>> {
    let (root, declared) = (root.to_path_buf(), declared.clone());
    let pass = tokio::task::spawn_blocking(move || probe_all(&root, &declared));
    match tokio::time::timeout(PROBE_TIMEOUT, pass).await {
        Ok(Ok(probes)) => Ok(probes),
        Ok(Err(e)) => Err(Error::internal(format!("the platform probes failed: {e}"))),
        Err(_) => Err(Error::unavailable(format!(
            "the platform probes did not finish within {PROBE_TIMEOUT:?}: a declared probe \
             reads something that waits"
        ))),
    }
}

/// The built-in probes, in precedence order.
pub fn probe(root: &Path) -> Vec<Probe> {
    let any = |paths: &[&str]| -> Vec<String> {
        paths
            .iter()
            .filter(|p| exists(root, p))
            .map(|p| p.to_string())
            .collect()
    };
    let tpm = any(&["/dev/tpmrm0", "/dev/tpm0"]);
    PRECEDENCE
        .iter()
        .map(|&tee| {
            let (found, seen): (bool, Vec<String>) = match tee {
                "tdx" => {
                    let mut seen = any(&["/dev/tdx_guest", "/dev/tdx-guest"]);
                    if exists(root, "/sys/kernel/config/tsm/report") && cpu_flag(root, "tdx_guest")
                    {
                        seen.push("configfs-tsm + cpu flag tdx_guest".into());
                    }
                    (!seen.is_empty(), seen)
                }
                // An Azure CVM: Microsoft's DMI vendor and the paravisor's vTPM. The
                // two Azure plugins' Detect (the HCL report's type) tells them apart.
                "az-tdx-vtpm" | "az-snp-vtpm" => {
                    let ok = azure(root) && !tpm.is_empty();
                    let mut seen = Vec::new();
                    if azure(root) {
                        seen.push("dmi sys_vendor Microsoft Corporation".into());
                    }
                    seen.extend(tpm.iter().cloned());
                    (ok, seen)
                }
                "snp" => {
                    let seen = any(&["/dev/sev-guest", "/sys/devices/platform/sev-guest"]);
                    (!seen.is_empty(), seen)
                }
                _ => (!tpm.is_empty(), tpm.clone()),
            };
            Probe {
                tee: tee.to_string(),
                found,
                seen,
            }
        })
        .collect()
}

/// One entry of `images.lock`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LockedImage {
    pub image: String,
    pub digest: String,
    pub transport: Transport,
    pub api: u32,
    /// A third party's image: its declared probe (the `org.attestd.probe` label).
    #[serde(default)]
    pub probe: Vec<String>,
    /// A third party's image: the device nodes it needs (`org.attestd.devices`).
    #[serde(default)]
    pub devices: Vec<std::path::PathBuf>,
}

impl LockedImage {
    /// The reference this entry runs: its repository (a tag, if the entry has
    /// one, dropped) at its digest.
    pub fn pinned(&self) -> String {
        format!(
            "{}@{}",
            crate::config::image_ref::ImageRef::repository(&self.image),
            self.digest
        )
    }
}

#[derive(Debug, serde::Deserialize)]
struct Lock {
    #[serde(default)]
    images: std::collections::BTreeMap<String, LockedImage>,
}

/// `images.lock`, or an empty one when the file does not exist.
pub fn read_lock(path: &Path) -> Result<std::collections::BTreeMap<String, LockedImage>> {
    match std::fs::read_to_string(path) {
        Ok(t) => toml::from_str::<Lock>(&t).map(|l| l.images).map_err(|e| {
            Error::failed_precondition(format!("images lock {} is malformed", path.display()))
                .with_source(e)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(
            Error::failed_precondition(format!("cannot read {}", path.display())).with_source(e),
        ),
    }
}

/// The configuration of `tee`'s plugin as `[plugins]` and images.lock give it
/// now: what `attestd reload` compares a selected plugin against.
pub fn plugin_config(tee: &str, plugins: &PluginsConfig) -> Result<PluginConfig> {
    let lock = read_lock(&plugins.images_lock)?;
    plugin_for(tee, plugins, &lock)
        .map(|(_, pc)| pc)
        .map_err(|why| Error::failed_precondition(format!("plugin {tee}: {why}")))
}

/// The plugin for `tee`: its own table, else its locked image.
fn plugin_for(
    tee: &str,
    plugins: &PluginsConfig,
    lock: &std::collections::BTreeMap<String, LockedImage>,
) -> std::result::Result<(String, PluginConfig), String> {
    if let Some(pc) = plugins.attester.get(tee) {
        check_override(tee, pc, plugins, lock)?;
        return Ok((tee.to_string(), pc.clone()));
    }
    let Some(l) = lock.get(tee) else {
        return Err(format!(
            "no [plugins.attester.{tee}] table and no {tee} image in {}",
            plugins.images_lock.display()
        ));
    };
    if !PROTOCOL_VERSIONS.contains(&l.api) {
        return Err(format!(
            "its image speaks plugin API {}, this attestd {:?}",
            l.api, PROTOCOL_VERSIONS
        ));
    }
    if !matches!(plugins.auto_launch, LaunchKind::Podman | LaunchKind::Oci) {
        return Err("auto_launch must be podman or oci to start an image".into());
    }
    for d in &l.devices {
        crate::config::check_device(d).map_err(|e| format!("its images.lock entry: {e}"))?;
    }
    Ok((
        tee.to_string(),
        PluginConfig {
            launch: plugins.auto_launch,
            command: None,
            args: Vec::new(),
            env: Default::default(),
            transport: l.transport,
            tee: Some(tee.to_string()),
            image: Some(l.pinned()),
            socket: None,
            host_network: false,
            devices: l.devices.clone(),
            probe: l.probe.clone(),
        },
    ))
}

/// A TEE's table naming another image than images.lock pins for it (a drop-in
/// written from user-data, a developer's own attester) is an override: logged
/// with both references, and refused when the image would come from a registry
/// `[plugins] registries` does not allow.
fn check_override(
    tee: &str,
    pc: &PluginConfig,
    plugins: &PluginsConfig,
    lock: &std::collections::BTreeMap<String, LockedImage>,
) -> std::result::Result<(), String> {
    let (Some(image), Some(l)) = (&pc.image, lock.get(tee)) else {
        return Ok(());
    };
    let pinned = l.pinned();
    if *image == pinned {
        return Ok(());
    }
    let name = crate::config::image_ref::ImageRef::repository(image);
    let policy = crate::launch::pull::PullPolicy::from_config(plugins);
    if crate::launch::pull::registry_of(name).is_some() && policy.allowing(name).is_none() {
        return Err(format!(
            "its image override {image} (images.lock pins {pinned}) names a registry not in [plugins] registries"
        ));
    }
    tracing::warn!(
        tee,
        image = %image,
        pinned = %pinned,
        "image override: the configuration replaces images.lock's pin (`attestd config` names the file)"
    );
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub tee: String,
    pub why: String,
}

/// The outcome: the chosen plugin (running, when confirmed) and how it was chosen.
pub struct Selection {
    pub tee: String,
    pub name: String,
    pub config: PluginConfig,
    pub probes: Vec<Probe>,
    pub skipped: Vec<Skipped>,
    pub confirmed: bool,
    /// The confirmed plugin, still running (the daemon keeps it as its primary).
    pub supervisor: Option<Arc<Supervisor>>,
}

/// Start candidate `tee` and ask its Detect: the running plugin when it says yes,
/// else why it was passed over (stopped again).
async fn confirm_candidate(
    tee: &str,
    name: &str,
    config: &PluginConfig,
    plugins: &PluginsConfig,
    record_provenance: bool,
) -> std::result::Result<Arc<Supervisor>, String> {
    let mut spec = PluginSpec::with_config(name, config.clone(), DeviceRole::Primary, plugins);
    spec.record_provenance = record_provenance;
    let s = Supervisor::start(spec).await.map_err(|e| e.chain())?;
    let detected = match s.live().await {
        Ok(l) => l.client.detect().await,
        Err(e) => Err(e),
    };
    let why = match detected {
        Ok(true) => return Ok(s),
        Ok(false) => "the plugin's Detect answered false".to_string(),
        Err(e) => format!("Detect failed: {}", e.chain()),
    };
    tracing::debug!(tee, %why, "candidate passed over");
    s.stop().await;
    Err(why)
}

/// Probe under `root` and pick a plugin; with `confirm`, start each candidate and
/// ask its `Detect` (the socket directory must be claimed). When no probe finds
/// a TEE and no sample is configured, the probes run again for `settle` (a
/// device node may still appear: udev's coldplug runs beside attestd at boot)
/// before that is an error listing what was probed.
pub async fn select(
    plugins: &PluginsConfig,
    root: &Path,
    confirm: bool,
    record_provenance: bool,
    settle: Duration,
) -> Result<Selection> {
    let lock = read_lock(&plugins.images_lock)?;
    let declared = declared(plugins, &lock);
    let mut probes = probe_all_bounded(root, &declared).await?;
    // The sample comes last, and only when configured.
    let sample = plugins.attester.contains_key("sample").then_some("sample");
    let settled = sample.is_none() && !settle.is_zero() && !probes.iter().any(|p| p.found);
    if settled {
        tracing::info!(
            settle_ms = settle.as_millis() as u64,
            "no TEE found yet: probing again while devices may still appear"
        );
        let deadline = Instant::now() + settle;
        while !probes.iter().any(|p| p.found) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(SETTLE_STEP.min(left)).await;
            probes = probe_all_bounded(root, &declared).await?;
        }
    }
    let mut skipped = Vec::new();
    let positives: Vec<String> = probes
        .iter()
        .filter(|p| p.found)
        .map(|p| p.tee.clone())
        .collect();
    for tee in positives.iter().map(String::as_str).chain(sample) {
        let (name, config) = match plugin_for(tee, plugins, &lock) {
            Ok(p) => p,
            Err(why) => {
                skipped.push(Skipped {
                    tee: tee.into(),
                    why,
                });
                continue;
            }
        };
        // Unconfirmed when asked not to confirm, and for the sample (it detects
        // nothing); otherwise the candidate's Detect decides.
        let supervisor = if !confirm || tee == "sample" {
            None
        } else {
            match confirm_candidate(tee, &name, &config, plugins, record_provenance).await {
                Ok(s) => Some(s),
                Err(why) => {
                    skipped.push(Skipped {
                        tee: tee.into(),
                        why,
                    });
                    continue;
                }
            }
        };
        return Ok(Selection {
            tee: tee.into(),
            name,
            config,
            probes,
            skipped,
            confirmed: supervisor.is_some(),
            supervisor,
        });
    }
    let probed: Vec<String> = probes
        .iter()
        .map(|p| {
            if p.found {
                format!("{} (found: {})", p.tee, p.seen.join(", "))
            } else {
                format!("{} (not found)", p.tee)
            }
        })
        .collect();
    let mut msg = format!(
        "no TEE selected under {}: probed {}",
        root.display(),
        probed.join("; ")
    );
    if settled {
        msg.push_str(&format!(" (and again for {} ms)", settle.as_millis()));
    }
    for s in &skipped {
        msg.push_str(&format!("; {} skipped: {}", s.tee, s.why));
    }
    if sample.is_none() {
        msg.push_str(
            "; no [plugins.attester.sample] is configured (attestd never falls back to it unasked)",
        );
    }
    let e = Error::failed_precondition(msg);
    // For good only when no probe found anything: a TEE found whose plugin
    // could not start or confirm (a pull that failed, say) may do on a retry.
    Err(if skipped.is_empty() {
        e.with_source(NoTeeSelected)
    } else {
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let f = t.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, content).unwrap();
        }
        t
    }

    fn found(root: &Path) -> Vec<String> {
        probe(root)
            .into_iter()
            .filter(|p| p.found)
            .map(|p| p.tee)
            .collect()
    }

    #[test]
    fn each_tee_is_probed_by_its_markers() {
        assert_eq!(found(tree(&[("dev/tdx_guest", "")]).path()), ["tdx"]);
        let tsm = tree(&[
            ("sys/kernel/config/tsm/report/.keep", ""),
            ("proc/cpuinfo", "processor : 0\nflags : fpu tdx_guest sse\n"),
        ]);
        assert_eq!(found(tsm.path()), ["tdx"]);
        assert_eq!(found(tree(&[("dev/sev-guest", "")]).path()), ["snp"]);
        assert_eq!(
            found(tree(&[("sys/devices/platform/sev-guest/uevent", "")]).path()),
            ["snp"]
        );
        assert_eq!(found(tree(&[("dev/tpmrm0", "")]).path()), ["tpm"]);
        let az = tree(&[
            ("sys/class/dmi/id/sys_vendor", "Microsoft Corporation\n"),
            ("dev/tpm0", ""),
        ]);
        assert_eq!(found(az.path()), ["az-tdx-vtpm", "az-snp-vtpm", "tpm"]);
        assert!(found(tree(&[]).path()).is_empty());
        // A flag without configfs-tsm, or Microsoft without a TPM, is not enough.
        assert!(found(tree(&[("proc/cpuinfo", "flags : tdx_guest\n")]).path()).is_empty());
        assert!(
            found(tree(&[("sys/class/dmi/id/sys_vendor", "Microsoft Corporation\n")]).path())
                .is_empty()
        );
    }

    /// `[plugins]` with a tpm table and no images lock, under `root`.
    fn tpm_only(root: &Path) -> PluginsConfig {
        let mut plugins = PluginsConfig {
            images_lock: root.join("no-such.lock"),
            ..Default::default()
        };
        plugins.attester.insert(
            "tpm".into(),
            PluginConfig {
                launch: LaunchKind::Process,
                command: Some("attester-tpm".into()),
                args: Vec::new(),
                env: Default::default(),
                transport: Transport::Ttrpc,
                tee: Some("tpm".into()),
                image: None,
                socket: None,
                host_network: false,
                devices: Vec::new(),
                probe: Vec::new(),
            },
        );
        plugins
    }

    #[tokio::test]
    async fn no_tee_is_concluded_only_after_the_settle() {
        let t = tree(&[]);
        let plugins = tpm_only(t.path());
        // A device node that appears while settling (udev's coldplug) is found.
        let dev = t.path().join("dev");
        let appear = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("tpmrm0"), "").unwrap();
        });
        let settle = Duration::from_secs(20);
        let started = Instant::now();
        let sel = select(&plugins, t.path(), false, false, settle)
            .await
            .unwrap();
        appear.await.unwrap();
        assert_eq!(sel.tee, "tpm");
        assert!(started.elapsed() < settle, "it waited out the settle");
        // Nothing appears: "no TEE", for good, once the settle has passed, saying so.
        let empty = tree(&[]);
        let plugins = tpm_only(empty.path());
        let settle = Duration::from_millis(600);
        let started = Instant::now();
        let e = match select(&plugins, empty.path(), false, false, settle).await {
            Err(e) => e,
            Ok(s) => panic!("selected {}", s.tee),
        };
        assert!(started.elapsed() >= settle);
        assert!(is_no_tee(&e), "{e}");
        assert!(e.to_string().contains("(and again for 600 ms)"), "{e}");
        // Without a settle, at once and without the words.
        let e = match select(&plugins, empty.path(), false, false, Duration::ZERO).await {
            Err(e) => e,
            Ok(s) => panic!("selected {}", s.tee),
        };
        assert!(!e.to_string().contains("and again"), "{e}");
    }

    fn locked(probe: &[&str], devices: &[&str]) -> LockedImage {
        LockedImage {
            image: "localhost/acme/attester-x-hello".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            transport: Transport::Ttrpc,
            api: PROTOCOL_VERSIONS[0],
            probe: probe.iter().map(|p| p.to_string()).collect(),
            devices: devices.iter().map(Into::into).collect(),
        }
    }

    #[test]
    fn a_declared_probe_comes_after_the_tee_probes_and_before_the_tpm() {
        let t = tree(&[
            ("dev/x-hello-guest", ""),
            ("dev/tpmrm0", ""),
            ("dev/sev-guest", ""),
            ("sys/class/dmi/id/board_vendor", "Acme\n"),
        ]);
        let mut lock = std::collections::BTreeMap::new();
        lock.insert(
            "x-hello".to_string(),
            locked(&["/dev/x-hello-guest"], &["/dev/x-hello-guest"]),
        );
        lock.insert("x-absent".to_string(), locked(&["/dev/x-absent"], &[]));
        // A built-in TEE keeps the core's probe, whatever is declared for it.
        lock.insert("snp".to_string(), locked(&["/dev/nothing"], &[]));
        let mut plugins = PluginsConfig::default();
        let table = PluginConfig {
            launch: LaunchKind::Process,
            command: Some("attester-x-acme".into()),
            args: Vec::new(),
            env: Default::default(),
            transport: Transport::Ttrpc,
            tee: None,
            image: None,
            socket: None,
            host_network: false,
            devices: Vec::new(),
            probe: vec!["/sys/class/dmi/id/board_vendor=Acme".into()],
        };
        plugins.attester.insert("x-acme".into(), table.clone());
        let mut bad = table;
        bad.probe = vec!["/etc/shadow".into()];
        plugins.attester.insert("x-bad".into(), bad);
        let probes = probe_all(t.path(), &declared(&plugins, &lock));
        let order: Vec<(&str, bool)> = probes.iter().map(|p| (p.tee.as_str(), p.found)).collect();
        assert_eq!(
            order,
            [
                ("tdx", false),
                ("az-tdx-vtpm", false),
                ("az-snp-vtpm", false),
                ("snp", true),
                ("x-absent", false),
                ("x-acme", true),
                ("x-bad", false),
                ("x-hello", true),
                ("tpm", true),
            ]
        );
        assert_eq!(probes[7].seen, ["/dev/x-hello-guest"]);
        assert_eq!(
            probes[5].seen,
            ["/sys/class/dmi/id/board_vendor = \"Acme\""]
        );
        assert!(probes[6].seen[0].starts_with("malformed probe: probe condition \"/etc/shadow\""));
        // The locked image's declared devices go with it.
        let plugins = PluginsConfig {
            auto_launch: LaunchKind::Podman,
            ..Default::default()
        };
        let (_, pc) = plugin_for("x-hello", &plugins, &lock).unwrap();
        assert_eq!(pc.devices, [std::path::PathBuf::from("/dev/x-hello-guest")]);
        lock.insert("x-evil".into(), locked(&["/dev/x"], &["/etc/shadow"]));
        let e = plugin_for("x-evil", &plugins, &lock).unwrap_err();
        assert!(e.contains("not a device node path under /dev"), "{e}");
    }

    #[test]
    fn the_lock_parses_and_a_missing_one_is_empty() {
        let t = tree(&[(
            "images.lock",
            "[images.tdx]\nimage = \"localhost/attestd/attester-tdx\"\ndigest = \"sha256:00\"\ntransport = \"ttrpc\"\napi = 1\nplugin = \"attester-tdx\"\nversion = \"0.1.0\"\nsize = 1\n",
        )]);
        let l = read_lock(&t.path().join("images.lock")).unwrap();
        assert_eq!(l["tdx"].image, "localhost/attestd/attester-tdx");
        assert!(read_lock(&t.path().join("none.lock")).unwrap().is_empty());
        std::fs::write(t.path().join("bad.lock"), "[images.tdx]\nimage = 3\n").unwrap();
        assert!(read_lock(&t.path().join("bad.lock"))
            .unwrap_err()
            .message()
            .starts_with("images lock"));
    }

    #[test]
    fn a_locked_image_on_a_registry_with_a_port_keeps_its_name() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut lock = std::collections::BTreeMap::new();
        for (tee, image) in [
            ("tdx", "registry.local:5000/attestd/attester-tdx"),
            ("snp", "registry.local:5000/attestd/attester-snp:0.1.0"),
        ] {
            lock.insert(
                tee.to_string(),
                LockedImage {
                    image: image.into(),
                    digest: digest.clone(),
                    transport: Transport::Ttrpc,
                    api: PROTOCOL_VERSIONS[0],
                    probe: Vec::new(),
                    devices: Vec::new(),
                },
            );
        }
        let plugins = PluginsConfig {
            auto_launch: LaunchKind::Podman,
            ..Default::default()
        };
        for tee in ["tdx", "snp"] {
            let (_, pc) = plugin_for(tee, &plugins, &lock).unwrap();
            assert_eq!(
                pc.image.unwrap(),
                format!("registry.local:5000/attestd/attester-{tee}@{digest}")
            );
        }
    }
}

//! `launch = "oci"`: the plugin image unpacked into an OCI bundle and run by runc —
//! how kata-agent runs its pause container from a prepared bundle, without a
//! container engine. The image comes from an OCI layout under `oci_dir` (copied in
//! from podman's store with `skopeo copy --preserve-digests` when absent, so the
//! pinned digest still names it); its root filesystem is unpacked once per digest
//! (`umoci raw unpack`) and shared read-only by every start.
//!
//! [`plugin_spec`] is the `config.json` generation on its own, for a kata-agent
//! integration that places the bundle itself.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use attester_sdk::{Error, Result};
use oci_spec::runtime::{
    LinuxCapabilities, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespaceType, Mount,
    PosixRlimitBuilder, PosixRlimitType, Root, Spec,
};
use tokio::process::Command;

use super::image::run_tool;
use super::resources::Resources;
use super::PluginSpec;
use super::{plugin_args, spawn_owner, Cleanup, Launcher, Provenance, Running};
use crate::config::image_ref::ImageRef;

const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound on open files and processes in a plugin container (lowered to the
/// caller's hard limits, which an unprivileged caller cannot exceed).
const RLIMIT: u64 = 1024;

/// What a plugin bundle needs.
#[derive(Debug, Clone)]
pub struct BundleParams {
    /// The unpacked image, mounted read-only.
    pub rootfs: PathBuf,
    /// argv, `/attester` first.
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// The plugin's own directory in the core's socket directory
    /// ([`PluginSpec::plugin_dir`]), bind-mounted read-write at the same path:
    /// never the socket directory itself, which holds attestd's control socket.
    pub plugin_dir: PathBuf,
    pub resources: Resources,
}

fn spec_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::internal("cannot build the OCI runtime spec").with_source(e)
}

/// The runtime spec (`config.json`) of a plugin container: read-only root, no
/// terminal, no capabilities, no new privileges, its own network namespace (unless
/// the TEE needs the host's), only the TEE's devices, the plugin's socket directory bound in,
/// rlimits at or below the caller's hard limits.
pub fn plugin_spec(p: &BundleParams) -> Result<Spec> {
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path(p.rootfs.clone());
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    spec.set_hostname(Some("attester".into()));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(false));
    process.set_args(Some(p.args.clone()));
    let mut env = vec!["PATH=/".to_string()];
    env.extend(p.env.iter().cloned());
    process.set_env(Some(env));
    process.set_cwd("/".into());
    process.set_no_new_privileges(Some(true));
    let none: HashSet<_> = HashSet::new();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(none.clone()))
        .set_effective(Some(none.clone()))
        .set_inheritable(Some(none.clone()))
        .set_permitted(Some(none.clone()))
        .set_ambient(Some(none));
    process.set_capabilities(Some(caps));
    let mut rlimits = Vec::new();
    for (typ, res) in [
        (
            PosixRlimitType::RlimitNofile,
            nix::sys::resource::Resource::RLIMIT_NOFILE,
        ),
        (
            PosixRlimitType::RlimitNproc,
            nix::sys::resource::Resource::RLIMIT_NPROC,
        ),
    ] {
        let hard = nix::sys::resource::getrlimit(res)
            .map(|(_, h)| h)
            .unwrap_or(RLIMIT);
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .hard(RLIMIT.min(hard))
                .soft(RLIMIT.min(hard))
                .build()
                .map_err(spec_err)?,
        );
    }
    process.set_rlimits(Some(rlimits));
    spec.set_process(Some(process));

    let bind = |path: &Path, rw: bool| {
        let mut m = Mount::default();
        m.set_destination(path.to_path_buf());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(path.to_path_buf()));
        m.set_options(Some(vec![
            "rbind".into(),
            if rw { "rw" } else { "ro" }.into(),
            "nosuid".into(),
            "nodev".into(),
        ]));
        m
    };
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(bind(&p.plugin_dir, true));
    mounts.extend(p.resources.rw.iter().map(|m| bind(m, true)));
    mounts.extend(p.resources.ro.iter().map(|m| bind(m, false)));
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    if p.resources.host_network {
        let ns = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Network)
            .collect();
        linux.set_namespaces(Some(ns));
    }
    let mut devices = Vec::new();
    let mut allow = Vec::new();
    for path in &p.resources.devices {
        let (typ, major, minor) = device_numbers(path)?;
        let mut d = LinuxDevice::default();
        d.set_path(path.clone());
        d.set_typ(typ);
        d.set_major(major);
        d.set_minor(minor);
        d.set_file_mode(Some(0o600));
        d.set_uid(Some(0));
        d.set_gid(Some(0));
        devices.push(d);
        let mut a = LinuxDeviceCgroup::default();
        a.set_allow(true);
        a.set_typ(Some(typ));
        a.set_major(Some(major));
        a.set_minor(Some(minor));
        a.set_access(Some("rw".into()));
        allow.push(a);
    }
    linux.set_devices(Some(devices));
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_devices(Some(allow));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    // The builder types validate on build; a plain struct round-trip catches nothing
    // more, so only serialisability is checked here.
    serde_json::to_vec(&spec).map_err(spec_err)?;
    Ok(spec)
}

fn device_numbers(path: &Path) -> Result<(LinuxDeviceType, i64, i64)> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let m = std::fs::metadata(path).map_err(|e| {
        Error::failed_precondition(format!("cannot stat device {}", path.display())).with_source(e)
    })?;
    let typ = if m.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if m.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(Error::failed_precondition(format!(
            "{} is not a device node",
            path.display()
        )));
    };
    let rdev = m.rdev();
    Ok((
        typ,
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
    ))
}

/// The `org.opencontainers.image.ref.name` under which `layout` holds `digest`.
/// The layout's tag for image `r` at `digest`: its whole repository (so the name
/// is part of the pin here too, as in podman's store) and the digest's start.
fn layout_tag_for(r: &ImageRef, digest: &str) -> String {
    let repo: String = r
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{repo}-{}", &hex[..12.min(hex.len())])
}

/// Whether the layout's index holds `digest` under `tag`.
fn layout_has(layout: &Path, digest: &str, tag: &str) -> Result<bool> {
    let index = match std::fs::read(layout.join("index.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(
                Error::internal(format!("cannot read {}/index.json", layout.display()))
                    .with_source(e),
            )
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&index).map_err(|e| {
        Error::failed_precondition(format!("{}/index.json is not JSON", layout.display()))
            .with_source(e)
    })?;
    Ok(v["manifests"].as_array().is_some_and(|ms| {
        ms.iter().any(|m| {
            m["digest"] == digest && m["annotations"]["org.opencontainers.image.ref.name"] == tag
        })
    }))
}

/// A label of the image `digest` in `layout` (manifest → config → Labels).
pub fn layout_label(layout: &Path, digest: &str, label: &str) -> Result<Option<String>> {
    let blob = |d: &str| -> Result<serde_json::Value> {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        let p = layout.join("blobs/sha256").join(hex);
        let b = std::fs::read(&p).map_err(|e| {
            Error::failed_precondition(format!("cannot read {}", p.display())).with_source(e)
        })?;
        serde_json::from_slice(&b).map_err(|e| {
            Error::failed_precondition(format!("{} is not JSON", p.display())).with_source(e)
        })
    };
    let manifest = blob(digest)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| Error::failed_precondition(format!("manifest {digest} names no config")))?;
    Ok(blob(config_digest)?["config"]["Labels"][label]
        .as_str()
        .map(str::to_string))
}

/// Make `layout` hold the image `r` at `digest` (copying it from podman's store
/// with its digest preserved when absent, pulled into the store first when
/// `pull` allows); its tag in the layout, and how it was pulled if it was.
async fn ensure_in_layout(
    layout: &Path,
    r: &ImageRef,
    digest: &str,
    pull: &super::pull::PullPolicy,
) -> Result<(String, Option<String>)> {
    // Under this name: the same digest under another name is not this pin.
    let tag = layout_tag_for(r, digest);
    if layout_has(layout, digest, &tag)? {
        return Ok((tag, None));
    }
    // Not in the layout: podman's store must have exactly this digest under this
    // name (its error names what the store has instead), or get it from an
    // allowed registry.
    let pinned = ImageRef {
        digest: Some(digest.to_string()),
        ..r.clone()
    };
    let (_, _, pulled) = super::pull::ensure_in_store(&pinned, None, pull).await?;
    std::fs::create_dir_all(layout).map_err(|e| {
        Error::internal(format!("cannot create {}", layout.display())).with_source(e)
    })?;
    run_tool(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--preserve-digests",
            // An OCI layout cannot hold signatures; the store's were checked by
            // the policy when the image was pulled.
            "--remove-signatures",
            &format!("containers-storage:{}", r.pinned(digest)),
            &format!("oci:{}:{tag}", layout.display()),
        ]),
        "skopeo copy",
        TOOL_LIMIT,
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "image {} is not in the OCI layout {} and could not be copied from podman's store",
            r.pinned(digest),
            layout.display()
        ))
    })?;
    if layout_has(layout, digest, &tag)? {
        Ok((tag, pulled))
    } else {
        Err(Error::failed_precondition(format!(
            "after copying, the OCI layout {} still has no manifest {digest}",
            layout.display()
        )))
    }
}

/// The image's root filesystem, unpacked once per digest.
async fn ensure_rootfs(dir: &Path, layout: &Path, tag: &str, digest: &str) -> Result<PathBuf> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let rootfs = dir.join("rootfs").join(hex);
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    // Unpack beside and rename: a half-unpacked tree is never mistaken for a whole one.
    let tmp = dir
        .join("rootfs")
        .join(format!(".{hex}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(dir.join("rootfs")).map_err(|e| {
        Error::internal(format!("cannot create {}/rootfs", dir.display())).with_source(e)
    })?;
    run_tool(
        Command::new("umoci").args([
            "raw",
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            &tmp.display().to_string(),
        ]),
        "umoci raw unpack",
        TOOL_LIMIT,
    )
    .await?;
    std::fs::rename(&tmp, &rootfs).map_err(|e| {
        Error::internal(format!(
            "cannot move the unpacked image to {}",
            rootfs.display()
        ))
        .with_source(e)
    })?;
    Ok(rootfs)
}

/// Put the image `r` at `digest` into `oci_dir` as this launcher finds it: in
/// the layout under its tag, and unpacked. For image builds (`attestd
/// prefetch`): a pod VM whose images are prefetched so starts its attester with
/// runc alone, no skopeo, umoci or podman at boot. The image comes from podman's
/// store (nothing is pulled); the unpacked root filesystem's path is returned.
pub async fn prefetch(oci_dir: &Path, r: &ImageRef, digest: &str) -> Result<PathBuf> {
    let layout = oci_dir.join("layout");
    let none = super::pull::PullPolicy::default();
    let (tag, _) = ensure_in_layout(&layout, r, digest, &none).await?;
    ensure_rootfs(oci_dir, &layout, &tag, digest).await
}

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct OciLauncher;

#[async_trait::async_trait]
impl Launcher for OciLauncher {
    async fn launch(&self, spec: &PluginSpec, socket: &Path) -> Result<Running> {
        let (image, r) = super::configured_image(spec)?;
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => super::image::podman_digest(&r).await?,
        };
        let layout = spec.oci_dir.join("layout");
        let (tag, pulled) = ensure_in_layout(&layout, &r, &digest, &spec.pull).await?;
        let rootfs = ensure_rootfs(&spec.oci_dir, &layout, &tag, &digest).await?;
        let tee = match &spec.config.tee {
            Some(t) => t.clone(),
            None => layout_label(&layout, &digest, "org.attestd.tee")?.unwrap_or_default(),
        };
        // Before the bundle exists: a TEE with no way in here stops the start.
        let resources = spec.resources(&tee, Path::new("/"))?;
        let id = format!(
            "attestd-{}-{}-{}",
            spec.name,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = spec.oci_dir.join("bundles").join(&id);
        std::fs::create_dir_all(&bundle).map_err(|e| {
            Error::internal(format!("cannot create {}", bundle.display())).with_source(e)
        })?;
        let mut args = vec!["/attester".to_string()];
        args.extend(plugin_args(spec, socket));
        let params = BundleParams {
            rootfs,
            args,
            env: spec
                .config
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            plugin_dir: spec.plugin_dir(),
            resources,
        };
        let written = plugin_spec(&params).and_then(|s| {
            s.save(bundle.join("config.json"))
                .map_err(|e| Error::internal("cannot write config.json").with_source(e))
        });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&bundle);
            return Err(e);
        }
        let mut cmd = Command::new("runc");
        cmd.arg("run").arg("--bundle").arg(&bundle).arg(&id);
        let child = match spawn_owner(cmd, "runc") {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        Ok(Running::child(
            child,
            &spec.name,
            Cleanup::Runc { id, bundle },
            Provenance {
                launch: "oci",
                image: Some(image.to_string()),
                digest: Some(digest),
                pulled,
                args: spec.config.args.clone(),
                ..Default::default()
            },
        ))
    }
}

/// Delete the container (it may outlive a killed `runc run`) and its bundle.
pub async fn remove(id: &str, bundle: &Path) {
    if let Err(e) = run_tool(
        Command::new("runc").args(["delete", "--force", id]),
        "runc delete",
        Duration::from_secs(30),
    )
    .await
    {
        tracing::debug!(%id, "runc delete: {}", e.chain());
    }
    let _ = std::fs::remove_dir_all(bundle);
}

/// Delete bundles (and their containers) left by attestd processes that are gone
/// (ids are `attestd-<plugin>-<pid>-<n>`; live processes' bundles are left alone).
pub async fn remove_stale(oci_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(oci_dir.join("bundles")) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let pid = id.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
        let alive = pid
            .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if !alive {
            tracing::warn!(container = %id, "removing a plugin bundle left by an earlier attestd");
            remove(&id, &e.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layout_tag_carries_the_whole_repository() {
        let d = "sha256:b5e5f6b00901a311ab7638818ad171864fae2e1bb4727107466d33d68266fe4c";
        let r = ImageRef::parse(&format!("localhost/attestd/attester-sample@{d}")).unwrap();
        assert_eq!(
            layout_tag_for(&r, d),
            "localhost_attestd_attester-sample-b5e5f6b00901"
        );
        let other = ImageRef::parse(&format!("registry:5000/attestd/attester-sample@{d}")).unwrap();
        assert_ne!(layout_tag_for(&other, d), layout_tag_for(&r, d));
    }

    use super::*;

    #[test]
    fn spec_is_locked_down() {
        let p = BundleParams {
            rootfs: "/var/lib/attestd/oci/rootfs/abc".into(),
            args: vec![
                "/attester".into(),
                "--socket".into(),
                "/run/attestd/plugins/x/x.sock".into(),
            ],
            env: vec!["ATTESTD_LOG=debug".into()],
            plugin_dir: "/run/attestd/plugins/x".into(),
            resources: Resources {
                devices: vec!["/dev/null".into()],
                rw: vec![],
                ro: vec!["/run/attestation-agent".into()],
                host_network: false,
            },
        };
        let v = serde_json::to_value(plugin_spec(&p).unwrap()).unwrap();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["args"][0], "/attester");
        assert_eq!(v["process"]["env"][1], "ATTESTD_LOG=debug");
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(
                v["process"]["capabilities"][set],
                serde_json::json!([]),
                "{set}"
            );
        }
        let namespaces: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        assert!(
            namespaces.contains(&"network".to_string()),
            "{namespaces:?}"
        );
        let mounts = v["mounts"].as_array().unwrap();
        let sock = mounts
            .iter()
            .find(|m| m["destination"] == "/run/attestd/plugins/x")
            .unwrap();
        assert_eq!(sock["options"][1], "rw");
        // Its own directory, never attestd's (the control socket's).
        assert!(!mounts
            .iter()
            .any(|m| m["destination"] == "/run/attestd/plugins"));
        let aael = mounts
            .iter()
            .find(|m| m["destination"] == "/run/attestation-agent")
            .unwrap();
        assert_eq!(aael["options"][1], "ro");
        assert_eq!(v["linux"]["devices"][0]["path"], "/dev/null");
        assert_eq!(v["linux"]["devices"][0]["major"], 1);
        assert_eq!(v["linux"]["devices"][0]["minor"], 3);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
        for r in v["process"]["rlimits"].as_array().unwrap() {
            assert!(r["hard"].as_u64().unwrap() <= RLIMIT);
        }
    }

    #[test]
    fn host_network_only_when_the_tee_needs_it() {
        let p = BundleParams {
            rootfs: "/r".into(),
            args: vec!["/attester".into()],
            env: vec![],
            plugin_dir: "/s/x".into(),
            resources: Resources {
                host_network: true,
                ..Default::default()
            },
        };
        let v = serde_json::to_value(plugin_spec(&p).unwrap()).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn a_path_that_is_no_device_is_refused() {
        let p = BundleParams {
            rootfs: "/r".into(),
            args: vec![],
            env: vec![],
            plugin_dir: "/s/x".into(),
            resources: Resources {
                devices: vec!["/etc/hostname".into()],
                ..Default::default()
            },
        };
        assert_eq!(
            plugin_spec(&p).unwrap_err().message(),
            "/etc/hostname is not a device node"
        );
    }
}

//! systemd units (or a podman quadlet) for a pod VM: the plugin as its own unit,
//! attestd started once the plugin's socket exists (a `.path` unit, as pod VMs order
//! the guest components on socket files, reference §8), and the same ordering for
//! the Confidential Data Hub on attestd's socket. attestd then treats the plugin as
//! `external`.

use std::path::{Path, PathBuf};

use attester_sdk::{Error, Result};

use crate::config::LaunchKind;
use crate::launch::PluginSpec;
use crate::launch::{plugin_args, podman, resources};
use crate::run::DEFAULT_ATTESTATION_SOCK;

/// Where unit-started plugins serve (outside the directory attestd owns).
pub const EXTERNAL_DIR: &str = "/run/attestd/external";

pub struct UnitParams<'a> {
    pub spec: &'a PluginSpec,
    pub attestd: &'a Path,
    pub config_path: &'a Path,
    pub quadlet: bool,
}

/// What `attestd units` writes: unit files, and for a plugin its own unit runs
/// the configuration drop-in that tells attestd so.
pub struct Rendered {
    /// `(file name, contents)` of each unit, in the order to install them.
    pub units: Vec<(String, String)>,
    /// `(file name, contents)` of the drop-in for `<config-dir>/attestd.toml.d/`.
    pub drop_in: Option<(String, String)>,
}

fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c))
            {
                a.clone()
            } else {
                format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Environment=` lines, each assignment quoted as one word.
fn environment(env: &std::collections::BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("Environment={}\n", shell_join(&[format!("{k}={v}")])))
        .collect()
}

/// The plugin's command as its unit's `ExecStart=` names it. systemd resolves a
/// bare name only in its own fixed PATH, so a bare name is taken, as attestd
/// takes it, from the directory attestd is installed in.
fn unit_command(name: &str, cmd: &Path, attestd: &Path) -> Result<PathBuf> {
    if cmd.is_absolute() {
        return Ok(cmd.to_path_buf());
    }
    if cmd.components().count() > 1 {
        return Err(Error::invalid_argument(format!(
            "plugin {name}'s command {} is a relative path: a unit needs an absolute one",
            cmd.display()
        )));
    }
    let dir = attestd
        .parent()
        .filter(|d| d.is_absolute())
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "--attestd {} is not an absolute path: the plugin command {} is resolved beside it",
                attestd.display(),
                cmd.display()
            ))
        })?;
    Ok(dir.join(cmd))
}

/// The `[Unit]` lines ordering a plugin after the network where it needs one
/// (the Azure plugins reach IMDS).
fn network(needed: bool) -> &'static str {
    if needed {
        "Wants=network-online.target\nAfter=network-online.target\n"
    } else {
        ""
    }
}

/// The plugin's socket directory, its own under [`EXTERNAL_DIR`], made by
/// systemd for the unit (and removed when it stops, with any stale socket in it).
fn runtime_directory(name: &str) -> String {
    format!("RuntimeDirectory=attestd/external/{name}\nRuntimeDirectoryMode=0700\n")
}

/// Confinement of a process plugin's unit: what a podman container gets from
/// podman (read-only system, no privileges, only its TEE's devices and paths).
fn sandbox(res: &resources::Resources, tee: &str, socket_dir: &Path) -> String {
    let mut s = String::from(
        "NoNewPrivileges=yes\nCapabilityBoundingSet=\nProtectSystem=strict\nProtectHome=yes\n\
         PrivateTmp=yes\nProtectKernelModules=yes\nProtectControlGroups=yes\n\
         RestrictNamespaces=yes\nRestrictRealtime=yes\nRestrictSUIDSGID=yes\n\
         LockPersonality=yes\nMemoryDenyWriteExecute=yes\nSystemCallArchitectures=native\n",
    );
    s.push_str(if res.host_network {
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"
    } else {
        "RestrictAddressFamilies=AF_UNIX\nPrivateNetwork=yes\n"
    });
    s.push_str("DevicePolicy=closed\n");
    for d in &res.devices {
        s.push_str(&format!("DeviceAllow={} rw\n", d.display()));
    }
    // Every path the TEE's plugin writes, the optional ones too ("-": a path a
    // guest lacks is skipped rather than failing the unit).
    for p in resources::writable(tee) {
        s.push_str(&format!("ReadWritePaths=-{}\n", p.display()));
    }
    // attestd's own directory (its lock and control socket): a unit's plugin
    // runs as root, and a socket on a read-only path still connects.
    s.push_str(&format!("InaccessiblePaths=-{}\n", socket_dir.display()));
    s
}

/// The first line of the drop-in `attestd units` writes.
const DROP_IN_MARKER: &str = "# Written by `attestd units`";

/// Whether `path` is a drop-in `attestd units` wrote (read as the plugin's
/// configuration, it would hide how the plugin is launched).
pub fn is_our_drop_in(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; DROP_IN_MARKER.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == DROP_IN_MARKER.as_bytes())
}

/// The drop-in that makes the units' attestd connect to the unit-started plugin
/// instead of starting a second one.
fn external_drop_in(name: &str, unit: &str, socket: &Path) -> (String, String) {
    (
        format!("50-{unit}.toml"),
        format!(
            "{DROP_IN_MARKER}: plugin {name} runs as {unit}.service, so\n\
             # attestd connects to its socket and starts no second one.\n\
             [plugins.attester.{name}]\nlaunch = \"external\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
}

/// Each unit, in the order to install them, and the drop-in they need.
pub fn render(p: &UnitParams) -> Result<Rendered> {
    let spec = p.spec;
    let name = &spec.name;
    let unit = format!("attestd-{name}");
    let mut out = Vec::new();
    let mut plugin_spec = spec.clone();
    // Inside the unit the plugin serves in its own directory under the external one.
    plugin_spec.socket_dir = EXTERNAL_DIR.into();
    plugin_spec.generation = 0;
    let socket = plugin_spec.socket();
    let own_dir = plugin_spec.plugin_dir();
    let runtime_directory = runtime_directory(name);
    if p.quadlet && spec.config.launch != LaunchKind::Podman {
        return Err(Error::invalid_argument(format!(
            "--quadlet writes a podman quadlet (.container, podman 4.4 or later), but plugin \
             {name} has launch = \"{}\"",
            spec.config.launch.as_str()
        )));
    }
    let tee = spec.config.tee.clone().unwrap_or_default();
    // The target's needs, not this machine's: units are written at image
    // build, on a machine that is no TEE guest.
    let (target, optional) = resources::for_target(&tee);
    if spec.config.launch == LaunchKind::Oci {
        // attestd runs the bundle itself with runc, as kata-agent runs its pause
        // container: one unit, attestd's, and no podman anywhere.
        out.push((
            "attestd.service".into(),
            format!(
                "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\n{net}\n[Service]\n# attestd starts plugin {name} itself: its image unpacked into an OCI bundle\n# under [plugins] oci_dir and run by runc (launch = \"oci\" in {cfg}).\nExecStart={attestd} -c {cfg}\n{reload}# attestd stops its runc containers on SIGTERM; what is left is killed after.\nKillMode=mixed\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                net = network(target.host_network),
                cfg = p.config_path.display(),
                attestd = p.attestd.display(),
                reload = exec_reload(p.attestd, p.config_path),
            ),
        ));
        out.push(cdh_path());
        return Ok(Rendered {
            units: out,
            drop_in: None,
        });
    }
    let res = spec.with_opt_ins(target);
    match spec.config.launch {
        LaunchKind::Podman => {
            let image = spec
                .config
                .image
                .as_deref()
                .ok_or_else(|| Error::failed_precondition("no image configured"))?;
            let r = crate::config::image_ref::ImageRef::parse(image)?;
            let pinned = match &r.digest {
                Some(d) => r.pinned(d),
                None => image.to_string(),
            };
            let optional_note: String = if optional.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = optional.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "# Left out, as a guest may lack them (attestd's own podman and oci\n# launchers bind them when present): {}\n",
                    list.join(", ")
                )
            };
            let net = network(res.host_network);
            if p.quadlet {
                let mut q = format!(
                    "{optional_note}[Unit]\nDescription=attestd attester plugin {name} ({pinned})\nBefore=attestd.service\n{net}\n[Container]\nImage={pinned}\nContainerName={unit}\nNetwork={}\nReadOnly=true\nDropCapability=all\nNoNewPrivileges=true\nUlimit=nofile=1024:1024\nUlimit=nproc=1024:1024\nVolume={own}:{own}:rw\nPodmanArgs={runtime}--pull never\n",
                    if res.host_network { "host" } else { "none" },
                    own = own_dir.display(),
                    runtime = spec
                        .podman_runtime
                        .as_ref()
                        .map(|r| format!("--runtime {r} "))
                        .unwrap_or_default(),
                );
                for d in &res.devices {
                    q.push_str(&format!("AddDevice={}\n", d.display()));
                }
                for m in &res.rw {
                    q.push_str(&format!("Volume={0}:{0}:rw\n", m.display()));
                }
                for m in &res.ro {
                    q.push_str(&format!("Volume={0}:{0}:ro\n", m.display()));
                }
                q.push_str(&environment(&spec.config.env));
                q.push_str(&format!(
                    "Exec={}\n\n[Service]\n{runtime_directory}Restart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                    shell_join(&plugin_args(&plugin_spec, &socket))
                ));
                out.push((format!("{unit}.container"), q));
            } else {
                let args = podman::run_args(&plugin_spec, &socket, &unit, &pinned, &res);
                out.push((
                    format!("{unit}.service"),
                    format!(
                        "{optional_note}[Unit]\nDescription=attestd attester plugin {name} ({pinned})\nBefore=attestd.service\n{net}\n[Service]\n{runtime_directory}ExecStartPre=-/usr/bin/podman rm --force --ignore {unit}\nExecStart=/usr/bin/podman {}\nExecStop=/usr/bin/podman stop --time 3 {unit}\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                        shell_join(&args)
                    ),
                ));
            }
        }
        LaunchKind::Process => {
            let cmd = spec
                .config
                .command
                .as_ref()
                .ok_or_else(|| Error::failed_precondition("no command configured"))?;
            let mut argv = vec![unit_command(name, cmd, p.attestd)?.display().to_string()];
            argv.extend(plugin_args(&plugin_spec, &socket));
            out.push((
                format!("{unit}.service"),
                format!(
                    "[Unit]\nDescription=attestd attester plugin {name}\nBefore=attestd.service\n{net}\n[Service]\n{runtime_directory}{env}ExecStart={}\nRestart=always\n# What a container would get from podman: no privileges, a read-only\n# system, only the devices and paths TEE {tee:?} needs.\n{sandbox}\n[Install]\nWantedBy=multi-user.target\n",
                    shell_join(&argv),
                    net = network(res.host_network),
                    env = environment(&spec.config.env),
                    sandbox = sandbox(&res, &tee, &spec.socket_dir),
                ),
            ));
        }
        // Oci returned above; an external plugin's owner starts it.
        LaunchKind::Oci | LaunchKind::External => {}
    }
    // attestd starts once its plugin listens.
    out.push((
        format!("{unit}.path"),
        format!(
            "[Unit]\nDescription=Start attestd once plugin {name} listens\n\n[Path]\nPathExists={}\nUnit=attestd.service\n\n[Install]\nWantedBy=multi-user.target\n",
            socket.display()
        ),
    ));
    let drop_in = (spec.config.launch != LaunchKind::External)
        .then(|| external_drop_in(name, &unit, &socket));
    let how = match &drop_in {
        Some((file, _)) => format!(
            "# attestd connects to plugin {name}, started by its unit: the drop-in\n# attestd.toml.d/{file} beside the system file sets\n"
        ),
        None => format!("# attestd connects to plugin {name}, started by its owner ({cfg}):\n", cfg = p.config_path.display()),
    };
    out.push((
        "attestd.service".into(),
        format!(
            "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\nAfter={unit}.service\nWants={unit}.service\n\n[Service]\n{how}#   [plugins.attester.{name}]\n#   launch = \"external\"\n#   socket = \"{sock}\"\nExecStart={attestd} -c {cfg}\n{reload}Restart=always\n",
            cfg = p.config_path.display(),
            sock = socket.display(),
            attestd = p.attestd.display(),
            reload = exec_reload(p.attestd, p.config_path),
        ),
    ));
    out.push(cdh_path());
    Ok(Rendered {
        units: out,
        drop_in,
    })
}

/// attestd's `ExecReload=` with the comment that says what it does.
fn exec_reload(attestd: &Path, config_path: &Path) -> String {
    format!(
        "# systemctl reload: replace the plugins whose configuration changed (attestd\n\
         # reload asks this attestd over its control socket, and fails if a plugin kept\n\
         # its old instance).\nExecReload={} reload -c {}\n",
        attestd.display(),
        config_path.display()
    )
}

/// What pod VMs do for the next component: CDH starts when the AA socket exists.
/// Units for an image built once for every TEE (`primary = "auto"`): attestd
/// selects its platform's plugin at boot and runs its pinned image itself
/// (`[plugins] auto_launch`), so there is no plugin unit to write beforehand,
/// only attestd's and the Data Hub's ordering on its socket. attestd's unit
/// starts without waiting for the network, which an attester needs only when
/// asked for evidence (the Azure plugins try IMDS again until their deadline),
/// unless it may pull the attester's image at start (`pulls`: [plugins]
/// registries is set).
pub fn render_selected_at_boot(
    attestd: &Path,
    config_path: &Path,
    pulls: bool,
) -> Vec<(String, String)> {
    vec![
        (
            "attestd.service".into(),
            format!(
                "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\n{net}\n[Service]\n# primary = \"auto\" in {cfg}: attestd probes this machine at start, selects the\n# TEE's plugin and runs the image images.lock pins for it ([plugins] auto_launch).\nExecStart={attestd} -c {cfg}\n{reload}# attestd stops its plugin's container on SIGTERM; what is left is killed after.\nKillMode=mixed\nRestart=always\n# No TEE on this machine (attestd said why) is for good: not retried.\nRestartPreventExitStatus={no_tee}\n\n[Install]\nWantedBy=multi-user.target\n",
                no_tee = crate::select::NO_TEE_EXIT_STATUS,
                net = if pulls {
                    format!("# It may pull the attester's image at start.\n{}", network(true))
                } else {
                    "# No waiting for the network: the Azure plugins reach IMDS only when asked\n# for evidence, and try again until it answers or their deadline passes.\nWants=network-online.target\n".to_string()
                },
                cfg = config_path.display(),
                attestd = attestd.display(),
                reload = exec_reload(attestd, config_path),
            ),
        ),
        cdh_path(),
    ]
}

fn cdh_path() -> (String, String) {
    let aa_sock = DEFAULT_ATTESTATION_SOCK.trim_start_matches("unix://");
    (
        "confidential-data-hub.path".into(),
        format!(
            "[Unit]\nDescription=Start the Confidential Data Hub once attestd serves\n\n[Path]\nPathExists={aa_sock}\nUnit=confidential-data-hub.service\n\n[Install]\nWantedBy=multi-user.target\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PluginConfig, PluginsConfig};
    use attester_sdk::{DeviceRole, Transport};

    fn spec(launch: LaunchKind) -> PluginSpec {
        PluginSpec::with_config(
            "tdx",
            PluginConfig {
                launch,
                command: Some("/usr/libexec/attestd/attester-tdx".into()),
                args: vec!["--ccel".into(), "/x y".into()],
                env: Default::default(),
                transport: Transport::Ttrpc,
                tee: Some("tdx".into()),
                image: Some(format!(
                    "localhost/attestd/attester-tdx@sha256:{}",
                    "a".repeat(64)
                )),
                socket: None,
                host_network: false,
                devices: Vec::new(),
                probe: Vec::new(),
            },
            DeviceRole::Primary,
            &PluginsConfig::default(),
        )
    }

    fn render_for(launch: LaunchKind, quadlet: bool) -> Vec<(String, String)> {
        render(&UnitParams {
            spec: &spec(launch),
            attestd: Path::new("/usr/bin/attestd"),
            config_path: Path::new("/etc/attestd/attestd.toml"),
            quadlet,
        })
        .unwrap()
        .units
    }

    /// `sp`'s units with attestd installed at `attestd`.
    fn render_spec(sp: &PluginSpec, attestd: &str) -> Result<Rendered> {
        render(&UnitParams {
            spec: sp,
            attestd: Path::new(attestd),
            config_path: Path::new("/etc/attestd/attestd.toml"),
            quadlet: false,
        })
    }

    #[test]
    fn podman_service_path_and_ordering() {
        let u = render_for(LaunchKind::Podman, false);
        let names: Vec<_> = u.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "attestd-tdx.service",
                "attestd-tdx.path",
                "attestd.service",
                "confidential-data-hub.path"
            ]
        );
        let svc = &u[0].1;
        assert!(svc.contains("ExecStart=/usr/bin/podman run --rm --pull never --name attestd-tdx --read-only --cap-drop all"), "{svc}");
        assert!(svc.contains("--network none"), "{svc}");
        assert!(
            svc.contains(&format!(
                "localhost/attestd/attester-tdx@sha256:{}",
                "a".repeat(64)
            )),
            "{svc}"
        );
        assert!(
            svc.contains(
                "--ccel \"/x y\" --socket /run/attestd/external/tdx/tdx.sock --transport ttrpc"
            ),
            "{svc}"
        );
        assert!(u[1]
            .1
            .contains("PathExists=/run/attestd/external/tdx/tdx.sock\nUnit=attestd.service"));
        assert!(u[2]
            .1
            .contains("ExecStart=/usr/bin/attestd -c /etc/attestd/attestd.toml"));
        assert!(u[2].1.contains("launch = \"external\""));
        assert!(u[3].1.contains(
            "PathExists=/run/confidential-containers/attestation-agent/attestation-agent.sock"
        ));
    }

    #[test]
    fn quadlet_and_process_forms() {
        let u = render_for(LaunchKind::Podman, true);
        assert_eq!(u[0].0, "attestd-tdx.container");
        assert!(
            u[0].1
                .contains("Network=none\nReadOnly=true\nDropCapability=all"),
            "{}",
            u[0].1
        );
        assert!(u[0]
            .1
            .contains("Exec=--ccel \"/x y\" --socket /run/attestd/external/tdx/tdx.sock"));
        let u = render_for(LaunchKind::Process, false);
        assert!(u[0].1.contains(
            "ExecStart=/usr/libexec/attestd/attester-tdx --ccel \"/x y\" --socket /run/attestd/external/tdx/tdx.sock --transport ttrpc"
        ), "{}", u[0].1);
    }

    #[test]
    fn a_bare_command_is_the_one_beside_attestd() {
        let mut sp = spec(LaunchKind::Process);
        sp.config.command = Some("attester-tdx".into());
        let r = render_spec(&sp, "/opt/attestd/bin/attestd").unwrap();
        assert!(
            r.units[0]
                .1
                .contains("ExecStart=/opt/attestd/bin/attester-tdx --ccel"),
            "{}",
            r.units[0].1
        );
        sp.config.command = Some("bin/attester-tdx".into());
        let e = render_spec(&sp, "/opt/attestd/bin/attestd").err().unwrap();
        assert_eq!(
            e.message(),
            "plugin tdx's command bin/attester-tdx is a relative path: a unit needs an absolute one"
        );
    }

    #[test]
    fn a_process_plugin_is_confined_to_its_tees_devices_and_paths() {
        let svc = &render_for(LaunchKind::Process, false)[0].1;
        for line in [
            "RuntimeDirectory=attestd/external/tdx\nRuntimeDirectoryMode=0700\n",
            "NoNewPrivileges=yes\nCapabilityBoundingSet=\nProtectSystem=strict\n",
            "RestrictAddressFamilies=AF_UNIX\nPrivateNetwork=yes\n",
            "DevicePolicy=closed\nDeviceAllow=/dev/tdx_guest rw\n",
            "ReadWritePaths=-/sys/kernel/config/tsm/report\n\
             ReadWritePaths=-/sys/devices/virtual/misc/tdx_guest/measurements\n",
            // attestd's lock and control socket are out of its sight.
            "InaccessiblePaths=-/run/attestd/plugins\n",
        ] {
            assert!(svc.contains(line), "{line:?} in {svc}");
        }
        assert!(!svc.contains("ExecStartPre"), "{svc}");
        assert!(!svc.contains("network-online"), "{svc}");
    }

    #[test]
    fn an_azure_plugin_waits_for_the_network_and_may_use_it() {
        let mut sp = spec(LaunchKind::Process);
        sp.config.tee = Some("az-snp-vtpm".into());
        let r = render_spec(&sp, "/usr/bin/attestd").unwrap();
        let svc = &r.units[0].1;
        assert!(
            svc.contains("Wants=network-online.target\nAfter=network-online.target\n"),
            "{svc}"
        );
        assert!(
            svc.contains("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"),
            "{svc}"
        );
        assert!(!svc.contains("PrivateNetwork"), "{svc}");
        assert!(svc.contains("DeviceAllow=/dev/tpm0 rw\n"), "{svc}");
        // At boot any TEE may be selected, an Azure one too: attestd brings the
        // network up but does not wait for it, unless it may pull at start.
        let at_boot = |pulls| {
            render_selected_at_boot(
                Path::new("/usr/bin/attestd"),
                Path::new("/etc/attestd/attestd.toml"),
                pulls,
            )[0]
            .1
            .clone()
        };
        let no_pull = at_boot(false);
        assert!(
            no_pull.contains("Wants=network-online.target\n"),
            "{no_pull}"
        );
        assert!(!no_pull.contains("After=network-online"), "{no_pull}");
        let pull = at_boot(true);
        assert!(
            pull.contains("Wants=network-online.target\nAfter=network-online.target\n"),
            "{pull}"
        );
    }

    #[test]
    fn units_that_start_the_plugin_come_with_the_drop_in_that_says_so() {
        let r = render_spec(&spec(LaunchKind::Podman), "/usr/bin/attestd").unwrap();
        let (file, text) = r.drop_in.unwrap();
        assert_eq!(file, "50-attestd-tdx.toml");
        assert!(text.starts_with(DROP_IN_MARKER), "{text}");
        assert!(
            text.ends_with("[plugins.attester.tdx]\nlaunch = \"external\"\nsocket = \"/run/attestd/external/tdx/tdx.sock\"\n"),
            "{text}"
        );
        for launch in [LaunchKind::Oci, LaunchKind::External] {
            let mut sp = spec(launch);
            sp.config.socket = Some("/run/x.sock".into());
            let r = render_spec(&sp, "/usr/bin/attestd").unwrap();
            assert!(r.drop_in.is_none());
        }
    }
}

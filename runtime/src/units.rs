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

/// `(file name, contents)` of each unit, in the order to install them.
pub fn render(p: &UnitParams) -> Result<Vec<(String, String)>> {
    let spec = p.spec;
    let name = &spec.name;
    let socket = PathBuf::from(EXTERNAL_DIR).join(format!("{name}.sock"));
    let unit = format!("attestd-{name}");
    let mut out = Vec::new();
    let prepare = format!("ExecStartPre=/usr/bin/install -d -m 0700 {EXTERNAL_DIR}");
    let mut plugin_spec = spec.clone();
    // Inside the unit the plugin serves in the external directory.
    plugin_spec.socket_dir = EXTERNAL_DIR.into();
    if p.quadlet && spec.config.launch != LaunchKind::Podman {
        return Err(Error::invalid_argument(format!(
            "--quadlet writes a podman quadlet (.container, podman 4.4 or later), but plugin \
             {name} has launch = \"{}\"",
            spec.config.launch.as_str()
        )));
    }
    if spec.config.launch == LaunchKind::Oci {
        // attestd runs the bundle itself with runc, as kata-agent runs its pause
        // container: one unit, attestd's, and no podman anywhere.
        out.push((
            "attestd.service".into(),
            format!(
                "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\n\n[Service]\n# attestd starts plugin {name} itself: its image unpacked into an OCI bundle\n# under [plugins] oci_dir and run by runc (launch = \"oci\" in {cfg}).\nExecStart={attestd} -c {cfg}\n{reload}# attestd stops its runc containers on SIGTERM; what is left is killed after.\nKillMode=mixed\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                cfg = p.config_path.display(),
                attestd = p.attestd.display(),
                reload = exec_reload(p.attestd, p.config_path),
            ),
        ));
        out.push(cdh_path());
        return Ok(out);
    }
    match spec.config.launch {
        LaunchKind::Podman => {
            let image = spec
                .config
                .image
                .as_deref()
                .ok_or_else(|| Error::failed_precondition("no image configured"))?;
            let r = crate::launch::image::ImageRef::parse(image)?;
            let pinned = match &r.digest {
                Some(d) => r.pinned(d),
                None => image.to_string(),
            };
            let tee = spec.config.tee.clone().unwrap_or_default();
            // The target's needs, not this machine's: units are written at image
            // build, on a machine that is no TEE guest.
            let (target, optional) = resources::for_target(&tee);
            let res = spec.with_opt_ins(target);
            let optional_note: String = if optional.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = optional.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "# Left out, as a guest may lack them (attestd's own podman and oci\n# launchers bind them when present): {}\n",
                    list.join(", ")
                )
            };
            if p.quadlet {
                let mut q = format!(
                    "{optional_note}[Unit]\nDescription=attestd attester plugin {name} ({pinned})\nBefore=attestd.service\n\n[Container]\nImage={pinned}\nContainerName={unit}\nNetwork={}\nReadOnly=true\nDropCapability=all\nNoNewPrivileges=true\nUlimit=nofile=1024:1024\nUlimit=nproc=1024:1024\nVolume={EXTERNAL_DIR}:{EXTERNAL_DIR}:rw\nPodmanArgs={runtime}--pull never\n",
                    if res.host_network { "host" } else { "none" },
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
                for (k, v) in &spec.config.env {
                    q.push_str(&format!("Environment={k}={v}\n"));
                }
                q.push_str(&format!(
                    "Exec={}\n\n[Service]\n{prepare}\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                    shell_join(&plugin_args(&plugin_spec, &socket))
                ));
                out.push((format!("{unit}.container"), q));
            } else {
                let args = podman::run_args(&plugin_spec, &socket, &unit, &pinned, &res);
                out.push((
                    format!("{unit}.service"),
                    format!(
                        "{optional_note}[Unit]\nDescription=attestd attester plugin {name} ({pinned})\nBefore=attestd.service\n\n[Service]\n{prepare}\nExecStartPre=-/usr/bin/podman rm --force --ignore {unit}\nExecStart=/usr/bin/podman {}\nExecStop=/usr/bin/podman stop --time 3 {unit}\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
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
            let mut argv = vec![cmd.display().to_string()];
            argv.extend(plugin_args(&plugin_spec, &socket));
            let env: String = spec
                .config
                .env
                .iter()
                .map(|(k, v)| format!("Environment={k}={v}\n"))
                .collect();
            out.push((
                format!("{unit}.service"),
                format!(
                    "[Unit]\nDescription=attestd attester plugin {name}\nBefore=attestd.service\n\n[Service]\n{prepare}\n{env}ExecStart={}\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
                    shell_join(&argv)
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
    out.push((
        "attestd.service".into(),
        format!(
            "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\nAfter={unit}.service\nWants={unit}.service\n\n[Service]\n# In {cfg}, the plugin is started by its unit:\n#   [plugins.attester.{name}]\n#   launch = \"external\"\n#   socket = \"{sock}\"\nExecStart={attestd} -c {cfg}\n{reload}Restart=always\n",
            cfg = p.config_path.display(),
            sock = socket.display(),
            attestd = p.attestd.display(),
            reload = exec_reload(p.attestd, p.config_path),
        ),
    ));
    out.push(cdh_path());
    Ok(out)
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
/// only attestd's and the Data Hub's ordering on its socket.
pub fn render_selected_at_boot(attestd: &Path, config_path: &Path) -> Vec<(String, String)> {
    vec![
        (
            "attestd.service".into(),
            format!(
                "[Unit]\nDescription=attestd: the attestation-agent API over per-TEE plugins\n\n[Service]\n# primary = \"auto\" in {cfg}: attestd probes this machine at start, selects the\n# TEE's plugin and runs the image images.lock pins for it ([plugins] auto_launch).\nExecStart={attestd} -c {cfg}\n{reload}# attestd stops its plugin's container on SIGTERM; what is left is killed after.\nKillMode=mixed\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
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
                "--ccel \"/x y\" --socket /run/attestd/external/tdx.sock --transport ttrpc"
            ),
            "{svc}"
        );
        assert!(u[1]
            .1
            .contains("PathExists=/run/attestd/external/tdx.sock\nUnit=attestd.service"));
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
            .contains("Exec=--ccel \"/x y\" --socket /run/attestd/external/tdx.sock"));
        let u = render_for(LaunchKind::Process, false);
        assert!(u[0].1.contains(
            "ExecStart=/usr/libexec/attestd/attester-tdx --ccel \"/x y\" --socket /run/attestd/external/tdx.sock --transport ttrpc"
        ), "{}", u[0].1);
    }
}

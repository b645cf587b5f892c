//! `attestd units`: systemd units (or podman quadlets) for attestd and its plugin.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use attestd::supervisor::PluginSpec;
use attester_sdk::DeviceRole;
use clap::Args;

use super::{one_shot_config, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct UnitsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Plugin to write units for (default: the primary; "auto" selects).
    #[arg(long)]
    plugin: Option<String>,
    /// Podman quadlet (.container) for the plugin instead of a .service running podman.
    #[arg(long)]
    quadlet: bool,
    /// With `primary = "auto"`: select at boot, not now (an image built once for
    /// every TEE): attestd's unit and the Data Hub's, no plugin unit.
    #[arg(long, conflicts_with_all = ["plugin", "quadlet"])]
    at_boot: bool,
    /// The config file path the units pass to attestd.
    #[arg(long, default_value = "/etc/attestd/attestd.toml")]
    config_path: PathBuf,
    /// Where attestd is installed.
    #[arg(long, default_value = "/usr/bin/attestd")]
    attestd: PathBuf,
    /// Write each unit into this directory (created if missing) instead of
    /// printing them.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// With --out-dir: where the configuration drop-in goes that makes attestd
    /// connect to the unit-started plugin [default: --config-dir's attestd.toml.d].
    #[arg(long, requires = "out_dir")]
    drop_in_dir: Option<PathBuf>,
}

pub(crate) async fn cmd_units(a: UnitsArgs) -> Result<()> {
    use attestd::config::layers;
    // The plugin as configured, not as an earlier run's drop-in turned it
    // (external): rendering again gives the same units.
    let config_dir = a.config.dir()?;
    let mut files = layers::sources(&config_dir, a.config.config_file.as_deref())?;
    files.dir.retain(|f| !attestd::units::is_our_drop_in(f));
    let layered = layers::load(&files, a.config.config_file_source)?;
    let plugins = &layered.config.plugins;
    let name = a
        .plugin
        .clone()
        .or_else(|| plugins.primary.clone())
        .ok_or_else(|| anyhow!("no plugin: set [plugins] primary or pass --plugin"))?;
    if a.at_boot {
        if name != "auto" {
            bail!("--at-boot needs [plugins] primary = \"auto\" (it is {name:?})");
        }
        let units = attestd::units::render_selected_at_boot(
            &a.attestd,
            &a.config_path,
            !plugins.registries.is_empty(),
        );
        return write_units(&units, a.out_dir.as_deref());
    }
    let (name, pc) = if name == "auto" {
        let mut one_shot = one_shot_config(&a.config)?;
        one_shot.plugins.sysroot = plugins.sysroot.clone();
        let _lock =
            attestd::supervisor::claim_socket_dir(&one_shot.plugins.socket_dir).map_err(sdk)?;
        let sel = attestd::select::select(
            &one_shot.plugins,
            &one_shot.plugins.sysroot,
            true,
            false,
            std::time::Duration::ZERO,
        )
        .await;
        let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
        let sel = sel.map_err(sdk)?;
        if let Some(s) = &sel.supervisor {
            s.stop().await;
        }
        (sel.name, sel.config)
    } else {
        let pc = plugins
            .attester
            .get(&name)
            .cloned()
            .ok_or_else(|| anyhow!("no [plugins.attester.{name}] table in the config"))?;
        (name, pc)
    };
    let spec = PluginSpec::with_config(&name, pc, DeviceRole::Primary, plugins);
    let rendered = attestd::units::render(&attestd::units::UnitParams {
        spec: &spec,
        attestd: &a.attestd,
        config_path: &a.config_path,
        quadlet: a.quadlet,
    })
    .map_err(sdk)?;
    if let Some((file, _)) = &rendered.drop_in {
        refuse_shadowed_drop_in(&layered, &name, file, &a.config_path)?;
    }
    let drop_in_dir = match &a.drop_in_dir {
        Some(d) => d.clone(),
        None => config_dir.join(layers::DROP_IN_DIR),
    };
    if let (Some((file, text)), Some(_)) = (&rendered.drop_in, &a.out_dir) {
        std::fs::create_dir_all(&drop_in_dir)
            .with_context(|| format!("cannot create {}", drop_in_dir.display()))?;
        let path = drop_in_dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    write_units(&rendered.units, a.out_dir.as_deref())?;
    if let (Some((file, text)), None) = (&rendered.drop_in, &a.out_dir) {
        println!("# ---- {}\n{text}", drop_in_dir.join(file).display());
    }
    Ok(())
}

/// A `launch` for the plugin read after the units' drop-in wins over it, and
/// attestd would start a second plugin beside the unit's: say so rather than
/// write units that do that. Read after it are a later drop-in and the `-c`
/// file, when the units pass that same file (`--config-path`).
fn refuse_shadowed_drop_in(
    layered: &attestd::config::layers::Layered,
    name: &str,
    drop_in: &str,
    config_path: &Path,
) -> Result<()> {
    let key = format!("plugins.attester.{name}.launch");
    let Some(from) = layered.origins.get(&key) else {
        return Ok(());
    };
    let is_cli = layered.cli_source.is_some() && layered.files.last() == Some(from);
    let same_as_units = match (from.canonicalize(), config_path.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => from == config_path,
    };
    let later_drop_in = !is_cli
        && from.parent().and_then(Path::file_name)
            == Some(std::ffi::OsStr::new(attestd::config::layers::DROP_IN_DIR))
        && from
            .file_name()
            .is_some_and(|f| f > std::ffi::OsStr::new(drop_in));
    if (is_cli && same_as_units) || later_drop_in {
        bail!(
            "{}: its {key} is read after the drop-in {drop_in} these units need \
             (launch = \"external\"), so attestd would start a second plugin {name} beside \
             its unit: set [plugins.attester.{name}] in the system file or an earlier drop-in",
            from.display()
        );
    }
    Ok(())
}

fn write_units(units: &[(String, String)], out_dir: Option<&Path>) -> Result<()> {
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (file, text) in units {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
        }
        return Ok(());
    }
    for (file, text) in units {
        println!("# ---- {file}\n{text}");
    }
    Ok(())
}

//! `attestd evidence`: one shot, start the plugin and print its evidence.

use anyhow::{bail, Result};
use attestd::run;
use clap::Args;

use super::{one_shot_config, print_bytes, runtime_data, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct EvidenceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Runtime data: text, @file, or hex:<hex>.
    #[arg(long, default_value = "")]
    runtime_data: String,
    /// Plugin to ask (default: the primary).
    #[arg(long)]
    plugin: Option<String>,
}

pub(crate) async fn cmd_evidence(a: EvidenceArgs) -> Result<()> {
    let mut config = one_shot_config(&a.config)?;
    if let Some(name) = a.plugin {
        if !config.plugins.attester.contains_key(&name) {
            bail!("--plugin {name:?}: no [plugins.attester.{name}] table in the config");
        }
        config.plugins.primary = Some(name);
    }
    config.plugins.additional.clear();
    let data = runtime_data(&a.runtime_data)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let evidence = service.get_evidence(data).await.map_err(sdk);
    service.stop().await;
    // The private one-shot directory (see one_shot_config), lock file included.
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    print_bytes(&evidence?)
}

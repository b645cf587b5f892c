//! `attestd resource`: one shot, attest to the KBS and write a resource.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use attestd::run;
use clap::Args;

use super::{one_shot_config, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct ResourceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// kbs:///<repo>/<type>/<tag>
    uri: String,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) async fn cmd_resource(a: ResourceArgs) -> Result<()> {
    let path = attestd::keyprovider::resource_path(&a.uri).map_err(sdk)?;
    let config = one_shot_config(&a.config)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let data = service.kbs_resource(&path).await.map_err(sdk);
    service.stop().await;
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    let data = data?;
    match a.out {
        Some(p) => {
            std::fs::write(&p, &data).with_context(|| format!("cannot write {}", p.display()))
        }
        None => {
            std::io::stdout().lock().write_all(&data)?;
            Ok(())
        }
    }
}

//! `attestd config`: the effective configuration, each key with the file it came from.

use anyhow::Result;
use clap::Args;

use super::{load_layered, ConfigArg};

#[derive(Args)]
pub(crate) struct ConfigCmdArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_config(a: ConfigCmdArgs) -> Result<()> {
    let layered = load_layered(&a.config)?;
    print!("{}", layered.render(a.json)?);
    if a.json {
        println!();
    }
    Ok(())
}

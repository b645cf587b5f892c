//! `attestd token`: one shot, attest to the configured KBS and print GetToken("kbs")'s answer.

use anyhow::Result;
use attestd::run;
use clap::Args;

use super::{one_shot_config, print_bytes, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub(crate) async fn cmd_token(a: TokenArgs) -> Result<()> {
    let config = one_shot_config(&a.config)?;
    let service = run::start_plugins(&config).await.map_err(sdk)?;
    let token = service.get_token("kbs").await.map_err(sdk);
    service.stop().await;
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    print_bytes(&token?)
}

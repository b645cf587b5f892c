//! `attestd select`: probe this platform, confirm with the candidate's Detect, print the choice.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{one_shot_config, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct SelectArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Probe under this root instead of [plugins] sysroot (fake trees, chroots).
    #[arg(long)]
    sysroot: Option<PathBuf>,
    /// Skip the plugins' Detect: take the first positive probe.
    #[arg(long)]
    no_confirm: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn cmd_select(a: SelectArgs) -> Result<()> {
    let mut config = one_shot_config(&a.config)?;
    if let Some(root) = a.sysroot {
        config.plugins.sysroot = root;
    }
    let plugins = &config.plugins;
    let _lock = attestd::supervisor::claim_socket_dir(&plugins.socket_dir).map_err(sdk)?;
    // An operator's question is answered from this moment's probes.
    let sel = attestd::select::select(
        plugins,
        &plugins.sysroot,
        !a.no_confirm,
        false,
        std::time::Duration::ZERO,
    )
    .await;
    let result = match sel {
        Ok(sel) => {
            if let Some(s) = &sel.supervisor {
                s.stop().await;
            }
            let origin = sel
                .config
                .image
                .clone()
                .or_else(|| sel.config.command.as_ref().map(|c| c.display().to_string()))
                .or_else(|| sel.config.socket.as_ref().map(|c| c.display().to_string()))
                .unwrap_or_default();
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "tee": sel.tee,
                        "plugin": sel.name,
                        "launch": sel.config.launch.as_str(),
                        "image": sel.config.image,
                        "origin": origin,
                        "confirmed": sel.confirmed,
                        "probes": sel.probes,
                        "skipped": sel.skipped,
                    }))?
                );
            } else {
                println!("{} {}", sel.tee, origin);
                for s in &sel.skipped {
                    eprintln!("skipped {}: {}", s.tee, s.why);
                }
            }
            Ok(())
        }
        Err(e) => Err(sdk(e)),
    };
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    result
}

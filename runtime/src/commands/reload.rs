//! `attestd reload`: ask the running attestd to read its configuration again.

use anyhow::{bail, Result};

use super::{load_config, sdk, ConfigArg};

pub(crate) async fn cmd_reload(a: ConfigArg) -> Result<()> {
    use attestd::control;
    let config = load_config(&a)?;
    let plugins = &config.plugins;
    // Each plugin may take its whole start-up to be replaced, one after another.
    let n = u32::try_from(plugins.additional.len() + 1).unwrap_or(u32::MAX);
    let timeout = plugins.startup_timeout().saturating_mul(n) + std::time::Duration::from_secs(10);
    let report = control::reload(&plugins.socket_dir, timeout)
        .await
        .map_err(sdk)?;
    if let Some(e) = &report.error {
        bail!("reload: {e}");
    }
    for p in &report.plugins {
        match (p.outcome, &p.why) {
            (control::Outcome::Replaced, _) => println!(
                "{}: replaced (pid {} → {})",
                p.plugin,
                p.old_pid.map_or("-".into(), |x| x.to_string()),
                p.new_pid.map_or("-".into(), |x| x.to_string())
            ),
            (outcome, Some(why)) => println!("{}: {outcome}: {why}", p.plugin),
            (outcome, None) => println!("{}: {outcome}", p.plugin),
        }
    }
    if !report.pending.is_empty() {
        println!(
            "only a restart applies: {} (the files now say otherwise than attestd started with)",
            report.pending.join(", ")
        );
    }
    if !report.succeeded() {
        let kept: Vec<&str> = report
            .plugins
            .iter()
            .filter(|p| p.outcome == control::Outcome::Kept)
            .map(|p| p.plugin.as_str())
            .collect();
        bail!(
            "reload: {} did not take the new configuration (above)",
            kept.join(", ")
        );
    }
    if !report.pending.is_empty() {
        // systemctl reload says so: what was asked is not all in effect.
        bail!(
            "reload: {} changed key(s) take effect only at the next start (above)",
            report.pending.len()
        );
    }
    Ok(())
}

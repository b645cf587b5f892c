//! `attestd eventlog`: print, replay and check the runtime-measurement event log.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use attestd::run;
use clap::Args;

use super::{load_config, one_shot_config, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct EventlogArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The log (default: [eventlog_config] path of the config).
    #[arg(long)]
    path: Option<PathBuf>,
    /// Do not start the primary plugin to read its registers.
    #[arg(long)]
    no_check: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn cmd_eventlog(a: EventlogArgs) -> Result<()> {
    use attestd::eventlog::{record, Layout, Registers as _};
    let config = load_config(&a.config)?;
    let path = a
        .path
        .unwrap_or_else(|| config.eventlog_config.path.clone());
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let records = record::parse(&bytes).map_err(sdk)?;
    let replayed = record::replay(records.iter().map(|(_, r)| r)).map_err(sdk)?;
    // Registers as the plugin reads them, unless told not to start it.
    let mut actual = std::collections::BTreeMap::new();
    let mut check_error = None;
    if !a.no_check {
        let mut one_shot = one_shot_config(&a.config)?;
        one_shot.plugins.additional.clear();
        match run::start_plugins(&one_shot).await {
            Ok(service) => {
                let primary = service.plugins().next().cloned();
                if let Some(p) = primary {
                    let hs = p.identity();
                    match Layout::of(&hs.info.tee, &hs.info.capabilities).map_err(sdk)? {
                        Some(layout) => {
                            for index in replayed.keys() {
                                let register = layout.register_of_index(*index);
                                let v = p.read(register).await.map_err(sdk);
                                actual.insert(*index, v.map(hex::encode));
                            }
                        }
                        None => {
                            check_error = Some(format!("plugin {} cannot read registers", p.name()))
                        }
                    }
                }
                service.stop().await;
                let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&one_shot.plugins.socket_dir);
                check_error = Some(e.chain());
            }
        }
    }
    let registers: Vec<serde_json::Value> = replayed
        .iter()
        .map(|(index, value)| {
            let (plugin, matches) = match actual.get(index) {
                Some(Ok(v)) => (
                    serde_json::json!(v),
                    serde_json::json!(*v == hex::encode(value)),
                ),
                Some(Err(e)) => (
                    serde_json::json!({ "error": e.to_string() }),
                    serde_json::Value::Null,
                ),
                None => (serde_json::Value::Null, serde_json::Value::Null),
            };
            serde_json::json!({
                "index": index,
                "replayed": hex::encode(value),
                "plugin": plugin,
                "matches": matches,
            })
        })
        .collect();
    let mismatch = registers.iter().any(|r| r["matches"] == false);
    if a.json {
        let entries: Vec<serde_json::Value> = records
            .iter()
            .map(|(offset, r)| {
                serde_json::json!({
                    "offset": offset,
                    "index": r.index,
                    "event_type": r.event_type,
                    "alg": r.alg.name(),
                    "digest": hex::encode(&r.digest),
                    "text": r.text,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": path,
                "entries": entries,
                "registers": registers,
                "check_error": check_error,
            }))?
        );
    } else {
        for (n, (_, r)) in records.iter().enumerate() {
            let kind = if r.event_type == record::EV_NO_ACTION {
                "INIT "
            } else {
                "EVENT"
            };
            println!(
                "#{n:<4} index {:<3} {kind} {}:{}  {}",
                r.index,
                r.alg.name(),
                hex::encode(&r.digest),
                attestd::echo::escaped(&r.text)
            );
        }
        for r in &registers {
            let verdict = match (&r["plugin"], &r["matches"]) {
                (serde_json::Value::String(_), serde_json::Value::Bool(true)) => {
                    "matches the plugin".to_string()
                }
                (serde_json::Value::String(v), _) => format!("DOES NOT MATCH the plugin's {v}"),
                (serde_json::Value::Object(o), _) => format!("plugin read failed: {}", o["error"]),
                _ => "not checked".to_string(),
            };
            println!(
                "index {} replays to {}: {verdict}",
                r["index"],
                r["replayed"].as_str().unwrap_or_default()
            );
        }
        if let Some(e) = &check_error {
            println!("not checked against the plugin: {e}");
        }
    }
    if mismatch {
        bail!(
            "the event log {} does not replay to the plugin's registers",
            path.display()
        );
    }
    // Asked to check and could not: not a success (--no-check says not to).
    let unread = registers.iter().any(|r| !r["plugin"].is_string());
    if !a.no_check && (check_error.is_some() || unread) {
        bail!(
            "the event log {} could not be checked against the plugin's registers{}",
            path.display(),
            check_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

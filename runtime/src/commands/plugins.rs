//! `attestd plugins`: start each configured plugin, print its handshake and health.

use anyhow::{bail, Result};
use attestd::config::Config;
use attestd::supervisor::{PluginSpec, Supervisor};
use attester_sdk::DeviceRole;
use clap::Args;

use super::{one_shot_config, sdk, ConfigArg};

#[derive(Args)]
pub(crate) struct PluginsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn cmd_plugins(a: PluginsArgs) -> Result<()> {
    let config = one_shot_config(&a.config)?;
    if config.plugins.attester.is_empty() {
        bail!("no plugins configured: add [plugins.attester.<name>] tables to the config file");
    }
    let _lock = attestd::supervisor::claim_socket_dir(&config.plugins.socket_dir).map_err(sdk)?;
    let mut rows = Vec::new();
    for name in config.plugins.attester.keys() {
        let (role, label) = if Some(name) == config.plugins.primary.as_ref() {
            (DeviceRole::Primary, "primary")
        } else if config.plugins.additional.contains(name) {
            (DeviceRole::Additional, "additional")
        } else {
            (DeviceRole::Primary, "unused")
        };
        let probe = probe(name, role, &config).await;
        rows.push(serde_json::json!({ "name": name, "role": label, "probe": probe }));
    }
    // The private one-shot directory (see one_shot_config), lock file included.
    let _ = std::fs::remove_dir_all(&config.plugins.socket_dir);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in &rows {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let (p, hs) = (&r["probe"], &r["probe"]["handshake"]);
        match p.get("error") {
            Some(e) => println!("{} ({}): error: {}", s(&r["name"]), s(&r["role"]), s(e)),
            None => {
                let pv = &p["provenance"];
                let origin = match (pv.get("image"), pv.get("command"), pv.get("socket")) {
                    (Some(_), _, _) => {
                        format!("image={} digest={}", s(&pv["image"]), s(&pv["digest"]))
                    }
                    (None, Some(c), _) => format!("command={}", s(c)),
                    (None, None, Some(sock)) => format!("socket={}", s(sock)),
                    _ => String::new(),
                };
                println!(
                    "{} ({}): tee={} transport={} protocol=v{} plugin={} {} launch={} {origin} health={}",
                    s(&r["name"]),
                    s(&r["role"]),
                    s(&hs["info"]["tee"]),
                    s(&hs["transport"]),
                    hs["protocol_version"],
                    s(&hs["info"]["name"]),
                    s(&hs["info"]["version"]),
                    s(&pv["launch"]),
                    s(&p["health"]),
                )
            }
        }
    }
    Ok(())
}

/// Start one plugin, read its handshake and health, stop it.
async fn probe(name: &str, role: DeviceRole, config: &Config) -> serde_json::Value {
    let started = match PluginSpec::new(name, role, &config.plugins) {
        Ok(spec) => Supervisor::start(spec).await,
        Err(e) => Err(e),
    };
    let s = match started {
        Ok(s) => s,
        Err(e) => return serde_json::json!({ "error": e.chain() }),
    };
    let (health, provenance) = match s.live().await {
        Ok(l) => (
            match l.client.check().await {
                Ok(()) => "serving".to_string(),
                Err(e) => e.chain(),
            },
            serde_json::to_value(&l.provenance).unwrap_or_default(),
        ),
        Err(e) => (e.chain(), serde_json::Value::Null),
    };
    let v = serde_json::json!({ "handshake": s.identity(), "health": health, "provenance": provenance });
    s.stop().await;
    v
}

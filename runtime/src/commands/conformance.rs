//! `attestd conformance`: drive a plugin through the plugin contract and print each check.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

#[derive(Args)]
pub(crate) struct ConformanceArgs {
    /// A plugin already serving here (the SIGTERM check is then skipped);
    /// otherwise give its command after `--` and the kit starts it.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The transport it serves (and is started with).
    #[arg(long, default_value = "ttrpc")]
    transport: attester_sdk::Transport,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The plugin's command and arguments; the kit adds --socket and --transport.
    #[arg(last = true)]
    command: Vec<String>,
}

pub(crate) async fn cmd_conformance(a: ConformanceArgs) -> Result<()> {
    use attestd::conformance::{self, Target};
    attester_sdk::init_logging("warn");
    let (checks, cleanup) = match (&a.socket, a.command.split_first()) {
        (Some(socket), None) => {
            let t = Target {
                socket,
                transport: a.transport,
                pid: None,
            };
            (conformance::run(&t).await, None)
        }
        (None, Some((program, args))) => {
            use std::os::unix::fs::DirBuilderExt as _;
            let dir =
                std::env::temp_dir().join(format!("attestd-conformance-{}", std::process::id()));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let socket = dir.join("plugin.sock");
            let mut child = std::process::Command::new(program)
                .args(args)
                .arg("--socket")
                .arg(&socket)
                .arg("--transport")
                .arg(a.transport.to_string())
                // Its own chatter off the report, unless asked for.
                .env(
                    "ATTESTD_LOG",
                    std::env::var("ATTESTD_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {program}"))?;
            let deadline = std::time::Instant::now() + conformance::START_TIMEOUT;
            // Listening, not just bound: the file appears at bind(), and a connect
            // before listen() is refused.
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&dir);
                    bail!("{program} exited before serving ({status})");
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    bail!(
                        "{program} did not serve on {} within {} s",
                        socket.display(),
                        conformance::START_TIMEOUT.as_secs()
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let t = Target {
                socket: &socket,
                transport: a.transport,
                pid: Some(child.id()),
            };
            let checks = conformance::run(&t).await;
            // Still running when the SIGTERM check failed: not left behind.
            let _ = child.kill();
            let _ = child.wait();
            (checks, Some(dir))
        }
        (Some(_), Some(_)) => bail!("give either --socket or the plugin's command, not both"),
        (None, None) => {
            bail!("give the plugin's command after --, or --socket of a running plugin")
        }
    };
    if let Some(dir) = cleanup {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (text, ok) = conformance::report(&checks);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{text}");
    }
    if !ok {
        bail!("the plugin does not conform: see the FAIL lines");
    }
    Ok(())
}

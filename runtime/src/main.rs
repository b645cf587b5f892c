//! `attestd`: the daemon and its operator commands. This file only parses the
//! command line and dispatches; each subcommand is a module of `commands`. The
//! operator commands are feature `tools` (on by default; docs/benchmarks.md,
//! "One binary or two", measured the daemon without them).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::run;

/// attestd: the attestation-agent API, served by per-TEE attester plugins.
///
/// Without a subcommand, `attestd` runs the daemon with upstream AA's flags.
#[derive(Parser)]
#[command(name = "attestd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Run(run::RunArgs),
    #[cfg(feature = "tools")]
    #[command(flatten)]
    Tool(commands::Tool),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            None => run::cmd_run(cli.run).await,
            Some(Cmd::Run(a)) => run::cmd_run(a).await,
            #[cfg(feature = "tools")]
            Some(Cmd::Tool(t)) => t.run().await,
        }
    });
    // Plugins are stopped by now; leave no `cli-<pid>` directory behind.
    commands::remove_one_shot_dir();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = commands::hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

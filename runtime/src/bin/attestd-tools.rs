//! `attestd-tools`: attestd's operator commands (`evidence`, `client`, `units`,
//! `conformance`, …) and the daemon (`run`), in one binary. Installed beside the
//! daemon-only `attestd`, which execs it for every subcommand but `run`, so
//! `attestd <command>` works as documented while the daemon carries only what it
//! serves (docs/benchmarks.md, "One binary or two"). This file only parses the
//! command line and dispatches.

#[path = "../commands/mod.rs"]
mod commands;
#[path = "../commands/tool.rs"]
mod tool;

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
    #[command(flatten)]
    Tool(tool::Tool),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = commands::block_on(async {
        match cli.cmd {
            None => run::cmd_run(cli.run).await,
            Some(Cmd::Run(a)) => run::cmd_run(a).await,
            Some(Cmd::Tool(t)) => t.run().await,
        }
    });
    // Plugins are stopped by now; leave no `cli-<pid>` directory behind.
    tool::remove_one_shot_dir();
    commands::report(result)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_daemons_help_names_every_operator_command() {
        // The daemon cannot ask clap for this binary's commands: it lists them.
        let daemon = include_str!("../main.rs");
        let listed = daemon
            .split("The operator commands (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect("the daemon's after_help");
        let listed: Vec<&str> = listed
            .split(',')
            .map(|w| w.trim().trim_start_matches('\\').trim())
            .collect();
        let tools: Vec<String> = super::Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "run")
            .collect();
        assert_eq!(listed, tools);
    }
}

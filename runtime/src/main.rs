//! `attestd`: the daemon. This file only parses the command line and dispatches;
//! the daemon is `commands::run`. Every other subcommand is an operator command
//! in `attestd-tools`, installed beside this binary: `attestd <command>` execs it,
//! so the daemon carries only what it serves (docs/benchmarks.md, "One binary or
//! two", measured 0.78 MB less resident memory).

mod commands;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::run;

/// The operator commands' binary, looked for beside this one.
const TOOLS: &str = "attestd-tools";

/// attestd: the attestation-agent API, served by per-TEE attester plugins.
///
/// Without a subcommand, `attestd` runs the daemon with upstream AA's flags.
#[derive(Parser)]
#[command(
    name = "attestd",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "The operator commands (evidence, plugins, client, eventlog, select, units, token, \
                  resource, config, conformance, prefetch, reload) are in attestd-tools, beside \
                  this binary: `attestd <command>` runs them."
)]
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
}

/// Where a command line goes, by its first argument.
#[derive(Debug, PartialEq)]
enum Route {
    /// The daemon: no subcommand (upstream AA's flags), or `run`.
    Daemon,
    /// Help: attestd-tools lists every command; this binary only the daemon's.
    Help,
    /// Any other subcommand: an operator command, or a typo attestd-tools names.
    Tools,
}

fn route(first: Option<&OsStr>) -> Route {
    match first.map(|a| a.to_str()) {
        None | Some(Some("run")) => Route::Daemon,
        Some(Some("-h" | "--help" | "help")) => Route::Help,
        // Flags are the daemon's; a word that is not UTF-8 is no command either,
        // and clap refuses it below.
        Some(Some(a)) if a.starts_with('-') => Route::Daemon,
        Some(None) => Route::Daemon,
        Some(Some(_)) => Route::Tools,
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let route = route(args.get(1).map(OsString::as_os_str));
    if route != Route::Daemon {
        // exec returns only when it failed.
        let failed = match std::env::current_exe() {
            Ok(exe) => {
                let tools = exe.with_file_name(TOOLS);
                let e = std::process::Command::new(&tools)
                    .arg0(
                        args.first()
                            .map(OsString::as_os_str)
                            .unwrap_or(OsStr::new("attestd")),
                    )
                    .args(&args[1..])
                    .exec();
                format!("{}: {e}", tools.display())
            }
            Err(e) => format!("cannot find this binary's directory: {e}"),
        };
        if route == Route::Tools {
            eprintln!(
                "error: `attestd {}` is an operator command, in {TOOLS}, which this attestd \
                 cannot run ({failed})\nhint: install {TOOLS} beside attestd (scripts/install.sh \
                 and the attestd image do)",
                args[1].to_string_lossy()
            );
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse_from(args);
    commands::report(commands::block_on(match cli.cmd {
        None => run::cmd_run(cli.run),
        Some(Cmd::Run(a)) => run::cmd_run(a),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_argument_decides_who_answers() {
        let r = |a: &str| route(Some(OsStr::new(a)));
        assert_eq!(route(None), Route::Daemon);
        assert_eq!(r("run"), Route::Daemon);
        assert_eq!(r("--attestation_sock"), Route::Daemon);
        assert_eq!(r("-c"), Route::Daemon);
        assert_eq!(r("--version"), Route::Daemon);
        assert_eq!(r("--help"), Route::Help);
        assert_eq!(r("-h"), Route::Help);
        assert_eq!(r("help"), Route::Help);
        assert_eq!(r("client"), Route::Tools);
        assert_eq!(r("units"), Route::Tools);
        assert_eq!(r("no-such-command"), Route::Tools);
    }
}

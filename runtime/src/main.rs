//! `attestd`: the daemon and its operator commands. This file only parses the
//! command line and dispatches; each subcommand is a module of `commands`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::{
    client, config, conformance, eventlog, evidence, plugins, reload, resource, run, select, token,
    units, ConfigArg,
};

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
    /// One shot: start the plugin, handshake, print its evidence JSON.
    Evidence(evidence::EvidenceArgs),
    /// Start each configured plugin, print its handshake and health, stop it.
    Plugins(plugins::PluginsArgs),
    /// Call a running attestd over its AA API.
    Client(client::ClientArgs),
    /// Print the runtime-measurement event log, replay it, and compare with the
    /// primary plugin's registers.
    Eventlog(eventlog::EventlogArgs),
    /// Probe this platform, confirm with the candidate plugin's Detect, print the
    /// chosen TEE and its image.
    Select(select::SelectArgs),
    /// Print systemd units (or podman quadlet files) for attestd and its plugin.
    Units(units::UnitsArgs),
    /// One shot: attest to the configured KBS and print GetToken("kbs")'s answer.
    Token(token::TokenArgs),
    /// One shot: attest to the KBS and write a resource (kbs:///<repo>/<type>/<tag>).
    Resource(resource::ResourceArgs),
    /// Print the effective configuration: each key, its value, and the file it
    /// came from (system file, drop-in, -c) or "default".
    Config(config::ConfigCmdArgs),
    /// Drive a plugin through the plugin contract (handshake, report-data
    /// limits, error codes, health, init-data, SIGTERM) and print each check.
    Conformance(conformance::ConformanceArgs),
    /// Ask the running attestd (the one holding the config's socket directory)
    /// to read its configuration again and replace the plugins whose
    /// configuration changed, without a failed call; print what it did to each,
    /// and fail when a plugin kept its running instance.
    Reload(ConfigArg),
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
            Some(Cmd::Evidence(a)) => evidence::cmd_evidence(a).await,
            Some(Cmd::Plugins(a)) => plugins::cmd_plugins(a).await,
            Some(Cmd::Client(a)) => client::cmd_client(a).await,
            Some(Cmd::Eventlog(a)) => eventlog::cmd_eventlog(a).await,
            Some(Cmd::Select(a)) => select::cmd_select(a).await,
            Some(Cmd::Units(a)) => units::cmd_units(a).await,
            Some(Cmd::Reload(a)) => reload::cmd_reload(a).await,
            Some(Cmd::Token(a)) => token::cmd_token(a).await,
            Some(Cmd::Resource(a)) => resource::cmd_resource(a).await,
            Some(Cmd::Config(a)) => config::cmd_config(a),
            Some(Cmd::Conformance(a)) => conformance::cmd_conformance(a).await,
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

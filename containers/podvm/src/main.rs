//! `attestd-podvm provision`: the pod VM's first-boot unit. Fetches the
//! user-data (qemu's fw_cfg, the cidata disk, or the cloud's metadata service),
//! writes /run/peerpod, says what it did; attestd starts after it.

use std::path::PathBuf;

use anyhow::Result;
use attestd_podvm::source::{self, Origin};
use clap::{Parser, Subcommand};

mod commands;

#[derive(Parser)]
#[command(name = "attestd-podvm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the user-data, write its files (and init-data's) to the peer-pod
    /// directory.
    Provision {
        /// Where the user-data comes from (`auto`: the first that applies, as
        /// cloud-api-adaptor's process-user-data picks). Default: `file` with
        /// --user-data, else `auto`.
        #[arg(long, value_enum)]
        from: Option<Origin>,
        /// The user-data file, for `--from file`.
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Seconds all attempts to fetch from a metadata service may take.
        #[arg(long, default_value_t = source::DEFAULT_FETCH_TIMEOUT.as_secs())]
        fetch_timeout: u64,
        #[arg(long, default_value = attestd_podvm::PEERPOD_DIR)]
        out_dir: PathBuf,
        /// The image's attestd configuration directory: its `[config_file]
        /// unbound_init_data` decides whether init-data supplies trust files.
        #[arg(long, default_value = "/etc/attestd")]
        config_dir: PathBuf,
    },
    /// As a systemd generator (system-generators/attestd-podvm): order
    /// provisioning after systemd-tmpfiles-setup only where the image's
    /// tmpfiles.d puts files in /run/peerpod.
    Generator {
        /// Where systemd wants normal-priority units and drop-ins.
        normal_dir: PathBuf,
        /// systemd passes the early and late directories too; unused.
        #[arg(num_args = 0..=2)]
        _more: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Provision {
            from,
            user_data,
            fetch_timeout,
            out_dir,
            config_dir,
        } => commands::provision::run(from, user_data, fetch_timeout, out_dir, config_dir),
        Cmd::Generator { normal_dir, .. } => commands::generator::run(&normal_dir),
    }
}

//! `attestd-podvm provision`: the pod VM's first-boot unit. Fetches the
//! user-data (qemu's fw_cfg, the cidata disk, or the cloud's metadata service),
//! writes /run/peerpod, says what it did; attestd starts after it.

use std::path::PathBuf;

use std::time::{Duration, Instant};

use anyhow::Result;
use attestd_podvm::source::{self, Origin};
use clap::{Parser, Subcommand};

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
}

fn main() -> Result<()> {
    let Cmd::Provision {
        from,
        user_data,
        fetch_timeout,
        out_dir,
        config_dir,
    } = Cli::parse().cmd;
    let image = attestd_podvm::ImageSettings::read(&config_dir)?;
    let from = from.unwrap_or(if user_data.is_some() {
        Origin::File
    } else {
        Origin::Auto
    });
    let deadline = Instant::now() + Duration::from_secs(fetch_timeout);
    let done = match source::resolve(from, user_data)? {
        None => {
            println!(
                "no user-data: no fw_cfg blob, no cidata disk, no cloud known by CPUID or DMI; attestd starts on the image's configuration alone"
            );
            attestd_podvm::provision(&[], &out_dir, &image)?
        }
        Some(provider) => {
            println!("user-data from {provider}");
            let plan = source::fetch(&provider, deadline, |bytes| {
                attestd_podvm::plan(bytes, &image)
            })
            .map_err(|e| anyhow::anyhow!("user-data from {provider}: {}", source::chain(&e)))?;
            attestd_podvm::apply(plan, &out_dir)?
        }
    };
    // Paths are the host's words: quoted and escaped, so a line break or an
    // escape sequence in one cannot forge a journal line.
    for s in &done.stale_left {
        println!("left, though no longer written: {s}");
    }
    for s in &done.skipped {
        println!("skipped {}: {}", attestd_podvm::quoted(&s.path), s.why);
    }
    if done.aa_toml == attestd_podvm::AaSource::UserData {
        println!(
            "aa.toml comes from user-data, which is unmeasured: attestd reads only upstream attestation-agent's keys from it"
        );
    }
    println!(
        "wrote {} in {} ({})",
        done.written.join(", "),
        out_dir.display(),
        if done.initdata {
            "with init-data"
        } else {
            "no init-data"
        }
    );
    Ok(())
}

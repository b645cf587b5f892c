//! `attestd-podvm provision`: the pod VM's first-boot unit. Reads the user-data
//! file, writes /run/peerpod, says what it did; attestd starts after it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// Where qemu's `-fw_cfg name=opt/org.attestd/user-data,file=…` appears in the guest.
const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.attestd/user-data/raw";

#[derive(Parser)]
#[command(name = "attestd-podvm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write user-data's files (and init-data's) to the peer-pod directory.
    Provision {
        /// The user-data file (a provider's agent fetches it there; under qemu,
        /// fw_cfg). Absent: attestd starts on the image's configuration alone.
        #[arg(long, default_value = FW_CFG_USER_DATA)]
        user_data: PathBuf,
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
        user_data,
        out_dir,
        config_dir,
    } = Cli::parse().cmd;
    let image = attestd_podvm::ImageSettings::read(&config_dir)?;
    let bytes = match std::fs::read(&user_data) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "no user-data at {}: attestd starts on the image's configuration alone",
                user_data.display()
            );
            Vec::new()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read user-data {}", user_data.display()))
        }
    };
    let done = attestd_podvm::provision(&bytes, &out_dir, &image)
        .with_context(|| format!("user-data {}", user_data.display()))?;
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

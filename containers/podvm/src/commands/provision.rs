//! `attestd-podvm provision`: fetch the user-data, write /run/peerpod.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use attestd_podvm::source::{self, Origin};

pub fn run(
    from: Option<Origin>,
    user_data: Option<PathBuf>,
    fetch_timeout: u64,
    out_dir: PathBuf,
    config_dir: PathBuf,
) -> Result<()> {
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

use std::path::PathBuf;
use std::process::ExitCode;

use attester_tdx::device::{self, ConfigfsTsm, RealFs, Rtmrs};
use attester_tdx::Tdx;
use clap::Parser;

/// attestd attester plugin for Intel TDX (configfs-tsm).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: attester_sdk::ServeArgs,
    /// configfs-tsm report directory.
    #[arg(long, default_value = "/sys/kernel/config/tsm/report")]
    configfs_root: PathBuf,
    /// ACPI CCEL event log.
    #[arg(long, default_value = "/sys/firmware/acpi/tables/data/CCEL")]
    ccel: PathBuf,
    /// attestd's runtime event log, appended to the CCEL in `cc_eventlog`.
    #[arg(long, default_value = "/run/attestation-agent/eventlog")]
    runtime_eventlog: PathBuf,
    /// TDX guest device (used for detection).
    #[arg(long, default_value = "/dev/tdx_guest")]
    dev: PathBuf,
    /// The kernel's RTMR interface; runtime measurement is off when it is absent.
    #[arg(
        long,
        default_value = "/sys/devices/virtual/misc/tdx_guest/measurements"
    )]
    measurements: PathBuf,
    /// Serve a recorded quote through an emulated configfs-tsm instead of the kernel's
    /// (tests and demos only: the evidence is not from this machine).
    #[arg(long)]
    recorded_quote: Option<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rtmrs = Rtmrs::probe(&a.measurements);
    match a.recorded_quote {
        Some(path) => {
            let quote = match std::fs::read(&path) {
                Ok(q) => q,
                Err(e) => {
                    eprintln!("error: cannot read recorded quote {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            let fs = match device::recorded(quote) {
                Ok(fs) => fs,
                Err(e) => {
                    eprintln!("error: recorded quote {}: {}", path.display(), e.chain());
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "warning: serving the recorded quote {}: not this machine's evidence",
                path.display()
            );
            let tdx = Tdx {
                tsm: ConfigfsTsm::new(fs, device::PROVIDER),
                ccel: a.ccel,
                runtime_log: a.runtime_eventlog,
                dev: a.dev,
                rtmrs,
            };
            attester_sdk::run(tdx, a.serve.options())
        }
        None => {
            let tdx = Tdx {
                tsm: ConfigfsTsm::new(
                    RealFs {
                        root: a.configfs_root,
                    },
                    device::PROVIDER,
                ),
                ccel: a.ccel,
                runtime_log: a.runtime_eventlog,
                dev: a.dev,
                rtmrs,
            };
            attester_sdk::run(tdx, a.serve.options())
        }
    }
}

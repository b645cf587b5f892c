use std::path::PathBuf;
use std::process::ExitCode;

use attester_tdx::device::{self, ConfigfsTsm, RealFs, Rtmrs};
use attester_tdx::{Tdx, TdxDevice};
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
    /// (tests and demos only: the evidence is not from this machine). Only in builds
    /// with feature `recorded`; shipped builds and images have no such mode.
    #[cfg(feature = "recorded")]
    #[arg(long)]
    recorded_quote: Option<PathBuf>,
    /// With --recorded-quote: the emulated device takes this long per report (a slow
    /// firmware, for tests).
    #[cfg(feature = "recorded")]
    #[arg(long, default_value_t = 0, requires = "recorded_quote")]
    recorded_delay_ms: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rtmrs = Rtmrs::probe(&a.measurements);
    #[cfg(feature = "recorded")]
    if let Some(path) = &a.recorded_quote {
        let quote = match std::fs::read(path) {
            Ok(q) => q,
            Err(e) => {
                eprintln!("error: cannot read recorded quote {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let delay = std::time::Duration::from_millis(a.recorded_delay_ms);
        let fs = match device::recorded(quote, delay) {
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
        let tdx = TdxDevice {
            tsm: ConfigfsTsm::new(fs, device::PROVIDER),
            ccel: a.ccel,
            runtime_log: a.runtime_eventlog,
            dev: a.dev,
            rtmrs,
        };
        return serve(tdx, a.serve.options());
    }
    let tdx = TdxDevice {
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
    serve(tdx, a.serve.options())
}

fn serve<F: device::TsmFs + 'static>(
    device: TdxDevice<F>,
    opts: attester_sdk::ServeOptions,
) -> ExitCode {
    match Tdx::new(device) {
        Ok(tdx) => attester_sdk::run(tdx, opts),
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

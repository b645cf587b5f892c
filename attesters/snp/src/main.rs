use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[cfg(feature = "recorded")]
use attester_sdk::Error;
use attester_sdk::Result;
#[cfg(feature = "recorded")]
use attester_snp::certs;
use attester_snp::device::{self, SnpDevice};
use attester_snp::Snp;
use attester_tsm::{ConfigfsTsm, RealFs};
use clap::{Parser, ValueEnum};
#[cfg(feature = "recorded")]
use sev::firmware::host::CertTableEntry;

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// /dev/sev-guest when present (as upstream), else configfs-tsm.
    Auto,
    SevGuest,
    ConfigfsTsm,
}

/// attestd attester plugin for AMD SEV-SNP.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: attester_sdk::ServeArgs,
    /// Where reports come from.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// configfs-tsm report directory.
    #[arg(long, default_value = attester_tsm::DEFAULT_ROOT)]
    configfs_root: PathBuf,
    /// The sev-guest platform device in sysfs (used for detection).
    #[arg(long, default_value = "/sys/devices/platform/sev-guest")]
    platform: PathBuf,
    /// Serve a recorded report through an emulated configfs-tsm instead of the
    /// kernel's (tests and demos only: the evidence is not from this machine). Only
    /// in builds with feature `recorded`; shipped builds and images have no such mode.
    #[cfg(feature = "recorded")]
    #[arg(long)]
    recorded_report: Option<PathBuf>,
    /// A certificate for the recorded device's table, as TYPE=DER-FILE with TYPE
    /// one of ark, ask, vcek, vlek, crl. Repeatable.
    #[cfg(feature = "recorded")]
    #[arg(long, requires = "recorded_report")]
    recorded_cert: Vec<String>,
    /// With --recorded-report: the emulated device takes this long per report (a
    /// slow firmware, for tests).
    #[cfg(feature = "recorded")]
    #[arg(long, default_value_t = 0, requires = "recorded_report")]
    recorded_delay_ms: u64,
}

#[cfg(feature = "recorded")]
fn recorded_certs(specs: &[String]) -> Result<Vec<CertTableEntry>> {
    specs
        .iter()
        .map(|s| {
            let (kind, path) = s.split_once('=').ok_or_else(|| {
                Error::invalid_argument(format!("--recorded-cert {s:?}: expected TYPE=FILE"))
            })?;
            let data = std::fs::read(path).map_err(|e| {
                Error::invalid_argument(format!("cannot read certificate {path}")).with_source(e)
            })?;
            Ok(CertTableEntry::new(certs::cert_type(kind)?, data))
        })
        .collect()
}

fn device(a: &Args) -> Result<Box<dyn SnpDevice>> {
    #[cfg(feature = "recorded")]
    if let Some(path) = &a.recorded_report {
        let report = std::fs::read(path).map_err(|e| {
            Error::invalid_argument(format!("cannot read recorded report {}", path.display()))
                .with_source(e)
        })?;
        let delay = std::time::Duration::from_millis(a.recorded_delay_ms);
        let fs = device::recorded(report, &recorded_certs(&a.recorded_cert)?, delay)
            .map_err(|e| e.context(format!("recorded report {}", path.display())))?;
        eprintln!(
            "warning: serving the recorded report {}: not this machine's evidence",
            path.display()
        );
        return Ok(Box::new(device::Tsm {
            tsm: ConfigfsTsm::new(fs, device::PROVIDER),
            name: format!("recorded report {}", path.display()),
        }));
    }
    let tsm = || -> Box<dyn SnpDevice> {
        Box::new(device::Tsm {
            tsm: ConfigfsTsm::new(
                RealFs {
                    root: a.configfs_root.clone(),
                },
                device::PROVIDER,
            ),
            name: format!("configfs-tsm at {}", a.configfs_root.display()),
        })
    };
    Ok(match a.backend {
        Backend::SevGuest => Box::new(device::SevGuest),
        Backend::ConfigfsTsm => tsm(),
        Backend::Auto if Path::new(device::SEV_GUEST).exists() => Box::new(device::SevGuest),
        Backend::Auto => tsm(),
    })
}

fn main() -> ExitCode {
    let a = Args::parse();
    let device = match device(&a) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            return ExitCode::FAILURE;
        }
    };
    match Snp::new(device, a.platform) {
        Ok(snp) => attester_sdk::run(snp, a.serve.options()),
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

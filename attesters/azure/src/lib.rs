//! What the two Azure vTPM attesters (az-snp-vtpm, az-tdx-vtpm) share.
//!
//! On an Azure confidential VM the hardware report is not the guest's to ask for:
//! the paravisor (HCL) puts it, wrapped in an HCL report, in a vTPM NV index, and
//! the vTPM's AK signs quotes over the PCRs. An attester writes the report data to
//! the paravisor's index, reads the refreshed HCL report, fetches the endorsement
//! from IMDS (the VCEK on SNP, a TD quote on TDX) and quotes.
//!
//! - [`vtpm`]: the device seam (az-cvm-vtpm on the device TCTI, or recordings);
//! - [`hcl`]: HCL report checks; [`imds`]: IMDS with a deadline;
//! - [`evidence`]: the upstream version-2 document, pure;
//! - [`attester`]: the [`attester_sdk::Attester`] both plugins run; [`main`]: their `main`.

pub mod attester;
pub mod evidence;
pub mod hcl;
pub mod imds;
#[cfg(any(test, feature = "recorded"))]
mod recorded;
pub mod vtpm;

/// The recordings under tests/fixtures/ (see PROVENANCE.md there).
#[cfg(test)]
mod testutil {
    use std::path::PathBuf;

    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    pub fn bytes(name: &str) -> Vec<u8> {
        std::fs::read(path(name)).unwrap()
    }
}

#[cfg(feature = "recorded")]
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use attester::{AzureAttester, Platform};
pub use evidence::Endorsement;
pub use hcl::ReportType;

/// Command line of both plugins (name, about and version are the plugin's).
#[derive(Debug, clap::Parser)]
pub struct Args {
    #[command(flatten)]
    pub serve: attester_sdk::ServeArgs,
    /// Base URL of Azure IMDS.
    /// (Set from the plugin's `args` in attestd's config; no environment override,
    /// and any other value is logged at start.)
    #[arg(long, default_value = imds::DEFAULT_URL)]
    pub imds_url: String,
    /// Deadline of one IMDS request, in milliseconds.
    #[arg(long, default_value_t = imds::DEFAULT_TIMEOUT.as_millis() as u64)]
    pub imds_timeout_ms: u64,
    /// Serve this recorded HCL report instead of the vTPM's (tests, demos). Only in
    /// builds with feature `recorded`; shipped builds and images have no such mode.
    #[cfg(feature = "recorded")]
    #[arg(long)]
    pub recorded_hcl_report: Option<PathBuf>,
    /// With --recorded-hcl-report: the recorded quote (hex JSON) to serve.
    #[cfg(feature = "recorded")]
    #[arg(long, requires = "recorded_hcl_report")]
    pub recorded_quote: Option<PathBuf>,
}

/// A plugin's whole `main`.
pub fn main(platform: Platform) -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let cmd = Args::command()
        .name(platform.name)
        .bin_name(platform.name)
        .version(platform.version)
        .about(format!(
            "attestd attester plugin for Azure {} confidential VMs: vTPM quote, HCL report and IMDS, served over gRPC",
            hcl::type_name(platform.report_type)
        ));
    let args = match Args::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    // libtss2 logs to stderr on its own, expected misses included; our errors say
    // what failed. An operator can still set TSS2_LOG.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let vtpm: Arc<dyn vtpm::Vtpm> = Arc::new(vtpm::Device::new());
    #[cfg(feature = "recorded")]
    let vtpm: Arc<dyn vtpm::Vtpm> = match &args.recorded_hcl_report {
        Some(hcl_report) => match vtpm::Recorded::open(&vtpm::Recording {
            hcl_report: hcl_report.clone(),
            quote: args.recorded_quote.clone(),
        }) {
            Ok(r) => {
                eprintln!(
                    "warning: serving the recorded HCL report {}: not this machine's evidence",
                    hcl_report.display()
                );
                Arc::new(r)
            }
            Err(e) => {
                eprintln!("error: {}", e.chain());
                return ExitCode::FAILURE;
            }
        },
        None => vtpm,
    };
    if args.imds_url != imds::DEFAULT_URL {
        eprintln!(
            "warning: IMDS is {} (--imds-url), not Azure's {}",
            args.imds_url,
            imds::DEFAULT_URL
        );
    }
    let imds = imds::Imds::new(&args.imds_url, Duration::from_millis(args.imds_timeout_ms));
    match AzureAttester::new(platform, vtpm, imds) {
        Ok(a) => attester_sdk::run(a, args.serve.options()),
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}

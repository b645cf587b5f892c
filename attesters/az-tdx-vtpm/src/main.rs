//! attestd attester plugin for Azure TDX confidential VMs. Everything but the
//! platform's identity is shared with the other Azure plugin (attester-azure).

use std::process::ExitCode;

use attester_azure::{Endorsement, Platform, ReportType};

const PLATFORM: Platform = Platform {
    tee: "az-tdx-vtpm",
    name: env!("CARGO_PKG_NAME"),
    version: env!("CARGO_PKG_VERSION"),
    report_type: ReportType::Tdx,
    endorsement: Endorsement::TdQuote,
};

fn main() -> ExitCode {
    attester_azure::main(PLATFORM)
}

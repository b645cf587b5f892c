//! attestd attester plugin for Azure SNP confidential VMs. Everything but the
//! platform's identity is shared with the other Azure plugin (attester-azure).

use std::process::ExitCode;

use attester_azure::{Endorsement, Platform, ReportType};

const PLATFORM: Platform = Platform {
    tee: "az-snp-vtpm",
    name: env!("CARGO_PKG_NAME"),
    version: env!("CARGO_PKG_VERSION"),
    report_type: ReportType::Snp,
    endorsement: Endorsement::Vcek,
};

fn main() -> ExitCode {
    attester_azure::main(PLATFORM)
}

use std::process::ExitCode;

use attester_tpm::device::{self, Tpm, TpmConfig};
use attester_tpm::TpmAttester;
use clap::Parser;

/// attestd attester plugin for TPM 2.0.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: attester_sdk::ServeArgs,
    /// TCTI (tpm2-tools syntax): device:/dev/tpmrm0, swtpm:host=…,port=…
    /// Default: $TPM2TOOLS_TCTI, $TCTI, /dev/tpmrm0, /dev/tpm0.
    #[arg(long)]
    tcti: Option<String>,
    /// Persistent handle of the attestation key (created there when absent).
    #[arg(long, env = "AA_TPM_AK_HANDLE", value_parser = parse_handle, default_value = "0x81010002")]
    ak_handle: u32,
}

fn parse_handle(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("not a hex handle: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // libtss2 logs to stderr on its own, including expected misses (probing for the
    // AK); our errors say what failed. An operator can still set TSS2_LOG.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let tcti = device::default_tcti(args.tcti);
    let tpm = match Tpm::open(TpmConfig {
        tcti: tcti.clone(),
        ak_handle: args.ak_handle,
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            return ExitCode::FAILURE;
        }
    };
    attester_sdk::run(TpmAttester::new(tpm, tcti), args.serve.options())
}

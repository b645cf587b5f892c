use std::process::ExitCode;

use attester_sample::Sample;
use clap::Parser;

/// attestd sample attester plugin (no hardware; for tests and demos).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: attester_sdk::ServeArgs,
    /// Serve as `sampledevice`, an additional (device) attester.
    #[arg(long)]
    device: bool,
    /// Emulated launch-time init-data register (hex); BindInitData compares with it.
    #[arg(long, value_parser = parse_hex)]
    init_data_digest: Option<Vec<u8>>,
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("not hex: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sample = Sample {
        device: args.device,
        init_data: args.init_data_digest,
    };
    attester_sdk::run(sample, args.serve.options())
}

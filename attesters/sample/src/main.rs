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
    #[arg(long)]
    init_data_digest: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let init_data = match args.init_data_digest.as_deref().map(hex::decode) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!("error: --init-data-digest is not hex: {e}");
            return ExitCode::from(2);
        }
    };
    let sample = Sample {
        device: args.device,
        init_data,
    };
    attester_sdk::run(sample, args.serve.options())
}

//! A test plugin built on the SDK, with fault modes the sample must not have.

use std::process::ExitCode;

use attester_sdk::{
    Attester, Capabilities, Error, Evidence, PluginInfo, ReportData, Result, ServeArgs,
};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Behave.
    Normal,
    /// GetEvidence never answers.
    Hang,
    /// The process exits inside GetEvidence.
    CrashOnEvidence,
    /// Exit with status 3 before serving.
    ExitAtStart,
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    #[arg(long, value_enum, default_value = "normal")]
    mode: Mode,
    /// Protocol versions to offer (default: the SDK's).
    #[arg(long = "protocol-version")]
    protocol_versions: Vec<u32>,
    /// TEE to claim.
    #[arg(long, default_value = "sample")]
    tee: String,
}

struct TestAttester {
    mode: Mode,
    tee: String,
}

impl Attester for TestAttester {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-test".into(),
            version: "0".into(),
            tee: self.tee.clone(),
            evidence_format: "test/1".into(),
            capabilities: Capabilities {
                max_report_data: 64,
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        Ok(true)
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        match self.mode {
            Mode::Hang => std::future::pending().await,
            Mode::CrashOnEvidence => std::process::exit(9),
            _ => {}
        }
        attester_sample::evidence(report_data.as_bytes())
            .map_err(|e| Error::internal("sample evidence").with_source(e))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.mode == Mode::ExitAtStart {
        eprintln!("attester-test: exiting at start as asked");
        return ExitCode::from(3);
    }
    let mut opts = args.serve.options();
    if !args.protocol_versions.is_empty() {
        opts.protocol_versions = args.protocol_versions;
    }
    attester_sdk::run(
        TestAttester {
            mode: args.mode,
            tee: args.tee,
        },
        opts,
    )
}

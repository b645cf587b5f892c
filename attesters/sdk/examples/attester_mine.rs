//! A whole plugin: docs/plugin-authors.md shows this file as written, and the SDK's
//! tests fail when the two differ, so the guide's example always compiles.
use std::process::ExitCode;

use attester_sdk::{Attester, Capabilities, Evidence, PluginInfo, ReportData, Result, ServeArgs};

struct Mine;

impl Attester for Mine {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-mine".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // One of the TEE names the core accepts (kbs-types' spelling).
            tee: "snp".into(),
            evidence_format: "snp/1".into(),
            capabilities: Capabilities {
                max_report_data: 64,
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        Ok(std::path::Path::new("/dev/sev-guest").exists())
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        // At most max_report_data bytes, checked before this is called. Devices
        // that take a fixed size get it zero-padded.
        let rd = report_data.zero_padded(64);
        // Talk to the device here (blocking calls on a `worker::Worker`), then:
        let report = serde_json::json!({ "report_data": hex_of(&rd) });
        Evidence::from_json(&report, "snp/1")
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// attester-mine: evidence from my TEE for attestd.
#[derive(clap::Parser)]
#[command(name = "attester-mine", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    attester_sdk::run(Mine, args.serve.options())
}

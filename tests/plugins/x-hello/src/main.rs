//! attester-x-hello: evidence from "x-hello", a TEE attestd has never heard of.
//! docs/plugin-authors.md walks through this crate; the tests build it outside
//! attestd's workspace, run the conformance kit on it, build its image and have
//! `primary = "auto"` select it by the probe its image declares.
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::process::ExitCode;

use attester_sdk::worker::Worker;
use attester_sdk::{
    Attester, Capabilities, Error, Evidence, PluginInfo, ReportData, Result, ServeArgs,
};

/// The TEE's guest device.
const DEVICE: &str = "/dev/x-hello-guest";

struct Hello {
    /// The device thread. It opens the device at the first call, not at start:
    /// the plugin starts, and answers Detect, on a machine without one.
    device: Worker<Option<File>>,
}

impl Attester for Hello {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-x-hello".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Not a kbs-types name: "x-" and lowercase letters, digits and '-'.
            tee: "x-hello".into(),
            evidence_format: "x-hello/1".into(),
            capabilities: Capabilities {
                max_report_data: 64,
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        // Cheap, and without side effects: the core asks it of every candidate.
        Ok(std::path::Path::new(DEVICE).exists())
    }

    fn health(&self) -> Result<()> {
        // An error once the device thread has died: the core restarts the plugin.
        self.device.health()
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        // At most max_report_data bytes (checked before this is called).
        let rd = report_data.zero_padded(64);
        // Blocking device calls run on the device thread, never on the runtime.
        let device_id = self
            .device
            .run(|dev| {
                if dev.is_none() {
                    let f = File::open(DEVICE).map_err(|e| {
                        Error::unavailable(format!("cannot open {DEVICE}")).with_source(e)
                    })?;
                    *dev = Some(f);
                }
                let f = dev.as_ref().ok_or_else(|| Error::internal("no device"))?;
                let meta = f.metadata().map_err(|e| {
                    Error::unavailable(format!("cannot stat {DEVICE}")).with_source(e)
                })?;
                Ok(meta.rdev())
            })
            .await?;
        // The report data in the clear, where a verifier looks for it.
        let report = serde_json::json!({ "device": device_id, "report_data": hex(&rd) });
        Evidence::from_json(&report, "x-hello/1")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// attester-x-hello: evidence from an x-hello guest for attestd.
#[derive(clap::Parser)]
#[command(name = "attester-x-hello", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // At most 4 calls wait for the device; one more is RESOURCE_EXHAUSTED.
    let device = match Worker::start("x-hello device", 4, || Ok(None)) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            return ExitCode::FAILURE;
        }
    };
    attester_sdk::run(Hello { device }, args.serve.options())
}

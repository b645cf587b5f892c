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
    /// Evidence that ignores the report data (the conformance kit must fail it).
    IgnoreReportData,
    /// Evidence that changes every call but hides the report data (a nonce of
    /// its own): the kit must fail it too.
    HideReportData,
    /// Detect takes 1.5 s (the kit bounds it at 1 s).
    SlowDetect,
    /// GetEvidence blocks the plugin's runtime for 3 s, as device code called
    /// off a device thread does: health goes unanswered meanwhile.
    BlockingEvidence,
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
    /// Offer runtime measurement on an in-memory SHA-256 register bank (24
    /// registers, zero at start), so the event log runs without a TPM.
    #[arg(long)]
    registers: bool,
    /// Give evidence on an SDK device thread (Worker) whose code panics on the
    /// n-th evidence call: the thread dies, as a device thread can.
    #[arg(long)]
    device_panics_on: Option<u32>,
    /// Serve as an additional (device) attester.
    #[arg(long)]
    additional: bool,
    /// GetEvidence takes this long (without blocking the plugin's other calls).
    #[arg(long, default_value_t = 0)]
    evidence_delay_ms: u64,
    /// GetEvidence first writes `<DIR>/<tee>` and then waits (at most 10 s) until
    /// DIR holds N files: a barrier across plugins, which only calls made at the
    /// same time pass. `DIR:N`.
    #[arg(long)]
    evidence_barrier: Option<String>,
    /// Evidence is `{"label": LABEL, "pid": <this process>}`: which instance
    /// answered (the reload tests swap one for another).
    #[arg(long)]
    label: Option<String>,
    /// Wait this long before serving (a plugin slow to start, as a container is).
    #[arg(long, default_value_t = 0)]
    start_delay_ms: u64,
}

const REGISTERS: usize = 24;

struct TestAttester {
    mode: Mode,
    tee: String,
    registers: Option<std::sync::Mutex<Vec<[u8; 32]>>>,
    /// The device thread and the evidence call its code panics on.
    device: Option<(attester_sdk::worker::Worker<u32>, u32)>,
    additional: bool,
    evidence_delay: std::time::Duration,
    barrier: Option<(std::path::PathBuf, usize)>,
    label: Option<String>,
}

impl TestAttester {
    fn bank(&self) -> Result<std::sync::MutexGuard<'_, Vec<[u8; 32]>>> {
        let bank = self
            .registers
            .as_ref()
            .ok_or_else(|| Error::unsupported("runtime measurement"))?;
        Ok(bank.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn index(register: u64) -> Result<usize> {
        usize::try_from(register)
            .ok()
            .filter(|&r| r < REGISTERS)
            .ok_or_else(|| Error::invalid_argument(format!("no register {register}")))
    }
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
                runtime_measurement: self.registers.is_some(),
                register_read: self.registers.is_some(),
                measurement_hash: self.registers.as_ref().map(|_| "sha256".into()),
                role: if self.additional {
                    attester_sdk::DeviceRole::Additional
                } else {
                    attester_sdk::DeviceRole::Primary
                },
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        if self.mode == Mode::SlowDetect {
            std::thread::sleep(std::time::Duration::from_millis(1_500));
        }
        Ok(true)
    }

    fn health(&self) -> Result<()> {
        match &self.device {
            Some((w, _)) => w.health(),
            None => Ok(()),
        }
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        match self.mode {
            Mode::Hang => std::future::pending().await,
            Mode::CrashOnEvidence => std::process::exit(9),
            Mode::IgnoreReportData => {
                return Evidence::from_json(&serde_json::json!({"svn": "1"}), "test/1")
            }
            Mode::HideReportData => {
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Evidence::from_json(&serde_json::json!({"nonce": n}), "test/1");
            }
            Mode::BlockingEvidence => std::thread::sleep(std::time::Duration::from_secs(3)),
            _ => {}
        }
        tokio::time::sleep(self.evidence_delay).await;
        if let Some((dir, n)) = &self.barrier {
            std::fs::write(dir.join(&self.tee), b"")
                .map_err(|e| Error::internal("barrier").with_source(e))?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let entered = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
                if entered >= *n {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::unavailable(format!(
                        "barrier: {entered} of {n} plugins entered GetEvidence within 10 s"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        if let Some((w, nth)) = &self.device {
            let nth = *nth;
            w.run(move |calls| {
                *calls += 1;
                if *calls == nth {
                    panic!("the test device thread panics on call {nth}");
                }
                Ok(())
            })
            .await?;
        }
        if let Some(label) = &self.label {
            let v = serde_json::json!({"label": label, "pid": std::process::id()});
            return Evidence::from_json(&v, "json");
        }
        attester_sample::evidence(report_data.as_bytes())
            .map_err(|e| Error::internal("sample evidence").with_source(e))
    }

    async fn extend_measurement(&self, register: u64, digest: Vec<u8>) -> Result<()> {
        use sha2::Digest as _;
        let i = Self::index(register)?;
        if digest.len() != 32 {
            return Err(Error::invalid_argument("digest is not 32 bytes"));
        }
        let mut bank = self.bank()?;
        let mut h = sha2::Sha256::new();
        h.update(bank[i]);
        h.update(&digest);
        bank[i] = h.finalize().into();
        Ok(())
    }

    async fn read_measurement(&self, register: u64) -> Result<Vec<u8>> {
        let i = Self::index(register)?;
        Ok(self.bank()?[i].to_vec())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.mode == Mode::ExitAtStart {
        eprintln!("attester-test: exiting at start as asked");
        return ExitCode::from(3);
    }
    std::thread::sleep(std::time::Duration::from_millis(args.start_delay_ms));
    let mut opts = args.serve.options();
    if !args.protocol_versions.is_empty() {
        opts.protocol_versions = args.protocol_versions;
    }
    let barrier = match args.evidence_barrier.as_deref().map(|b| b.rsplit_once(':')) {
        None => None,
        Some(Some((dir, n))) => match n.parse() {
            Ok(n) => Some((std::path::PathBuf::from(dir), n)),
            Err(_) => {
                eprintln!("attester-test: --evidence-barrier wants DIR:N");
                return ExitCode::from(2);
            }
        },
        Some(None) => {
            eprintln!("attester-test: --evidence-barrier wants DIR:N");
            return ExitCode::from(2);
        }
    };
    attester_sdk::run(
        TestAttester {
            label: args.label,
            additional: args.additional,
            evidence_delay: std::time::Duration::from_millis(args.evidence_delay_ms),
            barrier,
            mode: args.mode,
            tee: args.tee,
            registers: args
                .registers
                .then(|| std::sync::Mutex::new(vec![[0u8; 32]; REGISTERS])),
            device: match args.device_panics_on {
                Some(n) => match attester_sdk::worker::Worker::start("test device", 4, || Ok(0)) {
                    Ok(w) => Some((w, n)),
                    Err(e) => {
                        eprintln!("attester-test: {}", e.chain());
                        return ExitCode::FAILURE;
                    }
                },
                None => None,
            },
        },
        opts,
    )
}

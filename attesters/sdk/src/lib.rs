//! The attestd plugin contract.
//!
//! A plugin implements [`Attester`] and calls [`run`] from `main`; the core talks to
//! it through [`RemoteAttester`]. Both sides negotiate a protocol version in the
//! handshake ([`PROTOCOL_VERSIONS`]). Transports are features (`ttrpc`, `grpc`) so a
//! plugin links only the one it serves.
//!
//! ```no_run
//! # use attester_sdk::*;
//! struct Mine;
//! impl Attester for Mine {
//!     fn info(&self) -> PluginInfo { todo!() }
//!     fn detect(&self) -> Result<bool> { Ok(true) }
//!     async fn evidence(&self, rd: ReportData) -> Result<Evidence> { todo!() }
//! }
//! ```

mod attester;
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
mod client;
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
mod convert;
mod error;
mod handshake;
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
mod server;
pub mod status;
mod types;
pub mod worker;

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
use std::path::PathBuf;
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
use std::process::ExitCode;

pub use attester::Attester;
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub use client::{RemoteAttester, DEFAULT_DEADLINE};
pub use error::{Code, Error, Result};
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub use handshake::read_info;
pub use handshake::{negotiate, MAX_INFO_LIST, MAX_INFO_TEXT, PROTOCOL_VERSIONS};
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub use server::{remove_socket_file, serve, ServeOptions};
pub use types::{
    Capabilities, DeviceRole, Evidence, Handshake, InitDataBinding, PluginInfo, RegisterMapping,
    ReportData, Transport,
};

/// A tonic channel over a Unix socket (gRPC clients of plugins and of the core).
#[cfg(feature = "grpc")]
pub use client::grpc_unix_channel;

/// The transport a plugin serves when `--transport` is not given: ttrpc when built in.
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub const DEFAULT_TRANSPORT: Transport = if cfg!(feature = "ttrpc") {
    Transport::Ttrpc
} else {
    Transport::Grpc
};

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
/// Command-line arguments every plugin accepts; flatten them into the plugin's own.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Unix socket to serve on (the core passes a path in its 0700 directory).
    #[arg(long, env = "ATTESTD_PLUGIN_SOCKET")]
    pub socket: PathBuf,
    /// Wire protocol: ttrpc or grpc.
    #[arg(long, env = "ATTESTD_PLUGIN_TRANSPORT", default_value_t = DEFAULT_TRANSPORT)]
    pub transport: Transport,
    /// Do not serve: connect to the plugin already serving on --socket, handshake,
    /// health-check, and exit 0 when it is SERVING (a Kubernetes exec probe for
    /// images without a shell).
    #[arg(long)]
    pub probe: bool,
}

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            socket: self.socket.clone(),
            transport: self.transport,
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
            probe: self.probe,
        }
    }
}

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
/// A plugin's whole `main`: logging to stderr (`ATTESTD_LOG` or `RUST_LOG`), a
/// current-thread runtime (a Unix-socket round trip costs half what it does on
/// the multi-thread one), [`serve`] until SIGTERM, and the error chain on failure.
pub fn run<A: Attester>(attester: A, opts: ServeOptions) -> ExitCode {
    init_logging("info");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.probe {
        // The attester is not used: a probe asks the one already serving.
        drop(attester);
        return match rt.block_on(probe(&opts)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe: {}", e.chain());
                ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(serve(attester, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", e.chain());
            ExitCode::FAILURE
        }
    }
}

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
/// How long a probe may take in all: under Kubernetes' default probe timeout.
pub const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_millis(900);

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
/// `--probe`: the plugin on `opts.socket` answers the handshake with a common
/// protocol version and reports SERVING, all within [`PROBE_DEADLINE`].
pub async fn probe(opts: &ServeOptions) -> Result<()> {
    let check = async {
        let client = RemoteAttester::connect(&opts.socket, opts.transport)
            .await?
            .with_deadline(PROBE_DEADLINE);
        client.handshake(&opts.protocol_versions).await?;
        client.check().await
    };
    match tokio::time::timeout(PROBE_DEADLINE, check).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            Code::DeadlineExceeded,
            format!(
                "no answer from {} within {PROBE_DEADLINE:?}",
                opts.socket.display()
            ),
        )),
    }
}

/// The log filter: `ATTESTD_LOG`, else `RUST_LOG`, else `default`: a level
/// (`info`), `target=level` pairs (`info,attestd::startup=trace`), or both.
/// [`init_logging`] uses it, and so does the core's JSON output. A filter that
/// does not parse is said on stderr and `default` is used. (`Targets`, not
/// `EnvFilter`: span and field filters go unused here, and EnvFilter's regex
/// engine cost every plugin and the core code: 0.85 MB of the core's shipped
/// binary, docs/benchmarks.md "Logging filter".)
pub fn log_filter(default: &str) -> tracing_subscriber::filter::Targets {
    let given = std::env::var("ATTESTD_LOG").or_else(|_| std::env::var("RUST_LOG"));
    let (filter, warning) = parse_log_filter(given.ok().as_deref(), default);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    filter
}

/// `given` as a filter, else `default` (else `warn`), and what was wrong with
/// `given` if it did not parse.
fn parse_log_filter(
    given: Option<&str>,
    default: &str,
) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let mut warning = None;
    if let Some(text) = given {
        match text.parse::<Targets>() {
            Ok(t) => return (t, None),
            Err(e) => warning = Some(format!("log filter {text:?}: {e}; logging at {default:?}")),
        }
    }
    let filter = default
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::WARN));
    (filter, warning)
}

/// Log to stderr at `default` level, unless `ATTESTD_LOG` or `RUST_LOG` says
/// otherwise (see [`log_filter`]). Colours only on a terminal. Plugins get this
/// from [`run`]; the core calls it too, so both log alike.
pub fn init_logging(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::registry()
        .with(log_filter(default))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
}

#[cfg(test)]
mod log_filter_tests {
    use super::parse_log_filter;
    use tracing::Level;

    #[test]
    fn levels_and_targets_parse_and_a_bad_filter_falls_back_to_the_default() {
        let (f, w) = parse_log_filter(Some("info,attestd::startup=trace"), "warn");
        assert!(w.is_none());
        assert!(f.would_enable("attestd::startup", &Level::TRACE));
        assert!(f.would_enable("attestd::run", &Level::INFO));
        assert!(!f.would_enable("attestd::run", &Level::DEBUG));
        let (f, w) = parse_log_filter(None, "warn");
        assert!(w.is_none());
        assert!(f.would_enable("attestd", &Level::WARN));
        assert!(!f.would_enable("attestd", &Level::INFO));
        let (f, w) = parse_log_filter(Some("attestd=loud"), "info");
        assert!(
            w.as_deref()
                .is_some_and(|w| w.starts_with("log filter \"attestd=loud\": ")),
            "{w:?}"
        );
        assert!(f.would_enable("attestd", &Level::INFO));
        assert!(!f.would_enable("attestd", &Level::DEBUG));
    }
}

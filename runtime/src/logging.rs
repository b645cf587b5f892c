//! attestd's own log output: text (as the plugins write it) or JSON lines.

use crate::config::{LogConfig, LogFormat};

/// Log to stderr at `[log] level` (overridden by `ATTESTD_LOG` or `RUST_LOG`) in
/// `[log] format`. Each call is a span (`rpc`: method, and the plugin once one is
/// asked) closed by a debug event with its status and duration.
pub fn init(cfg: &LogConfig) {
    match cfg.format {
        LogFormat::Text => attester_sdk::init_logging(&cfg.level),
        // Span fields flattened into each line: a collector needs no nesting.
        LogFormat::Json => {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let _ = tracing_subscriber::registry()
                .with(attester_sdk::log_filter(&cfg.level))
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false),
                )
                .try_init();
        }
    }
}

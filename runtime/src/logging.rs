//! attestd's own log output: text (as the plugins write it) or JSON lines.

use crate::config::{LogConfig, LogFormat};

/// Log to stderr at `[log] level` (overridden by `ATTESTD_LOG` or `RUST_LOG`) in
/// `[log] format`. Each call is a span (`rpc`: method, and the plugin once one is
/// asked) closed by a debug event with its status and duration.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("ATTESTD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| cfg.level.clone());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // Span fields flattened into each line: a collector needs no nesting.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

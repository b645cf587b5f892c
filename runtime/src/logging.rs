//! attestd's own log output: text (as the plugins write it) or JSON lines.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LogConfig, LogFormat};

/// Warnings of one kind (a method and its status code) logged per window at
/// most; the rest are counted and the count said with the next one logged.
pub const WARNINGS_PER_WINDOW: u32 = 5;
/// The window those are counted over.
pub const WARNING_WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at most (the keys are attestd's own names, so a few dozen
/// in practice; past this a kind is logged as if new).
const MAX_KINDS: usize = 256;

/// Whether to log a warning of a kind now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` like it went unlogged in the window before.
    Say { suppressed: u64 },
    /// Log it, and say that further ones are counted until the window ends.
    SayLast,
    /// Count it.
    Quiet,
}

#[derive(Clone, Copy)]
struct Kind {
    start: Instant,
    said: u32,
    suppressed: u64,
}

/// Repeated warnings, limited per kind: a client that makes every call fail
/// cannot fill the disk (3 MB/s of log, found in review), and the first of
/// each kind is never hidden.
pub struct Throttle<K> {
    kinds: Mutex<HashMap<K, Kind>>,
}

impl<K: Hash + Eq> Default for Throttle<K> {
    fn default() -> Self {
        Throttle {
            kinds: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Throttle<K> {
    /// The verdict for one more warning of `kind` at `now`.
    pub fn check(&self, kind: K, now: Instant) -> Verdict {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() >= MAX_KINDS && !kinds.contains_key(&kind) {
            kinds.retain(|_, k| now.duration_since(k.start) < WARNING_WINDOW);
            if kinds.len() >= MAX_KINDS {
                // Every kind is inside its window: this one is said, as new,
                // and not remembered, so the map stays bounded.
                return Verdict::Say { suppressed: 0 };
            }
        }
        let k = kinds.entry(kind).or_insert(Kind {
            start: now,
            said: 0,
            suppressed: 0,
        });
        if now.duration_since(k.start) >= WARNING_WINDOW {
            let suppressed = k.suppressed;
            *k = Kind {
                start: now,
                said: 1,
                suppressed: 0,
            };
            return Verdict::Say { suppressed };
        }
        if k.said < WARNINGS_PER_WINDOW {
            k.said += 1;
            return if k.said == WARNINGS_PER_WINDOW {
                Verdict::SayLast
            } else {
                Verdict::Say { suppressed: 0 }
            };
        }
        k.suppressed += 1;
        Verdict::Quiet
    }

    /// The kinds whose window has ended, forgotten, with the count of those
    /// not logged in it when there were any: said by a ticker, so the count
    /// of a flood that stopped is not lost waiting for a next warning.
    pub fn flush(&self, now: Instant) -> Vec<(K, u64)>
    where
        K: Clone,
    {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        kinds.retain(|kind, k| {
            let over = now.duration_since(k.start) >= WARNING_WINDOW;
            if over && k.suppressed > 0 {
                out.push((kind.clone(), k.suppressed));
            }
            !over
        });
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_is_said_the_flood_counted_and_the_count_said_after() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let mut verdicts = Vec::new();
        for i in 0..100u64 {
            verdicts.push(t.check(("GetToken", 1), t0 + Duration::from_millis(i)));
        }
        let said = verdicts.iter().filter(|v| **v != Verdict::Quiet).count();
        assert_eq!(said, WARNINGS_PER_WINDOW as usize);
        assert_eq!(verdicts[WARNINGS_PER_WINDOW as usize - 1], Verdict::SayLast);
        // Another kind in the same flood: its first is said.
        assert_eq!(
            t.check(("GetToken", 2), t0 + Duration::from_millis(50)),
            Verdict::Say { suppressed: 0 }
        );
        // The next window: said again, with the count of the last one.
        assert_eq!(
            t.check(("GetToken", 1), t0 + WARNING_WINDOW),
            Verdict::Say { suppressed: 95 }
        );
    }

    #[test]
    fn kinds_are_bounded() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..(3 * MAX_KINDS) {
            let _ = t.check(i, t0 + WARNING_WINDOW * i as u32);
        }
        assert!(t.kinds.lock().unwrap().len() <= MAX_KINDS);
        // Issue 41 (low): the hard case, every kind inside its window (the map
        // grew without bound before). Past the bound a kind is said as new.
        let t = Throttle::default();
        for i in 0..(3 * MAX_KINDS) {
            assert_ne!(t.check(i, t0), Verdict::Quiet, "kind {i}");
        }
        assert_eq!(t.kinds.lock().unwrap().len(), MAX_KINDS);
    }

    /// Issue 41 (low): a flood's count was said only with the next warning of
    /// its kind, so a flood that stopped lost it.
    #[test]
    fn a_stopped_floods_count_is_flushed() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let _ = t.check("GetToken", t0 + Duration::from_millis(i));
        }
        let _ = t.check("quiet", t0);
        assert!(t.flush(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            t.flush(t0 + WARNING_WINDOW),
            [("GetToken", 100 - WARNINGS_PER_WINDOW as u64)]
        );
        // Forgotten: said again as new, and nothing left to flush.
        assert!(t.flush(t0 + WARNING_WINDOW * 2).is_empty());
        assert_eq!(
            t.check("GetToken", t0 + WARNING_WINDOW * 2),
            Verdict::Say { suppressed: 0 }
        );
    }
}

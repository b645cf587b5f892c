//! Test-only fault points: with feature `fault-injection` and
//! `ATTESTD_FAULT=<point>[#<n>]`, [`hit`] is true the n-th time (default: the
//! first) the process passes `point`. Without the feature it is always false.

/// Whether the fault named by `ATTESTD_FAULT` is `point`, on this pass.
pub(crate) fn hit(point: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::atomic::{AtomicU32, Ordering};
        static HITS: AtomicU32 = AtomicU32::new(0);
        let Ok(spec) = std::env::var("ATTESTD_FAULT") else {
            return false;
        };
        let (name, nth) = match spec.split_once('#') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            tracing::warn!(point, "fault injection");
            return true;
        }
        false
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = point;
        false
    }
}

/// A crash point: SIGKILL when [`hit`].
pub(crate) fn crash(point: &str) {
    if hit(point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

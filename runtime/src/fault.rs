//! Test-only fault points: with feature `fault-injection` and
//! `ATTESTD_FAULT=<point>[#<n>]`, [`hit`] is true the n-th time (default: the
//! first) the process passes `point`. Without the feature it is always false, and
//! in any release build too: `cargo build --release --workspace` unifies the test
//! crate's features into attestd, and a shipped binary must not kill itself
//! because an environment variable says so.

/// Whether the fault named by `ATTESTD_FAULT` is `point`, on this pass.
pub(crate) fn hit(point: &str) -> bool {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
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
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
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

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(not(debug_assertions))]
    fn release_builds_have_no_fault_points() {
        std::env::set_var("ATTESTD_FAULT", "release-check");
        assert!(!super::hit("release-check"));
    }
}

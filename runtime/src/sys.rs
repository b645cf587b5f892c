//! The runtime's only `unsafe`: registering a pre-exec hook on plugin processes.
//!
//! `Command::pre_exec` is unsafe because the closure runs in the forked child, where
//! only async-signal-safe calls are allowed. Ours makes one: `prctl(PR_SET_PDEATHSIG)`.
#![allow(unsafe_code)]

use tokio::process::Command;

/// Have the kernel send `signal` to the child when attestd dies, even by SIGKILL,
/// so no orphaned plugin outlives the core that owns its socket: SIGKILL for a
/// plugin process, SIGTERM for `podman run` / `runc run`, which forward it to the
/// container and clean up. (The signal follows the thread that forked: attestd
/// spawns from its single runtime thread, which lives as long as the process.)
pub fn die_with_parent(cmd: &mut Command, signal: nix::sys::signal::Signal) {
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, and
    // touches no memory shared with the parent (`signal` is a copied integer).
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

//! The runtime's only `unsafe`: registering a pre-exec hook on plugin processes,
//! and an inotify descriptor with tokio's reactor.
//!
//! `Command::pre_exec` is unsafe because the closure runs in the forked child, where
//! only async-signal-safe calls are allowed. Ours makes one: `prctl(PR_SET_PDEATHSIG)`.
//! `AsyncFd::register` is unsafe because the reactor trusts the descriptor to stay
//! open and the same for the registration's life (tokio#8587).
#![allow(unsafe_code)]

use std::os::fd::{AsFd as _, AsRawFd, RawFd};

use nix::sys::inotify::Inotify;
use tokio::io::unix::AsyncFd;
use tokio::process::Command;

/// An inotify instance that owns its descriptor, as the reactor needs it.
pub struct InotifyFd(Inotify);

impl InotifyFd {
    pub fn get(&self) -> &Inotify {
        &self.0
    }
}

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// `i`, registered with the current runtime's reactor for readability.
pub fn register_inotify(i: Inotify) -> std::io::Result<AsyncFd<InotifyFd>> {
    // SAFETY: `InotifyFd` owns the descriptor (an `OwnedFd` inside `Inotify`)
    // and gives no way to close or replace it, and the `AsyncFd` owns the
    // `InotifyFd`: the descriptor stays open, and is the same one, for as long
    // as it is registered.
    unsafe { AsyncFd::register(InotifyFd(i)) }.map_err(std::io::Error::from)
}

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

//! Noticing a plugin's socket the moment it is bound. Polling (1, 2, 4 … 20 ms)
//! added up to the last pause to every start; an inotify watch on the socket's
//! directory wakes the supervisor when an entry is created there. The directory
//! is attestd's (`socket_dir`) and is shared with a container by a bind mount,
//! so the plugin's bind inside a container is seen too. Where inotify is not
//! available the wait falls back to the pause it is given.

use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::sys::{register_inotify, InotifyFd};

/// Changes to one directory: entries created or moved in.
pub struct DirWatch {
    watch: Option<AsyncFd<InotifyFd>>,
}

impl DirWatch {
    /// Watch `dir`. Set up before looking for the entry, so none is missed
    /// between the look and the wait.
    pub fn new(dir: &Path) -> DirWatch {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                i.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
                Ok(i)
            })
            .map_err(|e| {
                tracing::debug!(dir = %dir.display(), "no inotify watch ({e}): polling");
            })
            .ok()
            .and_then(|i| register_inotify(i).ok());
        DirWatch { watch }
    }

    /// Until an entry was created in the directory, or `at_most` passed (the
    /// caller looks again either way: the entry may not be the one it waits for).
    pub async fn changed(&mut self, at_most: Duration) {
        let Some(fd) = &self.watch else {
            tokio::time::sleep(at_most).await;
            return;
        };
        let _ = tokio::time::timeout(at_most, async {
            loop {
                let Ok(mut ready) = fd.readable().await else {
                    // The reactor gave up on it: fall back to the pause.
                    std::future::pending::<()>().await;
                    return;
                };
                match fd.get_ref().get().read_events() {
                    Ok(events) if !events.is_empty() => return,
                    // Would block: wait for the next event.
                    _ => ready.clear_ready(),
                }
            }
        })
        .await;
    }
}

impl Drop for DirWatch {
    /// Closing an inotify descriptor waits for an RCU grace period in the
    /// kernel (fsnotify destroys its group synchronously): measured here, about
    /// 10 ms, which on attestd's one runtime thread stalled the handshake that
    /// follows. The descriptor leaves the reactor here and is closed on a
    /// thread of its own.
    fn drop(&mut self) {
        if let Some(fd) = self.watch.take() {
            let inotify = fd.into_inner();
            let closer = std::thread::Builder::new()
                .name("inotify-close".into())
                .spawn(move || drop(inotify));
            if let Err(e) = closer {
                tracing::debug!("closing the inotify watch here: no thread ({e})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_socket_bound_in_the_directory_wakes_the_waiter_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(d.path());
        assert!(w.watch.is_some(), "inotify is available here");
        let sock = d.path().join("p.sock");
        let bind = {
            let sock = sock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tokio::net::UnixListener::bind(sock).unwrap()
            })
        };
        let t = Instant::now();
        w.changed(Duration::from_secs(30)).await;
        // Woken by the bind, long before the 30 s bound.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(sock.exists());
        let _l = bind.await.unwrap();
    }

    #[tokio::test]
    async fn nothing_created_returns_at_the_bound_and_a_missing_directory_polls() {
        let d = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(d.path());
        let t = Instant::now();
        w.changed(Duration::from_millis(30)).await;
        assert!(t.elapsed() >= Duration::from_millis(30));
        let mut gone = DirWatch::new(&d.path().join("missing"));
        assert!(gone.watch.is_none());
        let t = Instant::now();
        gone.changed(Duration::from_millis(30)).await;
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}

//! A device thread for plugins whose device calls block (TPM commands, ioctls,
//! configfs reads that wait on firmware): one thread owns the device, requests
//! wait in a bounded queue, and the async runtime — which also answers health
//! checks — never blocks.
//!
//! - **Bounded**: at most `max_queued` requests wait; one more is
//!   `ResourceExhausted` at once, rather than a queue that grows while the device
//!   is slow.
//! - **Cancellation**: a request whose caller has gone (the core's deadline passed,
//!   the connection closed) is skipped when its turn comes, not run for nobody.
//! - **Health**: once the thread has ended (a panic in device code), every request
//!   is `Unavailable` and [`Worker::health`] says so; return it from
//!   [`crate::Attester::health`] and the core restarts the plugin.
//!
//! ```
//! # async fn f() -> attester_sdk::Result<()> {
//! use attester_sdk::worker::Worker;
//!
//! // One thread owns the device (here a counter); at most 4 calls wait for it.
//! let device: Worker<u64> = Worker::start("counter", 4, || Ok(0))?;
//! // A blocking call, queued: it runs on the device thread, its result comes back.
//! let n = device.run(|count| { *count += 1; Ok(*count) }).await?;
//! assert_eq!(n, 1);
//! // An error once the thread has died (a panic in device code): health() returns it.
//! device.health()?;
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f()).unwrap();
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use crate::{Code, Error, Result};

type Job<D> = Box<dyn FnOnce(&mut D) + Send>;

/// A handle on one device thread owning a `D`. Cheap to clone; the thread ends
/// with the last handle.
pub struct Worker<D> {
    name: &'static str,
    max_queued: usize,
    tx: mpsc::SyncSender<Job<D>>,
    alive: Arc<AtomicBool>,
}

impl<D> Clone for Worker<D> {
    fn clone(&self) -> Self {
        Worker {
            name: self.name,
            max_queued: self.max_queued,
            tx: self.tx.clone(),
            alive: self.alive.clone(),
        }
    }
}

/// Marks the worker dead when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<D: 'static> Worker<D> {
    /// Start thread `name`, make the device with `open` on it (a device handle need
    /// not be `Send`), and wait for `open`'s outcome.
    pub fn start(
        name: &'static str,
        max_queued: usize,
        open: impl FnOnce() -> Result<D> + Send + 'static,
    ) -> Result<Worker<D>> {
        let (tx, rx) = mpsc::sync_channel::<Job<D>>(max_queued);
        let (ready_tx, ready_rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _guard = guard;
                let mut dev = match open() {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok(()));
                        d
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut dev);
                }
            })
            .map_err(|e| {
                Error::internal(format!("cannot start the {name} thread")).with_source(e)
            })?;
        ready_rx
            .recv()
            .map_err(|e| Error::internal(format!("the {name} thread died")).with_source(e))??;
        Ok(Worker {
            name,
            max_queued,
            tx,
            alive,
        })
    }

    /// Run `f` on the device thread, after the requests queued before it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut D) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job<D> = Box::new(move |d| {
            // The caller gave up (deadline, closed connection): do not run it.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(d));
        });
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Error::new(
                Code::ResourceExhausted,
                format!(
                    "the {} is busy: {} requests are already waiting",
                    self.name, self.max_queued
                ),
            ),
            mpsc::TrySendError::Disconnected(_) => self.stopped(),
        })?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// `Ok` while the thread runs.
    pub fn health(&self) -> Result<()> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    fn stopped(&self) -> Error {
        Error::unavailable(format!("the {} thread has stopped", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A device whose jobs can be held back until the test lets them go.
    fn held() -> (Worker<()>, std::sync::mpsc::Sender<()>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let w = Worker::start("test device", 2, || Ok(())).unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        // The first job blocks the thread until `go` is sent.
        let hold = w.clone();
        tokio::spawn(async move {
            hold.run(move |_| {
                g.entered.store(true, Ordering::SeqCst);
                let _ = go_rx.recv();
                Ok(())
            })
            .await
        });
        (w, go_tx, gate)
    }

    #[derive(Default)]
    struct Gate {
        entered: AtomicBool,
    }

    async fn wait_until(f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn runs_jobs_in_order_on_one_thread() {
        let w = Worker::start("dev", 4, || Ok(Vec::<u32>::new())).unwrap();
        for i in 0..3 {
            w.run(move |v| {
                v.push(i);
                Ok(())
            })
            .await
            .unwrap();
        }
        assert_eq!(w.run(|v| Ok(v.clone())).await.unwrap(), vec![0, 1, 2]);
        let e = w
            .run(|_| Err::<(), _>(Error::invalid_argument("bad")))
            .await
            .unwrap_err();
        assert_eq!(e.message(), "bad");
        assert!(w.health().is_ok());
    }

    #[test]
    fn a_device_that_does_not_open_is_its_error() {
        let e = Worker::<()>::start("dev", 1, || Err(Error::unavailable("no TPM")))
            .err()
            .unwrap();
        assert_eq!(e.message(), "no TPM");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_bounded_and_abandoned_requests_are_skipped() {
        let (w, go, gate) = held();
        wait_until(|| gate.entered.load(Ordering::SeqCst)).await;
        let ran = Arc::new(AtomicUsize::new(0));
        // Two wait (the bound), a third is refused at once.
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let (w, ran) = (w.clone(), ran.clone());
            waiting.push(tokio::spawn(async move {
                w.run(move |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        // Let both reach the queue.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = w.run(|_| Ok(())).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "the test device is busy: 2 requests are already waiting"
        );
        // Their callers give up before the device gets to them.
        for t in &waiting {
            t.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        go.send(()).unwrap();
        // The thread drains the skipped jobs; then there is room again.
        let mut tries = 0;
        while let Err(e) = w.run(|_| Ok(())).await {
            assert_eq!(e.code(), Code::ResourceExhausted);
            tries += 1;
            assert!(tries < 500, "the queue never drained");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "abandoned requests never ran"
        );
    }

    #[tokio::test]
    async fn a_dead_thread_is_unhealthy_and_every_request_unavailable() {
        let w = Worker::start("tpm", 4, || Ok(())).unwrap();
        let r = w
            .run(|_| -> Result<()> { panic!("device code panicked") })
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::Unavailable);
        wait_until(|| w.health().is_err()).await;
        assert_eq!(
            w.health().unwrap_err().message(),
            "the tpm thread has stopped"
        );
        let e = w.run(|_| Ok(())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }
}

//! Fake metadata services (Azure's, AWS's and GCP's IMDS at 169.254.169.254,
//! Alibaba's at 100.100.100.200) for `attestd-podvm provision --from …`: real
//! HTTP on the providers' own addresses, inside a network namespace of the
//! test's own (`metadata.google.internal` in its /etc/hosts), never on this
//! machine's network. Each route answers by a script: a status, a body, late.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::netns::Netns;

pub const LINK_LOCAL: &str = "169.254.169.254";
pub const ALIBABA: &str = "100.100.100.200";

/// A request as the service saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The address it came to.
    pub addr: &'static str,
    pub method: String,
    pub target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One answer: `status`, `body`, sent after `delay`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Answer {
    pub fn ok(body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// How a route answers: the request, and how many came to it before.
pub type Script = Box<dyn Fn(&Request, usize) -> Answer + Send + Sync>;

/// (address, method, target, script).
pub type Routed = (&'static str, &'static str, &'static str, Script);

struct Route {
    addr: &'static str,
    method: &'static str,
    target: &'static str,
    script: Script,
    seen: Mutex<usize>,
}

pub struct Imds {
    pub netns: Netns,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Imds {
    /// Listening on port 80 of both addresses; routes are (address, method,
    /// target, script); anything not routed is a 404.
    pub fn start(routes: Vec<Routed>) -> Imds {
        let netns = Netns::create("imds", &[LINK_LOCAL, ALIBABA]);
        netns.hosts(&format!(
            "127.0.0.1 localhost\n{LINK_LOCAL} metadata.google.internal\n"
        ));
        let routes: Arc<Vec<Route>> = Arc::new(
            routes
                .into_iter()
                .map(|(addr, method, target, script)| Route {
                    addr,
                    method,
                    target,
                    script,
                    seen: Mutex::new(0),
                })
                .collect(),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for addr in [LINK_LOCAL, ALIBABA] {
            let ns = netns.file();
            let (routes, log, stop) = (routes.clone(), log.clone(), stop.clone());
            let (ready, listening) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                // This thread only: its sockets are the namespace's.
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let l = TcpListener::bind((addr, 80)).unwrap();
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((conn, _)) => {
                            let (routes, log) = (routes.clone(), log.clone());
                            std::thread::spawn(move || serve(addr, conn, &routes, &log));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
            listening.recv().unwrap();
        }
        Imds {
            netns,
            log,
            stop,
            threads,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// `attestd-podvm provision --from <from>` inside the namespace (its hosts
    /// file too), writing under `root`: its output and status.
    pub fn provision(
        &self,
        root: &std::path::Path,
        from: &str,
        args: &[&str],
    ) -> std::process::Output {
        self.netns
            .exec(crate::bin("attestd-podvm"))
            .args(["provision", "--from", from, "--out-dir"])
            .arg(root.join("peerpod"))
            .arg("--config-dir")
            .arg(root.join("etc-attestd"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(addr: &'static str, mut conn: TcpStream, routes: &[Route], log: &Mutex<Vec<Request>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let req = Request {
        addr,
        method: first.next().unwrap_or_default().to_string(),
        target: first.next().unwrap_or_default().to_string(),
        headers: lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    };
    log.lock().unwrap().push(req.clone());
    let answer = match routes
        .iter()
        .find(|r| r.addr == addr && r.method == req.method && r.target == req.target)
    {
        Some(r) => {
            let n = {
                let mut seen = r.seen.lock().unwrap();
                *seen += 1;
                *seen - 1
            };
            (r.script)(&req, n)
        }
        None => Answer::status(404),
    };
    std::thread::sleep(answer.delay);
    let _ = write!(
        conn,
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.body.len()
    );
    let _ = conn.write_all(&answer.body);
}

//! `attestd-webhook` started as its Deployment runs it (`serve` with a CA and
//! serving certificate from its own `certs` command), and a client that reaches
//! it as the API server does: by the Service's name, trusting only that CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, free_port, https_client_trusting, Reaped};

/// The name the API server dials: the Service's DNS name.
pub const SERVICE_HOST: &str = "attestd-webhook.attestd-system.svc";

pub struct Webhook {
    child: Reaped,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// `attestd-webhook certs --out-dir out`: its caBundle line.
pub fn make_certs(out: &Path) -> String {
    let o = Command::new(bin("attestd-webhook"))
        .args(["certs", "--out-dir"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

impl Webhook {
    pub fn start(config: &str, lock: &str) -> Webhook {
        Self::start_bin(&bin("attestd-webhook"), config, lock)
    }

    /// [`Webhook::start`] with another build of the webhook (a benchmark's
    /// comparison).
    pub fn start_bin(program: &Path, config: &str, lock: &str) -> Webhook {
        Self::start_args(program, config, lock, &[])
    }

    /// [`Webhook::start_bin`] with more arguments to `serve`; `{tls}` in one
    /// stands for the directory `certs` wrote.
    pub fn start_args(program: &Path, config: &str, lock: &str, more: &[&str]) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("images.lock"), lock).unwrap();
        std::fs::write(
            d.join("webhook.toml"),
            format!("images_lock = {:?}\n{config}", d.join("images.lock")),
        )
        .unwrap();
        make_certs(&d.join("tls"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg("--config")
            .arg(d.join("webhook.toml"))
            .arg("--cert")
            .arg(d.join("tls/tls.crt"))
            .arg("--key")
            .arg(d.join("tls/tls.key"))
            .args(["--listen", &addr.to_string(), "--reload-interval-ms", "200"])
            .args(
                more.iter()
                    .map(|a| a.replace("{tls}", &d.join("tls").display().to_string())),
            )
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).unwrap())
            .spawn()
            .unwrap();
        let w = Webhook {
            child: Reaped(child),
            addr,
            dir,
        };
        w.wait_ready();
        w
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// A client as [`Webhook::client_trusting`] that presents `certs`'
    /// client certificate, as the API server does with it in its admission
    /// kubeconfig.
    pub fn client_with_certificate(&self) -> reqwest::Client {
        let tls = self.dir.path().join("tls");
        let mut pem = std::fs::read(tls.join("client.crt")).unwrap();
        pem.extend(std::fs::read(tls.join("client.key")).unwrap());
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca()).unwrap())
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .resolve(SERVICE_HOST, self.addr)
            .http1_only()
            .build()
            .unwrap()
    }

    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tls/ca.crt")).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "webhook did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client as the API server is one: it trusts only the caBundle's CA and
    /// dials the Service's name.
    pub fn client_trusting(&self, ca: &[u8]) -> reqwest::Client {
        https_client_trusting(ca, SERVICE_HOST, self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{SERVICE_HOST}:{}{path}", self.addr.port())
    }

    /// POST `body` to /mutate: the HTTP status and the AdmissionReview answered.
    pub async fn post(&self, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client_trusting(&self.ca())
            .post(self.url("/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn review(&self, review: &Value) -> Value {
        let (status, answer) = self.post(serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "{answer}"
        );
        answer["response"].clone()
    }
}

/// An AdmissionReview of a pod CREATE whose pod is `pod` (JSON text), written
/// directly (the shapes are large; no serde_json::Value in between).
pub fn raw_review(pod: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"mem","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"apps","operation":"CREATE","userInfo":{{"username":"bench"}},"object":{pod}}}}}"#
    )
    .into_bytes()
}

/// Hostile and large reviews, each just under `bytes`: (name, body).
pub fn memory_shapes(bytes: usize) -> Vec<(&'static str, Vec<u8>)> {
    let head = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"big","labels":{"attestd.io/inject":"true"}},"spec":{"runtimeClassName":"kata-qemu-tdx","#;
    let fill = |unit: &str, open: &str, close: &str| {
        let room = bytes - 400 - head.len() - open.len() - close.len();
        let n = room / (unit.len() + 1);
        let items = vec![unit; n].join(",");
        raw_review(&format!("{head}{open}{items}{close}"))
    };
    vec![
        // The issue's shape: a review that is mostly numbers.
        (
            "numbers",
            fill(
                "1",
                r#""containers":[{"name":"app","image":"a"}],"x":["#,
                "]}}",
            ),
        ),
        // A valid pod: one container with many short arguments.
        (
            "540k-args pod",
            fill(
                r#""a""#,
                r#""containers":[{"name":"app","image":"a","args":["#,
                "]}]}}",
            ),
        ),
        // Many tiny volumes (3 KiB each in Kubernetes' own Pod type).
        (
            "tiny volumes",
            fill(
                r#"{"name":""}"#,
                r#""containers":[{"name":"app","image":"a"}],"volumes":["#,
                "]}}",
            ),
        ),
    ]
}

/// `n` clients, each running `client` over and over until stopped (and
/// counting once per round `client` says so), in a thread of their own:
/// inside `netns` when given (the cluster's webhook listens there), so they
/// run beside whatever the test does.
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start<C, F>(netns: Option<std::fs::File>, n: usize, client: C) -> Flood
    where
        C: Fn() -> F + Clone + Send + 'static,
        F: std::future::Future<Output = bool> + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let (stop2, counted2) = (stop.clone(), counted.clone());
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                for _ in 0..n {
                    let (client, stop, counted) = (client.clone(), stop2.clone(), counted2.clone());
                    tokio::task::spawn_local(async move {
                        while !stop.load(Ordering::Relaxed) {
                            if client().await {
                                counted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                while !stop2.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            // Dropping the runtime cancels the clients mid-request.
        });
        Flood {
            stop,
            counted,
            thread: Some(thread),
        }
    }

    /// Clients that post a review whose body never ends: chunked, a byte
    /// every 300 ms, each starting over when the webhook drops it. `n` of them
    /// post to `url` (whose host is `addr`), trusting `ca`; each round counts.
    pub fn slow(
        netns: Option<std::fs::File>,
        ca: Vec<u8>,
        url: String,
        host: String,
        addr: SocketAddr,
        n: usize,
    ) -> Flood {
        let client = https_client_trusting(&ca, &host, addr);
        Flood::start(netns, n, move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
                });
                let _ = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await;
                true
            }
        })
    }

    /// `n` clients that open a TCP connection to `addr` and never say a word,
    /// each opening another as soon as the server closes theirs (issue 41);
    /// a round counts when the server closed it.
    pub fn silent(netns: Option<std::fs::File>, addr: SocketAddr, n: usize) -> Flood {
        Flood::start(netns, n, move || async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return false;
            };
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::io::AsyncReadExt::read(&mut s, &mut buf),
            )
            .await;
            matches!(r, Ok(Ok(0)) | Ok(Err(_)))
        })
    }

    /// How many rounds have counted so far.
    pub fn counted(&self) -> u64 {
        self.counted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait, at most `within`, until `n` rounds have counted.
    pub fn wait_counted(&self, n: u64, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.counted() < n {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stop the clients: how many rounds counted (bodies the webhook cut
    /// off; silent connections it closed).
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.counted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

//! Debian's `docker-registry` (the CNCF distribution registry) on a free loopback
//! port with a TLS certificate made here, for the pull tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Reaped;

pub struct Registry {
    child: Option<Reaped>,
    /// `localhost:<port>`: what image names carry.
    pub host: String,
    /// Laid out as /etc/containers/certs.d: `<host>/ca.crt`.
    pub certs_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = crate::free_port();
        let host = format!("localhost:{port}");
        let ca = attestd_webhook::certs::authority().unwrap();
        let (cert, key) = attestd_webhook::certs::serving(&ca, &["localhost"]).unwrap();
        std::fs::write(d.join("tls.crt"), cert).unwrap();
        std::fs::write(d.join("tls.key"), key).unwrap();
        let certs_dir = d.join("certs.d");
        std::fs::create_dir_all(certs_dir.join(&host)).unwrap();
        std::fs::write(certs_dir.join(&host).join("ca.crt"), &ca.pem).unwrap();
        std::fs::write(
            d.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: attestd-tests\n  tls:\n    certificate: {}\n    key: {}\n",
                d.join("data").display(),
                d.join("tls.crt").display(),
                d.join("tls.key").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/lib.sh installs it)");
        let r = Registry {
            child: Some(Reaped(child)),
            host,
            certs_dir,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn cert_dir(&self) -> PathBuf {
        self.certs_dir.join(&self.host)
    }

    /// Push local image `source` (`name@digest` in podman's store) as
    /// `<host>/<repo>:<tag>`, manifest bytes kept; the digest the registry holds.
    pub fn push(&self, source: &str, repo: &str, tag: &str) -> String {
        let dest = format!("docker://{}/{repo}:{tag}", self.host);
        let o = Command::new("skopeo")
            .args(["copy", "-q", "--preserve-digests", "--dest-cert-dir"])
            .arg(self.cert_dir())
            .arg(format!("containers-storage:{source}"))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.digest(repo, tag)
    }

    /// The digest of `<repo>:<tag>` as the registry serves it.
    pub fn digest(&self, repo: &str, tag: &str) -> String {
        let o = Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}", "--cert-dir"])
            .arg(self.cert_dir())
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Stop serving (the registry "down").
    pub fn stop(&mut self) {
        self.child.take();
    }
}

/// Remove a name a pull added to podman's store, leaving the image (other tests
/// use it under its own name).
pub fn untag(name_at_digest: &str) {
    let _ = Command::new("podman")
        .args(["untag", name_at_digest, name_at_digest])
        .output();
}

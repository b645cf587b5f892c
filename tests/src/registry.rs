//! Debian's `docker-registry` (the CNCF distribution registry) on a free loopback
//! port with a TLS certificate made here, for the pull tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Reaped;

pub struct Registry {
    child: Option<Reaped>,
    /// `localhost:<port>`: what image names carry.
    pub host: String,
    /// The CA its certificate is signed by (PEM).
    pub ca_pem: String,
    /// Laid out as /etc/containers/certs.d: `<host>/ca.crt`.
    pub certs_dir: PathBuf,
    /// registries.d naming the lookaside directory signatures go to.
    pub registries_d: PathBuf,
    /// A GPG home with two signing keys, `keys[0]` the trusted one.
    gnupg: PathBuf,
    pub keys: Vec<Key>,
    dir: tempfile::TempDir,
    /// Held for the registry's life: see [`STORE`].
    _store: MutexGuard<'static, ()>,
}

/// Every pull test adds names to, and untags them from, one image in podman's
/// store (the sample's). Run concurrently, a name once came back after its
/// untag (its pull and another test's untag both rewrote the image's names)
/// and a later test found the sample under a name it did not expect: the
/// tests that touch the store take turns.
static STORE: Mutex<()> = Mutex::new(());

/// A GPG signing key made for the test.
pub struct Key {
    pub fingerprint: String,
    /// Its public key, armored, for a policy's `keyPath`.
    pub public: PathBuf,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_for(&[])
    }

    /// A registry whose certificate is also valid for `also` (e.g. the address
    /// a VM reaches it at).
    pub fn start_for(also: &[&str]) -> Registry {
        // A test that failed holding it poisons it; the store is still usable.
        let store = STORE.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = crate::free_port();
        let host = format!("localhost:{port}");
        let ca = attestd_webhook::certs::authority().unwrap();
        let names: Vec<&str> = std::iter::once("localhost")
            .chain(also.iter().copied())
            .collect();
        let (cert, key) = attestd_webhook::certs::serving(&ca, &names).unwrap();
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
        // Signatures in a lookaside directory (simple signing), as registries.d
        // describes it to skopeo: written while pushing, read while pulling.
        let registries_d = d.join("registries.d");
        std::fs::create_dir_all(&registries_d).unwrap();
        let sigs = d.join("sigstore");
        std::fs::write(
            registries_d.join("attestd-tests.yaml"),
            format!(
                "docker:\n  {host}:\n    lookaside: file://{0}\n    lookaside-staging: file://{0}\n",
                sigs.display()
            ),
        )
        .unwrap();
        let gnupg = d.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        let keys = (0..2).map(|n| make_key(&gnupg, d, n)).collect();
        let r = Registry {
            child: Some(Reaped(child)),
            host,
            ca_pem: ca.pem.clone(),
            certs_dir,
            registries_d,
            gnupg,
            keys,
            dir,
            _store: store,
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

    /// `certs_dir`'s folder for this registry (a `--dest-cert-dir`).
    pub fn cert_dir(&self) -> PathBuf {
        self.certs_dir.join(&self.host)
    }

    /// Push local image `source` (`name@digest` in podman's store) as
    /// `<host>/<repo>:<tag>`, manifest bytes kept, signed by `keys[signer]` when
    /// given; the digest the registry holds.
    pub fn push(&self, source: &str, repo: &str, tag: &str, signer: Option<usize>) -> String {
        self.push_as(source, repo, tag, signer, None)
    }

    /// [`Registry::push`], the signature claiming `identity` (the reference the
    /// image is pulled by elsewhere, e.g. through a VM's address) when given.
    pub fn push_as(
        &self,
        source: &str,
        repo: &str,
        tag: &str,
        signer: Option<usize>,
        identity: Option<&str>,
    ) -> String {
        let dest = format!("docker://{}/{repo}:{tag}", self.host);
        let mut cmd = Command::new("skopeo");
        // The store may hold signatures an earlier pull brought: only ours go out.
        cmd.args([
            "copy",
            "-q",
            "--preserve-digests",
            "--remove-signatures",
            "--dest-cert-dir",
        ])
        .arg(self.cert_dir())
        .arg("--registries.d")
        .arg(&self.registries_d)
        .env("GNUPGHOME", &self.gnupg);
        if let Some(k) = signer {
            cmd.args(["--sign-by", &self.keys[k].fingerprint]);
        }
        if let Some(id) = identity {
            cmd.args(["--sign-identity", id]);
        }
        let o = cmd
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

    /// The lookaside directory of `<repo>@<digest>`'s signatures.
    pub fn signatures_of(&self, repo: &str, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("sigstore")
            .join(format!("{repo}@{}", digest.replace(':', "=")))
    }

    /// A policy.json accepting images of this registry signed by `keys[0]`
    /// only, and nothing else.
    pub fn policy(&self) -> PathBuf {
        let p = self.dir.path().join("policy.json");
        std::fs::write(
            &p,
            serde_json::json!({
                "default": [{"type": "reject"}],
                "transports": {"docker": {self.host.clone(): [{
                    "type": "signedBy", "keyType": "GPGKeys",
                    "keyPath": self.keys[0].public.display().to_string()
                }]}}
            })
            .to_string(),
        )
        .unwrap();
        p
    }

    /// Serve the signatures' lookaside directory over HTTP on a free loopback
    /// port, as an operator publishes it (`lookaside: http://…` in
    /// registries.d); the port. Served while the registry lives.
    pub fn serve_signatures(&self) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = self.dir.path().join("sigstore");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = serve_file(conn, &root);
            }
        });
        port
    }

    /// Key `n`'s public half, armored.
    pub fn public_key(&self, n: usize) -> Vec<u8> {
        std::fs::read(&self.keys[n].public).unwrap()
    }

    /// Stop serving (the registry "down").
    pub fn stop(&mut self) {
        self.child.take();
    }
}

/// Answer one GET with the file under `root` its path names, or 404.
fn serve_file(mut conn: std::net::TcpStream, root: &std::path::Path) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let file = (!path.split('/').any(|c| c == ".."))
        .then(|| std::fs::read(root.join(path.trim_start_matches('/'))).ok())
        .flatten();
    match file {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)
        }
        None => conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Remove a name a pull added to podman's store, leaving the image (other tests
/// use it under its own name), and check that it is gone: a name left behind
/// makes a later pull test find the image without pulling it.
pub fn untag(name_at_digest: &str) {
    assert!(name_at_digest.contains('@'), "untag takes name@digest");
    // "not known" when the name was never added: nothing to do.
    let _ = Command::new("podman")
        .args(["untag", name_at_digest, name_at_digest])
        .output();
    // podman finds a digest under any name, so this lists every name it has.
    let o = Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{range .RepoDigests}}{{.}} {{end}}",
            name_at_digest,
        ])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&o.stdout);
    let left = names.split_whitespace().any(|n| n == name_at_digest);
    if left && !std::thread::panicking() {
        panic!("podman untag left {name_at_digest} in the store: {names}");
    }
}

/// Key `n` (ed25519, no passphrase) in `gnupg`, its public half exported under `dir`.
fn make_key(gnupg: &std::path::Path, dir: &std::path::Path, n: usize) -> Key {
    let uid = format!("attestd tests {n} <key{n}@attestd.invalid>");
    let o = Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "ed25519",
            "sign",
            "never",
        ])
        .output()
        .expect("gpg (scripts/lib.sh installs gnupg)");
    assert!(
        o.status.success(),
        "gpg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--with-colons", "--list-keys", &uid])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let fingerprint = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("a fingerprint")
        .to_string();
    let o = Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--armor", "--export", &fingerprint])
        .output()
        .unwrap();
    let public = dir.join(format!("key{n}.asc"));
    std::fs::write(&public, &o.stdout).unwrap();
    Key {
        fingerprint,
        public,
    }
}

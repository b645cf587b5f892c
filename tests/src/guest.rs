//! Upstream's own programs, run as real processes from the peers cache
//! (`scripts/peers-build.sh`): Trustee's KBS with its built-in attestation
//! service, and the guest's Confidential Data Hub (CDH) with api-server-rest in
//! front of it, both talking to attestd where the attestation-agent would be.
//! Each listens on a free loopback port or a socket in the test's temporary
//! directory; none touches `/run/confidential-containers`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tempfile::TempDir;

/// How long a peer may take to listen: the KBS compiles its policies first.
const START_WITHIN: Duration = Duration::from_secs(60);

/// A child process killed (and reaped) when dropped, its output in `log`.
struct Peer {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Peer {
    fn spawn(what: &'static str, mut cmd: Command, log: PathBuf) -> Peer {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Peer { child, log, what }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `ready` holds, or fail with the peer's log if it exits or
    /// takes longer than [`START_WITHIN`].
    fn wait(&mut self, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + START_WITHIN;
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.what, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up within {START_WITHIN:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Trustee's KBS (`kbs` from the `trustee` peer), its built-in attestation
/// service signing tokens with a P-256 key the test holds, resources and
/// policies in its own directory, the admin API open (`InsecureAllowAll`, as
/// Trustee's own test config has it) for the test to set them.
pub struct Trustee {
    peer: Peer,
    pub port: u16,
    /// The attestation service's token key: its public half verifies tokens.
    pub signer: p256::ecdsa::VerifyingKey,
    _dir: TempDir,
}

impl Trustee {
    pub fn start(cache: &Path) -> Trustee {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("signer.pem"), key.private_key_to_pem().unwrap()).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let point = key
            .public_key()
            .to_bytes(
                key.group(),
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap();
        let signer = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let port = crate::free_port();
        let config = format!(
            r#"[http_server]
sockets = ["127.0.0.1:{port}"]
insecure_http = true

[attestation_token]
insecure_header_jwk = true

[attestation_service]
type = "coco_as_builtin"

[attestation_service.attestation_token_broker]
duration_min = 5

[attestation_service.attestation_token_broker.signer]
key_path = "{signer}"

[attestation_service.rvps_config]
type = "BuiltIn"

[admin]
authorization_mode = "InsecureAllowAll"

[storage_backend]
storage_type = "LocalFs"

[storage_backend.backends.local_fs]
dir_path = "{storage}"

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"#,
            signer = d.join("signer.pem").display(),
            storage = d.join("storage").display(),
        );
        std::fs::write(d.join("kbs-config.toml"), config).unwrap();
        let mut cmd = Command::new(cache.join("kbs"));
        cmd.arg("--config-file")
            .arg(d.join("kbs-config.toml"))
            .env("RUST_LOG", "info");
        let mut peer = Peer::spawn("Trustee's KBS", cmd, d.join("kbs.log"));
        peer.wait(|| listening(port));
        Trustee {
            peer,
            port,
            signer,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.peer.log()
    }

    /// Attestations the KBS accepted so far, by its access log.
    pub fn attestations(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"POST /kbs/v0/attest HTTP/1.1\" 200 "))
            .count()
    }

    /// A resource at `path` (`repo/type/tag`), through the admin API.
    pub async fn put(&self, path: &str, data: &[u8]) {
        let req = reqwest::Client::new()
            .post(format!("{}/kbs/v0/resource/{path}", self.url()))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        admin(req, &format!("set resource {path}")).await;
    }

    /// The resource policy (Rego, package `policy`), through the admin API.
    pub async fn resource_policy(&self, rego: &str) {
        let req = reqwest::Client::new()
            .post(format!("{}/kbs/v0/resource-policy", self.url()))
            .json(&serde_json::json!({ "policy": URL_SAFE_NO_PAD.encode(rego) }));
        admin(req, "set resource policy").await;
    }
}

/// An admin API request, which must succeed.
async fn admin(req: reqwest::RequestBuilder, what: &str) {
    let r = req.send().await.unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "{what}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

/// A resource policy that releases every resource to any attested client,
/// sample evidence included (Trustee's default refuses the sample TEE).
pub const ALLOW_ALL: &str = "package policy\n\ndefault allow = true\n";

/// A resource policy that releases nothing.
pub const DENY_ALL: &str = "package policy\n\ndefault allow = false\n";

/// The Confidential Data Hub (`ttrpc-cdh`) with its KBS client (`cc_kbc`) at
/// `kbs`, asking attestd on `aa_sock` for its token, and api-server-rest in
/// front of it and attestd (`--features all`), on a free loopback port.
pub struct Cdh {
    cdh: Peer,
    rest: Peer,
    pub rest_port: u16,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl Cdh {
    pub fn start(cache: &Path, kbs: &str, aa_sock: &Path) -> Cdh {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("cdh.sock");
        let config = format!(
            "socket = \"unix://{}\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"{kbs}\"\n\n[aa]\naa_socket = \"unix://{}\"\n\n[log]\nlevel = \"debug\"\n",
            socket.display(),
            aa_sock.display()
        );
        std::fs::write(d.join("cdh.toml"), config).unwrap();
        let mut cmd = Command::new(cache.join("ttrpc-cdh"));
        cmd.arg("-c")
            .arg(d.join("cdh.toml"))
            // Where CDH writes its key provider config when none is given:
            // here, not in /run/confidential-containers.
            .env(
                "OCICRYPT_KEYPROVIDER_CONFIG",
                d.join("ocicrypt_config.json"),
            );
        let mut cdh = Peer::spawn("the Confidential Data Hub", cmd, d.join("cdh.log"));
        cdh.wait(|| std::os::unix::net::UnixStream::connect(&socket).is_ok());
        let rest_port = crate::free_port();
        let mut cmd = Command::new(cache.join("api-server-rest"));
        cmd.args(["--features", "all", "--bind"])
            .arg(format!("127.0.0.1:{rest_port}"))
            .arg("--cdh_addr")
            .arg(format!("unix://{}", socket.display()))
            .arg("--aa_addr")
            .arg(format!("unix://{}", aa_sock.display()));
        let mut rest = Peer::spawn("api-server-rest", cmd, d.join("rest.log"));
        rest.wait(|| listening(rest_port));
        Cdh {
            cdh,
            rest,
            rest_port,
            socket,
            _dir: dir,
        }
    }

    /// GET `path` from api-server-rest: its status and body.
    pub async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.rest_port))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    /// CDH's and api-server-rest's logs, for a failure's message.
    pub fn logs(&self) -> String {
        format!(
            "--- CDH\n{}\n--- api-server-rest\n{}",
            self.cdh.log(),
            self.rest.log()
        )
    }
}

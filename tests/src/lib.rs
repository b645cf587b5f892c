#![allow(clippy::expect_used, clippy::unwrap_used)] // test harness: a failed setup step should stop the test loudly

//! Harness for attestd's end-to-end tests and benchmark: locate the built binaries,
//! write configs, start attestd as a real process, and talk to it with the
//! generated ttrpc and gRPC clients (what CDH and kbs_protocol use).
//!
//! The binaries come from `cargo build --workspace --bins` (the README's test
//! command builds them first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use attestd_proto::grpc::attestation_agent::attestation_agent_service_client::AttestationAgentServiceClient as GrpcAa;
use attestd_proto::ttrpc::attestation_agent_ttrpc::AttestationAgentServiceClient as TtrpcAa;
use tempfile::TempDir;

pub mod agent;
pub mod azure;
pub mod guest;
pub mod imds;
pub mod kbs;
pub mod kube;
pub mod netns;
pub mod ocicrypt;
pub mod peers;
pub mod podvm;
pub mod registry;
pub mod swtpm;
pub mod webhook;

/// A workspace binary built next to the test executable (`target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A hardware attester built in its own workspace (`attesters/<dir>`), in the same
/// profile as the tests.
pub fn attester_bin(dir: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = root
        .join("attesters")
        .join(dir)
        .join("target")
        .join(profile)
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --manifest-path attesters/{dir}/Cargo.toml` first",
        p.display()
    );
    p
}

/// One `[plugins.attester.<name>]` table.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    pub transport: String,
}

impl Plugin {
    pub fn sample(transport: &str) -> Self {
        Plugin {
            name: "sample".into(),
            command: bin("attester-sample"),
            args: vec![],
            transport: transport.into(),
        }
    }

    pub fn sample_device(transport: &str) -> Self {
        Plugin {
            name: "dev".into(),
            command: bin("attester-sample"),
            args: vec!["--device".into()],
            transport: transport.into(),
        }
    }

    pub fn test(transport: &str, args: &[&str]) -> Self {
        Plugin {
            name: "test".into(),
            command: bin("attester-test"),
            args: args.iter().map(|s| s.to_string()).collect(),
            transport: transport.into(),
        }
    }

    /// The hardware attester `attesters/<tee>/` (binary `attester-<tee>`), built in
    /// its own workspace, on its own transport: gRPC for the Azure vTPM plugins,
    /// ttrpc for the rest.
    pub fn attester(tee: &str, args: &[String]) -> Self {
        let transport = if tee.starts_with("az-") {
            "grpc"
        } else {
            "ttrpc"
        };
        Plugin {
            name: tee.into(),
            command: attester_bin(tee, &format!("attester-{tee}")),
            args: args.to_vec(),
            transport: transport.into(),
        }
    }

    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    fn toml(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "[plugins.attester.{}]\nlaunch = \"process\"\ncommand = {:?}\nargs = [{}]\ntransport = {:?}\n",
            self.name,
            self.command.display().to_string(),
            args.join(", "),
            self.transport
        )
    }
}

/// A config text: `[plugins]` with `primary`, `additional`, the socket directory
/// under `dir`, `extra` keys for `[plugins]`, then every plugin table.
pub fn config(dir: &Path, primary: &Plugin, additional: &[Plugin], extra: &str) -> String {
    let names: Vec<String> = additional.iter().map(|p| format!("{:?}", p.name)).collect();
    let mut s = format!(
        "[plugins]\nprimary = {:?}\nadditional = [{}]\nsocket_dir = {:?}\n{extra}\n",
        primary.name,
        names.join(", "),
        dir.join("plugins").display().to_string()
    );
    s.push_str(&primary.toml());
    for p in additional {
        s.push_str(&p.toml());
    }
    s
}

/// A running attestd process with its own temporary directory.
pub struct Attestd {
    child: Option<Child>,
    pub dir: TempDir,
    /// The ttrpc AA socket.
    pub aa_sock: PathBuf,
    /// The gRPC AA socket.
    pub grpc_sock: PathBuf,
}

/// Why attestd did not come up: its exit status and stderr.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

impl Attestd {
    /// Start attestd with `config` (written into a fresh temp dir; `{dir}` in it is
    /// replaced by that directory) and wait until the AA socket exists.
    pub fn start(config: impl FnOnce(&Path) -> String) -> Result<Attestd, StartFailure> {
        Self::start_with(config, &[])
    }

    pub fn start_with(
        config: impl FnOnce(&Path) -> String,
        args: &[&str],
    ) -> Result<Attestd, StartFailure> {
        Self::start_env(config, args, &[])
    }

    /// [`Attestd::start_with`], with extra environment variables for attestd.
    pub fn start_env(
        config: impl FnOnce(&Path) -> String,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Attestd, StartFailure> {
        Self::start_under(config, args, env, &[])
    }

    /// [`Attestd::start`] with its open-files limit (soft and hard) at `n`, set
    /// by util-linux's `prlimit` before attestd runs.
    pub fn start_with_nofile(
        config: impl FnOnce(&Path) -> String,
        n: u64,
    ) -> Result<Attestd, StartFailure> {
        let limit = format!("--nofile={n}:{n}");
        Self::start_under(config, &[], &[], &["prlimit", &limit, "--"])
    }

    /// [`Attestd::start_env`], attestd run by `wrapper` (its command and
    /// arguments before attestd's path) when one is given.
    fn start_under(
        config: impl FnOnce(&Path) -> String,
        args: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Result<Attestd, StartFailure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("attestd.toml");
        std::fs::write(&cfg, config(dir.path())).expect("write config");
        let aa_sock = dir.path().join("aa/attestation-agent.sock");
        let grpc_sock = dir.path().join("aa/grpc.sock");
        let log = std::fs::File::create(dir.path().join("attestd.log")).expect("log");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("attestd"));
                c
            }
            None => Command::new(bin("attestd")),
        };
        cmd.arg("-c")
            .arg(&cfg)
            .arg("--attestation_sock")
            .arg(format!("unix://{}", aa_sock.display()));
        // The gRPC listener is a Unix socket in the temp dir unless the caller picks one.
        if !args.contains(&"--grpc_sock") {
            cmd.arg("--grpc_sock")
                .arg(format!("unix://{}", grpc_sock.display()));
        }
        let child = cmd
            .args(args)
            .env("ATTESTD_CONFIG_DIR", NO_SYSTEM_CONFIG)
            // Tests want debug logs in attestd.log; the benchmark sets ATTESTD_LOG=warn.
            .env(
                "ATTESTD_LOG",
                std::env::var("ATTESTD_LOG").unwrap_or_else(|_| "debug".into()),
            )
            // The caller's word last (a test of the log at its shipped level).
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn attestd");
        let mut a = Attestd {
            child: Some(child),
            dir,
            aa_sock,
            grpc_sock,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Connect, not just exists: a stale socket file may predate this attestd.
            if std::os::unix::net::UnixStream::connect(&a.aa_sock).is_ok() {
                return Ok(a);
            }
            let child = a.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                a.child = None;
                return Err(StartFailure {
                    status: Some(status),
                    stderr: a.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(StartFailure {
                    status: None,
                    stderr: a.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("attestd.log")).unwrap_or_default()
    }

    /// Wait (bounded) for attestd to exit by itself, e.g. at a fault-injection point.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "attestd did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The generated ttrpc client on the AA socket.
    pub async fn ttrpc(&self) -> TtrpcAa {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", self.aa_sock.display()))
            .await
            .expect("connect ttrpc");
        TtrpcAa::new(c)
    }

    /// The generated gRPC client on the gRPC socket.
    pub async fn grpc(&self) -> GrpcAa<tonic::transport::Channel> {
        GrpcAa::new(
            attester_sdk::grpc_unix_channel(&self.grpc_sock)
                .await
                .expect("connect grpc"),
        )
    }

    /// GetEvidence over the generated ttrpc client.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, ttrpc::Error> {
        let req = attestd_proto::ttrpc::attestation_agent::GetEvidenceRequest {
            RuntimeData: runtime_data.to_vec(),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(30_000_000_000);
        self.ttrpc()
            .await
            .get_evidence(ctx, &req)
            .await
            .map(|r| r.Evidence)
    }

    /// GetToken(`token_type`) over the generated ttrpc client: the token bytes.
    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>, ttrpc::Error> {
        let req = attestd_proto::ttrpc::attestation_agent::GetTokenRequest {
            TokenType: token_type.into(),
            ..Default::default()
        };
        self.ttrpc()
            .await
            .get_token(ctx(), &req)
            .await
            .map(|r| r.Token)
    }

    /// ExtendRuntimeMeasurement over the generated ttrpc client (register chosen by
    /// attestd): the result.
    pub async fn extend(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
    ) -> Result<attestd_proto::ttrpc::attestation_agent::RuntimeMeasurementResult, ttrpc::Error>
    {
        let req = attestd_proto::ttrpc::attestation_agent::ExtendRuntimeMeasurementRequest {
            Domain: domain.into(),
            Operation: operation.into(),
            Content: content.into(),
            ..Default::default()
        };
        self.ttrpc()
            .await
            .extend_runtime_measurement(ctx(), &req)
            .await
            .map(|r| r.Result.enum_value_or_default())
    }

    /// BindInitData over the generated ttrpc client.
    pub async fn bind_init_data(&self, digest: &[u8]) -> Result<(), ttrpc::Error> {
        let req = attestd_proto::ttrpc::attestation_agent::BindInitDataRequest {
            Digest: digest.to_vec(),
            ..Default::default()
        };
        self.ttrpc()
            .await
            .bind_init_data(ctx(), &req)
            .await
            .map(|_| ())
    }

    /// GetTeeType over the generated ttrpc client.
    pub async fn tee_type(&self) -> String {
        let ctx = ttrpc::context::with_timeout(30_000_000_000);
        let r = self
            .ttrpc()
            .await
            .get_tee_type(ctx, &Default::default())
            .await;
        r.expect("GetTeeType").tee
    }

    /// PID of the plugin process serving `<name>.sock` for this attestd.
    pub fn plugin_pid(&self, name: &str) -> Option<u32> {
        // In the plugin's own directory (generation 0).
        let sock = self
            .dir
            .path()
            .join("plugins")
            .join(name)
            .join(format!("{name}.sock"));
        find_process_with_arg(&sock.display().to_string())
    }

    /// SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_in_place()
    }

    /// SIGTERM and wait (bounded), keeping the temp dir to look at afterwards.
    pub fn stop_in_place(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "attestd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Attestd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// A process's peak RSS (its high-water mark, `VmHWM`), in MiB.
pub fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// First process whose command line has `arg` as one argument.
pub fn find_process_with_arg(arg: &str) -> Option<u32> {
    find_process(|args| args.contains(&arg.as_bytes()))
}

/// The first live process (by pid) whose argv `matches`.
pub fn find_process(matches: impl Fn(&[&[u8]]) -> bool) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if matches(&args) && alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// A loopback port free right now (for a listener the test starts, or as one
/// nothing listens on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Serve `app` on a free loopback port in the background: its `http://` base URL.
pub async fn serve_http(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("local addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// A client of the plugin serving on `sock` once it listens, waiting at most
/// `within` (a plugin, or a container, still starting up).
pub async fn connect_plugin(
    sock: &Path,
    transport: attester_sdk::Transport,
    within: Duration,
) -> attester_sdk::RemoteAttester {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(c) = attester_sdk::RemoteAttester::connect(sock, transport).await {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin at {} did not listen within {within:?}",
            sock.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start plugin binary `name` by hand on `sock` (no core), as the core would.
pub fn spawn_plugin(name: &str, sock: &Path, transport: &str, args: &[&str]) -> Child {
    Command::new(bin(name))
        .args(args)
        .arg("--socket")
        .arg(sock)
        .arg("--transport")
        .arg(transport)
        .env(
            "ATTESTD_LOG",
            std::env::var("ATTESTD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn plugin")
}

/// attestd started by hand, for what [`Attestd::start`] cannot do: through
/// `wrapper` (e.g. `["sh", "-c", "umask 000 && exec \"$@\"", "sh"]`, `["setsid"]`,
/// or none), with `args` and the config `config_text` written to `dir`, logging
/// at info to `dir/log`. Returns once `socket` exists, when one is given.
pub fn spawn_attestd(
    dir: &Path,
    wrapper: &[&str],
    config_text: &str,
    args: &[String],
    socket: Option<&Path>,
) -> Child {
    let cfg = dir.join("attestd.toml");
    std::fs::write(&cfg, config_text).expect("write config");
    let (program, pre) = match wrapper.split_first() {
        Some((w, rest)) => (PathBuf::from(w), rest),
        None => (bin("attestd"), &[][..]),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre);
    if !wrapper.is_empty() {
        cmd.arg(bin("attestd"));
    }
    let child = cmd
        .arg("-c")
        .arg(&cfg)
        .args(args)
        .env("ATTESTD_LOG", "info")
        .env("ATTESTD_CONFIG_DIR", NO_SYSTEM_CONFIG)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("log"))
        .spawn()
        .expect("spawn attestd");
    if let Some(s) = socket {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.exists() {
            assert!(Instant::now() < deadline, "attestd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child
}

/// Evidence from `plugin` (its device 1.5 s slow) while health checks run every
/// 200 ms with a 100 ms deadline: the plugin must answer and must not be restarted
/// (its device work must stay off the runtime that answers health checks).
pub async fn evidence_from_a_slow_device(plugin: &Plugin) -> serde_json::Value {
    let p = plugin.clone().with_args(&["--recorded-delay-ms", "1500"]);
    let a = Attestd::start(|d| {
        config(
            d,
            &p,
            &[],
            "health_interval_ms = 200\nhealth_timeout_ms = 100",
        )
    })
    .unwrap();
    let pid = a.plugin_pid(&p.name).unwrap();
    let ev = serde_json::from_slice(&a.evidence(b"slow").await.unwrap()).unwrap();
    assert_eq!(a.plugin_pid(&p.name), Some(pid), "not restarted");
    assert!(!a.log().contains("health check failed"), "{}", a.log());
    ev
}

/// A child process a test started itself, killed and reaped when dropped, so a
/// failed assertion does not leave it running.
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A podman container a test started, removed however the test ends (gone
/// already is fine).
pub struct PodmanContainer(pub String);

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--ignore", "--time", "0", &self.0])
            .output();
    }
}

/// `podman run` options every test container gets: runc (crun cannot run here)
/// and explicit limits (podman's defaults exceed what runc may set here).
pub const PODMAN_RUN_LIMITS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// An HTTPS client that trusts only `ca` (PEM) and reaches `host` at `addr`, as the
/// API server reaches a webhook Service by name.
pub fn https_client_trusting(ca: &[u8], host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).expect("CA PEM"))
        .resolve(host, addr)
        .http1_only()
        .build()
        .expect("https client")
}

/// The system configuration directory attestd reads in tests (`--config-dir`):
/// an empty one (a given directory must exist), so the machine's /etc/attestd
/// cannot change what a test sees. Tests of the layering pass their own.
pub const NO_SYSTEM_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/no-system-config");

/// Run `attestd` with `args` to completion; (status, stdout, stderr).
pub fn attestd_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin("attestd"))
        .args(args)
        .env("ATTESTD_CONFIG_DIR", NO_SYSTEM_CONFIG)
        .stdin(Stdio::null())
        .output()
        .expect("run attestd");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An image from `containers/images.lock` (written by `containers/build.sh`):
/// `(name, digest)`. Panics with the command to run when it is not built.
pub fn locked_image(tee: &str) -> (String, String) {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("containers/images.lock");
    let text = std::fs::read_to_string(&lock).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `containers/build.sh {tee}` first",
            lock.display()
        )
    });
    let v: toml::Table = text.parse().expect("images.lock is TOML");
    let e = v.get("images").and_then(|i| i.get(tee)).unwrap_or_else(|| {
        panic!("no {tee} image in images.lock: run `containers/build.sh {tee}`")
    });
    let s = |k: &str| e[k].as_str().expect("string").to_string();
    (s("image"), s("digest"))
}

/// `o` of a command that must have succeeded (`what` names it in the panic,
/// with its stderr): its stdout.
pub fn succeeded(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A Go counterpart `scripts/go-build.sh` built from the Go module proxy (the
/// Kubernetes cluster, containerd, skopeo, the ocicrypt client).
pub fn go_bin(name: &str) -> PathBuf {
    let p = repo_root().join("target/kube/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/go-build.sh first",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A ttrpc call context with a deadline long enough for a slow CI machine.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

/// The status code and message of a ttrpc error that must be a status.
pub fn status(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message.clone()),
        other => panic!("not a status: {other:?}"),
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `systemd-analyze verify` (Debian's systemd) of `units`: (succeeded, what it
/// printed). The Confidential Data Hub's service, which a pod VM image provides,
/// gets a stand-in in `stand_in_dir`. With `root` (`--root`), the units'
/// commands are looked up under it, and systemd's own units are copied in
/// first, since it needs them there.
pub fn systemd_verify(
    root: Option<&Path>,
    stand_in_dir: &Path,
    units: &[PathBuf],
) -> (bool, String) {
    if let Some(root) = root {
        let sys = root.join("usr/lib/systemd/system");
        std::fs::create_dir_all(&sys).unwrap();
        for e in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
            let e = e.unwrap();
            let to = sys.join(e.file_name());
            if !to.exists() && e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to).unwrap();
            }
        }
    }
    std::fs::write(
        stand_in_dir.join("confidential-data-hub.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]);
    if let Some(root) = root {
        c.arg(format!("--root={}", root.display()));
    }
    let out = c
        .args(units)
        .output()
        .expect("systemd-analyze (Debian's systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

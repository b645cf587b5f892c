//! A one-node Kubernetes cluster for the tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, containerd
//! (with Debian's runc), Debian's docker-registry and a kubelet, built from the Go
//! module proxy by `scripts/go-build.sh` at the versions pinned in
//! `tests/go/kube/go.mod` and `tests/go/containerd/go.mod`.
//!
//! Confinement: every process of the cluster runs in a network namespace of
//! the cluster's own, whose interfaces are loopback and the pods' bridge (CNI
//! from the test's own folders: no gateway, no masquerade), so nothing it or a
//! pod does can reach past this machine. The
//! webhook is registered by URL on 127.0.0.1; no Service-based webhook is ever
//! registered here (the API server would dial a Service's cluster IP).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Netns;
use crate::{go_bin, repo_root, succeeded};

/// The node's name.
pub const NODE: &str = "attestd-node";
/// The node's address. The kubelet refuses a node IP in 127.0.0.0/8 ("nodeIP
/// can't be loopback address"), so the node gets a TEST-NET-1 address (RFC 5737,
/// never routed) on `lo` itself: loopback stays the namespace's only interface.
pub const NODE_IP: &str = "192.0.2.1";
/// Debian's CNI plugins, and the ones the cluster's pod network uses.
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
const CNI_PLUGINS: [&str; 3] = ["loopback", "bridge", "host-local"];

/// The pod network: a bridge in the cluster's namespace, no gateway, no
/// masquerade, no link to anything but the pods' veths.
pub const POD_BRIDGE: &str = "attestd-cni0";
const POD_SUBNET: &str = "10.244.0.0/24";

/// The registry, inside the namespace: containerd reaches it as the mirror of
/// `localhost/…`, the name every image in images.lock has.
const REGISTRY: &str = "127.0.0.1:5000";
const API_SERVER: &str = "https://127.0.0.1:6443";
/// Tag of the images the tests build for the cluster (the pause image, the app).
const TEST_TAG: &str = "kube";

/// One of the cluster's daemons.
struct Daemon {
    name: &'static str,
    child: Child,
}

/// Images the cluster runs, pushed to its registry with their digests kept.
pub struct Images {
    /// The pod sandbox (`containers/pause.c`, static, in an image FROM scratch).
    pub pause: String,
    /// attestd's image with busybox added: the test's app, which calls the AA
    /// socket with `attestd client` in a shell loop.
    pub app: String,
}

pub struct Cluster {
    pub netns: Netns,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
    pub images: Images,
    /// From the namespace's creation to the node being Ready.
    pub started_in: Duration,
}

/// Poll `f` until it yields, at most `within`; panics naming `what`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Cluster {
    /// Poll `f` until it yields, at most `within`; a timeout's panic shows the
    /// pod as `kubectl describe` does, and its events.
    pub fn wait_pod<T>(
        &self,
        ns: &str,
        pod: &str,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= deadline {
                let d = self.kubectl(&["describe", "pod", pod, "-n", ns]);
                panic!(
                    "timed out after {within:?}: {what}\n{}{}",
                    String::from_utf8_lossy(&d.stdout),
                    String::from_utf8_lossy(&d.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `name@digest` of a `[components.<name>]` (attestd, webhook) or, failing that,
/// an `[images.<name>]` entry of containers/images.lock.
pub fn locked(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("containers/images.lock"))
        .expect("containers/images.lock: run containers/build.sh first");
    let lock: toml::Table = text.parse().unwrap();
    let entry = ["components", "images"]
        .iter()
        .find_map(|t| lock.get(*t).and_then(|t| t.get(name)))
        .unwrap_or_else(|| panic!("no {name} in images.lock: run containers/build.sh {name}"));
    format!(
        "{}@{}",
        entry["image"].as_str().unwrap(),
        entry["digest"].as_str().unwrap()
    )
}

/// Build `tag` with podman from a context of `files` (name, bytes, mode) and
/// `containerfile`; `tag@digest`.
fn build_image(tag: &str, containerfile: &str, files: &[(&str, Vec<u8>, u32)]) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Containerfile"), containerfile).unwrap();
    for (name, bytes, mode) in files {
        let p = ctx.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let o = Command::new("podman")
        .args(["build", "-q", "--pull=never", "-t", tag])
        .arg(ctx.path())
        .output()
        .unwrap();
    succeeded(&o, &format!("podman build {tag}"));
    let o = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Digest}}", tag])
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{tag}: digest {digest:?}");
    format!("{}@{digest}", tag.rsplit_once(':').unwrap().0)
}

/// The pod sandbox image: containers/pause.c, static, FROM scratch.
fn pause_image() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pause");
    let o = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(repo_root().join("containers/pause.c"))
        .output()
        .unwrap();
    succeeded(&o, "gcc pause.c");
    build_image(
        &format!("localhost/attestd-tests/pause:{TEST_TAG}"),
        "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n",
        &[("pause", std::fs::read(&out).unwrap(), 0o755)],
    )
}

/// The app: attestd's own image (its `attestd client`) with Debian's static
/// busybox for a shell.
///
/// Built once per test process: two tests building it at once (coco.rs's run
/// in parallel) moved its tag under each other, and one pushed a name that no
/// longer resolved.
pub fn app_image() -> String {
    static APP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    APP.get_or_init(build_app_image).clone()
}

fn build_app_image() -> String {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (scripts/lib.sh installs busybox-static)");
    build_image(
        &format!("localhost/attestd-tests/app:{TEST_TAG}"),
        &format!(
            "FROM {}\nCOPY busybox /busybox\nENTRYPOINT [\"/busybox\", \"sh\"]\n",
            locked("attestd")
        ),
        &[("busybox", busybox, 0o755)],
    )
}

impl Cluster {
    /// Start the cluster and push `images` (`localhost/…@sha256:…` in podman's
    /// store) to its registry; returns once the node is Ready.
    pub fn start(images: &[String]) -> Cluster {
        let t0 = Instant::now();
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kubectl",
            "containerd",
            "ctr",
        ] {
            go_bin(b);
        }
        let built = Images {
            pause: pause_image(),
            app: app_image(),
        };
        let netns = Netns::create("kube", &[NODE_IP]);
        let dir = tempfile::Builder::new()
            .prefix("attestd-kube-")
            .tempdir()
            .unwrap();
        let mut c = Cluster {
            netns,
            dir,
            daemons: Vec::new(),
            images: built,
            started_in: Duration::ZERO,
        };
        c.write_configs();
        c.spawn(
            "registry",
            Command::new("docker-registry")
                .arg("serve")
                .arg(c.path("registry.yml")),
        );
        let mut all: Vec<String> = images.to_vec();
        all.push(c.images.pause.clone());
        all.push(c.images.app.clone());
        for image in &all {
            c.push(image);
        }
        let d = c.dir.path().to_path_buf();
        c.spawn(
            "etcd",
            Command::new(go_bin("etcd")).args([
                "--name=attestd-kube".to_string(),
                format!("--data-dir={}", d.join("etcd").display()),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=attestd-kube=http://127.0.0.1:2380".into(),
                // A test's cluster: losing it to a power cut loses nothing.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ]),
        );
        c.spawn(
            "kube-apiserver",
            Command::new(go_bin("kube-apiserver")).args([
                "--etcd-servers=http://127.0.0.1:2379".to_string(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=6443".into(),
                format!("--advertise-address={NODE_IP}"),
                format!("--cert-dir={}", d.join("apiserver").display()),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", d.join("sa.pub").display()),
                format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--authorization-mode=AlwaysAllow".into(),
                // Hardware TEEs' attesters are privileged containers: every
                // cluster that runs them allows them (kubeadm's default).
                "--allow-privileged=true".into(),
                // Webhooks and aggregated APIs by endpoint, never by a
                // Service's cluster IP (off this machine).
                "--enable-aggregator-routing=true".into(),
                // No Service endpoints for the API server itself: nothing in
                // the pods dials kubernetes.default.
                "--endpoint-reconciler-type=none".into(),
                // Logs and exec reach the kubelet at the node's address, not
                // by resolving its name (no DNS here).
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]),
        );
        wait_for(
            "the API server to be ready",
            Duration::from_secs(90),
            || {
                let o = c.kubectl(&["get", "--raw", "/readyz"]);
                (o.status.success()).then_some(())
            },
        );
        // Deployments, ReplicaSets and Jobs make pods and the scheduler
        // places them, as in users' clusters. The service-account controllers
        // stay off: the tests make each namespace's default account by hand.
        let kubeconfig = format!("--kubeconfig={}", d.join("kubeconfig").display());
        c.spawn(
            "kube-controller-manager",
            Command::new(go_bin("kube-controller-manager")).args([
                kubeconfig.clone(),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
                "--controllers=*,-serviceaccount,-serviceaccount-token".into(),
                format!(
                    "--root-ca-file={}",
                    d.join("apiserver/apiserver.crt").display()
                ),
                "--use-service-account-credentials=false".into(),
            ]),
        );
        c.spawn(
            "kube-scheduler",
            Command::new(go_bin("kube-scheduler")).args([
                kubeconfig,
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
            ]),
        );
        c.spawn(
            "containerd",
            Command::new(go_bin("containerd"))
                .arg("--config")
                .arg(c.path("containerd/config.toml"))
                // Its shim is beside it; runc is Debian's.
                .env(
                    "PATH",
                    format!(
                        "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                        go_bin("containerd").parent().unwrap().display()
                    ),
                ),
        );
        wait_for("containerd's socket", Duration::from_secs(30), || {
            c.path("containerd/containerd.sock").exists().then_some(())
        });
        c.spawn(
            "kubelet",
            Command::new(go_bin("kubelet")).args([
                format!("--config={}", d.join("kubelet.yaml").display()),
                format!("--kubeconfig={}", d.join("kubelet.kubeconfig").display()),
                format!("--root-dir={}", d.join("kubelet").display()),
                format!("--cert-dir={}", d.join("kubelet-pki").display()),
                format!("--hostname-override={NODE}"),
                format!("--node-ip={NODE_IP}"),
            ]),
        );
        wait_for("the node to be Ready", Duration::from_secs(90), || {
            let o = c.kubectl(&[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (String::from_utf8_lossy(&o.stdout) == "True").then_some(())
        });
        c.started_in = t0.elapsed();
        c
    }

    /// A path in the cluster's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_configs(&self) {
        let d = self.dir.path();
        let key = openssl::rsa::Rsa::generate(2048).unwrap();
        std::fs::write(d.join("sa.key"), key.private_key_to_pem().unwrap()).unwrap();
        std::fs::write(d.join("sa.pub"), key.public_key_to_pem().unwrap()).unwrap();
        // Static tokens: the tests as cluster-admin, the kubelet as its node.
        let admin = random_token();
        let node = random_token();
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "{admin},attestd-tests,attestd-tests,\"system:masters\"\n{node},system:node:{NODE},{NODE},\"system:nodes\"\n"
            ),
        )
        .unwrap();
        let kubeconfig = |token: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: attestd-kube, cluster: {{server: \"{API_SERVER}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: attestd-kube, user: u}}}}]\ncurrent-context: c\n",
                d.join("apiserver/apiserver.crt").display()
            )
        };
        std::fs::write(d.join("kubeconfig"), kubeconfig(&admin)).unwrap();
        std::fs::write(d.join("kubelet.kubeconfig"), kubeconfig(&node)).unwrap();
        std::fs::write(
            d.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n  secret: attestd-tests\n",
                d.join("registry").display()
            ),
        )
        .unwrap();
        // CNI: the test's own folders, with Debian's plugins
        // (containernetworking-plugins) and one network, a bridge inside the
        // cluster's namespace that leads nowhere else.
        let cni = d.join("cni");
        std::fs::create_dir_all(cni.join("bin")).unwrap();
        std::fs::create_dir_all(cni.join("net.d")).unwrap();
        for plugin in CNI_PLUGINS {
            std::os::unix::fs::symlink(
                Path::new(CNI_PLUGIN_DIR).join(plugin),
                cni.join("bin").join(plugin),
            )
            .unwrap();
        }
        std::fs::write(
            cni.join("net.d/10-attestd.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0", "name": "attestd-pods",
                "plugins": [{
                    "type": "bridge", "bridge": POD_BRIDGE,
                    "isGateway": false, "ipMasq": false,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                             "dataDir": cni.join("ipam")},
                }],
            })
            .to_string(),
        )
        .unwrap();
        // containerd pulls `localhost/…` (images.lock's names) from the registry.
        let hosts = d.join("containerd/certs.d/localhost");
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!("server = \"http://{REGISTRY}\"\n\n[host.\"http://{REGISTRY}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("containerd/config.toml"),
            format!(
                r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{hosts}"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  # This machine's sandbox withholds CAP_SYS_RESOURCE: a negative
  # oom_score_adj (the kubelet asks -998 for every pod sandbox) cannot be set,
  # and runc's init dies trying. Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  # The test's own CNI folders, never the host's configuration (podman's
  # bridge in /etc/cni/net.d) or plugins.
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni}/bin"]
    conf_dir = "{cni}/net.d"
"#,
                root = d.join("containerd/root").display(),
                state = d.join("containerd/state").display(),
                sock = d.join("containerd/containerd.sock").display(),
                hosts = d.join("containerd/certs.d").display(),
                pause = self.images.pause,
                cni = d.join("cni").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
readOnlyPort: 0
# The API server fetches logs as an anonymous client; nothing else reaches it.
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
containerRuntimeEndpoint: unix://{sock}
podLogsDir: {logs}
cgroupDriver: cgroupfs
# This machine has cgroup v1 and a sandbox's hierarchy: no QoS cgroups, no
# node allocatable enforcement.
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
evictionHard: {{memory.available: "1%", nodefs.available: "1%", imagefs.available: "1%"}}
resolvConf: ""
"#,
                sock = d.join("containerd/containerd.sock").display(),
                logs = d.join("pod-logs").display(),
            ),
        )
        .unwrap();
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let mut wrapped = self.netns.command(cmd.get_program());
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        let child = wrapped
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.daemons.push(Daemon { name, child });
    }

    /// A daemon's log (for a failure's message).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Push `image` (`localhost/<repo>@sha256:…` in podman's store) to the
    /// registry, manifest bytes kept: containerd pulls it by the same digest.
    fn push(&self, image: &str) {
        let (name, _digest) = image.split_once('@').expect("name@digest");
        let repo = name.strip_prefix("localhost/").expect("a localhost/ image");
        let dest = format!("docker://{REGISTRY}/{repo}:pinned");
        wait_for(&format!("push {image}"), Duration::from_secs(30), || {
            let o = self
                .netns
                .command("skopeo")
                .args([
                    "copy",
                    "-q",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                ])
                .arg(format!("containers-storage:{image}"))
                .arg(&dest)
                .output()
                .unwrap();
            // The registry may still be starting; anything else is final.
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.success() || err.contains("connection refused"),
                "skopeo copy {image}: {err}"
            );
            o.status.success().then_some(())
        });
    }

    /// kubectl (the pinned build) as cluster-admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(args, None)
    }

    /// kubectl with `input` on its stdin.
    pub fn kubectl_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        self.kubectl_env(args, input, &[])
    }

    /// kubectl with `env` set too (`KUBE_EDITOR` for a scripted `kubectl edit`).
    pub fn kubectl_env(&self, args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
        let mut cmd = self.netns.command(go_bin("kubectl"));
        cmd.envs(env.iter().copied());
        cmd.arg(format!(
            "--kubeconfig={}",
            self.path("kubeconfig").display()
        ))
        .arg(format!(
            "--cache-dir={}",
            self.path("kubectl-cache").display()
        ))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// A namespace created with its labels in one object. Labelling it after
    /// creation races the API server's namespace cache: admission (the
    /// webhook's namespace selector, Pod Security) may still see it unlabelled
    /// for a moment, and a pod created then is neither injected nor checked.
    /// Created labelled, the cache either has the labels or misses the
    /// namespace, and a miss is read from storage.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let ns = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        });
        self.ok_in(&["create", "-f", "-"], Some(ns.to_string().as_bytes()));
    }

    /// kubectl that must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    pub fn ok_in(&self, args: &[&str], input: Option<&[u8]>) -> String {
        let o = self.kubectl_in(args, input);
        succeeded(&o, &format!("kubectl {}", args.join(" ")))
    }

    /// An object as JSON.
    pub fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// containerd's tasks: container ID → pid.
    pub fn tasks(&self) -> Vec<(String, u32)> {
        let o = self
            .netns
            .command(go_bin("ctr"))
            .arg("--address")
            .arg(self.path("containerd/containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let id = f.next()?.to_string();
                let pid = f.next()?.parse().ok()?;
                Some((id, pid))
            })
            .collect()
    }

    /// The API server's metrics (Prometheus text).
    pub fn metrics(&self) -> String {
        self.ok(&["get", "--raw", "/metrics"])
    }

    /// The kubelet's root directory (pods' volumes under `pods/<uid>/`).
    pub fn kubelet_root(&self) -> PathBuf {
        self.path("kubelet")
    }
}

fn random_token() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).unwrap();
    crate::hex(&b)
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut m: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal; ours have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    m
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Everything in the namespace goes below; asking the kubelet to stop
        // the pods first would only add their grace periods.
        // Then everything in the namespace: the daemons, the shims and any
        // container left (pods use the node's network, so theirs is this one).
        for _ in 0..3 {
            let pids = self.netns.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                crate::signal(p, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for d in &mut self.daemons {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        // The kubelet's volume mounts and containerd's rootfs mounts.
        for m in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
        if std::thread::panicking() {
            let names: Vec<&str> = self.daemons.iter().map(|d| d.name).collect();
            eprintln!(
                "cluster logs kept in {} ({})",
                self.dir.path().display(),
                names.join(", ")
            );
            let keep = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = keep.keep();
        }
    }
}

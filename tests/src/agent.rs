//! kata's agent protocol, spoken to a pod VM's agent-protocol-forwarder (APF)
//! as cloud-api-adaptor speaks it: mutual TLS with the keys the adaptor puts in
//! the user-data's `apf.json`, and kata's own Go types
//! (`attestd-agent-client`, tests/go/agent-client, built by
//! `scripts/peers-build.sh` inside cloud-api-adaptor's module).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// The forwarder's TLS material: a CA, the forwarder's certificate (for
/// 127.0.0.1, where the test reaches it) and the adaptor's client certificate.
pub struct ApfTls {
    pub dir: PathBuf,
}

impl ApfTls {
    /// Fresh keys in `dir` (openssl, P-256, valid a day).
    pub fn new(dir: &Path) -> ApfTls {
        std::fs::create_dir_all(dir).unwrap();
        let sh = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is missing: apt-get install openssl");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        sh(&[
            &["req", "-x509"][..],
            &key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=attestd-test-ca",
                "-days",
                "1",
            ],
        ]
        .concat());
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let (k, csr, crt, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
            );
            sh(&[
                &["req"][..],
                &key,
                &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN={who}")],
            ]
            .concat());
            sh(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ]);
        }
        ApfTls {
            dir: dir.to_path_buf(),
        }
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }

    /// `apf.json` as cloud-api-adaptor writes it into the user-data: the pod's
    /// network (a VXLAN tunnel to the worker node, here the qemu host's
    /// address) and the forwarder's TLS keys.
    pub fn apf_json(&self, pod: &str) -> Value {
        json!({
            "pod-network": {
                "podip": "10.244.1.5/24",
                "pod-hw-addr": "0e:00:0a:f4:01:05",
                "interface": "eth0",
                "worker-node-ip": "10.0.2.2/24",
                "tunnel-type": "vxlan",
                // As the worker node's pod namespace has them: the pod
                // subnet on the link, the default route through its gateway.
                "routes": [
                    {"dst": "10.244.1.0/24", "dev": "eth0"},
                    {"dst": "0.0.0.0/0", "gw": "10.244.1.1", "dev": "eth0"},
                ],
                "mtu": 1450,
                "index": 0,
                "vxlan-port": 4789,
                "vxlan-id": 555001,
                "dedicated": false,
            },
            "pod-namespace": "default",
            "pod-name": pod,
            "tls-server-key": self.pem("server.key"),
            "tls-server-cert": self.pem("server.crt"),
            "tls-client-ca": self.pem("ca.crt"),
        })
    }
}

/// One connection to the forwarder; calls in order over it.
pub struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    /// Connected to the forwarder at 127.0.0.1:`port` with the adaptor's
    /// client certificate.
    pub fn connect(client: &Path, port: u16, tls: &ApfTls) -> Agent {
        let d = &tls.dir;
        let mut child = Command::new(client)
            .arg(format!("-addr=127.0.0.1:{port}"))
            .arg(format!("-ca={}", d.join("ca.crt").display()))
            .arg(format!("-cert={}", d.join("client.crt").display()))
            .arg(format!("-key={}", d.join("client.key").display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Agent {
            child,
            stdin,
            stdout,
        }
    }

    /// `service.method(request)`: the response, or the error the agent (or
    /// the forwarder) answered.
    pub fn call(
        &mut self,
        service: &str,
        method: &str,
        request: Value,
        timeout_secs: u64,
    ) -> Result<Value, String> {
        let line = json!({"service": service, "method": method, "request": request,
                          "timeout": timeout_secs});
        writeln!(self.stdin, "{line}").map_err(|e| format!("agent client: {e}"))?;
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .map_err(|e| format!("agent client: {e}"))?;
        if answer.is_empty() {
            return Err("agent client: exited (its connection failed)".into());
        }
        let v: Value = serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
        match v.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(v["response"].clone()),
        }
    }

    /// `grpc.AgentService.method(request)`.
    pub fn agent(&mut self, method: &str, request: Value) -> Result<Value, String> {
        self.call("grpc.AgentService", method, request, 300)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

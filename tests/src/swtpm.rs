//! A swtpm on free TCP ports with a temporary state directory, for tests that need
//! a real TPM (the TPM attester, the event log).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

pub fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// A swtpm on free TCP ports with a temporary state directory; stopped on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: Option<tempfile::TempDir>,
}

impl Swtpm {
    /// A swtpm started as docs/attesters/tpm.md starts it (TPM2_Startup done).
    pub fn start() -> Swtpm {
        Self::start_with_flags("not-need-init,startup-clear")
    }

    /// A swtpm with these `--flags` (without `startup-clear`: nobody has sent
    /// TPM2_Startup, as on a machine whose firmware did not).
    pub fn start_with_flags(flags: &str) -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        let mut tpm = Self::start_in(state.path(), flags);
        tpm._state = Some(state);
        tpm
    }

    /// A swtpm on the state in `dir`, which outlives it (provisioned here, then
    /// given to a VM).
    pub fn start_in(dir: &std::path::Path, flags: &str) -> Swtpm {
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", flags])
            .arg("--server")
            .arg(format!("type=tcp,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={}", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("swtpm is missing: apt-get install swtpm swtpm-tools");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Swtpm {
            child,
            port,
            _state: None,
        }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Run a tpm2-tools command against this TPM.
    pub fn tool(&self, args: &[&str]) -> std::process::Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap()
    }

    /// A tpm2-tools command against this TPM, which must succeed.
    pub fn tool_ok(&self, args: &[&str]) {
        let out = self.tool(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pcr(&self, i: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pcr.bin");
        let sel = format!("sha256:{i}");
        let out = self.tool(&["tpm2_pcrread", &sel, "-o", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(f).unwrap()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // SIGTERM: swtpm saves its state and exits (the state may be used again).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TPM attester plugin on `tpm`.
pub fn tpm_plugin(tpm: &Swtpm, extra: &[&str]) -> crate::Plugin {
    let mut args = vec!["--tcti".to_string(), tpm.tcti()];
    args.extend(extra.iter().map(|s| s.to_string()));
    crate::Plugin::attester("tpm", &args)
}

/// The parts of an evidence document a verifier needs.
pub struct Parsed {
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcrs: Vec<Vec<u8>>,
    pub ak_der: Vec<u8>,
}

pub fn parse(evidence: &[u8]) -> Parsed {
    let v: serde_json::Value = serde_json::from_slice(evidence).unwrap();
    let q = &v["tpm_quote"];
    Parsed {
        message: STANDARD.decode(q["message"].as_str().unwrap()).unwrap(),
        signature: STANDARD.decode(q["signature"].as_str().unwrap()).unwrap(),
        pcrs: q["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| hex(p.as_str().unwrap()))
            .collect(),
        ak_der: STANDARD.decode(v["ak_public"].as_str().unwrap()).unwrap(),
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// tpm2_checkquote over the same evidence. PCR values go in tpm2-tools' serialized
/// form (TPML_PCR_SELECTION, then the values as TPML_DIGESTs of 8, host order): its
/// raw-values mode with -l fails for 24 PCRs in tpm2-tools 5.4.
pub fn checkquote(p: &Parsed, nonce: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n);
    let b64 = STANDARD.encode(&p.ak_der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    std::fs::write(f("ak.pem"), pem).unwrap();
    std::fs::write(f("msg"), &p.message).unwrap();
    std::fs::write(f("sig"), &p.signature).unwrap();
    let mut pcrs = Vec::new();
    pcrs.extend(1u32.to_le_bytes());
    pcrs.extend([0x0b, 0x00, 0x03, 0xff, 0xff, 0xff, 0x00, 0x00]);
    pcrs.resize(4 + 16 * 8, 0);
    pcrs.extend(3u32.to_le_bytes());
    for chunk in p.pcrs.chunks(8) {
        pcrs.extend((chunk.len() as u32).to_le_bytes());
        for d in chunk {
            pcrs.extend((d.len() as u16).to_le_bytes());
            let mut buf = d.clone();
            buf.resize(64, 0);
            pcrs.extend(buf);
        }
    }
    std::fs::write(f("pcrs"), pcrs).unwrap();
    let q = nonce.iter().map(|b| format!("{b:02x}")).collect::<String>();
    // Offline: tpm2_checkquote needs no TPM.
    let out = Command::new("tpm2_checkquote")
        .args([
            "-u",
            f("ak.pem").to_str().unwrap(),
            "-m",
            f("msg").to_str().unwrap(),
            "-s",
            f("sig").to_str().unwrap(),
            "-f",
            f("pcrs").to_str().unwrap(),
            "-g",
            "sha256",
            "-q",
            &q,
        ])
        .output()
        .unwrap();
    out.status.success()
}

pub fn nonce(rd: &[u8]) -> Vec<u8> {
    let mut n = rd.to_vec();
    n.resize(32, 0);
    n
}

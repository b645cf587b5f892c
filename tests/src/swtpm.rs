//! A swtpm on free TCP ports with a temporary state directory, for tests that need
//! a real TPM (the TPM attester, the event log).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    _state: tempfile::TempDir,
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
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", flags])
            .arg("--server")
            .arg(format!("type=tcp,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={}", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
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
            _state: state,
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

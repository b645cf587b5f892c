//! A network namespace of the test's own: only loopback, with the addresses a
//! test gives it (a node's, or a metadata service's link-local one). Anything
//! that listens on those addresses does so inside it, never on this machine's
//! network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use crate::succeeded;

/// Deleted when dropped, with its `/etc/netns/<name>/` files.
pub struct Netns {
    pub name: String,
}

fn run(program: &str, args: &[&str]) {
    let o = Command::new(program).args(args).output().unwrap();
    succeeded(&o, &format!("{program} {}", args.join(" ")));
}

impl Netns {
    /// `attestd-<tag>-<pid>[-<n>]` (tests of one binary run side by side),
    /// loopback up, each of `addrs` on it (/32).
    pub fn create(tag: &str, addrs: &[&str]) -> Netns {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = match MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => format!("attestd-{tag}-{}", std::process::id()),
            n => format!("attestd-{tag}-{}-{n}", std::process::id()),
        };
        // A namespace left by a killed run of this pid: start afresh.
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addrs {
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{a}/32"),
                    "dev",
                    "lo",
                ],
            );
        }
        ns
    }

    /// `/etc/netns/<name>/hosts`: what `exec`'s programs see as /etc/hosts.
    pub fn hosts(&self, text: &str) {
        std::fs::create_dir_all(self.etc()).unwrap();
        std::fs::write(self.etc().join("hosts"), text).unwrap();
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// `program` run inside the namespace (its network only: the cluster shares
    /// the machine's mounts, as a node's kubelet and containerd do).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// `program` run with `ip netns exec`: inside the namespace, and with the
    /// namespace's `/etc/netns/<name>/` files over /etc (its `hosts`).
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A file handle on the namespace, for `setns` in a thread of the test's.
    pub fn file(&self) -> std::fs::File {
        std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap()
    }

    /// The namespace's interfaces, one line each (`ip -o link`).
    pub fn links(&self) -> Vec<String> {
        self.ip_lines(&["link", "show"])
    }

    /// The namespace's routes (main table), one line each (`ip -o route`).
    pub fn routes(&self) -> Vec<String> {
        self.ip_lines(&["route", "show"])
    }

    fn ip_lines(&self, what: &[&str]) -> Vec<String> {
        let o = Command::new("ip")
            .args(["-n", &self.name, "-o"])
            .args(what)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every process in the namespace: the cluster's daemons, the shims and
    /// the pods' processes.
    pub fn pids(&self) -> Vec<u32> {
        let o = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

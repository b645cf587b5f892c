//! A probe a plugin declares for `primary = "auto"`: how the core tells that this
//! machine is a guest of a TEE it has no code for. A third party's image carries
//! it (the `org.attestd.probe` label, copied into images.lock by
//! containers/build.sh); a `[plugins.attester.<tee>]` table may give one too.
//! Both come from measured sources (the image, init-data), never from user-data.
//!
//! Each condition is a string: `PATH` holds when the path exists; `PATH=TEXT`
//! when the file's content, without its trailing newline, is TEXT (a sysfs
//! attribute, an SMBIOS string under /sys/class/dmi/id). Paths are absolute
//! under /dev, /sys or /proc. Every condition must hold.
//!
//! Probing runs at every start, before anything is served, so nothing it does
//! may block or change the machine: under /dev only existence is checked (an
//! open of `/dev/watchdog` arms it, a read of `/dev/kmsg` or a tty waits);
//! `/proc/kmsg` (a read consumes the kernel log) and per-process paths are
//! refused; a file is read only when it is, after every link is followed,
//! still a regular file under /sys or /proc, opened without following a last
//! link and without waiting.

use std::io::Read as _;
use std::path::Path;

/// At most this many conditions in one probe.
pub const MAX_PROBE_CONDITIONS: usize = 8;
/// The longest condition, path and text together.
pub const MAX_PROBE_CONDITION_LEN: usize = 256;
/// What a `PATH=TEXT` condition reads of the file, at most (a sysfs page).
pub const MAX_PROBE_READ: u64 = 4096;

/// One condition of a declared probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Exists(String),
    Equals(String, String),
}

impl Condition {
    pub fn parse(s: &str) -> Result<Condition, String> {
        if s.len() > MAX_PROBE_CONDITION_LEN {
            return Err(format!(
                "a probe condition is at most {MAX_PROBE_CONDITION_LEN} bytes, this one {}",
                s.len()
            ));
        }
        let (path, text) = match s.split_once('=') {
            Some((p, t)) => (p, Some(t)),
            None => (s, None),
        };
        let under = ["/dev/", "/sys/", "/proc/"]
            .iter()
            .any(|r| path.starts_with(r));
        // Segment by segment: `Path::components` would drop a "." silently.
        let plain = path
            .split('/')
            .skip(1)
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !under || !plain {
            return Err(format!(
                "probe condition {:?}: the path must be absolute under /dev, /sys or /proc, \
                 without '.' or '..'",
                crate::echo::bounded(s, 64)
            ));
        }
        if text.is_some() && path.starts_with("/dev/") {
            return Err(format!(
                "probe condition {:?}: under /dev only a path's existence is checked \
                 (opening a device may wait, or act: a watchdog arms)",
                crate::echo::bounded(s, 64)
            ));
        }
        if let Some(rest) = path.strip_prefix("/proc/") {
            let first = rest.split('/').next().unwrap_or_default();
            let per_process = first == "self"
                || first == "thread-self"
                || first.bytes().all(|b| b.is_ascii_digit());
            if per_process || first == "kmsg" {
                return Err(format!(
                    "probe condition {:?}: /proc/kmsg and per-process paths are not probed",
                    crate::echo::bounded(s, 64)
                ));
            }
        }
        if text.is_some_and(|t| t.chars().any(char::is_control)) {
            return Err(format!(
                "probe condition {:?}: the text must be printable",
                crate::echo::bounded(s, 64)
            ));
        }
        Ok(match text {
            Some(t) => Condition::Equals(path.into(), t.into()),
            None => Condition::Exists(path.into()),
        })
    }

    /// Whether it holds on the machine under `root` (`/` on a real one).
    pub fn holds(&self, root: &Path) -> bool {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        match self {
            Condition::Exists(p) => at(p).exists(),
            Condition::Equals(p, want) => read_attribute(root, &at(p)).is_some_and(|buf| {
                let got = buf.strip_suffix(b"\n").unwrap_or(&buf);
                got == want.as_bytes()
            }),
        }
    }

    /// How a report shows it.
    pub fn describe(&self) -> String {
        match self {
            Condition::Exists(p) => p.clone(),
            Condition::Equals(p, t) => format!("{p} = {t:?}"),
        }
    }
}

/// At most [`MAX_PROBE_READ`] bytes of `path`, if it is, every link followed,
/// a regular file under `root`'s /sys or /proc; opened without following a
/// last link (swapped in since) and without waiting.
fn read_attribute(root: &Path, path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let real = path.canonicalize().ok()?;
    let root = root.canonicalize().ok()?;
    let inside = ["sys", "proc"]
        .iter()
        .any(|d| real.starts_with(root.join(d)));
    if !inside {
        return None;
    }
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&real)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(MAX_PROBE_READ).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Every condition of `probe`, checked: bounded in number, each well formed.
pub fn parse(probe: &[String]) -> Result<Vec<Condition>, String> {
    if probe.len() > MAX_PROBE_CONDITIONS {
        return Err(format!(
            "a probe has at most {MAX_PROBE_CONDITIONS} conditions, this one {}",
            probe.len()
        ));
    }
    probe.iter().map(|c| Condition::parse(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_hold_on_a_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        std::fs::create_dir_all(t.path().join("sys/class/dmi/id")).unwrap();
        std::fs::write(t.path().join("dev/x-hello-guest"), "").unwrap();
        std::fs::write(t.path().join("sys/class/dmi/id/sys_vendor"), "Acme Corp\n").unwrap();
        let probe = parse(&[
            "/dev/x-hello-guest".into(),
            "/sys/class/dmi/id/sys_vendor=Acme Corp".into(),
        ])
        .unwrap();
        assert!(probe.iter().all(|c| c.holds(t.path())));
        for (c, holds) in [
            ("/sys/class/dmi/id/sys_vendor=Acme", false),
            ("/sys/class/dmi/id/sys_vendor=Acme Corp\n", false),
            ("/dev/x-other", false),
            ("/sys/class/dmi/id/sys_vendor=", false),
        ] {
            match Condition::parse(c) {
                Ok(c) => assert_eq!(c.holds(t.path()), holds, "{c:?}"),
                Err(e) => assert!(e.contains("printable"), "{e}"),
            }
        }
        // A file larger than the bound is read only up to it: never equal.
        let big = "a".repeat(MAX_PROBE_READ as usize + 1);
        std::fs::write(t.path().join("sys/big"), &big).unwrap();
        assert!(!Condition::Equals("/sys/big".into(), big).holds(t.path()));
    }

    /// Issue 41 (medium, low): reads that wait or act are refused when the
    /// probe is read; what is read is a regular file under /sys or /proc
    /// after every link, opened without waiting.
    #[test]
    fn probes_never_wait_act_or_leave_sys_and_proc() {
        for (bad, why) in [
            ("/dev/kmsg=x", "only a path's existence"),
            ("/dev/watchdog=x", "only a path's existence"),
            ("/dev/tty0=x", "only a path's existence"),
            ("/proc/kmsg", "per-process paths"),
            ("/proc/kmsg=x", "per-process paths"),
            ("/proc/self/environ=x", "per-process paths"),
            ("/proc/thread-self/comm=x", "per-process paths"),
            ("/proc/1/cmdline=x", "per-process paths"),
        ] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Existence under /dev is still a probe; so are /proc's own files.
        assert!(Condition::parse("/dev/watchdog").is_ok());
        assert!(Condition::parse("/proc/cpuinfo=x").is_ok());

        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        std::fs::create_dir_all(&sys).unwrap();
        // A FIFO nobody writes: before, the read waited for ever.
        nix::unistd::mkfifo(&sys.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A link out of the tree (/dev/x-link -> /etc/hostname was read).
        std::fs::write(t.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), sys.join("link-out")).unwrap();
        // A link within /sys is followed, as sysfs's own are.
        std::fs::create_dir_all(sys.join("devices")).unwrap();
        std::fs::write(sys.join("devices/vendor"), "Acme\n").unwrap();
        std::os::unix::fs::symlink(sys.join("devices"), sys.join("class")).unwrap();
        let root = t.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let check = |c: &str| Condition::parse(c).unwrap().holds(&root);
            tx.send((
                check("/sys/fifo=x"),
                check("/sys/link-out=secret"),
                check("/sys/class/vendor=Acme"),
            ))
            .unwrap();
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a probe waited");
        assert_eq!(got, (false, false, true));
    }

    #[test]
    fn malformed_and_unbounded_probes_are_refused() {
        for bad in [
            "dev/x",
            "/etc/passwd",
            "/dev/../etc/x",
            "/sys/./x",
            "/dev/",
            "/devx",
        ] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(
                e.contains("absolute under /dev, /sys or /proc"),
                "{bad}: {e}"
            );
        }
        let at = format!("/dev/{}", "a".repeat(MAX_PROBE_CONDITION_LEN - 5));
        assert!(Condition::parse(&at).is_ok());
        assert!(Condition::parse(&format!("{at}a"))
            .unwrap_err()
            .contains("at most 256 bytes"));
        let many = vec!["/dev/x".to_string(); MAX_PROBE_CONDITIONS];
        assert_eq!(parse(&many).unwrap().len(), MAX_PROBE_CONDITIONS);
        let more = vec!["/dev/x".to_string(); MAX_PROBE_CONDITIONS + 1];
        assert!(parse(&more).unwrap_err().contains("at most 8 conditions"));
    }
}

//! Whether the image's systemd-tmpfiles configuration puts anything in
//! `/run/peerpod`. Only then must provisioning wait for
//! `systemd-tmpfiles-setup.service` (so init-data's files take their names
//! last); otherwise that wait (the journal's flush, about 1.5 s under
//! emulation) stays off attestd's boot path. `attestd-podvm generator` asks
//! this at every boot, so an image derived from ours that adds such an entry
//! (cloud-api-adaptor's images copy a default `policy.rego` and `auth.json`
//! there) gets the ordering without a change to our units.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// tmpfiles.d's directories, most important first: a file of the same name in
/// an earlier one masks the later ones' (tmpfiles.d(5)).
pub const TMPFILES_DIRS: [&str; 4] = [
    "/etc/tmpfiles.d",
    "/run/tmpfiles.d",
    "/usr/local/lib/tmpfiles.d",
    "/usr/lib/tmpfiles.d",
];
/// `*.conf` files read at most, over all directories.
pub const MAX_TMPFILES: usize = 512;
/// One file read at most (Debian's largest is a few KiB).
pub const MAX_TMPFILES_BYTES: u64 = 256 * 1024;

/// Whether any `*.conf` under `dirs` (each relative to `root`, in
/// [`TMPFILES_DIRS`]' precedence) has a line for `/run/peerpod` or below it.
pub fn touches_peerpod(root: &Path, dirs: &[&str]) -> bool {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else {
            continue;
        };
        for e in entries.filter_map(Result::ok).take(MAX_TMPFILES) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".conf") && files.len() < MAX_TMPFILES {
                files.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    files.values().any(|p| {
        let mut bytes = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(MAX_TMPFILES_BYTES).read_to_end(&mut bytes))
            .is_ok()
            && String::from_utf8_lossy(&bytes)
                .lines()
                .any(line_touches_peerpod)
    })
}

/// One tmpfiles.d line: `Type Path Mode User Group Age Argument`; the path may
/// be quoted and may use `%t` (`/run` for the system's instance).
fn line_touches_peerpod(line: &str) -> bool {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return false;
    }
    let Some(path) = line.split_whitespace().nth(1) else {
        return false;
    };
    let path = path.trim_matches('"').trim_matches('\'');
    ["/run/peerpod", "%t/peerpod", "/var/run/peerpod"]
        .iter()
        .any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// The drop-in `generator` writes for `attestd-provision.service` when
/// [`touches_peerpod`].
pub const AFTER_TMPFILES: &str = "# Written by attestd-podvm generator: this image's tmpfiles.d puts files in\n# /run/peerpod, and init-data's files must take their names after them.\n[Unit]\nAfter=systemd-tmpfiles-setup.service\n";
/// The drop-in otherwise: no ordering, and a record that the generator ran
/// and why (`systemctl cat attestd-provision` shows it).
pub const NOT_AFTER_TMPFILES: &str = "# Written by attestd-podvm generator: this image's tmpfiles.d puts nothing in\n# /run/peerpod, so provisioning does not wait for systemd-tmpfiles-setup.\n";

/// The drop-in for the image at `root`.
pub fn drop_in(root: &Path) -> &'static str {
    if touches_peerpod(root, &TMPFILES_DIRS) {
        AFTER_TMPFILES
    } else {
        NOT_AFTER_TMPFILES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    #[test]
    fn cloud_api_adaptors_entries_ask_for_the_ordering() {
        // Its images' auth.conf, verbatim.
        let caa = "#Type   Path                            Mode User Group Age     Argument\nC       /run/peerpod/auth.json          -    -    -     -       /etc/kata-oci/empty-auth.json\n";
        let r = root(&[("usr/lib/tmpfiles.d/auth.conf", caa)]);
        assert!(touches_peerpod(r.path(), &TMPFILES_DIRS));
        assert_eq!(drop_in(r.path()), AFTER_TMPFILES);
        // Debian's own entries do not.
        let r = root(&[(
            "usr/lib/tmpfiles.d/systemd.conf",
            "d /run/user 0755 root root -\nL /run/peerpodx - - - - /x\n",
        )]);
        assert!(!touches_peerpod(r.path(), &TMPFILES_DIRS));
        assert!(!touches_peerpod(r.path(), &[]));
        assert_eq!(drop_in(r.path()), NOT_AFTER_TMPFILES);
    }

    #[test]
    fn every_spelling_of_the_directory_counts_and_comments_do_not() {
        for (line, want) in [
            ("d /run/peerpod 0700 root root -", true),
            ("f %t/peerpod/x - - - - y", true),
            ("C \"/run/peerpod/policy.rego\" - - - - /a", true),
            ("L+ /var/run/peerpod/x - - - - /a", true),
            ("   # C /run/peerpod/x - - - - /a", false),
            ("C /run/peerpod.d/x - - - - /a", false),
            ("C", false),
            ("", false),
        ] {
            assert_eq!(line_touches_peerpod(line), want, "{line:?}");
        }
    }

    #[test]
    fn a_file_in_etc_masks_the_same_name_below_it() {
        let entry = "C /run/peerpod/auth.json - - - - /etc/kata-oci/empty-auth.json\n";
        let r = root(&[
            ("usr/lib/tmpfiles.d/auth.conf", entry),
            ("etc/tmpfiles.d/auth.conf", "# masked\n"),
        ]);
        assert!(!touches_peerpod(r.path(), &TMPFILES_DIRS));
        // Another name is not masked; a file not named *.conf is not read.
        let r = root(&[
            ("usr/lib/tmpfiles.d/auth.conf", entry),
            ("etc/tmpfiles.d/other.conf", "# other\n"),
            ("etc/tmpfiles.d/policy.conf.disabled", entry),
        ]);
        assert!(touches_peerpod(r.path(), &TMPFILES_DIRS));
    }

    #[test]
    fn a_file_is_read_up_to_its_bound() {
        // The path ends the file, at the bound: read; one byte later: cut.
        let entry = "d /run/peerpod";
        let at = format!(
            "{}\n{entry}",
            "#".repeat(MAX_TMPFILES_BYTES as usize - entry.len() - 1)
        );
        assert_eq!(at.len() as u64, MAX_TMPFILES_BYTES);
        let r = root(&[("usr/lib/tmpfiles.d/big.conf", &at)]);
        assert!(touches_peerpod(r.path(), &TMPFILES_DIRS));
        let r = root(&[("usr/lib/tmpfiles.d/big.conf", &format!("#{at}"))]);
        assert!(!touches_peerpod(r.path(), &TMPFILES_DIRS));
    }
}

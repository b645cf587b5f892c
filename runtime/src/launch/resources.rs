//! What each TEE's plugin needs from the host inside a container: device nodes and
//! paths, nothing else. Paths absent on this host are left out (a container cannot
//! bind what does not exist), but a TEE none of whose way in exists (its device,
//! or configfs-tsm's report directory) is a start error naming what is missing:
//! a plugin started without it would only fail later, or not say why.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub devices: Vec<PathBuf>,
    /// Bind-mounted read-write (configfs-tsm entries, RTMR files).
    pub rw: Vec<PathBuf>,
    /// Bind-mounted read-only (event logs).
    pub ro: Vec<PathBuf>,
    /// The Azure plugins reach IMDS (169.254.169.254) over the network: the VCEK
    /// for az-snp-vtpm, the TD quote for az-tdx-vtpm.
    pub host_network: bool,
}

struct Wanted {
    /// At least one of these must exist for the plugin to reach its TEE.
    one_of: &'static [&'static str],
    devices: &'static [&'static str],
    rw: &'static [&'static str],
    ro: &'static [&'static str],
    host_network: bool,
}

/// Paths a guest of the TEE may lack (newer kernels' files, logs another
/// component creates): bound when present, left out of unit files, which are
/// written before the guest runs and cannot bind a path that may not exist.
const OPTIONAL: &[&str] = &[
    "/sys/devices/virtual/misc/tdx_guest/measurements",
    "/sys/firmware/acpi/tables/data/CCEL",
    "/run/attestation-agent",
];

fn wanted(tee: &str) -> Wanted {
    // Only the report directory: configfs holds other subsystems a plugin
    // has no business with.
    const TSM: &str = "/sys/kernel/config/tsm/report";
    const AAEL: &str = "/run/attestation-agent";
    match tee {
        "tdx" => Wanted {
            one_of: &["/dev/tdx_guest", TSM],
            devices: &["/dev/tdx_guest"],
            rw: &[TSM, "/sys/devices/virtual/misc/tdx_guest/measurements"],
            ro: &["/sys/firmware/acpi/tables/data/CCEL", AAEL],
            host_network: false,
        },
        "snp" => Wanted {
            one_of: &["/dev/sev-guest", TSM],
            devices: &["/dev/sev-guest"],
            rw: &[TSM],
            ro: &[],
            host_network: false,
        },
        "tpm" => Wanted {
            one_of: &["/dev/tpmrm0", "/dev/tpm0"],
            devices: &["/dev/tpmrm0", "/dev/tpm0"],
            rw: &[],
            ro: &[],
            host_network: false,
        },
        "az-snp-vtpm" => Wanted {
            one_of: &["/dev/tpm0", "/dev/tpmrm0"],
            devices: &["/dev/tpm0", "/dev/tpmrm0"],
            rw: &[],
            ro: &[],
            host_network: true,
        },
        "az-tdx-vtpm" => Wanted {
            one_of: &["/dev/tpm0", "/dev/tpmrm0"],
            devices: &["/dev/tpm0", "/dev/tpmrm0"],
            rw: &[],
            ro: &[],
            host_network: true,
        },
        _ => Wanted {
            one_of: &[],
            devices: &[],
            rw: &[],
            ro: &[],
            host_network: false,
        },
    }
}

/// What a guest of `tee` has, whatever machine this runs on (for unit files
/// written at image build): every path of the TEE's table but the
/// [`OPTIONAL`] ones, which are returned apart.
pub fn for_target(tee: &str) -> (Resources, Vec<PathBuf>) {
    let w = wanted(tee);
    let mut optional = Vec::new();
    let mut take = |list: &[&str]| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in list {
            if OPTIONAL.contains(p) {
                optional.push(PathBuf::from(p));
            } else {
                out.push(PathBuf::from(p));
            }
        }
        out
    };
    let r = Resources {
        devices: take(w.devices),
        rw: take(w.rw),
        ro: take(w.ro),
        host_network: w.host_network,
    };
    (r, optional)
}

/// Every path `tee`'s plugin writes, the optional ones too: a process plugin's
/// unit may name a path a guest lacks (systemd skips it).
pub fn writable(tee: &str) -> Vec<PathBuf> {
    wanted(tee).rw.iter().map(PathBuf::from).collect()
}

/// Whether absolute `path` exists under `root`.
fn exists_under(root: &Path, path: &str) -> bool {
    root.join(path.trim_start_matches('/')).exists()
}

/// The resources `tee` needs that exist under `root` (`/` on a real host), or
/// what is missing when none of the TEE's ways in exists.
pub fn for_tee(tee: &str, root: &Path) -> Result<Resources, String> {
    let w = wanted(tee);
    if !w.one_of.is_empty() && !w.one_of.iter().any(|p| exists_under(root, p)) {
        return Err(format!(
            "TEE {tee:?} needs {} in the plugin's container, and none exists here",
            if w.one_of.len() == 1 {
                w.one_of[0].to_string()
            } else {
                format!("one of {}", w.one_of.join(", "))
            }
        ));
    }
    Ok(present(tee, root))
}

/// The resources `tee` needs that exist under `root`, whatever is missing.
pub fn present(tee: &str, root: &Path) -> Resources {
    let w = wanted(tee);
    let present = |list: &[&str]| -> Vec<PathBuf> {
        list.iter()
            .filter(|p| exists_under(root, p))
            .map(PathBuf::from)
            .collect()
    };
    Resources {
        devices: present(w.devices),
        rw: present(w.rw),
        ro: present(w.ro),
        host_network: w.host_network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_exists_and_only_what_the_tee_needs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        std::fs::write(t.path().join("dev/tdx_guest"), "").unwrap();
        std::fs::write(t.path().join("dev/tpmrm0"), "").unwrap();
        let r = for_tee("tdx", t.path()).unwrap();
        assert_eq!(r.devices, [PathBuf::from("/dev/tdx_guest")]);
        assert!(r.rw.is_empty() && r.ro.is_empty());
        assert_eq!(
            for_tee("tpm", t.path()).unwrap().devices,
            [PathBuf::from("/dev/tpmrm0")]
        );
        assert_eq!(for_tee("sample", t.path()).unwrap(), Resources::default());
        // Both Azure plugins reach IMDS; no other plugin gets the host network.
        assert!(for_tee("az-tdx-vtpm", t.path()).unwrap().host_network);
        assert!(for_tee("az-snp-vtpm", t.path()).unwrap().host_network);
        assert!(!for_tee("tpm", t.path()).unwrap().host_network);
    }

    /// Issue 38 (medium): a TEE whose device was missing at launch (udev had
    /// not made it yet, say) started a plugin that could not reach it.
    #[test]
    fn a_tee_with_no_way_in_here_is_an_error_naming_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            for_tee("snp", t.path()).unwrap_err(),
            "TEE \"snp\" needs one of /dev/sev-guest, /sys/kernel/config/tsm/report in the plugin's container, and none exists here"
        );
        assert!(for_tee("tpm", t.path())
            .unwrap_err()
            .contains("one of /dev/tpmrm0, /dev/tpm0"));
        // Either way in will do: configfs-tsm alone for SNP.
        std::fs::create_dir_all(t.path().join("sys/kernel/config/tsm/report")).unwrap();
        let r = for_tee("snp", t.path()).unwrap();
        assert!(r.devices.is_empty());
        assert_eq!(r.rw, [PathBuf::from("/sys/kernel/config/tsm/report")]);
        // Only the older of the TPM's two nodes.
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        std::fs::write(t.path().join("dev/tpm0"), "").unwrap();
        assert_eq!(
            for_tee("az-snp-vtpm", t.path()).unwrap().devices,
            [PathBuf::from("/dev/tpm0")]
        );
    }

    #[test]
    fn a_targets_resources_do_not_depend_on_this_machine() {
        let (r, optional) = for_target("tdx");
        assert_eq!(r.devices, [PathBuf::from("/dev/tdx_guest")]);
        assert_eq!(r.rw, [PathBuf::from("/sys/kernel/config/tsm/report")]);
        assert!(r.ro.is_empty());
        assert_eq!(optional.len(), 3);
        let (r, _) = for_target("tpm");
        assert_eq!(
            r.devices,
            [PathBuf::from("/dev/tpmrm0"), PathBuf::from("/dev/tpm0")]
        );
        assert!(for_target("az-snp-vtpm").0.host_network);
        assert_eq!(for_target("sample").0, Resources::default());
    }
}

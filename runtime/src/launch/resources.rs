//! What each TEE's plugin needs from the host inside a container: device nodes and
//! paths, nothing else. Paths absent on this host are left out (a container cannot
//! bind what does not exist, and the plugin's Detect then says so).

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
            devices: &["/dev/tdx_guest"],
            rw: &[TSM, "/sys/devices/virtual/misc/tdx_guest/measurements"],
            ro: &["/sys/firmware/acpi/tables/data/CCEL", AAEL],
            host_network: false,
        },
        "snp" => Wanted {
            devices: &["/dev/sev-guest"],
            rw: &[TSM],
            ro: &[],
            host_network: false,
        },
        "tpm" => Wanted {
            devices: &["/dev/tpmrm0", "/dev/tpm0"],
            rw: &[],
            ro: &[],
            host_network: false,
        },
        "az-snp-vtpm" => Wanted {
            devices: &["/dev/tpm0", "/dev/tpmrm0"],
            rw: &[],
            ro: &[],
            host_network: true,
        },
        "az-tdx-vtpm" => Wanted {
            devices: &["/dev/tpm0", "/dev/tpmrm0"],
            rw: &[],
            ro: &[],
            host_network: true,
        },
        _ => Wanted {
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

/// The resources `tee` needs that exist under `root` (`/` on a real host).
pub fn for_tee(tee: &str, root: &Path) -> Resources {
    let w = wanted(tee);
    let present = |list: &[&str]| -> Vec<PathBuf> {
        list.iter()
            .map(PathBuf::from)
            .filter(|p| root.join(p.strip_prefix("/").unwrap_or(p)).exists())
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
        let r = for_tee("tdx", t.path());
        assert_eq!(r.devices, [PathBuf::from("/dev/tdx_guest")]);
        assert!(r.rw.is_empty() && r.ro.is_empty());
        assert_eq!(
            for_tee("tpm", t.path()).devices,
            [PathBuf::from("/dev/tpmrm0")]
        );
        assert_eq!(for_tee("sample", t.path()), Resources::default());
        // Both Azure plugins reach IMDS; no other plugin gets the host network.
        assert!(for_tee("az-tdx-vtpm", t.path()).host_network);
        assert!(for_tee("az-snp-vtpm", t.path()).host_network);
        assert!(!for_tee("tpm", t.path()).host_network);
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

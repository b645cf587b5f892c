//! `attestd units` as a pod VM image build runs it: the units fit the target TEE,
//! not the build machine, and systemd itself (`systemd-analyze verify`) accepts
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use attestd_e2e::{attestd_cli, bin};

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn config(d: &Path, table: &str, plugins: &str) -> String {
    let path = d.join("attestd.toml");
    std::fs::write(
        &path,
        format!("[plugins]\nprimary = \"p\"\n{plugins}\n[plugins.attester.p]\ntransport = \"ttrpc\"\n{table}\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// The units for `cfg`, written to `out` by attestd; their file names.
fn units(cfg: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let attestd = bin("attestd").display().to_string();
    let mut args = vec!["units", "-c", cfg, "--out-dir", out.to_str().unwrap()];
    if !extra.contains(&"--attestd") {
        args.extend(["--attestd", &attestd]);
    }
    // Never the machine's (or the tests' nonexistent) configuration directory.
    let drop_ins = out.with_file_name("attestd.toml.d").display().to_string();
    if !extra.contains(&"--config-dir") {
        args.extend(["--drop-in-dir", &drop_ins]);
    }
    args.extend_from_slice(extra);
    let (st, stdout, err) = attestd_cli(&args);
    assert!(st.success(), "{err}");
    stdout
        .lines()
        .filter(|l| !l.ends_with(".toml"))
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// `systemd-analyze verify` over every unit in `dir`; it must name none of them.
fn verify(dir: &Path) -> (bool, String) {
    let stand_in = dir.join("confidential-data-hub.service");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != stand_in)
        .collect();
    files.push(stand_in);
    let (ok, text) = attestd_e2e::systemd_verify(None, dir, &files);
    (ok && !text.contains(&dir.display().to_string()), text)
}

/// The units of a plugin its own unit runs, in the order to install them.
const PLUGIN_UNITS: [&str; 4] = [
    "attestd-p.service",
    "attestd-p.path",
    "attestd.service",
    "confidential-data-hub.path",
];

#[test]
fn podman_units_carry_the_targets_devices_and_systemd_accepts_them() {
    let d = tempfile::tempdir().unwrap();
    let table = format!(
        "launch = \"podman\"\ntee = \"tdx\"\nimage = \"localhost/attestd/attester-tdx@{DIGEST}\""
    );
    let cfg = config(d.path(), &table, "podman_runtime = \"runc\"");
    let out = d.path().join("units");
    let names = units(&cfg, &out, &[]);
    assert_eq!(names, PLUGIN_UNITS);
    let svc = std::fs::read_to_string(out.join("attestd-p.service")).unwrap();
    // What a TDX guest has, whether or not this machine has it.
    assert!(svc.contains("--device /dev/tdx_guest"), "{svc}");
    assert!(
        svc.contains("--volume /sys/kernel/config/tsm/report:/sys/kernel/config/tsm/report:rw"),
        "{svc}"
    );
    assert!(
        svc.contains("ExecStart=/usr/bin/podman --runtime runc run "),
        "{svc}"
    );
    assert!(
        svc.contains("# Left out, as a guest may lack them"),
        "{svc}"
    );
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
}

#[test]
fn a_process_plugins_units_are_accepted_and_quadlet_is_refused_for_it() {
    let d = tempfile::tempdir().unwrap();
    let sample = bin("attester-sample").display().to_string();
    let cfg = config(
        d.path(),
        &format!("launch = \"process\"\ncommand = {sample:?}"),
        "",
    );
    let out = d.path().join("units");
    let names = units(&cfg, &out, &[]);
    assert_eq!(names[0], "attestd-p.service");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    let (st, _, err) = attestd_cli(&["units", "-c", &cfg, "--quadlet"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "error: --quadlet writes a podman quadlet (.container, podman 4.4 or later), but plugin p has launch = \"process\""
    );
}

#[test]
fn an_oci_plugin_gets_attestd_running_runc_itself_not_a_podman_unit() {
    let d = tempfile::tempdir().unwrap();
    let table = format!(
        "launch = \"oci\"\ntee = \"snp\"\nimage = \"localhost/attestd/attester-snp@{DIGEST}\""
    );
    let cfg = config(d.path(), &table, "");
    let out = d.path().join("units");
    let names = units(&cfg, &out, &["--config-path", &cfg]);
    assert_eq!(names, ["attestd.service", "confidential-data-hub.path"]);
    let svc = std::fs::read_to_string(out.join("attestd.service")).unwrap();
    assert!(!svc.contains("podman"), "{svc}");
    assert!(
        svc.contains(&format!("ExecStart={} -c {cfg}", bin("attestd").display())),
        "{svc}"
    );
    assert!(svc.contains("KillMode=mixed"), "{svc}");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    let (st, _, err) = attestd_cli(&["units", "-c", &cfg, "--quadlet"]);
    assert_eq!(st.code(), Some(1), "{err}");
}

#[test]
fn a_generic_image_selects_at_boot_with_no_plugin_unit_and_systemd_accepts_it() {
    // primary = "auto", as the pod VM image has it: nothing is selected on the
    // build machine (which would pick its own TEE, or none), attestd does it at
    // boot.
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("attestd.toml");
    std::fs::write(
        &cfg,
        "[plugins]\nprimary = \"auto\"\nauto_launch = \"podman\"\n",
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let out = d.path().join("units");
    let names = units(
        &cfg,
        &out,
        &["--at-boot", "--config-path", "/run/peerpod/aa.toml"],
    );
    assert_eq!(names, ["attestd.service", "confidential-data-hub.path"]);
    let svc = std::fs::read_to_string(out.join("attestd.service")).unwrap();
    assert!(
        svc.contains(&format!(
            "ExecStart={} -c /run/peerpod/aa.toml",
            bin("attestd").display()
        )),
        "{svc}"
    );
    assert!(
        svc.contains("KillMode=mixed") && svc.contains("Restart=always"),
        "{svc}"
    );
    // Finding no TEE is for good: systemd does not retry that status.
    assert!(svc.contains("\nRestartPreventExitStatus=69\n"), "{svc}");
    // systemctl reload is attestd reload: plugins replaced without a failed call.
    assert!(
        svc.contains(&format!(
            "ExecReload={} reload -c /run/peerpod/aa.toml",
            bin("attestd").display()
        )),
        "{svc}"
    );
    // It brings the network up without waiting for it (nothing at start needs
    // it)...
    assert!(svc.contains("\nWants=network-online.target\n"), "{svc}");
    assert!(!svc.contains("After=network-online"), "{svc}");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    // ...unless it may pull the attester's image at start.
    std::fs::write(
        &cfg,
        "[plugins]\nprimary = \"auto\"\nauto_launch = \"podman\"\nregistries = [\"registry.example:5000/attestd\"]\npolicy_json = \"/run/peerpod/policy.json\"\n",
    )
    .unwrap();
    let pulling = d.path().join("pulling");
    units(
        &cfg,
        &pulling,
        &["--at-boot", "--config-path", "/run/peerpod/aa.toml"],
    );
    let svc = std::fs::read_to_string(pulling.join("attestd.service")).unwrap();
    assert!(
        svc.contains("\nWants=network-online.target\nAfter=network-online.target\n"),
        "{svc}"
    );
    // Only for auto: a named plugin has its own units to write now.
    let named = config(
        d.path(),
        "launch = \"process\"\ncommand = \"/bin/true\"",
        "",
    );
    let (st, _, err) = attestd_cli(&["units", "-c", &named, "--at-boot"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("--at-boot needs [plugins] primary = \"auto\""),
        "{err}"
    );
}

#[test]
fn the_verifier_does_refuse_a_broken_unit() {
    // So that an accepted unit above means something.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("broken.service"),
        "[Service]\nExecStart=relative/path\n",
    )
    .unwrap();
    let (ok, text) = verify(d.path());
    assert!(!ok, "{text}");
}

/// `prefix/bin/attestd` and `prefix/bin/attester-sample`, copies of the ones
/// built, as an install under `prefix` has them.
fn install_under(prefix: &Path) -> std::path::PathBuf {
    let bin_dir = prefix.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for b in ["attestd", "attestd-tools", "attester-sample"] {
        std::fs::copy(bin(b), bin_dir.join(b)).unwrap();
    }
    bin_dir.join("attestd")
}

#[test]
fn a_bare_plugin_command_is_found_beside_attestd_under_any_prefix() {
    // systemd looks a bare ExecStart name up only in its own fixed PATH, so the
    // unit names the plugin beside attestd, where attestd itself finds it.
    let d = tempfile::tempdir().unwrap();
    let cfg = config(
        d.path(),
        "launch = \"process\"\ncommand = \"attester-sample\"",
        "",
    );
    let under_opt = install_under(&d.path().join("opt/attestd"));
    for attestd in [under_opt, bin("attestd")] {
        let out = d.path().join("units");
        let _ = std::fs::remove_dir_all(&out);
        let a = attestd.display().to_string();
        units(&cfg, &out, &["--attestd", &a]);
        let svc = std::fs::read_to_string(out.join("attestd-p.service")).unwrap();
        let beside = attestd.with_file_name("attester-sample");
        assert!(
            svc.contains(&format!("ExecStart={} --socket", beside.display())),
            "{svc}"
        );
        let attestd_svc = std::fs::read_to_string(out.join("attestd.service")).unwrap();
        assert!(
            attestd_svc.contains(&format!("ExecStart={a} -c /etc/attestd/attestd.toml")),
            "{attestd_svc}"
        );
        let (ok, text) = verify(&out);
        assert!(ok, "{}: {text}", attestd.display());
    }
}

/// The words of `key=` in a unit (our units quote no path).
fn exec_line(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {unit}"))
        .split(' ')
        .map(str::to_string)
        .collect()
}

#[test]
fn the_units_attestd_connects_to_the_units_plugin_and_reads_each_file_once() {
    // A configuration directory as an image has it: the system file starts the
    // plugin as a process. The units run it as its own service, so they come with
    // a drop-in making it external for attestd, or attestd would start a second.
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let system = etc.join("attestd.toml");
    std::fs::write(
        &system,
        "[plugins]\nprimary = \"p\"\n[plugins.attester.p]\ntransport = \"ttrpc\"\nlaunch = \"process\"\ncommand = \"attester-sample\"\n",
    )
    .unwrap();
    let sys = system.display().to_string();
    let etc_s = etc.display().to_string();
    let out = d.path().join("units");
    let extra = ["--config-dir", &etc_s, "--config-path", &sys];
    let names = units(&sys, &out, &extra);
    assert_eq!(names, PLUGIN_UNITS);
    let drop_in = etc.join("attestd.toml.d/50-attestd-p.toml");
    let text = std::fs::read_to_string(&drop_in).unwrap();
    assert!(
        text.contains("launch = \"external\"\nsocket = \"/run/attestd/external/p/p.sock\""),
        "{text}"
    );

    // attestd config, on the unit's exact command line.
    let service = std::fs::read_to_string(out.join("attestd.service")).unwrap();
    let argv = exec_line(&service, "ExecStart=");
    assert_eq!(argv[0], bin("attestd").display().to_string());
    let mut args = vec!["config", "--json"];
    args.extend(argv[1..].iter().map(String::as_str));
    args.extend(["--config-dir", &etc_s]);
    let (st, stdout, err) = attestd_cli(&args);
    assert!(st.success(), "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["files"],
        serde_json::json!([sys, drop_in.display().to_string()]),
        "{stdout}"
    );
    assert_eq!(v["keys"]["plugins.attester.p.launch"]["value"], "external");
    assert_eq!(
        v["keys"]["plugins.attester.p.socket"]["value"],
        "/run/attestd/external/p/p.sock"
    );

    // Rendering again (an image rebuilt, install.sh run twice) gives the same
    // units: the drop-in written before does not hide the plugin's command.
    let first = std::fs::read_to_string(out.join("attestd-p.service")).unwrap();
    units(&sys, &out, &extra);
    assert_eq!(
        std::fs::read_to_string(out.join("attestd-p.service")).unwrap(),
        first
    );

    // A -c file the units pass too is read after the drop-in: its launch would win.
    let other = d.path().join("aa.toml");
    std::fs::write(
        &other,
        "[plugins.attester.p]\nlaunch = \"process\"\ncommand = \"attester-sample\"\n",
    )
    .unwrap();
    let o = other.display().to_string();
    let (st, _, err) = attestd_cli(&[
        "units",
        "--config-dir",
        &etc_s,
        "-c",
        &o,
        "--config-path",
        &o,
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {o}: its plugins.attester.p.launch is read after the drop-in 50-attestd-p.toml \
             these units need (launch = \"external\"), so attestd would start a second plugin p \
             beside its unit: set [plugins.attester.p] in the system file or an earlier drop-in"
        )
    );
}

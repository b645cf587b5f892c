//! Upstream programs built by `scripts/peers-build.sh` from the commits pinned in
//! `scripts/peers.pins`, found in its cache (`ATTESTD_PEERS`, default
//! `/var/cache/attestd/peers`). A test that needs one runs only when the cache
//! holds it at the pinned commit, and prints whether it ran or why not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// The cache's directory for `project`, or why there is none to use.
pub fn peer(project: &str) -> Result<PathBuf, String> {
    // kata-agent is built from kata-containers' pin (its own cache folder).
    let source = match project {
        "kata-agent" => "kata-containers",
        p => p,
    };
    let pins = std::fs::read_to_string(crate::repo_root().join("scripts/peers.pins")).unwrap();
    let pin = pins
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&source))
        .and_then(|w| w.get(1).map(|c| c.to_string()))
        .unwrap_or_else(|| panic!("{source} is not pinned in scripts/peers.pins"));
    let cache = std::env::var_os("ATTESTD_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/attestd/peers"));
    let dir = cache.join(project);
    let manifest = std::fs::read_to_string(dir.join("MANIFEST")).map_err(|_| {
        format!(
            "{project} is not built in {} (scripts/peers-build.sh)",
            cache.display()
        )
    })?;
    if !manifest.lines().any(|l| l == format!("commit {pin}")) {
        return Err(format!(
            "{} holds another commit of {project} than the pinned {pin} (scripts/peers-build.sh)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// [`peer`], printing whether the test using it runs: `Some` when it does.
/// Written to stderr itself, not through `eprintln!`, which the test harness
/// captures: the run's log shows it whether the test passes or not.
pub fn peer_or_skip(project: &str, test: &str) -> Option<PathBuf> {
    use std::io::Write as _;
    let (line, dir) = match peer(project) {
        Ok(d) => (
            format!("peers: {test}: runs against {project} from {}", d.display()),
            Some(d),
        ),
        Err(why) => (format!("peers: {test}: skipped: {why}"), None),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
    // The suite's tally (scripts/test.sh): one line per test that asked.
    if let Some(log) = std::env::var_os("ATTESTD_PEERS_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    dir
}

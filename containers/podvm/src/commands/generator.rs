//! `attestd-podvm generator NORMAL_DIR [EARLY LATE]`: systemd runs it before
//! any unit starts (installed as system-generators/attestd-podvm). It writes
//! `attestd-provision.service.d/50-tmpfiles.conf` into NORMAL_DIR: the
//! ordering after systemd-tmpfiles-setup when the image's tmpfiles.d has
//! entries for /run/peerpod, else a note that it has none
//! (see attestd_podvm::tmpfiles).

use std::path::Path;

use anyhow::{Context as _, Result};
use attestd_podvm::tmpfiles;

pub fn run(normal_dir: &Path) -> Result<()> {
    let dir = normal_dir.join("attestd-provision.service.d");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("50-tmpfiles.conf");
    std::fs::write(&file, tmpfiles::drop_in(Path::new("/")))
        .with_context(|| format!("cannot write {}", file.display()))
}

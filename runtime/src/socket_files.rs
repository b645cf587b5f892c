//! Socket files and the directories they live in: directories created private
//! (0750) whatever the umask, a stale socket removed and never anything else, a
//! live one left to its server. Used by the AA servers, the supervisor's plugin
//! sockets and the control socket; below all of them.

use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use attester_sdk::{Error, Result};

/// Make `path` bindable: create its directory and remove a stale socket, but refuse
/// when a live server answers there.
pub fn prepare_socket(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(
                Error::internal(format!("cannot inspect {}", path.display())).with_source(e),
            )
        }
        Ok(m) if !m.file_type().is_socket() => {
            // A mistyped --attestation_sock must not cost the operator a file.
            return Err(Error::failed_precondition(format!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            )));
        }
        Ok(_) => {}
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::failed_precondition(format!(
            "another process is already serving on {}",
            path.display()
        )));
    }
    remove_socket(path).map_err(|e| {
        Error::internal(format!("cannot remove stale socket {}", path.display())).with_source(e)
    })
}

/// Remove `path` if it is a socket (and nothing else: never a file someone put
/// there); gone already is fine.
pub fn remove_socket(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is not a socket",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sockets attestd serves on: owner and group (a client group can be given the
/// socket with chgrp), whatever the umask.
pub const SOCKET_MODE: u32 = 0o660;

/// `dir` and missing parents, created 0750 whatever the umask (existing
/// directories are left as they are: they are the operator's).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p);
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        make_dir(p)?;
        // The mode above is filtered by the umask: set it outright.
        set_mode(p, 0o750)?;
    }
    Ok(())
}

/// `mkdir p` (0750 before the umask). One someone else made meanwhile is
/// fine. One made and removed again meanwhile (an attestd stopping removes
/// its socket directory) fails with what the second look found, NotFound,
/// which a caller racing a holder's stop retries on; not "File exists".
fn make_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let fail = |e: std::io::Error| {
        Error::internal(format!("cannot create {}", p.display())).with_source(e)
    };
    match std::fs::DirBuilder::new().mode(0o750).create(p) {
        Ok(()) => Ok(()),
        // One look at what is there now.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(fail(e)),
            Err(gone) => Err(fail(gone)),
        },
        Err(e) => Err(fail(e)),
    }
}

/// `chmod path mode`, whatever the umask made of it.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::internal(format!("cannot set the mode of {}", path.display())).with_source(e)
    })
}

//! The pod VM's first step at boot: the user-data its provider hands the VM
//! (cloud-config, as cloud-api-adaptor renders it) turned into the files attestd
//! reads, before attestd starts:
//!
//! - `write_files` entries under `/run/peerpod/` are written there (into
//!   `out_dir`), subdirectories too (`certs.d/<host:port>/ca.crt`,
//!   `registries.d/*.yaml`: what a registry pull reads); entries elsewhere are
//!   skipped, never written: user-data comes from the host, which a confidential
//!   VM does not trust with its file system;
//! - `/run/peerpod/initdata` (kata's form: base64 of the gzipped TOML, or the
//!   TOML itself) becomes `initdata.toml`, the document whose digest attestd
//!   binds (`--initdata-toml`), and its `[data]` `aa.toml`, `cdh.toml`,
//!   `policy.rego` and `policy.json` become files of those names;
//! - `attestd.env` says which of them attestd is given (`ATTESTD_INITDATA`), for
//!   its unit's `EnvironmentFile=`.
//!
//! Every size is bounded (`MAX_…`), and an error leaves no half-written file:
//! attestd does not start on user-data that could not be read whole.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The directory user-data's files are written to, as cloud-api-adaptor names it.
pub const PEERPOD_DIR: &str = "/run/peerpod";
/// User-data read at most (Azure's custom data is at most 64 KiB, AWS's 16 KiB).
pub const MAX_USER_DATA_BYTES: usize = 256 * 1024;
/// One file, decoded and decompressed, at most (a gzip bomb stops here).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// `write_files` entries at most.
pub const MAX_FILES: usize = 64;
/// Path components under `/run/peerpod/` at most (`certs.d/<host:port>/ca.crt` is 3).
pub const MAX_DEPTH: usize = 4;
/// The `[data]` entries of init-data that become files: what the guest
/// components read (attestd's `-c`, CDH's config, kata-agent's policy, and the
/// containers-policy.json attestd checks a pulled attester image against: the
/// tenant's, measured, never the host's).
pub const INITDATA_FILES: [&str; 4] = ["aa.toml", "cdh.toml", "policy.rego", "policy.json"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user-data is {0} bytes; at most {MAX_USER_DATA_BYTES} are read")]
    TooLarge(usize),
    #[error("user-data is a script (#!): only cloud-config is read")]
    Script,
    #[error("user-data is not valid cloud-config")]
    Yaml(#[source] serde_yaml::Error),
    #[error("user-data has {0} write_files entries; at most {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("write_files entry {path}: unknown encoding {encoding:?} (text, b64, gzip+b64)")]
    Encoding { path: String, encoding: String },
    #[error("write_files entry {path}: not base64")]
    Base64 {
        path: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{what}: not gzip")]
    Gzip {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: more than {MAX_FILE_BYTES} bytes")]
    FileTooLarge { what: String },
    #[error("init-data is not a TOML document (nor base64 of its gzip)")]
    InitData(#[source] Box<toml::de::Error>),
    #[error("init-data: algorithm {0:?}: expected sha256, sha384 or sha512")]
    Algorithm(String),
    #[error("init-data: [data] {0:?} is not a string")]
    DataEntry(String),
    #[error("write_files entries {file} and {under}: one is a file, the other under it")]
    FileAndDirectory { file: String, under: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Deserialize)]
struct CloudConfig {
    #[serde(default)]
    write_files: Vec<WriteFile>,
}

#[derive(serde::Deserialize)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(serde::Deserialize)]
struct InitDataDoc {
    algorithm: String,
    #[serde(default)]
    data: toml::Table,
}

/// What [`provision`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Files written, by name under the output directory.
    pub written: Vec<String>,
    /// `write_files` paths skipped (outside `/run/peerpod/`).
    pub skipped: Vec<String>,
    /// Whether init-data arrived (and `initdata.toml` was written).
    pub initdata: bool,
}

/// Turn `user_data` into files under `out_dir` (which stands for
/// [`PEERPOD_DIR`]). Nothing is written unless all of it reads.
pub fn provision(user_data: &[u8], out_dir: &Path) -> Result<Provisioned, Error> {
    let files = plan(user_data)?;
    let mut done = Provisioned {
        skipped: files.skipped,
        initdata: files.initdata,
        ..Default::default()
    };
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    for (name, bytes) in &files.write {
        let path = out_dir.join(name);
        if let Some(parent) = path.parent().filter(|p| *p != out_dir) {
            create_private_dirs(parent)?;
        }
        write_private(&path, bytes)?;
        done.written.push(name.clone());
    }
    Ok(done)
}

struct Plan {
    /// (file name, contents), in the order to write.
    write: Vec<(String, Vec<u8>)>,
    skipped: Vec<String>,
    initdata: bool,
}

fn plan(user_data: &[u8]) -> Result<Plan, Error> {
    if user_data.len() > MAX_USER_DATA_BYTES {
        return Err(Error::TooLarge(user_data.len()));
    }
    if user_data.starts_with(b"#!") {
        return Err(Error::Script);
    }
    let cc: CloudConfig = if user_data.iter().all(u8::is_ascii_whitespace) {
        CloudConfig {
            write_files: Vec::new(),
        }
    } else {
        serde_yaml::from_slice(user_data).map_err(Error::Yaml)?
    };
    if cc.write_files.len() > MAX_FILES {
        return Err(Error::TooManyFiles(cc.write_files.len()));
    }
    let mut write: Vec<(String, Vec<u8>)> = Vec::new();
    let mut skipped = Vec::new();
    for f in cc.write_files {
        let Some(name) = peerpod_name(&f.path) else {
            skipped.push(f.path);
            continue;
        };
        let bytes = decode(&f)?;
        write.retain(|(n, _)| n != name);
        write.push((name.to_string(), bytes));
    }
    let mut initdata = false;
    if let Some(pos) = write.iter().position(|(n, _)| n == "initdata") {
        let (_, raw) = write.remove(pos);
        let toml_bytes = initdata_toml(&raw)?;
        let text = String::from_utf8_lossy(&toml_bytes);
        let doc: InitDataDoc = toml::from_str(&text).map_err(|e| Error::InitData(Box::new(e)))?;
        if !matches!(doc.algorithm.as_str(), "sha256" | "sha384" | "sha512") {
            return Err(Error::Algorithm(doc.algorithm));
        }
        // init-data is measured: its files win over unmeasured write_files.
        for name in INITDATA_FILES {
            if let Some(v) = doc.data.get(name) {
                let s = v
                    .as_str()
                    .ok_or_else(|| Error::DataEntry(name.to_string()))?;
                write.retain(|(n, _)| n != name);
                write.push((name.to_string(), s.as_bytes().to_vec()));
            }
        }
        write.push(("initdata.toml".into(), toml_bytes));
        initdata = true;
    }
    // attestd always gets a -c file: upstream's AA config, empty when none came.
    if !write.iter().any(|(n, _)| n == "aa.toml") {
        write.push(("aa.toml".into(), Vec::new()));
    }
    let env = if initdata {
        format!("ATTESTD_INITDATA=--initdata-toml {PEERPOD_DIR}/initdata.toml\n")
    } else {
        "ATTESTD_INITDATA=\n".to_string()
    };
    write.retain(|(n, _)| n != "attestd.env");
    write.push(("attestd.env".into(), env.into_bytes()));
    // Checked once every file is planned (init-data's and attestd.env too),
    // before anything is written: a name both a file and a directory would
    // fail half-way through.
    for (file, _) in &write {
        let dir = format!("{file}/");
        if let Some((under, _)) = write.iter().find(|(n, _)| n.starts_with(&dir)) {
            return Err(Error::FileAndDirectory {
                file: file.clone(),
                under: under.clone(),
            });
        }
    }
    Ok(Plan {
        write,
        skipped,
        initdata,
    })
}

/// The path of `path` relative to `/run/peerpod/` when every component of it is
/// a plain name (no `..`, nothing hidden, no empty component; `:` for a
/// registry's `host:port`) and there are at most [`MAX_DEPTH`] of them.
fn peerpod_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix(PEERPOD_DIR)?.strip_prefix('/')?;
    let plain = |c: &str| {
        !c.is_empty()
            && !c.starts_with('.')
            && c.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
    };
    let parts = name.split('/').count();
    (parts <= MAX_DEPTH && name.split('/').all(plain)).then_some(name)
}

/// `dir` and its missing parents, mode 0700 (what is under /run/peerpod is
/// for root only).
fn create_private_dirs(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })
}

fn decode(f: &WriteFile) -> Result<Vec<u8>, Error> {
    let b64 = |s: &str| {
        // cloud-config folds long base64 over lines.
        let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|source| Error::Base64 {
                path: f.path.clone(),
                source,
            })
    };
    let bytes = match f.encoding.as_deref().unwrap_or("text") {
        "text" => f.content.as_bytes().to_vec(),
        "b64" | "base64" => b64(&f.content)?,
        "gzip+b64" | "gz+b64" | "gzip+base64" | "gz+base64" => gunzip(&b64(&f.content)?, &f.path)?,
        other => {
            return Err(Error::Encoding {
                path: f.path.clone(),
                encoding: other.to_string(),
            })
        }
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::FileTooLarge {
            what: format!("write_files entry {}", f.path),
        });
    }
    Ok(bytes)
}

fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    // One byte past the bound tells "too large" from "exactly at it".
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Gzip {
            what: what.to_string(),
            source,
        })?;
    if out.len() > MAX_FILE_BYTES {
        return Err(Error::FileTooLarge {
            what: what.to_string(),
        });
    }
    Ok(out)
}

/// The init-data document from the `initdata` file: the TOML itself, or kata's
/// annotation form (base64 of its gzip).
fn initdata_toml(raw: &[u8]) -> Result<Vec<u8>, Error> {
    let text = String::from_utf8_lossy(raw);
    if let Err(as_toml) = toml::from_str::<toml::Table>(&text) {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        return match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(gz) => gunzip(&gz, "init-data"),
            Err(_) => Err(Error::InitData(Box::new(as_toml))),
        };
    }
    Ok(raw.to_vec())
}

/// Write `bytes` to `path`, mode 0600, whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("attestd-podvm.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests;

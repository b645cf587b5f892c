//! Init-data (`--initdata-toml` / `--initdata-digest`): the digest bound at start.
//!
//! The digest is the document's algorithm over the file's raw bytes, as upstream
//! and Trustee compute it; the TOML is kept for the KBS `init-data` field.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    #[error("cannot read init-data file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid init-data TOML {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid init-data TOML {path}: unknown algorithm {algorithm:?}: expected sha256, sha384 or sha512")]
    Algorithm { path: PathBuf, algorithm: String },
    #[error("invalid --initdata-digest: not base64")]
    Base64(#[source] base64::DecodeError),
    #[error("invalid --initdata-digest: {0} bytes; expected 32, 48 or 64")]
    DigestLength(usize),
}

#[derive(serde::Deserialize)]
struct Document {
    #[allow(dead_code)]
    version: String,
    algorithm: String,
    #[allow(dead_code)]
    data: Option<toml::Table>,
}

/// Init-data given at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    /// The digest to bind.
    pub digest: Vec<u8>,
    /// The TOML text, when given as a file (sent to the KBS).
    pub toml: Option<String>,
    pub algorithm: Option<String>,
}

impl InitData {
    pub fn from_toml_file(path: &Path) -> Result<Self, InitDataError> {
        let raw = std::fs::read(path).map_err(|source| InitDataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_bytes(&raw, path)
    }

    /// The document `raw` (read from `path`, named in errors).
    pub fn from_toml_bytes(raw: &[u8], path: &Path) -> Result<Self, InitDataError> {
        let text = String::from_utf8_lossy(raw).into_owned();
        let doc: Document = toml::from_str(&text).map_err(|e| InitDataError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let digest = match doc.algorithm.as_str() {
            "sha256" => sha2::Sha256::digest(raw).to_vec(),
            "sha384" => sha2::Sha384::digest(raw).to_vec(),
            "sha512" => sha2::Sha512::digest(raw).to_vec(),
            other => {
                return Err(InitDataError::Algorithm {
                    path: path.to_path_buf(),
                    algorithm: other.to_string(),
                })
            }
        };
        Ok(InitData {
            digest,
            toml: Some(text),
            algorithm: Some(doc.algorithm),
        })
    }

    pub fn from_digest_base64(b64: &str) -> Result<Self, InitDataError> {
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(InitDataError::Base64)?;
        if ![32, 48, 64].contains(&digest.len()) {
            return Err(InitDataError::DigestLength(digest.len()));
        }
        Ok(InitData {
            digest,
            toml: None,
            algorithm: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn sha384_over_raw_bytes() {
        let text = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''x'''\n";
        let f = write(text);
        let d = InitData::from_toml_file(f.path()).unwrap();
        assert_eq!(d.digest, sha2::Sha384::digest(text.as_bytes()).to_vec());
        assert_eq!(d.toml.as_deref(), Some(text));
    }

    #[test]
    fn unknown_algorithm_is_named() {
        let f = write("version = \"0.1.0\"\nalgorithm = \"md5\"\n");
        let e = InitData::from_toml_file(f.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("unknown algorithm \"md5\": expected sha256, sha384 or sha512"),
            "{e}"
        );
    }

    #[test]
    fn malformed_toml_is_an_error() {
        let f = write("version = \n");
        let e = InitData::from_toml_file(f.path()).unwrap_err().to_string();
        assert!(e.starts_with("invalid init-data TOML"), "{e}");
    }

    #[test]
    fn digest_flag() {
        let b = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(
            InitData::from_digest_base64(&b).unwrap().digest,
            vec![1u8; 32]
        );
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 5]);
        assert_eq!(
            InitData::from_digest_base64(&short)
                .unwrap_err()
                .to_string(),
            "invalid --initdata-digest: 5 bytes; expected 32, 48 or 64"
        );
        assert!(InitData::from_digest_base64("!!").is_err());
    }
}

//! The serving certificate, reloaded when its files change: cert-manager (or a
//! rotated Secret) swaps them in place, and the API server must never see an
//! expired one. A pair that does not load (half-written, key and certificate not
//! matching) is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Certificate and key files larger than this are not a certificate and key.
pub const MAX_PEM_BYTES: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The cause in the message and not as a source, so `{:#}` says it once.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the key {key} does not belong to the certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
    #[error("the client CA: {0}")]
    ClientCa(String),
}

/// The client CA's PEM (`serve --client-ca`), bounded as the pair is.
pub fn read_client_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    read(path)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let fail = |error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            message: format!("{len} bytes, more than {MAX_PEM_BYTES}"),
        });
    }
    std::fs::read(path).map_err(fail)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pair in `cert` and `key`, and a fingerprint of their bytes.
fn load(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, [u8; 32]), TlsError> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|source| {
        TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        }
    })?;
    let mut h = Sha256::new();
    h.update(&cert_pem);
    h.update(&key_pem);
    Ok((Arc::new(certified), h.finalize().into()))
}

/// A certificate resolver whose pair can be swapped while serving.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, [u8; 32])>,
}

impl Reloading {
    /// Load the pair now (failing is fatal at start).
    pub fn new(cert: &Path, key: &Path) -> Result<Arc<Reloading>, TlsError> {
        let loaded = load(cert, key)?;
        Ok(Arc::new(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(loaded),
        }))
    }

    /// Read the files again; swap when their bytes changed and they load.
    /// Returns whether a new pair is now served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (certified, fingerprint) = load(&self.cert, &self.key)?;
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.1 == fingerprint {
            return Ok(false);
        }
        *cur = (certified, fingerprint);
        Ok(true)
    }

    /// Reload every `interval` for as long as the process runs.
    pub fn watch(self: Arc<Self>, interval: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut failing = false;
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    }
                    Ok(false) => failing = false,
                    // Logged once per failing streak: rotation writes two files.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("keeping the previous serving certificate: {e}");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// The server's TLS configuration; with `client_ca` (PEM), only a client
    /// presenting a certificate that CA signed completes the handshake (the
    /// API server, given one in its admission kubeconfig).
    pub fn server_config(
        self: &Arc<Self>,
        client_ca: Option<&[u8]>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| TlsError::ClientCa(e.to_string()))?;
                    roots
                        .add(c)
                        .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::ClientCa("no certificate in it".into()));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut c = builder.with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cur = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(cur.0.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write_pair(dir: &Path, names: &[&str]) {
        let ca = crate::certs::authority().unwrap();
        let (cert, key) = crate::certs::serving(&ca, names).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_broken_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), &["a.example"]);
        let r = Reloading::new(&d.path().join("tls.crt"), &d.path().join("tls.key")).unwrap();
        assert!(!r.reload().unwrap(), "same bytes: nothing to swap");
        let before = r.current.read().unwrap().1;
        write_pair(d.path(), &["b.example"]);
        assert!(r.reload().unwrap());
        let after = r.current.read().unwrap().1;
        assert_ne!(before, after);
        // A key of another pair: refused, the served pair stays.
        let other = tempfile::tempdir().unwrap();
        write_pair(other.path(), &["c.example"]);
        std::fs::copy(other.path().join("tls.key"), d.path().join("tls.key")).unwrap();
        let e = r.reload().unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(r.current.read().unwrap().1, after);
        std::fs::write(d.path().join("tls.crt"), "not pem").unwrap();
        assert!(r
            .reload()
            .unwrap_err()
            .to_string()
            .contains("holds no certificate"));
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), &["a.example"]);
        let mut big = std::fs::read(d.path().join("tls.crt")).unwrap();
        big.resize(MAX_PEM_BYTES as usize + 1, b'\n');
        std::fs::write(d.path().join("tls.crt"), big).unwrap();
        let e = Reloading::new(&d.path().join("tls.crt"), &d.path().join("tls.key")).unwrap_err();
        assert!(e.to_string().contains("more than 262144"), "{e}");
    }
}

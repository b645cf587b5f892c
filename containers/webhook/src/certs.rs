//! A CA and a serving certificate for clusters without cert-manager
//! (`attestd-webhook certs`): the API server trusts the CA through the webhook
//! configuration's `caBundle`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot make the {what}: {source}")]
pub struct CertError {
    what: &'static str,
    #[source]
    source: rcgen::Error,
}

/// How long the certificates are valid: long enough not to surprise an operator,
/// short enough to be rotated (cert-manager's default is 90 days).
pub const CA_DAYS: i64 = 3650;
pub const SERVING_DAYS: i64 = 365;

pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

fn dated(days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    // An hour back: the API server's clock may be behind ours.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p
}

pub fn authority() -> Result<Authority, CertError> {
    let fail = |source| CertError { what: "CA", source };
    let mut params = dated(CA_DAYS);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "attestd-webhook CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(fail)?;
    let pem = params.self_signed(&key).map_err(fail)?.pem();
    Ok(Authority { params, key, pem })
}

/// A serving certificate for `names` (DNS names), signed by `ca`: (cert PEM, key PEM).
pub fn serving(ca: &Authority, names: &[&str]) -> Result<(String, String), CertError> {
    let fail = |source| CertError {
        what: "serving certificate",
        source,
    };
    let mut params = dated(SERVING_DAYS);
    params.subject_alt_names =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(fail)?
            .subject_alt_names;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("attestd-webhook"),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(fail)?;
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate signed by `ca`, for the API server to present to the
/// webhook (`serve --client-ca`, the API server's admission kubeconfig):
/// (cert PEM, key PEM).
pub fn client(ca: &Authority, name: &str) -> Result<(String, String), CertError> {
    let fail = |source| CertError {
        what: "client certificate",
        source,
    };
    let mut params = dated(SERVING_DAYS);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(fail)?;
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write `body` as `dir/name` with exactly `mode`: into a new file beside it
/// (created exclusively, no symlink followed), then renamed over the name, so
/// an existing file's looser mode is not kept and a symlink planted at the
/// name is replaced, never written through.
pub fn write_file(dir: &std::path::Path, name: &str, body: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // Whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The names the API server uses for a Service: `<svc>.<ns>.svc` is what it dials.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Issue 26 (low): an existing key at 0644 ends 0600, and a symlink at the
    /// key's name is replaced, not written through.
    #[test]
    fn a_key_is_written_private_and_nothing_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("tls.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(d.path(), "tls.key", "new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "new");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let victim = d.path().join("victim");
        std::fs::write(&victim, "mine").unwrap();
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        write_file(d.path(), "tls.key", "newer", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine");
        assert!(!std::fs::symlink_metadata(&key)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "newer");
        // Nothing left beside them.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}

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

/// The names the API server uses for a Service: `<svc>.<ns>.svc` is what it dials.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

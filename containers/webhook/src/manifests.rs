//! `attestd-webhook manifests`: the deploy/ templates with the webhook's image
//! pinned by digest from images.lock and its TLS material, ready for one
//! `kubectl apply -f -`.

use base64::Engine as _;

use crate::config::Lock;

const WEBHOOK: &str = include_str!("../deploy/webhook.yaml");
const TLS_SECRET: &str = include_str!("../deploy/tls-secret.yaml");
const CERT_MANAGER: &str = include_str!("../deploy/cert-manager.yaml");

/// Where the serving certificate comes from.
pub enum Tls {
    /// `attestd-webhook certs` output: CA, certificate and key (PEM).
    Files {
        ca: String,
        cert: String,
        key: String,
    },
    /// cert-manager issues it and injects the CA.
    CertManager,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "images.lock has no [components.webhook] entry: build it with containers/build.sh webhook"
    )]
    NoImage,
    #[error("a template placeholder was left unfilled: {0}")]
    Unfilled(String),
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// Every manifest, filled in.
pub fn render(lock: &Lock, tls: &Tls) -> Result<String, ManifestError> {
    let web = lock
        .components
        .get("webhook")
        .ok_or(ManifestError::NoImage)?;
    let image = format!("{}@{}", web.image, web.digest);
    let mut out = WEBHOOK.replace("${IMAGE}", &image);
    match tls {
        Tls::Files { ca, cert, key } => {
            out = out.replace("${CA_BUNDLE}", &b64(ca));
            out.push_str("---\n");
            out.push_str(
                &TLS_SECRET
                    .replace("${TLS_CRT}", &b64(cert))
                    .replace("${TLS_KEY}", &b64(key)),
            );
        }
        Tls::CertManager => {
            // cert-manager's CA injector fills caBundle in.
            out = out
                .lines()
                .filter(|l| !l.contains("${CA_BUNDLE}"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.push_str("---\n");
            out.push_str(CERT_MANAGER);
        }
    }
    if let Some(at) = out.find("${") {
        let end = out[at..].find('}').map_or(out.len(), |e| at + e + 1);
        return Err(ManifestError::Unfilled(out[at..end].to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::LockedComponent;

    fn lock() -> Lock {
        let mut l = Lock::default();
        l.components.insert(
            "webhook".into(),
            LockedComponent {
                image: "localhost/attestd/attestd-webhook".into(),
                digest: format!("sha256:{}", "3".repeat(64)),
            },
        );
        l
    }

    #[test]
    fn every_placeholder_is_filled_and_the_image_is_pinned() {
        let files = Tls::Files {
            ca: "CA".into(),
            cert: "CERT".into(),
            key: "KEY".into(),
        };
        let out = render(&lock(), &files).unwrap();
        assert!(out.contains(&format!(
            "image: localhost/attestd/attestd-webhook@sha256:{}",
            "3".repeat(64)
        )));
        assert!(out.contains(&format!("caBundle: {}", b64("CA"))));
        assert!(out.contains(&format!("tls.key: {}", b64("KEY"))));
        let cm = render(&lock(), &Tls::CertManager).unwrap();
        assert!(!cm.contains("caBundle"));
        assert!(cm.contains("kind: Certificate"));
        assert!(matches!(
            render(&Lock::default(), &Tls::CertManager),
            Err(ManifestError::NoImage)
        ));
    }
}

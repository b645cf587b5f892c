//! `attestd-webhook manifests`: the deploy/ templates with the webhook's image
//! pinned by digest from images.lock and its TLS material, ready for one
//! `kubectl apply -f -`.

use base64::Engine as _;

use crate::config::Lock;

const WEBHOOK: &str = include_str!("../deploy/webhook.yaml");
const CERT_MANAGER: &str = include_str!("../deploy/cert-manager.yaml");
/// The ValidatingAdmissionPolicy that keeps the pin after creation (1.30+).
pub const PIN_POLICY: &str = include_str!("../deploy/pin-policy.yaml");

/// How the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Through its Service (`attestd-webhook.attestd-system.svc:443`): two
    /// replicas on the pod network.
    Service,
    /// At a URL on the node (single-node and development installs, clusters
    /// without a pod network the API server can route to): one replica on the
    /// node's network listening where the URL points, no Service.
    Url(WebhookUrl),
}

/// An `https://host[:port]/path` URL the API server dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub url: String,
    /// The host as it appears in the URL (an IPv6 address in brackets).
    pub host: String,
    pub port: u16,
}

impl WebhookUrl {
    /// The host a serving certificate names (brackets dropped).
    pub fn cert_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The same scheme, host and port with another path (the workloads'
    /// webhooks beside `/mutate`).
    pub fn with_path(&self, path: &str) -> String {
        let rest = &self.url["https://".len()..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        format!("https://{authority}{path}")
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = ManifestError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| ManifestError::BadUrl(format!("{}: {why}", attestd::echo::quoted(url)));
        // The API server calls webhooks over HTTPS only, and refuses a URL with
        // user info, a query or a fragment.
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("the API server calls webhooks over https:// only"))?;
        if rest.contains(['?', '#', '@'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("no user, query, fragment or whitespace"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.is_empty() || path == "/" {
            return Err(bad("name the path the webhook serves, /mutate"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], &authority[i + 1..]),
            _ => (authority, "443"),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
            return Err(bad("no host"));
        }
        Ok(WebhookUrl {
            url: url.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

/// Where the serving certificate comes from.
pub enum Tls {
    /// `attestd-webhook certs` output: the CA (PEM), for the caBundle. The
    /// serving pair's Secret is not printed: the output goes down a pipe (and
    /// into logs), and the private key has no business there.
    Files { ca: String },
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
    #[error("bad webhook URL {0}")]
    BadUrl(String),
    #[error("cert-manager issues certificates for the Service's names: a webhook registered by URL takes `attestd-webhook certs --url` output")]
    CertManagerByUrl,
    #[error("a webhook on the node's network (--url) is not selected by a NetworkPolicy: use serve --client-ca to admit only the API server")]
    PolicyByUrl,
    #[error("--api-server-cidr {0}")]
    Cidr(String),
}

/// Most `--api-server-cidr` blocks taken (an API server has a few addresses).
pub const MAX_API_SERVER_CIDRS: usize = 16;

/// A NetworkPolicy that lets only `cidrs` (the API server's addresses) reach
/// the webhook's pods on `port`: no pod can hold its connections or its review
/// memory. For the Service form only: a pod on the node's network (`--url`) is
/// not selected by NetworkPolicies, and `serve --client-ca` is the means there.
pub fn network_policy(
    cidrs: &[String],
    endpoint: &Endpoint,
    port: u16,
) -> Result<String, ManifestError> {
    if let Endpoint::Url(_) = endpoint {
        return Err(ManifestError::PolicyByUrl);
    }
    if cidrs.len() > MAX_API_SERVER_CIDRS {
        return Err(ManifestError::Cidr(format!(
            "{} blocks; at most {MAX_API_SERVER_CIDRS}",
            cidrs.len()
        )));
    }
    let mut from = String::new();
    for c in cidrs {
        let ok = c.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max) && !bits.starts_with('+')
        });
        if !ok {
            return Err(ManifestError::Cidr(format!(
                "{}: not an address block (a.b.c.d/n)",
                serde_json::Value::String(c.clone())
            )));
        }
        from.push_str(&format!("        - ipBlock: {{cidr: \"{c}\"}}\n"));
    }
    Ok(format!(
        "---\n\
         # Only the API server (--api-server-cidr) reaches the webhook: no pod can\n\
         # hold its connections or its review memory. The kubelet's probes come from\n\
         # the node: give the nodes' addresses too where the network plugin applies\n\
         # policies to them.\n\
         apiVersion: networking.k8s.io/v1\n\
         kind: NetworkPolicy\n\
         metadata:\n  name: attestd-webhook\n  namespace: attestd-system\n\
         spec:\n  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: attestd-webhook\n\
         \x20 policyTypes: [\"Ingress\"]\n  ingress:\n    - from:\n{from}      ports:\n\
         \x20       - {{port: {port}, protocol: TCP}}\n"
    ))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// Every manifest, filled in.
pub fn render(lock: &Lock, tls: &Tls, endpoint: &Endpoint) -> Result<String, ManifestError> {
    let web = lock
        .components
        .get("webhook")
        .ok_or(ManifestError::NoImage)?;
    let image = format!("{}@{}", web.image, web.digest);
    let port = match endpoint {
        Endpoint::Service => 8443,
        Endpoint::Url(u) => u.port,
    };
    let (client, replicas, host_network, listen, security) = match endpoint {
        Endpoint::Service => (
            "service: {name: attestd-webhook, namespace: attestd-system, path: /mutate, port: 443}"
                .to_string(),
            "2",
            "false",
            format!("0.0.0.0:{port}"),
            "restricted",
        ),
        Endpoint::Url(_) if matches!(tls, Tls::CertManager) => {
            return Err(ManifestError::CertManagerByUrl)
        }
        // On the node's network: a pod security level that allows it, and one
        // replica, since two on one node would want the same port.
        Endpoint::Url(u) => (
            format!("url: {}", serde_json::Value::String(u.url.clone())),
            "1",
            "true",
            format!("{}:{port}", u.host),
            "privileged",
        ),
    };
    // The kubelet probes the pod's IP unless told otherwise; by URL the webhook
    // listens only where the URL points.
    let probe_host = match endpoint {
        Endpoint::Service => "# host: the pod's IP".to_string(),
        Endpoint::Url(u) => format!(
            "host: {}",
            serde_json::Value::String(u.cert_name().to_string())
        ),
    };
    let client_for = |level: &str| {
        match endpoint {
        Endpoint::Service => format!(
            "service: {{name: attestd-webhook, namespace: attestd-system, path: /workloads/{level}, port: 443}}"
        ),
        Endpoint::Url(u) => format!(
            "url: {}",
            serde_json::Value::String(u.with_path(&format!("/workloads/{level}")))
        ),
    }
    };
    let mut out = WEBHOOK
        .replace("${IMAGE}", &image)
        .replace("${CLIENT_CONFIG}", &client)
        .replace("${CLIENT_CONFIG_BASELINE}", &client_for("baseline"))
        .replace("${CLIENT_CONFIG_RESTRICTED}", &client_for("restricted"))
        .replace("${REPLICAS}", replicas)
        .replace("${HOST_NETWORK}", host_network)
        .replace("${LISTEN}", &listen)
        .replace("${PORT}", &port.to_string())
        .replace("${POD_SECURITY}", security)
        .replace("${PROBE_HOST}", &probe_host);
    if let Endpoint::Url(_) = endpoint {
        // Nothing selects the Service, and a budget of one of one replica
        // would block every drain of the node.
        out = out
            .split("\n---\n")
            .filter(|doc| {
                !doc.contains("\nkind: Service\n") && !doc.contains("\nkind: PodDisruptionBudget\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n");
    }
    match tls {
        Tls::Files { ca } => {
            out = out.replace("${CA_BUNDLE}", &b64(ca));
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
        let files = Tls::Files { ca: "CA".into() };
        let out = render(&lock(), &files, &Endpoint::Service).unwrap();
        assert!(out.contains(&format!(
            "image: localhost/attestd/attestd-webhook@sha256:{}",
            "3".repeat(64)
        )));
        assert!(out.contains(&format!("caBundle: {}", b64("CA"))));
        // The workloads' webhooks, one per level, by the same Service.
        assert!(out.contains("path: /workloads/baseline, port: 443}"));
        assert!(out.contains("path: /workloads/restricted, port: 443}"));
        assert!(out.contains("kind: ValidatingWebhookConfiguration"));
        assert!(out.contains("failurePolicy: Ignore"));
        // No Secret: the private key stays in its file.
        assert!(!out.contains("kind: Secret") && !out.contains("tls.key:"));
        let cm = render(&lock(), &Tls::CertManager, &Endpoint::Service).unwrap();
        assert!(!cm.contains("caBundle"));
        assert!(cm.contains("kind: Certificate"));
        assert!(matches!(
            render(&Lock::default(), &Tls::CertManager, &Endpoint::Service),
            Err(ManifestError::NoImage)
        ));
    }

    fn files() -> Tls {
        Tls::Files { ca: "CA".into() }
    }

    #[test]
    fn by_service_two_replicas_on_the_pod_network() {
        let out = render(&lock(), &files(), &Endpoint::Service).unwrap();
        assert!(out.contains(
            "service: {name: attestd-webhook, namespace: attestd-system, path: /mutate, port: 443}"
        ));
        assert!(out.contains("replicas: 2\n"));
        assert!(out.contains("hostNetwork: false\n"));
        assert!(out.contains("--listen=0.0.0.0:8443\n"));
        assert!(out.contains("enforce: restricted\n"));
        assert!(out.contains("\nkind: Service\n"));
        assert!(out.contains("\nkind: PodDisruptionBudget\n"));
        assert!(!out.contains("url:"));
    }

    #[test]
    fn by_url_one_replica_on_the_nodes_network_and_no_service() {
        let url: WebhookUrl = "https://127.0.0.1:9443/mutate".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 9443));
        let out = render(&lock(), &files(), &Endpoint::Url(url)).unwrap();
        assert!(out.contains("      url: \"https://127.0.0.1:9443/mutate\"\n      caBundle: "));
        assert!(out.contains("replicas: 1\n"));
        assert!(out.contains("hostNetwork: true\n"));
        assert!(out.contains("--listen=127.0.0.1:9443\n"));
        assert!(out.contains("containerPort: 9443\n"));
        assert_eq!(
            out.matches("host: \"127.0.0.1\"\n").count(),
            2,
            "both probes"
        );
        assert!(out.contains("enforce: privileged\n"));
        assert!(!out.contains("\nkind: Service\n"));
        assert!(!out.contains("\nkind: PodDisruptionBudget\n"));
        assert!(!out.contains("service:"));
        // The documents still split: the workloads' webhook configuration ends
        // them, at the same host and port.
        let last = out.rsplit("\n---\n").next().unwrap();
        assert!(
            last.contains("kind: ValidatingWebhookConfiguration"),
            "{last}"
        );
        assert!(last.contains("url: \"https://127.0.0.1:9443/workloads/restricted\""));
        assert!(last.contains("url: \"https://127.0.0.1:9443/workloads/baseline\""));
        let cm = "https://127.0.0.1/mutate".parse().unwrap();
        assert!(matches!(
            render(&lock(), &Tls::CertManager, &Endpoint::Url(cm)),
            Err(ManifestError::CertManagerByUrl)
        ));
    }

    #[test]
    fn a_network_policy_admits_only_the_blocks_given() {
        let p = network_policy(
            &["10.0.0.0/24".into(), "fd00::1/128".into()],
            &Endpoint::Service,
            8443,
        )
        .unwrap();
        assert!(p.contains("kind: NetworkPolicy"));
        assert!(p.contains("- ipBlock: {cidr: \"10.0.0.0/24\"}"));
        assert!(p.contains("- ipBlock: {cidr: \"fd00::1/128\"}"));
        assert!(p.contains("- {port: 8443, protocol: TCP}"));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "x/8",
            "10.0.0.0/+8",
            "::/129",
            "10.0.0.0/8\nkind: x",
        ] {
            assert!(
                matches!(
                    network_policy(&[bad.into()], &Endpoint::Service, 8443),
                    Err(ManifestError::Cidr(_))
                ),
                "{bad}"
            );
        }
        let many = vec!["10.0.0.0/8".to_string(); MAX_API_SERVER_CIDRS + 1];
        assert!(network_policy(&many, &Endpoint::Service, 8443).is_err());
        assert!(network_policy(&many[..MAX_API_SERVER_CIDRS], &Endpoint::Service, 8443).is_ok());
        let url: WebhookUrl = "https://127.0.0.1:8443/mutate".parse().unwrap();
        assert!(matches!(
            network_policy(&["10.0.0.0/8".into()], &Endpoint::Url(url), 8443),
            Err(ManifestError::PolicyByUrl)
        ));
    }

    #[test]
    fn webhook_urls_are_parsed_strictly() {
        let u: WebhookUrl = "https://[::1]:8443/mutate".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.cert_name()),
            ("[::1]", 8443, "::1")
        );
        let u: WebhookUrl = "https://webhook.example/mutate".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("webhook.example", 443));
        for bad in [
            "http://127.0.0.1:8443/mutate",
            "https://127.0.0.1:8443",
            "https://127.0.0.1:8443/",
            "https://127.0.0.1:0/mutate",
            "https://127.0.0.1:99999/mutate",
            "https://:8443/mutate",
            "https://user@127.0.0.1/mutate",
            "https://127.0.0.1/mutate?x=1",
            "https://127.0.0.1/mu tate",
            "https://[::1/mutate",
        ] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad} was accepted");
        }
    }
}

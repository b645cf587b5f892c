//! Pulling a pinned plugin image that the local store lacks: by digest only, from
//! a registry the configuration allows, accepted by a containers-policy.json
//! (signatures, the containers ecosystem's way), with a deadline per attempt,
//! bounded retries with back-off, and progress in the log. skopeo does the
//! transfer into podman's store, checking the manifest's digest against the
//! reference and the signatures against the policy; the caller then checks name,
//! digest and platform in the store before anything runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attester_sdk::{Error, Result};
use tokio::process::Command;

use super::image::run_tool;
use crate::config::image_ref::ImageRef;
use crate::config::PluginsConfig;

/// The first pause between attempts; it doubles after each.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The system's signature policy and lookaside configuration (containers-policy.json(5),
/// containers-registries.d(5)).
pub const SYSTEM_POLICY: &str = "/etc/containers/policy.json";
/// A policy file larger than this is refused unread.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// What `[plugins]` allows.
#[derive(Debug, Clone, Default)]
pub struct PullPolicy {
    pub registries: Vec<String>,
    pub insecure: Vec<String>,
    pub certs_dir: Option<PathBuf>,
    pub policy_json: Option<PathBuf>,
    pub registries_d: Option<PathBuf>,
    pub dev_mode: bool,
    pub timeout: Duration,
    pub attempts: u32,
}

impl PullPolicy {
    pub fn from_config(p: &PluginsConfig) -> Self {
        PullPolicy {
            registries: p.registries.clone(),
            insecure: p.insecure_registries.clone(),
            certs_dir: p.registry_certs_dir.clone(),
            policy_json: p.policy_json.clone(),
            registries_d: p.registries_d.clone(),
            dev_mode: p.dev_mode,
            timeout: Duration::from_millis(p.pull_timeout_ms),
            attempts: p.pull_attempts,
        }
    }

    /// The entry of `registries` that covers image `name`, if any.
    pub fn allowing(&self, name: &str) -> Option<&str> {
        self.registries
            .iter()
            .find(|r| covers(r, name))
            .map(String::as_str)
    }

    fn insecure_for(&self, name: &str) -> bool {
        self.insecure.iter().any(|r| covers(r, name))
    }
}

/// Whether registry entry `entry` (`host[:port]` or `host[:port]/path`) covers
/// image `name`: whole path components only (`example.com/a` does not cover
/// `example.com/ab/x`).
fn covers(entry: &str, name: &str) -> bool {
    name.strip_prefix(entry)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The registry host of an image name, when it names one (`localhost/…` and bare
/// names are local-only: podman would otherwise resolve them through its
/// unqualified-search list).
pub fn registry_of(name: &str) -> Option<&str> {
    let (first, rest) = name.split_once('/')?;
    let host = first.contains('.') || first.contains(':');
    (host && !rest.is_empty()).then_some(first)
}

/// Failures worth another attempt: the registry unreachable or slow, or a 5xx.
/// A missing manifest, a refused certificate or a digest mismatch will not mend.
fn transient(e: &Error) -> bool {
    let m = e.chain().to_ascii_lowercase();
    let permanent = [
        "manifest unknown",
        "not found",
        "unauthorized",
        "denied",
        "certificate",
        "x509",
        "digest",
        "no image found in manifest list",
        "signature",
        "rejected",
        "not accepted",
        "policy",
    ];
    !permanent.iter().any(|p| m.contains(p))
}

/// The policy requirements (their `type`s) that apply to image `name` pulled
/// over the `docker` transport: the most specific scope of
/// `transports.docker` (the repository, then each parent namespace, then the
/// host, then `*.domain` wildcards), else `default`.
pub fn requirements_for(policy: &serde_json::Value, name: &str) -> Vec<String> {
    let types = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["type"].as_str().unwrap_or("(no type)").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let scopes = &policy["transports"]["docker"];
    let mut scope = name;
    loop {
        if let Some(v) = scopes.get(scope) {
            return types(v);
        }
        match scope.rsplit_once('/') {
            Some((parent, _)) => scope = parent,
            None => break,
        }
    }
    // `*.example.com` covers hosts under example.com (most specific first).
    let host = name.split('/').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let mut labels: &str = host;
    while let Some((_, rest)) = labels.split_once('.') {
        if let Some(v) = scopes.get(format!("*.{rest}").as_str()) {
            return types(v);
        }
        labels = rest;
    }
    types(&policy["default"])
}

/// The policy file's requirements for `name`, refused when they would accept an
/// unsigned image outside dev mode.
fn check_policy(path: &Path, name: &str, dev_mode: bool) -> Result<Vec<String>> {
    let fail = |e: std::io::Error| {
        Error::failed_precondition(format!(
            "cannot read the signature policy {}",
            path.display()
        ))
        .with_source(e)
    };
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if len > MAX_POLICY_BYTES {
        return Err(Error::failed_precondition(format!(
            "the signature policy {} has {len} bytes, more than {MAX_POLICY_BYTES}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let policy: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::failed_precondition(format!(
            "the signature policy {} is not JSON",
            path.display()
        ))
        .with_source(e)
    })?;
    let reqs = requirements_for(&policy, name);
    if reqs.is_empty() {
        return Err(Error::failed_precondition(format!(
            "the signature policy {} has no requirement for {name} (and no default)",
            path.display()
        )));
    }
    if !dev_mode && reqs.iter().any(|t| t == "insecureAcceptAnything") {
        return Err(Error::failed_precondition(format!(
            "the signature policy {} accepts any image from {name} (insecureAcceptAnything): \
             require signedBy or sigstoreSigned for it, or set [plugins] dev_mode = true",
            path.display()
        )));
    }
    Ok(reqs)
}

/// Pull `r` (pinned by `digest`) into podman's store, or say why not; on success,
/// how it was accepted (for the plugin's provenance).
pub async fn pull_into_store(r: &ImageRef, digest: &str, policy: &PullPolicy) -> Result<String> {
    let pinned = r.pinned(digest);
    if registry_of(&r.name).is_none() {
        return Err(Error::failed_precondition(format!(
            "image {pinned} names no registry: it can only come from the local store"
        )));
    }
    if policy.allowing(&r.name).is_none() {
        return Err(Error::failed_precondition(format!(
            "image {pinned} is not in the local store, and its registry is not in [plugins] registries ({})",
            if policy.registries.is_empty() {
                "none allowed".to_string()
            } else {
                policy.registries.join(", ")
            }
        )));
    }
    let policy_file = policy
        .policy_json
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_POLICY));
    let reqs = check_policy(&policy_file, &r.name, policy.dev_mode)?;
    let accepted = format!(
        "pulled from {}, accepted by {} ({})",
        registry_of(&r.name).unwrap_or_default(),
        policy_file.display(),
        reqs.join(", ")
    );
    let mut cmd_args = vec!["copy".to_string(), "--quiet".to_string()];
    cmd_args.push(format!("--policy={}", policy_file.display()));
    if let Some(d) = &policy.registries_d {
        cmd_args.push(format!("--registries.d={}", d.display()));
    }
    // Laid out as /etc/containers/certs.d: one directory per registry.
    let host = registry_of(&r.name).unwrap_or_default();
    if let Some(dir) = policy
        .certs_dir
        .as_ref()
        .map(|d| d.join(host))
        .filter(|d| d.is_dir())
    {
        cmd_args.push(format!("--src-cert-dir={}", dir.display()));
    }
    if policy.insecure_for(&r.name) {
        cmd_args.push("--src-tls-verify=false".into());
    }
    cmd_args.push(format!("docker://{pinned}"));
    cmd_args.push(format!("containers-storage:{pinned}"));
    let mut backoff = FIRST_BACKOFF;
    let started = Instant::now();
    for attempt in 1..=policy.attempts {
        tracing::info!(image = %pinned, attempt, of = policy.attempts, "pulling");
        let result = run_tool(
            Command::new("skopeo").args(&cmd_args),
            "skopeo copy",
            policy.timeout,
        )
        .await;
        match result {
            Ok(_) => {
                tracing::info!(
                    image = %pinned,
                    millis = started.elapsed().as_millis() as u64,
                    "pulled: {accepted}"
                );
                return Ok(accepted);
            }
            Err(e) if attempt < policy.attempts && transient(&e) => {
                tracing::warn!(image = %pinned, attempt, retry_in = ?backoff, "pull failed: {}", e.chain());
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                return Err(Error::unavailable(format!(
                    "cannot pull {pinned} (attempt {attempt} of {})",
                    policy.attempts
                ))
                .with_source(e))
            }
        }
    }
    Err(Error::internal(format!(
        "cannot pull {pinned}: no attempt made"
    )))
}

/// The image's digest (and `label`) in podman's store, as
/// [`super::image::podman_digest_label`] checks them; an image absent there (or
/// not under this name) is pulled first when pinned and its registry allowed.
/// The third value says how this start got the image when it pulled it.
pub async fn ensure_in_store(
    r: &ImageRef,
    label: Option<&str>,
    policy: &PullPolicy,
) -> Result<(String, Option<String>, Option<String>)> {
    match super::image::podman_digest_label(r, label).await {
        Ok((d, l)) => Ok((d, l, None)),
        Err(local) => match &r.digest {
            Some(d) if registry_of(&r.name).is_some() => {
                let how = pull_into_store(r, d, policy).await?;
                let (d, l) = super::image::podman_digest_label(r, label).await?;
                Ok((d, l, Some(how)))
            }
            _ => Err(local),
        },
    }
}

/// The platform this machine runs, as image configs name it.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cover_whole_path_components() {
        let p = PullPolicy {
            registries: vec!["registry.example:5000".into(), "quay.io/coco".into()],
            ..Default::default()
        };
        assert_eq!(
            p.allowing("registry.example:5000/attestd/x"),
            Some("registry.example:5000")
        );
        assert_eq!(
            p.allowing("quay.io/coco/attester-tdx"),
            Some("quay.io/coco")
        );
        assert_eq!(p.allowing("quay.io/cocoa/attester-tdx"), None);
        assert_eq!(p.allowing("registry.example:50001/x"), None);
        assert_eq!(p.allowing("localhost/attestd/attester-sample"), None);
    }

    #[test]
    fn only_names_with_a_host_have_a_registry() {
        assert_eq!(registry_of("localhost:5000/a/b"), Some("localhost:5000"));
        assert_eq!(registry_of("quay.io/a"), Some("quay.io"));
        assert_eq!(registry_of("localhost/attestd/x"), None);
        assert_eq!(registry_of("attester"), None);
    }

    #[test]
    fn the_most_specific_scope_decides() {
        let p: serde_json::Value = serde_json::from_str(
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {
                "registry.example:5000": [{"type": "signedBy"}],
                "registry.example:5000/dev": [{"type": "insecureAcceptAnything"}],
                "*.example.com": [{"type": "sigstoreSigned"}]}}}"#,
        )
        .unwrap();
        let t = |n: &str| requirements_for(&p, n);
        assert_eq!(t("registry.example:5000/attestd/x"), ["signedBy"]);
        assert_eq!(t("registry.example:5000/dev/x"), ["insecureAcceptAnything"]);
        assert_eq!(t("quay.eu.example.com/x"), ["sigstoreSigned"]);
        assert_eq!(t("quay.io/x"), ["reject"]);
    }

    #[test]
    fn a_policy_accepting_anything_is_refused_outside_dev_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policy.json");
        std::fs::write(&p, r#"{"default": [{"type": "insecureAcceptAnything"}]}"#).unwrap();
        let e = check_policy(&p, "r.example/x", false).unwrap_err();
        assert!(
            e.message().contains("accepts any image from r.example/x"),
            "{e}"
        );
        assert!(check_policy(&p, "r.example/x", true).is_ok());
        std::fs::write(&p, vec![b' '; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let e = check_policy(&p, "r.example/x", true).unwrap_err();
        assert!(e.message().contains("more than 1048576"), "{e}");
        std::fs::write(&p, "{}").unwrap();
        let e = check_policy(&p, "r.example/x", true).unwrap_err();
        assert!(e.message().contains("no requirement"), "{e}");
    }

    #[test]
    fn what_is_worth_retrying() {
        assert!(transient(&Error::unavailable(
            "skopeo copy did not finish within 1s"
        )));
        assert!(transient(&Error::failed_precondition(
            "skopeo copy failed: connect: connection refused"
        )));
        assert!(!transient(&Error::failed_precondition(
            "skopeo copy failed: reading manifest sha256:00 in r/x: manifest unknown"
        )));
        assert!(!transient(&Error::failed_precondition(
            "skopeo copy failed: x509: certificate signed by unknown authority"
        )));
    }
}

//! The gatekeeping on image references (parsed by
//! [`crate::config::image_ref`]): plugins are pinned `name@sha256:<digest>`; a
//! mutable tag is refused unless dev mode; the local image's digest is checked
//! before every start.

use std::time::Duration;

use attester_sdk::{Error, Result};
use tokio::process::Command;

use crate::config::image_ref::ImageRef;

/// Run a helper tool (podman, skopeo, umoci, runc) to completion within `limit`;
/// its stdout, or an error with its stderr.
pub async fn run_tool(cmd: &mut Command, what: &str, limit: Duration) -> Result<String> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(r) => {
            r.map_err(|e| Error::failed_precondition(format!("cannot run {what}")).with_source(e))?
        }
        Err(_) => {
            return Err(Error::unavailable(format!(
                "{what} did not finish within {limit:?}"
            )))
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::failed_precondition(format!(
            "{what} failed ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// The digest podman's store holds for `r`: the pinned one if present (else an
/// error naming what the store has), or in dev mode what the tag points at now.
pub async fn podman_digest(r: &ImageRef) -> Result<String> {
    podman_digest_label(r, None).await.map(|(d, _)| d)
}

/// [`podman_digest`], and with it the image's `label` (one `podman image inspect`).
pub async fn podman_digest_label(
    r: &ImageRef,
    label: Option<&str>,
) -> Result<(String, Option<String>)> {
    let query = match (&r.digest, &r.tag) {
        (Some(d), _) => r.pinned(d),
        (None, Some(t)) => format!("{}:{t}", r.name),
        (None, None) => r.name.clone(),
    };
    // Digest, label and the names the store holds the image under, on one line,
    // tab-separated (none can hold a tab).
    let label_field = match label {
        Some(l) => format!("{{{{index .Labels \"{l}\"}}}}"),
        None => String::new(),
    };
    let format = format!(
        "{{{{.Digest}}}}\t{{{{.Os}}}}/{{{{.Architecture}}}}\t{label_field}\t{{{{range .RepoDigests}}}}{{{{.}}}} {{{{end}}}}{{{{range .RepoTags}}}}{{{{.}}}} {{{{end}}}}"
    );
    let found = run_tool(
        Command::new("podman").args(["image", "inspect", "--format", &format, &query]),
        "podman image inspect",
        TOOL_LIMIT,
    )
    .await
    .map(|out| inspected(&out));
    // An image for another platform would fail at exec with nothing clearer than
    // "exec format error": refuse it by name first.
    if let Ok(i) = &found {
        let host = super::pull::host_platform();
        if r.digest.as_ref().is_none_or(|want| *want == i.digest) && i.platform != host {
            return Err(Error::failed_precondition(format!(
                "image {r} is for {}; this machine runs {host}",
                i.platform
            )));
        }
    }
    let found = found.map(|i| (i.digest, i.label, i.names));
    match (found, &r.digest) {
        // podman finds an image by digest whatever name comes with it: the name is
        // part of the pin too, so the store must hold the digest under it.
        (Ok((d, _, names)), Some(want)) if &d == want && !names.iter().any(|n| n == &r.name) => {
            Err(Error::failed_precondition(format!(
                "image {r}: podman's store holds {want} as {}, not as {}: the name is part of the pin",
                if names.is_empty() { "an unnamed image".to_string() } else { names.join(", ") },
                r.name
            )))
        }
        (Ok((d, l, _)), Some(want)) if &d == want => Ok((d, l)),
        (Ok((d, l, _)), None) => Ok((d, l)),
        (Ok((d, _, _)), Some(want)) => Err(Error::failed_precondition(format!(
            "image {r}: the local image has digest {d}, the pin is {want}"
        ))),
        (Err(e), Some(want)) => {
            let local = local_digests(&r.name).await;
            Err(if local.is_empty() {
                Error::failed_precondition(format!(
                    "image {} is not in podman's store (no image named {} at all): build it with containers/build.sh",
                    r.pinned(want),
                    r.name
                ))
            } else {
                Error::failed_precondition(format!(
                    "image {} is not in podman's store: the local {} has {}; the pin is {want}",
                    r.pinned(want),
                    r.name,
                    local.join(", ")
                ))
            }
            .with_source(e))
        }
        (Err(e), None) => Err(Error::failed_precondition(format!(
            "image {r} is not in podman's store"
        ))
        .with_source(e)),
    }
}

/// One `podman image inspect` line, read.
#[derive(Debug, PartialEq, Eq)]
struct Inspected {
    digest: String,
    /// `os/architecture`.
    platform: String,
    label: Option<String>,
    names: Vec<String>,
}

/// `podman image inspect`'s "<digest>\t<os>/<arch>\t<label>\t<names>" line: the
/// digest, the platform, the label (a missing one prints as nothing or `<no
/// value>`) and the repositories the store holds the image under (from its repo
/// digests and tags).
fn inspected(out: &str) -> Inspected {
    let mut parts = out.trim_end_matches(['\n', '\r']).splitn(4, '\t');
    let d = parts.next().unwrap_or_default().trim().to_string();
    let platform = parts.next().unwrap_or_default().trim().to_string();
    let l = parts.next().unwrap_or_default().trim();
    let l = (!l.is_empty() && l != "<no value>").then(|| l.to_string());
    let mut names: Vec<String> = parts
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| ImageRef::parse(n).ok().map(|r| r.name))
        .collect();
    names.sort();
    names.dedup();
    Inspected {
        digest: d,
        platform,
        label: l,
        names,
    }
}

/// Digests of the local images named `name`, for error messages.
async fn local_digests(name: &str) -> Vec<String> {
    let out = run_tool(
        Command::new("podman").args([
            "images",
            "--digests",
            "--format",
            "{{.Digest}}",
            "--filter",
            &format!("reference={name}"),
        ]),
        "podman images",
        TOOL_LIMIT,
    )
    .await
    .unwrap_or_default();
    let mut v: Vec<String> = out
        .lines()
        .map(str::to_string)
        .filter(|l| l.starts_with("sha256:"))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:14d11cd195491ce715c3b96f94992430610eec5f181b158764d09013e2addd06";

    #[test]
    fn inspect_line_splits_into_digest_platform_label_and_names() {
        let names =
            format!("localhost/attestd/attester-tdx@{D} localhost/attestd/attester-tdx:0.1.0 ");
        assert_eq!(
            inspected(&format!("{D}\tlinux/amd64\ttdx\t{names}\n")),
            Inspected {
                digest: D.to_string(),
                platform: "linux/amd64".into(),
                label: Some("tdx".to_string()),
                names: vec!["localhost/attestd/attester-tdx".to_string()]
            }
        );
        let bare = inspected(&format!("{D}\tlinux/arm64\t<no value>\t"));
        assert_eq!((bare.platform.as_str(), bare.label), ("linux/arm64", None));
        assert_eq!(inspected(D).digest, D);
    }
}

//! Plugin images pulled from a real registry (Debian's docker-registry over TLS
//! with a CA made here): by digest only, from registries the config allows,
//! checked for name, digest and platform before anything runs. Needs root,
//! podman, skopeo and the sample image (containers/build.sh sample).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use attestd_e2e::registry::{untag, Registry};
use attestd_e2e::{attestd_cli, locked_image, Attestd, StartFailure};

/// A config whose primary is the image `image`, started with podman, and
/// `pull` lines for `[plugins]`.
fn config(d: &Path, image: &str, pull: &str) -> String {
    config_for("podman", d, image, pull)
}

fn config_for(launch: &str, d: &Path, image: &str, pull: &str) -> String {
    format!(
        "[plugins]\npodman_runtime = \"runc\"\nprimary = \"sample\"\nsocket_dir = {:?}\noci_dir = {:?}\n{pull}\n[plugins.attester.sample]\nlaunch = {launch:?}\ntransport = \"ttrpc\"\ntee = \"sample\"\nimage = {image:?}\n",
        d.join("plugins").display().to_string(),
        d.join("oci").display().to_string(),
    )
}

/// The registry allowed, its CA, its signatures, and a policy requiring its
/// images signed by the test's trusted key.
fn allow(r: &Registry) -> String {
    format!(
        "registries = [{:?}]\nregistry_certs_dir = {:?}\nregistries_d = {:?}\npolicy_json = {:?}\n",
        r.host,
        r.certs_dir.display().to_string(),
        r.registries_d.display().to_string(),
        r.policy().display().to_string(),
    )
}

/// A name a test pulled, untagged however the test ends.
struct Pulled(String);

impl Drop for Pulled {
    fn drop(&mut self) {
        untag(&self.0);
    }
}

fn refused(image: &str, pull: &str) -> StartFailure {
    let started = Instant::now();
    let e = Attestd::start(|d| config(d, image, pull))
        .err()
        .expect("attestd should refuse");
    eprintln!("refused after {:?}", started.elapsed());
    e
}

#[tokio::test]
async fn a_pinned_image_is_pulled_from_an_allowed_registry_verified_and_served() {
    let reg = Registry::start();
    let (sample, digest) = locked_image("sample");
    // Publishing keeps the pin: the registry serves the very manifest built here.
    let pushed = reg.push(
        &format!("{sample}@{digest}"),
        "attestd/attester-sample",
        "0.1.0",
        Some(0),
    );
    assert_eq!(pushed, digest, "the push changed the digest");
    let image = format!("{}/attestd/attester-sample@{digest}", reg.host);
    untag(&image);
    let _pulled = Pulled(image.clone());
    for launch in ["podman", "oci"] {
        // Absent again: each backend pulls it itself.
        untag(&image);
        let a = Attestd::start(|d| config_for(launch, d, &image, &allow(&reg))).unwrap();
        assert_eq!(
            a.evidence(b"from-the-registry").await.unwrap(),
            attester_sample::evidence(b"from-the-registry")
                .unwrap()
                .bytes,
            "{launch}"
        );
        let log = a.log();
        assert!(
            log.contains("pulling") && log.contains("pulled"),
            "{launch}: {log}"
        );
        assert!(
            log.contains("accepted by") && log.contains("(signedBy)"),
            "{launch}: {log}"
        );
    }
    // `attestd plugins` says how the image came: pulled, and which policy took it.
    untag(&image);
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("attestd.toml");
    std::fs::write(&cfg, config(d.path(), &image, &allow(&reg))).unwrap();
    let (status, out, err) = attestd_cli(&["plugins", "-c", cfg.to_str().unwrap(), "--json"]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v[0]["probe"]["provenance"];
    assert_eq!(p["digest"], digest.as_str());
    let pulled = p["pulled"].as_str().unwrap();
    assert!(
        pulled.starts_with(&format!("pulled from {}, accepted by ", reg.host)),
        "{pulled}"
    );
    assert!(pulled.ends_with("(signedBy)"), "{pulled}");
    // Now in the store under that name: a restart starts it without pulling.
    let inspect = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Digest}}", &image])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), digest);
}

#[tokio::test]
async fn what_must_not_run_is_refused_with_the_reason() {
    let mut reg = Registry::start();
    let (sample, digest) = locked_image("sample");
    reg.push(
        &format!("{sample}@{digest}"),
        "attestd/attester-sample",
        "0.1.0",
        Some(0),
    );
    let image = format!("{}/attestd/attester-sample@{digest}", reg.host);
    untag(&image);
    let _pulled = Pulled(image.clone());

    // A registry not allowed: nothing is pulled, the reference is named.
    let e = refused(&image, "");
    assert!(
        e.stderr.contains(&format!(
            "image {image} is not in the local store, and its registry is not in [plugins] registries (none allowed)"
        )),
        "{}",
        e.stderr
    );
    let e = refused(&image, "registries = [\"registry.example\"]");
    assert!(e.stderr.contains("(registry.example)"), "{}", e.stderr);

    // A digest the registry does not have: one attempt (it will not mend), the
    // registry's answer kept.
    let zero = format!(
        "{}/attestd/attester-sample@sha256:{}",
        reg.host,
        "0".repeat(64)
    );
    let e = refused(&zero, &allow(&reg));
    assert!(
        e.stderr
            .contains(&format!("cannot pull {zero} (attempt 1 of 3)")),
        "{}",
        e.stderr
    );
    assert!(e.stderr.contains("manifest unknown"), "{}", e.stderr);

    // A manifest for another platform: pulled, but refused before it runs.
    let arm = build_arm64_image();
    let arm_digest = reg.push(&arm, "attestd/attester-arm64", "1", Some(0));
    let arm_image = format!("{}/attestd/attester-arm64@{arm_digest}", reg.host);
    let _arm_pulled = Pulled(arm_image.clone());
    let e = refused(&arm_image, &allow(&reg));
    assert!(
        e.stderr.contains(&format!(
            "image {arm_image} is for linux/arm64; this machine runs linux/amd64"
        )),
        "{}",
        e.stderr
    );

    // The registry down: bounded attempts with back-off, then the cause.
    reg.stop();
    let started = Instant::now();
    let e = refused(
        &image,
        &format!(
            "{}pull_attempts = 2\npull_timeout_ms = 20000\n",
            allow(&reg)
        ),
    );
    assert!(
        e.stderr
            .contains(&format!("cannot pull {image} (attempt 2 of 2)")),
        "{}",
        e.stderr
    );
    assert!(e.stderr.contains("connection refused"), "{}", e.stderr);
    // One back-off of FIRST_BACKOFF between the two attempts.
    assert!(
        started.elapsed() >= attestd::launch::pull::FIRST_BACKOFF,
        "{:?}",
        started.elapsed()
    );
}

/// A FROM-scratch image for linux/arm64 (no emulation needed: nothing runs at
/// build), in the local store; its `name@digest`.
fn build_arm64_image() -> String {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("Containerfile"),
        "FROM scratch\nCOPY attester /attester\nENTRYPOINT [\"/attester\"]\n",
    )
    .unwrap();
    std::fs::write(d.path().join("attester"), "not a binary for this machine\n").unwrap();
    let name = "localhost/attestd-tests/attester-arm64:1";
    let o = Command::new("podman")
        .args([
            "build",
            "-q",
            "--runtime",
            "runc",
            "--arch",
            "arm64",
            "--timestamp",
            "0",
            "-t",
            name,
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Digest}}", name])
        .output()
        .unwrap();
    format!(
        "localhost/attestd-tests/attester-arm64@{}",
        String::from_utf8_lossy(&o.stdout).trim()
    )
}

#[tokio::test]
async fn an_image_override_from_a_drop_in_is_honoured_only_from_an_allowed_registry() {
    let reg = Registry::start();
    let (sample, digest) = locked_image("sample");
    reg.push(
        &format!("{sample}@{digest}"),
        "dev/attester-sample",
        "mine",
        Some(0),
    );
    let image = format!("{}/dev/attester-sample@{digest}", reg.host);
    let _pulled = Pulled(image.clone());
    // The pod VM's image: primary = "auto" and images.lock; nothing on this
    // machine's probes (an empty sysroot), so the configured sample is chosen.
    let system = |d: &Path, pull: &str| {
        std::fs::create_dir_all(d.join("sysroot")).unwrap();
        std::fs::write(
            d.join("images.lock"),
            format!("[images.sample]\nimage = {sample:?}\ndigest = {digest:?}\ntransport = \"ttrpc\"\napi = 1\n"),
        )
        .unwrap();
        format!(
            "[plugins]\npodman_runtime = \"runc\"\nprimary = \"auto\"\nsocket_dir = {:?}\nimages_lock = {:?}\nsysroot = {:?}\n{pull}\n",
            d.join("plugins").display().to_string(),
            d.join("images.lock").display().to_string(),
            d.join("sysroot").display().to_string(),
        )
    };
    // The drop-in, as user-data writes it: the sample's image swapped for the
    // developer's own, by digest.
    let drop_in = format!(
        "[plugins.attester.sample]\nlaunch = \"podman\"\ntransport = \"ttrpc\"\ntee = \"sample\"\nimage = {image:?}\n"
    );
    untag(&image);
    let e = Attestd::start(|d| format!("{}{drop_in}", system(d, "")))
        .err()
        .expect("refused");
    assert!(
        e.stderr.contains(&format!(
            "sample skipped: its image override {image} (images.lock pins {sample}@{digest}) names a registry not in [plugins] registries"
        )),
        "{}",
        e.stderr
    );
    let a = Attestd::start(|d| format!("{}{drop_in}", system(d, &allow(&reg)))).unwrap();
    assert_eq!(
        a.evidence(b"override").await.unwrap(),
        attester_sample::evidence(b"override").unwrap().bytes
    );
    let log = a.log();
    assert!(log.contains("image override"), "{log}");
    assert!(log.contains(&format!("pinned={sample}@{digest}")), "{log}");
    assert!(log.contains("pulled"), "{log}");
}

#[tokio::test]
async fn only_images_the_policy_accepts_are_run() {
    let reg = Registry::start();
    let (sample, digest) = locked_image("sample");
    let local = format!("{sample}@{digest}");
    let arm = build_arm64_image();
    // Unsigned; signed by a key the policy does not trust; and an image whose
    // manifest is not the one its signature names (a signature moved onto it).
    reg.push(&local, "unsigned/sample", "1", None);
    reg.push(&local, "otherkey/sample", "1", Some(1));
    reg.push(&local, "moved/sample", "1", Some(0));
    let other = reg.push(&arm, "moved/sample", "2", None);
    let moved_to = reg.signatures_of("moved/sample", &other);
    std::fs::create_dir_all(&moved_to).unwrap();
    std::fs::copy(
        reg.signatures_of("moved/sample", &digest)
            .join("signature-1"),
        moved_to.join("signature-1"),
    )
    .unwrap();
    let cases = [
        (
            format!("{}/unsigned/sample@{digest}", reg.host),
            "A signature was required, but no signature exists",
        ),
        (
            format!("{}/otherkey/sample@{digest}", reg.host),
            "Invalid GPG signature",
        ),
        (
            format!("{}/moved/sample@{other}", reg.host),
            "does not match",
        ),
    ];
    for (image, why) in &cases {
        let _pulled = Pulled(image.clone());
        untag(image);
        let e = refused(image, &allow(&reg));
        assert!(
            e.stderr
                .contains(&format!("cannot pull {image} (attempt 1 of 3)")),
            "{}",
            e.stderr
        );
        assert!(e.stderr.contains(why), "{image}: {}", e.stderr);
        // Nothing entered the store under that name (podman finds a digest under
        // any name, so the names are what to look at).
        let o = Command::new("podman")
            .args(["image", "inspect", "--format", "{{.RepoDigests}}", &local])
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            !names.contains(image.as_str()),
            "{image} is in the store: {names}"
        );
    }
    // The system's default policy (Debian's accepts anything): refused outside
    // dev mode, before anything is fetched.
    let image = format!("{}/unsigned/sample@{digest}", reg.host);
    let _pulled = Pulled(image.clone());
    let d = tempfile::tempdir().unwrap();
    let anything = d.path().join("policy.json");
    std::fs::write(
        &anything,
        r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let lax = format!(
        "registries = [{:?}]\nregistry_certs_dir = {:?}\npolicy_json = {:?}\n",
        reg.host,
        reg.certs_dir.display().to_string(),
        anything.display().to_string()
    );
    let e = refused(&image, &lax);
    assert!(
        e.stderr
            .contains("(insecureAcceptAnything): require signedBy or sigstoreSigned"),
        "{}",
        e.stderr
    );
    let a = Attestd::start(|d| config(d, &image, &format!("dev_mode = true\n{lax}"))).unwrap();
    assert!(a.evidence(b"dev").await.is_ok());
}

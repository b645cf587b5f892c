//! The docs' pictures: each rendered from a Graphviz source in `docs/pictures/`
//! by `scripts/pictures.sh`, so a picture cannot silently fall behind its source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

fn pictures() -> PathBuf {
    attestd_e2e::repo_root().join("docs/pictures")
}

fn sources() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(pictures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dot"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_picture_is_rendered_from_its_current_source() {
    let sources = sources();
    assert!(sources.len() >= 6, "{sources:?}");
    for src in &sources {
        let svg_path = src.with_extension("svg");
        let svg = std::fs::read_to_string(&svg_path).unwrap_or_else(|_| {
            panic!("{} is missing: run scripts/pictures.sh", svg_path.display())
        });
        let sum = hex::encode(sha2::Sha256::digest(std::fs::read(src).unwrap()));
        let name = Path::new("docs/pictures").join(src.file_name().unwrap());
        let stamp = format!(
            "<!-- rendered from {} (sha256:{sum}) by scripts/pictures.sh",
            name.display()
        );
        assert!(
            svg.lines().nth(1).is_some_and(|l| l.starts_with(&stamp)),
            "{} is stale: its source changed since it was rendered; run scripts/pictures.sh",
            svg_path.display()
        );
        // The source still renders, without a warning (a misspelt attribute).
        let out = Command::new("dot")
            .arg("-Tsvg")
            .arg(src)
            .output()
            .expect("dot (Debian's graphviz)");
        assert!(
            out.status.success(),
            "{}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }
}

#[test]
fn every_picture_is_shown_and_every_picture_shown_exists() {
    let root = attestd_e2e::repo_root();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.extend([root.join("README.md"), root.join("ARCHITECTURE.md")]);
    let mut shown = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("](pictures/") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            let path = doc.parent().unwrap().join(target);
            assert!(
                path.is_file(),
                "{} shows {target}, which is missing",
                doc.display()
            );
            shown.push(path.canonicalize().unwrap());
        }
    }
    for src in sources() {
        let svg = src.with_extension("svg").canonicalize().unwrap();
        assert!(shown.contains(&svg), "{} is shown in no doc", svg.display());
    }
}

/// The fenced block after `marker` in `text`.
fn block_after<'a>(text: &'a str, marker: &str, fence: &str) -> &'a str {
    text.split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?}"))
        .split(fence)
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("no {fence:?} block after {marker:?}"))
}

#[test]
fn the_plugin_authors_guide_shows_x_hello_as_the_tests_build_it() {
    let root = attestd_e2e::repo_root();
    let guide = std::fs::read_to_string(root.join("docs/plugin-authors.md")).unwrap();
    for (file, fence) in [
        ("tests/plugins/x-hello/Cargo.toml", "```toml\n"),
        ("tests/plugins/x-hello/src/main.rs", "```rust\n"),
    ] {
        let shown = block_after(&guide, &format!("<!-- file: {file} "), fence);
        let real = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(shown, real, "docs/plugin-authors.md and {file} differ");
    }
    // The ten-line Worker example is the SDK's doc test, line for line.
    let shown = block_after(&guide, "<!-- worker example: ", "```rust\n");
    let worker = std::fs::read_to_string(root.join("attesters/sdk/src/worker.rs")).unwrap();
    let doc: Vec<&str> = worker
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let doc = doc.join("\n");
    let shown: Vec<&str> = shown.lines().map(str::trim_start).collect();
    assert!(
        doc.contains(&shown.join("\n")),
        "the guide's Worker example is not worker.rs's doc test"
    );
}

#[test]
fn the_tee_names_in_the_guide_are_the_ones_the_core_accepts() {
    let guide =
        std::fs::read_to_string(attestd_e2e::repo_root().join("docs/plugin-authors.md")).unwrap();
    for tee in attestd::config::KBS_TEES {
        assert!(
            guide.contains(&format!("`{tee}`")),
            "the guide does not list {tee}"
        );
    }
    assert!(guide.contains(&format!(
        "at most {} bytes",
        attestd::config::MAX_TEE_NAME_LEN
    )));
    assert!(guide.contains(&format!("`{}` then", attestd::config::THIRD_PARTY_PREFIX)));
}

//! The core's and the SDK's modules import one way: no circle between the
//! top-level modules of `runtime/src` (the library; the binary's `commands`
//! sit above it all) or of `attesters/sdk/src`. A name the crate root
//! re-exports (`crate::Error`) counts as an import of the module it comes from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, with its path relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The code that imports: no unit tests (which `use super::*`), no comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path a `prefix::` reaches in `text`, groups
/// (`prefix::{a, b::c}`) expanded.
fn reached<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|g| ident(g.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

/// The top-level modules of the library under `src` and the ones each imports.
fn graph(src: &Path) -> Graph {
    let mut all = Vec::new();
    files(src, src, &mut all);
    let top = |rel: &str| -> Option<String> {
        let first = rel.split('/').next().unwrap().trim_end_matches(".rs");
        (!matches!(first, "lib" | "main" | "commands" | "bin")).then(|| first.to_string())
    };
    let tops: BTreeSet<String> = all.iter().filter_map(|(r, _)| top(r)).collect();
    // `pub use module::{Name, …};` in the crate root: Name → module.
    let mut reexports = BTreeMap::new();
    if let Some((_, lib)) = all.iter().find(|(r, _)| r == "lib.rs") {
        let lib = code(lib);
        for stmt in lib.split(';') {
            let Some(path) = stmt.trim().strip_prefix("pub use ") else {
                continue;
            };
            let module = ident(path).to_string();
            if !tops.contains(&module) {
                continue;
            }
            let names = match path.find('{') {
                Some(i) => path[i + 1..].trim_end_matches('}').to_string(),
                None => path.rsplit("::").next().unwrap().to_string(),
            };
            for n in names.split(',') {
                let n = n.split(" as ").last().unwrap().trim();
                if !n.is_empty() {
                    reexports.insert(n.to_string(), module.clone());
                }
            }
        }
    }
    let mut g: Graph = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (rel, text) in &all {
        let Some(from) = top(rel) else { continue };
        let text = code(text);
        let mut names = reached(&text, "crate::");
        // `super::` from a top-level file is the crate root.
        if !rel.contains('/') {
            names.extend(reached(&text, "super::"));
        }
        for n in names {
            let to = if tops.contains(n) {
                n.to_string()
            } else if let Some(m) = reexports.get(n) {
                m.clone()
            } else {
                continue;
            };
            if to != from {
                g.get_mut(&from).unwrap().insert(to);
            }
        }
    }
    g
}

/// A circle of imports, if any: the modules along it.
fn circle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in &g[n] {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

#[test]
fn the_core_and_the_sdk_import_one_way() {
    let root = attestd_e2e::repo_root();
    let core = graph(&root.join("runtime/src"));
    // The checker sees the imports it should (not vacuously circle-free).
    assert!(core["select"].contains("supervisor"), "{core:#?}");
    assert!(core["launch"].contains("config"), "{core:#?}");
    assert!(core["server"].contains("service"), "{core:#?}");
    assert_eq!(circle(&core), None, "{core:#?}");
    let sdk = graph(&root.join("attesters/sdk/src"));
    // `crate::Error` is error.rs's, through the crate root's re-export.
    assert!(sdk["server"].contains("error"), "{sdk:#?}");
    assert!(sdk["server"].contains("convert"), "{sdk:#?}");
    assert_eq!(circle(&sdk), None, "{sdk:#?}");
}

#[test]
fn a_circle_is_found_and_named() {
    let d = tempfile::tempdir().unwrap();
    let w = |p: &str, t: &str| {
        let f = d.path().join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, t).unwrap();
    };
    w(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub use c::{Thing, Other};\n",
    );
    w(
        "a/mod.rs",
        "use crate::b::x;\n// crate::c in a comment is no import\n",
    );
    w("b.rs", "use crate::{Thing, a::y};\n");
    w(
        "c.rs",
        "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a::z;\n}\n",
    );
    let g = graph(d.path());
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(g["b"], BTreeSet::from(["a".to_string(), "c".to_string()]));
    assert!(g["c"].is_empty(), "a test module's imports do not count");
    assert_eq!(
        circle(&g),
        Some(vec!["a".to_string(), "b".to_string(), "a".to_string()])
    );
}

//! docs/plugin-authors.md shows examples/attester_mine.rs: the two must not drift,
//! so the guide's example is code CI compiles.

#[test]
fn the_plugin_authors_guide_shows_the_example_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/plugin-authors.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/attester_mine.rs")).unwrap();
    let after = guide
        .split("<!-- example: attesters/sdk/examples/attester_mine.rs")
        .nth(1)
        .expect("the example marker in docs/plugin-authors.md");
    let block = after
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a rust block after the marker");
    assert_eq!(
        format!("{block}\n"),
        example,
        "docs/plugin-authors.md and attesters/sdk/examples/attester_mine.rs differ"
    );
}

#[test]
fn the_tee_names_in_the_guide_are_the_ones_the_core_accepts() {
    // The core's list (runtime/src/config/mod.rs KNOWN_TEES) as the guide states it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/plugin-authors.md")).unwrap();
    let config = std::fs::read_to_string(root.join("../../runtime/src/config/mod.rs")).unwrap();
    let list = config
        .split("pub const KNOWN_TEES: &[&str] = &[")
        .nth(1)
        .and_then(|r| r.split("];").next())
        .unwrap();
    for tee in list
        .split(',')
        .map(|t| t.trim().trim_matches('"'))
        .filter(|t| !t.is_empty())
    {
        assert!(
            guide.contains(&format!("`{tee}`")),
            "the guide does not list {tee}"
        );
    }
}

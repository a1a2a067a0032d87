//! The README's VMM snippet is `examples/vmm.rs` (which CI builds and runs): each section
//! between `// ANCHOR: name` and `// ANCHOR_END: name` must appear in the README verbatim
//! (dedented by one level).

fn section(example: &str, name: &str) -> String {
    let start = format!("// ANCHOR: {name}\n");
    let a = example.find(&start).expect("anchor") + start.len();
    let b = example
        .find(&format!("// ANCHOR_END: {name}"))
        .expect("anchor end");
    example[a..b]
        .trim_end()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_shows_the_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(dir.join("examples/vmm.rs")).unwrap();
    let Ok(readme) = std::fs::read_to_string(dir.join("../../README.md")) else {
        // A packaged crate has no workspace README beside it.
        eprintln!("skipped: no workspace README.md (not built from the repository)");
        return;
    };
    for name in ["setup", "loop"] {
        let text = section(&example, name);
        assert!(!text.is_empty());
        assert!(
            readme.contains(&text),
            "README.md lacks examples/vmm.rs's `{name}` section:\n{text}"
        );
    }
}

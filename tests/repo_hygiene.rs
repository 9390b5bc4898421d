//! The repository's own text is whole: no merge left its conflict markers in
//! a document or a source file (one once reached ARCHITECTURE.md).

use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else if p
            .extension()
            .is_some_and(|x| ["rs", "md", "toml", "sh"].iter().any(|k| x == *k))
        {
            out.push(p);
        }
    }
}

#[test]
fn no_merge_conflict_markers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["src", "tests", "scripts", "packaging", "test-data", "conf"] {
        walk(&root.join(d), &mut files);
    }
    for f in [
        "README.md",
        "ARCHITECTURE.md",
        "PROTOCOL.md",
        "Cargo.toml",
        "Makefile",
    ] {
        files.push(root.join(f));
    }
    let mut found = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if ["<<<<<<< ", ">>>>>>> "].iter().any(|m| line.starts_with(m)) || line == "=======" {
                found.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "conflict markers at:\n{}",
        found.join("\n")
    );
}

//! Every `§n.n` a comment cites names a section of `PROTOCOL.md`, so the
//! code never points at a document outside the repository, and a section
//! renumbered by mistake shows up here.

use std::collections::BTreeSet;
use std::path::Path;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// The `§`-numbers in `text` (`§18.2`, `§9.1`, `§21`).
fn cited(text: &str) -> BTreeSet<String> {
    text.split('§')
        .skip(1)
        .filter_map(|rest| {
            let n: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let n = n.trim_end_matches('.').to_string();
            (!n.is_empty()).then_some(n)
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            // tests/fuzz/target holds build output, not our sources.
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_cited_section_is_a_heading_of_protocol_md() {
    let protocol = std::fs::read_to_string(Path::new(MANIFEST).join("PROTOCOL.md")).unwrap();
    let headings: BTreeSet<String> = protocol
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let n = l.trim_start_matches('#').split_whitespace().next()?;
            let n = n.trim_end_matches('.');
            n.chars()
                .all(|c| c.is_ascii_digit() || c == '.')
                .then(|| n.to_string())
        })
        .collect();
    let mut files = Vec::new();
    for d in ["src", "tests"] {
        sources(&Path::new(MANIFEST).join(d), &mut files);
    }
    let mut missing = Vec::new();
    let mut count = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for n in cited(&text) {
            count += 1;
            if !headings.contains(&n) {
                missing.push(format!("{}: §{n}", f.display()));
            }
        }
    }
    assert!(
        count > 50,
        "found only {count} citations: is the scan right?"
    );
    assert!(
        missing.is_empty(),
        "not in PROTOCOL.md:\n{}",
        missing.join("\n")
    );
}

#[test]
fn citations_are_read_as_written() {
    assert_eq!(
        cited("see §18.2 of it, §9.1 step 6, and §21."),
        ["18.2", "21", "9.1"].map(String::from).into()
    );
}

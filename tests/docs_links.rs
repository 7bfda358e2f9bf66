//! Every relative link in README.md, ARCHITECTURE.md and docs/*.md points
//! at a file that exists and, with `#anchor`, at a heading in it (GitHub's
//! anchor rules), so pages can be split and moved without dangling links.
//! These read files; no server runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn pages() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(Path::new(REPO).join("docs")).unwrap().map(|e| Path::new("docs").join(e.unwrap().file_name())).collect();
    docs.retain(|p| p.extension().is_some_and(|x| x == "md"));
    docs.sort();
    v.extend(docs);
    v
}

/// Text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`; repeated anchors get `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for l in prose(text).lines() {
        let Some(h) = l.strip_prefix('#') else { continue };
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let slug: String = h
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let p = prose(text);
    let mut out = Vec::new();
    let mut rest = p.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn relative_links_reach_files_and_headings() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(Path::new(REPO).join(&page)).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if file.is_empty() { page.clone() } else { page.parent().unwrap_or(Path::new("")).join(file) };
            let full = Path::new(REPO).join(&dest);
            if !full.exists() {
                broken.push(format!("{}: {target}: no file {}", page.display(), dest.display()));
                continue;
            }
            if let Some(a) = anchor {
                let there = std::fs::read_to_string(&full).unwrap_or_default();
                if !anchors(&there).contains(a) {
                    broken.push(format!("{}: {target}: no heading with anchor #{a} in {}", page.display(), dest.display()));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rules() {
    let a = anchors("# mod_hsm_ssl\n## Capacity planning for AWS CloudHSM\n### `HSMSSLPin env:NAME | file:/path`\n## Tests\n## Tests\n");
    for want in ["mod_hsm_ssl", "capacity-planning-for-aws-cloudhsm", "hsmsslpin-envname--filepath", "tests", "tests-1"] {
        assert!(a.contains(want), "{want} not in {a:?}");
    }
}

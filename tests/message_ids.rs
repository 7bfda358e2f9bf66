//! Every line the module logs carries a stable message ID (`HSMnnnnn: `),
//! no two log sites share one, and docs/messages.md lists each ID with the
//! level it is logged at. Tests match IDs, so the IDs they name must exist.
//! These read the source and the docs; no server runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MACROS: [&str; 6] = ["log::error!(", "log::warn!(", "log::info!(", "log::debug!(", "log::trace!(", "log::log!("];
const LEVELS: [(&str, &str); 10] = [
    ("log::error!(", "error"),
    ("log::warn!(", "warn"),
    ("log::info!(", "info"),
    ("log::debug!(", "debug"),
    ("log::trace!(", "trace"),
    ("Level::Error", "error"),
    ("Level::Warn", "warn"),
    ("Level::Info", "info"),
    ("Level::Debug", "debug"),
    ("Level::Trace", "trace"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source of each file under src/, without its unit test module (which
/// comes last in every file: `#[cfg(test)]` followed by `mod tests`; a
/// `#[cfg(test)]` on a single item earlier in the file does not end it).
fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(REPO).join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (p.strip_prefix(REPO).unwrap().display().to_string(), code)
        })
        .collect()
}

/// `HSMnnnnn` at the start of `s`.
fn id_at(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    (b.len() >= 8 && s.starts_with("HSM") && b[3..8].iter().all(u8::is_ascii_digit)).then(|| &s[..8])
}

fn line_of(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

/// Each ID in src with where it is and the level it is logged at.
fn ids_in_src() -> BTreeMap<String, Vec<(String, &'static str)>> {
    let mut ids: BTreeMap<String, Vec<(String, &'static str)>> = BTreeMap::new();
    for (file, code) in sources() {
        for (at, _) in code.match_indices("\"HSM") {
            let Some(id) = id_at(&code[at + 1..]) else { continue };
            let before = &code[..at];
            let level = LEVELS
                .iter()
                .filter_map(|(pat, level)| before.rfind(pat).map(|i| (i, *level)))
                .max()
                .map(|(i, level)| if at - i < 400 { level } else { "?" })
                .unwrap_or("?");
            ids.entry(id.to_string()).or_default().push((format!("{file}:{}", line_of(&code, at)), level));
        }
    }
    ids
}

#[test]
fn every_log_line_starts_with_a_message_id() {
    let mut bare = Vec::new();
    let mut seen = 0;
    for (file, code) in sources() {
        for m in MACROS {
            for (at, _) in code.match_indices(m) {
                seen += 1;
                let rest = &code[at + m.len()..];
                let Some(q) = rest.find('"') else {
                    bare.push(format!("{file}:{}: no format string", line_of(&code, at)));
                    continue;
                };
                let text = &rest[q + 1..];
                let ok = id_at(text).is_some_and(|_| text[8..].starts_with(": ")) || text.starts_with("{id}: ");
                if !ok {
                    bare.push(format!("{file}:{}: {}", line_of(&code, at), text.lines().next().unwrap_or("")));
                }
            }
        }
        // Macros used without the `log::` path would escape the check.
        for m in ["error!(", "warn!(", "info!(", "debug!(", "trace!("] {
            for (at, _) in code.match_indices(m) {
                let prev = code[..at].chars().last().unwrap_or(' ');
                assert!(prev == ':' || prev.is_alphanumeric() || prev == '_', "{file}:{}: {m} without log::", line_of(&code, at));
            }
        }
    }
    assert!(seen > 50, "found only {seen} log macros: is the scan still reading src/?");
    assert!(bare.is_empty(), "log lines without a message ID:\n{}", bare.join("\n"));
}

#[test]
fn message_ids_are_unique_and_have_a_level() {
    let ids = ids_in_src();
    assert!(ids.len() > 50, "found only {} IDs", ids.len());
    let shared: Vec<String> = ids.iter().filter(|(_, at)| at.len() > 1).map(|(id, at)| format!("{id}: {at:?}")).collect();
    assert!(shared.is_empty(), "IDs used at more than one site:\n{}", shared.join("\n"));
    let unknown: Vec<String> = ids.iter().filter(|(_, at)| at[0].1 == "?").map(|(id, at)| format!("{id} at {}", at[0].0)).collect();
    assert!(unknown.is_empty(), "IDs whose log level the scan cannot tell:\n{}", unknown.join("\n"));
}

/// `### HSM00309, HSM00311` then `**error** · ...`: the IDs and the level.
fn ids_in_docs() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(REPO).join("docs/messages.md")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(h) = l.strip_prefix("### ") else { continue };
        let level = lines[i + 1..]
            .iter()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.strip_prefix("**"))
            .and_then(|l| l.split_once("**"))
            .map(|(level, _)| level.to_string())
            .unwrap_or_else(|| panic!("docs/messages.md: no **level** line under '{l}'"));
        for id in h.split(", ") {
            assert!(id_at(id).is_some() && id.len() == 8, "docs/messages.md: heading '{l}' is not a list of IDs");
            assert!(out.insert(id.to_string(), level.clone()).is_none(), "docs/messages.md lists {id} twice");
        }
    }
    out
}

#[test]
fn docs_list_every_message_id_at_its_level() {
    let src = ids_in_src();
    let docs = ids_in_docs();
    let undocumented: Vec<&String> = src.keys().filter(|id| !docs.contains_key(*id)).collect();
    let stale: Vec<&String> = docs.keys().filter(|id| !src.contains_key(*id)).collect();
    assert!(undocumented.is_empty(), "IDs missing from docs/messages.md: {undocumented:?}");
    assert!(stale.is_empty(), "docs/messages.md lists IDs the code no longer logs: {stale:?}");
    let wrong: Vec<String> = src
        .iter()
        .filter(|(id, at)| docs[*id] != at[0].1)
        .map(|(id, at)| format!("{id}: logged at {} ({}), docs say {}", at[0].1, at[0].0, docs[id]))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tests_match_ids_the_code_logs() {
    let src = ids_in_src();
    let mut files = Vec::new();
    rust_files(&Path::new(REPO).join("tests"), &mut files);
    let mut unknown = Vec::new();
    let mut used = 0;
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        if p.ends_with("message_ids.rs") {
            continue;
        }
        for (at, _) in text.match_indices("\"HSM") {
            if let Some(id) = id_at(&text[at + 1..]) {
                used += 1;
                if !src.contains_key(id) {
                    unknown.push(format!("{}:{}: {id}", p.display(), line_of(&text, at)));
                }
            }
        }
    }
    assert!(used > 20, "the tests name only {used} message IDs");
    assert!(unknown.is_empty(), "tests wait for IDs the code never logs:\n{}", unknown.join("\n"));
}

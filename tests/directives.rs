//! Every directive the module registers is documented and in the packaged
//! example configuration, so the docs cannot fall behind the code again
//! (issue 15 found HSMSSLDirectCalls missing from httpd-conf/hsm_ssl.conf).
//! These read files; no server runs.

use std::path::Path;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The names of the module's directives (src/directives.rs, from which
/// httpd's command table is made).
fn directives() -> Vec<String> {
    let table = read("src/directives.rs");
    let names: Vec<String> =
        table.match_indices("name: c\"HSMSSL").map(|(i, _)| table[i + "name: c\"".len()..].split('"').next().unwrap().to_string()).collect();
    assert!(names.len() >= 11, "found only {names:?}");
    names
}

/// A field of src/directives.rs for directive `d` (`syntax`, `default`,
/// `help`), unescaped.
fn field(d: &str, name: &str) -> String {
    let text = read("src/directives.rs");
    let decl = &text[text.find(&format!("c\"{d}\"")).unwrap()..];
    let tag = if name == "help" { "help: c\"".to_string() } else { format!("{name}: \"") };
    let v = decl.split(tag.as_str()).nth(1).unwrap();
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

#[test]
fn docs_describe_every_directive_in_httpds_format_from_the_same_list() {
    let doc = read("docs/directives.md");
    let headings: Vec<&str> = doc.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    assert_eq!(headings, directives(), "docs/directives.md: one '## NAME' per directive, in the list's order");
    for d in directives() {
        let entry = &doc[doc.find(&format!("## {d}\n")).unwrap()..];
        let row = |k: &str| -> String {
            let prefix = format!("| {k} | ");
            let line = entry.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{d}: no {k} row"));
            line[prefix.len()..line.len() - 2].replace("\\|", "|")
        };
        assert_eq!(row("Description"), field(&d, "help"), "{d}");
        assert_eq!(row("Syntax"), format!("`{d} {}`", field(&d, "syntax")), "{d}");
        assert_eq!(row("Default"), field(&d, "default"), "{d}");
        assert_eq!((row("Context"), row("Module")), ("server config".into(), "mod_hsm_ssl".into()), "{d}");
    }
}

#[test]
fn every_directive_is_in_the_packaged_example_configuration() {
    let conf = read("httpd-conf/hsm_ssl.conf");
    for d in directives() {
        let set = |l: &&str| l.trim_start_matches('#').split_whitespace().next() == Some(d.as_str());
        assert!(conf.lines().any(|l| set(&l)), "httpd-conf/hsm_ssl.conf does not show {d} (set or commented out)");
    }
}

mod common;

/// httpd's own list (`apache2 -L`) with the module loaded shows each
/// directive of src/directives.rs with its help text: the command table
/// is made from that list.
#[test]
fn httpd_lists_every_directive_with_its_help() {
    let s = common::Site::new("directives-L", common::Mpm::Event);
    let (code, out) = s.apache.list_directives();
    assert_eq!(code, 0, "{out}");
    let text = read("src/directives.rs");
    for d in directives() {
        let at = out
            .find(&format!("{d} (mod_hsm_ssl"))
            .or_else(|| out.find(&format!("{d} (")))
            .unwrap_or_else(|| panic!("apache2 -L does not list {d}:\n{out}"));
        // The help text is the next line, indented.
        let help = out[at..].lines().nth(1).unwrap_or("").trim();
        let decl = &text[text.find(&format!("c\"{d}\"")).unwrap()..];
        let expected = decl.split("help: c\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(help, expected.replace("\\\"", "\""), "{d}");
    }
}

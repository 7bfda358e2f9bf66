//! Every directive the module registers is documented and in the packaged
//! example configuration, so the docs cannot fall behind the code again
//! (issue 15 found HSMSSLDirectCalls missing from httpd-conf/hsm_ssl.conf).
//! These read files; no server runs.

use std::path::Path;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The names in the module's command table (`take1(c"HSMSSL...", ...)`).
fn directives() -> Vec<String> {
    let src = read("src/httpd/module.rs");
    let table = &src[src.find("static COMMANDS").expect("the command table")..];
    let names: Vec<String> = table.match_indices("c\"HSMSSL").map(|(i, _)| table[i + 2..].split('"').next().unwrap().to_string()).collect();
    assert!(names.len() >= 11, "found only {names:?}");
    names
}

#[test]
fn every_directive_has_a_readme_entry() {
    let readme = read("README.md");
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with("### `HSMSSL")).collect();
    for d in directives() {
        let named = |h: &&str| h.split('`').any(|part| part == d || part.starts_with(&format!("{d} ")));
        assert!(headings.iter().any(named), "README.md has no '### `{d} ...`' entry; it has:\n{}", headings.join("\n"));
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

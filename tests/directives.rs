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

//! Every command shown in the docs is run by a test.
//!
//! README.md, docs/*.md and httpd-conf/*.md show shell commands in fenced
//! blocks whose info string is `sh`, `bash`, `shell` or `console`. Each such
//! block has, on a line before its opening fence (blank lines may come
//! between), one of these markers:
//!
//! * `<!-- doc-test: run al2023 -->` (or `run debian`): the block runs in a
//!   sandbox shaped like that platform (below). The blocks of one page
//!   marked for one sandbox run in order, in one sandbox, each as
//!   `bash -euo pipefail`, like the lines a reader types into one root
//!   shell: files, exported variables and the working directory carry over
//!   from block to block (plain shell variables do not).
//! * `<!-- doc-test: covered-by PATH -->`: PATH (from the repository root,
//!   e.g. `tests/packaging_install.rs` or `.ci/run`) runs these commands:
//!   it must exist and mention, for every command, its program (the script
//!   for `bash script.sh`; a path as written, a command by its name) and its
//!   first argument, as whole words.
//! * `<!-- doc-test: not-run REASON -->`: only for commands that need Amazon
//!   Linux, SELinux or AWS and cannot run on Debian ([`not_run_allowed`]).
//!   `REASON; stand-in: COMMAND` has the al2023 sandbox run COMMAND in the
//!   block's place, doing to its SoftHSM2 token what the block does to the
//!   HSM (a password change), so that the page's later blocks can run.
//!
//! and, on its own line anywhere in a page, `<!-- doc-test: after PAGE -->`
//! (PAGE from the repository root): the page goes on where PAGE left off,
//! so PAGE's `run` blocks for the same sandbox run first, in the same
//! sandbox.
//!
//! In a block, `#` starts a comment; `$ ` prompts are stripped; with
//! prompts (or in a `console` block) a line without one is output, which is
//! not allowed: blocks show commands only. For the checks, a command is
//! taken after joining `\`-continued lines, without a leading `sudo` (and
//! its `-u USER`), `env` and `VAR=value` assignments.
//!
//! The sandboxes (tests/docs_sandbox/sandbox.sh) are this Debian machine in
//! private mount, network and pid namespaces, with copy-on-write overlays
//! over /etc /opt /usr /var /root (nothing reaches the real machine), fresh
//! /run, /tmp and /dev/shm, and www.example.com on their own loopback.
//! `sudo` and `systemctl` are shims (tests/docs_sandbox/bin), the latter
//! playing systemd for httpd.service / apache2.service with the real
//! apache2 behind it.
//!
//! * al2023 (setup-al2023.sh): an Amazon Linux 2023 instance with httpd,
//!   mod_ssl and the mod_hsm_ssl RPM installed (AL2023's httpd layout run by
//!   Debian's apache2 through the `httpd` and `apachectl` shims; the module
//!   and key tool cargo built, the files from rpm/, as the spec lays them
//!   out) and the CloudHSM PKCS#11 library, played by SoftHSM2: one token,
//!   `hsm1`, user PIN [`SANDBOX_PIN`]. Blocks start in /root.
//! * debian (setup-debian.sh): Debian 12 as it is, with Debian's apache2
//!   tools, nothing of mod_hsm_ssl installed; a checkout in
//!   /root/mod_hsm_ssl with the module and key tool in target/release, where
//!   blocks start; one SoftHSM2 token `web`, user PIN [`DEBIAN_TOKEN_PIN`].
//!
//! A failing block fails its page's test with the page line of the block
//! and of the failing command, the block, its output and httpd's error log.
//! The self-tests at the end run scratch pages of their own, so they prove
//! the sandboxes work whatever the docs say.
//!
//! Run as root on Debian 12 with apache2, softhsm2, curl, git and
//! util-linux's unshare (scripts/install-deps.sh).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{module_path, workspace_root, TestDir};

/// The user PIN of the sandbox's token. The docs write this placeholder
/// into the PIN file (`echo '<crypto-user>:<password>' | sudo tee ...`), as
/// a reader would write their CloudHSM crypto user's name and password;
/// with the placeholder as the real PIN those commands work as written.
const SANDBOX_PIN: &str = "<crypto-user>:<password>";

/// The debian sandbox's token: label `web`, this user PIN (SO PIN
/// 12345678), as tests/docs_sandbox/setup-debian.sh makes it. Short and
/// plain, as a reader of a SoftHSM2 page would pick.
const DEBIAN_TOKEN_PIN: &str = "1234";

/// Info strings of the blocks that show shell commands.
const SHELL_INFO: &[&str] = &["sh", "bash", "shell", "console"];

/// A block that runs longer (seconds) fails; the sandbox as a whole gets
/// this per block plus a minute.
const BLOCK_TIMEOUT_SECS: u64 = 300;

// ---------------------------------------------------------------------------
// The pages and their blocks

/// The pages whose shell blocks are checked, relative to the repository.
fn doc_pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    for dir in ["docs", "httpd-conf"] {
        let mut md: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(dir))
            .unwrap_or_else(|e| panic!("read {dir}/: {e}"))
            .map(|e| Path::new(dir).join(e.expect("directory entry").file_name()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        md.sort();
        pages.extend(md);
    }
    pages
}

/// Where a block's commands are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sandbox {
    Al2023,
    Debian,
}

impl Sandbox {
    fn name(self) -> &'static str {
        match self {
            Sandbox::Al2023 => "al2023",
            Sandbox::Debian => "debian",
        }
    }
    /// httpd's main error log in the sandbox, under its copied logs/.
    fn error_log(self) -> &'static str {
        match self {
            Sandbox::Al2023 => "error_log",
            Sandbox::Debian => "error.log",
        }
    }
}

/// What a marker says: about the block after it, or (After) about the page.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Marker {
    Run(Sandbox),
    CoveredBy(String),
    NotRun(String),
    /// `<!-- doc-test: after PAGE -->`, anywhere on its own line: the page
    /// goes on from where PAGE left off, so PAGE's `run` blocks run first,
    /// in the same sandbox.
    After(String),
}

/// A fenced shell block of a page.
#[derive(Clone, Debug)]
struct Block {
    /// Line of the opening fence (1-based).
    line: usize,
    info: String,
    marker: Marker,
    /// The lines between the fences: (page line, text without the fence's
    /// indentation).
    lines: Vec<(usize, String)>,
}

/// The command after `; stand-in: ` in a not-run reason: what the al2023
/// sandbox runs in the block's place, against its SoftHSM2 token (e.g.
/// `pkcs11-tool --change-pin` for CloudHSM CLI's `user change-password`).
fn stand_in(reason: &str) -> Option<&str> {
    reason.split_once("; stand-in: ").map(|(_, cmd)| cmd.trim()).filter(|c| !c.is_empty())
}

/// Parses `<!-- doc-test: ... -->`; None if the line is no marker.
fn parse_marker(line: &str) -> Option<Result<Marker, String>> {
    let rest = line.trim().strip_prefix("<!--")?.trim_start().strip_prefix("doc-test:")?;
    let Some(body) = rest.trim_end().strip_suffix("-->") else {
        return Some(Err("a doc-test marker must end with --> on its line".into()));
    };
    let body = body.trim();
    let (kind, arg) = body.split_once(char::is_whitespace).map_or((body, ""), |(k, a)| (k, a.trim()));
    Some(match kind {
        "run" => match arg {
            "al2023" => Ok(Marker::Run(Sandbox::Al2023)),
            "debian" => Ok(Marker::Run(Sandbox::Debian)),
            other => Err(format!("doc-test: run takes al2023 or debian, not '{other}'")),
        },
        "covered-by" if !arg.is_empty() && !arg.contains(char::is_whitespace) => Ok(Marker::CoveredBy(arg.to_string())),
        "covered-by" => Err("doc-test: covered-by takes one path (from the repository root)".into()),
        "not-run" if !arg.is_empty() => Ok(Marker::NotRun(arg.to_string())),
        "not-run" => Err("doc-test: not-run needs a reason".into()),
        "after" if !arg.is_empty() && !arg.contains(char::is_whitespace) => Ok(Marker::After(arg.to_string())),
        "after" => Err("doc-test: after takes one page (from the repository root)".into()),
        other => Err(format!("unknown doc-test marker '{other}' (run, covered-by, not-run or after)")),
    })
}

/// The doc-test view of a page.
#[derive(Debug, Default)]
struct Page {
    /// The shell blocks that have a marker.
    blocks: Vec<Block>,
    /// The pages named by `after` markers: (line, page).
    after: Vec<(usize, String)>,
    /// What is wrong with the markers, as `page:line: ...`.
    errors: Vec<String>,
}

/// The shell blocks of a page with their markers.
fn parse_page(page: &str, text: &str) -> Page {
    let mut blocks = Vec::new();
    let mut after = Vec::new();
    let mut errors = Vec::new();
    let mut pending: Option<(usize, Marker)> = None;
    // An open fence: its characters, indentation, and the block if it is a
    // shell block.
    let mut open: Option<(String, usize, Option<Block>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let indent = raw.len() - raw.trim_start().len();
        let t = raw.trim_start();
        if let Some((fence, fence_indent, block)) = &mut open {
            let closing = t.starts_with(fence.as_str()) && t.trim_end().chars().all(|c| fence.starts_with(c));
            if closing {
                if let Some(b) = block.take() {
                    blocks.push(b);
                }
                open = None;
            } else if let Some(b) = block {
                let cut = (*fence_indent).min(indent);
                b.lines.push((n, raw[cut..].to_string()));
            }
            continue;
        }
        if let Some(marker) = parse_marker(t) {
            match marker {
                Err(e) => errors.push(format!("{page}:{n}: {e}")),
                Ok(Marker::After(p)) => after.push((n, p)),
                Ok(m) => {
                    if let Some((at, _)) = pending.replace((n, m)) {
                        errors.push(format!("{page}:{at}: doc-test marker without a shell block after it (another marker follows)"));
                    }
                }
            }
            continue;
        }
        let fence_char = t.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = fence_char {
            let len = t.chars().take_while(|x| *x == c).count();
            if len >= 3 {
                let info = t[len..].split_whitespace().next().unwrap_or("").to_lowercase();
                let fence = c.to_string().repeat(len);
                let block = if SHELL_INFO.contains(&info.as_str()) {
                    match pending.take() {
                        Some((_, marker)) => Some(Block { line: n, info, marker, lines: Vec::new() }),
                        None => {
                            errors.push(format!(
                                "{page}:{n}: ```{info} block without a doc-test marker before it \
                                 (<!-- doc-test: run al2023|debian -->, covered-by PATH, or not-run REASON)"
                            ));
                            None
                        }
                    }
                } else {
                    if let Some((at, _)) = pending.take() {
                        errors.push(format!("{page}:{at}: doc-test marker before a ```{info} block, not a shell block"));
                    }
                    // A `$ ` prompt in a block of another kind is a command
                    // that would escape the checks.
                    let body = text.lines().skip(n).take_while(|l| !l.trim_start().starts_with(fence.as_str()));
                    if let Some(k) = body.clone().position(|l| l.trim_start().starts_with("$ ")) {
                        errors.push(format!(
                            "{page}:{}: a `$ ` command in a ```{info} block: make it a ```console transcript with a doc-test marker",
                            n + 1 + k
                        ));
                    }
                    None
                };
                open = Some((fence, indent, block));
                continue;
            }
        }
        if !t.is_empty() {
            if let Some((at, _)) = pending.take() {
                errors.push(format!("{page}:{at}: doc-test marker without a shell block right after it"));
            }
        }
    }
    if let Some((at, _)) = pending {
        errors.push(format!("{page}:{at}: doc-test marker without a shell block after it"));
    }
    if let Some((_, _, Some(b))) = open {
        errors.push(format!("{page}:{}: ```{} block is never closed", b.line, b.info));
    }
    Page { blocks, after, errors }
}

/// The block as a script: prompts stripped. In a `console` block (a
/// transcript) only the `$ ` lines and their continuations are commands,
/// the rest is their output and left out; in the other shell blocks output
/// lines are refused. Returns (page line, script line) pairs.
fn script_lines(page: &str, b: &Block) -> Result<Vec<(usize, String)>, Vec<String>> {
    let transcript = b.info == "console";
    let prompts = transcript || b.lines.iter().any(|(_, l)| l.trim_start().starts_with("$ ") || l.trim() == "$");
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut continued = false;
    for (n, l) in &b.lines {
        let t = l.trim_start();
        let text = if continued {
            l.clone()
        } else if let Some(cmd) = t.strip_prefix("$ ") {
            cmd.to_string()
        } else if t.trim_end() == "$" {
            String::new()
        } else if transcript {
            continue;
        } else if t.is_empty() || t.starts_with('#') || !prompts {
            l.clone()
        } else {
            errors
                .push(format!("{page}:{n}: output in a shell block ('{t}'): show only commands and # comments (or make it a ```console transcript)"));
            continue;
        };
        continued = text.trim_end().ends_with('\\');
        out.push((*n, text));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------
// Commands in a block, as the checks see them

/// One simple command of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ShellCommand {
    /// Page line where it starts.
    line: usize,
    /// Its words, quotes removed, redirections dropped, before any
    /// stripping of `sudo` or assignments.
    words: Vec<String>,
    /// Whether it reads the output of another command (`a | b`: b).
    piped: bool,
}

/// Splits a script into simple commands: a small shell lexer for what docs
/// show (quotes, `\` escapes and continuations, `# comments`, `|`, `||`,
/// `&&`, `;`, `&`, redirections, here-documents, `$(...)`). Enough to find
/// program names; not a shell.
fn shell_commands(lines: &[(usize, String)]) -> Vec<ShellCommand> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut start_line = 0;
    let mut piped = false;
    let mut quote = Quote::None;
    let mut subst_depth = 0usize;
    let mut skip_word = false;
    let mut heredocs: Vec<String> = Vec::new();
    let mut in_heredoc: Option<String> = None;

    fn end_word(word: &mut Option<String>, words: &mut Vec<String>, skip_word: &mut bool) {
        if let Some(w) = word.take() {
            if *skip_word {
                *skip_word = false;
            } else {
                words.push(w);
            }
        }
    }
    fn end_cmd(words: &mut Vec<String>, line: usize, piped: bool, cmds: &mut Vec<ShellCommand>) {
        if !words.is_empty() {
            cmds.push(ShellCommand { line, words: std::mem::take(words), piped });
        }
    }

    for (n, text) in lines {
        if let Some(delim) = &in_heredoc {
            if text.trim() == delim {
                in_heredoc = None;
                if !heredocs.is_empty() {
                    in_heredoc = Some(heredocs.remove(0));
                }
            }
            continue;
        }
        if words.is_empty() && word.is_none() {
            start_line = *n;
        }
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let mut continued = false;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Quote::Single => {
                    if c == '\'' {
                        quote = Quote::None;
                    } else {
                        word.get_or_insert_with(String::new).push(c);
                    }
                    i += 1;
                    continue;
                }
                Quote::Double => {
                    if c == '"' {
                        quote = Quote::None;
                    } else if c == '\\' && i + 1 < chars.len() && "\"\\$`".contains(chars[i + 1]) {
                        word.get_or_insert_with(String::new).push(chars[i + 1]);
                        i += 1;
                    } else {
                        word.get_or_insert_with(String::new).push(c);
                    }
                    i += 1;
                    continue;
                }
                Quote::None => {}
            }
            if subst_depth > 0 {
                match c {
                    '(' => subst_depth += 1,
                    ')' => subst_depth -= 1,
                    _ => {}
                }
                word.get_or_insert_with(String::new).push(c);
                i += 1;
                continue;
            }
            match c {
                '\\' if i + 1 == chars.len() => {
                    continued = true;
                }
                '\\' => {
                    word.get_or_insert_with(String::new).push(chars[i + 1]);
                    i += 1;
                }
                '\'' => {
                    quote = Quote::Single;
                    word.get_or_insert_with(String::new);
                }
                '"' => {
                    quote = Quote::Double;
                    word.get_or_insert_with(String::new);
                }
                '$' if chars.get(i + 1) == Some(&'(') => {
                    subst_depth = 1;
                    word.get_or_insert_with(String::new).push_str("$(");
                    i += 1;
                }
                '#' if word.is_none() => break,
                ' ' | '\t' => end_word(&mut word, &mut words, &mut skip_word),
                '|' | '&' | ';' => {
                    end_word(&mut word, &mut words, &mut skip_word);
                    let next = chars.get(i + 1).copied();
                    if c == '&' && next == Some('>') {
                        // &> file
                        skip_word = true;
                        i += 2;
                        continue;
                    }
                    end_cmd(&mut words, start_line, piped, &mut cmds);
                    start_line = *n;
                    let double = next == Some(c);
                    piped = c == '|' && !double;
                    if double || (c == '|' && next == Some('&')) {
                        i += 1;
                    }
                }
                '<' | '>' => {
                    // A file descriptor number before it belongs to it (2>&1).
                    if word.as_deref().is_some_and(|w| !w.is_empty() && w.chars().all(|d| d.is_ascii_digit())) {
                        word = None;
                    }
                    end_word(&mut word, &mut words, &mut skip_word);
                    let mut op = String::from(c);
                    while let Some(&d) = chars.get(i + 1) {
                        if d == '<' || d == '>' || d == '&' || d == '-' || d == '|' {
                            op.push(d);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if op == "<<" || op == "<<-" {
                        // The delimiter, unquoted.
                        let rest: String = chars[i + 1..].iter().collect();
                        let delim: String = rest
                            .trim_start()
                            .chars()
                            .take_while(|c| !c.is_whitespace() && !";|&<>".contains(*c))
                            .filter(|c| *c != '\'' && *c != '"')
                            .collect();
                        heredocs.push(delim);
                    }
                    // The file, here-document delimiter or here-string.
                    skip_word = true;
                    // `>&2`: the target follows without a space.
                    if op.ends_with('&') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == '-') {
                        i += 1;
                        while chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                            i += 1;
                        }
                        skip_word = false;
                    }
                }
                _ => word.get_or_insert_with(String::new).push(c),
            }
            i += 1;
        }
        if quote != Quote::None {
            word.get_or_insert_with(String::new).push('\n');
            continue;
        }
        if continued || subst_depth > 0 {
            continue;
        }
        end_word(&mut word, &mut words, &mut skip_word);
        skip_word = false;
        end_cmd(&mut words, start_line, piped, &mut cmds);
        piped = false;
        if !heredocs.is_empty() {
            in_heredoc = Some(heredocs.remove(0));
        }
    }
    end_word(&mut word, &mut words, &mut skip_word);
    end_cmd(&mut words, start_line, piped, &mut cmds);
    // Shell keywords around commands: `if cmd; then cmd; fi`.
    let mut out = Vec::new();
    for mut c in cmds {
        while c.words.first().is_some_and(|w| ["if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"].contains(&w.as_str())) {
            c.words.remove(0);
        }
        match c.words.first().map(String::as_str) {
            None | Some("fi" | "done" | "esac" | "}" | "for" | "case") => {}
            _ => out.push(c),
        }
    }
    out
}

/// The command without a leading `sudo` (and its `-u USER`, `-E`), `env`
/// and `VAR=value` assignments.
fn effective_words(words: &[String]) -> &[String] {
    let mut w = words;
    loop {
        let before = w.len();
        if w.first().is_some_and(|x| x == "sudo" || x == "env") {
            w = &w[1..];
            while let Some(opt) = w.first() {
                match opt.as_str() {
                    "-u" => w = &w[w.len().min(2)..],
                    "-E" | "--" => w = &w[1..],
                    _ => break,
                }
            }
        }
        while w.first().is_some_and(|x| is_assignment(x)) {
            w = &w[1..];
        }
        if w.len() == before {
            return w;
        }
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// A command line as the reader sees it, for messages.
fn shown(c: &ShellCommand) -> String {
    c.words.join(" ")
}

// ---------------------------------------------------------------------------
// covered-by and not-run

/// Interpreters whose first argument is the program that matters
/// (`bash tools/build.sh`).
const INTERPRETERS: &[&str] = &["bash", "sh"];

/// What a covering file must mention for a command: its program, and its
/// first argument if it has one worth looking for.
fn coverage_needles(words: &[String]) -> Option<(String, Option<String>)> {
    let w = effective_words(words);
    let first = w.first()?;
    let base = first.rsplit('/').next().unwrap_or(first);
    let (prog, rest) = if INTERPRETERS.contains(&base) && w.len() > 1 && !w[1].starts_with('-') { (&w[1], &w[2..]) } else { (first, &w[1..]) };
    let prog = prog.strip_prefix("./").unwrap_or(prog).to_string();
    let arg = rest
        .first()
        .map(|a| a.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|a| !a.is_empty() && !a.contains(|c: char| "*?$<>{}`".contains(c)) && !a.contains(char::is_whitespace));
    Some((prog, arg))
}

/// Whether `text` has `needle` as a whole token: not preceded by a
/// letter, digit, `_`, `-` or `.`, not followed by a letter, digit, `_`,
/// `-` or a `.` that goes on (`build.rs` does not mention `build`).
fn mentions(text: &str, needle: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let mut after = text[at + needle.len()..].chars();
        let next = after.next();
        let next2 = after.next();
        let glued_before = before.is_some_and(|c| word(c) || c == '.');
        let glued_after = next.is_some_and(word) || (next == Some('.') && next2.is_some_and(word));
        !glued_before && !glued_after
    })
}

/// Whether the file mentions the program: a path as written (an absolute
/// one also by its file name), a command by its name.
fn mentions_program(text: &str, prog: &str) -> bool {
    if mentions(text, prog) {
        return true;
    }
    prog.starts_with('/') && mentions(text, prog.rsplit('/').next().unwrap_or(prog))
}

fn check_covered(page: &str, b: &Block, file: &str, script: &[(usize, String)]) -> Vec<String> {
    let path = workspace_root().join(file);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![format!("{page}:{}: doc-test: covered-by {file}: no such file", b.line)];
    };
    let mut errors = Vec::new();
    for c in shell_commands(script) {
        let Some((prog, arg)) = coverage_needles(&c.words) else { continue };
        if !mentions_program(&text, &prog) {
            errors.push(format!("{page}:{}: `{}`: {file} (covered-by) does not mention {prog}", c.line, shown(&c)));
        } else if let Some(arg) = arg.filter(|a| !mentions(&text, a)) {
            errors.push(format!("{page}:{}: `{}`: {file} (covered-by) does not mention {arg}, the first argument of {prog}", c.line, shown(&c)));
        }
    }
    errors
}

/// Commands a `not-run` block may show: they need Amazon Linux (dnf, rpm
/// queries), SELinux or AWS CloudHSM and cannot run on Debian. `grep` is
/// allowed after a pipe, to filter the output of one of them.
fn not_run_allowed(c: &ShellCommand) -> bool {
    let w = effective_words(&c.words);
    let Some(prog) = w.first() else { return true };
    let arg = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    match prog.as_str() {
        "dnf" | "semanage" | "semodule" | "setsebool" | "getenforce" | "ausearch" | "audit2allow" => true,
        "/opt/cloudhsm/bin/configure-pkcs11" | "/opt/cloudhsm/bin/cloudhsm-cli" => true,
        "make" => arg(1) == "-f" && arg(2) == "/usr/share/selinux/devel/Makefile",
        "rpm" => arg(1).starts_with("-q"),
        "grep" => c.piped,
        _ => false,
    }
}

fn check_not_run(page: &str, script: &[(usize, String)]) -> Vec<String> {
    shell_commands(script)
        .iter()
        .filter(|c| !not_run_allowed(c))
        .map(|c| {
            format!(
                "{page}:{}: `{}` in a not-run block: only commands that need Amazon Linux, SELinux or AWS may stay unrun \
                 (dnf, rpm -q, semanage, semodule, setsebool, getenforce, ausearch, audit2allow, \
                 make -f /usr/share/selinux/devel/Makefile, /opt/cloudhsm/bin/configure-pkcs11, /opt/cloudhsm/bin/cloudhsm-cli); \
                 run it (doc-test: run al2023|debian) or name the test that does (doc-test: covered-by PATH)",
                c.line,
                shown(c)
            )
        })
        .collect()
}

/// All the problems of one page's shell blocks.
fn check_page(page: &str, text: &str) -> Vec<String> {
    let Page { blocks, after, mut errors } = parse_page(page, text);
    for (n, p) in after {
        if !workspace_root().join(&p).is_file() {
            errors.push(format!("{page}:{n}: doc-test: after {p}: no such page"));
        }
    }
    for b in &blocks {
        let script = match script_lines(page, b) {
            Ok(s) => s,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        match &b.marker {
            Marker::Run(_) | Marker::After(_) => {}
            Marker::CoveredBy(file) => errors.extend(check_covered(page, b, file, &script)),
            Marker::NotRun(_) => errors.extend(check_not_run(page, &script)),
        }
    }
    errors
}

#[test]
fn every_shell_block_in_the_docs_is_run_or_covered() {
    let mut errors = Vec::new();
    let mut blocks = 0;
    for page in doc_pages() {
        let shown = page.display().to_string();
        let text = std::fs::read_to_string(workspace_root().join(&page)).unwrap_or_else(|e| panic!("read {shown}: {e}"));
        blocks += parse_page(&shown, &text).blocks.len();
        errors.extend(check_page(&shown, &text));
    }
    assert!(errors.is_empty(), "{} problem(s) with the shell blocks of the docs (see tests/docs_commands.rs):\n{}", errors.len(), errors.join("\n"));
    eprintln!("{blocks} marked shell blocks in the docs");
}

#[test]
fn markers_and_commands_are_checked_as_documented() {
    // Markers, and blocks without them.
    let page = "intro\n\n<!-- doc-test: not-run needs AWS -->\n\n```sh\nsudo dnf install -y httpd\n```\n\n```bash\nls\n```\n\
                <!-- doc-test: run al2023 -->\nprose\n```sh\ntrue\n```\n<!-- doc-test: run al2023 -->\n```apache\nListen 443\n```\n\
                <!-- doc-test: run fedora -->\n<!-- doc-test: not-run -->\n```text\nplain\n```\n";
    let Page { blocks, errors, .. } = parse_page("p.md", page);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].marker, Marker::NotRun("needs AWS".into()));
    assert_eq!(blocks[0].line, 5);
    assert_eq!(stand_in("needs AWS"), None);
    assert_eq!(stand_in("needs AWS; stand-in: pkcs11-tool --change-pin"), Some("pkcs11-tool --change-pin"));
    assert_eq!(stand_in("needs AWS; stand-in: "), None);
    let want = [
        "p.md:9: ```bash block without a doc-test marker",
        "p.md:12: doc-test marker without a shell block right after it",
        "p.md:14: ```sh block without a doc-test marker",
        "p.md:17: doc-test marker before a ```apache block",
        "p.md:21: doc-test: run takes al2023 or debian, not 'fedora'",
        "p.md:22: doc-test: not-run needs a reason",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (e, w) in errors.iter().zip(want) {
        assert!(e.starts_with(w), "{e}\n  should start with\n{w}");
    }
    // Indented fences (in a list item); a marker serves one block.
    let q = parse_page("q.md", "<!-- doc-test: after docs/x.md -->\n<!-- doc-test: run debian -->\n   ```sh\n   true\n   ```\n```sh\nfalse\n```\n");
    assert_eq!(q.after, vec![(1, "docs/x.md".to_string())]);
    assert_eq!(q.blocks[0].lines, vec![(4, "true".to_string())]);
    assert_eq!(
        q.errors,
        vec!["q.md:6: ```sh block without a doc-test marker before it (<!-- doc-test: run al2023|debian -->, covered-by PATH, or not-run REASON)"]
    );

    // Commands: continuations, comments, sudo and assignments, pipes,
    // redirections, here-documents.
    let script: Vec<(usize, String)> = [
        "# a comment",
        "sudo CREDENTIALS_DIRECTORY=/etc/httpd/hsm-ssl apachectl configtest   # trailing comment",
        "echo 'a | b' | sudo tee /etc/x >/dev/null 2>&1 && bash tools/build.sh \\",
        "    --flag \"quoted arg\"",
        "cat >/etc/y <<'EOF'",
        "not a command",
        "EOF",
        "if grep -q x /etc/x; then systemctl reload httpd; fi",
        "x=$(hsm-ssl-keytool list --json | jq .keys)",
    ]
    .iter()
    .enumerate()
    .map(|(i, l)| (i + 10, l.to_string()))
    .collect();
    let cmds = shell_commands(&script);
    let got: Vec<(usize, Vec<&str>, bool)> =
        cmds.iter().map(|c| (c.line, effective_words(&c.words).iter().map(String::as_str).collect(), c.piped)).collect();
    assert_eq!(
        got,
        vec![
            (11, vec!["apachectl", "configtest"], false),
            (12, vec!["echo", "a | b"], false),
            (12, vec!["tee", "/etc/x"], true),
            (12, vec!["bash", "tools/build.sh", "--flag", "quoted arg"], false),
            (14, vec!["cat"], false),
            (17, vec!["grep", "-q", "x", "/etc/x"], false),
            (17, vec!["systemctl", "reload", "httpd"], false),
            (18, vec![], false),
        ]
    );
    assert_eq!(coverage_needles(&cmds[3].words), Some(("tools/build.sh".into(), Some("--flag".into()))));
    assert_eq!(coverage_needles(&cmds[0].words), Some(("apachectl".into(), Some("configtest".into()))));

    // covered-by: the program and its first argument, as whole tokens.
    assert!(mentions("run(\"tools/build.sh\", &[\"--fast\"])", "tools/build.sh"));
    assert!(!mentions("repo.join(\"tools/build.sh\")", "--fast"));
    assert!(!mentions("build.rs", "build") && mentions("\"build\"", "build") && !mentions("rebuild", "build"));
    assert!(mentions_program("Command::new(\"configure-pkcs11\")", "/opt/cloudhsm/bin/configure-pkcs11"));
    let block = |info: &str, lines: &[&str]| Block {
        line: 1,
        info: info.into(),
        marker: Marker::Run(Sandbox::Al2023),
        lines: lines.iter().enumerate().map(|(i, l)| (i + 2, l.to_string())).collect(),
    };
    // (The real commands are built from pieces: this file must not mention
    // them, or it would cover them itself.)
    let (install, build) = (["apxs", "install.sh"].join("/"), ["rpm", "build.sh"].join("/"));
    let lines = [format!("sudo bash {install} --dry-run"), format!("bash {build}")];
    let b = block("sh", &[lines[0].as_str(), lines[1].as_str()]);
    let script = script_lines("r.md", &b).expect("no output lines");
    assert!(check_covered("r.md", &b, "tests/packaging_install.rs", &script).iter().all(|e| e.contains(&build)));
    let errors = check_covered("r.md", &b, "tests/docs_links.rs", &script);
    assert_eq!(errors.len(), 2, "an unrelated file covers nothing: {errors:#?}");
    let want = format!("r.md:2: `{}`: tests/docs_links.rs (covered-by) does not mention {install}", lines[0]);
    assert!(errors[0].starts_with(&want), "{}", errors[0]);
    assert!(check_covered("r.md", &b, "tests/no_such_test.rs", &script)[0].contains("no such file"));

    // not-run: only what needs Amazon Linux, SELinux or AWS.
    let b = block(
        "sh",
        &[
            "sudo dnf install -y selinux-policy-devel",
            "make -f /usr/share/selinux/devel/Makefile cloudhsm_httpd.pp",
            "sudo semanage port -l | grep 2223",
            "rpm -qi mod_hsm_ssl",
            "sudo /opt/cloudhsm/bin/configure-pkcs11 -a <HSM IP>",
            "grep 2223 /etc/services",
            "make install",
            "sudo systemctl restart httpd",
        ],
    );
    let errors = check_not_run("s.md", &script_lines("s.md", &b).expect("commands only"));
    let lines: Vec<&str> = errors.iter().map(|e| e.split(": `").next().unwrap_or("")).collect();
    assert_eq!(lines, vec!["s.md:7", "s.md:8", "s.md:9"], "{errors:#?}");
    assert!(errors[2].contains("`sudo systemctl restart httpd` in a not-run block"), "{}", errors[2]);

    // Prompts: stripped. A console transcript's output is left out; in
    // another shell block an output line is refused.
    let transcript = ["$ hsm-ssl-keytool list", "key www-rsa", "# comment", "$ curl -s \\", "    https://www.example.com/"];
    let commands = script_lines("t.md", &block("console", &transcript)).expect("a transcript");
    assert_eq!(
        commands,
        vec![(2, "hsm-ssl-keytool list".to_string()), (5, "curl -s \\".to_string()), (6, "    https://www.example.com/".to_string())]
    );
    let errors = script_lines("t.md", &block("sh", &transcript)).expect_err("output line");
    assert_eq!(
        errors,
        vec!["t.md:3: output in a shell block ('key www-rsa'): show only commands and # comments (or make it a ```console transcript)"]
    );
    let Page { errors, .. } = parse_page("u.md", "text\n\n```\nlog line\n$ hsm-ssl-keytool list\n```\n");
    assert_eq!(errors, vec!["u.md:5: a `$ ` command in a ``` block: make it a ```console transcript with a doc-test marker"]);
    let b = block("sh", &["$ true", "$ echo \\", "  continued"]);
    assert_eq!(script_lines("t.md", &b).expect("commands only")[1].1, "echo \\");
}

// ---------------------------------------------------------------------------
// The sandbox

/// A failed sandbox run: what went wrong, and the sandbox's state
/// directory (kept if the test fails, removed otherwise).
struct SandboxError {
    message: String,
    _state: Option<TestDir>,
}

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for SandboxError {
    fn from(message: String) -> Self {
        SandboxError { message, _state: None }
    }
}

/// What a sandbox run did.
#[derive(Debug)]
struct SandboxRun {
    /// stdout of each block, in order.
    stdout: Vec<String>,
    elapsed: Duration,
}

/// The last `lines` lines of a file, or a note that it is missing.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let all: Vec<&str> = t.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The blocks a page's sandbox runs, in order, each with the page it is
/// on: those of the pages it comes `after` (recursively) first, then its
/// own. `shown` names the page; pages named by `after` are paths from the
/// repository root.
fn sandbox_blocks(page: &Path, shown: &str, sandbox: Sandbox, chain: &mut Vec<String>) -> Result<Vec<(String, Block)>, String> {
    if chain.iter().any(|p| p == shown) {
        return Err(format!("doc-test: after: {} comes after itself", chain.join(" -> ")));
    }
    chain.push(shown.to_string());
    let text = std::fs::read_to_string(page).map_err(|e| format!("{}: {e}", page.display()))?;
    let parsed = parse_page(shown, &text);
    let mut out = Vec::new();
    for (_, before) in &parsed.after {
        out.extend(sandbox_blocks(&workspace_root().join(before), before, sandbox, chain)?);
    }
    chain.pop();
    let runs = parsed.blocks.into_iter().filter_map(|b| match &b.marker {
        Marker::Run(s) if *s == sandbox => Some(b),
        // What a not-run block does on the HSM side, done to the sandbox's
        // SoftHSM2 token instead, so that the blocks after it can run.
        Marker::NotRun(reason) if sandbox == Sandbox::Al2023 => {
            stand_in(reason).map(|cmd| Block { lines: vec![(b.line, cmd.to_string())], ..b.clone() })
        }
        _ => None,
    });
    out.extend(runs.map(|b| (shown.to_string(), b)));
    Ok(out)
}

/// Runs the blocks of `page` marked `run <sandbox>`, in order, in one
/// sandbox. `shown` is how messages name the page. Ok with no blocks if the
/// page has none; Err with the page line of the failing block (and of the
/// failing command, when bash could tell), the block, its output and
/// httpd's error log. Markers in error are left to
/// [`every_shell_block_in_the_docs_is_run_or_covered`].
fn run_page(page: &Path, shown: &str, sandbox: Sandbox) -> Result<SandboxRun, SandboxError> {
    let blocks = sandbox_blocks(page, shown, sandbox, &mut Vec::new())?;
    if !blocks.iter().any(|(p, _)| p == shown) {
        return Ok(SandboxRun { stdout: Vec::new(), elapsed: Duration::ZERO });
    }
    let dir = TestDir::new(&format!("docs-{}", sandbox.name()));
    let state = dir.path();
    let block_dir = dir.sub("blocks");
    // Script line (1-based) -> page line, per block.
    let mut line_maps = Vec::new();
    for (i, (bpage, b)) in blocks.iter().enumerate() {
        let lines = script_lines(bpage, b).map_err(|e| e.join("\n"))?;
        let mut script = format!("# {bpage}:{} (block {} of {}, run {})\n", b.line, i + 1, blocks.len(), sandbox.name());
        let mut map = BTreeMap::new();
        for (k, (n, l)) in lines.iter().enumerate() {
            map.insert(k + 2, *n);
            script.push_str(l);
            script.push('\n');
        }
        std::fs::write(block_dir.join(format!("{:03}.sh", i + 1)), script).map_err(|e| format!("write block: {e}"))?;
        line_maps.push(map);
    }
    let host_mntns = std::fs::read_link("/proc/self/ns/mnt").map_err(|e| format!("/proc/self/ns/mnt: {e}"))?;
    let out_path = state.join("sandbox.out");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    let err = out.try_clone().map_err(|e| format!("{}: {e}", out_path.display()))?;
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash"])
        .arg(workspace_root().join("tests/docs_sandbox/sandbox.sh"))
        .arg(sandbox.name())
        .arg(state)
        .env("DOCS_SANDBOX_REPO", workspace_root())
        .env("DOCS_SANDBOX_MODULE", module_path())
        .env("DOCS_SANDBOX_KEYTOOL", env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
        .env("DOCS_SANDBOX_PIN", SANDBOX_PIN)
        .env("DOCS_SANDBOX_HOST_MNTNS", host_mntns)
        .env("DOCS_SANDBOX_BLOCK_TIMEOUT", BLOCK_TIMEOUT_SECS.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    let deadline = started + Duration::from_secs(60 + BLOCK_TIMEOUT_SECS * blocks.len() as u64);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                // --kill-child: the sandbox's pid 1 and everything in it go too.
                let _ = child.kill();
                let _ = child.wait();
                let message = format!("{shown}: the {} sandbox did not finish in time (state: {})", sandbox.name(), state.display());
                return Err(SandboxError { message, _state: Some(dir) });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("wait for the sandbox: {e}").into()),
        }
    };
    let elapsed = started.elapsed();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    match status.code() {
        Some(0) => {
            // The page's own blocks' output (not that of pages it comes after).
            let stdout = (1..=blocks.len()).filter(|i| blocks[i - 1].0 == shown).map(|i| read(state.join(format!("out/{i:03}.stdout")))).collect();
            Ok(SandboxRun { stdout, elapsed })
        }
        Some(1) => {
            let Some(i) = (1..=blocks.len()).find(|i| read(state.join(format!("out/{i:03}.rc"))).trim() != "0") else {
                let message = format!("{shown}: the sandbox failed, but no block did:\n{}", read(out_path));
                return Err(SandboxError { message, _state: Some(dir) });
            };
            let (bpage, b) = &blocks[i - 1];
            let rc = read(state.join(format!("out/{i:03}.rc")));
            let stderr = read(state.join(format!("out/{i:03}.stderr")));
            let mut msg = format!("{bpage}:{}: block {i} of {} (run {}) failed", b.line, blocks.len(), sandbox.name());
            if bpage != shown {
                let _ = write!(msg, " (run first for {shown}, which comes after it)");
            }
            match rc.trim() {
                "124" | "137" => {
                    let _ = write!(msg, ": timed out after {BLOCK_TIMEOUT_SECS} s");
                }
                code => {
                    let _ = write!(msg, " with exit code {code}");
                }
            }
            // The ERR trap's last report: the failing command's line.
            if let Some((line, cmd)) = stderr.lines().rev().find_map(|l| {
                let rest = l.strip_prefix("docs-sandbox: line ")?;
                let (n, cmd) = rest.split_once(": ")?;
                Some((n.parse::<usize>().ok()?, cmd.to_string()))
            }) {
                if let Some(page_line) = line_maps[i - 1].get(&line) {
                    let _ = write!(msg, "\n  at {bpage}:{page_line}: {cmd}");
                }
            }
            let block_text: Vec<&str> = b.lines.iter().map(|(_, l)| l.as_str()).collect();
            let _ = write!(
                msg,
                "\n--- block ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- httpd {} (last 60 lines) ---\n{}\n(sandbox state: {})",
                block_text.join("\n"),
                read(state.join(format!("out/{i:03}.stdout"))),
                stderr,
                sandbox.error_log(),
                tail(&state.join("logs").join(sandbox.error_log()), 60),
                state.display()
            );
            Err(SandboxError { message: msg, _state: Some(dir) })
        }
        _ => {
            let message = format!(
                "{shown}: the {} sandbox could not be set up ({status}):\n{}\n--- setup.log ---\n{}",
                sandbox.name(),
                read(out_path),
                read(state.join("setup.log"))
            );
            Err(SandboxError { message, _state: Some(dir) })
        }
    }
}

/// Runs every page's `run <sandbox>` blocks; fails listing every page that
/// failed.
fn run_doc_pages(sandbox: Sandbox) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for page in doc_pages() {
        let shown = page.display().to_string();
        match run_page(&workspace_root().join(&page), &shown, sandbox) {
            Ok(r) if r.stdout.is_empty() => {}
            Ok(r) => {
                ran += 1;
                eprintln!("{shown}: {} block(s) ran in the {} sandbox in {:.1} s", r.stdout.len(), sandbox.name(), r.elapsed.as_secs_f64());
            }
            Err(e) => failures.push(e),
        }
    }
    // (Panicking with the failures alive keeps their state directories.)
    let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{}", text.join("\n\n"));
    eprintln!("{ran} page(s) with run {} blocks", sandbox.name());
}

#[test]
fn the_docs_al2023_commands_run_in_the_al2023_sandbox() {
    run_doc_pages(Sandbox::Al2023);
}

#[test]
fn the_docs_debian_commands_run_in_the_debian_sandbox() {
    run_doc_pages(Sandbox::Debian);
}

/// A page of the harness's own, written to a scratch directory (the
/// self-tests must not depend on what the docs say today).
fn scratch_page(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write the scratch page");
    p
}

/// What an operator does on Amazon Linux 2023 with the RPM and CloudHSM,
/// run in the al2023 sandbox: proves the sandbox serves HTTPS with a key in
/// the token, through the shims, whatever the docs say.
#[test]
fn al2023_sandbox_runs_the_cloudhsm_quick_start() {
    let dir = TestDir::new("docs-selftest");
    let page = scratch_page(
        &dir,
        "quick-start.md",
        "# Quick start (self-test of tests/docs_commands.rs)\n\
         \n\
         The PIN and the module's configuration:\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         echo '<crypto-user>:<password>' | sudo tee /etc/httpd/hsm-ssl/hsm-ssl-pin >/dev/null\n\
         sudo cp /etc/httpd/conf.d/hsm_ssl.conf.example /etc/httpd/conf.d/hsm_ssl.conf\n\
         # uncomment HSMSSLLibrary and HSMSSLPin\n\
         sudo sed -i -e 's/^#HSMSSLLibrary/HSMSSLLibrary/' -e 's/^#HSMSSLPin/HSMSSLPin/' /etc/httpd/conf.d/hsm_ssl.conf\n\
         ```\n\
         \n\
         <!-- doc-test: not-run needs AWS -->\n\
         ```sh\n\
         sudo /opt/cloudhsm/bin/configure-pkcs11 -a <HSM IP>\n\
         ```\n\
         \n\
         The key, its certificate and the virtual host:\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         export CREDENTIALS_DIRECTORY=/etc/httpd/hsm-ssl\n\
         hsm-ssl-keytool generate --label www-rsa --type rsa:2048\n\
         hsm-ssl-keytool selfsign --label www-rsa --subject CN=www.example.com --days 30 \\\n\
         \x20   --out /etc/pki/tls/certs/www.example.com.crt\n\
         # the <VirtualHost> part (the HSMSSL* lines are in hsm_ssl.conf)\n\
         hsm-ssl-keytool config --label www-rsa --cert /etc/pki/tls/certs/www.example.com.crt \\\n\
         \x20   | sed -n '/^<VirtualHost/,$p' | sudo tee /etc/httpd/conf.d/www.conf\n\
         ```\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```console\n\
         $ sudo CREDENTIALS_DIRECTORY=/etc/httpd/hsm-ssl apachectl configtest\n\
         $ sudo systemctl restart httpd\n\
         $ curl --cacert /etc/pki/tls/certs/www.example.com.crt https://www.example.com/\n\
         ```\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         sudo systemctl reload httpd\n\
         curl -sS --cacert /etc/pki/tls/certs/www.example.com.crt https://www.example.com/ | grep -q 'docs sandbox'\n\
         systemctl is-active httpd\n\
         ```\n",
    );
    let text = std::fs::read_to_string(&page).expect("read the scratch page");
    assert_eq!(check_page("quick-start.md", &text), Vec::<String>::new());
    let run = run_page(&page, "quick-start.md", Sandbox::Al2023).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("al2023 sandbox self-test: {} blocks in {:.1} s", run.stdout.len(), run.elapsed.as_secs_f64());
    assert_eq!(run.stdout.len(), 4);
    assert!(run.stdout[1].contains("key URI for SSLCertificateKeyFile: \"pkcs11:token=hsm1;object=www-rsa\""), "{}", run.stdout[1]);
    assert!(run.stdout[1].contains("SSLCertificateKeyFile \"pkcs11:token=hsm1;object=www-rsa\""), "{}", run.stdout[1]);
    assert!(run.stdout[2].contains("docs sandbox (al2023)"), "curl got: {}", run.stdout[2]);
    assert_eq!(run.stdout[3].trim(), "active");
    // Nothing reached the real machine.
    assert!(!Path::new("/etc/httpd/conf.d/www.conf").exists() && !Path::new("/usr/lib64/httpd").exists());
}

/// What a reader of a Debian page does with SoftHSM2, run in the debian
/// sandbox: the module from a built checkout, the token made readable by
/// www-data, a vhost from the key tool, served through Debian's
/// apache2ctl and a2enmod.
#[test]
fn debian_sandbox_serves_a_softhsm_key_with_debians_tools() {
    let dir = TestDir::new("docs-selftest-debian");
    let page = scratch_page(
        &dir,
        "debian.md",
        &format!(
            "# Debian quick start (self-test of tests/docs_commands.rs)\n\
             \n\
             <!-- doc-test: run debian -->\n\
             ```sh\n\
             # in the checkout, after cargo build --release\n\
             sudo install -m 0644 target/release/libmod_hsm_ssl.so /usr/lib/apache2/modules/mod_hsm_ssl.so\n\
             sudo install -m 0755 target/release/hsm-ssl-keytool /usr/local/bin/hsm-ssl-keytool\n\
             sed 's|modules/mod_hsm_ssl.so|/usr/lib/apache2/modules/mod_hsm_ssl.so|' httpd-conf/hsm_ssl.load \\\n\
             \x20   | sudo tee /etc/apache2/mods-available/hsm_ssl.load >/dev/null\n\
             sudo a2enmod ssl hsm_ssl\n\
             ```\n\
             \n\
             <!-- doc-test: run debian -->\n\
             ```sh\n\
             # SoftHSM2's configuration, for www-data (the key service runs as it)\n\
             sudo chmod 0755 /etc/softhsm /var/lib/softhsm\n\
             sudo chmod 0644 /etc/softhsm/softhsm2.conf\n\
             sudo install -m 0600 /dev/null /etc/apache2/hsm-pin\n\
             echo {DEBIAN_TOKEN_PIN} | sudo tee /etc/apache2/hsm-pin >/dev/null\n\
             printf 'HSMSSLLibrary /usr/lib/softhsm/libsofthsm2.so\\nHSMSSLPin file:/etc/apache2/hsm-pin\\n' \\\n\
             \x20   | sudo tee /etc/apache2/conf-available/hsm_ssl.conf\n\
             sudo a2enconf hsm_ssl\n\
             cd /tmp\n\
             ```\n\
             \n\
             <!-- doc-test: run debian -->\n\
             ```sh\n\
             sudo hsm-ssl-keytool generate --label www-ec --type ec:P-256\n\
             # the new key's files too (SoftHSM2 makes them readable by their writer only)\n\
             sudo chown -R www-data:www-data /var/lib/softhsm/tokens\n\
             sudo hsm-ssl-keytool selfsign --label www-ec --subject CN=www.example.com --days 30 --out www.example.com.crt\n\
             sudo install -m 0644 www.example.com.crt /etc/ssl/certs/www.example.com.crt\n\
             sudo hsm-ssl-keytool config --label www-ec --cert /etc/ssl/certs/www.example.com.crt \\\n\
             \x20   | grep -v '^HSMSSL' | sudo tee /etc/apache2/sites-available/www.conf\n\
             sudo a2ensite www\n\
             sudo apache2ctl configtest\n\
             sudo systemctl restart apache2\n\
             curl -fsS --cacert /etc/ssl/certs/www.example.com.crt https://www.example.com/ >/dev/null\n\
             sudo hsm-ssl-keytool list\n\
             ```\n"
        ),
    );
    let text = std::fs::read_to_string(&page).expect("read the scratch page");
    assert_eq!(check_page("debian.md", &text), Vec::<String>::new());
    let run = run_page(&page, "debian.md", Sandbox::Debian).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("debian sandbox self-test: {} blocks in {:.1} s", run.stdout.len(), run.elapsed.as_secs_f64());
    assert_eq!(run.stdout.len(), 3);
    // The working directory carried over from block 2 (cd /tmp).
    assert!(run.stdout[2].contains("certificate written to www.example.com.crt"), "{}", run.stdout[2]);
    assert!(run.stdout[2].contains("SSLCertificateKeyFile \"pkcs11:token=web;object=www-ec\""), "{}", run.stdout[2]);
    // Nothing reached the real machine.
    assert!(!Path::new("/etc/apache2/sites-available/www.conf").exists() && !Path::new("/etc/apache2/hsm-pin").exists());
}

/// A failing command fails its page, naming the line, with the block's
/// output; the blocks after it do not run.
#[test]
fn sandbox_names_the_line_of_a_failing_command() {
    let dir = TestDir::new("docs-selftest-fail");
    let page = scratch_page(
        &dir,
        "broken.md",
        "# Broken\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         echo first block ran\n\
         ```\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         echo second block starts\n\
         # the next command fails\n\
         ls /etc/httpd/conf.d/no-such-file.conf\n\
         echo not reached\n\
         ```\n\
         \n\
         <!-- doc-test: run al2023 -->\n\
         ```sh\n\
         echo third block\n\
         ```\n",
    );
    let e = run_page(&page, "broken.md", Sandbox::Al2023).map(|r| r.stdout).expect_err("a failing command fails the page").to_string();
    assert!(
        e.starts_with("broken.md:9: block 2 of 3 (run al2023) failed with exit code 2\n  at broken.md:12: ls /etc/httpd/conf.d/no-such-file.conf"),
        "{e}"
    );
    assert!(e.contains("--- stdout ---\nsecond block starts\n\n--- stderr ---"), "{e}");
    assert!(e.contains("No such file or directory") && e.contains("--- httpd error_log"), "{e}");
    // sudo -i is refused, loudly.
    let page = scratch_page(&dir, "root-shell.md", "<!-- doc-test: run al2023 -->\n```sh\nsudo -i\n```\n");
    let e = run_page(&page, "root-shell.md", Sandbox::Al2023).map(|r| r.stdout).expect_err("sudo -i is not supported").to_string();
    assert!(e.contains("at root-shell.md:3: sudo -i") && e.contains("'-i' (a root shell) is not supported"), "{e}");
}

//! The settings the token layer's messages refer to, named by the front
//! end that runs it: httpd's directives (`HSMSSLPin`) in the module, the
//! key tool's options (`--pin`) in the tool. The token layer writes the
//! sentence ("fix what {} gives"); which setting the user typed is the
//! front end's word, given once at its start ([`name_with`]), so that no
//! layer rewrites another's text.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The PKCS#11 library.
    Library,
    /// Where the PIN comes from.
    Pin,
    /// Which token, when the key URI does not say.
    Token,
    /// The bound of one token call.
    OperationTimeout,
    /// The bound of open sessions.
    MaxSessions,
}

/// Names a setting as the front end's user writes it.
pub type Namer = fn(Setting) -> &'static str;

static NAMER: OnceLock<Namer> = OnceLock::new();

/// Sets the front end's names, once per process (a later call changes
/// nothing: a process runs one front end).
pub fn name_with(namer: Namer) {
    let _ = NAMER.set(namer);
}

/// The name of `s` for messages; a description when no front end named it.
pub fn name(s: Setting) -> &'static str {
    match NAMER.get() {
        Some(f) => f(s),
        None => match s {
            Setting::Library => "the PKCS#11 library setting",
            Setting::Pin => "the PIN source",
            Setting::Token => "the token setting",
            Setting::OperationTimeout => "the operation timeout",
            Setting::MaxSessions => "the session limit",
        },
    }
}

//! The module's directives as data: name, syntax, default and the one-line
//! description httpd shows (`apachectl -L`). httpd's command table
//! (`httpd::module`) and the manual page (`hsm-ssl-keytool manpage
//! --module`) are both made from this list, so they cannot disagree.
//! Everything here is plain data: the key tool uses it without httpd.

use std::ffi::CStr;

/// One `HSMSSL*` directive. All are for the main server configuration only
/// (httpd refuses them in a `<VirtualHost>`).
pub struct Directive {
    pub name: &'static CStr,
    /// The arguments, as the docs write them.
    pub syntax: &'static str,
    pub default: &'static str,
    /// One line, without a final full stop.
    pub help: &'static CStr,
}

impl Directive {
    pub fn name(&self) -> &'static str {
        self.name.to_str().unwrap_or("")
    }

    pub fn help(&self) -> &'static str {
        self.help.to_str().unwrap_or("")
    }
}

pub const LIBRARY: Directive = Directive {
    name: c"HSMSSLLibrary",
    syntax: "/path/to/pkcs11.so",
    default: "none (required when a key is a pkcs11: URI)",
    help: c"path of the HSM vendor's PKCS#11 library",
};
pub const PIN: Directive = Directive {
    name: c"HSMSSLPin",
    syntax: "env:NAME | file:/path | exec:/program",
    default: "none (required when a key is a pkcs11: URI)",
    help: c"where the token user PIN comes from: env:VAR, file:/path or exec:/program",
};
pub const TOKEN: Directive = Directive {
    name: c"HSMSSLToken",
    syntax: "label | pkcs11:token-attributes",
    default: "none: a key URI without token= needs the library to show exactly one token",
    help: c"token used when a key URI names none: a token label or pkcs11:token=...;serial=...",
};
pub const OPERATION_TIMEOUT: Directive = Directive {
    name: c"HSMSSLOperationTimeout",
    syntax: "SECONDS",
    default: "5",
    help: c"seconds one PKCS#11 step may take (at startup, in configtest, and each handshake's signature or decryption) before it counts as failed (default 5)",
};
pub const MAX_SESSIONS: Directive = Directive {
    name: c"HSMSSLMaxSessions",
    syntax: "N",
    default: "MaxRequestWorkers, at most 64 (HSMSSLKeyService Off: the MPM's threads per child)",
    help: c"maximum PKCS#11 sessions per token of the key service (default: MaxRequestWorkers, at most 64) or, with HSMSSLKeyService Off, of each child (default: the MPM's threads per child)",
};
pub const DIRECT_CALLS: Directive = Directive {
    name: c"HSMSSLDirectCalls",
    syntax: "On|Off",
    default: "Off",
    help: c"On: handshakes call the token on their own thread, with no HSMSSLOperationTimeout bound (for local tokens); default Off",
};
pub const ALLOW_EXPORTABLE_KEYS: Directive = Directive {
    name: c"HSMSSLAllowExportableKeys",
    syntax: "On|Off",
    default: "Off",
    help: c"On: serve token keys that are not CKA_SENSITIVE (their private value is readable with the PIN), with a warning, instead of refusing them; default Off",
};
pub const KEY_SERVICE: Directive = Directive {
    name: c"HSMSSLKeyService",
    syntax: "On|Off",
    default: "On",
    help: c"On (default): one key service process per server does every token operation; children never hold the PIN or a token connection. Off: every child talks to the token itself",
};
pub const KEY_SERVICE_USER: Directive = Directive {
    name: c"HSMSSLKeyServiceUser",
    syntax: "user",
    default: "httpd's User",
    help: c"the user the key service runs as (default: httpd's User)",
};
pub const HEALTH_PROBE_INTERVAL: Directive = Directive {
    name: c"HSMSSLHealthProbeInterval",
    syntax: "SECONDS",
    default: "10",
    help: c"seconds between probes of an idle token (a session and key attribute read, no private-key operation); default 10",
};
pub const HEALTH_MAX_AGE: Directive = Directive {
    name: c"HSMSSLHealthMaxAge",
    syntax: "SECONDS",
    default: "30",
    help: c"seconds without a successful operation or probe after which hsm-ssl-health answers 503; default 30",
};

/// Every directive, in the order the docs list them.
pub const ALL: [&Directive; 11] = [
    &LIBRARY,
    &PIN,
    &TOKEN,
    &OPERATION_TIMEOUT,
    &MAX_SESSIONS,
    &DIRECT_CALLS,
    &ALLOW_EXPORTABLE_KEYS,
    &KEY_SERVICE,
    &KEY_SERVICE_USER,
    &HEALTH_PROBE_INTERVAL,
    &HEALTH_MAX_AGE,
];

//! The hooks: how a configuration generation's keys get from the Apache
//! configuration into mod_ssl's SSL_CTXs, and how each child gets its own
//! token connection.
//!
//! 1. `pre_config`: forget the previous generation's directives.
//! 2. `post_config_first` (before mod_ssl): register the provider, ENGINE
//!    and STORE loader (once per process) and install the resolver that
//!    turns a key URI into a token key for this generation.
//! 3. mod_ssl's post_config: for each vhost, `add_cert_files` tells us which
//!    vhost is loading; mod_ssl then loads each `pkcs11:` key through our
//!    ENGINE/STORE, which calls the resolver (PIN read, one login, key found,
//!    public half read) and returns an HSM-backed EVP_PKEY.
//! 4. `init_server` (per SSL_CTX): checks that every `pkcs11:` key of the
//!    vhost really is ours, so no other engine or provider serves it.
//! 5. `post_config_last`: the parent logs out and finalizes PKCS#11 before
//!    any child is forked.
//! 6. `child_init`: each child opens the library, logs in with the PIN it
//!    inherited and finds its keys, before serving.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::ffi::guard;
use crate::ffi::httpd::{self, apr_array_header_t, apr_pool_t, apr_status_t, server_rec};
use crate::keyservice::control::ControlAnswer;
use crate::pkcs11::lookup;
use crate::pkcs11::pin::PinSource;
use crate::pkcs11::runtime;
use crate::pkcs11::secret::Secret;
use crate::pkcs11::token::{Binding, KeyRef, Protection, PublicKey};
use crate::pkcs11::uri::{redacted, KeyUri};
use crate::tls::{loader, provider};

use super::config::{self, GlobalConfig};

const OK: c_int = httpd::OK as c_int;
/// Default bound of one PKCS#11 step at startup and configtest.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
const FAIL: c_int = 500; // HTTP_INTERNAL_SERVER_ERROR: aborts startup

/// What one configuration generation knows about its token keys.
struct Generation {
    config: GlobalConfig,
    binding: OnceLock<Result<Arc<Binding>, String>>,
    keys: Mutex<Vec<Arc<KeyRef>>>,
    /// server_rec address -> (vhost description, pkcs11 key URIs)
    vhosts: Mutex<HashMap<usize, Vhost>>,
    current: Mutex<Option<Vhost>>,
    /// The socket of this configuration's key service, once started.
    service_socket: Mutex<Option<std::path::PathBuf>>,
    /// The configuration pool and httpd's process pool (addresses), for
    /// starting the key service.
    pools: (usize, usize),
}

#[derive(Clone, Debug)]
struct Vhost {
    name: String,
    /// The `pkcs11:` key URIs of this vhost.
    uris: Vec<String>,
    /// mod_ssl's certificate and key lists, in their order (key i pairs
    /// with certificate i).
    certs: Vec<String>,
    keys: Vec<String>,
}

impl Vhost {
    fn cert_for(&self, uri: &str) -> Option<String> {
        let i = self.keys.iter().position(|k| k == uri)?;
        self.certs.get(i).cloned()
    }
}

/// What to log about a key at startup: level, message ID, text.
type Notes = Vec<(log::Level, &'static str, String)>;

/// Finds and checks one configured key in this process (configtest, and
/// `HSMSSLKeyService Off`): the token steps of `lookup::find_key`, then
/// [`accept_key`]. Returns the key and what to log about it.
fn check_key(binding: &Arc<Binding>, uri_text: &str, cert: Option<&str>, allow_exportable: bool) -> Result<(Arc<KeyRef>, Notes), String> {
    let found = lookup::find_key(binding, uri_text).map_err(|e| e.to_string())?;
    let notes = accept_key(&found.key, found.warnings, cert, allow_exportable)?;
    Ok((found.key, notes))
}

/// What the configuration decides about a key found on the token: its
/// public half against the certificate, and whether it could leave the
/// token (`key_protection`). Returns what to log about it, with the
/// token's `warnings` about TLS modes that will not work.
fn accept_key(key: &KeyRef, warnings: Vec<String>, cert: Option<&str>, allow_exportable: bool) -> Result<Notes, String> {
    if let Some(cert) = cert {
        crate::tls::certcheck::check(cert, &key.public).map_err(|e| e.to_string())?;
    }
    let mut notes = key_protection(&key.protection, allow_exportable)?;
    notes.extend(warnings.into_iter().map(|w| (log::Level::Warn, "HSM00153", w)));
    Ok(notes)
}

/// The policy on keys that could leave the token. Not CKA_SENSITIVE: the
/// private value can be read in plaintext by anyone who has the PIN, so
/// the key is refused unless HSMSSLAllowExportableKeys is On (then a
/// warning). CKA_EXTRACTABLE: it can be wrapped out under a key of the
/// PIN holder's choosing; a warning only, as some HSM tools (CloudHSM's
/// among them) make keys extractable by default. Not always sensitive or
/// not never extractable (an imported key, say): copies may exist outside
/// the token; an info line.
fn key_protection(p: &Protection, allow_exportable: bool) -> Result<Notes, String> {
    let mut notes = Vec::new();
    if p.sensitive == Some(false) {
        let what = "the private key is not sensitive (CKA_SENSITIVE is false): anyone who has the PIN can read its \
                    private value in plaintext";
        let fix = "generate a new key in the token with CKA_SENSITIVE true (hsm-ssl-keytool generate), get a \
                   certificate for it and point SSLCertificateKeyFile at it";
        if !allow_exportable {
            return Err(format!("{what}; refused: {fix}, or set 'HSMSSLAllowExportableKeys On' to serve it anyway"));
        }
        notes.push((log::Level::Warn, "HSM00150", format!("{what}; served because HSMSSLAllowExportableKeys is On; {fix}")));
    }
    if p.extractable == Some(true) {
        notes.push((
            log::Level::Warn,
            "HSM00151",
            "the private key is extractable (CKA_EXTRACTABLE is true): anyone who has the PIN can wrap it out of the \
             token under a key of their own; set CKA_EXTRACTABLE to false with the HSM's tools (PKCS#11 allows that \
             one-way change) or generate the key with extractable false"
                .to_string(),
        ));
    }
    if p.always_sensitive == Some(false) || p.never_extractable == Some(false) {
        notes.push((
            log::Level::Info,
            "HSM00152",
            "the private key has not always been inside the token only (CKA_ALWAYS_SENSITIVE or \
             CKA_NEVER_EXTRACTABLE is false, as for an imported key): copies of it may exist elsewhere"
                .to_string(),
        ));
    }
    Ok(notes)
}

static GENERATION: Mutex<Option<Arc<Generation>>> = Mutex::new(None);

/// PIN read in the first startup pass, handed to the second pass (the
/// daemonized process) so that `exec:` programs run once per start.
static STARTUP_PIN: Mutex<Option<(PinSource, Arc<Secret>)>> = Mutex::new(None);

fn is_first_pass() -> bool {
    // SAFETY: a plain query of httpd's state.
    unsafe { httpd::ap_state_query(httpd::AP_SQ_MAIN_STATE as c_int) == httpd::AP_SQ_MS_CREATE_PRE_CONFIG as c_int }
}

/// An MPM figure such as AP_MPMQ_MAX_THREADS, at least 1.
fn mpm_count(query: u32) -> usize {
    let mut n: c_int = 0;
    // SAFETY: ap_mpm_query writes one int.
    unsafe { httpd::ap_mpm_query(query as c_int, &mut n) };
    n.max(1) as usize
}

fn threads_per_child() -> usize {
    mpm_count(httpd::AP_MPMQ_MAX_THREADS)
}

/// Default session limit of a key service (HSMSSLMaxSessions overrides).
const MAX_SERVICE_SESSIONS: usize = 64;

impl Generation {
    /// A generation for the directives httpd just read.
    fn from_directives(pools: (usize, usize)) -> Generation {
        Generation {
            pools,
            config: config::snapshot(),
            binding: OnceLock::new(),
            keys: Mutex::new(Vec::new()),
            vhosts: Mutex::new(HashMap::new()),
            current: Mutex::new(None),
            service_socket: Mutex::new(None),
        }
    }

    fn binding(&self) -> Result<Arc<Binding>, String> {
        self.binding
            .get_or_init(|| {
                let (library, _) = self
                    .config
                    .library
                    .clone()
                    .ok_or("no HSMSSLLibrary is configured: add 'HSMSSLLibrary /path/to/vendor-pkcs11.so' to the main server configuration")?;
                let (source, origin) =
                    self.config.pin.clone().ok_or(
                        "no HSMSSLPin is configured: add 'HSMSSLPin env:VAR' (or file:/path, exec:/program) to the main server configuration",
                    )?;
                let cached = {
                    let mut c = STARTUP_PIN.lock();
                    match c.take() {
                        Some((s, pin)) if !is_first_pass() && s == source => Some(pin),
                        _ => None,
                    }
                };
                let pin = match cached {
                    Some(p) => p,
                    None => {
                        if let (PinSource::Env(name), false) = (&source, is_first_pass()) {
                            log::info!(
                                "HSM00100: HSMSSLPin env:{name}: using the PIN read when httpd started (pid {}); \
                                 an env: PIN changes only when httpd is stopped and started",
                                std::process::id()
                            );
                        }
                        let p = Arc::new(source.read().map_err(|e| format!("{} (HSMSSLPin at {})", super::messages::pin(&e), origin.0))?);
                        if is_first_pass() {
                            *STARTUP_PIN.lock() = Some((source.clone(), p.clone()));
                        }
                        p
                    }
                };
                let direct_calls = self.config.direct_calls.unwrap_or(false);
                if direct_calls && !is_first_pass() {
                    log::info!(
                        "HSM00101: HSMSSLDirectCalls On: handshakes call the token on their own thread; \
                         HSMSSLOperationTimeout does not bound those calls"
                    );
                }
                Ok(Arc::new(Binding {
                    library,
                    pin,
                    default_token: self.config.token.clone().map(|t| t.0).unwrap_or_default(),
                    max_sessions: self.config.max_sessions.unwrap_or_else(|| {
                        if self.config.key_service.unwrap_or(true) {
                            // One pool for every child: as many sessions as
                            // handshakes can be in flight, within reason.
                            (threads_per_child() * mpm_count(httpd::AP_MPMQ_MAX_DAEMONS)).min(MAX_SERVICE_SESSIONS)
                        } else {
                            threads_per_child()
                        }
                    }),
                    session_wait: self.config.operation_timeout.unwrap_or(DEFAULT_OP_TIMEOUT),
                    op_timeout: self.config.operation_timeout.unwrap_or(DEFAULT_OP_TIMEOUT),
                    direct_calls,
                }))
            })
            .clone()
    }

    /// The resolver mod_ssl's key loading ends in. Every failure is logged
    /// as one line naming the vhost, the key URI and what to do.
    fn resolve(&self, uri_text: &str) -> Option<Arc<KeyRef>> {
        let vhost = self.current.lock().as_ref().map(|v| v.name.clone()).unwrap_or_else(|| "(unknown vhost)".into());
        let fail = |msg: String| {
            log::error!("HSM00102: {vhost}: SSLCertificateKeyFile \"{}\": {msg}", redacted(uri_text));
            None
        };
        if let Err(e) = KeyUri::parse(uri_text) {
            return fail(format!("malformed key URI: {}", super::messages::key_uri(&e)));
        }
        let cert = self.current.lock().as_ref().and_then(|v| v.cert_for(uri_text));
        let binding = match self.binding() {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let allow_exportable = self.config.allow_exportable_keys.unwrap_or(false);
        let checked = if self.config.key_service.unwrap_or(true) {
            self.find_in_service(&binding, uri_text)
                .and_then(|(k, warnings)| Ok((k.clone(), accept_key(&k, warnings, cert.as_deref(), allow_exportable)?)))
        } else {
            check_key(&binding, uri_text, cert.as_deref(), allow_exportable)
        };
        match checked {
            Ok((k, notes)) => {
                // httpd reads its configuration twice at startup (once at
                // a reload): said in the last pass only, they appear once.
                for (level, id, w) in notes.into_iter().filter(|_| !is_first_pass()) {
                    log::log!(level, "{id}: {vhost}: SSLCertificateKeyFile \"{}\": {w}", redacted(uri_text));
                }
                log::info!(
                    "HSM00104: {vhost}: key {uri_text} is on token '{}' (id {}); private-key operations will run in the token",
                    k.token_label,
                    crate::pkcs11::uri::hex(&k.id)
                );
                if let Some(m) = k.premaster.get() {
                    log::info!("HSM00105: {vhost}: key {uri_text}: TLS 1.2 RSA key exchange: {}", m.describe());
                }
                self.keys.lock().push(k.clone());
                Some(k)
            }
            Err(e) => fail(e),
        }
    }
}

/// httpd's User (uid, name) and Group (gid), as mod_unixd read them.
fn httpd_user() -> (libc::uid_t, libc::gid_t, String) {
    // SAFETY: httpd's User and Group, set by mod_unixd while the
    // configuration was read; plain reads.
    unsafe {
        let u = ptr::addr_of!(httpd::ap_unixd_config).read();
        let name = if u.user_name.is_null() { String::new() } else { CStr::from_ptr(u.user_name).to_string_lossy().into_owned() };
        (u.user_id, u.group_id, name)
    }
}

impl Generation {
    /// The user the key service runs as: `HSMSSLKeyServiceUser`, or
    /// httpd's `User`.
    fn service_user(&self) -> Result<crate::keyservice::service::User, String> {
        let (child_uid, _, child_user) = httpd_user();
        match &self.config.key_service_user {
            Some((name, origin)) => {
                crate::keyservice::service::lookup_user(name).map_err(|e| format!("HSMSSLKeyServiceUser {name} ({}): {e}", origin.0))
            }
            None => crate::keyservice::service::lookup_user(&format!("#{child_uid}"))
                .map_err(|e| format!("the key service runs as httpd's User {child_user}, but: {e}")),
        }
    }

    /// Has this configuration's key service find `uri_text` (starting the
    /// service on the first key): the service's login is the startup
    /// check's, and httpd's parent never opens the token.
    fn find_in_service(&self, binding: &Arc<Binding>, uri_text: &str) -> Result<(Arc<KeyRef>, Vec<String>), String> {
        if self.service_socket.lock().is_none() {
            let pconf = self.pools.0 as *mut apr_pool_t;
            match super::supervise::adopt(pconf, |plan| self.fits(plan, binding)) {
                Some(socket) => *self.service_socket.lock() = Some(socket),
                None => self.start_service(binding)?,
            }
        }
        let slot = self.keys.lock().len();
        // The service bounds each step by HSMSSLOperationTimeout: the
        // library, up to three attempts at the login and the key, the
        // mechanisms, and the RSA decryption trial.
        let limit = binding.op_timeout * 9 + Duration::from_secs(2);
        match super::supervise::find(slot, uri_text, limit)? {
            ControlAnswer::Found { facts, premaster, warnings } => Ok((Arc::new(KeyRef::new(*facts, premaster, binding.clone())), warnings)),
            ControlAnswer::NotFound { text, .. } => Err(text),
            ControlAnswer::Sealed => Err("the key service answered a key lookup with the end of the configuration".into()),
        }
    }

    /// Whether the service started for `plan` (the first configuration
    /// pass's) serves this configuration as it is: same user, library,
    /// token, PIN and limits.
    fn fits(&self, plan: &crate::keyservice::service::Plan, binding: &Binding) -> bool {
        plan.binding.same_as(binding) && self.service_user().is_ok_and(|u| u == plan.user)
    }

    /// Starts this configuration's key service (in httpd's parent, while
    /// mod_ssl loads keys), as httpd's `User` or `HSMSSLKeyServiceUser`.
    fn start_service(&self, binding: &Arc<Binding>) -> Result<(), String> {
        let (child_uid, child_gid, _) = httpd_user();
        let user = self.service_user()?;
        let (pconf, process_pool) = (self.pools.0 as *mut apr_pool_t, self.pools.1 as *mut apr_pool_t);
        let plan = crate::keyservice::service::Plan {
            socket: super::supervise::socket_path(pconf),
            user,
            child_uid,
            child_gid,
            parent: std::process::id() as libc::pid_t,
            binding: binding.clone(),
            keys: Vec::new(),
            delay: Duration::ZERO,
            probe_interval: self.config.health_probe_interval.unwrap_or(super::config::DEFAULT_PROBE_INTERVAL),
        };
        *self.service_socket.lock() = Some(plan.socket.clone());
        super::supervise::start(pconf, process_pool, plan).map(|_| ()).map_err(|e| format!("mod_hsm_ssl cannot start its key service: {e}"))
    }
}

fn describe(s: *mut server_rec) -> String {
    // SAFETY: s is a live server_rec from httpd; strings are NUL-terminated.
    unsafe {
        let s = &*s;
        let host =
            if s.server_hostname.is_null() { "(no ServerName)".into() } else { CStr::from_ptr(s.server_hostname).to_string_lossy().into_owned() };
        let port = if s.addrs.is_null() { s.port } else { (*s.addrs).host_port };
        let defn = if s.defn_name.is_null() {
            String::new()
        } else {
            format!(" ({}:{})", CStr::from_ptr(s.defn_name).to_string_lossy(), s.defn_line_number)
        };
        format!("vhost {host}:{port}{defn}")
    }
}

pub unsafe extern "C" fn pre_config(_pconf: *mut apr_pool_t, _plog: *mut apr_pool_t, _ptemp: *mut apr_pool_t) -> c_int {
    guard("pre_config", OK, || {
        config::reset();
        OK
    })
}

unsafe extern "C" fn generation_cleanup(_data: *mut std::ffi::c_void) -> apr_status_t {
    guard("cleanup", 0, || {
        // The server_rec lives in the pool being cleared: log without it
        // until the next post_config names the new one.
        super::log::set_main_server(ptr::null_mut());
        loader::set_resolver(None);
        runtime::shutdown();
        if let Some(g) = GENERATION.lock().take() {
            if let Some(Ok(b)) = g.binding.get() {
                // Wipe this generation's PIN unless the second startup pass
                // is about to take it over.
                let handed_over = STARTUP_PIN.lock().as_ref().is_some_and(|(_, p)| Arc::ptr_eq(p, &b.pin));
                if !handed_over {
                    b.pin.wipe();
                }
            }
        }
        0
    })
}

pub unsafe extern "C" fn post_config_first(pconf: *mut apr_pool_t, _plog: *mut apr_pool_t, _ptemp: *mut apr_pool_t, s: *mut server_rec) -> c_int {
    guard("post_config", FAIL, || {
        super::log::set_main_server(s);
        if let Err(e) = super::module::pin_self().and_then(|_| loader::prepare()) {
            log::error!("HSM00106: mod_hsm_ssl cannot start: {e}");
            return FAIL;
        }
        // A new PIN read: a refusal of the previous generation's no longer
        // counts. The first call maps the page the children share.
        crate::pkcs11::latch::new_generation();
        // The shared counters: mapped before the first fork, kept for the
        // life of httpd's parent (see pkcs11::stats).
        // SAFETY: a plain query of httpd's state.
        let config_gen = unsafe { crate::ffi::httpd::ap_state_query(crate::ffi::httpd::AP_SQ_CONFIG_GEN as c_int) };
        crate::pkcs11::stats::map(config_gen.max(0) as u64);
        // SAFETY: httpd's main server and its process record.
        let process_pool = unsafe { (*(*s).process).pool };
        let g = Arc::new(Generation::from_directives((pconf as usize, process_pool as usize)));
        *GENERATION.lock() = Some(g.clone());
        let r = g.clone();
        loader::set_resolver(Some(Box::new(move |uri| r.resolve(uri))));
        // SAFETY: registering a cleanup on the configuration pool, which
        // httpd clears at every restart and at exit.
        unsafe {
            httpd::apr_pool_cleanup_register(pconf, ptr::null(), Some(generation_cleanup), Some(httpd::apr_pool_cleanup_null));
        }
        OK
    })
}

pub unsafe extern "C" fn post_config_last(_pconf: *mut apr_pool_t, _plog: *mut apr_pool_t, _ptemp: *mut apr_pool_t, _s: *mut server_rec) -> c_int {
    guard("post_config", FAIL, || {
        loader::set_resolver(None);
        // The parent never signs; children must not inherit its sessions.
        runtime::shutdown();
        if !is_first_pass() {
            // The second startup pass is done: a PIN kept for it and not
            // taken (no token key in this configuration) is wiped now,
            // before the key service is forked.
            if let Some((_, pin)) = STARTUP_PIN.lock().take() {
                pin.wipe();
            }
        }
        if !is_first_pass() {
            if let Some(why) = super::upgrade::replaced() {
                log::warn!(
                    "HSM00118: {why}: this httpd keeps running the mod_hsm_ssl it started with (version {}) through graceful \
                     restarts and restarts; stop and start httpd (systemctl restart httpd) to run the new one",
                    env!("CARGO_PKG_VERSION")
                );
            }
        }
        let sealed = seal_key_service();
        super::supervise::end_carried();
        if let Err(e) = sealed {
            log::error!("HSM00107: {e}");
            return FAIL;
        }
        if let Some(g) = GENERATION.lock().as_ref() {
            let n = g.keys.lock().len();
            if n > 0 {
                log::debug!("HSM00108: {n} token key(s) configured; PKCS#11 closed in the parent (pid {})", std::process::id());
            }
        }
        OK
    })
}

/// With a key service: hands it the configuration's keys, which it then
/// serves (and is started again with, if it dies).
fn seal_key_service() -> Result<(), String> {
    let Some(g) = GENERATION.lock().clone() else { return Ok(()) };
    if g.service_socket.lock().is_none() {
        return Ok(());
    }
    let keys = g.keys.lock().clone();
    let limit = keys.first().map(|k| k.binding.op_timeout).unwrap_or(DEFAULT_OP_TIMEOUT);
    // The first of httpd's two startup passes keeps the channel, so that
    // the second can take the service over (`supervise::adopt`).
    super::supervise::seal(keys, !is_first_pass(), limit).map_err(|e| format!("mod_hsm_ssl cannot start its key service: {e}"))
}

/// The strings of an APR array of `const char *`.
///
/// # Safety
/// `a` is null or a valid APR array whose elements are C strings.
unsafe fn strings(a: *mut apr_array_header_t) -> Vec<String> {
    let mut out = Vec::new();
    if a.is_null() {
        return out;
    }
    // SAFETY: per this function's contract.
    unsafe {
        let a = &*a;
        let elts = a.elts as *const *const c_char;
        for i in 0..a.nelts.max(0) as usize {
            let p = *elts.add(i);
            if !p.is_null() {
                out.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            }
        }
    }
    out
}

pub unsafe extern "C" fn add_cert_files(
    s: *mut server_rec,
    _p: *mut apr_pool_t,
    certs: *mut apr_array_header_t,
    keys: *mut apr_array_header_t,
) -> c_int {
    guard("add_cert_files", OK, || {
        let Some(g) = GENERATION.lock().clone() else { return OK };
        // SAFETY: mod_ssl's arrays of `const char *`.
        let (certs, keys) = unsafe { (strings(certs), strings(keys)) };
        let uris = keys.iter().filter(|k| k.starts_with("pkcs11:")).cloned().collect();
        let v = Vhost { name: describe(s), uris, certs, keys };
        *g.current.lock() = Some(v.clone());
        g.vhosts.lock().insert(s as usize, v);
        OK
    })
}

pub unsafe extern "C" fn init_server(s: *mut server_rec, _p: *mut apr_pool_t, is_proxy: c_int, ctx: *mut openssl_sys::SSL_CTX) -> c_int {
    guard("init_server", FAIL, || {
        if is_proxy != 0 || ctx.is_null() {
            return OK;
        }
        let Some(g) = GENERATION.lock().clone() else { return OK };
        let Some(v) = g.vhosts.lock().get(&(s as usize)).cloned() else { return OK };
        if v.uris.is_empty() {
            return OK;
        }
        const SET_CURRENT_CERT: c_int = 117;
        let mut ours = Vec::new();
        // SAFETY: walking the SSL_CTX's certificate slots with the public
        // SSL_CTX_set_current_cert control; keys are borrowed, not freed.
        unsafe {
            let mut op = 1; // SSL_CERT_SET_FIRST
            while openssl_sys::SSL_CTX_ctrl(ctx, SET_CURRENT_CERT, op, ptr::null_mut()) == 1 {
                if let Some(u) = provider::hsm_uri_of(openssl_sys::SSL_CTX_get0_privatekey(ctx)) {
                    ours.push(u);
                }
                op = 2; // SSL_CERT_SET_NEXT
            }
            openssl_sys::ERR_clear_error();
        }
        for u in &v.uris {
            if !ours.contains(u) {
                log::error!(
                    "HSM00109: {}: SSLCertificateKeyFile \"{}\" was not loaded by mod_hsm_ssl (another OpenSSL engine or provider answered for pkcs11: URIs); refusing to serve it",
                    v.name,
                    redacted(u)
                );
                return FAIL;
            }
        }
        let cannot_decrypt =
            g.keys.lock().iter().any(|k| v.uris.contains(&k.uri_text) && matches!(k.public, PublicKey::Rsa { .. }) && !k.can_decrypt);
        if cannot_decrypt {
            // SAFETY: mod_ssl's live SSL_CTX for this vhost.
            if let Err(e) = unsafe { drop_rsa_key_exchange(ctx) } {
                log::error!("HSM00110: {}: {e}", v.name);
                return FAIL;
            }
        }
        OK
    })
}

/// Removes the TLS 1.2 cipher suites with RSA key exchange (kRSA, and
/// RSA-PSK) from an SSL_CTX whose RSA key may not decrypt, so that no
/// client negotiates one and then fails at the premaster. mod_ssl has set
/// the vhost's SSLCipherSuite by now: the list is rebuilt from what it
/// made, in its order. TLS 1.3 suites are kept apart by OpenSSL and stay.
///
/// # Safety
/// `ctx` is a valid SSL_CTX.
unsafe fn drop_rsa_key_exchange(ctx: *mut openssl_sys::SSL_CTX) -> Result<(), String> {
    use crate::ffi::ossl;
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    // SAFETY: the stack belongs to the SSL_CTX and is only read here,
    // before the list is replaced; the names are static strings.
    unsafe {
        let list = ossl::SSL_CTX_get_ciphers(ctx);
        let stack = list as *const openssl_sys::OPENSSL_STACK;
        for i in 0..if list.is_null() { 0 } else { openssl_sys::OPENSSL_sk_num(stack) } {
            let c = openssl_sys::OPENSSL_sk_value(stack, i) as *const openssl_sys::SSL_CIPHER;
            let name = CStr::from_ptr(openssl_sys::SSL_CIPHER_get_name(c)).to_string_lossy().into_owned();
            match ossl::SSL_CIPHER_get_kx_nid(c) as u32 {
                ossl::NID_kx_rsa | ossl::NID_kx_rsa_psk => dropped.push(name),
                ossl::NID_kx_any => {} // TLS 1.3: not part of the cipher list string
                _ => kept.push(name),
            }
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    if kept.is_empty() {
        return Err(format!(
            "SSLCipherSuite offers TLS 1.2 only with RSA key exchange ({}), which this vhost's RSA key cannot do \
             (CKA_DECRYPT is false); add ECDHE cipher suites to SSLCipherSuite",
            dropped.join(":")
        ));
    }
    let list = std::ffi::CString::new(kept.join(":")).map_err(|_| "cipher name with a NUL byte".to_string())?;
    // SAFETY: a valid SSL_CTX and a NUL-terminated list.
    if unsafe { openssl_sys::SSL_CTX_set_cipher_list(ctx, list.as_ptr()) } != 1 {
        // SAFETY: clear what the refusal left on the error queue.
        unsafe { openssl_sys::ERR_clear_error() };
        return Err("OpenSSL refused the cipher list without RSA key exchange".into());
    }
    log::debug!("HSM00111: RSA key exchange removed ({})", dropped.join(":"));
    Ok(())
}

/// `httpd -t` (apachectl configtest, and Debian's apachectl graceful): run
/// every check startup would run, before the operator restarts. httpd -t
/// runs no post_config, so mod_ssl loads no key there; the keys come from
/// the configuration tree instead. Failing here makes configtest exit 1.
pub unsafe extern "C" fn check_config(_pconf: *mut apr_pool_t, _plog: *mut apr_pool_t, ptemp: *mut apr_pool_t, s: *mut server_rec) -> c_int {
    guard("check_config", FAIL, || {
        // SAFETY: a plain query of httpd's state.
        let mode = unsafe { httpd::ap_state_query(httpd::AP_SQ_RUN_MODE as c_int) };
        if mode != httpd::AP_SQ_RM_CONFIG_TEST as c_int {
            return OK;
        }
        super::log::set_main_server(s);
        // SAFETY: ap_pid_fname is httpd's PidFile setting: null, or a
        // NUL-terminated string httpd owns for the configuration's life.
        let pid_name = unsafe { (!httpd::ap_pid_fname.is_null()).then(|| CStr::from_ptr(httpd::ap_pid_fname)) };
        let pid_file = pid_name.and_then(|n| super::supervise::runtime_relative(ptemp, n));
        if let Some(pid) = pid_file.and_then(|f| super::upgrade::running_is_older(&f)) {
            log::warn!(
                "HSM00119: the running httpd (pid {pid}) runs an older mod_hsm_ssl than the file this configtest loaded \
                 (version {}); a graceful restart keeps the old one: stop and start httpd (systemctl restart httpd)",
                env!("CARGO_PKG_VERSION")
            );
        }
        let vhosts = super::conftree::pkcs11_vhosts(ptemp);
        if vhosts.is_empty() {
            return OK;
        }
        let g = Generation::from_directives((0, 0));
        let result = (|| {
            for v in &vhosts {
                for k in &v.keys {
                    let at = format!("{}: SSLCertificateKeyFile \"{}\" ({})", v.name, redacted(&k.uri), k.origin);
                    let binding = g.binding().map_err(|e| format!("{at}: {e}"))?;
                    let allow_exportable = g.config.allow_exportable_keys.unwrap_or(false);
                    let (_, notes) = check_key(&binding, &k.uri, k.cert.as_deref(), allow_exportable).map_err(|e| format!("{at}: {e}"))?;
                    for (level, id, w) in notes {
                        log::log!(level, "{id}: {at}: {w}");
                    }
                }
            }
            Ok::<(), String>(())
        })();
        runtime::shutdown();
        match result {
            Ok(()) => {
                let n: usize = vhosts.iter().map(|v| v.keys.len()).sum();
                log::info!("HSM00113: configtest: {n} token key(s) found, matching their certificates");
                OK
            }
            Err(e) => {
                log::error!("HSM00114: {e}");
                FAIL
            }
        }
    })
}

unsafe extern "C" fn child_cleanup(_data: *mut std::ffi::c_void) -> apr_status_t {
    guard("child cleanup", 0, || {
        for (label, st) in runtime::pool_stats() {
            log::debug!(
                "HSM00115: child {} exiting: token '{label}' sessions: {} in use, {} idle, {} opened, {} failed to open, {} dropped after errors, {} waits timed out",
                std::process::id(),
                st.in_use,
                st.idle,
                st.opened,
                st.open_failed,
                st.discarded,
                st.wait_timeouts
            );
        }
        runtime::shutdown();
        if let Some(g) = GENERATION.lock().as_ref() {
            if let Some(Ok(b)) = g.binding.get() {
                b.pin.wipe();
            }
        }
        0
    })
}

pub unsafe extern "C" fn child_init(pchild: *mut apr_pool_t, _s: *mut server_rec) {
    guard("child_init", (), || {
        runtime::set_serving();
        // A child has its generation's copy of the PIN; the one the parent
        // keeps from its environment is not needed here.
        crate::pkcs11::pin::wipe_kept_env_pins();
        let Some(g) = GENERATION.lock().clone() else { return };
        let keys = g.keys.lock().clone();
        if keys.is_empty() {
            return;
        }
        if let Some(path) = g.service_socket.lock().clone() {
            // The key service does every token operation: this child
            // keeps no copy of the PIN, never opens the library, and
            // keeps no end of the service's control channel.
            super::supervise::close_control_in_child();
            if let Some(Ok(b)) = g.binding.get() {
                b.pin.wipe();
            }
            if let Some((_, pin)) = STARTUP_PIN.lock().take() {
                pin.wipe();
            }
            let b = &keys[0].binding;
            let timeout = (!b.direct_calls).then_some(b.op_timeout);
            crate::keyservice::client::activate(path, keys, timeout);
            return;
        }
        // SAFETY: cleanup on the child's pool, run when the child exits.
        unsafe {
            httpd::apr_pool_cleanup_register(pchild, ptr::null(), Some(child_cleanup), Some(httpd::apr_pool_cleanup_null));
        }
        for k in &keys {
            if let Err(e) = runtime::prepare(k) {
                log::error!(
                    "HSM00116: child {}: key {} is not usable yet: {e}; handshakes with it fail until the token is back",
                    std::process::id(),
                    k.uri_text
                );
            }
        }
        // Every child runs the probe thread; one at a time wins each turn
        // (`stats::claim_probe`).
        let interval = g.config.health_probe_interval.unwrap_or(super::config::DEFAULT_PROBE_INTERVAL);
        if let Err(e) = crate::pkcs11::health::start(interval, move || keys.clone()) {
            log::error!("HSM00117: child {}: cannot start the token health probe: {e}", std::process::id());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(notes: &Notes) -> Vec<log::Level> {
        notes.iter().map(|(l, _, _)| *l).collect()
    }

    #[test]
    fn a_key_that_could_leave_the_token_is_refused_warned_about_or_noted() {
        let inside = Protection { sensitive: Some(true), extractable: Some(false), always_sensitive: Some(true), never_extractable: Some(true) };
        assert_eq!(key_protection(&inside, false), Ok(vec![]));
        // A token that says nothing is not accused of anything.
        assert_eq!(key_protection(&Protection::default(), false), Ok(vec![]));

        let readable = Protection { sensitive: Some(false), ..inside };
        let e = key_protection(&readable, false).unwrap_err();
        assert!(e.contains("CKA_SENSITIVE is false") && e.contains("HSMSSLAllowExportableKeys On"), "{e}");
        let notes = key_protection(&readable, true).unwrap();
        assert_eq!(levels(&notes), [log::Level::Warn]);
        assert!(notes[0].2.contains("served because HSMSSLAllowExportableKeys is On"), "{}", notes[0].2);
        assert_eq!(notes[0].1, "HSM00150");

        let wrappable = Protection { extractable: Some(true), never_extractable: Some(false), ..inside };
        let notes = key_protection(&wrappable, false).unwrap();
        assert_eq!(levels(&notes), [log::Level::Warn, log::Level::Info]);
        assert!(notes[0].2.contains("CKA_EXTRACTABLE is true"), "{}", notes[0].2);
        assert_eq!((notes[0].1, notes[1].1), ("HSM00151", "HSM00152"));

        let imported = Protection { always_sensitive: Some(false), never_extractable: Some(false), ..inside };
        assert_eq!(levels(&key_protection(&imported, false).unwrap()), [log::Level::Info]);
    }
}

//! Which vhosts serve which `pkcs11:` keys, read from httpd's parsed
//! configuration tree. `httpd -t` (configtest) runs no post_config, so
//! mod_ssl never loads its keys there; this walk is how configtest learns
//! them. Includes, `<IfModule>`, `<IfDefine>` and `Define` variables are
//! already resolved when the tree is built, so what remains are top-level
//! directives and `<VirtualHost>` sections, whatever the module load order.

use std::ffi::CStr;

use crate::ffi::httpd::{self, ap_directive_t, apr_pool_t};

/// One SSLCertificateKeyFile that is a `pkcs11:` URI, with the certificate
/// at the same position.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub uri: String,
    pub cert: Option<String>,
    /// "file:line" of the SSLCertificateKeyFile line.
    pub origin: String,
}

#[derive(Clone, Debug)]
pub struct SslVhost {
    /// "vhost NAME (file:line)", as the startup messages say it.
    pub name: String,
    pub keys: Vec<KeyEntry>,
}

#[derive(Default)]
struct Scope {
    engine: Option<bool>,
    server_name: Option<String>,
    certs: Vec<String>,
    keys: Vec<(String, String)>,
}

fn origin(d: &ap_directive_t) -> String {
    let file = if d.filename.is_null() {
        "(unknown)".into()
    } else {
        // SAFETY: httpd's NUL-terminated file name.
        unsafe { CStr::from_ptr(d.filename) }.to_string_lossy().into_owned()
    };
    format!("{file}:{}", d.line_num)
}

/// The first argument of a directive, unquoted as httpd does it.
fn first_arg(pool: *mut apr_pool_t, d: &ap_directive_t) -> String {
    if d.args.is_null() {
        return String::new();
    }
    let mut line = d.args;
    // SAFETY: ap_getword_conf reads the NUL-terminated argument string and
    // returns a copy allocated from `pool`.
    unsafe {
        let w = httpd::ap_getword_conf(pool, &mut line);
        if w.is_null() {
            String::new()
        } else {
            CStr::from_ptr(w).to_string_lossy().into_owned()
        }
    }
}

fn name_of(d: &ap_directive_t) -> String {
    if d.directive.is_null() {
        return String::new();
    }
    // SAFETY: httpd's NUL-terminated directive name.
    unsafe { CStr::from_ptr(d.directive) }.to_string_lossy().to_ascii_lowercase()
}

fn collect(pool: *mut apr_pool_t, first: *mut ap_directive_t, scope: &mut Scope, vhosts: &mut Vec<(String, *mut ap_directive_t)>) {
    let mut p = first;
    while !p.is_null() {
        // SAFETY: a node of httpd's configuration tree, alive for the
        // configuration pool's lifetime.
        let d = unsafe { &*p };
        match name_of(d).as_str() {
            "sslengine" => {
                let v = first_arg(pool, d).to_ascii_lowercase();
                scope.engine = Some(v == "on" || v == "optional");
            }
            "servername" => scope.server_name = Some(first_arg(pool, d)),
            "sslcertificatefile" => scope.certs.push(first_arg(pool, d)),
            "sslcertificatekeyfile" => scope.keys.push((first_arg(pool, d), origin(d))),
            "<virtualhost" => vhosts.push((origin(d), p)),
            _ => {}
        }
        p = d.next;
    }
}

fn entries(scope: &Scope) -> Vec<KeyEntry> {
    scope
        .keys
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k.starts_with("pkcs11:"))
        .map(|(i, (k, o))| KeyEntry { uri: k.clone(), cert: scope.certs.get(i).cloned(), origin: o.clone() })
        .collect()
}

/// Every SSL vhost (and the main server, when it serves SSL itself) with
/// its `pkcs11:` keys. Vhosts without such keys are left out.
pub fn pkcs11_vhosts(pool: *mut apr_pool_t) -> Vec<SslVhost> {
    // SAFETY: reading httpd's global tree pointer after configuration parsing.
    let root = unsafe { httpd::ap_conftree };
    let mut main = Scope::default();
    let mut vhost_nodes = Vec::new();
    collect(pool, root, &mut main, &mut vhost_nodes);
    let mut out = Vec::new();
    if main.engine == Some(true) {
        let keys = entries(&main);
        if !keys.is_empty() {
            out.push(SslVhost { name: format!("main server {}", main.server_name.clone().unwrap_or_default()), keys });
        }
    }
    for (o, node) in vhost_nodes {
        let mut s = Scope::default();
        let mut nested = Vec::new();
        // SAFETY: node is a live <VirtualHost> node of the tree.
        let (child, addr) = unsafe { ((*node).first_child, first_arg(pool, &*node)) };
        collect(pool, child, &mut s, &mut nested);
        if s.engine.or(main.engine) != Some(true) {
            continue;
        }
        // mod_ssl: a vhost without certificate lines inherits the main server's.
        if s.certs.is_empty() && s.keys.is_empty() {
            s.certs = main.certs.clone();
            s.keys = main.keys.clone();
        }
        let keys = entries(&s);
        if keys.is_empty() {
            continue;
        }
        let host = s.server_name.clone().unwrap_or_else(|| addr.trim_end_matches('>').to_string());
        out.push(SslVhost { name: format!("vhost {host} ({o})"), keys });
    }
    out
}

//! The exported `hsm_ssl_module` struct, the directive table and hook
//! registration.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use crate::ffi::httpd::{self, apr_pool_t, cmd_func, command_rec, module};

use super::{config, hooks};
use crate::directives as d;

/// httpd's entry for directive `d` (name and help from `crate::directives`),
/// handled by `f`.
const fn take1(d: &'static d::Directive, f: unsafe extern "C" fn(*mut httpd::cmd_parms, *mut c_void, *const c_char) -> *const c_char) -> command_rec {
    let (name, help) = (d.name, d.help);
    command_rec {
        name: name.as_ptr(),
        func: cmd_func { take1: Some(f) },
        cmd_data: ptr::null_mut(),
        req_override: httpd::RSRC_CONF as c_int,
        args_how: httpd::cmd_how_TAKE1,
        errmsg: help.as_ptr(),
    }
}

struct Commands([command_rec; 12]);
// SAFETY: a read-only table of pointers to 'static strings and functions.
unsafe impl Sync for Commands {}

static COMMANDS: Commands = Commands([
    take1(&d::LIBRARY, config::set_library),
    take1(&d::PIN, config::set_pin),
    take1(&d::TOKEN, config::set_token),
    take1(&d::OPERATION_TIMEOUT, config::set_operation_timeout),
    take1(&d::MAX_SESSIONS, config::set_max_sessions),
    take1(&d::DIRECT_CALLS, config::set_direct_calls),
    take1(&d::ALLOW_EXPORTABLE_KEYS, config::set_allow_exportable_keys),
    take1(&d::KEY_SERVICE, config::set_key_service),
    take1(&d::KEY_SERVICE_USER, config::set_key_service_user),
    take1(&d::HEALTH_PROBE_INTERVAL, config::set_health_probe_interval),
    take1(&d::HEALTH_MAX_AGE, config::set_health_max_age),
    command_rec { name: ptr::null(), func: cmd_func { no_args: None }, cmd_data: ptr::null_mut(), req_override: 0, args_how: 0, errmsg: ptr::null() },
]);

/// The module struct `LoadModule hsm_ssl_module` looks up.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut hsm_ssl_module: module = module {
    version: httpd::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: httpd::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: c"mod_hsm_ssl.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: httpd::MODULE_MAGIC_COOKIE as _,
    rewrite_args: None,
    create_dir_config: None,
    merge_dir_config: None,
    create_server_config: None,
    merge_server_config: None,
    cmds: COMMANDS.0.as_ptr(),
    register_hooks: Some(register_hooks),
    flags: 0,
};

pub fn module_index() -> c_int {
    // SAFETY: a plain read of a field httpd writes only while loading
    // modules, before any thread exists.
    unsafe { (*ptr::addr_of!(hsm_ssl_module)).module_index }
}

/// Keeps this shared object mapped until the process exits.
///
/// httpd unloads and reloads modules at every restart, but libcrypto is
/// never unloaded, and we register an OpenSSL provider, an ENGINE and a
/// STORE loader whose functions live here. Marking ourselves RTLD_NODELETE
/// makes the reload find the same code, so those registrations stay valid
/// (and are made once per process).
pub fn pin_self() -> Result<(), String> {
    static PINNED: OnceLock<Result<(), String>> = OnceLock::new();
    PINNED
        .get_or_init(|| {
            // SAFETY: dladdr on an address inside this object fills `info`
            // with pointers owned by the dynamic loader; dlopen with
            // RTLD_NOLOAD only adds a reference to an already loaded object.
            unsafe {
                let mut info: libc::Dl_info = std::mem::zeroed();
                if libc::dladdr(pin_self as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
                    return Err("cannot find the module's own file (dladdr failed)".into());
                }
                let h = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE);
                if h.is_null() {
                    return Err("cannot keep the module loaded across restarts (dlopen RTLD_NODELETE failed)".into());
                }
            }
            Ok(())
        })
        .clone()
}

/// Modules our first post_config must run before. apr keeps the pointer,
/// so the list is static.
struct NameList([*const c_char; 2]);
// SAFETY: read-only pointers to 'static strings.
unsafe impl Sync for NameList {}
static BEFORE_SSL: NameList = NameList([c"mod_ssl.c".as_ptr(), ptr::null()]);

unsafe extern "C" fn register_hooks(_p: *mut apr_pool_t) {
    crate::ffi::guard("register_hooks", (), || {
        super::log::init();
        super::upgrade::remember();
        crate::pkcs11::settings::name_with(super::messages::directive);
        // SAFETY: hook registration with 'static functions and a
        // NULL-terminated predecessor/successor list that apr copies.
        unsafe {
            httpd::ap_hook_pre_config(Some(hooks::pre_config), ptr::null(), ptr::null(), httpd::APR_HOOK_MIDDLE as c_int);
            httpd::ap_hook_post_config(Some(hooks::post_config_first), ptr::null(), BEFORE_SSL.0.as_ptr(), httpd::APR_HOOK_REALLY_FIRST);
            httpd::ap_hook_post_config(Some(hooks::post_config_last), ptr::null(), ptr::null(), httpd::APR_HOOK_REALLY_LAST as c_int);
            httpd::ap_hook_child_init(Some(hooks::child_init), ptr::null(), ptr::null(), httpd::APR_HOOK_MIDDLE as c_int);
            httpd::ap_hook_check_config(Some(hooks::check_config), ptr::null(), ptr::null(), httpd::APR_HOOK_MIDDLE as c_int);
            httpd::ap_hook_handler(Some(super::status::handler), ptr::null(), ptr::null(), httpd::APR_HOOK_MIDDLE as c_int);
            type AddCert = unsafe extern "C" fn(
                *mut httpd::server_rec,
                *mut apr_pool_t,
                *mut httpd::apr_array_header_t,
                *mut httpd::apr_array_header_t,
            ) -> c_int;
            type InitServer = unsafe extern "C" fn(*mut httpd::server_rec, *mut apr_pool_t, c_int, *mut openssl_sys::SSL_CTX) -> c_int;
            // mod_ssl's optional hooks, by name (APR_OPTIONAL_HOOK).
            httpd::apr_optional_hook_add(
                c"add_cert_files".as_ptr(),
                Some(std::mem::transmute::<AddCert, unsafe extern "C" fn()>(hooks::add_cert_files)),
                ptr::null(),
                ptr::null(),
                httpd::APR_HOOK_MIDDLE as c_int,
            );
            // mod_status's section (run only if mod_status is loaded).
            type StatusHook = unsafe extern "C" fn(*mut httpd::request_rec, c_int) -> c_int;
            httpd::apr_optional_hook_add(
                c"status_hook".as_ptr(),
                Some(std::mem::transmute::<StatusHook, unsafe extern "C" fn()>(super::status::server_status)),
                ptr::null(),
                ptr::null(),
                httpd::APR_HOOK_MIDDLE as c_int,
            );
            httpd::apr_optional_hook_add(
                c"init_server".as_ptr(),
                Some(std::mem::transmute::<InitServer, unsafe extern "C" fn()>(hooks::init_server)),
                ptr::null(),
                ptr::null(),
                httpd::APR_HOOK_MIDDLE as c_int,
            );
        }
    })
}

//! The HSMSSL* directives. All are global (main server only): one PKCS#11
//! library and one PIN per Apache instance, as CloudHSM wants one login per
//! application. Filled while httpd reads its configuration, reset by
//! pre_config at every (re)start, read-only from post_config on.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::ffi::httpd::{self, cmd_parms};
use crate::pkcs11::pin::PinSource;
use crate::pkcs11::uri::TokenSelector;

/// Where a directive was written, for error messages.
#[derive(Clone, Debug, Default)]
pub struct Origin(pub String);

#[derive(Clone, Debug, Default)]
pub struct GlobalConfig {
    pub library: Option<(PathBuf, Origin)>,
    pub pin: Option<(PinSource, Origin)>,
    pub token: Option<(TokenSelector, Origin)>,
    pub max_sessions: Option<usize>,
    pub operation_timeout: Option<std::time::Duration>,
    /// HSMSSLDirectCalls: token calls of a handshake on the worker thread
    /// itself, unbounded (default off).
    pub direct_calls: Option<bool>,
    /// HSMSSLAllowExportableKeys: serve a key that is not CKA_SENSITIVE
    /// (with a warning) instead of refusing it (default off).
    pub allow_exportable_keys: Option<bool>,
    /// HSMSSLKeyService: one key service process does every token
    /// operation for the children (default on).
    pub key_service: Option<bool>,
    /// HSMSSLKeyServiceUser: the user the key service runs as (default:
    /// httpd's User).
    pub key_service_user: Option<(String, Origin)>,
    /// HSMSSLHealthProbeInterval: how often an idle token is probed.
    pub health_probe_interval: Option<std::time::Duration>,
    /// HSMSSLHealthMaxAge: `hsm-ssl-health` answers 503 when no operation
    /// or probe succeeded for this long.
    pub health_max_age: Option<std::time::Duration>,
}

/// Defaults of the health directives.
pub const DEFAULT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
pub const DEFAULT_HEALTH_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

static CONFIG: Mutex<GlobalConfig> = Mutex::new(GlobalConfig {
    library: None,
    pin: None,
    token: None,
    max_sessions: None,
    operation_timeout: None,
    direct_calls: None,
    allow_exportable_keys: None,
    key_service: None,
    key_service_user: None,
    health_probe_interval: None,
    health_max_age: None,
});

pub fn reset() {
    *CONFIG.lock() = GlobalConfig::default();
}

pub fn snapshot() -> GlobalConfig {
    CONFIG.lock().clone()
}

/// Runs a directive handler: context check, argument decoding, and the
/// error string Apache prints (allocated from the config pool).
unsafe fn directive(cmd: *mut cmd_parms, arg: *const c_char, f: impl FnOnce(&str, Origin) -> Result<(), String>) -> *const c_char {
    crate::ffi::guard("directive", c"mod_hsm_ssl: internal error".as_ptr(), || {
        // SAFETY: Apache passes a valid cmd_parms and a NUL-terminated arg.
        unsafe {
            let err = httpd::ap_check_cmd_context(cmd, httpd::GLOBAL_ONLY);
            if !err.is_null() {
                return err;
            }
            let arg = CStr::from_ptr(arg).to_string_lossy().into_owned();
            let d = (*cmd).directive;
            let origin = if d.is_null() || (*d).filename.is_null() {
                Origin("(unknown)".into())
            } else {
                Origin(format!("{}:{}", CStr::from_ptr((*d).filename).to_string_lossy(), (*d).line_num))
            };
            match f(&arg, origin) {
                Ok(()) => std::ptr::null(),
                Err(msg) => {
                    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
                    httpd::apr_pstrdup((*cmd).pool, c.as_ptr())
                }
            }
        }
    })
}

pub unsafe extern "C" fn set_library(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, origin| {
            let p = PathBuf::from(a);
            let p = if p.is_absolute() {
                p
            } else {
                let c = CString::new(a).map_err(|_| "HSMSSLLibrary: bad path".to_string())?;
                let r = httpd::ap_server_root_relative((*cmd).pool, c.as_ptr());
                if r.is_null() {
                    return Err(format!("HSMSSLLibrary {a}: bad path"));
                }
                PathBuf::from(CStr::from_ptr(r).to_string_lossy().into_owned())
            };
            CONFIG.lock().library = Some((p, origin));
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_pin(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, origin| {
            let source = PinSource::parse(a).map_err(|e| super::messages::pin(&e))?;
            if let PinSource::Env(name) = &source {
                // Out of the environment before httpd spawns anything
                // (piped loggers open before post_config) or forks.
                crate::pkcs11::pin::capture_env(name);
            }
            CONFIG.lock().pin = Some((source, origin));
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_token(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, origin| {
            CONFIG.lock().token = Some((TokenSelector::parse_directive(a).map_err(|e| super::messages::token(&e))?, origin));
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_max_sessions(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            let n: usize =
                a.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| format!("HSMSSLMaxSessions {a}: give a number from 1 to 1024"))?;
            CONFIG.lock().max_sessions = Some(n);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_operation_timeout(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            let secs: f64 = a
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.1 && *s <= 600.0)
                .ok_or_else(|| format!("HSMSSLOperationTimeout {a}: give seconds, from 0.1 to 600"))?;
            CONFIG.lock().operation_timeout = Some(std::time::Duration::from_secs_f64(secs));
            Ok(())
        })
    }
}

/// Seconds from 1 to 3600 for the health directive `name`.
fn health_seconds(name: &str, a: &str) -> Result<std::time::Duration, String> {
    a.parse::<u64>()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{name} {a}: give whole seconds, from 1 to 3600"))
}

pub unsafe extern "C" fn set_health_probe_interval(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            CONFIG.lock().health_probe_interval = Some(health_seconds("HSMSSLHealthProbeInterval", a)?);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_health_max_age(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            CONFIG.lock().health_max_age = Some(health_seconds("HSMSSLHealthMaxAge", a)?);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_direct_calls(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            CONFIG.lock().direct_calls = Some(parse_on_off(a).ok_or_else(|| format!("HSMSSLDirectCalls {a}: give On or Off"))?);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_allow_exportable_keys(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            let on = parse_on_off(a).ok_or_else(|| format!("HSMSSLAllowExportableKeys {a}: give On or Off"))?;
            CONFIG.lock().allow_exportable_keys = Some(on);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_key_service(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, _| {
            CONFIG.lock().key_service = Some(parse_on_off(a).ok_or_else(|| format!("HSMSSLKeyService {a}: give On or Off"))?);
            Ok(())
        })
    }
}

pub unsafe extern "C" fn set_key_service_user(cmd: *mut cmd_parms, _m: *mut c_void, arg: *const c_char) -> *const c_char {
    // SAFETY: forwarded Apache arguments.
    unsafe {
        directive(cmd, arg, |a, origin| {
            crate::keyservice::service::lookup_user(a).map_err(|e| format!("HSMSSLKeyServiceUser {a}: {e}"))?;
            CONFIG.lock().key_service_user = Some((a.to_string(), origin));
            Ok(())
        })
    }
}

/// Apache's spelling of a flag: On or Off, in any case.
fn parse_on_off(a: &str) -> Option<bool> {
    if a.eq_ignore_ascii_case("on") {
        Some(true)
    } else if a.eq_ignore_ascii_case("off") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_on_or_off_in_any_case_and_nothing_else() {
        assert_eq!(parse_on_off("On"), Some(true));
        assert_eq!(parse_on_off("off"), Some(false));
        assert_eq!(parse_on_off("OFF"), Some(false));
        for bad in ["", "yes", "1", "true", "onn", " on"] {
            assert_eq!(parse_on_off(bad), None, "{bad:?}");
        }
    }
}

//! The `log` crate routed into Apache's error log, so that
//! `LogLevel hsm_ssl:debug` works like for any module. Apache filters by the
//! module's configured level; lines carry the module's name.

use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::ffi::httpd::{self, server_rec};

/// The main server of the current configuration (set at post_config).
static MAIN_SERVER: AtomicPtr<server_rec> = AtomicPtr::new(std::ptr::null_mut());

pub fn set_main_server(s: *mut server_rec) {
    MAIN_SERVER.store(s, Ordering::Release);
}

struct ApacheLogger;

impl log::Log for ApacheLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        // cryptoki's own messages (e.g. "Mechanism type 4356 is not
        // supported" for vendor mechanisms it cannot name) are details, not
        // errors of this server: debug level.
        let level = if record.target().starts_with("cryptoki") { log::Level::Debug } else { record.level() };
        // The module's own lines start with their message ID; another
        // crate's (cryptoki's) get one ID for all, and their origin.
        let msg = if record.target().starts_with("mod_hsm_ssl") {
            format!("{}", record.args())
        } else {
            format!("HSM00001: {}: {}", record.target(), record.args())
        };
        let level = match level {
            log::Level::Error => httpd::APLOG_ERR,
            log::Level::Warn => httpd::APLOG_WARNING,
            log::Level::Info => httpd::APLOG_INFO,
            log::Level::Debug => httpd::APLOG_DEBUG,
            log::Level::Trace => httpd::APLOG_TRACE1,
        } as c_int;
        let msg = msg.replace('\0', " ");
        let Ok(msg) = CString::new(msg) else { return };
        let file = CString::new(record.file().unwrap_or("mod_hsm_ssl")).unwrap_or_default();
        let s = MAIN_SERVER.load(Ordering::Acquire);
        // SAFETY: ap_log_error_ with a "%s" format and a NUL-terminated
        // argument; `s` is null or the live main server of this generation;
        // the module index is read from our registered module struct.
        unsafe {
            httpd::ap_log_error_(
                file.as_ptr(),
                record.line().unwrap_or(0) as c_int,
                super::module::module_index(),
                level,
                0,
                s,
                c"%s".as_ptr(),
                msg.as_ptr(),
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: ApacheLogger = ApacheLogger;

pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

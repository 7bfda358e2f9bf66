//! Every function OpenSSL or httpd calls runs inside [`guard`], so that a
//! panic (a bug) becomes a refused operation and a log line, never an unwind
//! into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            log::error!("internal error in {what}: the operation was refused (please report this bug)");
            fallback
        }
    }
}

//! Every function OpenSSL or httpd calls runs inside [`guard`], so that a
//! panic (a bug) becomes a refused operation and a log line, never an unwind
//! into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub fn guard<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            log::error!("HSM00600: internal error in {what}: the operation was refused (please report this bug)");
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback_value() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let v = guard("test", -1, || -> i32 { panic!("bug") });
        std::panic::set_hook(prev);
        assert_eq!(v, -1);
        assert_eq!(guard("test", -1, || 7), 7);
    }
}

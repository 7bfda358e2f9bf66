//! Generated declarations (see build.rs). Only the FFI edges use these.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, unnecessary_transmutes, clippy::all)]

// bindgen's output: its unsafe blocks are not ours to document.
#[allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
pub mod httpd {
    include!(concat!(env!("OUT_DIR"), "/httpd.rs"));
}

#[allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
pub mod ossl {
    include!(concat!(env!("OUT_DIR"), "/ossl.rs"));
}

mod guard;
pub use guard::guard;

/// An entry of an OpenSSL dispatch table: function `$f` under `$id`,
/// checked by the compiler against `$ty`, OpenSSL's own typedef for that id
/// (`OSSL_FUNC_<name>_fn` from core_dispatch.h, through bindgen), then cast
/// to the untyped form the table holds.
#[macro_export]
macro_rules! dispatch {
    ($id:expr, $f:expr, $ty:ty) => {{
        let f: $ty = Some($f);
        $crate::ffi::ossl::OSSL_DISPATCH {
            function_id: $id as ::std::ffi::c_int,
            // SAFETY: OpenSSL calls this pointer only through the
            // signature its typedef for the id gives, which `f` has;
            // transmuting between (optional) function pointer types keeps
            // the address.
            function: unsafe { ::std::mem::transmute::<$ty, Option<unsafe extern "C" fn()>>(f) },
        }
    }};
}

pub const DISPATCH_END: ossl::OSSL_DISPATCH = ossl::OSSL_DISPATCH { function_id: 0, function: None };

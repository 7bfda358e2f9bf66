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

/// Casts a typed C function pointer to the untyped form OpenSSL's dispatch
/// tables hold. The id stored beside it tells OpenSSL the real signature.
#[macro_export]
macro_rules! dispatch {
    ($id:expr, $f:expr, $ty:ty) => {{
        let f: $ty = $f;
        $crate::ffi::ossl::OSSL_DISPATCH {
            function_id: $id as ::std::ffi::c_int,
            // SAFETY: OpenSSL calls this pointer only through the
            // signature that the function id documents in
            // core_dispatch.h, which the given type spells out;
            // transmuting between function pointer types keeps the address.
            function: Some(unsafe { ::std::mem::transmute::<$ty, unsafe extern "C" fn()>(f) }),
        }
    }};
}

pub const DISPATCH_END: ossl::OSSL_DISPATCH = ossl::OSSL_DISPATCH { function_id: 0, function: None };

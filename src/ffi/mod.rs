//! Generated declarations (see build.rs). Only the FFI edges use these.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]

pub mod httpd {
    include!(concat!(env!("OUT_DIR"), "/httpd.rs"));
}

pub mod ossl {
    include!(concat!(env!("OUT_DIR"), "/ossl.rs"));
}

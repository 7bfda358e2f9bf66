mod ffi;
pub mod pkcs11;

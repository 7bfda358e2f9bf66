mod ffi;
pub mod pkcs11;
pub mod tls;
mod httpd;
pub mod keytool;
pub mod keyservice;

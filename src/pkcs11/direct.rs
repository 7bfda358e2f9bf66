//! Private-key operations in one call each: C_SignInit + C_Sign, or
//! C_DecryptInit + C_Decrypt, with an output buffer large enough for any
//! key TLS uses.
//!
//! cryptoki 0.12's `Session::sign` and `Session::decrypt` first ask the
//! token for the output size (a call with a NULL buffer), then call again:
//! three PKCS#11 calls per handshake where two do, and with a network HSM
//! each call may be a round trip (the benchmark shows the difference). A
//! release of cryptoki that takes a caller's buffer can replace this file.
//!
//! The function list is the library's own, from its `C_GetFunctionList`,
//! found in the already loaded library (`RTLD_NOLOAD`): the same functions
//! cryptoki calls, on the same sessions and key handles.

use std::ffi::{c_void, CString};
use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki_sys::{CKR_BUFFER_TOO_SMALL, CKR_OK, CK_FUNCTION_LIST, CK_MECHANISM, CK_RV, CK_ULONG};

/// Output buffer for one operation: an RSA-8192 signature or plaintext is
/// 1024 bytes; ECDSA P-521 is 132.
const OUT_LEN: usize = 1024;

pub struct Direct {
    sign_init: Init,
    sign: Op,
    decrypt_init: Init,
    decrypt: Op,
    lib: *mut c_void,
}

// SAFETY: the function pointers are the library's, valid while `lib`
// holds the library loaded; PKCS#11 functions are called from many
// threads by design (the library was initialized with OS locking).
unsafe impl Send for Direct {}
// SAFETY: as for Send; `Direct` has no interior mutability.
unsafe impl Sync for Direct {}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: `lib` is the handle our dlopen returned, closed once here.
        unsafe {
            libc::dlclose(self.lib);
        }
    }
}

type Init = unsafe extern "C" fn(cryptoki_sys::CK_SESSION_HANDLE, *mut CK_MECHANISM, cryptoki_sys::CK_OBJECT_HANDLE) -> CK_RV;
type Op = unsafe extern "C" fn(cryptoki_sys::CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV;

impl Direct {
    /// The function list of `library`, which cryptoki has loaded already.
    /// None when it cannot be had; the caller then uses cryptoki's calls.
    pub fn open(library: &Path) -> Option<Direct> {
        let path = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(library.as_os_str())).ok()?;
        // SAFETY: a valid C string; RTLD_NOLOAD only takes another reference
        // to a library that is loaded already, it runs no initializers.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if lib.is_null() {
            return None;
        }
        // Closes the handle again on every way out.
        struct Handle(*mut c_void);
        impl Drop for Handle {
            fn drop(&mut self) {
                // SAFETY: the handle our dlopen returned, closed once here.
                unsafe {
                    libc::dlclose(self.0);
                }
            }
        }
        let handle = Handle(lib);
        // SAFETY: `lib` is a live handle, the name a C string literal.
        let sym = unsafe { libc::dlsym(lib, c"C_GetFunctionList".as_ptr()) };
        if sym.is_null() {
            return None;
        }
        // SAFETY: PKCS#11 defines C_GetFunctionList with exactly this type.
        let get: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV = unsafe { std::mem::transmute(sym) };
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the library is initialized.
        if unsafe { get(&mut list) } != CKR_OK || list.is_null() {
            return None;
        }
        // SAFETY: non-null, owned by the library and valid while it is loaded.
        let l = unsafe { &*list };
        let direct = Direct {
            sign_init: l.C_SignInit?,
            sign: l.C_Sign?,
            decrypt_init: l.C_DecryptInit?,
            decrypt: l.C_Decrypt?,
            lib,
        };
        // The handle now belongs to `direct`.
        std::mem::forget(handle);
        Some(direct)
    }

    pub fn sign(&self, s: &Session, mech: &Mechanism, key: ObjectHandle, data: &[u8]) -> Result<Vec<u8>, CkError> {
        self.run(s, mech, key, data, (self.sign_init, Function::SignInit), (self.sign, Function::Sign))
    }

    pub fn decrypt(&self, s: &Session, mech: &Mechanism, key: ObjectHandle, data: &[u8]) -> Result<Vec<u8>, CkError> {
        self.run(s, mech, key, data, (self.decrypt_init, Function::DecryptInit), (self.decrypt, Function::Decrypt))
    }

    fn run(&self, s: &Session, mech: &Mechanism, key: ObjectHandle, data: &[u8], init: (Init, Function), op: (Op, Function)) -> Result<Vec<u8>, CkError> {
        let mut ck_mech: CK_MECHANISM = mech.into();
        // SAFETY: a live session and key handle of this library; ck_mech
        // and the parameters it points into (`mech`) outlive the call.
        let rv = unsafe { (init.0)(s.handle(), &mut ck_mech, key.handle()) };
        Rv::from(rv).into_result(init.1)?;
        let mut out = vec![0u8; OUT_LEN];
        let data_len = CK_ULONG::try_from(data.len()).map_err(|_| CkError::InvalidValue)?;
        let mut resized = false;
        loop {
            let mut len = out.len() as CK_ULONG;
            // SAFETY: `data` is read-only input despite the *mut in the C
            // signature (PKCS#11 never writes it); `out` has `len` writable
            // bytes and `len` is a valid in/out pointer.
            let rv = unsafe { (op.0)(s.handle(), data.as_ptr() as *mut u8, data_len, out.as_mut_ptr(), &mut len) };
            let len = usize::try_from(len).map_err(|_| CkError::InvalidValue)?;
            // Too small keeps the operation active and says how much is
            // needed (no key TLS uses gets here).
            if rv == CKR_BUFFER_TOO_SMALL && len > out.len() && len <= 1 << 16 && !resized {
                resized = true;
                out.resize(len, 0);
                continue;
            }
            Rv::from(rv).into_result(op.1)?;
            out.truncate(len.min(out.len()));
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_list_of_a_loaded_library_is_found_and_an_unloaded_one_is_not() {
        let lib = Path::new("/usr/lib/softhsm/libsofthsm2.so");
        if !lib.exists() {
            eprintln!("SoftHSM2 not installed; scripts/install-deps.sh installs it");
            return;
        }
        let ctx = cryptoki::context::Pkcs11::new(lib).expect("load SoftHSM2");
        assert!(Direct::open(lib).is_some(), "SoftHSM2 is loaded but its function list was not found");
        drop(ctx);
        assert!(Direct::open(Path::new("/nonexistent/libnothing.so")).is_none());
    }
}

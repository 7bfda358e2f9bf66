//! The PKCS#11 calls where the token says how long its answer is:
//! private-key operations in one call each (C_SignInit + C_Sign, or
//! C_DecryptInit + C_Decrypt) into a buffer large enough for any key TLS
//! uses, and attribute reads with a maximum per attribute.
//!
//! cryptoki 0.12's `Session::sign` and `Session::decrypt` first ask the
//! token for the output size (a call with a NULL buffer), then call again:
//! three PKCS#11 calls per handshake where two do, and with a network HSM
//! each call may be a round trip (the benchmark shows the difference).
//!
//! cryptoki also allocates whatever size the token names, for outputs and
//! for attributes (`Session::get_attributes`), and trusts the length the
//! token returns: a broken or hostile token that claims 4 GiB makes the
//! process allocate (and write) 4 GiB. Here no buffer is ever sized by the
//! token: an answer larger than the largest the module can use is an
//! error that names the function or attribute and the size claimed.
//!
//! The function list is the library's own, from its `C_GetFunctionList`,
//! found in the already loaded library (`RTLD_NOLOAD`): the same functions
//! cryptoki calls, on the same sessions and object handles.

use std::ffi::{c_void, CString};
use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL, CKR_OK, CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_MECHANISM,
    CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_ULONG, CK_UNAVAILABLE_INFORMATION,
};

use super::token::ck_error_text;

/// Output buffer for one operation: an RSA-8192 signature or plaintext is
/// 1024 bytes (the largest modulus the module accepts); ECDSA P-521 is 132.
/// A token asking for more is refused rather than given a larger buffer:
/// no key the module serves needs one.
pub const OUT_LEN: usize = 1024;

/// The most bytes an attribute may have: the modulus and exponent of
/// RSA-8192 and the EC values (a P-521 point is 133 bytes, 136 as DER)
/// are at most 1 KiB; labels and ids 4 KiB.
fn max_len(ty: AttributeType) -> usize {
    match ty {
        AttributeType::Modulus | AttributeType::PublicExponent | AttributeType::EcParams | AttributeType::EcPoint => 1024,
        _ => 4096,
    }
}

pub struct Direct {
    sign_init: Init,
    sign: Op,
    decrypt_init: Init,
    decrypt: Op,
    get_attribute_value: GetAttr,
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

type Init = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV;
type Op = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV;
type GetAttr = unsafe extern "C" fn(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG) -> CK_RV;

/// Whether an operation that failed with `e` may have left its operation
/// active on the session (CKR_BUFFER_TOO_SMALL keeps it active, by the
/// standard) or the session in a state nobody can vouch for (an answer
/// that did not fit its buffer): that session must be closed, not reused.
pub fn spoils_session(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::BufferTooSmall, _) | CkError::InvalidValue)
}

impl Direct {
    /// The function list of `library`, which cryptoki has loaded already.
    /// The error says what is missing.
    pub fn open(library: &Path) -> Result<Direct, String> {
        let shown = library.display();
        let path =
            CString::new(std::os::unix::ffi::OsStrExt::as_bytes(library.as_os_str())).map_err(|_| format!("{shown}: a NUL byte in the path"))?;
        // SAFETY: a valid C string; RTLD_NOLOAD only takes another reference
        // to a library that is loaded already, it runs no initializers.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if lib.is_null() {
            return Err(format!("{shown} is not loaded in this process"));
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
            return Err(format!("{shown} exports no C_GetFunctionList"));
        }
        // SAFETY: PKCS#11 defines C_GetFunctionList with exactly this type.
        let get: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV = unsafe { std::mem::transmute(sym) };
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; C_GetFunctionList may be called
        // before C_Initialize.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!("{shown}: C_GetFunctionList returned {rv:#x}"));
        }
        // SAFETY: non-null, owned by the library and valid while it is loaded.
        let l = unsafe { &*list };
        let missing = |name: &str| format!("{shown}: its function list has no {name}");
        let direct = Direct {
            sign_init: l.C_SignInit.ok_or_else(|| missing("C_SignInit"))?,
            sign: l.C_Sign.ok_or_else(|| missing("C_Sign"))?,
            decrypt_init: l.C_DecryptInit.ok_or_else(|| missing("C_DecryptInit"))?,
            decrypt: l.C_Decrypt.ok_or_else(|| missing("C_Decrypt"))?,
            get_attribute_value: l.C_GetAttributeValue.ok_or_else(|| missing("C_GetAttributeValue"))?,
            lib,
        };
        // The handle now belongs to `direct`.
        std::mem::forget(handle);
        Ok(direct)
    }

    pub fn sign(&self, s: &Session, mech: &Mechanism, key: ObjectHandle, data: &[u8]) -> Result<Vec<u8>, CkError> {
        self.run(s, mech, key, data, (self.sign_init, Function::SignInit), (self.sign, Function::Sign))
    }

    pub fn decrypt(&self, s: &Session, mech: &Mechanism, key: ObjectHandle, data: &[u8]) -> Result<Vec<u8>, CkError> {
        self.run(s, mech, key, data, (self.decrypt_init, Function::DecryptInit), (self.decrypt, Function::Decrypt))
    }

    /// One operation into an `OUT_LEN` buffer. A token that asks for more
    /// (CKR_BUFFER_TOO_SMALL) or claims to have written more (CKR_OK with
    /// a larger length) fails it: the error is logged here, with the size
    /// the token named, and returned as CKR_BUFFER_TOO_SMALL resp.
    /// `InvalidValue`, both [`spoils_session`].
    fn run(
        &self,
        s: &Session,
        mech: &Mechanism,
        key: ObjectHandle,
        data: &[u8],
        init: (Init, Function),
        op: (Op, Function),
    ) -> Result<Vec<u8>, CkError> {
        let mut ck_mech: CK_MECHANISM = mech.into();
        // SAFETY: a live session and key handle of this library; ck_mech
        // and the parameters it points into (`mech`) outlive the call.
        let rv = unsafe { (init.0)(s.handle(), &mut ck_mech, key.handle()) };
        Rv::from(rv).into_result(init.1)?;
        // Wiped when dropped: on a decrypt it may hold plaintext, also on
        // the error paths below.
        let mut out = zeroize::Zeroizing::new(vec![0u8; OUT_LEN]);
        let data_len = CK_ULONG::try_from(data.len()).map_err(|_| CkError::InvalidValue)?;
        let mut len = OUT_LEN as CK_ULONG;
        // SAFETY: `data` is read-only input despite the *mut in the C
        // signature (PKCS#11 never writes it); `out` has `len` writable
        // bytes and `len` is a valid in/out pointer.
        let rv = unsafe { (op.0)(s.handle(), data.as_ptr() as *mut u8, data_len, out.as_mut_ptr(), &mut len) };
        if rv == CKR_BUFFER_TOO_SMALL {
            log::error!(
                "HSM00470: PKCS#11 token fault: {} asked for a {len}-byte output buffer; no key mod_hsm_ssl serves needs more than {OUT_LEN} bytes \
                 (a token or library bug); the operation fails and its session is closed",
                c_name(op.1)
            );
        }
        Rv::from(rv).into_result(op.1)?;
        if len > OUT_LEN as CK_ULONG {
            log::error!(
                "HSM00471: PKCS#11 token fault: {} returned CKR_OK claiming {len} bytes of output in a {OUT_LEN}-byte buffer (a token or library bug); \
                 the operation fails and its session is closed",
                c_name(op.1)
            );
            return Err(CkError::InvalidValue);
        }
        Ok(out[..len as usize].to_vec())
    }

    /// The value of attribute `ty` of object `h`, read with at most
    /// [`max_len`] bytes of buffer: None if the object has no such
    /// attribute or the token will not reveal it; an error naming the
    /// attribute if reading fails or the token claims a longer value.
    pub fn attribute(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<Option<Vec<u8>>, AttrError> {
        let max = max_len(ty);
        let mut a = CK_ATTRIBUTE { type_: ty.into(), pValue: std::ptr::null_mut(), ulValueLen: 0 };
        // SAFETY: a live session and object handle of this library; `a` is
        // one attribute with a NULL value pointer (a size query).
        let rv = unsafe { (self.get_attribute_value)(s.handle(), h.handle(), &mut a, 1) };
        match rv {
            CKR_OK => {}
            CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID => return Ok(None),
            other => {
                return Err(AttrError::Token(ty, Rv::from(other).into_result(Function::GetAttributeValue).err().unwrap_or(CkError::InvalidValue)))
            }
        }
        if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            return Ok(None);
        }
        let claimed = a.ulValueLen;
        if claimed > max as CK_ULONG {
            return Err(AttrError::TooLong { ty, claimed, max });
        }
        let mut buf = vec![0u8; claimed as usize];
        a.pValue = buf.as_mut_ptr().cast();
        // SAFETY: as above; pValue has ulValueLen (= buf.len()) writable bytes.
        let rv = unsafe { (self.get_attribute_value)(s.handle(), h.handle(), &mut a, 1) };
        match rv {
            CKR_OK => {}
            CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID => return Ok(None),
            other => {
                return Err(AttrError::Token(ty, Rv::from(other).into_result(Function::GetAttributeValue).err().unwrap_or(CkError::InvalidValue)))
            }
        }
        if a.ulValueLen > claimed {
            return Err(AttrError::Overrun { ty, got: a.ulValueLen, claimed });
        }
        buf.truncate(a.ulValueLen as usize);
        Ok(Some(buf))
    }
}

/// "C_Sign" for `Function::Sign` (whose Display is "Function::Sign").
fn c_name(f: Function) -> String {
    format!("C_{f:?}")
}

/// Why an attribute could not be read.
#[derive(Debug)]
pub enum AttrError {
    /// C_GetAttributeValue failed (the code says whether the token, the
    /// session or the handle is at fault).
    Token(AttributeType, CkError),
    /// The token claims a value longer than any key the module serves has.
    TooLong { ty: AttributeType, claimed: CK_ULONG, max: usize },
    /// The token wrote more than the buffer it was given.
    Overrun { ty: AttributeType, got: CK_ULONG, claimed: CK_ULONG },
}

impl AttrError {
    /// The error as a cryptoki error, for callers that classify by CKR
    /// code: a token that lies about lengths is `InvalidValue`, which
    /// closes the session it used ([`spoils_session`]).
    pub fn into_ck(self) -> CkError {
        match self {
            AttrError::Token(_, e) => e,
            AttrError::TooLong { .. } | AttrError::Overrun { .. } => CkError::InvalidValue,
        }
    }
}

impl std::fmt::Display for AttrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrError::Token(ty, e) => write!(f, "reading {ty}: {}", ck_error_text(e)),
            AttrError::TooLong { ty, claimed, max } => write!(
                f,
                "the token claims {ty} is {claimed} bytes long; mod_hsm_ssl reads at most {max} (a token or library bug, or not a key it serves)"
            ),
            AttrError::Overrun { ty, got, claimed } => {
                write!(f, "the token returned {got} bytes of {ty} in a {claimed}-byte buffer (a token or library bug)")
            }
        }
    }
}

impl From<AttrError> for String {
    fn from(e: AttrError) -> String {
        e.to_string()
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
        assert!(Direct::open(lib).is_ok(), "SoftHSM2 is loaded but its function list was not found");
        drop(ctx);
        let e = Direct::open(Path::new("/nonexistent/libnothing.so")).err().unwrap();
        assert_eq!(e, "/nonexistent/libnothing.so is not loaded in this process");
    }
}

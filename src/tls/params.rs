//! Small safe helpers over OSSL_PARAM arrays, used by the provider's
//! get/set functions. Every function takes the raw array OpenSSL gave us;
//! the callers' SAFETY comments state why those pointers are valid.

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::ptr;

use crate::ffi::ossl::{self, OSSL_PARAM};

/// `OSSL_PARAM_UNMODIFIED` (a macro bindgen cannot see).
const UNMODIFIED: usize = usize::MAX;

/// A descriptor entry for gettable/settable lists.
pub const fn def(key: &'static [u8], data_type: u32) -> OSSL_PARAM {
    OSSL_PARAM { key: key.as_ptr() as *const c_char, data_type: data_type as c_uint, data: ptr::null_mut(), data_size: 0, return_size: UNMODIFIED }
}

pub const fn end() -> OSSL_PARAM {
    OSSL_PARAM { key: ptr::null(), data_type: 0, data: ptr::null_mut(), data_size: 0, return_size: 0 }
}

/// A static list of descriptors. OpenSSL only reads them.
pub struct ParamList<const N: usize>(pub [OSSL_PARAM; N]);
// SAFETY: the lists hold pointers to 'static byte strings and are never
// written after construction; sharing them between threads is read-only.
unsafe impl<const N: usize> Sync for ParamList<N> {}

impl<const N: usize> ParamList<N> {
    pub fn as_ptr(&'static self) -> *const OSSL_PARAM {
        self.0.as_ptr()
    }
}

/// The parameter named `key` in a caller-owned array being filled.
///
/// # Safety
/// `params` is null or a valid OSSL_PARAM array terminated by an END entry.
pub unsafe fn locate(params: *mut OSSL_PARAM, key: &[u8]) -> Option<*mut OSSL_PARAM> {
    if params.is_null() {
        return None;
    }
    // SAFETY: per this function's contract; key is NUL-terminated.
    let p = unsafe { ossl::OSSL_PARAM_locate(params, key.as_ptr() as *const c_char) };
    (!p.is_null()).then_some(p)
}

/// # Safety
/// As [`locate`].
pub unsafe fn locate_const(params: *const OSSL_PARAM, key: &[u8]) -> Option<*const OSSL_PARAM> {
    if params.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    let p = unsafe { ossl::OSSL_PARAM_locate_const(params, key.as_ptr() as *const c_char) };
    (!p.is_null()).then_some(p)
}

/// Sets an integer parameter if requested; false only on a failed set.
///
/// # Safety
/// As [`locate`].
pub unsafe fn set_int(params: *mut OSSL_PARAM, key: &[u8], v: c_int) -> bool {
    // SAFETY: per this function's contract.
    match unsafe { locate(params, key) } {
        // SAFETY: p points into the caller's valid array.
        Some(p) => unsafe { ossl::OSSL_PARAM_set_int(p, v) == 1 },
        None => true,
    }
}

/// # Safety
/// As [`locate`]; `v` is NUL-terminated.
pub unsafe fn set_utf8(params: *mut OSSL_PARAM, key: &[u8], v: &CStr) -> bool {
    // SAFETY: per this function's contract.
    match unsafe { locate(params, key) } {
        // SAFETY: p points into the caller's valid array; v is NUL-terminated.
        Some(p) => unsafe { ossl::OSSL_PARAM_set_utf8_string(p, v.as_ptr()) == 1 },
        None => true,
    }
}

/// # Safety
/// As [`locate`].
pub unsafe fn set_octets(params: *mut OSSL_PARAM, key: &[u8], v: &[u8]) -> bool {
    // SAFETY: per this function's contract; v is valid for v.len() bytes.
    match unsafe { locate(params, key) } {
        // SAFETY: p points into the caller's valid array; v is a valid slice.
        Some(p) => unsafe { ossl::OSSL_PARAM_set_octet_string(p, v.as_ptr().cast(), v.len()) == 1 },
        None => true,
    }
}

/// Sets a big-endian unsigned number as an OpenSSL BIGNUM parameter.
///
/// # Safety
/// As [`locate`].
pub unsafe fn set_bn(params: *mut OSSL_PARAM, key: &[u8], big_endian: &[u8]) -> bool {
    // SAFETY: per this function's contract; the BIGNUM is created and freed here.
    unsafe {
        let Some(p) = locate(params, key) else { return true };
        let bn = openssl_sys::BN_bin2bn(big_endian.as_ptr(), big_endian.len() as c_int, ptr::null_mut());
        if bn.is_null() {
            return false;
        }
        let ok = ossl::OSSL_PARAM_set_BN(p, bn.cast()) == 1;
        openssl_sys::BN_free(bn);
        ok
    }
}

/// Reads an integer parameter (any integer type OpenSSL can convert).
///
/// # Safety
/// `p` points to a valid OSSL_PARAM.
pub unsafe fn get_int(p: *const OSSL_PARAM) -> Option<c_int> {
    let mut v: c_int = 0;
    // SAFETY: per this function's contract.
    (unsafe { ossl::OSSL_PARAM_get_int(p, &mut v) } == 1).then_some(v)
}

/// # Safety
/// `p` points to a valid OSSL_PARAM.
pub unsafe fn get_uint(p: *const OSSL_PARAM) -> Option<c_uint> {
    let mut v: c_uint = 0;
    // SAFETY: per this function's contract.
    (unsafe { ossl::OSSL_PARAM_get_uint(p, &mut v) } == 1).then_some(v)
}

/// A UTF-8 parameter as an owned String.
///
/// # Safety
/// `p` points to a valid OSSL_PARAM.
pub unsafe fn get_utf8(p: *const OSSL_PARAM) -> Option<String> {
    let mut s: *const c_char = ptr::null();
    // SAFETY: per this function's contract; OpenSSL returns a pointer into p.
    unsafe {
        if (*p).data_type != ossl::OSSL_PARAM_UTF8_STRING || ossl::OSSL_PARAM_get_utf8_string_ptr(p, &mut s) != 1 || s.is_null() {
            return None;
        }
        Some(CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// An octet-string parameter.
///
/// # Safety
/// `p` points to a valid OSSL_PARAM.
pub unsafe fn get_octets(p: *const OSSL_PARAM) -> Option<Vec<u8>> {
    let mut data: *const std::ffi::c_void = ptr::null();
    let mut len: usize = 0;
    // SAFETY: per this function's contract; data/len describe memory in p.
    unsafe {
        if ossl::OSSL_PARAM_get_octet_string_ptr(p, &mut data, &mut len) != 1 {
            return None;
        }
        if len == 0 {
            return Some(Vec::new());
        }
        Some(std::slice::from_raw_parts(data as *const u8, len).to_vec())
    }
}

/// A BIGNUM parameter as big-endian bytes.
///
/// # Safety
/// `p` points to a valid OSSL_PARAM.
pub unsafe fn get_bn(p: *const OSSL_PARAM) -> Option<Vec<u8>> {
    let mut bn: *mut ossl::BIGNUM = ptr::null_mut();
    // SAFETY: per this function's contract; the BIGNUM is allocated by
    // OpenSSL here and freed below.
    unsafe {
        if ossl::OSSL_PARAM_get_BN(p, &mut bn) != 1 || bn.is_null() {
            return None;
        }
        let bits = openssl_sys::BN_num_bits(bn.cast());
        let mut out = vec![0u8; ((bits + 7) / 8) as usize];
        openssl_sys::BN_bn2bin(bn.cast(), out.as_mut_ptr());
        openssl_sys::BN_free(bn.cast());
        Some(out)
    }
}

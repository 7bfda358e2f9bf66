//! HSM-backed keys as OpenSSL's KEYMGMT sees them.
//!
//! A key object ("keydata") holds the public half, which OpenSSL needs to
//! match the key with its certificate and to size signatures, and, for keys
//! that came from the token, the [`KeyRef`] that operations go to. The
//! private half never exists here. Public-only keydata also occurs: OpenSSL
//! imports a certificate's public key into our KEYMGMT to compare the two.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::dispatch;
use crate::ffi::ossl::{self, OSSL_CALLBACK, OSSL_PARAM};
use crate::ffi::{guard, DISPATCH_END};
use crate::pkcs11::token::{KeyRef, PublicKey};
use crate::tls::params::{self, def, end, ParamList};
use crate::tls::sigcheck::SigCheck;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rsa,
    Ec,
}

/// A named curve mod_hsm_ssl can serve.
#[derive(Debug, PartialEq, Eq)]
pub struct Curve {
    pub group: &'static CStr,
    aliases: &'static [&'static str],
    /// DER of the curve OID, as in CKA_EC_PARAMS.
    oid_der: &'static [u8],
    pub bits: u32,
    pub field_bytes: usize,
    /// Largest DER ECDSA-Sig-Value.
    pub max_sig: usize,
}

pub static CURVES: [Curve; 3] = [
    Curve {
        group: c"prime256v1",
        aliases: &["prime256v1", "P-256", "secp256r1"],
        oid_der: &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        bits: 256,
        field_bytes: 32,
        max_sig: 72,
    },
    Curve {
        group: c"secp384r1",
        aliases: &["secp384r1", "P-384"],
        oid_der: &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        bits: 384,
        field_bytes: 48,
        max_sig: 104,
    },
    Curve {
        group: c"secp521r1",
        aliases: &["secp521r1", "P-521"],
        oid_der: &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        bits: 521,
        field_bytes: 66,
        max_sig: 139,
    },
];

fn curve_by_oid(der: &[u8]) -> Option<&'static Curve> {
    CURVES.iter().find(|c| c.oid_der == der)
}

fn curve_by_name(name: &str) -> Option<&'static Curve> {
    CURVES.iter().find(|c| c.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Public {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: &'static Curve, point: Vec<u8> },
}

impl Public {
    pub fn from_token(p: &PublicKey) -> Result<Public, String> {
        match p {
            PublicKey::Rsa { n, e } => Ok(Public::Rsa { n: strip(n), e: strip(e) }),
            PublicKey::Ec { params, point } => {
                let curve = curve_by_oid(params)
                    .ok_or_else(|| "the EC key is on a curve mod_hsm_ssl does not serve (supported: P-256, P-384, P-521)".to_string())?;
                Ok(Public::Ec { curve, point: point.clone() })
            }
        }
    }

    pub fn bits(&self) -> u32 {
        match self {
            Public::Rsa { n, .. } => match n.first() {
                Some(&b) => (n.len() as u32) * 8 - b.leading_zeros(),
                None => 0,
            },
            Public::Ec { curve, .. } => curve.bits,
        }
    }

    fn security_bits(&self) -> c_int {
        match self {
            // NIST SP 800-57 equivalences, as OpenSSL's BN_security_bits.
            Public::Rsa { .. } => match self.bits() {
                b if b >= 15360 => 256,
                b if b >= 7680 => 192,
                b if b >= 3072 => 128,
                b if b >= 2048 => 112,
                b if b >= 1024 => 80,
                _ => 0,
            },
            Public::Ec { curve, .. } => (curve.bits / 2) as c_int,
        }
    }

    pub fn max_sig_size(&self) -> usize {
        match self {
            Public::Rsa { n, .. } => n.len(),
            Public::Ec { curve, .. } => curve.max_sig,
        }
    }
}

fn strip(v: &[u8]) -> Vec<u8> {
    let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    v[first..].to_vec()
}

/// OpenSSL's "keydata" for our KEYMGMT.
pub struct KeyData {
    pub kind: Kind,
    pub public: Option<Public>,
    pub hsm: Option<Arc<KeyRef>>,
    /// For token keys: the public half as an OpenSSL key, which verifies
    /// every signature the token makes before it is sent.
    pub check: Option<Arc<SigCheck>>,
    uri: Option<CString>,
}

/// Name of the gettable parameter that marks an HSM-backed key (its value is
/// the key URI). mod_hsm_ssl checks it in mod_ssl's SSL_CTXs.
pub const URI_PARAM: &[u8] = b"hsm_ssl-key-uri\0";
/// Name of the import parameter that carries a pending [`KeyRef`].
const HANDLE_PARAM: &[u8] = b"hsm_ssl-key-handle\0";

/// Keys (with their signature check) handed from
/// [`super::provider::evp_pkey_for`] to `import`.
type Parked = (usize, Arc<KeyRef>, Arc<SigCheck>);
static PENDING: Mutex<Vec<Parked>> = Mutex::new(Vec::new());
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

pub fn park(key: Arc<KeyRef>, check: Arc<SigCheck>) -> usize {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PENDING.lock().push((n, key, check));
    n
}

fn unpark(n: usize) -> Option<(Arc<KeyRef>, Arc<SigCheck>)> {
    let mut p = PENDING.lock();
    let i = p.iter().position(|(k, _, _)| *k == n)?;
    let (_, key, check) = p.swap_remove(i);
    Some((key, check))
}

pub fn handle_param(n: &mut usize) -> [OSSL_PARAM; 2] {
    [
        OSSL_PARAM {
            key: HANDLE_PARAM.as_ptr() as *const c_char,
            data_type: ossl::OSSL_PARAM_UNSIGNED_INTEGER,
            data: (n as *mut usize).cast(),
            data_size: std::mem::size_of::<usize>(),
            return_size: usize::MAX,
        },
        end(),
    ]
}

/// # Safety
/// `p` is a keydata pointer this KEYMGMT created (or null).
pub unsafe fn keydata<'a>(p: *const c_void) -> Option<&'a KeyData> {
    // SAFETY: per this function's contract.
    unsafe { (p as *const KeyData).as_ref() }
}

unsafe fn keydata_mut<'a>(p: *mut c_void) -> Option<&'a mut KeyData> {
    // SAFETY: callers pass keydata this KEYMGMT created.
    unsafe { (p as *mut KeyData).as_mut() }
}

fn new_keydata(kind: Kind) -> *mut c_void {
    Box::into_raw(Box::new(KeyData { kind, public: None, hsm: None, check: None, uri: None })).cast()
}

unsafe extern "C" fn rsa_new(_provctx: *mut c_void) -> *mut c_void {
    guard("keymgmt new", ptr::null_mut(), || new_keydata(Kind::Rsa))
}

unsafe extern "C" fn ec_new(_provctx: *mut c_void) -> *mut c_void {
    guard("keymgmt new", ptr::null_mut(), || new_keydata(Kind::Ec))
}

unsafe extern "C" fn free(kd: *mut c_void) {
    guard("keymgmt free", (), || {
        if !kd.is_null() {
            // SAFETY: kd came from Box::into_raw in new_keydata/dup.
            drop(unsafe { Box::from_raw(kd as *mut KeyData) });
        }
    })
}

unsafe extern "C" fn dup(kd: *const c_void, _selection: c_int) -> *mut c_void {
    guard("keymgmt dup", ptr::null_mut(), || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT.
        let Some(k) = (unsafe { keydata(kd) }) else { return ptr::null_mut() };
        let copy = KeyData { kind: k.kind, public: k.public.clone(), hsm: k.hsm.clone(), check: k.check.clone(), uri: k.uri.clone() };
        Box::into_raw(Box::new(copy)).cast()
    })
}

const SEL_PRIVATE: c_int = ossl::OSSL_KEYMGMT_SELECT_PRIVATE_KEY as c_int;
const SEL_KEYPAIR: c_int = (ossl::OSSL_KEYMGMT_SELECT_PRIVATE_KEY | ossl::OSSL_KEYMGMT_SELECT_PUBLIC_KEY) as c_int;

unsafe extern "C" fn has(kd: *const c_void, selection: c_int) -> c_int {
    guard("keymgmt has", 0, || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT.
        let Some(k) = (unsafe { keydata(kd) }) else { return 0 };
        let mut ok = true;
        if selection & SEL_PRIVATE != 0 {
            ok &= k.hsm.is_some();
        }
        if selection & !SEL_PRIVATE != 0 {
            ok &= k.public.is_some();
        }
        ok as c_int
    })
}

unsafe extern "C" fn matches(kd1: *const c_void, kd2: *const c_void, selection: c_int) -> c_int {
    guard("keymgmt match", 0, || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT.
        let (Some(a), Some(b)) = (unsafe { keydata(kd1) }, unsafe { keydata(kd2) }) else { return 0 };
        if a.kind != b.kind {
            return 0;
        }
        if selection & SEL_KEYPAIR != 0 || selection & !SEL_KEYPAIR != 0 {
            return (a.public.is_some() && a.public == b.public) as c_int;
        }
        1
    })
}

unsafe extern "C" fn import(kd: *mut c_void, selection: c_int, params: *const OSSL_PARAM) -> c_int {
    guard("keymgmt import", 0, || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT and a valid array.
        let Some(k) = (unsafe { keydata_mut(kd) }) else { return 0 };
        // SAFETY: params is OpenSSL's valid END-terminated array.
        unsafe { import_into(k, selection, params) }.map_or_else(
            |e| {
                log::debug!("HSM00510: key import refused: {e}");
                0
            },
            |_| 1,
        )
    })
}

/// Makes `k` the parked token key `n` (taken out of the parking).
fn fill_from_handle(k: &mut KeyData, n: usize) -> Result<(), String> {
    let (key, check) = unpark(n).ok_or("unknown key handle")?;
    let public = Public::from_token(&key.public)?;
    let kind = match public {
        Public::Rsa { .. } => Kind::Rsa,
        Public::Ec { .. } => Kind::Ec,
    };
    if kind != k.kind {
        return Err("key type does not match the KEYMGMT".into());
    }
    k.uri = CString::new(key.uri_text.clone()).ok();
    k.public = Some(public);
    k.hsm = Some(key);
    k.check = Some(check);
    Ok(())
}

/// What the provider's STORE hands OpenSSL as an object reference for a
/// parked key: a tag and the parking number. OpenSSL gives it back to this
/// KEYMGMT's `load` (and only to this provider's KEYMGMT).
pub const REFERENCE_TAG: u64 = 0x6873_6d5f_7373_6c31; // "hsm_ssl1"
pub const REFERENCE_LEN: usize = 16;

pub fn reference(n: usize) -> [u8; REFERENCE_LEN] {
    let mut r = [0u8; REFERENCE_LEN];
    r[..8].copy_from_slice(&REFERENCE_TAG.to_ne_bytes());
    r[8..].copy_from_slice(&(n as u64).to_ne_bytes());
    r
}

/// The parking number in a reference made by [`reference`].
fn parked_number(r: &[u8]) -> Option<usize> {
    if r.len() != REFERENCE_LEN || r[..8] != REFERENCE_TAG.to_ne_bytes() {
        return None;
    }
    usize::try_from(u64::from_ne_bytes(r[8..].try_into().ok()?)).ok()
}

/// Removes a parked key that OpenSSL never loaded (the STORE's callback
/// failed before it reached `load`).
pub fn discard(n: usize) {
    let _ = unpark(n);
}

unsafe fn load_reference(kind: Kind, reference: *const c_void, size: usize) -> *mut c_void {
    if reference.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: OpenSSL passes the reference the STORE gave it, `size` bytes.
    let r = unsafe { std::slice::from_raw_parts(reference as *const u8, size) };
    let Some(n) = parked_number(r) else {
        log::debug!("HSM00511: key load refused: not a reference of this provider");
        return ptr::null_mut();
    };
    let kd = new_keydata(kind);
    // SAFETY: kd was just made by new_keydata.
    let Some(k) = (unsafe { keydata_mut(kd) }) else { return ptr::null_mut() };
    match fill_from_handle(k, n) {
        Ok(()) => kd,
        Err(e) => {
            log::debug!("HSM00512: key load refused: {e}");
            // SAFETY: kd came from new_keydata and is not shared.
            unsafe { free(kd) };
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn rsa_load(reference: *const c_void, size: usize) -> *mut c_void {
    // SAFETY: per OSSL_FUNC_keymgmt_load's contract.
    guard("keymgmt load", ptr::null_mut(), || unsafe { load_reference(Kind::Rsa, reference, size) })
}

unsafe extern "C" fn ec_load(reference: *const c_void, size: usize) -> *mut c_void {
    // SAFETY: per OSSL_FUNC_keymgmt_load's contract.
    guard("keymgmt load", ptr::null_mut(), || unsafe { load_reference(Kind::Ec, reference, size) })
}

unsafe fn import_into(k: &mut KeyData, selection: c_int, params: *const OSSL_PARAM) -> Result<(), String> {
    // SAFETY: params is a valid END-terminated array (this function's contract).
    unsafe {
        if let Some(p) = params::locate_const(params, HANDLE_PARAM) {
            let mut n: usize = 0;
            if ossl::OSSL_PARAM_get_size_t(p, &mut n) != 1 {
                return Err("bad key handle".into());
            }
            return fill_from_handle(k, n);
        }
        // Never accept a software private key: this provider only fronts
        // keys that stay in the token.
        for private in [&b"d\0"[..], b"priv\0", b"rsa-factor1\0"] {
            if params::locate_const(params, private).is_some() {
                return Err("private key material offered to the HSM key manager; refused".into());
            }
        }
        if selection & ossl::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int == 0 {
            return Ok(());
        }
        k.public = Some(match k.kind {
            Kind::Rsa => {
                let n = params::locate_const(params, ossl::OSSL_PKEY_PARAM_RSA_N).and_then(|p| params::get_bn(p));
                let e = params::locate_const(params, ossl::OSSL_PKEY_PARAM_RSA_E).and_then(|p| params::get_bn(p));
                match (n, e) {
                    (Some(n), Some(e)) => Public::Rsa { n, e },
                    _ => return Err("RSA public key without n and e".into()),
                }
            }
            Kind::Ec => {
                let group = params::locate_const(params, ossl::OSSL_PKEY_PARAM_GROUP_NAME)
                    .and_then(|p| params::get_utf8(p))
                    .ok_or("EC key without a named group")?;
                let curve = curve_by_name(&group).ok_or_else(|| format!("curve {group} not supported"))?;
                let point = params::locate_const(params, ossl::OSSL_PKEY_PARAM_PUB_KEY)
                    .and_then(|p| params::get_octets(p))
                    .ok_or("EC key without a public point")?;
                Public::Ec { curve, point }
            }
        });
        Ok(())
    }
}

unsafe extern "C" fn export(kd: *mut c_void, selection: c_int, cb: OSSL_CALLBACK, cbarg: *mut c_void) -> c_int {
    guard("keymgmt export", 0, || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT and a callback.
        let Some(k) = (unsafe { keydata(kd) }) else { return 0 };
        let (Some(public), Some(cb)) = (&k.public, cb) else { return 0 };
        if selection & ossl::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int == 0 && selection & SEL_PRIVATE != 0 {
            // Only the private half asked for: it cannot leave the token.
            return 0;
        }
        // SAFETY: the builder and the array it makes are owned here and
        // freed before returning; the callback gets a valid array.
        unsafe {
            let bld = ossl::OSSL_PARAM_BLD_new();
            if bld.is_null() {
                return 0;
            }
            let mut bns = Vec::new();
            let ok = match public {
                Public::Rsa { n, e } => [(ossl::OSSL_PKEY_PARAM_RSA_N, n), (ossl::OSSL_PKEY_PARAM_RSA_E, e)].iter().all(|(key, v)| {
                    let bn = openssl_sys::BN_bin2bn(v.as_ptr(), v.len() as c_int, ptr::null_mut());
                    bns.push(bn);
                    !bn.is_null() && ossl::OSSL_PARAM_BLD_push_BN(bld, key.as_ptr() as *const c_char, bn.cast()) == 1
                }),
                Public::Ec { curve, point } => {
                    ossl::OSSL_PARAM_BLD_push_utf8_string(bld, ossl::OSSL_PKEY_PARAM_GROUP_NAME.as_ptr() as *const c_char, curve.group.as_ptr(), 0)
                        == 1
                        && ossl::OSSL_PARAM_BLD_push_octet_string(
                            bld,
                            ossl::OSSL_PKEY_PARAM_PUB_KEY.as_ptr() as *const c_char,
                            point.as_ptr().cast(),
                            point.len(),
                        ) == 1
                }
            };
            let mut ret = 0;
            if ok {
                let arr = ossl::OSSL_PARAM_BLD_to_param(bld);
                if !arr.is_null() {
                    ret = cb(arr, cbarg);
                    ossl::OSSL_PARAM_free(arr);
                }
            }
            ossl::OSSL_PARAM_BLD_free(bld);
            for bn in bns {
                openssl_sys::BN_free(bn);
            }
            ret
        }
    })
}

static RSA_TYPES: ParamList<3> = ParamList([
    def(ossl::OSSL_PKEY_PARAM_RSA_N, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_RSA_E, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    end(),
]);
static EC_TYPES: ParamList<3> = ParamList([
    def(ossl::OSSL_PKEY_PARAM_GROUP_NAME, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_PKEY_PARAM_PUB_KEY, ossl::OSSL_PARAM_OCTET_STRING),
    end(),
]);

unsafe extern "C" fn rsa_types(_selection: c_int) -> *const OSSL_PARAM {
    RSA_TYPES.as_ptr()
}
unsafe extern "C" fn ec_types(_selection: c_int) -> *const OSSL_PARAM {
    EC_TYPES.as_ptr()
}

static RSA_GETTABLE: ParamList<8> = ParamList([
    def(ossl::OSSL_PKEY_PARAM_BITS, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_SECURITY_BITS, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_MAX_SIZE, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_DEFAULT_DIGEST, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_PKEY_PARAM_RSA_N, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_RSA_E, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    def(URI_PARAM, ossl::OSSL_PARAM_UTF8_STRING),
    end(),
]);
static EC_GETTABLE: ParamList<10> = ParamList([
    def(ossl::OSSL_PKEY_PARAM_BITS, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_SECURITY_BITS, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_MAX_SIZE, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_PKEY_PARAM_DEFAULT_DIGEST, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_PKEY_PARAM_GROUP_NAME, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_PKEY_PARAM_PUB_KEY, ossl::OSSL_PARAM_OCTET_STRING),
    def(ossl::OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, ossl::OSSL_PARAM_OCTET_STRING),
    def(ossl::OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, ossl::OSSL_PARAM_UTF8_STRING),
    def(URI_PARAM, ossl::OSSL_PARAM_UTF8_STRING),
    end(),
]);

unsafe extern "C" fn rsa_gettable(_provctx: *mut c_void) -> *const OSSL_PARAM {
    RSA_GETTABLE.as_ptr()
}
unsafe extern "C" fn ec_gettable(_provctx: *mut c_void) -> *const OSSL_PARAM {
    EC_GETTABLE.as_ptr()
}

unsafe extern "C" fn get_params(kd: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
    guard("keymgmt get_params", 0, || {
        // SAFETY: OpenSSL passes keydata of this KEYMGMT and a valid array.
        let Some(k) = (unsafe { keydata(kd) }) else { return 0 };
        let Some(public) = &k.public else { return 0 };
        // SAFETY: params is OpenSSL's valid END-terminated array.
        let ok = unsafe {
            params::set_int(params, ossl::OSSL_PKEY_PARAM_BITS, public.bits() as c_int)
                && params::set_int(params, ossl::OSSL_PKEY_PARAM_SECURITY_BITS, public.security_bits())
                && params::set_int(params, ossl::OSSL_PKEY_PARAM_MAX_SIZE, public.max_sig_size() as c_int)
                && params::set_utf8(params, ossl::OSSL_PKEY_PARAM_DEFAULT_DIGEST, c"SHA256")
                && match public {
                    Public::Rsa { n, e } => {
                        params::set_bn(params, ossl::OSSL_PKEY_PARAM_RSA_N, n) && params::set_bn(params, ossl::OSSL_PKEY_PARAM_RSA_E, e)
                    }
                    Public::Ec { curve, point } => {
                        params::set_utf8(params, ossl::OSSL_PKEY_PARAM_GROUP_NAME, curve.group)
                            && params::set_octets(params, ossl::OSSL_PKEY_PARAM_PUB_KEY, point)
                            && params::set_octets(params, ossl::OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point)
                            && params::set_utf8(params, ossl::OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, c"uncompressed")
                    }
                }
                && match &k.uri {
                    Some(u) => params::set_utf8(params, URI_PARAM, u),
                    None => true,
                }
        };
        ok as c_int
    })
}

/// Operation names unique to this provider, so that OpenSSL always pairs
/// our keys with our operations (never exports them to another provider).
pub const RSA_SIG_NAME: &CStr = c"HSMSSL-RSA-SIG";
pub const RSA_ENC_NAME: &CStr = c"HSMSSL-RSA-ENC";
pub const ECDSA_NAME: &CStr = c"HSMSSL-ECDSA";

unsafe extern "C" fn rsa_op_name(op: c_int) -> *const c_char {
    match op as u32 {
        ossl::OSSL_OP_SIGNATURE => RSA_SIG_NAME.as_ptr(),
        ossl::OSSL_OP_ASYM_CIPHER => RSA_ENC_NAME.as_ptr(),
        _ => ptr::null(),
    }
}

unsafe extern "C" fn ec_op_name(op: c_int) -> *const c_char {
    match op as u32 {
        ossl::OSSL_OP_SIGNATURE => ECDSA_NAME.as_ptr(),
        _ => ptr::null(),
    }
}

macro_rules! keymgmt_table {
    ($new:expr, $load:expr, $types:expr, $gettable:expr, $opname:expr) => {
        [
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_NEW, $new, ossl::OSSL_FUNC_keymgmt_new_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_LOAD, $load, ossl::OSSL_FUNC_keymgmt_load_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_FREE, free, ossl::OSSL_FUNC_keymgmt_free_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_DUP, dup, ossl::OSSL_FUNC_keymgmt_dup_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_HAS, has, ossl::OSSL_FUNC_keymgmt_has_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_MATCH, matches, ossl::OSSL_FUNC_keymgmt_match_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_IMPORT, import, ossl::OSSL_FUNC_keymgmt_import_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_IMPORT_TYPES, $types, ossl::OSSL_FUNC_keymgmt_import_types_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_EXPORT, export, ossl::OSSL_FUNC_keymgmt_export_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_EXPORT_TYPES, $types, ossl::OSSL_FUNC_keymgmt_export_types_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_GET_PARAMS, get_params, ossl::OSSL_FUNC_keymgmt_get_params_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, $gettable, ossl::OSSL_FUNC_keymgmt_gettable_params_fn),
            dispatch!(ossl::OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, $opname, ossl::OSSL_FUNC_keymgmt_query_operation_name_fn),
            DISPATCH_END,
        ]
    };
}

pub static RSA_KEYMGMT: [ossl::OSSL_DISPATCH; 14] = keymgmt_table!(rsa_new, rsa_load, rsa_types, rsa_gettable, rsa_op_name);
pub static EC_KEYMGMT: [ossl::OSSL_DISPATCH; 14] = keymgmt_table!(ec_new, ec_load, ec_types, ec_gettable, ec_op_name);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bits_and_sizes_come_from_the_modulus() {
        let mut n = vec![0u8; 256];
        n[1] = 0xc1;
        let p = Public::from_token(&PublicKey::Rsa { n: n.clone(), e: vec![1, 0, 1] }).unwrap();
        assert_eq!(p.bits(), 2040);
        assert_eq!(p.max_sig_size(), 255);
        n[0] = 0x80;
        let p = Public::Rsa { n, e: vec![1, 0, 1] };
        assert_eq!((p.bits(), p.security_bits()), (2048, 112));
    }

    #[test]
    fn references_carry_their_number_and_nothing_else_passes() {
        let r = reference(42);
        assert_eq!(parked_number(&r), Some(42));
        assert_eq!(parked_number(&r[..15]), None);
        let mut other = r;
        other[0] ^= 1;
        assert_eq!(parked_number(&other), None);
        assert_eq!(parked_number(&[0u8; 8]), None);
    }

    #[test]
    fn curves_are_found_by_oid_and_name() {
        let p256 = curve_by_oid(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]).unwrap();
        assert_eq!(p256.group, c"prime256v1");
        assert_eq!(curve_by_name("P-384").unwrap().bits, 384);
        assert!(curve_by_name("secp256k1").is_none());
    }
}

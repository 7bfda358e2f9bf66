//! ASYM_CIPHER for RSA HSM keys: the premaster-secret decrypt of TLS 1.2 RSA
//! key exchange (RSA_PKCS1_WITH_TLS_PADDING) and plain PKCS#1 v1.5 decrypt.
//!
//! TLS padding follows RFC 5246 §7.4.7.1 with implicit rejection: whatever
//! the token answers (a block with bad padding, a wrong length or version,
//! any CKR error, a timeout of the call), the handshake goes on with a
//! random premaster secret and fails at the client's Finished, exactly as
//! for a bad premaster, so a client learns nothing about the plaintext
//! (Bleichenbacher / ROBOT). Where the token offers raw RSA
//! (CKM_RSA_X_509) the module checks the PKCS#1 v1.5 padding itself, in
//! constant time, so the token's own padding check is not on the network
//! path either. Only failures before the token sees the ciphertext (token
//! marked down, refused PIN, no free session, key lookup) fail the
//! handshake.

use std::ffi::{c_int, c_uint, c_void};
use std::hint::black_box;
use std::ptr;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::dispatch;
use crate::ffi::ossl::{self, OSSL_PARAM};
use crate::ffi::{guard, DISPATCH_END};
use crate::pkcs11::runtime;
use crate::pkcs11::token::{KeyRef, Mech, OpError, PremasterMech, TokenAnswer};
use crate::tls::key::{keydata, Kind, Public};
use crate::tls::params::{self, def, end, ParamList};

/// "pad-mode". OpenSSL's `OSSL_ASYM_CIPHER_PARAM_PAD_MODE` is an alias of
/// `OSSL_PKEY_PARAM_PAD_MODE`, and OpenSSL 4.0's core_names.h defines the
/// alias before its target, which bindgen then drops: name the target.
const PAD_MODE: &[u8] = ossl::OSSL_PKEY_PARAM_PAD_MODE;

const PAD_PKCS1: c_int = 1;
const PAD_TLS: c_int = 7; // RSA_PKCS1_WITH_TLS_PADDING
const PREMASTER: usize = 48;
/// 00 02, at least 8 padding bytes, the 00 separator.
const PKCS1_OVERHEAD: usize = 11;

struct CipherCtx {
    key: Option<(Arc<KeyRef>, Public)>,
    pad: c_int,
    client_version: c_uint,
    alt_version: c_uint,
}

impl CipherCtx {
    fn decrypt(&self, input: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (key, public) = self.key.as_ref()?;
        if self.pad != PAD_TLS {
            // Only the TLS premaster decrypt is served by a key service.
            if crate::keyservice::client::active().is_some() {
                log::error!("HSM00500: RSA decrypt with {} refused: only TLS premaster secrets are decrypted with token keys", key.uri_text);
                return None;
            }
            return match runtime::with_hsm(&key.binding, |hsm| hsm.decrypt(key, Mech::RsaPkcs, input.to_vec())) {
                Ok(v) => Some(Zeroizing::new(v)),
                Err(e) => {
                    log::error!("HSM00501: RSA decrypt with {} failed: {e}", key.uri_text);
                    None
                }
            };
        }
        // Random premaster first: the answer to any bad ciphertext.
        let mut random = Zeroizing::new([0u8; PREMASTER]);
        // SAFETY: random is a valid 48-byte buffer.
        if unsafe { openssl_sys::RAND_priv_bytes(random.as_mut_ptr(), PREMASTER as c_int) } != 1 {
            return None;
        }
        let mech = key.premaster_mech();
        let answer = match crate::keyservice::premaster(key, input) {
            Ok(a) => a,
            Err(e) => {
                // Before the token saw the ciphertext: not about the data.
                log::error!("HSM00502: TLS handshake refused: premaster decrypt with {} failed: {e}", key.uri_text);
                return None;
            }
        };
        let versions = Versions { client: self.client_version, alt: self.alt_version };
        let (premaster, error) = premaster_from(answer, mech, public.max_sig_size(), versions, &random);
        // After the choice, and only on the token's error code: in raw mode
        // an honest token's errors do not depend on the plaintext; with
        // CKM_RSA_PKCS (or a token that is an oracle) the token's own
        // answer already differs in kind and timing far more than this
        // wake-up (a lock and a condvar signal).
        if let Some(e) = error {
            crate::keyservice::after_premaster_error(key, e);
        }
        Some(Zeroizing::new(premaster.to_vec()))
    }
}

/// The TLS versions a premaster may carry: the ClientHello's, or the
/// negotiated one when OpenSSL tolerates clients that send it (0: none).
#[derive(Clone, Copy)]
struct Versions {
    client: c_uint,
    alt: c_uint,
}

/// The premaster secret to use for the token's `answer`: the decrypted one
/// if it is well-formed, else `random`; and the token's error, if any.
///
/// Constant time required: from here until the premaster is chosen, no
/// branch, early exit or memory index may depend on the plaintext or on
/// whether it was good; each would tell a Bleichenbacher / ROBOT attacker
/// whether a ciphertext of their choice was PKCS#1-conformant. An error is
/// handled as an all-zero answer, which fails the check like any bad block.
fn premaster_from(
    answer: TokenAnswer,
    mech: PremasterMech,
    k: usize,
    v: Versions,
    random: &[u8; PREMASTER],
) -> (Zeroizing<[u8; PREMASTER]>, Option<OpError>) {
    let (plain, error) = match answer {
        Ok(p) => (Zeroizing::new(p), None),
        Err(e) => (Zeroizing::new(Vec::new()), Some(e)),
    };
    let out = match mech {
        PremasterMech::Raw => premaster_from_block(&plain, k, v, random),
        PremasterMech::Pkcs1 => premaster_from_message(&plain, v, random),
    };
    (out, error)
}

/// CKM_RSA_X_509: `raw` is the token's whole RSA block (k bytes, or fewer
/// if the token dropped leading zeros). Modelled on OpenSSL's
/// ossl_rsa_padding_check_PKCS1_type_2_TLS: every check below reads fixed
/// positions, so a valid block is exactly 00 02 <k-51 non-zero bytes> 00
/// <48-byte premaster starting with the version>.
fn premaster_from_block(raw: &[u8], k: usize, v: Versions, random: &[u8; PREMASTER]) -> Zeroizing<[u8; PREMASTER]> {
    if k < PKCS1_OVERHEAD + PREMASTER {
        // Publicly too small a key (never one TLS accepts): nothing secret.
        return Zeroizing::new(*random);
    }
    // The answer right-aligned in a k-byte block. Its length is the
    // token's (what the token did, not what the block holds beyond leading
    // zeros); a longer answer is bad, checked with a mask like the rest.
    // The copy below is the one step whose work follows that length: a
    // token that drops leading zero bytes shows the same length (and its
    // own timing) on the wire already, so nothing more is revealed here.
    let mut em = Zeroizing::new(vec![0u8; k]);
    let fits = ct_le(raw.len(), k);
    let n = raw.len().min(k);
    em[k - n..].copy_from_slice(&raw[raw.len() - n..]);
    // Constant time required (Bleichenbacher / ROBOT): every byte is
    // looked at, and the verdict is a mask, not a branch.
    let mut good = fits & ct_is_zero(em[0]) & ct_eq(em[1], 2);
    let sep = k - PREMASTER - 1;
    for &b in &em[2..sep] {
        good &= !ct_is_zero(b);
    }
    good &= ct_is_zero(em[sep]);
    good &= version_good(&em[sep + 1..], v);
    select(good, &em[sep + 1..], random)
}

/// CKM_RSA_PKCS: the token checked the padding and returned the message;
/// it must be 48 bytes and start with the version.
fn premaster_from_message(msg: &[u8], v: Versions, random: &[u8; PREMASTER]) -> Zeroizing<[u8; PREMASTER]> {
    // The message's length is the token's answer (it also shows in the
    // token's timing); copied into a fixed buffer so the checks below
    // read fixed positions.
    let mut m = Zeroizing::new([0u8; PREMASTER]);
    let n = msg.len().min(PREMASTER);
    m[..n].copy_from_slice(&msg[..n]);
    // Constant time required (Bleichenbacher / ROBOT): length and version
    // are folded into one mask.
    let good = ct_eq_usize(msg.len(), PREMASTER) & version_good(&m[..], v);
    select(good, &m[..], random)
}

/// Mask 0xff when the premaster's first two bytes are the client's version
/// (or the alternative one, if any). Constant time required: a version
/// check that shows is the Klima-Pokorny-Rosa "bad version oracle".
fn version_good(pm: &[u8], v: Versions) -> u8 {
    let is = |ver: c_uint| ct_eq(pm[0], (ver >> 8) as u8) & ct_eq(pm[1], ver as u8);
    is(v.client) | (is(v.alt) & !ct_is_zero_u32(v.alt))
}

/// `good` (0xff or 0) selects `plain[..48]`, else `random`, byte by byte
/// with masks: both are read whatever the mask.
fn select(good: u8, plain: &[u8], random: &[u8; PREMASTER]) -> Zeroizing<[u8; PREMASTER]> {
    let good = black_box(good);
    let mut out = Zeroizing::new([0u8; PREMASTER]);
    for ((o, p), r) in out.iter_mut().zip(plain).zip(random) {
        *o = (p & good) | (r & !good);
    }
    out
}

// Masks without branches: 0xff (or all ones) for true, 0 for false. The
// arithmetic avoids comparisons, which a compiler may turn into branches;
// black_box keeps it from seeing through the mask.

fn ct_is_zero_u32(x: u32) -> u8 {
    // The top bit of !x & (x - 1) is set only for x == 0.
    let top = (!x & x.wrapping_sub(1)) >> 31;
    black_box(0u8.wrapping_sub(top as u8))
}

fn ct_is_zero(x: u8) -> u8 {
    ct_is_zero_u32(x as u32)
}

fn ct_eq(a: u8, b: u8) -> u8 {
    ct_is_zero(a ^ b)
}

fn ct_eq_usize(a: usize, b: usize) -> u8 {
    let d = (a ^ b) as u64;
    ct_is_zero_u32((d | (d >> 32)) as u32)
}

/// a <= b, for lengths below 2^63.
fn ct_le(a: usize, b: usize) -> u8 {
    // b - a borrows (top bit set) only when a > b.
    let borrow = ((b as u64).wrapping_sub(a as u64) >> 63) as u32;
    ct_is_zero_u32(borrow)
}

unsafe fn ctx<'a>(p: *mut c_void) -> Option<&'a mut CipherCtx> {
    // SAFETY: OpenSSL passes back the context our newctx returned.
    unsafe { (p as *mut CipherCtx).as_mut() }
}

unsafe extern "C" fn newctx(_provctx: *mut c_void) -> *mut c_void {
    guard("asym_cipher newctx", ptr::null_mut(), || {
        Box::into_raw(Box::new(CipherCtx { key: None, pad: PAD_PKCS1, client_version: 0, alt_version: 0 })).cast()
    })
}

unsafe extern "C" fn freectx(c: *mut c_void) {
    guard("asym_cipher freectx", (), || {
        if !c.is_null() {
            // SAFETY: c came from Box::into_raw in newctx/dupctx.
            drop(unsafe { Box::from_raw(c as *mut CipherCtx) });
        }
    })
}

unsafe extern "C" fn dupctx(c: *mut c_void) -> *mut c_void {
    guard("asym_cipher dupctx", ptr::null_mut(), || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return ptr::null_mut() };
        let d = CipherCtx { key: c.key.clone(), pad: c.pad, client_version: c.client_version, alt_version: c.alt_version };
        Box::into_raw(Box::new(d)).cast()
    })
}

fn apply(c: &mut CipherCtx, params: *const OSSL_PARAM) -> bool {
    if params.is_null() {
        return true;
    }
    // SAFETY: params is OpenSSL's valid END-terminated array (checked non-null above).
    unsafe {
        if let Some(p) = params::locate_const(params, PAD_MODE) {
            let mode = match params::get_utf8(p) {
                Some(s) if s == "pkcs1" => PAD_PKCS1,
                Some(_) => return false,
                None => match params::get_int(p) {
                    Some(m) => m,
                    None => return false,
                },
            };
            if mode != PAD_PKCS1 && mode != PAD_TLS {
                log::debug!("HSM00503: RSA padding mode {mode} is not offered for HSM keys");
                return false;
            }
            c.pad = mode;
        }
        if let Some(p) = params::locate_const(params, ossl::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION) {
            match params::get_uint(p) {
                Some(v) => c.client_version = v,
                None => return false,
            }
        }
        if let Some(p) = params::locate_const(params, ossl::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION) {
            match params::get_uint(p) {
                Some(v) => c.alt_version = v,
                None => return false,
            }
        }
    }
    true
}

unsafe extern "C" fn decrypt_init(c: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("decrypt_init", 0, || {
        // SAFETY: see ctx(); provkey is keydata of our KEYMGMT.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: provkey is keydata of our KEYMGMT (OpenSSL pairs them).
        let Some(k) = (unsafe { keydata(provkey) }) else { return 0 };
        match (&k.hsm, &k.public, k.kind) {
            (Some(h), Some(p), Kind::Rsa) => c.key = Some((h.clone(), p.clone())),
            _ => return 0,
        }
        c.pad = PAD_PKCS1;
        c.client_version = 0;
        c.alt_version = 0;
        apply(c, params) as c_int
    })
}

unsafe extern "C" fn decrypt(c: *mut c_void, out: *mut u8, outlen: *mut usize, outsize: usize, input: *const u8, inlen: usize) -> c_int {
    guard("decrypt", 0, || {
        // SAFETY: see ctx(); input valid for inlen bytes; out for outsize.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        if outlen.is_null() {
            return 0;
        }
        let max = match &c.key {
            Some((_, p)) => p.max_sig_size(),
            None => return 0,
        };
        if out.is_null() {
            // SAFETY: outlen is non-null (checked above) and writable.
            unsafe { *outlen = if c.pad == PAD_TLS { PREMASTER } else { max } };
            return 1;
        }
        if c.pad == PAD_TLS && (outsize < PREMASTER || c.client_version == 0) {
            return 0;
        }
        // SAFETY: OpenSSL passes input valid for inlen bytes.
        let data = if input.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(input, inlen) } };
        let Some(plain) = c.decrypt(data) else { return 0 };
        if plain.len() > outsize {
            return 0;
        }
        // SAFETY: out has outsize >= plain.len() bytes; outlen is valid.
        unsafe {
            ptr::copy_nonoverlapping(plain.as_ptr(), out, plain.len());
            *outlen = plain.len();
        }
        1
    })
}

unsafe extern "C" fn set_ctx_params(c: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("asym_cipher set_ctx_params", 0, || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        apply(c, params) as c_int
    })
}

static SETTABLE: ParamList<4> = ParamList([
    def(PAD_MODE, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    def(ossl::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    end(),
]);

unsafe extern "C" fn settable(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    SETTABLE.as_ptr()
}

unsafe extern "C" fn get_ctx_params(c: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
    guard("asym_cipher get_ctx_params", 0, || {
        // SAFETY: see ctx(); params valid.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: params is OpenSSL's valid END-terminated array.
        unsafe { params::set_int(params, PAD_MODE, c.pad) as c_int }
    })
}

static GETTABLE: ParamList<2> = ParamList([def(PAD_MODE, ossl::OSSL_PARAM_INTEGER), end()]);

unsafe extern "C" fn gettable(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    GETTABLE.as_ptr()
}

pub static RSA_ASYM_CIPHER: [ossl::OSSL_DISPATCH; 10] = [
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_NEWCTX, newctx, ossl::OSSL_FUNC_asym_cipher_newctx_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_FREECTX, freectx, ossl::OSSL_FUNC_asym_cipher_freectx_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DUPCTX, dupctx, ossl::OSSL_FUNC_asym_cipher_dupctx_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, decrypt_init, ossl::OSSL_FUNC_asym_cipher_decrypt_init_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DECRYPT, decrypt, ossl::OSSL_FUNC_asym_cipher_decrypt_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, set_ctx_params, ossl::OSSL_FUNC_asym_cipher_set_ctx_params_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, settable, ossl::OSSL_FUNC_asym_cipher_settable_ctx_params_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, get_ctx_params, ossl::OSSL_FUNC_asym_cipher_get_ctx_params_fn),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, gettable, ossl::OSSL_FUNC_asym_cipher_gettable_ctx_params_fn),
    DISPATCH_END,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs11::policy::is_data_error;
    use cryptoki::error::{Error as CkError, RvError};
    use proptest::prelude::*;

    extern "C" {
        // libcrypto's PKCS#1 v1.5 encryption padding (00 02 PS 00 M), the
        // reference the checks are tested against.
        fn RSA_padding_add_PKCS1_type_2(to: *mut u8, tlen: c_int, from: *const u8, flen: c_int) -> c_int;
    }

    /// `msg` padded by OpenSSL into a `k`-byte block.
    fn openssl_block(msg: &[u8], k: usize) -> Vec<u8> {
        let mut to = vec![0u8; k];
        // SAFETY: to has k writable bytes, msg msg.len() readable ones.
        let ok = unsafe { RSA_padding_add_PKCS1_type_2(to.as_mut_ptr(), k as c_int, msg.as_ptr(), msg.len() as c_int) };
        assert_eq!(ok, 1, "OpenSSL refused to pad {} bytes into {k}", msg.len());
        to
    }

    const TLS12: Versions = Versions { client: 0x0303, alt: 0 };

    fn premaster(version: c_uint, rest: &[u8; 46]) -> Vec<u8> {
        let mut pm = vec![(version >> 8) as u8, version as u8];
        pm.extend_from_slice(rest);
        pm
    }

    fn raw(answer: TokenAnswer, k: usize, v: Versions, random: &[u8; PREMASTER]) -> [u8; PREMASTER] {
        *premaster_from(answer, PremasterMech::Raw, k, v, random).0
    }

    fn pkcs1(answer: TokenAnswer, v: Versions, random: &[u8; PREMASTER]) -> [u8; PREMASTER] {
        *premaster_from(answer, PremasterMech::Pkcs1, 256, v, random).0
    }

    fn token_error(rv: RvError) -> TokenAnswer {
        Err(OpError::Token(CkError::Pkcs11(rv, cryptoki::context::Function::Decrypt)))
    }

    /// Every way a block can be wrong, applied to a valid one.
    #[derive(Clone, Debug)]
    enum Damage {
        FirstByteNotZero(u8),
        TypeNotTwo(u8),
        ZeroInPadding(usize),
        SeparatorNotZero(u8),
        WrongVersion(u16),
        OneByteTooLong,
        TokenError,
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (1u8..).prop_map(Damage::FirstByteNotZero),
            any::<u8>().prop_filter("not 2", |b| *b != 2).prop_map(Damage::TypeNotTwo),
            any::<usize>().prop_map(Damage::ZeroInPadding),
            (1u8..).prop_map(Damage::SeparatorNotZero),
            any::<u16>().prop_filter("not 0x0303", |v| *v != 0x0303).prop_map(Damage::WrongVersion),
            Just(Damage::OneByteTooLong),
            Just(Damage::TokenError),
        ]
    }

    proptest! {
        #[test]
        fn a_valid_raw_block_gives_its_premaster(k in 59usize..=512, rest in any::<[u8; 46]>(), random in any::<[u8; 48]>(), strip in any::<bool>()) {
            let pm = premaster(0x0303, &rest);
            let mut block = openssl_block(&pm, k);
            if strip {
                // A token that drops the leading zero byte of the block.
                block.remove(0);
            }
            prop_assert_eq!(&raw(Ok(block), k, TLS12, &random)[..], &pm[..]);
        }

        #[test]
        fn every_kind_of_bad_raw_block_gives_the_random_premaster(k in 59usize..=512, rest in any::<[u8; 46]>(), random in any::<[u8; 48]>(), d in damage()) {
            let mut block = openssl_block(&premaster(0x0303, &rest), k);
            let sep = k - PREMASTER - 1;
            let answer = match d {
                Damage::FirstByteNotZero(b) => { block[0] = b; Ok(block) }
                Damage::TypeNotTwo(b) => { block[1] = b; Ok(block) }
                Damage::ZeroInPadding(i) => { block[2 + i % (sep - 2)] = 0; Ok(block) }
                Damage::SeparatorNotZero(b) => { block[sep] = b; Ok(block) }
                Damage::WrongVersion(v) => { block[sep + 1] = (v >> 8) as u8; block[sep + 2] = v as u8; Ok(block) }
                Damage::OneByteTooLong => { block.insert(0, 0); Ok(block) }
                Damage::TokenError => token_error(RvError::DeviceError),
            };
            prop_assert_eq!(raw(answer, k, TLS12, &random), random);
        }

        #[test]
        fn a_raw_block_with_a_message_of_another_length_gives_the_random_premaster(k in 100usize..=512, len in 0usize..=89, random in any::<[u8; 48]>()) {
            prop_assume!(len != PREMASTER);
            let mut msg = vec![0x5a; len];
            if len >= 2 {
                msg[..2].copy_from_slice(&[3, 3]);
            }
            prop_assert_eq!(raw(Ok(openssl_block(&msg, k)), k, TLS12, &random), random);
        }

        #[test]
        fn any_raw_answer_is_its_premaster_only_if_well_formed(bytes in proptest::collection::vec(any::<u8>(), 0..300), random in any::<[u8; 48]>()) {
            let k = 256;
            let out = raw(Ok(bytes.clone()), k, TLS12, &random);
            let mut em = vec![0u8; k.saturating_sub(bytes.len())];
            em.extend_from_slice(&bytes);
            let well_formed = em.len() == k
                && em[0] == 0 && em[1] == 2
                && em[2..k - 49].iter().all(|b| *b != 0)
                && em[k - 49] == 0 && em[k - 48..k - 46] == [3, 3];
            let expect: &[u8] = if well_formed { &em[k - 48..] } else { &random[..] };
            prop_assert_eq!(&out[..], expect);
        }

        #[test]
        fn a_token_checked_message_is_used_only_with_48_bytes_and_the_version(len in 0usize..=600, version in prop_oneof![Just(0x0303u16), any::<u16>()], random in any::<[u8; 48]>(), fill in any::<u8>()) {
            let mut msg = vec![fill; len];
            if len >= 2 {
                msg[0] = (version >> 8) as u8;
                msg[1] = version as u8;
            }
            let out = pkcs1(Ok(msg.clone()), TLS12, &random);
            if len == PREMASTER && version == 0x0303 {
                prop_assert_eq!(&out[..], &msg[..]);
            } else {
                prop_assert_eq!(out, random);
            }
        }

        #[test]
        fn every_token_error_gives_the_random_premaster(code in 1..=0x8000_0fffu64, random in any::<[u8; 48]>(), mech in prop_oneof![Just(PremasterMech::Raw), Just(PremasterMech::Pkcs1)]) {
            let cryptoki::error::Rv::Error(rv) = cryptoki::error::Rv::from(code as cryptoki_sys::CK_RV) else { unreachable!("0 is not drawn") };
            let (out, err) = premaster_from(token_error(rv), mech, 256, TLS12, &random);
            prop_assert_eq!(*out, random);
            prop_assert!(err.is_some());
            let (out, err) = premaster_from(Err(OpError::Timeout(std::time::Duration::from_secs(1))), mech, 256, TLS12, &random);
            prop_assert_eq!(*out, random);
            prop_assert!(err.is_some());
        }
    }

    #[test]
    fn the_negotiated_version_is_accepted_only_when_openssl_passes_it() {
        let random = [7u8; 48];
        let pm = premaster(0x0302, &[9; 46]);
        let block = openssl_block(&pm, 256);
        assert_eq!(raw(Ok(block.clone()), 256, TLS12, &random), random);
        let alt = Versions { client: 0x0303, alt: 0x0302 };
        assert_eq!(&raw(Ok(block), 256, alt, &random)[..], &pm[..]);
        assert_eq!(&pkcs1(Ok(pm.clone()), alt, &random)[..], &pm[..]);
        assert_eq!(pkcs1(Ok(pm), TLS12, &random), random);
    }

    #[test]
    fn masks_are_all_ones_or_zero() {
        for (a, b) in [(0usize, 0usize), (1, 0), (0, 1), (255, 256), (256, 256), (usize::MAX >> 1, 0)] {
            assert_eq!(ct_le(a, b), if a <= b { 0xff } else { 0 }, "{a} <= {b}");
            assert_eq!(ct_eq_usize(a, b), if a == b { 0xff } else { 0 }, "{a} == {b}");
        }
        assert_eq!(ct_eq_usize(1 << 40, 0), 0);
        for x in 0..=255u8 {
            assert_eq!(ct_is_zero(x), if x == 0 { 0xff } else { 0 });
            assert_eq!(ct_eq(x, 2), if x == 2 { 0xff } else { 0 });
        }
        assert_eq!(ct_is_zero_u32(0x8000_0000), 0);
    }

    #[test]
    fn only_the_padding_answers_count_as_data_errors() {
        assert!(is_data_error(&token_error(RvError::EncryptedDataInvalid).unwrap_err()));
        assert!(is_data_error(&token_error(RvError::EncryptedDataLenRange).unwrap_err()));
        for rv in [RvError::DeviceError, RvError::GeneralError, RvError::SessionHandleInvalid, RvError::UserNotLoggedIn] {
            assert!(!is_data_error(&token_error(rv).unwrap_err()), "{rv:?}");
        }
        assert!(!is_data_error(&OpError::Timeout(std::time::Duration::from_secs(1))));
    }
}

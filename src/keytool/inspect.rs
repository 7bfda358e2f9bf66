//! Commands that look at the token without changing it: `tokens` (slots
//! and tokens, like `pkcs11-tool -L`), `mechanisms` (what the token offers
//! that TLS needs) and `test` (one real signature, and one decryption
//! where the key allows it, verified against the certificate: the HSM path
//! end to end, which configtest does not exercise).

use std::fmt::Write as _;

use cryptoki::mechanism::rsa::PkcsMgfType;
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde::Serialize;

use super::cli::{MechanismsArgs, TargetArgs, TestArgs, TokensArgs};
use super::commands::{json_line, resolve, selector_uri, KeyReport};
use super::tool::{fail, Code, Res, Target};
use crate::pkcs11::token::{ck_error_text, Mech, PremasterMech, PublicKey};
use crate::tls::certcheck;
use crate::tls::digest::Digest;

#[derive(Serialize)]
struct TokenRow {
    slot: u64,
    slot_description: String,
    label: String,
    serial: String,
    manufacturer: String,
    model: String,
    initialized: bool,
    user_pin_initialized: bool,
    user_pin_locked: bool,
    user_pin_final_try: bool,
    /// The token the options (or the Apache configuration) select.
    selected: bool,
}

pub fn tokens(o: &TargetArgs, a: &TokensArgs) -> Res<String> {
    let t = Target::from_args(o)?;
    let ctx = t.context()?;
    let slots = ctx.get_slots_with_token().map_err(|e| fail(Code::Setup, format!("listing slots: {}", ck_error_text(&e))))?;
    let selected = t.slot(&ctx).ok().map(|(s, _)| s.id());
    let mut rows = Vec::new();
    for slot in slots {
        let desc = ctx.get_slot_info(slot).map(|i| i.slot_description().trim().to_string()).unwrap_or_default();
        let Ok(i) = ctx.get_token_info(slot) else { continue };
        rows.push(TokenRow {
            slot: slot.id(),
            slot_description: desc,
            label: i.label().trim().to_string(),
            serial: i.serial_number().trim().to_string(),
            manufacturer: i.manufacturer_id().trim().to_string(),
            model: i.model().trim().to_string(),
            initialized: i.token_initialized(),
            user_pin_initialized: i.user_pin_initialized(),
            user_pin_locked: i.user_pin_locked(),
            user_pin_final_try: i.user_pin_final_try(),
            selected: selected == Some(slot.id()),
        });
    }
    if a.json {
        return json_line(&serde_json::json!({ "library": t.library, "tokens": rows }));
    }
    let mut out = format!("{}: {} token(s)\n", t.library.display(), rows.len());
    for r in &rows {
        let state = match (r.initialized, r.user_pin_locked, r.user_pin_final_try) {
            (false, _, _) => "not initialized",
            (true, true, _) => "user PIN locked",
            (true, false, true) => "user PIN on its final try",
            (true, false, false) => "ready",
        };
        let mark = if r.selected { "  <- selected" } else { "" };
        let _ = writeln!(out, "slot {}: token '{}' serial {} ({} {}): {state}{mark}", r.slot, r.label, r.serial, r.manufacturer, r.model);
    }
    Ok(out)
}

/// The mechanisms the module and the tool use, with what each is for.
const USED: [(MechanismType, &str, &str); 8] = [
    (MechanismType::RSA_PKCS, "CKM_RSA_PKCS", "RSA keys: TLS 1.2 signatures (sign) and RSA key exchange (decrypt)"),
    (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", "RSA keys: TLS 1.3 and RSA-PSS signatures (sign)"),
    (MechanismType::RSA_X_509, "CKM_RSA_X_509", "RSA key exchange checked in constant time by the module (decrypt); optional"),
    (MechanismType::ECDSA, "CKM_ECDSA", "EC keys: every TLS signature (sign)"),
    (MechanismType::RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", "hsm-ssl-keytool generate --type rsa:..."),
    (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", "hsm-ssl-keytool generate --type ec:..."),
    (MechanismType::AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD", "hsm-ssl-keytool import, on tokens that refuse plaintext keys (unwrap)"),
    (MechanismType::RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", "hsm-ssl-keytool import, on tokens that refuse plaintext AES keys too (unwrap)"),
];

#[derive(Serialize)]
struct MechRow {
    name: &'static str,
    purpose: &'static str,
    offered: bool,
    flags: Vec<&'static str>,
    min_key_size: Option<usize>,
    max_key_size: Option<usize>,
}

fn flags(i: &MechanismInfo) -> Vec<&'static str> {
    [
        (i.sign(), "sign"),
        (i.verify(), "verify"),
        (i.encrypt(), "encrypt"),
        (i.decrypt(), "decrypt"),
        (i.generate_key_pair(), "generate_key_pair"),
        (i.wrap(), "wrap"),
        (i.unwrap(), "unwrap"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// What TLS can do with the token's keys, from the offered mechanisms.
fn tls_needs(rows: &[MechRow]) -> Vec<(&'static str, bool)> {
    let has = |name: &str, flag: &str| rows.iter().any(|r| r.name == name && r.flags.contains(&flag));
    vec![
        ("RSA keys: TLS 1.2 signatures", has("CKM_RSA_PKCS", "sign")),
        ("RSA keys: TLS 1.3 signatures (RSA-PSS)", has("CKM_RSA_PKCS_PSS", "sign")),
        ("RSA keys: TLS 1.2 RSA key exchange", has("CKM_RSA_PKCS", "decrypt")),
        ("EC keys: TLS signatures (ECDSA)", has("CKM_ECDSA", "sign")),
    ]
}

pub fn mechanisms(o: &TargetArgs, a: &MechanismsArgs) -> Res<String> {
    let t = Target::from_args(o)?;
    let ctx = t.context()?;
    let (slot, info) = t.slot(&ctx)?;
    let token = info.label().trim().to_string();
    let list = ctx.get_mechanism_list(slot).map_err(|e| fail(Code::Setup, format!("token '{token}': {}", ck_error_text(&e))))?;
    let rows: Vec<MechRow> = USED
        .iter()
        .map(|&(m, name, purpose)| {
            let i = list.contains(&m).then(|| ctx.get_mechanism_info(slot, m).ok()).flatten();
            MechRow {
                name,
                purpose,
                offered: i.is_some(),
                flags: i.as_ref().map(flags).unwrap_or_default(),
                min_key_size: i.as_ref().map(MechanismInfo::min_key_size),
                max_key_size: i.as_ref().map(MechanismInfo::max_key_size),
            }
        })
        .collect();
    let needs = tls_needs(&rows);
    if a.json {
        let tls: serde_json::Map<String, serde_json::Value> = needs.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        return json_line(&serde_json::json!({ "token": token, "mechanisms": rows, "tls": tls }));
    }
    let mut out = format!("token '{token}': the mechanisms mod_hsm_ssl and hsm-ssl-keytool use\n");
    for r in &rows {
        let what = if r.offered {
            let sizes = match (r.min_key_size, r.max_key_size) {
                (Some(lo), Some(hi)) if hi > 0 => format!(", key sizes {lo}-{hi}"),
                _ => String::new(),
            };
            format!("offered ({}{sizes})", r.flags.join(", "))
        } else {
            "not offered".to_string()
        };
        let _ = writeln!(out, "  {:<26} {what}\n  {:<26} for {}", r.name, "", r.purpose);
    }
    out.push_str("TLS with this token:\n");
    for (what, ok) in needs {
        let _ = writeln!(out, "  {:<40} {}", what, if ok { "yes" } else { "no" });
    }
    Ok(out)
}

#[derive(Serialize)]
struct Trial {
    operation: String,
    ok: bool,
    detail: String,
}

/// Verifies `sig` over `msg` with the certificate's key.
fn verify(cert: &PKey<Public>, msg: &[u8], sig: &[u8], pss: bool) -> Result<bool, String> {
    let mut v = Verifier::new(MessageDigest::sha256(), cert).map_err(|e| e.to_string())?;
    if pss {
        v.set_rsa_padding(Padding::PKCS1_PSS).map_err(|e| e.to_string())?;
        v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).map_err(|e| e.to_string())?;
    }
    v.update(msg).map_err(|e| e.to_string())?;
    v.verify(sig).map_err(|e| e.to_string())
}

pub fn test(o: &TargetArgs, a: &TestArgs) -> Res<String> {
    let (label, id) = a.key.get()?;
    let uri = selector_uri(label, id.as_deref())?;
    let t = Target::from_args(o)?;
    let (hsm, key) = resolve(&t, &uri)?;
    let cert_path = a.cert.as_str();
    certcheck::check(cert_path, &key.public).map_err(|e| fail(Code::Mismatch, e.to_string()))?;
    let pem = std::fs::read(cert_path).map_err(|e| fail(Code::Other, format!("{cert_path}: {e}")))?;
    let cert_key = openssl::x509::X509::from_pem(&pem).and_then(|c| c.public_key()).map_err(|e| fail(Code::Other, format!("{cert_path}: {e}")))?;
    let warnings = hsm.check_mechanisms(&key).map_err(|e| fail(Code::Key, e))?;

    let mut msg = [0u8; 64];
    openssl::rand::rand_bytes(&mut msg).map_err(|e| fail(Code::Other, e.to_string()))?;
    let digest = Digest::Sha256;
    let hash = crate::tls::digest::Hasher::oneshot(digest, &msg).ok_or_else(|| fail(Code::Other, "SHA-256 failed"))?;
    let mut trials = Vec::new();
    let mut sign = |what: &str, mech: Mech, data: Vec<u8>, check: &dyn Fn(&[u8]) -> Result<bool, String>| {
        let r = hsm.sign(&key, mech, data).map_err(|e| e.to_string()).and_then(|sig| check(&sig));
        trials.push(match r {
            Ok(true) => Trial { operation: what.into(), ok: true, detail: "verified with the certificate's public key".into() },
            Ok(false) => {
                Trial { operation: what.into(), ok: false, detail: "the signature does not verify with the certificate's public key".into() }
            }
            Err(e) => Trial { operation: what.into(), ok: false, detail: e },
        });
    };
    match &key.public {
        PublicKey::Rsa { .. } => {
            let info = [digest.digest_info_prefix(), &hash[..]].concat();
            sign("sign RSA PKCS#1 v1.5 SHA-256 (TLS 1.2)", Mech::RsaPkcs, info, &|s| verify(&cert_key, &msg, s, false));
            let pss_offered = hsm.mechanism_info(&key, MechanismType::RSA_PKCS_PSS).map_err(|e| fail(Code::Setup, e))?.is_some_and(|i| i.sign());
            if pss_offered {
                let pss = Mech::RsaPss { hash: digest.mechanism(), mgf: PkcsMgfType::MGF1_SHA256, salt: 32 };
                sign("sign RSA-PSS SHA-256 (TLS 1.3)", pss, hash.clone(), &|s| verify(&cert_key, &msg, s, true));
            }
        }
        PublicKey::Ec { .. } => {
            sign("sign ECDSA SHA-256", Mech::Ecdsa, hash.clone(), &|s| {
                let der = crate::tls::signature::ecdsa_der(s, s.len() / 2).ok_or("the token returned an ECDSA signature of odd length")?;
                verify(&cert_key, &msg, &der, false)
            });
        }
    }
    if matches!(key.public, PublicKey::Rsa { .. }) && key.can_decrypt {
        trials.push(decrypt_trial(&hsm, &key, &cert_key)?);
    }
    let ok = trials.iter().all(|t| t.ok);
    let out = if a.json {
        json_line(&serde_json::json!({ "key": KeyReport::of(&key), "cert": cert_path, "ok": ok, "operations": trials, "warnings": warnings }))?
    } else {
        let mut out = format!("{} (token '{}') with {cert_path}:\n", key.uri_text, key.token_label);
        for t in &trials {
            let _ = writeln!(out, "  {}: {}: {}", t.operation, if t.ok { "OK" } else { "FAILED" }, t.detail);
        }
        for w in &warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    };
    if ok {
        Ok(out)
    } else {
        // The report still goes to stdout; the exit code says it failed.
        print!("{out}");
        Err(fail(Code::Key, "the token did not do what TLS needs with this key (see above)"))
    }
}

/// A premaster secret encrypted to the certificate's key, decrypted by the
/// token the way TLS 1.2 RSA key exchange does it.
fn decrypt_trial(
    hsm: &std::sync::Arc<crate::pkcs11::token::Hsm>,
    key: &std::sync::Arc<crate::pkcs11::token::KeyRef>,
    cert: &PKey<Public>,
) -> Res<Trial> {
    let rsa = cert.rsa().map_err(|e| fail(Code::Other, e.to_string()))?;
    let mut secret = [0u8; 48];
    openssl::rand::rand_bytes(&mut secret).map_err(|e| fail(Code::Other, e.to_string()))?;
    let mut ct = vec![0u8; rsa.size() as usize];
    let n = rsa.public_encrypt(&secret, &mut ct, Padding::PKCS1).map_err(|e| fail(Code::Other, e.to_string()))?;
    ct.truncate(n);
    let how = hsm.choose_premaster_mech(key).map_err(|e| fail(Code::Key, e))?.unwrap_or(PremasterMech::Pkcs1);
    let (what, mech) = match how {
        PremasterMech::Raw => ("decrypt a TLS 1.2 premaster (CKM_RSA_X_509)", Mech::RsaX509),
        PremasterMech::Pkcs1 => ("decrypt a TLS 1.2 premaster (CKM_RSA_PKCS)", Mech::RsaPkcs),
    };
    let got = match hsm.decrypt(key, mech, ct) {
        Ok(p) => p,
        Err(e) => return Ok(Trial { operation: what.into(), ok: false, detail: e.to_string() }),
    };
    // Raw RSA returns the whole block, 00 02 PS 00 secret: the secret is
    // its end (the module's constant-time check is not needed for a block
    // the tool made itself).
    let ok = got.ends_with(&secret) && matches!(how, PremasterMech::Pkcs1) == (got.len() == secret.len());
    let detail = if ok { "the token returned the secret encrypted to the certificate's public key" } else { "the token returned something else" };
    Ok(Trial { operation: what.into(), ok, detail: detail.into() })
}

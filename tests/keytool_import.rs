//! `hsm-ssl-keytool` key import (`mod_hsm_ssl::keytool::import`) against a
//! real SoftHSM2 token, through the `hsm_test_p11wrap` wrapper so calls can
//! be counted and refused.
//!
//! SoftHSM2 reads SOFTHSM2_CONF once per process, and the wrapper's
//! HSM_P11WRAP_* variables are read from the process environment: so this
//! file has exactly one #[test], which sets them before any PKCS#11 call.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use mod_hsm_ssl::keytool::import::{import_key, read_private_key_pem, ImportError, ImportPath, Imported};
use mod_hsm_ssl::keytool::policy::{Frozen, Usage};
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::Verifier;
use zeroize::Zeroizing;

const PASS: &str = "Corr3ct-horse";

/// Unwrapped keys are frozen too (SoftHSM2 2.6 takes CKA_MODIFIABLE=false
/// in a C_UnwrapKey template only as the last attribute).
const UNWRAPPED: Frozen = Frozen::FULLY;
const WRONG: &str = "not-the-passphrase";

/// `openssl <args>` in `dir`, must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// The public key of a PEM private key as SPKI PEM, by the openssl CLI
/// (independent of the code under test).
fn cli_public_pem(key: &Path, pass: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["pkey", "-pubout", "-in"]).arg(key);
    if let Some(p) = pass {
        cmd.args(["-passin", &format!("pass:{p}")]);
    }
    stdout_string(&run_ok(&mut cmd))
}

/// Read a key that must not ask for a passphrase.
fn read_plain(path: &Path) -> PKey<openssl::pkey::Private> {
    let mut asked = 0;
    let key = read_private_key_pem(path, &mut || {
        asked += 1;
        Err("no passphrase here".into())
    })
    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(asked, 0, "{}: passphrase asked for an unencrypted key", path.display());
    key
}

/// Read an encrypted key with the right passphrase; it must be asked once.
fn read_encrypted(path: &Path) -> PKey<openssl::pkey::Private> {
    let mut asked = 0;
    let key = read_private_key_pem(path, &mut || {
        asked += 1;
        Ok(Zeroizing::new(PASS.to_string()))
    })
    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(asked, 1, "{}: passphrase asks", path.display());
    key
}

fn find(session: &Session, class: ObjectClass, label: &str) -> Vec<ObjectHandle> {
    session.find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())]).expect("find objects")
}

fn bool_attr(session: &Session, obj: ObjectHandle, t: AttributeType) -> bool {
    let attrs = session.get_attributes(obj, &[t]).expect("get attribute");
    match attrs.first() {
        Some(
            Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::Sensitive(b)
            | Attribute::Extractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Sign(b)
            | Attribute::Decrypt(b)
            | Attribute::Verify(b)
            | Attribute::Encrypt(b)
            | Attribute::Modifiable(b)
            | Attribute::Copyable(b),
        ) => *b,
        other => panic!("attribute {t:?} not readable: {other:?}"),
    }
}

fn id_attr(session: &Session, obj: ObjectHandle) -> Vec<u8> {
    match session.get_attributes(obj, &[AttributeType::Id]).expect("get CKA_ID").first() {
        Some(Attribute::Id(v)) => v.clone(),
        other => panic!("no CKA_ID: {other:?}"),
    }
}

/// The "Access:" line pkcs11-tool prints for a private key.
fn access_line(token: &Token, label: &str) -> String {
    let listing = token.list_private_keys();
    let block = listing
        .split("Private Key Object")
        .find(|b| b.lines().any(|l| l.trim() == format!("label:      {label}")))
        .unwrap_or_else(|| panic!("{label} not listed:\n{listing}"));
    block.lines().find(|l| l.trim_start().starts_with("Access:")).unwrap_or("").trim().to_string()
}

/// Everything an imported key must be: one private and one public object
/// with the label and id, the private one sensitive / not extractable /
/// private / sign (+ decrypt only if `decrypt`), not modifiable / not
/// copyable as `frozen` says, pkcs11-tool agreeing, the token's public key equal to the
/// PEM's, and a token signature (and with `decrypt` a token decryption) that
/// the PEM's public key verifies; without `decrypt` the token refuses to
/// decrypt with it.
#[allow(clippy::too_many_arguments)]
fn check_imported(session: &Session, token: &Token, label: &str, id: &[u8], pem: &Path, pass: Option<&str>, decrypt: bool, frozen: Frozen) {
    let privs = find(session, ObjectClass::PRIVATE_KEY, label);
    assert_eq!(privs.len(), 1, "{label}: private keys with the label");
    let pubs = find(session, ObjectClass::PUBLIC_KEY, label);
    assert_eq!(pubs.len(), 1, "{label}: public keys with the label");
    let (sk, pk) = (privs[0], pubs[0]);

    let key_type = match session.get_attributes(sk, &[AttributeType::KeyType]).unwrap().first() {
        Some(Attribute::KeyType(t)) => *t,
        other => panic!("{label}: key type {other:?}"),
    };
    let is_rsa = key_type == KeyType::RSA;
    assert!(is_rsa || key_type == KeyType::EC, "{label}: key type {key_type:?}");

    for (t, want) in [
        (AttributeType::Token, true),
        (AttributeType::Private, true),
        (AttributeType::Sensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::Sign, true),
        (AttributeType::Decrypt, decrypt),
        (AttributeType::Modifiable, !frozen.unmodifiable),
        (AttributeType::Copyable, !frozen.uncopyable),
        // Imported keys were not always sensitive / never extractable.
        (AttributeType::AlwaysSensitive, false),
        (AttributeType::NeverExtractable, false),
    ] {
        assert_eq!(bool_attr(session, sk, t), want, "{label}: private key {t:?}");
    }
    assert_eq!(id_attr(session, sk), id, "{label}: private CKA_ID");
    for (t, want) in [(AttributeType::Token, true), (AttributeType::Private, false), (AttributeType::Verify, true)] {
        assert_eq!(bool_attr(session, pk, t), want, "{label}: public key {t:?}");
    }
    if is_rsa {
        assert_eq!(bool_attr(session, pk, AttributeType::Encrypt), decrypt, "{label}: public key CKA_ENCRYPT");
    }
    assert_eq!(id_attr(session, pk), id, "{label}: public CKA_ID");

    // pkcs11-tool (another process, the real SoftHSM2) sees a protected key.
    token.assert_private_key_protected(label);

    // The token's public key object is the PEM's public key.
    let expected_pub = cli_public_pem(pem, pass);
    let token_pub = std::fs::read_to_string(token.public_key_pem(label)).unwrap();
    assert_eq!(token_pub, expected_pub, "{label}: token public key differs from the PEM's");
    let public: PKey<Public> = PKey::public_key_from_pem(expected_pub.as_bytes()).unwrap();

    // A signature by the token key verifies with the PEM's public key.
    let data = format!("signed by the imported key {label}").into_bytes();
    let der_sig = if is_rsa {
        session.sign(&Mechanism::Sha256RsaPkcs, sk, &data).expect("RSA sign on the token")
    } else {
        // SoftHSM2 2.6 has CKM_ECDSA but not CKM_ECDSA_SHA256.
        let digest = hash(MessageDigest::sha256(), &data).unwrap();
        let raw = session.sign(&Mechanism::Ecdsa, sk, &digest).expect("ECDSA sign on the token");
        let (r, s) = raw.split_at(raw.len() / 2);
        let sig = EcdsaSig::from_private_components(BigNum::from_slice(r).unwrap(), BigNum::from_slice(s).unwrap()).unwrap();
        sig.to_der().unwrap()
    };
    let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
    assert!(verifier.verify_oneshot(&der_sig, &data).unwrap(), "{label}: signature does not verify");

    if is_rsa {
        // It decrypts what the PEM's public key encrypted, if allowed to.
        let rsa = public.rsa().unwrap();
        let secret = b"premaster secret of a test";
        let mut ct = vec![0u8; rsa.size() as usize];
        let n = rsa.public_encrypt(secret, &mut ct, Padding::PKCS1).unwrap();
        ct.truncate(n);
        match session.decrypt(&Mechanism::RsaPkcs, sk, &ct) {
            Ok(pt) if decrypt => assert_eq!(pt, secret, "{label}: decryption"),
            Ok(_) => panic!("{label}: the token decrypted with a sign-only key"),
            Err(e) if decrypt => panic!("{label}: RSA decrypt on the token: {e}"),
            Err(e) => assert!(matches!(e, cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::KeyFunctionNotPermitted, _)), "{label}: {e}"),
        }
    }
}

/// No session objects left behind (AES wrapping key, RSA transport pair)
/// and `expected` private keys on the token.
fn check_no_leftovers(session: &Session, expected_private_keys: usize, what: &str) {
    let secret = session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)]).unwrap();
    assert!(secret.is_empty(), "{what}: secret keys left: {}", secret.len());
    let session_objs = session.find_objects(&[Attribute::Token(false)]).unwrap();
    assert!(session_objs.is_empty(), "{what}: session objects left: {}", session_objs.len());
    let privs = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).unwrap();
    assert_eq!(privs.len(), expected_private_keys, "{what}: private keys on the token");
}

fn nothing_labelled(session: &Session, label: &str) {
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY, ObjectClass::SECRET_KEY] {
        assert!(find(session, class, label).is_empty(), "{label}: {class:?} left behind");
    }
}

fn set_control(p11: &P11Log, text: &str) {
    std::fs::write(&p11.control, text).expect("write wrapper control");
}

#[test]
fn import_pem_keys() {
    let token = Token::new("keyimport");
    let p11 = P11Log::new(token.dir());
    let dir: PathBuf = token.dir().to_path_buf();
    // Before any PKCS#11 call (see the file docs).
    std::env::set_var("SOFTHSM2_CONF", &token.conf);
    for (k, v) in p11.env() {
        std::env::set_var(k, v);
    }

    // --- key files, made by the openssl CLI -------------------------------
    let pass_arg = format!("pass:{PASS}");
    openssl(&dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa-pkcs8.pem"]);
    openssl(&dir, &["genrsa", "-traditional", "-out", "rsa-pkcs1.pem", "2048"]);
    openssl(&dir, &["ecparam", "-genkey", "-name", "prime256v1", "-out", "ec-sec1.pem"]);
    openssl(&dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256", "-pass", &pass_arg, "-out", "rsa-enc-pkcs8.pem"]);
    openssl(&dir, &["genrsa", "-traditional", "-aes128", "-passout", &pass_arg, "-out", "rsa-legacy-enc.pem", "2048"]);
    openssl(&dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "ec384-pkcs8.pem"]);
    // For the unwrap fallback.
    openssl(&dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", "rsa3072-pkcs8.pem"]);
    openssl(
        &dir,
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521", "-aes256", "-pass", &pass_arg, "-out", "ec521-enc-pkcs8.pem"],
    );
    openssl(&dir, &["genrsa", "-traditional", "-out", "rsa-b.pem", "2048"]);
    openssl(&dir, &["ecparam", "-genkey", "-name", "prime256v1", "-out", "ec-b.pem"]);
    openssl(&dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa-fail.pem"]);
    // Refused ones.
    openssl(&dir, &["genpkey", "-algorithm", "ed25519", "-out", "ed25519.pem"]);
    openssl(&dir, &["genrsa", "-out", "rsa1024.pem", "1024"]);
    openssl(&dir, &["ecparam", "-genkey", "-name", "secp256k1", "-out", "k1.pem"]);

    // --- the token, through the counting / fault-injecting wrapper --------
    let ctx = Pkcs11::new(p11.module()).expect("load the p11wrap module");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("C_Initialize");
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).map(|i| i.label().trim() == token.label).unwrap_or(false))
        .expect("the test token");
    let session = ctx.open_rw_session(slot).expect("R/W session");
    session.login(UserType::User, Some(&AuthPin::from(token.pin.clone()))).expect("user login");

    // --- formats that C_CreateObject takes directly -----------------------
    let mut imported = 0;
    // Decrypt only where asked for (--usage sign,decrypt).
    let plain = [
        ("rsa-pkcs8.pem", "rsa-pkcs8", &[0x01u8][..], false),
        ("rsa-pkcs1.pem", "rsa-pkcs1", &[0x02], true),
        ("ec-sec1.pem", "ec-sec1", &[0x03], false),
        ("ec384-pkcs8.pem", "ec384-pkcs8", &[0x04], false),
    ];
    for (file, label, id, decrypt) in plain {
        let key = read_plain(&dir.join(file));
        let done = import_key(&session, &key, label, id, Usage { decrypt }).unwrap_or_else(|e| panic!("import {file}: {e}"));
        assert_eq!(done, Imported { path: ImportPath::Created, frozen: Frozen::FULLY }, "{file}");
        imported += 1;
        check_imported(&session, &token, label, id, &dir.join(file), None, decrypt, Frozen::FULLY);
    }
    for (file, label, id, decrypt) in
        [("rsa-enc-pkcs8.pem", "rsa-enc-pkcs8", &[0x05u8][..], true), ("rsa-legacy-enc.pem", "rsa-legacy-enc", &[0x06], false)]
    {
        let key = read_encrypted(&dir.join(file));
        assert_eq!(
            import_key(&session, &key, label, id, Usage { decrypt }),
            Ok(Imported { path: ImportPath::Created, frozen: Frozen::FULLY }),
            "{file}"
        );
        imported += 1;
        check_imported(&session, &token, label, id, &dir.join(file), Some(PASS), decrypt, Frozen::FULLY);
    }
    // EC keys never decrypt: refused before anything is created.
    p11.reset();
    let err = import_key(&session, &read_plain(&dir.join("ec-b.pem")), "ec-decrypt", &[0x0e], Usage { decrypt: true }).unwrap_err().to_string();
    assert!(err.to_string().contains("EC keys never decrypt"), "{err}");
    assert_eq!(p11.count("C_CreateObject"), 0);
    check_no_leftovers(&session, imported, "after the direct imports");
    eprintln!("[keytool_import] created key, pkcs11-tool says: {}", access_line(&token, "rsa-pkcs8"));

    // --- wrong passphrase / passphrase errors -----------------------------
    for file in ["rsa-enc-pkcs8.pem", "rsa-legacy-enc.pem", "ec521-enc-pkcs8.pem"] {
        let mut asked = 0;
        let err = read_private_key_pem(&dir.join(file), &mut || {
            asked += 1;
            Ok(Zeroizing::new(WRONG.to_string()))
        })
        .map(|_| ())
        .unwrap_err();
        assert_eq!(asked, 1, "{file}: passphrase asks");
        assert!(err.contains("wrong passphrase"), "{file}: {err}");
        assert!(!err.contains(WRONG) && !err.contains(PASS), "{file}: passphrase in the error: {err}");
    }
    let err = read_private_key_pem(&dir.join("rsa-enc-pkcs8.pem"), &mut || Err("no terminal to ask on".into())).map(|_| ()).unwrap_err();
    assert!(err.contains("no terminal to ask on"), "{err}");

    // --- unsupported keys ---------------------------------------------------
    for (file, needle) in [
        ("ed25519.pem", "unsupported key type Ed25519"),
        ("rsa1024.pem", "RSA key of 1024 bits is too small"),
        ("k1.pem", "curve secp256k1 is not supported"),
    ] {
        let err = read_private_key_pem(&dir.join(file), &mut || Err("not encrypted".into())).map(|_| ()).unwrap_err();
        assert!(err.contains(needle), "{file}: {err}");
        assert!(err.contains("RSA (2048 bits or more) and EC on P-256, P-384 or P-521"), "{file}: {err}");
    }
    let err = read_private_key_pem(&dir.join("missing.pem"), &mut || Err("x".into())).map(|_| ()).unwrap_err();
    assert!(err.contains("cannot read"), "{err}");

    // --- a label in use is refused before anything is created -------------
    let spare = read_plain(&dir.join("rsa-fail.pem"));
    // A public key alone and a certificate alone also block their label.
    let spare_rsa = spare.rsa().unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(b"pub-only".to_vec()),
            Attribute::Modulus(spare_rsa.n().to_vec()),
            Attribute::PublicExponent(spare_rsa.e().to_vec()),
        ])
        .expect("create a public key object");
    openssl(
        &dir,
        &["req", "-x509", "-new", "-key", "rsa-fail.pem", "-subj", "/CN=cert-only", "-days", "1", "-outform", "DER", "-out", "cert-only.der"],
    );
    let cert_der = std::fs::read(dir.join("cert-only.der")).unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(b"cert-only".to_vec()),
            Attribute::Subject(openssl::x509::X509::from_der(&cert_der).unwrap().subject_name().to_der().unwrap()),
            Attribute::Value(cert_der),
        ])
        .expect("create a certificate object");
    p11.reset();
    for (label, what) in [("rsa-pkcs8", "private key"), ("pub-only", "public key"), ("cert-only", "certificate")] {
        let err = import_key(&session, &spare, label, &[0x42], Usage::default()).unwrap_err();
        assert!(matches!(err, ImportError::LabelTaken(_)), "{label}: {err:?}");
        assert!(err.to_string().contains(&format!("already has a {what} labelled \"{label}\"")), "{label}: {err}");
    }
    assert_eq!(p11.count("C_CreateObject"), 0, "objects created despite a taken label");
    assert_eq!(find(&session, ObjectClass::PRIVATE_KEY, "pub-only").len(), 0);
    check_no_leftovers(&session, imported, "after refused labels");

    // --- fallback a: plaintext private keys refused, AES session key taken --
    set_control(&p11, "failclass C_CreateObject CKO_PRIVATE_KEY CKR_TEMPLATE_INCONSISTENT\n");
    for (file, label, id, pass, decrypt) in [
        ("rsa3072-pkcs8.pem", "rsa3072-unwrapped", &[0x07u8][..], None, true),
        ("ec521-enc-pkcs8.pem", "ec521-unwrapped", &[0x08], Some(PASS), false),
    ] {
        let key = if pass.is_some() { read_encrypted(&dir.join(file)) } else { read_plain(&dir.join(file)) };
        p11.reset();
        let done = import_key(&session, &key, label, id, Usage { decrypt }).unwrap_or_else(|e| panic!("import {file}: {e}"));
        assert_eq!(done, Imported { path: ImportPath::Unwrapped, frozen: UNWRAPPED }, "{file}");
        let counts = p11.counts();
        eprintln!("[keytool_import] fallback a ({file}): {counts:?}");
        // Private key refused (frozen, each freezing attribute alone, plain),
        // AES key created, public key created.
        assert_eq!(p11.count("C_CreateObject"), 6, "{file}: {counts:?}");
        assert_eq!(p11.count("C_UnwrapKey"), 1, "{file}: {counts:?}");
        assert_eq!(p11.count("C_GenerateKeyPair"), 0, "{file}: {counts:?}");
        assert_eq!(p11.count("C_DestroyObject"), 1, "{file}: the AES key is destroyed: {counts:?}");
        imported += 1;
        check_imported(&session, &token, label, id, &dir.join(file), pass, decrypt, UNWRAPPED);
        check_no_leftovers(&session, imported, file);
    }
    eprintln!("[keytool_import] unwrapped key, pkcs11-tool says: {}", access_line(&token, "rsa3072-unwrapped"));

    // --- fallback b: AES session keys refused too: RSA-OAEP carries it in --
    set_control(
        &p11,
        "failclass C_CreateObject CKO_PRIVATE_KEY CKR_ATTRIBUTE_VALUE_INVALID\n\
         failclass C_CreateObject CKO_SECRET_KEY CKR_ATTRIBUTE_READ_ONLY\n",
    );
    for (file, label, id) in [("rsa-b.pem", "rsa-unwrapped-b", &[0x09u8][..]), ("ec-b.pem", "ec-unwrapped-b", &[0x0a])] {
        let key = read_plain(&dir.join(file));
        p11.reset();
        let done = import_key(&session, &key, label, id, Usage::default()).unwrap_or_else(|e| panic!("import {file}: {e}"));
        assert_eq!(done, Imported { path: ImportPath::Unwrapped, frozen: UNWRAPPED }, "{file}");
        let counts = p11.counts();
        eprintln!("[keytool_import] fallback b ({file}): {counts:?}");
        // Private key refused 4 times (as above), AES key refused, public key created.
        assert_eq!(p11.count("C_CreateObject"), 6, "{file}: {counts:?}");
        assert_eq!(p11.count("C_GenerateKeyPair"), 1, "{file}: {counts:?}");
        // OAEP-SHA-256 (SoftHSM2 2.6 refuses it), OAEP-SHA-1, AES key wrap pad.
        assert!(p11.count("C_UnwrapKey") >= 2, "{file}: {counts:?}");
        // AES key and both halves of the RSA transport pair.
        assert_eq!(p11.count("C_DestroyObject"), 3, "{file}: {counts:?}");
        imported += 1;
        check_imported(&session, &token, label, id, &dir.join(file), None, false, UNWRAPPED);
        check_no_leftovers(&session, imported, file);
    }

    // --- failures leave nothing behind --------------------------------------
    // Every C_CreateObject refused: the private key still gets in by
    // unwrapping, the public key cannot, so the private key is removed again.
    set_control(&p11, "fail C_CreateObject CKR_TEMPLATE_INCONSISTENT\n");
    p11.reset();
    let err = import_key(&session, &spare, "no-public", &[0x0b], Usage::default()).unwrap_err().to_string();
    assert!(err.contains("cannot create the public key") && err.contains("removed again"), "{err}");
    assert_eq!(p11.count("C_DestroyObject"), 4, "{:?}", p11.counts());
    nothing_labelled(&session, "no-public");
    check_no_leftovers(&session, imported, "after a refused public key");

    // The unwrap itself fails: the AES key is destroyed, nothing created.
    set_control(&p11, "failclass C_CreateObject CKO_PRIVATE_KEY CKR_TEMPLATE_INCONSISTENT\nfail C_UnwrapKey CKR_DEVICE_ERROR\n");
    p11.reset();
    let err = import_key(&session, &spare, "unwrap-fails", &[0x0c], Usage::default()).unwrap_err().to_string();
    assert!(err.contains("cannot unwrap the private key") && err.contains("CKR_DEVICE_ERROR"), "{err}");
    assert_eq!(p11.count("C_DestroyObject"), 1, "{:?}", p11.counts());
    nothing_labelled(&session, "unwrap-fails");
    check_no_leftovers(&session, imported, "after a failed unwrap");

    // An error that is not a refusal does not trigger the fallback.
    set_control(&p11, "failclass C_CreateObject CKO_PRIVATE_KEY CKR_DEVICE_ERROR\n");
    p11.reset();
    let err = import_key(&session, &spare, "device-error", &[0x0d], Usage::default()).unwrap_err().to_string();
    assert!(err.contains("cannot create the private key") && err.contains("CKR_DEVICE_ERROR"), "{err}");
    assert_eq!(p11.count("C_UnwrapKey"), 0, "{:?}", p11.counts());
    nothing_labelled(&session, "device-error");

    // And with the faults gone the same key imports directly.
    p11.clear_faults();
    assert_eq!(
        import_key(&session, &spare, "device-error", &[0x0d], Usage::default()),
        Ok(Imported { path: ImportPath::Created, frozen: Frozen::FULLY })
    );
    imported += 1;
    check_imported(&session, &token, "device-error", &[0x0d], &dir.join("rsa-fail.pem"), None, false, Frozen::FULLY);
    check_no_leftovers(&session, imported, "at the end");

    // --- the command line: generate and import, attributes read back -------
    // (pkcs11-tool shows neither CKA_MODIFIABLE nor CKA_COPYABLE.)
    let tool = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
            .args(args)
            .args(["--library", SOFTHSM_LIB, "--token", &token.label, "--pin", "env:KT_PIN", "--httpd-conf", "/dev/null"])
            .env("KT_PIN", &token.pin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    for (args, label, decrypt) in [
        (&["generate", "--label", "gen-rsa", "--type", "rsa:2048"][..], "gen-rsa", false),
        (&["generate", "--label", "gen-rsa-kx", "--type", "rsa:3072", "--usage", "sign,decrypt"], "gen-rsa-kx", true),
        (&["generate", "--label", "gen-ec", "--type", "ec:P-384"], "gen-ec", false),
        (&["import", "--label", "cli-rsa", "--key", dir.join("rsa-b.pem").to_str().unwrap(), "--usage", "sign,decrypt"], "cli-rsa", true),
        (&["import", "--label", "cli-ec", "--key", dir.join("ec-b.pem").to_str().unwrap()], "cli-ec", false),
    ] {
        let text = tool(args);
        assert!(text.contains("not modifiable, not copyable") && !text.contains("warning"), "{args:?}: {text}");
        let privs = find(&session, ObjectClass::PRIVATE_KEY, label);
        assert_eq!(privs.len(), 1, "{label}");
        for (t, want) in [
            (AttributeType::Sensitive, true),
            (AttributeType::Extractable, false),
            (AttributeType::Sign, true),
            (AttributeType::Decrypt, decrypt),
            (AttributeType::Modifiable, false),
            (AttributeType::Copyable, false),
        ] {
            assert_eq!(bool_attr(&session, privs[0], t), want, "{label}: private key {t:?}");
        }
    }

    session.logout().ok();
}

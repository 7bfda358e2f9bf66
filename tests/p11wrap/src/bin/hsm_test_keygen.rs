//! `hsm_test_keygen`: generates an RSA key pair on a token with private-key
//! attributes that `pkcs11-tool` cannot set (it only ever sets
//! CKA_SENSITIVE / CKA_DECRYPT to true, and SoftHSM2's defaults are true),
//! for tests of how the module treats such keys. Test helper only.
//!
//! ```text
//! hsm_test_keygen MODULE TOKEN-LABEL PIN BITS LABEL ID-HEX [ATTR=true|false ...]
//! ```
//! ATTR: `sensitive`, `extractable`, `decrypt`, `sign`; unless given, the
//! key is made sensitive, not extractable and may sign (CKA_DECRYPT is left
//! to the token). The token's configuration comes from the environment
//! (SOFTHSM2_CONF).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("hsm_test_keygen: {e}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let [module, token, pin, bits, label, id, attrs @ ..] = args.as_slice() else {
        return Err("usage: hsm_test_keygen MODULE TOKEN-LABEL PIN BITS LABEL ID-HEX [ATTR=true|false ...]".into());
    };
    let bits: u64 = bits.parse().map_err(|_| format!("bad bit count {bits}"))?;
    let id = (0..id.len() / 2).map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16)).collect::<Result<Vec<u8>, _>>().map_err(|e| e.to_string())?;
    let mut private = vec![Attribute::Token(true), Attribute::Private(true), Attribute::Label(label.as_bytes().to_vec()), Attribute::Id(id.clone())];
    let mut flags = vec![("sensitive", true), ("extractable", false), ("sign", true)];
    for a in attrs {
        let (name, value) = a.split_once('=').ok_or_else(|| format!("bad attribute {a}: give NAME=true|false"))?;
        let value: bool = value.parse().map_err(|_| format!("bad value in {a}"))?;
        flags.retain(|(n, _)| *n != name);
        flags.push((name, value));
    }
    for (name, value) in flags {
        private.push(match name {
            "sensitive" => Attribute::Sensitive(value),
            "extractable" => Attribute::Extractable(value),
            "decrypt" => Attribute::Decrypt(value),
            "sign" => Attribute::Sign(value),
            other => return Err(format!("unknown attribute {other}")),
        });
    }
    let public = [
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    let ctx = Pkcs11::new(module).map_err(|e| e.to_string())?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).map_err(|e| e.to_string())?;
    let slot = ctx
        .get_slots_with_token()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim() == token))
        .ok_or_else(|| format!("no token labelled {token}"))?;
    let session = ctx.open_rw_session(slot).map_err(|e| e.to_string())?;
    session.login(UserType::User, Some(&AuthPin::new(pin.clone().into()))).map_err(|e| e.to_string())?;
    session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private).map_err(|e| e.to_string())?;
    Ok(())
}

//! `delete`: removes the key pair (and its certificate) that httpd would use
//! for a label, and nothing else.
//!
//! A label is not an identity on a PKCS#11 token: other tools put data
//! objects, secret keys or a second key pair under the same label. So the
//! selection follows the module's key lookup (`Hsm::resolve`): exactly one
//! private key with the label (and `--id`, if given); with it go the public
//! keys and certificates with the same label and the same CKA_ID. Objects
//! of other classes are never touched. A second private key with the label,
//! or a public key or certificate with the label but another CKA_ID, makes
//! the choice ambiguous: refused unless `--id` names the pair.
//!
//! [`plan`] decides from the objects' class and id alone; [`delete`] reads
//! them from the token, prints the plan and asks.

use std::fmt::Write as _;
use std::io::Write as _;

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::cli::{DeleteArgs, TargetArgs};
use super::tool::{fail, Code, Res, Target};
use crate::pkcs11::token::ck_error_text;
use crate::pkcs11::uri::hex;

/// An object with the label, as far as choosing goes (`H`: its handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obj<H = ObjectHandle> {
    pub handle: H,
    /// None when the token does not say.
    pub class: Option<ObjectClass>,
    /// CKA_ID; None for classes that have none (data objects).
    pub id: Option<Vec<u8>>,
}

/// What `delete` will do.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<H = ObjectHandle> {
    /// The private key first, then its public keys and certificates.
    pub doomed: Vec<Obj<H>>,
    /// Objects with the label that stay.
    pub kept: Vec<Obj<H>>,
}

/// The classes `delete` may remove: a key pair and its certificate.
fn is_pair_class(c: Option<ObjectClass>) -> bool {
    matches!(c, Some(ObjectClass::PRIVATE_KEY | ObjectClass::PUBLIC_KEY | ObjectClass::CERTIFICATE))
}

/// Chooses among `objs` (every object labelled `label`); Err is the
/// message of a refusal (exit code 3), nothing deleted.
pub fn plan<H: Clone + PartialEq>(label: &str, objs: &[Obj<H>], id: Option<&[u8]>) -> Result<Plan<H>, String> {
    let privs: Vec<&Obj<H>> =
        objs.iter().filter(|o| o.class == Some(ObjectClass::PRIVATE_KEY) && id.map_or(true, |want| o.id.as_deref() == Some(want))).collect();
    let key = match privs.as_slice() {
        [one] => *one,
        [] => {
            let with = id.map(|i| format!(" and id {}", hex(i))).unwrap_or_default();
            let others = if objs.is_empty() {
                String::new()
            } else {
                format!(" ({}: delete removes only a key pair and its certificate)", describe_all(objs))
            };
            return Err(format!("no private key labelled '{label}'{with}{others}; nothing deleted"));
        }
        many => {
            let mut ids: Vec<String> = many.iter().map(|o| id_text(o)).collect();
            ids.sort();
            return Err(format!(
                "{} private keys are labelled '{label}' (ids {}); nothing deleted: add --id <hex> to delete one of them",
                many.len(),
                ids.join(", ")
            ));
        }
    };
    let same_pair = |o: &Obj<H>| is_pair_class(o.class) && o.id == key.id;
    if id.is_none() {
        let strays: Vec<Obj<H>> = objs.iter().filter(|o| is_pair_class(o.class) && !same_pair(o)).cloned().collect();
        if !strays.is_empty() {
            return Err(format!(
                "objects labelled '{label}' belong to another CKA_ID than the private key ({}): {}; nothing deleted: \
                 add --id {} to delete only that key pair and its certificate",
                id_text(key),
                describe_all(&strays),
                id_text(key)
            ));
        }
    }
    let mut doomed = vec![key.clone()];
    for class in [ObjectClass::PUBLIC_KEY, ObjectClass::CERTIFICATE] {
        doomed.extend(objs.iter().filter(|o| o.class == Some(class) && same_pair(o)).cloned());
    }
    let kept = objs.iter().filter(|o| !doomed.contains(o)).cloned().collect();
    Ok(Plan { doomed, kept })
}

fn class_name(c: Option<ObjectClass>) -> String {
    match c {
        Some(ObjectClass::PRIVATE_KEY) => "private key".into(),
        Some(ObjectClass::PUBLIC_KEY) => "public key".into(),
        Some(ObjectClass::CERTIFICATE) => "certificate".into(),
        Some(ObjectClass::DATA) => "data object".into(),
        Some(ObjectClass::SECRET_KEY) => "secret key".into(),
        Some(other) => format!("object of class {other}"),
        None => "object of unknown class".into(),
    }
}

fn id_text<H>(o: &Obj<H>) -> String {
    match o.id.as_deref() {
        Some([]) => "(empty)".into(),
        Some(id) => hex(id),
        None => "(none)".into(),
    }
}

/// "certificate 'www' id 0a0b" for a listing line.
pub fn describe<H>(label: &str, o: &Obj<H>) -> String {
    format!("{:<12} '{label}' id {}", class_name(o.class), id_text(o))
}

fn describe_all<H>(objs: &[Obj<H>]) -> String {
    objs.iter().map(|o| format!("{} (id {})", class_name(o.class), id_text(o))).collect::<Vec<_>>().join(", ")
}

/// Every object labelled `label`, with its class and id.
fn objects_labelled(s: &Session, label: &str) -> Res<Vec<Obj>> {
    let ck = |what: &str, e: cryptoki::error::Error| fail(Code::Setup, format!("{what}: {}", ck_error_text(&e)));
    let handles = s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]).map_err(|e| ck("searching the token", e))?;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let attrs = s.get_attributes(handle, &[AttributeType::Class, AttributeType::Id]).map_err(|e| ck("reading object attributes", e))?;
        let mut o = Obj { handle, class: None, id: None };
        for a in attrs {
            match a {
                Attribute::Class(c) => o.class = Some(c),
                Attribute::Id(v) => o.id = Some(v),
                _ => {}
            }
        }
        out.push(o);
    }
    Ok(out)
}

pub fn delete(o: &TargetArgs, a: &DeleteArgs) -> Res<String> {
    let (label, id) = a.key.get()?;
    let label = label.to_string();
    let t = Target::from_args(o)?;
    let (_ctx, s, token) = t.session()?;
    let objs = objects_labelled(&s, &label)?;
    let plan = plan(&label, &objs, id.as_deref()).map_err(|m| fail(Code::Key, format!("token '{token}': {m}")))?;
    // The listing always comes first, on stdout like every result, so a
    // log of a `--yes` run shows what went.
    let mut listing = format!("to delete from token '{token}':\n");
    for d in &plan.doomed {
        let _ = writeln!(listing, "  {}", describe(&label, d));
    }
    for k in &plan.kept {
        let _ = writeln!(listing, "  kept: {}", describe(&label, k));
    }
    // With --json, stdout holds only the JSON answer.
    if a.json {
        let mut err = std::io::stderr();
        let _ = err.write_all(listing.as_bytes()).and_then(|()| err.flush());
    } else {
        let mut out = std::io::stdout();
        let _ = out.write_all(listing.as_bytes()).and_then(|()| out.flush());
    }
    let n = plan.doomed.len();
    if !a.yes {
        let answer = super::tool::prompt_visible(&format!("Delete these {n} object(s) from token '{token}'? This cannot be undone. [y/N] "))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(fail(Code::Cancelled, "not deleted"));
        }
    }
    // The private key first: if the token refuses to destroy it, its
    // public key and certificate are still there.
    for (i, d) in plan.doomed.iter().enumerate() {
        s.destroy_object(d.handle).map_err(|e| {
            fail(
                Code::Setup,
                format!(
                    "deleting the {} '{label}' (id {}) from token '{token}': {}; {i} of the {n} objects listed above were deleted",
                    class_name(d.class),
                    id_text(d),
                    ck_error_text(&e)
                ),
            )
        })?;
    }
    if a.json {
        let row = |o: &Obj| serde_json::json!({ "class": class_name(o.class), "label": label, "id": o.id.as_deref().map(crate::pkcs11::uri::hex) });
        let deleted: Vec<_> = plan.doomed.iter().map(row).collect();
        let kept: Vec<_> = plan.kept.iter().map(row).collect();
        return super::commands::json_line(&serde_json::json!({ "token": token, "deleted": deleted, "kept": kept }));
    }
    Ok(format!("deleted {n} object(s) from token '{token}'\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(handle: u32, class: ObjectClass, id: Option<&[u8]>) -> Obj<u32> {
        Obj { handle, class: Some(class), id: id.map(<[u8]>::to_vec) }
    }

    const A: &[u8] = &[0x0a];
    const B: &[u8] = &[0x0b];

    #[test]
    fn the_key_pair_and_its_certificate_go_and_other_classes_stay() {
        let objs = [
            obj(1, ObjectClass::PUBLIC_KEY, Some(A)),
            obj(2, ObjectClass::DATA, None),
            obj(3, ObjectClass::PRIVATE_KEY, Some(A)),
            obj(4, ObjectClass::SECRET_KEY, Some(A)),
            obj(5, ObjectClass::CERTIFICATE, Some(A)),
        ];
        let p = plan("www", &objs, None).unwrap();
        assert_eq!(p.doomed, [objs[2].clone(), objs[0].clone(), objs[4].clone()]);
        assert_eq!(p.kept, [objs[1].clone(), objs[3].clone()]);
    }

    #[test]
    fn two_private_keys_or_a_stray_public_key_need_an_id() {
        let two = [
            obj(1, ObjectClass::PRIVATE_KEY, Some(A)),
            obj(2, ObjectClass::PUBLIC_KEY, Some(A)),
            obj(3, ObjectClass::PRIVATE_KEY, Some(B)),
            obj(4, ObjectClass::PUBLIC_KEY, Some(B)),
        ];
        let e = plan("www", &two, None).unwrap_err();
        assert!(e.contains("2 private keys") && e.contains("ids 0a, 0b") && e.contains("--id"), "{e}");
        let p = plan("www", &two, Some(B)).unwrap();
        assert_eq!(p.doomed, [two[2].clone(), two[3].clone()]);
        assert_eq!(p.kept, [two[0].clone(), two[1].clone()]);

        let stray = [obj(1, ObjectClass::PRIVATE_KEY, Some(A)), obj(2, ObjectClass::CERTIFICATE, Some(B))];
        let e = plan("www", &stray, None).unwrap_err();
        assert!(e.contains("another CKA_ID") && e.contains("certificate (id 0b)") && e.contains("--id 0a"), "{e}");
        assert_eq!(plan("www", &stray, Some(A)).unwrap().doomed, [stray[0].clone()]);
    }

    #[test]
    fn no_private_key_means_nothing_is_deleted() {
        let objs = [obj(1, ObjectClass::DATA, None), obj(2, ObjectClass::PUBLIC_KEY, Some(A))];
        let e = plan("www", &objs, None).unwrap_err();
        assert!(e.contains("no private key labelled 'www'") && e.contains("data object (id (none)), public key (id 0a)"), "{e}");
        let e = plan("www", &[obj(1, ObjectClass::PRIVATE_KEY, Some(A))], Some(B)).unwrap_err();
        assert!(e.contains("and id 0b"), "{e}");
    }
}

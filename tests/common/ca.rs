//! A per-test CA and server certificates carrying a given public key.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::{chmod, run_ok, stdout_string};

/// A throwaway CA: `ca.key` (file key) and self-signed `ca.crt` in `dir/ca`.
pub struct TestCa {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// The CA in `dir/ca`, created on first use and reused afterwards.
    pub fn in_dir(dir: &Path) -> TestCa {
        let cadir = dir.join("ca");
        let ca = TestCa { cert: cadir.join("ca.crt"), key: cadir.join("ca.key"), dir: cadir };
        if !ca.cert.exists() {
            std::fs::create_dir_all(&ca.dir).expect("create ca dir");
            chmod(&ca.dir, 0o755);
            run_ok(
                Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
                    .args(["-days", "3", "-subj", "/O=mod_hsm_ssl tests/CN=Test CA"])
                    .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                    .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                    .arg("-keyout")
                    .arg(&ca.key)
                    .arg("-out")
                    .arg(&ca.cert),
            );
            chmod(&ca.cert, 0o644);
        }
        ca
    }

    /// Issue a server certificate for `cn` with DNS SANs `dns_sans` (plus
    /// IP:127.0.0.1) whose subject public key is `pubkey_pem` — e.g. a token
    /// key's public key. The CSR is made with a throwaway file key and the
    /// public key is swapped in by `openssl x509 -force_pubkey`.
    /// Writes `<dir>/<cn>.crt` (PEM) and returns its path.
    pub fn issue(&self, dir: &Path, pubkey_pem: &Path, cn: &str, dns_sans: &[&str]) -> PathBuf {
        let stem: String = cn.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let throw_key = dir.join(format!("{stem}.throwaway.key"));
        let csr = dir.join(format!("{stem}.csr"));
        let ext = dir.join(format!("{stem}.ext"));
        let cert = dir.join(format!("{stem}.crt"));
        run_ok(
            Command::new("openssl")
                .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
                .args(["-subj", &format!("/CN={cn}")])
                .arg("-keyout")
                .arg(&throw_key)
                .arg("-out")
                .arg(&csr),
        );
        let mut sans: Vec<String> = dns_sans.iter().map(|d| format!("DNS:{d}")).collect();
        sans.push("IP:127.0.0.1".into());
        std::fs::write(
            &ext,
            format!(
                "basicConstraints = critical,CA:FALSE\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = {}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        let serial = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-sha256", "-days", "2", "-set_serial"])
                .arg(format!("0x{serial}"))
                .arg("-in")
                .arg(&csr)
                .arg("-force_pubkey")
                .arg(pubkey_pem)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        );
        let _ = std::fs::remove_file(&throw_key);
        chmod(&cert, 0o644);
        cert
    }
}

/// Issue a server cert carrying `pubkey_pem` from the CA in `dir/ca`
/// (created on first use; its cert is [`ca_cert`]`(dir)`).
pub fn make_cert(dir: &Path, pubkey_pem: &Path, cn: &str, dns_sans: &[&str]) -> PathBuf {
    TestCa::in_dir(dir).issue(dir, pubkey_pem, cn, dns_sans)
}

/// The CA certificate [`make_cert`] signs with for `dir`.
pub fn ca_cert(dir: &Path) -> PathBuf {
    TestCa::in_dir(dir).cert
}

/// A file private key (unencrypted PEM) for plain mod_ssl tests.
/// `spec`: "rsa:2048", "ec:prime256v1", "ec:secp384r1".
/// Returns (private key PEM, public key PEM).
pub fn file_key(dir: &Path, name: &str, spec: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let pubk = dir.join(format!("{name}.pub.pem"));
    let mut cmd = Command::new("openssl");
    cmd.arg("genpkey");
    match spec.split_once(':') {
        Some(("rsa", bits)) => cmd.args(["-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}")]),
        Some(("ec", curve)) => cmd.args(["-algorithm", "EC", "-pkeyopt", &format!("ec_paramgen_curve:{curve}")]),
        _ => panic!("bad key spec {spec}"),
    };
    run_ok(cmd.arg("-out").arg(&key));
    run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&pubk));
    (key, pubk)
}

/// The SubjectPublicKeyInfo of a certificate, as PEM text.
pub fn cert_pubkey_pem(cert: &Path) -> String {
    stdout_string(&run_ok(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(cert)))
}

/// Normalised PEM text of a public key file.
pub fn pubkey_pem_text(pubkey: &Path) -> String {
    stdout_string(&run_ok(Command::new("openssl").args(["pkey", "-pubin", "-in"]).arg(pubkey)))
}

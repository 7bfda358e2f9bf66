//! An Apache with mod_hsm_ssl in front of a fresh SoftHSM2 token, reached
//! through the counting wrapper (p11wrap): the setup most module tests use.

use std::path::PathBuf;

use super::*;

pub struct Site {
    pub token: Token,
    pub apache: Apache,
    pub p11: P11Log,
    /// Test CA and certificates: outside the server root, like the CA of a
    /// real deployment (the server root must hold no private key).
    pub pki: TestDir,
    pub ca: PathBuf,
}

impl Site {
    /// Token "web", Apache configured (not started) with HSMSSLLibrary = the
    /// wrapper around SoftHSM2 and HSMSSLPin env:HSM_TEST_PIN.
    pub fn new(name: &str, mpm: Mpm) -> Site {
        Self::with_config(name, ApacheConfig::new(name).mpm(mpm))
    }

    pub fn with_config(name: &str, cfg: ApacheConfig) -> Site {
        let token = Token::new("web");
        let mut apache = cfg.hsm_module().token(&token).build();
        let p11dir = apache.dir().join("p11");
        std::fs::create_dir_all(&p11dir).unwrap();
        // Children (www-data) write their per-process call logs here.
        chmod(&p11dir, 0o777);
        let p11 = P11Log::new(&p11dir);
        let pki = TestDir::new(&format!("{name}-pki"));
        let ca = ca_cert(pki.path());
        let wrap = p11.module();
        let pin = token.pin.clone();
        let p11env = p11.env();
        apache.reconfigure(|c| {
            c.global.push_str(&format!("HSMSSLLibrary {}\nHSMSSLPin env:HSM_TEST_PIN\n", wrap.display()));
            c.env.push(("HSM_TEST_PIN".into(), pin));
            c.env.extend(p11env);
        });
        Site { token, apache, p11, pki, ca }
    }

    /// Generates a key inside the token: "rsa:2048", "rsa:3072",
    /// "ec:P-256", "ec:P-384".
    pub fn key(&self, label: &str, spec: &str) {
        match spec {
            "rsa:2048" => self.token.gen_rsa(label, 2048),
            "rsa:3072" => self.token.gen_rsa(label, 3072),
            "ec:P-256" => self.token.gen_ec(label, "prime256v1"),
            "ec:P-384" => self.token.gen_ec(label, "secp384r1"),
            other => panic!("unknown key spec {other}"),
        };
        // Generated inside the token as sensitive and non-extractable.
        self.token.assert_private_key_protected(label);
    }

    /// A certificate from the test CA for the token key `label`.
    pub fn cert(&self, label: &str, dns: &str) -> PathBuf {
        make_cert(self.pki.path(), &self.token.public_key_pem(label), &format!("{label}.{dns}"), &[dns])
    }

    /// A vhost serving the token keys `labels` under `server_name`.
    pub fn vhost(&mut self, server_name: &str, labels: &[&str]) {
        let mut body = String::new();
        for label in labels {
            let cert = self.cert(label, server_name);
            body += &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"{}\"\n", cert.display(), self.token.key_uri(label));
        }
        self.apache.reconfigure(|c| c.vhosts.push(ssl_vhost(server_name, &body)));
    }

    /// Change the token's user PIN and the `HSM_TEST_PIN` apache2 gets.
    pub fn set_pin(&mut self, pin: &str) {
        self.token.set_pin(pin);
        self.apache.reconfigure(|c| {
            for (k, v) in c.env.iter_mut() {
                if k == "HSM_TEST_PIN" {
                    *v = pin.to_string();
                }
            }
        });
    }

    pub fn global(&mut self, lines: &str) {
        self.apache.reconfigure(|c| {
            c.global.push_str(lines);
            c.global.push('\n');
        });
    }

    pub fn try_start(&mut self) -> Result<(), StartError> {
        self.token.share();
        self.apache.start()
    }

    /// [`Site::start`] with httpd in the foreground (`-DFOREGROUND`).
    pub fn start_foreground(&mut self) {
        self.token.share();
        if let Err(e) = self.apache.start_foreground() {
            panic!("apache2 -DFOREGROUND with mod_hsm_ssl did not start: {e:?}");
        }
    }

    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("apache2 with mod_hsm_ssl did not start: {e:?}");
        }
    }

    /// One full handshake + GET that must succeed (verified against the
    /// test CA, HTTP 200).
    pub fn get(&self, o: ClientOpts) -> TlsResult {
        let r = self.try_get(o);
        if !(r.ok && r.verified && r.http_status == Some(200)) {
            panic!("handshake or GET failed:\n{}\n--- error_log ---\n{}", r.raw, self.apache.error_log());
        }
        r
    }

    pub fn try_get(&self, o: ClientOpts) -> TlsResult {
        tls_get(self.apache.port, &ClientOpts { cafile: Some(self.ca.clone()), ..o })
    }
}

/// Shorthand for the common ClientOpts.
pub fn tls(version: &'static str) -> ClientOpts {
    ClientOpts { tls: Some(version), ..Default::default() }
}

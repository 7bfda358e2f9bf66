//! Shared harness for the integration tests in `tests/*.rs` (`mod common;`).
//!
//! * [`TestDir`]: a per-test scratch directory (kept on failure).
//! * [`Token`]: a fresh SoftHSM2 token with its own `softhsm2.conf`.
//! * [`TestCa`] / [`make_cert`]: a per-test CA issuing server certs that
//!   carry a given public key (e.g. the token key's).
//! * [`ApacheConfig`] / [`Apache`]: Debian's real `/usr/sbin/apache2` on
//!   127.0.0.1 with a free port and a generated config.
//! * [`tls_get`]: `openssl s_client` as a TLS client, output parsed.
//! * [`P11Log`]: the counting / fault knob of the `hsm_test_p11wrap` wrapper.
//!
//! Users and permissions: apache2 is started as root (as in production) and
//! its children run as `User`/`Group` (default www-data, [`RUN_USER`]).
//! Everything a child must reach is made accessible to that user: test dirs
//! are 0755 under /tmp, the SoftHSM2 token directory is chowned to the run
//! user after every change the harness makes ([`Token`]), and the p11wrap log
//! is created mode 0666.
//!
//! Environment: nothing global is set in the test process (tests run in
//! parallel threads). Each command and each apache2 gets its env explicitly
//! (`SOFTHSM2_CONF`, `HSM_P11WRAP_*`), and these variables are removed from
//! what apache2 inherits so tests cannot leak into each other.
//!
//! Set `HSM_TEST_KEEP=1` to keep test directories of passing tests too.
//!
//! Typical use with the module under test (`LoadModule hsm_ssl_module`):
//!
//! ```ignore
//! let token = Token::new("t1");
//! token.gen_rsa("web", 2048);
//! let cert = make_cert(token.dir(), &token.public_key_pem("web"), "localhost", &["localhost"]);
//! let p11 = P11Log::new(token.dir());          // count / fail PKCS#11 calls
//! let apache = ApacheConfig::new("my-test")
//!     .hsm_module()                            // target/debug/libmod_hsm_ssl.so
//!     .token(&token)                           // SOFTHSM2_CONF
//!     .p11wrap(&p11)                           // HSM_P11WRAP_LOG/_CONTROL/_TARGET
//!     .global(&format!("# module directives, PKCS#11 lib = {}", p11.module().display()))
//!     .vhost(&ssl_vhost("localhost", &format!("SSLCertificateFile {}", cert.display())))
//!     .start()
//!     .expect("apache2 starts");
//! let r = tls_get(apache.port, &ClientOpts { tls: Some("1.3"), cafile: Some(ca_cert(token.dir())), ..Default::default() });
//! assert_eq!(r.http_status, Some(200));
//! assert!(p11.count("C_Sign") >= 1);
//! ```
//!
//! Other things worth knowing:
//! * `apache2 -k graceful|restart|stop` parse the whole config before
//!   signalling and refuse (exit 1) if it is broken; `Apache::graceful_signal`
//!   / `restart_signal` send the raw signal instead; `stop()` falls back to
//!   SIGTERM.
//! * PID 1 in these containers does not reap orphans, so exited apache2
//!   daemons stay as zombies (PPID 1); liveness checks treat zombies as dead.
//! * SoftHSM2 2.6 offers CKM_ECDSA but not CKM_ECDSA_SHA256 and friends.
//! * The server has TLS session tickets on; s_client is run without
//!   `-sess_in`, so every `tls_get` is a full handshake (one signature).

#![allow(dead_code, unused_imports)]

mod apache;
mod ca;
mod dirs;
mod load;
mod p11log;
mod site;
mod tls;
mod token;
mod util;

pub use apache::*;
pub use ca::*;
pub use dirs::*;
pub use load::*;
pub use p11log::*;
pub use site::*;
pub use tls::*;
pub use token::*;
pub use util::*;

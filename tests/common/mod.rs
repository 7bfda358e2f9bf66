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

#![allow(dead_code, unused_imports)]

mod apache;
mod ca;
mod dirs;
mod p11log;
mod tls;
mod token;
mod util;

pub use apache::*;
pub use ca::*;
pub use dirs::*;
pub use p11log::*;
pub use tls::*;
pub use token::*;
pub use util::*;

//! A process whose PKCS#11 library changes (the key tool, or httpd's
//! parent with `HSMSSLKeyService Off` across reloads that change
//! HSMSSLLibrary): the runtime closes the old library's state and opens the
//! new one, also when another thread opened the old one while this one
//! waited to open (it then holds the opening lock already, and used to
//! take it a second time: a hang).
//!
//! One test only: `pkcs11::runtime` keeps one PKCS#11 state per process.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{P11Log, Token, SOFTHSM_LIB};
use mod_hsm_ssl::pkcs11::runtime;
use mod_hsm_ssl::pkcs11::secret::Secret;
use mod_hsm_ssl::pkcs11::token::Binding;

/// Opens `b` on a thread of its own; the library it got, on `tx`.
fn open_on_a_thread(b: Arc<Binding>, tx: mpsc::Sender<(PathBuf, Result<PathBuf, String>)>) {
    std::thread::spawn(move || {
        let got = runtime::hsm_for(&b).map(|h| h.binding().library.clone()).map_err(|e| e.to_string());
        let _ = tx.send((b.library.clone(), got));
    });
}

#[test]
fn changing_the_library_closes_the_old_state_and_opens_the_new_one() {
    let token = Token::new("libswitch");
    std::env::set_var("SOFTHSM2_CONF", &token.conf);
    let p11 = P11Log::new(token.dir());
    for (k, v) in p11.env() {
        std::env::set_var(k, v);
    }
    let binding = |library: PathBuf| {
        Arc::new(Binding {
            library,
            pin: Arc::new(Secret::new(token.pin.clone().into_bytes())),
            default_token: Default::default(),
            max_sessions: 2,
            session_wait: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
            direct_calls: false,
        })
    };
    let (direct, wrapped) = (binding(SOFTHSM_LIB.into()), binding(p11.module()));
    let (tx, rx) = mpsc::channel();

    // One after the other: each change closes the state of the other library.
    for b in [&direct, &wrapped, &direct] {
        open_on_a_thread(b.clone(), tx.clone());
        let (want, got) = rx.recv_timeout(Duration::from_secs(20)).expect("opening a library hung");
        assert_eq!(got, Ok(want));
    }
    assert_eq!((p11.count("C_Initialize"), p11.count("C_Finalize")), (1, 1), "{:?}", p11.counts());

    // Overlapping: the wrapped library takes 500 ms to initialize; the
    // direct one is asked for meanwhile, waits for the opening lock, and
    // then finds the other library's state.
    runtime::shutdown();
    p11.delay("C_Initialize", 500);
    open_on_a_thread(wrapped.clone(), tx.clone());
    std::thread::sleep(Duration::from_millis(150));
    open_on_a_thread(direct.clone(), tx.clone());
    let mut got: Vec<(PathBuf, Result<PathBuf, String>)> =
        (0..2).map(|_| rx.recv_timeout(Duration::from_secs(20)).expect("a thread hung while the other opened another library")).collect();
    got.sort();
    let mut want = vec![(direct.library.clone(), Ok(direct.library.clone())), (wrapped.library.clone(), Ok(wrapped.library.clone()))];
    want.sort();
    assert_eq!(got, want);
    runtime::shutdown();
}

//! TLS 1.2 RSA key exchange: whatever the token answers to the premaster
//! C_Decrypt, a client sees what it sees for a bad premaster (the handshake
//! fails at its Finished with bad_record_mac), so there is no
//! Bleichenbacher / ROBOT oracle, and a decrypt error alone never makes the
//! token look down. Real httpd + SoftHSM2 behind the fault wrapper
//! (tests/p11wrap), with sslyze's ROBOT check (scripts/install-deps.sh
//! installs it in /opt/mod_hsm_ssl-venv).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SSLYZE: &str = "/opt/mod_hsm_ssl-venv/bin/sslyze";

/// Logged at startup for a key that decrypts raw, and for one that cannot.
const RAW_LINE: &str = "TLS 1.2 RSA key exchange: raw RSA (CKM_RSA_X_509)";
const PKCS1_LINE: &str = "the token offers no usable CKM_RSA_X_509 for decryption: the token checks the padding (CKM_RSA_PKCS)";

/// An RSA vhost served by one child (so that call counts and log lines
/// are that child's); `raw: false` hides CKM_RSA_X_509 from the token, so
/// the module falls back to CKM_RSA_PKCS.
fn rsa_site(name: &str, raw: bool) -> Site {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s.global("ServerLimit 1\nStartServers 1\nThreadLimit 16\nThreadsPerChild 16\nMaxRequestWorkers 16\nMinSpareThreads 1\nMaxSpareThreads 16");
    if !raw {
        s.p11.hide_mechanism("0x3");
    }
    s.start();
    // SoftHSM2 can refuse a login while the parent rewrites the token
    // file; the child then logs in again at its first handshakes.
    serving_within(&s, Duration::from_secs(5));
    s
}

/// The error log written after `mark` (a length of it taken earlier).
fn log_since(s: &Site, mark: usize) -> String {
    s.apache.error_log().get(mark..).unwrap_or_default().to_string()
}

/// Polls with ECDHE handshakes until one is served; fails after `limit`.
fn serving_within(s: &Site, limit: Duration) {
    let t = Instant::now();
    loop {
        let r = s.try_get(ecdhe());
        if r.ok && r.http_status == Some(200) {
            return;
        }
        assert!(t.elapsed() < limit, "not serving {limit:?} later:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The startup log says which mechanism the key decrypts with.
fn assert_mechanism_logged(s: &Site, raw: bool) {
    let log = s.apache.error_log();
    assert!(line_with_id(&log, "HSM00105").contains(if raw { RAW_LINE } else { PKCS1_LINE }), "mechanism choice not logged:\n{log}");
}

fn rsa_kx() -> ClientOpts {
    ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") }
}

fn ecdhe() -> ClientOpts {
    ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), ..tls("1.2") }
}

/// What a client sees when the server used a premaster other than the one
/// it sent: the server cannot decrypt the client's Finished and answers
/// bad_record_mac. A decrypt_error alert right after ClientKeyExchange, or a
/// page, would be something else.
fn assert_failed_like_a_bad_premaster(s: &Site, r: &TlsResult, what: &str) {
    assert!(r.http_status.is_none(), "{what}: served:\n{}", r.raw);
    assert!(r.raw.contains("alert bad record mac"), "{what}: not the bad-premaster failure:\n{}\n{}", r.raw, s.apache.error_log());
    assert!(!r.raw.contains("decrypt error"), "{what}: decrypt_error alert:\n{}", r.raw);
}

/// Waits up to 5 s for a line with message ID `id` in the error log.
fn wait_for_log(s: &Site, id: &str) {
    let t = Instant::now();
    while !has_id(&s.apache.error_log(), id) {
        assert!(t.elapsed() < Duration::from_secs(5), "no {id} line in the error log:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// sslyze's ROBOT verdict for the server, e.g. "NOT_VULNERABLE_NO_ORACLE".
fn robot(s: &Site, case: &str) -> String {
    assert!(std::path::Path::new(SSLYZE).exists(), "{SSLYZE} missing: run scripts/install-deps.sh");
    let json = s.pki.path().join(format!("robot-{}.json", case.replace([' ', '/'], "_")));
    let out =
        Command::new(SSLYZE).args(["--robot", "--json_out"]).arg(&json).arg(format!("127.0.0.1:{}", s.apache.port)).output().expect("run sslyze");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!("{case}: sslyze wrote no JSON ({e}):\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    // sslyze 6: server_scan_results[0].scan_result.robot holds "status"
    // and "error_reason" and, once it ran, "result": {"robot_result": ...}.
    let string_after = |from: usize, key: &str| -> Option<String> {
        let at = from + text[from..].find(key)? + key.len();
        let value = text[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(value.strip_prefix('"')?.split('"').next()?.to_string())
    };
    let robot = text.find("\"robot\"").unwrap_or_else(|| panic!("{case}: no ROBOT section in sslyze's JSON:\n{text}"));
    let verdict = string_after(robot, "\"robot_result\"")
        .or_else(|| string_after(robot, "\"error_reason\"").map(|e| format!("scan failed: {e}")))
        .unwrap_or_else(|| panic!("{case}: no ROBOT verdict in sslyze's JSON:\n{text}"));
    eprintln!("{case}: sslyze ROBOT {verdict}");
    verdict
}

/// The no-oracle verdicts: "NOT_VULNERABLE_NO_ORACLE" (not
/// "NOT_VULNERABLE_RSA_NOT_SUPPORTED": the vhost must offer RSA key exchange).
fn no_oracle(verdict: &str) -> bool {
    verdict == "NOT_VULNERABLE_NO_ORACLE"
}

/// Every scan found no oracle; without the faults the vhost serves RSA
/// key exchange, and the startup log named the mechanism.
fn assert_no_oracle_and_serving(s: &Site, verdicts: &[(String, String)], raw: bool) {
    assert!(verdicts.iter().all(|(_, v)| no_oracle(v)), "sslyze's ROBOT check: {verdicts:?}\n{}", s.apache.error_log());
    s.p11.clear_faults();
    s.get(rsa_kx());
    assert_mechanism_logged(s, raw);
}

/// The wrapper did answer some of sslyze's ciphertexts with its oracle code.
fn assert_oracle_fired(s: &Site, case: &str) {
    assert!(s.p11.count("C_Decrypt oracle") > 0, "{case}: the wrapper never answered as an oracle");
    s.p11.reset();
}

/// Error codes a token could use as an oracle: ones the module used to
/// treat as "the token is unusable" (a decrypt_error alert, and for all
/// but CKR_MECHANISM_INVALID a re-initialization and backoff).
const ORACLE_CODES: [&str; 6] = [
    "CKR_DEVICE_ERROR",
    "CKR_USER_NOT_LOGGED_IN",
    "CKR_KEY_HANDLE_INVALID",
    "CKR_SESSION_HANDLE_INVALID",
    "CKR_TOKEN_NOT_PRESENT",
    "CKR_MECHANISM_INVALID",
];

#[test]
fn sslyze_finds_no_robot_oracle_with_raw_rsa_even_if_the_token_errors_on_bad_padding() {
    let s = rsa_site("robot-raw", true);
    s.get(rsa_kx());
    let mut verdicts = vec![("raw".to_string(), robot(&s, "raw"))];
    s.p11.decrypt_oracle("CKR_DEVICE_ERROR");
    let case = "raw, CKR_DEVICE_ERROR for bad padding";
    verdicts.push((case.into(), robot(&s, case)));
    assert_oracle_fired(&s, case);
    assert_no_oracle_and_serving(&s, &verdicts, true);
}

#[test]
fn sslyze_finds_no_robot_oracle_when_the_token_checks_the_padding_whatever_its_error_codes() {
    let s = rsa_site("robot-pkcs1", false);
    s.get(rsa_kx());
    let mut verdicts = vec![("CKM_RSA_PKCS".to_string(), robot(&s, "CKM_RSA_PKCS"))];
    for rv in ORACLE_CODES {
        s.p11.clear_faults();
        s.p11.hide_mechanism("0x3");
        s.p11.decrypt_oracle(rv);
        // Each scan starts on a serving server, whatever the last one did.
        serving_within(&s, Duration::from_secs(3));
        let case = format!("CKM_RSA_PKCS, {rv} for bad padding");
        verdicts.push((case.clone(), robot(&s, &case)));
        assert_oracle_fired(&s, &case);
    }
    assert_no_oracle_and_serving(&s, &verdicts, false);
}

#[test]
fn a_token_that_fails_only_c_decrypt_costs_the_client_a_bad_premaster_and_nobody_else_anything() {
    for raw in [true, false] {
        let s = rsa_site(&format!("decrypt-only-{raw}"), raw);
        s.get(rsa_kx());
        let inits = s.p11.count("C_Initialize");
        let mark = s.apache.error_log().len();
        s.p11.fail("C_Decrypt", "CKR_DEVICE_ERROR");
        let r = s.try_get(rsa_kx());
        assert_failed_like_a_bad_premaster(&s, &r, "C_Decrypt fails");
        // Another client, at once: the token is not marked unavailable.
        s.get(ecdhe());
        // The probe looked at the token without client data and found it fine.
        wait_for_log(&s, "HSM00406");
        let log = log_since(&s, mark);
        assert!(line_with_id(&log, "HSM00406").contains("CKR_DEVICE_ERROR"), "{log}");
        assert!(!has_id(&log, "HSM00400"), "a decrypt error marked the token down:\n{log}");
        assert!(with_any_id(&log, &["HSM00502", "HSM00530"]).is_empty(), "{log}");
        assert_eq!(s.p11.count("C_Initialize"), inits, "a decrypt error re-initialized PKCS#11:\n{log}");
        // Many failing decrypts: still the same answer, and still no harm.
        for i in 0..4 {
            assert_failed_like_a_bad_premaster(&s, &s.try_get(rsa_kx()), &format!("C_Decrypt fails, client {i}"));
        }
        s.get(ecdhe());
        s.p11.clear_faults();
        s.get(rsa_kx());
    }
}

#[test]
fn a_real_outage_is_still_found_by_the_probe_and_service_returns() {
    let s = rsa_site("outage", true);
    s.get(rsa_kx());
    let inits = s.p11.count("C_Initialize");
    for f in ["C_Sign", "C_Decrypt", "C_GetSessionInfo", "C_GetTokenInfo"] {
        s.p11.fail(f, "CKR_DEVICE_ERROR");
    }
    // Only RSA key-exchange clients: the probe is what notices the outage.
    let r = s.try_get(rsa_kx());
    assert!(r.http_status.is_none(), "served during an outage:\n{}", r.raw);
    wait_for_log(&s, "HSM00407");
    wait_for_log(&s, "HSM00400");
    assert!(s.p11.count("C_Initialize") > inits, "the probe's failure did not re-initialize:\n{}", s.apache.error_log());
    let r = s.try_get(ecdhe());
    assert!(r.http_status.is_none() && r.raw.contains("alert"), "served during an outage:\n{}", r.raw);
    s.p11.clear_faults();
    serving_within(&s, Duration::from_secs(3));
    s.get(rsa_kx());
}

#[test]
fn decrypt_results_of_the_wrong_length_cost_the_client_a_bad_premaster() {
    for (raw, lens) in [(false, [47, 49]), (true, [47, 257])] {
        let s = rsa_site(&format!("len-{raw}"), raw);
        s.get(rsa_kx());
        let mark = s.apache.error_log().len();
        for n in lens {
            s.p11.clear_faults();
            if !raw {
                s.p11.hide_mechanism("0x3");
            }
            s.p11.decrypt_len(n);
            assert_failed_like_a_bad_premaster(&s, &s.try_get(rsa_kx()), &format!("raw {raw}: {n} bytes"));
            s.get(ecdhe());
        }
        let log = log_since(&s, mark);
        assert!(with_any_id(&log, &["HSM00400", "HSM00502", "HSM00530"]).is_empty(), "{log}");
    }
}

#[test]
fn an_error_for_some_ciphertexts_only_is_a_bad_premaster_for_those_and_nothing_else() {
    let s = rsa_site("faildata", false);
    s.get(rsa_kx());
    let mark = s.apache.error_log().len();
    s.p11.fail_decrypt_for_some_data("CKR_DEVICE_ERROR");
    let (mut served, mut failed) = (0, 0);
    for i in 0..14 {
        let r = s.try_get(rsa_kx());
        if r.http_status == Some(200) {
            served += 1;
        } else {
            assert_failed_like_a_bad_premaster(&s, &r, &format!("client {i}"));
            failed += 1;
        }
    }
    assert_eq!(failed, s.p11.count("C_Decrypt faildata"), "each failed client is one failed C_Decrypt");
    assert!(served > 0 && failed > 0, "{served} served, {failed} failed: the knob did not split the ciphertexts");
    s.get(ecdhe());
    let log = log_since(&s, mark);
    assert!(with_any_id(&log, &["HSM00400", "HSM00502", "HSM00530"]).is_empty(), "{log}");
}

#[test]
fn a_token_that_lists_raw_rsa_but_refuses_it_gets_ckm_rsa_pkcs_and_rsa_key_exchange_works() {
    let mut s = Site::new("rsakx-failmech", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s.global("ServerLimit 1\nStartServers 1\nThreadLimit 16\nThreadsPerChild 16\nMaxRequestWorkers 16\nMinSpareThreads 1\nMaxSpareThreads 16");
    // Listed with the decrypt flag (nothing hidden), refused when used.
    s.p11.fail_decrypt_mechanism("0x3", "CKR_MECHANISM_INVALID");
    s.start();
    serving_within(&s, Duration::from_secs(5));
    let log = s.apache.error_log();
    assert!(line_with_id(&log, "HSM00460").contains("CKR_MECHANISM_INVALID"), "{log}");
    assert!(line_with_id(&log, "HSM00105").contains(PKCS1_LINE) && !log.contains(RAW_LINE), "{log}");
    assert!(s.p11.count("C_DecryptInit failmech") >= 1, "the trial never met the refusal");
    let r = s.get(rsa_kx());
    assert_eq!(r.http_status, Some(200), "{}", r.raw);
}

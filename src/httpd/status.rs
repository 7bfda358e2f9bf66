//! The handlers that show the token work (`pkcs11::stats`):
//! `SetHandler hsm-ssl-status` (HTML, or JSON with `?json`),
//! `hsm-ssl-metrics` (Prometheus text format) and `hsm-ssl-health` (200 or
//! 503 with a one-line reason, for load balancers).
//!
//! They read the shared counters in the child that serves the request; no
//! request reaches the key service or the token. Nothing shown comes from
//! the PIN or its source: token labels and serials, key URIs (redacted as
//! in the log), counters and times.

use std::ffi::{c_int, CStr};
use std::fmt::Write;
use std::time::Duration;

use crate::ffi::httpd::{self, request_rec};
use crate::pkcs11::stats::{self, KeyView, Snapshot, TokenView, BUCKETS_US};

pub const STATUS: &str = "hsm-ssl-status";
pub const METRICS: &str = "hsm-ssl-metrics";
pub const HEALTH: &str = "hsm-ssl-health";

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// httpd's handler hook: serves the three handlers, declines the rest.
///
/// # Safety
/// `r` is the live request httpd passes to a handler.
pub unsafe extern "C" fn handler(r: *mut request_rec) -> c_int {
    const DECLINED: c_int = httpd::DECLINED;
    crate::ffi::guard("handler", DECLINED, || {
        // SAFETY: httpd's request; its strings are NUL-terminated or null.
        let (name, args, method, header_only) = unsafe {
            let rr = &*r;
            if rr.handler.is_null() {
                return DECLINED;
            }
            let args = (!rr.args.is_null()).then(|| CStr::from_ptr(rr.args).to_string_lossy().into_owned());
            (CStr::from_ptr(rr.handler).to_bytes(), args, rr.method_number, rr.header_only != 0)
        };
        let which = match name {
            b"hsm-ssl-status" => STATUS,
            b"hsm-ssl-metrics" => METRICS,
            b"hsm-ssl-health" => HEALTH,
            _ => return DECLINED,
        };
        if method != httpd::M_GET as c_int {
            return httpd::HTTP_METHOD_NOT_ALLOWED as c_int;
        }
        let s = stats::snapshot();
        let max_age = super::config::snapshot().health_max_age.unwrap_or(super::config::DEFAULT_HEALTH_MAX_AGE);
        let healthy = health(&s, max_age);
        let (status, ctype, body): (u32, &'static CStr, String) = match which {
            METRICS => (httpd::HTTP_OK, c"text/plain; version=0.0.4; charset=utf-8", prometheus(&s)),
            HEALTH => match &healthy {
                Ok(line) => (httpd::HTTP_OK, c"text/plain; charset=utf-8", format!("{line}\n")),
                Err(why) => (httpd::HTTP_SERVICE_UNAVAILABLE, c"text/plain; charset=utf-8", format!("{why}\n")),
            },
            _ if args.as_deref().is_some_and(|a| a.split('&').any(|p| p == "json")) => (httpd::HTTP_OK, c"application/json", json(&s)),
            _ => (httpd::HTTP_OK, c"text/html; charset=utf-8", html(&s, &healthy)),
        };
        // SAFETY: the live request; the content type and header values
        // are 'static, as httpd keeps the pointers.
        unsafe {
            (*r).status = status as c_int;
            httpd::ap_set_content_type(r, ctype.as_ptr());
            httpd::apr_table_setn((*r).headers_out, c"Cache-Control".as_ptr(), c"no-store".as_ptr());
            if !header_only {
                httpd::ap_rwrite(body.as_ptr().cast(), body.len() as c_int, r);
            }
        }
        httpd::OK as c_int
    })
}

/// mod_status's `status_hook` (its optional hook, run only when mod_status
/// is loaded): a section of `/server-status`, or `Key: value` lines in its
/// `?auto` form.
///
/// # Safety
/// `r` is the live request mod_status passes.
pub unsafe extern "C" fn server_status(r: *mut request_rec, flags: c_int) -> c_int {
    crate::ffi::guard("status hook", httpd::OK as c_int, || {
        let s = stats::snapshot();
        let max_age = super::config::snapshot().health_max_age.unwrap_or(super::config::DEFAULT_HEALTH_MAX_AGE);
        let text = if flags & AP_STATUS_SHORT != 0 { status_auto(&s, &health(&s, max_age)) } else { status_section(&s, &health(&s, max_age)) };
        // SAFETY: the live request; the text outlives the call.
        unsafe { httpd::ap_rwrite(text.as_ptr().cast(), text.len() as c_int, r) };
        httpd::OK as c_int
    })
}

/// mod_status.h's AP_STATUS_SHORT: the `?auto` form.
const AP_STATUS_SHORT: c_int = 0x1;

/// The `?auto` lines.
pub fn status_auto(s: &Snapshot, healthy: &Result<String, String>) -> String {
    let ops: u64 = s.keys.iter().map(|k| k.signs + k.decrypts).sum();
    let failures: u64 = s.keys.iter().map(|k| k.errors).sum();
    let state = s.tokens.first().map(|t| t.state).unwrap_or("unknown");
    let health = match healthy {
        Ok(_) => "OK".to_string(),
        Err(why) => why.replace('\n', " "),
    };
    format!(
        "HSMSSLOperations: {ops}\nHSMSSLFailures: {failures}\nHSMSSLTokenState: {state}\nHSMSSLKeyServiceRestarts: {}\nHSMSSLHealth: {health}\n",
        s.service_restarts
    )
}

/// The HTML section of `/server-status`.
pub fn status_section(s: &Snapshot, healthy: &Result<String, String>) -> String {
    let mut o = String::from("<hr /><h2>mod_hsm_ssl</h2>\n");
    let _ = writeln!(
        o,
        "<p>{}</p>",
        he(match healthy {
            Ok(l) => l,
            Err(l) => l,
        })
    );
    o.push_str("<table border=\"0\"><tr><th>Token</th><th>State</th><th>Last success</th><th>Sessions</th><th>Errors</th></tr>\n");
    for t in &s.tokens {
        let errors: u64 = t.errors.iter().map(|(_, n)| n).sum::<u64>() + t.other_errors;
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{errors}</td></tr>",
            he(&t.label),
            t.state,
            when(s.now_ms, t.last_success_ms),
            t.sessions_in_use,
            t.sessions_limit
        );
    }
    o.push_str("</table>\n<table border=\"0\"><tr><th>Key</th><th>Signatures</th><th>Decrypts</th><th>Failures</th><th>p50</th><th>p99</th></tr>\n");
    for k in &s.keys {
        let q = |q| quantile_ms(k, q).map(|v| if v.is_finite() { format!("{v} ms") } else { "over 5 s".into() }).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            he(&k.uri),
            k.signs,
            k.decrypts,
            k.errors,
            q(0.5),
            q(0.99)
        );
    }
    o.push_str("</table>\n");
    o
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn ago(now_ms: u64, ms: u64) -> Option<f64> {
    (ms > 0).then(|| secs(now_ms.saturating_sub(ms)))
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jopt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "null".into())
}

/// A Unix time in seconds, or null for 0 (never).
fn jtime(ms: u64) -> String {
    jopt((ms > 0).then(|| secs(ms)))
}

fn quantile_ms(k: &KeyView, q: f64) -> Option<f64> {
    k.quantile_us(q).map(|us| if us == u64::MAX { f64::INFINITY } else { us as f64 / 1000.0 })
}

fn jms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        Some(_) => "\"+Inf\"".into(),
        None => "null".into(),
    }
}

/// `?json`: everything, for tools.
pub fn json(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"version\":{},\"started\":{:.3},\"uptime_seconds\":{:.3},\"configuration_loads\":{},\"key_service_restarts\":{},\"tokens\":[",
        js(VERSION),
        secs(s.started_ms),
        secs(s.now_ms.saturating_sub(s.started_ms)),
        s.reloads,
        s.service_restarts
    );
    for (i, t) in s.tokens.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let errors: Vec<String> = t.errors.iter().map(|(c, n)| format!("{}:{n}", js(c))).collect();
        let _ = write!(
            o,
            "{{\"label\":{},\"serial\":{},\"state\":{},\"state_since\":{},\"last_error\":{},\"last_success\":{},\"last_probe\":{},\
             \"logins\":{{\"ok\":{},\"refused\":{}}},\"reinitializations\":{},\"retries\":{},\"timeouts\":{},\"session_wait_timeouts\":{},\
             \"sessions\":{{\"in_use\":{},\"limit\":{}}},\"probes\":{{\"ok\":{},\"failed\":{}}},\"errors\":{{{}}},\"other_errors\":{}}}",
            js(&t.label),
            js(&t.serial),
            js(t.state),
            jtime(t.state_since_ms),
            t.last_error.as_deref().map(js).unwrap_or_else(|| "null".into()),
            jtime(t.last_success_ms),
            jtime(t.last_probe_ms),
            t.logins_ok,
            t.logins_refused,
            t.reinits,
            t.retries,
            t.timeouts,
            t.session_wait_timeouts,
            t.sessions_in_use,
            t.sessions_limit,
            t.probes_ok,
            t.probes_failed,
            errors.join(","),
            t.other_errors
        );
    }
    o.push_str("],\"keys\":[");
    for (i, k) in s.keys.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let token = k.token.and_then(|t| s.tokens.get(t)).map(|t| js(&t.label)).unwrap_or_else(|| "null".into());
        let hist: Vec<String> = k
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = BUCKETS_US.get(i).map(|us| format!("{}", *us as f64 / 1000.0)).unwrap_or_else(|| "\"+Inf\"".into());
                format!("{{\"le_ms\":{le},\"count\":{n}}}")
            })
            .collect();
        let _ = write!(
            o,
            "{{\"uri\":{},\"token\":{},\"operations\":{{\"sign\":{},\"decrypt\":{}}},\"errors\":{},\"last_success\":{},\
             \"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"sum\":{},\"count\":{}}},\"histogram\":[{}]}}",
            js(&k.uri),
            token,
            k.signs,
            k.decrypts,
            k.errors,
            jtime(k.last_success_ms),
            jms(quantile_ms(k, 0.5)),
            jms(quantile_ms(k, 0.9)),
            jms(quantile_ms(k, 0.99)),
            k.sum_us as f64 / 1000.0,
            k.count(),
            hist.join(",")
        );
    }
    o.push_str("]}\n");
    o
}

/// A Prometheus label value.
fn pl(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP mod_hsm_ssl_{name} {help}");
        let _ = writeln!(self.out, "# TYPE mod_hsm_ssl_{name} {kind}");
    }
    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "mod_hsm_ssl_{name} {value}");
        } else {
            let _ = writeln!(self.out, "mod_hsm_ssl_{name}{{{labels}}} {value}");
        }
    }
}

fn tl(t: &TokenView) -> String {
    format!("token=\"{}\",serial=\"{}\"", pl(&t.label), pl(&t.serial))
}

fn kl(s: &Snapshot, k: &KeyView) -> String {
    let token = k.token.and_then(|t| s.tokens.get(t)).map(|t| t.label.as_str()).unwrap_or("");
    format!("key=\"{}\",token=\"{}\"", pl(&k.uri), pl(token))
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn prometheus(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.head("info", "gauge", "The module's version.");
    f.line("info", &format!("version=\"{}\"", pl(VERSION)), 1);
    f.head("start_time_seconds", "gauge", "When httpd's parent started counting (Unix time).");
    f.line("start_time_seconds", "", secs(s.started_ms));
    f.head("configuration_loads_total", "counter", "Restarts and graceful restarts since the start.");
    f.line("configuration_loads_total", "", s.reloads);
    f.head("key_service_restarts_total", "counter", "Times httpd's parent started the key service again after it died.");
    f.line("key_service_restarts_total", "", s.service_restarts);

    f.head("operations_total", "counter", "Private-key operations sent to the token, by key and kind.");
    for k in &s.keys {
        f.line("operations_total", &format!("{},op=\"sign\"", kl(s, k)), k.signs);
        f.line("operations_total", &format!("{},op=\"decrypt\"", kl(s, k)), k.decrypts);
    }
    f.head("operation_failures_total", "counter", "Private-key operations that failed before or at the token, by key.");
    for k in &s.keys {
        f.line("operation_failures_total", &kl(s, k), k.errors);
    }
    f.head("operation_duration_seconds", "histogram", "Time of a private-key operation in the process that talks to the token.");
    for k in &s.keys {
        let labels = kl(s, k);
        let mut cumulative = 0;
        for (i, n) in k.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_US.get(i).map(|us| format!("{}", *us as f64 / 1e6)).unwrap_or_else(|| "+Inf".into());
            f.line("operation_duration_seconds_bucket", &format!("{labels},le=\"{le}\""), cumulative);
        }
        f.line("operation_duration_seconds_sum", &labels, k.sum_us as f64 / 1e6);
        f.line("operation_duration_seconds_count", &labels, cumulative);
    }
    f.head("key_last_success_timestamp_seconds", "gauge", "When an operation with the key last succeeded (Unix time; 0: never).");
    for k in &s.keys {
        f.line("key_last_success_timestamp_seconds", &kl(s, k), secs(k.last_success_ms));
    }

    f.head("token_errors_total", "counter", "PKCS#11 return codes other than CKR_OK, by token and code.");
    for t in &s.tokens {
        for (code, n) in &t.errors {
            f.line("token_errors_total", &format!("{},code=\"{}\"", tl(t), pl(code)), n);
        }
        if t.other_errors > 0 {
            f.line("token_errors_total", &format!("{},code=\"other\"", tl(t)), t.other_errors);
        }
    }
    f.head("token_logins_total", "counter", "Logins to the token, by result.");
    for t in &s.tokens {
        f.line("token_logins_total", &format!("{},result=\"ok\"", tl(t)), t.logins_ok);
        f.line("token_logins_total", &format!("{},result=\"refused\"", tl(t)), t.logins_refused);
    }
    type Counter = fn(&TokenView) -> u64;
    let counters: [(&str, &str, Counter); 4] = [
        ("token_reinitializations_total", "PKCS#11 library re-initializations after token faults.", |t| t.reinits),
        ("token_retries_total", "Operations tried again after what looked like throttling.", |t| t.retries),
        ("token_timeouts_total", "Operations the token did not answer within HSMSSLOperationTimeout.", |t| t.timeouts),
        ("token_session_wait_timeouts_total", "Operations that found no free session in time.", |t| t.session_wait_timeouts),
    ];
    for (name, help, get) in counters {
        f.head(name, "counter", help);
        for t in &s.tokens {
            f.line(name, &tl(t), get(t));
        }
    }
    f.head("token_probes_total", "counter", "Health probes of an idle token, by result.");
    for t in &s.tokens {
        f.line("token_probes_total", &format!("{},result=\"ok\"", tl(t)), t.probes_ok);
        f.line("token_probes_total", &format!("{},result=\"failed\"", tl(t)), t.probes_failed);
    }
    f.head("token_state", "gauge", "1 for the token's current state (serving, backing_off, down, unknown).");
    for t in &s.tokens {
        for state in ["serving", "backing_off", "down", "unknown"] {
            f.line("token_state", &format!("{},state=\"{state}\"", tl(t)), u8::from(t.state == state));
        }
    }
    let gauges: [(&str, &str, Counter); 5] = [
        ("token_state_since_timestamp_seconds", "When the token entered its current state (Unix time).", |t| t.state_since_ms),
        ("token_last_success_timestamp_seconds", "When an operation on the token last succeeded (Unix time; 0: never).", |t| t.last_success_ms),
        ("token_last_probe_timestamp_seconds", "When a health probe of the token last succeeded (Unix time; 0: never).", |t| t.last_probe_ms),
        ("token_sessions_in_use", "Sessions busy with an operation now.", |t| t.sessions_in_use),
        ("token_sessions_limit", "HSMSSLMaxSessions of the process that talks to the token.", |t| t.sessions_limit),
    ];
    for (name, help, get) in gauges {
        f.head(name, "gauge", help);
        for t in &s.tokens {
            let v = get(t);
            if name.ends_with("_seconds") {
                f.line(name, &tl(t), secs(v));
            } else {
                f.line(name, &tl(t), v);
            }
        }
    }
    out
}

/// The health answer: Ok(line) for 200, Err(reason) for 503.
pub fn health(s: &Snapshot, max_age: Duration) -> Result<String, String> {
    if s.tokens.is_empty() {
        return Err("no token in use yet".into());
    }
    let max = max_age.as_millis() as u64;
    for t in &s.tokens {
        let since = ago(s.now_ms, t.state_since_ms).map(|a| format!(" for {a:.0} s")).unwrap_or_default();
        let last = t.last_error.as_deref().map(|e| format!(" (last error {e})")).unwrap_or_default();
        match t.state {
            "down" => return Err(format!("token '{}' is down{since}: the PIN was refused{last}", t.label)),
            "backing_off" => return Err(format!("token '{}' is failing{since}{last}", t.label)),
            _ => {}
        }
        let newest = t.last_success_ms.max(t.last_probe_ms);
        if newest == 0 || s.now_ms.saturating_sub(newest) > max {
            let seen = ago(s.now_ms, newest).map(|a| format!("for {a:.0} s")).unwrap_or_else(|| "yet".into());
            return Err(format!("no successful operation or probe on token '{}' {seen}{last}", t.label));
        }
    }
    let t = &s.tokens[0];
    let newest = t.last_success_ms.max(t.last_probe_ms);
    Ok(format!("OK: token '{}' serving, last success {:.0} s ago", t.label, secs(s.now_ms.saturating_sub(newest))))
}

fn he(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn when(now_ms: u64, ms: u64) -> String {
    match ago(now_ms, ms) {
        Some(a) => format!("{a:.0} s ago"),
        None => "never".into(),
    }
}

/// The page for people: readable without tools, a bar per latency bucket.
pub fn html(s: &Snapshot, health: &Result<String, String>) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mod_hsm_ssl status</title>\n<style>\
         body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #bbb;padding:.2em .6em;text-align:left}.bar{background:#4a7;height:.9em}\
         .ok{color:#070}.bad{color:#b00}</style></head><body>\n",
    );
    let _ = writeln!(
        o,
        "<h1>mod_hsm_ssl {}</h1>\n<p>Up {:.0} s; configuration loads {}; key service restarts {}.</p>",
        he(VERSION),
        secs(s.now_ms.saturating_sub(s.started_ms)),
        s.reloads,
        s.service_restarts
    );
    match health {
        Ok(l) => {
            let _ = writeln!(o, "<p class=\"ok\">{}</p>", he(l));
        }
        Err(l) => {
            let _ = writeln!(o, "<p class=\"bad\">Unhealthy: {}</p>", he(l));
        }
    }
    o.push_str("<h2>Tokens</h2>\n<table><tr><th>Token</th><th>State</th><th>Last success</th><th>Last probe</th><th>Logins ok / refused</th><th>Re-inits</th><th>Retries</th><th>Timeouts</th><th>Session waits timed out</th><th>Sessions in use / limit</th><th>Errors</th></tr>\n");
    for t in &s.tokens {
        let errors: Vec<String> = t.errors.iter().map(|(c, n)| format!("{} {n}", he(c))).collect();
        let _ = writeln!(
            o,
            "<tr><td>{} ({})</td><td>{} since {}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            he(&t.label),
            he(&t.serial),
            t.state,
            when(s.now_ms, t.state_since_ms),
            when(s.now_ms, t.last_success_ms),
            when(s.now_ms, t.last_probe_ms),
            t.logins_ok,
            t.logins_refused,
            t.reinits,
            t.retries,
            t.timeouts,
            t.session_wait_timeouts,
            t.sessions_in_use,
            t.sessions_limit,
            if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
        );
    }
    o.push_str("</table>\n<h2>Keys</h2>\n");
    for k in &s.keys {
        let p = |q| match quantile_ms(k, q) {
            Some(v) if v.is_finite() => format!("≤ {v} ms"),
            Some(_) => "over 5 s".into(),
            None => "-".into(),
        };
        let _ = writeln!(
            o,
            "<h3>{}</h3>\n<p>Signatures {}, decrypts {}, failures {}; last success {}. Latency p50 {}, p90 {}, p99 {}.</p>\n<table><tr><th>Up to</th><th>Operations</th><th></th></tr>",
            he(&k.uri),
            k.signs,
            k.decrypts,
            k.errors,
            when(s.now_ms, k.last_success_ms),
            p(0.5),
            p(0.9),
            p(0.99)
        );
        let most = k.buckets.iter().copied().max().unwrap_or(0).max(1);
        for (i, n) in k.buckets.iter().enumerate() {
            let le = BUCKETS_US.get(i).map(|us| format!("{} ms", *us as f64 / 1000.0)).unwrap_or_else(|| "more".into());
            let _ = writeln!(
                o,
                "<tr><td>{le}</td><td>{n}</td><td style=\"width:20em\"><div class=\"bar\" style=\"width:{}%\"></div></td></tr>",
                n * 100 / most
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut buckets = vec![0; BUCKETS_US.len() + 1];
        buckets[2] = 3;
        buckets[4] = 1;
        Snapshot {
            now_ms: 100_000,
            started_ms: 40_000,
            service_restarts: 1,
            reloads: 2,
            tokens: vec![TokenView {
                label: "web \"tier\"".into(),
                serial: "42".into(),
                state: "serving",
                state_since_ms: 50_000,
                last_success_ms: 99_000,
                logins_ok: 2,
                errors: vec![("CKR_DEVICE_ERROR".into(), 3)],
                sessions_limit: 16,
                ..Default::default()
            }],
            keys: vec![KeyView {
                uri: "pkcs11:object=www".into(),
                token: Some(0),
                signs: 3,
                decrypts: 1,
                buckets,
                sum_us: 6_000,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn metrics_have_help_type_cumulative_buckets_and_escaped_labels() {
        let m = prometheus(&sample());
        assert!(m.contains("# TYPE mod_hsm_ssl_operations_total counter"));
        assert!(m.contains("mod_hsm_ssl_operations_total{key=\"pkcs11:object=www\",token=\"web \\\"tier\\\"\",op=\"sign\"} 3"), "{m}");
        assert!(
            m.contains("mod_hsm_ssl_operation_duration_seconds_bucket{key=\"pkcs11:object=www\",token=\"web \\\"tier\\\"\",le=\"0.001\"} 3"),
            "{m}"
        );
        assert!(
            m.contains("le=\"+Inf\"} 4")
                && m.contains("mod_hsm_ssl_operation_duration_seconds_count{key=\"pkcs11:object=www\",token=\"web \\\"tier\\\"\"} 4"),
            "{m}"
        );
        assert!(m.contains("code=\"CKR_DEVICE_ERROR\"} 3"), "{m}");
        assert!(m.contains("state=\"serving\"} 1") && m.contains("state=\"down\"} 0"), "{m}");
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("mod_hsm_ssl_"), "{l}");
        }
    }

    #[test]
    fn json_and_html_carry_the_counts() {
        let s = sample();
        let j = json(&s);
        assert!(
            j.contains("\"operations\":{\"sign\":3,\"decrypt\":1}") && j.contains("\"p50\":1,") && j.contains("\"label\":\"web \\\"tier\\\"\""),
            "{j}"
        );
        let h = html(&s, &health(&s, Duration::from_secs(30)));
        assert!(h.contains("web &quot;tier&quot;") && h.contains("Signatures 3, decrypts 1") && h.contains("class=\"bar\""), "{h}");
    }

    #[test]
    fn health_says_why_not() {
        let mut s = sample();
        assert!(health(&s, Duration::from_secs(30)).unwrap().starts_with("OK: token 'web \"tier\"' serving"));
        assert!(health(&s, Duration::from_millis(500)).unwrap_err().contains("no successful operation or probe"));
        s.tokens[0].state = "backing_off";
        s.tokens[0].last_error = Some("CKR_DEVICE_ERROR".into());
        assert_eq!(health(&s, Duration::from_secs(30)).unwrap_err(), "token 'web \"tier\"' is failing for 50 s (last error CKR_DEVICE_ERROR)");
        s.tokens.clear();
        assert_eq!(health(&s, Duration::from_secs(30)).unwrap_err(), "no token in use yet");
    }
}

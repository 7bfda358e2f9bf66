//! The status page, the metrics and the health check (`SetHandler
//! hsm-ssl-status|hsm-ssl-metrics|hsm-ssl-health`): real httpd with the key
//! service, SoftHSM2 behind the fault wrapper, handshakes with
//! `openssl s_client`, and the handlers read over a plain-HTTP listener
//! (as a load balancer would: it must answer while the token is down).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The code block of docs/monitoring.md in `lang` whose first line is
/// `first` (any first line if None).
fn doc_block(lang: &str, first: Option<&str>) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring.md")).unwrap();
    doc.split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| first.map_or(true, |f| b.lines().next() == Some(f)))
        .unwrap_or_else(|| panic!("docs/monitoring.md has no {lang} block starting {first:?}"))
        .to_string()
}

/// A site with one RSA key, two event children, the key service, and the
/// three handlers on a plain-HTTP listener at `port`, configured with the
/// Apache block of docs/monitoring.md.
fn status_site(name: &str, port: u16, extra: &str) -> Site {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    let handlers = doc_block("apache", None).replace("8081", &port.to_string());
    assert!(handlers.contains(&format!("Listen 127.0.0.1:{port}")), "the documented listener moved:\n{handlers}");
    // `Require local` and `Require ip` are mod_authz_host's (loaded by
    // every distribution's default configuration, not by the harness).
    s.global(&format!(
        "LoadModule authz_host_module /usr/lib/apache2/modules/mod_authz_host.so\n{handlers}\
         StartServers 2\nServerLimit 2\nThreadsPerChild 4\nMaxRequestWorkers 8\nMinSpareThreads 1\nMaxSpareThreads 8\n{extra}"
    ));
    s
}

/// One plain-HTTP GET: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: hsm-status.internal\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // Chunked bodies: keep the text, drop the chunk sizes.
    let body = if out.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut rest = body.as_str();
        let mut text = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            text.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        text
    } else {
        body
    };
    (status, body)
}

/// The number after `"field":` in the JSON's first key object.
fn json_number(json: &str, field: &str) -> u64 {
    let needle = format!("\"{field}\":");
    let at = json.find(&needle).unwrap_or_else(|| panic!("no {field} in {json}")) + needle.len();
    json[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

/// The value of the metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
}

const SIGNS: &str = "mod_hsm_ssl_operations_total{key=\"pkcs11:token=web;object=www-rsa;type=private\",token=\"web\",op=\"sign\"}";

#[test]
fn counts_are_exact_across_children_and_a_graceful_restart() {
    let port = free_port();
    let mut s = status_site("status-count", port, "");
    s.start();
    s.get(tls("1.3"));
    let signs = || json_number(&http_get(port, "/hsm-status?json").1, "sign");
    let before = signs();
    assert!(before >= 1, "the first handshake was not counted");
    // Twenty full handshakes, spread over both children by the MPM.
    for _ in 0..20 {
        assert_eq!(s.get(tls("1.3")).http_status, Some(200));
    }
    assert_eq!(signs(), before + 20, "{}", http_get(port, "/hsm-status?json").1);
    let m = http_get(port, "/hsm-metrics").1;
    assert_eq!(metric(&m, SIGNS), (before + 20) as f64, "{m}");
    assert_eq!(s.p11.sign_ops() as u64, before + 20, "the token's own count differs");

    // A graceful restart replaces the children and the key service; the
    // counters go on from where they were.
    s.apache.graceful().expect("graceful restart");
    for _ in 0..5 {
        assert_eq!(s.get(tls("1.3")).http_status, Some(200));
    }
    let j = http_get(port, "/hsm-status?json").1;
    assert_eq!(json_number(&j, "sign"), before + 25, "{j}");
    assert!(json_number(&j, "configuration_loads") >= 1, "{j}");
    let m = http_get(port, "/hsm-metrics").1;
    assert_eq!(metric(&m, SIGNS), (before + 25) as f64);
    assert_eq!(metric(&m, "mod_hsm_ssl_operation_duration_seconds_count{key=\"pkcs11:token=web;object=www-rsa;type=private\""), (before + 25) as f64);
    // Logins: one per key service (start, graceful), none refused.
    assert!(metric(&m, "mod_hsm_ssl_token_logins_total{token=\"web\"") >= 2.0, "{m}");

    // The page for people, and nothing of the PIN anywhere.
    let (code, page) = http_get(port, "/hsm-status");
    assert_eq!(code, 200);
    assert!(page.contains("<h1>mod_hsm_ssl") && page.contains("class=\"bar\"") && page.contains("serving"), "{page}");
    for body in [&page, &j, &m] {
        assert!(!body.contains(&s.token.pin), "the PIN is shown");
    }
}

#[test]
fn health_answers_503_while_the_token_is_down_and_200_once_it_is_back() {
    let port = free_port();
    let s = {
        let mut s = status_site("status-health", port, "HSMSSLHealthProbeInterval 1\nHSMSSLHealthMaxAge 3\nHSMSSLOperationTimeout 2");
        s.start();
        s
    };
    s.get(tls("1.3"));
    let (code, body) = http_get(port, "/hsm-health");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("OK: token 'web' serving"), "{body}");

    // Every token call fails: the idle probe finds it, health says so.
    s.p11.fail("C_GetSessionInfo", "CKR_DEVICE_ERROR");
    s.p11.fail("C_Sign", "CKR_DEVICE_ERROR");
    let t = Instant::now();
    let reason = loop {
        let (code, body) = http_get(port, "/hsm-health");
        if code == 503 {
            break body;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "health still {code} 8 s after the token went down: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(reason.contains("token 'web'") && reason.contains("CKR_DEVICE_ERROR"), "{reason}");
    let m = http_get(port, "/hsm-metrics").1;
    assert!(metric(&m, "mod_hsm_ssl_token_errors_total{token=\"web\",serial=") >= 1.0, "{m}");
    assert!(m.contains("code=\"CKR_DEVICE_ERROR\""), "{m}");

    // Back: 200 again.
    s.p11.clear_faults();
    let t = Instant::now();
    loop {
        let (code, body) = http_get(port, "/hsm-health");
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "health still {code} 8 s after the token came back: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn mod_status_shows_a_section_when_loaded() {
    let port = free_port();
    let status = format!(
        "LoadModule status_module /usr/lib/apache2/modules/mod_status.so\n\
         <VirtualHost 127.0.0.1:{port}>\n  ServerName server-status.local\n\
         <Location /server-status>\n    SetHandler server-status\n  </Location>\n</VirtualHost>"
    );
    let mut s = status_site("status-mod-status", port, &status);
    s.start();
    for _ in 0..3 {
        s.get(tls("1.3"));
    }
    let signs = json_number(&http_get(port, "/hsm-status?json").1, "sign");
    // The name-based vhost of the status listener serves the handlers; the
    // second one (server-status.local) mod_status.
    let get = |path: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET {path} HTTP/1.0\r\nHost: server-status.local\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let auto = get("/server-status?auto");
    assert!(auto.contains(&format!("HSMSSLOperations: {signs}")), "{auto}");
    assert!(auto.contains("HSMSSLTokenState: serving") && auto.contains("HSMSSLHealth: OK"), "{auto}");
    let page = get("/server-status");
    assert!(page.contains("<h2>mod_hsm_ssl</h2>") && page.contains("pkcs11:token=web;object=www-rsa"), "{page}");
}

#[test]
fn promtool_accepts_the_metrics_and_a_real_prometheus_scrapes_them() {
    let port = free_port();
    let mut s = status_site("status-prometheus", port, "");
    s.start();
    for _ in 0..4 {
        s.get(tls("1.3"));
    }
    let metrics = http_get(port, "/hsm-metrics").1;
    let signs = metric(&metrics, SIGNS);

    // Debian's promtool: the exposition format and Prometheus' naming rules.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{metrics}");

    // Debian's Prometheus server on loopback scrapes the handler every
    // second; its query API then has the same count.
    let dir = TestDir::new("status-prometheus-server");
    let web = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hsm\n    metrics_path: /hsm-metrics\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let mut server = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) is installed");
    let query = "/api/v1/query?query=mod_hsm_ssl_operations_total%7Bop%3D%22sign%22%7D";
    let t = Instant::now();
    let answer = loop {
        let answer = std::panic::catch_unwind(|| http_get(web, query).1).unwrap_or_default();
        if answer.contains("\"result\":[{") {
            break answer;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = server.kill();
            panic!("Prometheus has no mod_hsm_ssl_operations_total 60 s after it started: {answer}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(answer.contains(&format!("\"{signs}\"]")), "Prometheus says {answer}, the handler {signs}");
}

#[test]
fn the_documented_prometheus_configuration_and_alerts_pass_promtool() {
    let dir = TestDir::new("status-doc-promtool");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, doc_block("yaml", Some("# prometheus.yml"))).unwrap();
    std::fs::write(dir.path().join("hsm-ssl-alerts.yml"), doc_block("yaml", Some("# hsm-ssl-alerts.yml"))).unwrap();
    // `check config` also checks the rule files the configuration names.
    let out = std::process::Command::new("promtool").arg("check").arg("config").arg(&config).output().expect("promtool is installed");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check config:\n{said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
}

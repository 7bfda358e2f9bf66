//! After a package upgrade replaces the module file, a graceful restart
//! keeps running the old code (the module pins itself in memory, see
//! src/httpd/upgrade.rs): the reload says so in the error log (HSM00118),
//! configtest says so beforehand (HSM00119), and a stop and start runs the
//! new file and says nothing.

mod common;

use common::*;

#[test]
fn a_replaced_module_file_is_named_at_reload_and_in_configtest_until_a_full_restart() {
    let mut s = Site::new("upgrade", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    let dir = TestDir::new("upgrade-module");
    let so = dir.path().join("mod_hsm_ssl.so");
    std::fs::copy(module_path(), &so).unwrap();
    s.apache.reconfigure(|c| c.module = Some(so.clone()));
    s.start();
    s.get(tls("1.3"));

    // Nothing replaced: a graceful restart and configtest say nothing.
    s.apache.graceful().expect("graceful restart");
    s.get(tls("1.3"));
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "{out}");
    assert!(!has_id(&out, "HSM00119"), "{out}");
    assert!(!has_id(&s.apache.error_log(), "HSM00118"), "{}", s.apache.error_log());

    // The upgrade: a new file renamed over the old one, as rpm and dpkg do.
    let new = dir.path().join("mod_hsm_ssl.so.new");
    std::fs::copy(module_path(), &new).unwrap();
    std::fs::rename(&new, &so).unwrap();
    let master = s.apache.master_pid().expect("a running httpd");
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "configtest must still pass:\n{out}");
    let l = line_with_id(&out, "HSM00119");
    assert!(l.contains(&format!("(pid {master})")) && l.contains("[hsm_ssl:warn]"), "{l}");

    // The reload serves on (with the old code) and says what to do.
    s.apache.graceful().expect("graceful restart after the upgrade");
    s.get(tls("1.3"));
    let log = s.apache.error_log();
    let said = with_id(&log, "HSM00118");
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&format!("{} was replaced", so.display())) && said[0].contains("stop and start httpd"), "{}", said[0]);

    // Stop and start: the new file runs, nothing more is said.
    assert!(s.apache.stop(), "httpd did not stop");
    s.start();
    s.get(tls("1.3"));
    s.apache.graceful().expect("graceful restart after the full restart");
    s.get(tls("1.3"));
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "{out}");
    assert!(!has_id(&out, "HSM00119"), "{out}");
    assert_eq!(with_id(&s.apache.error_log(), "HSM00118").len(), 1, "{}", s.apache.error_log());

    // A removed file is named too (the loader finds the pinned module by
    // its name, so the reload still works).
    std::fs::remove_file(&so).unwrap();
    s.apache.restart_signal().expect("restart (SIGHUP) with the module file removed");
    let log = s.apache.error_log();
    let said = with_id(&log, "HSM00118");
    assert!(said.len() == 2 && said[1].contains(&format!("{} was removed", so.display())), "{log}");
    s.get(tls("1.3"));
}

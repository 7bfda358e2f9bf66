//! Build script: generates Rust declarations for the parts of httpd, APR and
//! OpenSSL that the module calls and that `openssl-sys` does not declare.
//!
//! * httpd/APR headers are found through `apxs -q` (Debian: /usr/include/apache2,
//!   Amazon Linux: /usr/include/httpd), or `HSM_SSL_APXS` to name another apxs.
//! * OpenSSL's provider ABI (core_dispatch.h, core_names.h), the ENGINE and the
//!   legacy OSSL_STORE loader entry points come from the system OpenSSL 3 headers,
//!   the same ones openssl-sys links against.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn apxs_query(apxs: &str, var: &str) -> Option<String> {
    let out = Command::new(apxs).arg("-q").arg(var).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn find_apxs() -> String {
    if let Ok(a) = env::var("HSM_SSL_APXS") {
        return a;
    }
    for cand in ["apxs", "apxs2", "/usr/bin/apxs", "/usr/sbin/apxs"] {
        if Command::new(cand).arg("-q").arg("INCLUDEDIR").output().map(|o| o.status.success()).unwrap_or(false) {
            return cand.to_string();
        }
    }
    panic!(
        "apxs not found: install the httpd development package \
         (Debian: apache2-dev, Amazon Linux: httpd-devel) or set HSM_SSL_APXS=/path/to/apxs"
    );
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ffi/httpd_wrapper.h");
    println!("cargo:rerun-if-changed=src/ffi/ossl_wrapper.h");
    println!("cargo:rerun-if-env-changed=HSM_SSL_APXS");

    let apxs = find_apxs();
    let mut includes: Vec<String> = Vec::new();
    for var in ["INCLUDEDIR", "APR_INCLUDEDIR", "APU_INCLUDEDIR"] {
        if let Some(dir) = apxs_query(&apxs, var) {
            if !includes.contains(&dir) {
                includes.push(dir);
            }
        }
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // Generate code for the oldest toolchain we support (Cargo.toml's
    // rust-version), so the crate builds with Amazon Linux's packaged Rust.
    let Ok(target) = bindgen::RustTarget::stable(77, 0) else { panic!("bindgen does not know Rust 1.77") };

    let mut httpd = bindgen::Builder::default()
        .rust_target(target)
        .header("src/ffi/httpd_wrapper.h")
        .clang_arg("-D_GNU_SOURCE")
        .clang_arg("-DLINUX")
        .clang_arg("-D_REENTRANT")
        .allowlist_function("ap_(getword_conf|log_error_|hook_post_config|hook_pre_config|hook_child_init|hook_test_config|hook_check_config|mpm_query|state_query|check_cmd_context|server_root_relative|runtime_dir_relative|get_server_name_for_url|set_module_config)")
        .allowlist_function("apr_proc_other_child_(register|unregister)|apr_pool_(create_ex|destroy)")
        .allowlist_var("ap_unixd_config|APR_OC_REASON_.*")
        .allowlist_type("apr_proc_t|unixd_config_rec")
        .allowlist_function("apr_(pool_cleanup_register|pool_cleanup_null|pool_cleanup_kill|palloc|pstrdup|optional_hook_add|pool_userdata_get|pool_userdata_set|hook_sort_register)")
        .allowlist_var("ap_conftree|ap_server_conf|ap_pid_fname")
        // The status, metrics and health handlers (src/httpd/status.rs).
        .allowlist_function("ap_(hook_handler|rwrite|set_content_type)|apr_table_setn")
        .allowlist_type("request_rec")
        .allowlist_var("M_GET|HTTP_OK|HTTP_SERVICE_UNAVAILABLE|HTTP_METHOD_NOT_ALLOWED")
        .allowlist_type("module_struct|command_struct|cmd_parms_struct|server_rec|process_rec|apr_array_header_t|ap_directive_t|server_addr_rec")
        .allowlist_var("MODULE_MAGIC_(COOKIE|NUMBER_MAJOR|NUMBER_MINOR)|RSRC_CONF|OR_.*|GLOBAL_ONLY|NOT_IN_.*|APLOG_(EMERG|ALERT|CRIT|ERR|WARNING|NOTICE|INFO|DEBUG|TRACE1|NOERRNO)|APR_HOOK_.*|AP_MPMQ_.*|AP_SQ_.*|OK|DECLINED|DONE|HTTP_INTERNAL_SERVER_ERROR|APR_SUCCESS|AP_MODULE_FLAG_NONE")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false);
    for inc in &includes {
        httpd = httpd.clang_arg(format!("-I{inc}"));
    }
    httpd
        .generate()
        .expect("bindgen failed on the httpd/APR headers (is apache2-dev / httpd-devel installed?)")
        .write_to_file(out.join("httpd.rs"))
        .expect("write httpd.rs");

    // OpenSSL 4.0 has no ENGINE API: the ENGINE shim (src/tls/loader.rs)
    // is built only against 3.x (openssl-sys reports the version it found).
    println!("cargo:rustc-check-cfg=cfg(ossl_engine)");
    let version = std::env::var("DEP_OPENSSL_VERSION_NUMBER").ok().and_then(|v| u64::from_str_radix(&v, 16).ok());
    if version.is_some_and(|v| v < 0x4000_0000) {
        println!("cargo:rustc-cfg=ossl_engine");
    }
    bindgen::Builder::default()
        .rust_target(target)
        .header("src/ffi/ossl_wrapper.h")
        .allowlist_function("OSSL_PROVIDER_(add_builtin|load|unload|get0_name)")
        .allowlist_function("OSSL_PARAM_.*")
        .allowlist_function("ENGINE_(new|free|add|remove|by_id|set_id|set_name|set_load_privkey_function|set_flags|get_id|get_first|get_next)")
        .allowlist_function("OSSL_STORE_LOADER_(fetch|free|get0_provider)|OpenSSL_version")
        .allowlist_var("OPENSSL_ENGINES_DIR|OSSL_OBJECT_(PKEY|PARAM_.*)|OSSL_STORE_PARAM_.*")
        .allowlist_function("EVP_PKEY_(get_utf8_string_param|get_size_t_param|is_a)|ERR_(set_mark|pop_to_mark|clear_last_mark)")
        .allowlist_var("OSSL_FUNC_.*|OSSL_OP_.*|OSSL_PARAM_(INTEGER|UNSIGNED_INTEGER|UTF8_STRING|OCTET_STRING|UTF8_PTR|OCTET_PTR)|OSSL_KEYMGMT_SELECT_.*|OSSL_STORE_INFO_.*")
        .allowlist_var("OSSL_(PKEY|SIGNATURE|ASYM_CIPHER|PROV)_PARAM_.*|OSSL_PKEY_RSA_PAD_MODE_.*|OSSL_PKEY_EC_.*|OSSL_PKEY_RSA_PSS_SALT_LEN_.*")
        .allowlist_function("SSL_CTX_get_ciphers|SSL_CIPHER_get_kx_nid")
        .allowlist_var("NID_kx_(rsa|rsa_psk|any)")
        .allowlist_type("OSSL_FUNC_.*_fn")
        .allowlist_type("OSSL_PARAM|OSSL_CALLBACK|OSSL_DISPATCH|OSSL_ALGORITHM|OSSL_CORE_HANDLE|OSSL_provider_init_fn|UI_METHOD|OSSL_STORE_LOADER")
        .blocklist_type("EVP_PKEY|evp_pkey_st|OSSL_LIB_CTX|ossl_lib_ctx_st|BIGNUM|bignum_st|ENGINE|engine_st|OSSL_PROVIDER|ossl_provider_st")
        .blocklist_type("SSL_CTX|ssl_ctx_st|SSL_CIPHER|ssl_cipher_st|stack_st_SSL_CIPHER")
        .raw_line("pub use openssl_sys::{EVP_PKEY, OSSL_LIB_CTX, BIGNUM, ENGINE, OSSL_PROVIDER};")
        .raw_line("pub use openssl_sys::{SSL_CTX, SSL_CIPHER, stack_st_SSL_CIPHER};")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on the OpenSSL headers (is libssl-dev / openssl-devel installed?)")
        .write_to_file(out.join("ossl.rs"))
        .expect("write ossl.rs");
}

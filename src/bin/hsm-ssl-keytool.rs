//! hsm-ssl-keytool: generate, import and certify web-server keys that never
//! leave the HSM. See `hsm-ssl-keytool --help` and the README.

use std::path::Path;
use std::process::ExitCode;

use mod_hsm_ssl::keytool::commands::{self, USAGE};
use mod_hsm_ssl::keytool::policy::Usage;
use mod_hsm_ssl::keytool::tool::{check_out_path, fail, write_out_file, Code, Opts, Res, Target};
use mod_hsm_ssl::keytool::{delete, import, x509};

/// Options each command accepts besides the common ones.
fn allowed(cmd: &str) -> Option<&'static [&'static str]> {
    Some(match cmd {
        "generate" => &["--label", "--type", "--usage"],
        "import" => &["--label", "--key", "--passphrase", "--usage"],
        "csr" => &["--label", "--subject", "--san", "--out", "--force"],
        "selfsign" => &["--label", "--subject", "--san", "--days", "--out", "--force"],
        "list" => &["--cert", "--json"],
        "check" => &["--cert", "--key"],
        "delete" => &["--label", "--id", "--yes"],
        "config" => &["--label", "--cert", "--server-name"],
        _ => return None,
    })
}

/// `--out` (see `tool::write_out_file`), or stdout without it.
fn write_out(o: &Opts, pem: String, what: &str) -> Res<String> {
    match o.get("--out") {
        Some(path) => {
            write_out_file(Path::new(path), pem.as_bytes(), o.flag("--force"))?;
            Ok(format!("{what} written to {path}\n"))
        }
        None => Ok(pem),
    }
}

fn sign_x509(o: &Opts, selfsigned: bool) -> Res<String> {
    let subject = o.need("--subject")?;
    let sans = match o.get("--san") {
        Some(s) => x509::parse_sans(s).map_err(|e| fail(Code::Usage, format!("--san: {e}")))?,
        None => Vec::new(),
    };
    x509::parse_subject(subject).map_err(|e| fail(Code::Usage, format!("--subject: {e}")))?;
    if let Some(out) = o.get("--out") {
        // Before the token signs anything.
        check_out_path(Path::new(out), o.flag("--force"))?;
    }
    let days: u32 = match (selfsigned, o.get("--days")) {
        (false, _) => 0,
        (true, Some(d)) => {
            d.parse().ok().filter(|d| (1..=36500).contains(d)).ok_or_else(|| fail(Code::Usage, "--days: a number of days from 1 to 36500"))?
        }
        (true, None) => return Err(fail(Code::Usage, "--days is required (see --help)")),
    };
    let t = Target::from_opts(o)?;
    let uri = commands::label_uri(o)?;
    let (_, key) = commands::resolve(&t, &uri)?;
    let pkey = x509::token_pkey(key).map_err(|e| fail(Code::Key, e))?;
    if selfsigned {
        let pem = x509::selfsigned_pem(&pkey, subject, &sans, days).map_err(|e| fail(Code::Other, e))?;
        write_out(o, pem, "certificate")
    } else {
        let pem = x509::csr_pem(&pkey, subject, &sans).map_err(|e| fail(Code::Other, e))?;
        write_out(o, pem, "certificate request")
    }
}

fn import_cmd(o: &Opts) -> Res<String> {
    let label = o.label()?.to_string();
    let path = std::path::PathBuf::from(o.need("--key")?);
    let pass_source = match o.get("--passphrase") {
        Some(p) => Some(
            mod_hsm_ssl::pkcs11::pin::PinSource::parse(p).map_err(|e| fail(Code::Usage, mod_hsm_ssl::keytool::messages::pin("--passphrase", &e)))?,
        ),
        None => None,
    };
    let mut ask = move || -> Result<zeroize::Zeroizing<String>, String> {
        match &pass_source {
            Some(src) => {
                let s = src.read().map_err(|e| mod_hsm_ssl::keytool::messages::pin("--passphrase", &e))?;
                Ok(s.with_bytes(|b| zeroize::Zeroizing::new(String::from_utf8_lossy(b).into_owned())))
            }
            None => mod_hsm_ssl::keytool::tool::prompt_hidden(&format!("Passphrase for {}: ", path.display())).map_err(|f| f.msg),
        }
    };
    let usage = Usage::parse(o.get("--usage"))?;
    let key = import::read_private_key_pem(&path_of(o)?, &mut ask).map_err(|e| fail(Code::Key, e))?;
    usage.check_for(key.id() == openssl::pkey::Id::RSA)?;
    let t = Target::from_opts(o)?;
    let (_ctx, s, token) = t.session()?;
    let id = commands::random_id()?;
    let done = import::import_key(&s, &key, &label, &id, usage).map_err(|e| match e {
        import::ImportError::LabelTaken(t) => fail(Code::Key, t),
        import::ImportError::Failed(t) => fail(Code::Setup, t),
    })?;
    let how = match done.path {
        import::ImportPath::Created => "created directly",
        import::ImportPath::Unwrapped => "unwrapped under a one-time session key",
    };
    Ok(format!(
        "imported '{label}' (id {}) into token '{token}' ({how}); it is {}\n\
         key URI for SSLCertificateKeyFile: \"{}\"\n\
         The key file still exists: remove it for good, e.g. shred -u {}\n",
        mod_hsm_ssl::pkcs11::uri::hex(&id),
        commands::protection(usage, done.frozen),
        mod_hsm_ssl::keytool::tool::key_uri(Some(&token), &label),
        o.get("--key").unwrap_or_default()
    ))
}

fn path_of(o: &Opts) -> Res<std::path::PathBuf> {
    Ok(std::path::PathBuf::from(o.need("--key")?))
}

fn run(args: &[String]) -> Res<String> {
    let Some(cmd) = args.first() else { return Err(fail(Code::Usage, USAGE)) };
    if cmd == "--help" || cmd == "-h" || cmd == "help" {
        return Ok(USAGE.to_string());
    }
    let allowed = allowed(cmd).ok_or_else(|| fail(Code::Usage, format!("unknown command '{cmd}'\n\n{USAGE}")))?;
    let o = Opts::parse(&args[1..], allowed)?;
    if o.flag("--help") {
        return Ok(USAGE.to_string());
    }
    match cmd.as_str() {
        "generate" => commands::generate(&o),
        "import" => import_cmd(&o),
        "csr" => sign_x509(&o, false),
        "selfsign" => sign_x509(&o, true),
        "list" => commands::list(&o),
        "check" => commands::check(&o),
        "delete" => delete::delete(&o),
        "config" => commands::config(&o),
        _ => unreachable!("allowed() covers every command"),
    }
}

/// Warnings and errors of the shared token code go to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn && !m.target().starts_with("cryptoki")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("hsm-ssl-keytool: {}: {}", r.level().as_str().to_ascii_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Warn);
    mod_hsm_ssl::pkcs11::settings::name_with(mod_hsm_ssl::keytool::messages::option);
    // args() would panic on an argument that is not UTF-8 (a label from a
    // Latin-1 shell): say which one instead.
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let result = match args {
        Ok(args) => run(&args),
        Err(bad) => Err(fail(Code::Usage, format!("argument {bad:?} is not valid UTF-8"))),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("hsm-ssl-keytool: {}", f.msg);
            ExitCode::from(f.code as u8)
        }
    }
}

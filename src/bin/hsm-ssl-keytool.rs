//! hsm-ssl-keytool: generate, import and certify web-server keys that never
//! leave the HSM. See `hsm-ssl-keytool --help` and the README.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use mod_hsm_ssl::keytool::cli::{Cli, Command, CsrArgs, ImportArgs, OutArgs, SelfsignArgs, SubjectArgs, TargetArgs};
use mod_hsm_ssl::keytool::commands;
use mod_hsm_ssl::keytool::tool::{check_out_path, fail, write_out_file, Code, Res, Target};
use mod_hsm_ssl::keytool::{delete, import, inspect, x509};

/// Whether `--out` names a file (`-` and no `--out` are stdout).
fn out_file(o: &OutArgs) -> Option<&str> {
    o.out.as_deref().filter(|p| *p != "-")
}

/// `--out FILE` (see `tool::write_out_file`), or stdout.
fn write_out(o: &OutArgs, pem: String, what: &str) -> Res<String> {
    match out_file(o) {
        Some(path) => {
            write_out_file(Path::new(path), pem.as_bytes(), o.force)?;
            Ok(format!("{what} written to {path}\n"))
        }
        None => Ok(pem),
    }
}

/// The parts of csr and selfsign that differ: days (0 for a request).
fn sign_x509(t: &TargetArgs, names: &SubjectArgs, out: &OutArgs, days: Option<&str>) -> Res<String> {
    let SubjectArgs { key, subject, san } = names;
    let (label, id) = key.get()?;
    let sans = match san {
        Some(s) => x509::parse_sans(s).map_err(|e| fail(Code::Usage, format!("--san: {e}")))?,
        None => Vec::new(),
    };
    x509::parse_subject(subject).map_err(|e| fail(Code::Usage, format!("--subject: {e}")))?;
    if let Some(path) = out_file(out) {
        // Before the token signs anything.
        check_out_path(Path::new(path), out.force)?;
    }
    let days: Option<u32> = days
        .map(|d| d.parse().ok().filter(|d| (1..=36500).contains(d)).ok_or_else(|| fail(Code::Usage, "--days: a number of days from 1 to 36500")))
        .transpose()?;
    let target = Target::from_args(t)?;
    let uri = commands::selector_uri(label, id.as_deref())?;
    let (_, key) = commands::resolve(&target, &uri)?;
    let pkey = x509::token_pkey(key).map_err(|e| fail(Code::Key, e))?;
    match days {
        Some(days) => {
            let pem = x509::selfsigned_pem(&pkey, subject, &sans, days).map_err(|e| fail(Code::Other, e))?;
            write_out(out, pem, "certificate")
        }
        None => {
            let pem = x509::csr_pem(&pkey, subject, &sans).map_err(|e| fail(Code::Other, e))?;
            write_out(out, pem, "certificate request")
        }
    }
}

fn import_cmd(t: &TargetArgs, a: &ImportArgs) -> Res<String> {
    let (label, usage, chosen) = a.new.get()?;
    let label = label.to_string();
    let path = std::path::PathBuf::from(&a.key);
    let pass_source = match &a.passphrase {
        Some(p) => Some(
            mod_hsm_ssl::pkcs11::pin::PinSource::parse(p).map_err(|e| fail(Code::Usage, mod_hsm_ssl::keytool::messages::pin("--passphrase", &e)))?,
        ),
        None => None,
    };
    let shown = path.clone();
    let mut ask = move || -> Result<zeroize::Zeroizing<String>, String> {
        match &pass_source {
            Some(src) => {
                let s = src.read().map_err(|e| mod_hsm_ssl::keytool::messages::pin("--passphrase", &e))?;
                Ok(s.with_bytes(|b| zeroize::Zeroizing::new(String::from_utf8_lossy(b).into_owned())))
            }
            None => mod_hsm_ssl::keytool::tool::prompt_hidden(&format!("Passphrase for {}: ", shown.display())).map_err(|f| f.msg),
        }
    };
    let key = import::read_private_key_pem(&path, &mut ask).map_err(|e| fail(Code::Key, e))?;
    usage.check_for(key.id() == openssl::pkey::Id::RSA)?;
    let public = import::public_of(&key).map_err(|e| fail(Code::Key, e))?;
    let target = Target::from_args(t)?;
    let (_ctx, s, token) = target.session()?;
    let id = commands::new_id(&s, &token, chosen)?;
    let done = import::import_key(&s, &key, &label, &id, usage).map_err(|e| match e {
        import::ImportError::LabelTaken(t) => fail(Code::Key, t),
        import::ImportError::Failed(t) => fail(Code::Setup, t),
    })?;
    let how = match done.path {
        import::ImportPath::Created => "created directly",
        import::ImportPath::Unwrapped => "unwrapped under a one-time session key",
    };
    if a.new.json {
        let report = commands::KeyReport::new(&token, &label, &id, &public);
        let path = if done.path == import::ImportPath::Created { "created" } else { "unwrapped" };
        return commands::json_line(&serde_json::json!({
            "key": report,
            "path": path,
            "usage": usage.describe(),
            "protection": commands::protection(usage, done.frozen),
            "key_file": a.key,
        }));
    }
    Ok(format!(
        "imported '{label}' (id {}) into token '{token}' ({how}); it is {}\n\
         key URI for SSLCertificateKeyFile: \"{}\"\n\
         The key file still exists: remove it for good, e.g. shred -u {}\n",
        mod_hsm_ssl::pkcs11::uri::hex(&id),
        commands::protection(usage, done.frozen),
        mod_hsm_ssl::keytool::tool::key_uri(Some(&token), &label),
        a.key
    ))
}

fn run(cli: &Cli) -> Res<String> {
    let t = &cli.target;
    match &cli.command {
        Command::Generate(a) => commands::generate(t, a),
        Command::Import(a) => import_cmd(t, a),
        Command::Csr(CsrArgs { names, out }) => sign_x509(t, names, out, None),
        Command::Selfsign(SelfsignArgs { names, days, out }) => sign_x509(t, names, out, Some(days)),
        Command::List(a) => commands::list(t, a),
        Command::Check(a) => commands::check(t, a),
        Command::Delete(a) => delete::delete(t, a),
        Command::Config(a) => commands::config(t, a),
        Command::Tokens(a) => inspect::tokens(t, a),
        Command::Mechanisms(a) => inspect::mechanisms(t, a),
        Command::Test(a) => inspect::test(t, a),
        Command::Manpage(a) if a.module => Ok(mod_hsm_ssl::keytool::manpage::module()),
        Command::Manpage(_) => mod_hsm_ssl::keytool::manpage::keytool(),
        Command::Completions(a) => {
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "hsm-ssl-keytool", &mut script);
            Ok(String::from_utf8_lossy(&script).into_owned())
        }
    }
}

/// Warnings and errors of the shared token code go to stderr; with
/// `--verbose`, its progress lines (info) too.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && !m.target().starts_with("cryptoki")
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
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a bad
            // command line is exit code 1, as the tool's table says.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(Code::Usage as u8) } else { ExitCode::SUCCESS };
        }
    };
    if cli.target.verbose {
        // The tool's progress (info) and the token layer's steps (debug).
        log::set_max_level(log::LevelFilter::Debug);
    }
    let result = run(&cli);
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

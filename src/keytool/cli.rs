//! The key tool's command line, defined once with clap: parsing, `--help`
//! for the tool and each command, `--version`, and shell completions all
//! come from these types. Options that choose the token (`--library`,
//! `--token`, `--pin`, `--httpd-conf`) and `--verbose` are global: they may
//! come before or after the command, as in git and cargo. Values are checked
//! by the commands (labels, key types, subjects), which word their own
//! errors; an option given twice is refused.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use super::policy::Usage;
use super::tool::{self, Res};

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 bad command line (also a label no key URI can name); 2 library,
token, PIN or login; 3 the key (not found, label taken, unsupported, or for delete
ambiguous); 4 certificate and key do not match; 5 files (--out exists, is a symbolic
link, cannot be written) or anything else; 6 not confirmed. The PIN is never printed.";

/// Keys for mod_hsm_ssl that never leave the HSM.
#[derive(Debug, Parser)]
#[command(name = "hsm-ssl-keytool", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The global options: clap merges one given before and after the command
/// (the later wins), which would hide a mistake; this refuses it.
const GLOBALS: [(&str, Option<char>, &str); 5] = [
    ("library", None, "--library <PATH>"),
    ("token", None, "--token <SELECTOR>"),
    ("pin", None, "--pin <SOURCE>"),
    ("httpd-conf", None, "--httpd-conf <PATH>"),
    ("verbose", Some('v'), "--verbose"),
];

impl Cli {
    /// Parses the command line (without the program name in `args[0]`
    /// skipped: as `std::env::args_os()` gives it).
    pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Cli, clap::Error> {
        let args: Vec<OsString> = args.into_iter().collect();
        let cli = Cli::try_parse_from(&args)?;
        let words: Vec<&str> = args.iter().skip(1).map(|a| a.to_str().unwrap_or("")).take_while(|a| *a != "--").collect();
        for (long, short, shown) in GLOBALS {
            let given = |w: &&&str| {
                w.strip_prefix("--").is_some_and(|n| n == long || n.strip_prefix(long).is_some_and(|v| v.starts_with('=')))
                    || short.is_some_and(|s| w.len() > 1 && w.starts_with('-') && !w.starts_with("--") && w[1..].contains(s))
            };
            if words.iter().filter(given).count() > 1 {
                return Err(Cli::command().error(ErrorKind::ArgumentConflict, format!("the argument '{shown}' cannot be used multiple times")));
            }
        }
        Ok(cli)
    }
}

/// The token and PIN, as in httpd.conf; by default read from the
/// HSMSSLLibrary, HSMSSLPin and HSMSSLToken lines of the Apache
/// configuration.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Token and PIN (default: the HSMSSL* lines of the Apache configuration)")]
pub struct TargetArgs {
    /// The PKCS#11 library (e.g. /opt/cloudhsm/lib/libcloudhsm_pkcs11.so)
    #[arg(long, global = true, value_name = "PATH")]
    pub library: Option<String>,
    /// Token label, or pkcs11:token=...;serial=...
    #[arg(long, global = true, value_name = "SELECTOR")]
    pub token: Option<String>,
    /// env:VAR | file:/path (mode 600) | exec:/program; without it,
    /// HSMSSLPin from the configuration, else asked without echo
    #[arg(long, global = true, value_name = "SOURCE")]
    pub pin: Option<String>,
    /// Apache configuration to read (default /etc/httpd/conf/httpd.conf or
    /// /etc/apache2/apache2.conf)
    #[arg(long = "httpd-conf", global = true, value_name = "PATH")]
    pub httpd_conf: Option<String>,
    /// Say on stderr what the tool is doing (loading the library, logging
    /// in, each step of an import): for slow tokens
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a key pair inside the token (sensitive, not extractable,
    /// not modifiable, not copyable)
    Generate(GenerateArgs),
    /// Put an existing PEM private key into the token (asks for the
    /// passphrase of an encrypted key); then remove the file for good
    Import(ImportArgs),
    /// A PKCS#10 certificate request signed by the token key (PEM)
    Csr(CsrArgs),
    /// A self-signed certificate signed by the token key (PEM)
    Selfsign(SelfsignArgs),
    /// The token's private keys; with --cert, which one matches it
    List(ListArgs),
    /// The key exists and belongs to the certificate (as configtest checks)
    Check(CheckArgs),
    /// Delete the key pair httpd would use for a label: its private key,
    /// and the public key and certificate with the same label and CKA_ID.
    /// Objects of other classes stay. Lists what goes, then asks; --yes
    /// only skips the question
    Delete(DeleteArgs),
    /// Print the Apache lines for a vhost serving a key
    Config(ConfigArgs),
    /// The slots and tokens the library shows (no login)
    Tokens(TokensArgs),
    /// What the token offers that TLS and this tool need (no login)
    Mechanisms(MechanismsArgs),
    /// One real signature (and decryption, where the key may decrypt) with
    /// the key, verified against its certificate: the HSM path end to end,
    /// before a reload (configtest makes no signature)
    Test(TestArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the manual page (roff): this tool's, or with --module mod_hsm_ssl(8)
    Manpage(ManpageArgs),
}

/// `--usage`, shared by generate and import.
const USAGE_HELP: &str = "sign (the default): the key only signs, which all TLS 1.3 and ECDHE handshakes need; \
sign,decrypt: an RSA key may also decrypt, which only TLS 1.2 RSA key exchange needs (ciphers like \
AES128-GCM-SHA256, without forward secrecy), for clients that cannot do ECDHE. EC keys never decrypt";

/// `--label`, shared by most commands.
const LABEL_HELP: &str = "The key's label: not empty, no control characters; httpd finds the key by it \
(pkcs11:object=L, with L percent-encoded)";

/// `--label` and `--id`: which key a command works on.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[arg(long, value_name = "L", help = LABEL_HELP)]
    pub label: String,
    /// The key's CKA_ID in hex (as list prints it), when more than one key
    /// pair, public key or certificate has the label
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
}

impl KeyArgs {
    /// The label (checked with `tool::check_label`) and the id, parsed.
    pub fn get(&self) -> Res<(&str, Option<Vec<u8>>)> {
        Ok((tool::label(&self.label)?, self.id.as_deref().map(tool::parse_id).transpose()?))
    }
}

/// What generate and import share: the new key's label, usage and id, and
/// the answer's form.
#[derive(Debug, Args)]
pub struct NewKeyArgs {
    #[arg(long, value_name = "L", help = LABEL_HELP)]
    pub label: String,
    #[arg(long, value_name = "U", help = USAGE_HELP)]
    pub usage: Option<String>,
    /// The new key's CKA_ID in hex (default: 8 random bytes); refused if
    /// a key on the token has it already
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

impl NewKeyArgs {
    /// The label (checked), the usage and the chosen id, parsed.
    pub fn get(&self) -> Res<(&str, Usage, Option<Vec<u8>>)> {
        Ok((tool::label(&self.label)?, Usage::parse(self.usage.as_deref())?, self.id.as_deref().map(tool::parse_id).transpose()?))
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub new: NewKeyArgs,
    /// rsa:2048 | rsa:3072 | rsa:4096 | ec:P-256 | ec:P-384
    #[arg(long = "type", value_name = "TYPE")]
    pub key_type: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub new: NewKeyArgs,
    /// The PEM private key file (PKCS#8, PKCS#1 or SEC1; encrypted or not)
    #[arg(long, value_name = "FILE")]
    pub key: String,
    /// The passphrase of an encrypted key: env:VAR | file:/path | exec:/program;
    /// without it, asked without echo
    #[arg(long, value_name = "SOURCE")]
    pub passphrase: Option<String>,
}

/// Where a PEM result goes.
#[derive(Debug, Args)]
pub struct OutArgs {
    /// Write to FILE instead of stdout (- is stdout): never through a
    /// symbolic link, and an existing FILE only with --force (replaced
    /// whole, by a rename)
    #[arg(long, value_name = "FILE")]
    pub out: Option<String>,
    /// Replace an existing --out file
    #[arg(long)]
    pub force: bool,
}

/// The key and the names a request or certificate carries.
#[derive(Debug, Args)]
pub struct SubjectArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The subject, e.g. "CN=www.example.com,O=Example"
    #[arg(long, value_name = "DN")]
    pub subject: String,
    /// Subject alternative names, e.g. DNS:www.example.com,IP:192.0.2.1
    #[arg(long, value_name = "LIST")]
    pub san: Option<String>,
}

#[derive(Debug, Args)]
pub struct CsrArgs {
    #[command(flatten)]
    pub names: SubjectArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct SelfsignArgs {
    #[command(flatten)]
    pub names: SubjectArgs,
    /// Days the certificate is valid, 1 to 36500
    #[arg(long, value_name = "N")]
    pub days: String,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Mark the key that belongs to this certificate
    #[arg(long, value_name = "FILE")]
    pub cert: Option<String>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The certificate (PEM)
    #[arg(long, value_name = "FILE")]
    pub cert: String,
    /// The key URI, as in SSLCertificateKeyFile (e.g. "pkcs11:object=www")
    #[arg(long, value_name = "URI")]
    pub key: String,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Do not ask before deleting
    #[arg(long)]
    pub yes: bool,
    /// One JSON object instead of text (the listing then goes to stderr)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The key's certificate (PEM)
    #[arg(long, value_name = "FILE")]
    pub cert: String,
    /// The vhost's ServerName (default: the certificate's CN)
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_name: Option<String>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MechanismsArgs {
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The key's certificate (PEM): the signature is verified with its key
    #[arg(long, value_name = "FILE")]
    pub cert: String,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// The module's page, mod_hsm_ssl(8), instead of hsm-ssl-keytool(8)
    #[arg(long)]
    pub module: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash | zsh | fish | elvish | powershell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("hsm-ssl-keytool").chain(args.iter().copied()).map(OsString::from))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_options_go_before_or_after_the_command() {
        for args in [
            &["--library", "/l.so", "--token", "web", "list", "--json"][..],
            &["list", "--library", "/l.so", "--json", "--token", "web"][..],
            &["--library=/l.so", "list", "--token=web", "--json"][..],
        ] {
            let c = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!((c.target.library.as_deref(), c.target.token.as_deref()), (Some("/l.so"), Some("web")), "{args:?}");
            assert!(matches!(c.command, Command::List(ListArgs { json: true, cert: None })), "{args:?}");
        }
    }

    #[test]
    fn repeated_unknown_and_missing_options_are_refused() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["generate", "--label", "a", "--label", "b", "--type", "ec:P-256"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["--pin", "env:A", "list", "--pin", "env:B"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["--pin=env:A", "list", "--pin=env:B"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["-v", "list", "--verbose"]), ErrorKind::ArgumentConflict);
        assert!(parse(&["--pin", "env:A", "list", "--library", "/l.so", "-v"]).is_ok());
        assert_eq!(kind(&["list", "--colour", "red"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["generate", "--label", "a"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["list", "stray"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["completions", "tcsh"]), ErrorKind::InvalidValue);
    }
}

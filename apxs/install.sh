#!/usr/bin/env bash
# Build mod_hsm_ssl and install it into the local Apache httpd with apxs, for
# systems without the RPM. Run as root from anywhere inside the repository:
#
#   sudo bash apxs/install.sh [--dry-run] [--prefix DIR] [--libexecdir DIR]
#
# Steps: check cargo and apxs; cargo build --release; install the module with
# "apxs -i" into "apxs -q LIBEXECDIR"; install hsm-ssl-keytool into
# PREFIX/bin; write the module's load file:
#   Debian/Ubuntu: /etc/apache2/mods-available/hsm_ssl.load and hsm_ssl.conf
#                  (enable with "a2enmod hsm_ssl", which also enables ssl)
#   RHEL-like:     /etc/httpd/conf.modules.d/10-hsm_ssl.conf
# The HSMSSL* directives are written commented out, so the module loads and
# does nothing until you configure it. An existing hsm_ssl.conf or
# 10-hsm_ssl.conf is kept (it may hold your settings).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: apxs/install.sh [--dry-run] [--prefix DIR] [--libexecdir DIR]

Builds mod_hsm_ssl with "cargo build --release" and installs it with apxs.

  --dry-run         print every action, change nothing
  --prefix DIR      install hsm-ssl-keytool into DIR/bin (default /usr/local)
  --libexecdir DIR  install the module there instead of "apxs -q LIBEXECDIR"
  -h, --help        this text

Environment: APXS=/path/to/apxs picks the apxs (else apxs, then apxs2);
CARGO=/path/to/cargo picks cargo.
EOF
}

DRY_RUN=0
PREFIX=/usr/local
LIBEXECDIR=""

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix)
            [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 1; }
            PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --libexecdir)
            [ $# -ge 2 ] || { echo "install.sh: --libexecdir needs a directory" >&2; exit 1; }
            LIBEXECDIR=$2; shift ;;
        --libexecdir=*) LIBEXECDIR=${1#--libexecdir=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done

STEP=0
step() {
    STEP=$((STEP + 1))
    echo "==> [$STEP] $*"
}

# die MESSAGE WHAT-TO-DO
die() {
    echo "install.sh: error: $1" >&2
    [ -n "${2:-}" ] && echo "install.sh: what to do: $2" >&2
    exit 1
}

# run CMD ARGS...: print the command, run it unless --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: $*"
    else
        echo "    running: $*"
        "$@"
    fi
}

# write_file PATH MODE: write stdin to PATH (atomically) unless --dry-run.
write_file() {
    local path=$1 mode=$2 tmp
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would write $path (mode $mode):"
        sed 's/^/      | /'
        return 0
    fi
    tmp=$(mktemp "$path.XXXXXX") || die "cannot create a file next to $path" "check that $(dirname "$path") exists and is writable (run as root)"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    echo "    wrote $path (mode $mode)"
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
CONF_TEMPLATE="$REPO/httpd-conf/hsm_ssl.conf"

[ "$DRY_RUN" = 1 ] && echo "install.sh: dry run: nothing is built, installed or written"

# 1. Tools ------------------------------------------------------------------
step "checking for cargo and apxs"
CARGO=${CARGO:-}
if [ -z "$CARGO" ]; then
    if command -v cargo >/dev/null 2>&1; then
        CARGO=$(command -v cargo)
    elif [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        CARGO="${HOME:-/root}/.cargo/bin/cargo"
    else
        die "cargo not found" "install Rust 1.77 or newer for this user (e.g. rustup: https://rustup.rs), or set CARGO=/path/to/cargo"
    fi
fi
echo "    cargo: $CARGO"

APXS=${APXS:-}
if [ -z "$APXS" ]; then
    for candidate in apxs apxs2; do
        if command -v "$candidate" >/dev/null 2>&1; then
            APXS=$(command -v "$candidate")
            break
        fi
    done
fi
[ -n "$APXS" ] || die "apxs not found (tried \$APXS, apxs, apxs2)" \
    "install the httpd development files: Debian/Ubuntu 'apt-get install apache2-dev', Amazon Linux/RHEL 'dnf install httpd-devel'; or set APXS=/path/to/apxs"
[ -x "$APXS" ] || die "APXS=$APXS is not an executable" "point APXS at the apxs program"
echo "    apxs:  $APXS"

if [ -z "$LIBEXECDIR" ]; then
    LIBEXECDIR=$("$APXS" -q LIBEXECDIR) || die "'$APXS -q LIBEXECDIR' failed" "check the httpd development files installation"
fi
[ -n "$LIBEXECDIR" ] || die "apxs reports an empty LIBEXECDIR" "give the module directory with --libexecdir"
echo "    the module goes to $LIBEXECDIR/mod_hsm_ssl.so"
echo "    hsm-ssl-keytool goes to $PREFIX/bin/hsm-ssl-keytool"

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "not running as root" "run it as root: sudo bash $0 (or use --dry-run to see what it would do)"
fi

# 2. Build ------------------------------------------------------------------
step "building with cargo build --release in $REPO (this can take several minutes the first time)"
if [ "$DRY_RUN" = 1 ]; then
    echo "    [dry-run] would run: (cd $REPO && $CARGO build --release)"
else
    (cd "$REPO" && "$CARGO" build --release) \
        || die "cargo build --release failed" "read the compiler output above; the build needs the OpenSSL and httpd development files, clang/libclang and pkg-config (Debian: scripts/install-deps.sh)"
fi
TARGET_DIR="$REPO/target/release"
LIB="$TARGET_DIR/libmod_hsm_ssl.so"
TOOL="$TARGET_DIR/hsm-ssl-keytool"
if [ "$DRY_RUN" = 0 ]; then
    [ -f "$LIB" ] || die "the build did not produce $LIB" "run 'cargo build --release' by hand and check its output"
    [ -f "$TOOL" ] || die "the build did not produce $TOOL" "run 'cargo build --release' by hand and check its output"
    echo "    built $LIB and $TOOL"
fi

# 3. Module -----------------------------------------------------------------
step "installing the module with apxs into $LIBEXECDIR"
if [ "$DRY_RUN" = 1 ]; then
    echo "    [dry-run] would copy $LIB to a temporary directory as mod_hsm_ssl.so"
    echo "    [dry-run] would run there: $APXS -i -n hsm_ssl -S LIBEXECDIR=$LIBEXECDIR mod_hsm_ssl.so"
else
    WORK=$(mktemp -d) || die "cannot create a temporary directory" "check /tmp (or TMPDIR)"
    trap 'rm -rf "$WORK"' EXIT
    cp "$LIB" "$WORK/mod_hsm_ssl.so"
    echo "    copied $LIB to $WORK/mod_hsm_ssl.so"
    [ -d "$LIBEXECDIR" ] || die "the module directory $LIBEXECDIR does not exist" "install Apache httpd itself, or give --libexecdir"
    # apxs -i without -c compiles nothing: it installs the given .so with
    # instdso.sh (libtool --mode=install). Its "dlname not found" warning
    # only means the file is a plain .so rather than a libtool archive.
    echo "    running in $WORK: $APXS -i -n hsm_ssl -S LIBEXECDIR=$LIBEXECDIR mod_hsm_ssl.so"
    (cd "$WORK" && "$APXS" -i -n hsm_ssl -S LIBEXECDIR="$LIBEXECDIR" mod_hsm_ssl.so) \
        || die "apxs -i failed" "read the apxs output above; check that $LIBEXECDIR is writable"
    cmp -s "$LIB" "$LIBEXECDIR/mod_hsm_ssl.so" \
        || die "$LIBEXECDIR/mod_hsm_ssl.so is not the file just built" "check the apxs output above; install by hand with: install -m 0644 $LIB $LIBEXECDIR/mod_hsm_ssl.so"
    echo "    installed $LIBEXECDIR/mod_hsm_ssl.so"
fi

# 4. Key tool ---------------------------------------------------------------
step "installing hsm-ssl-keytool into $PREFIX/bin"
run install -d -m 0755 "$PREFIX/bin"
run install -m 0755 "$TOOL" "$PREFIX/bin/hsm-ssl-keytool"
# The manual pages, made by the tool: hsm-ssl-keytool(8) and mod_hsm_ssl(8).
MANDIR="$PREFIX/share/man/man8"
run install -d -m 0755 "$MANDIR"
for page in hsm-ssl-keytool mod_hsm_ssl; do
    flag=""
    [ "$page" = mod_hsm_ssl ] && flag="--module"
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: $TOOL manpage $flag > $MANDIR/$page.8"
    else
        # shellcheck disable=SC2086 # $flag is empty or one word
        "$TOOL" manpage $flag > "$MANDIR/$page.8" || die "writing $MANDIR/$page.8 failed" "check that $MANDIR is writable"
        echo "    wrote $MANDIR/$page.8"
    fi
done

# 5. Load file --------------------------------------------------------------
# The HSMSSL* lines of httpd-conf/hsm_ssl.conf, every directive commented out.
commented_conf() {
    echo "# Written by mod_hsm_ssl's apxs/install.sh from httpd-conf/hsm_ssl.conf."
    echo "# Every directive is commented out: the module is loaded and does nothing"
    echo "# until you set at least HSMSSLLibrary and HSMSSLPin (remove the '#')"
    echo "# and point an SSLCertificateKeyFile at a pkcs11: URI."
    echo "# Then check with: apachectl configtest"
    echo
    sed -e 's/^\([A-Za-z]\)/#\1/' "$CONF_TEMPLATE"
}

[ -f "$CONF_TEMPLATE" ] || die "$CONF_TEMPLATE is missing" "run the script from a complete checkout of the repository"

if [ -d /etc/apache2/mods-available ]; then
    step "writing Debian's module files in /etc/apache2/mods-available (for a2enmod hsm_ssl)"
    # a2enmod reads "# Depends:" among the leading comment lines and enables
    # ssl first. mods-enabled/ is read in name order, so hsm_ssl.load comes
    # before ssl.load; the module orders its hooks relative to mod_ssl by name,
    # so that order works.
    write_file /etc/apache2/mods-available/hsm_ssl.load 0644 <<EOF
# Depends: ssl
# mod_hsm_ssl: mod_ssl private keys that stay inside a PKCS#11 token.
# Written by apxs/install.sh. "a2enmod hsm_ssl" enables ssl too (the line above).
LoadModule hsm_ssl_module $LIBEXECDIR/mod_hsm_ssl.so
EOF
    if [ -e /etc/apache2/mods-available/hsm_ssl.conf ]; then
        echo "    keeping the existing /etc/apache2/mods-available/hsm_ssl.conf (it may hold your settings)"
        echo "    the template with every option explained is $CONF_TEMPLATE"
    else
        commented_conf | write_file /etc/apache2/mods-available/hsm_ssl.conf 0644
    fi
    NEXT="a2enmod hsm_ssl; edit /etc/apache2/mods-available/hsm_ssl.conf; apache2ctl configtest; systemctl restart apache2"
elif [ -d /etc/httpd/conf.modules.d ]; then
    CONF=/etc/httpd/conf.modules.d/10-hsm_ssl.conf
    step "writing $CONF (read after 00-ssl.conf)"
    if [ -e "$CONF" ]; then
        echo "    keeping the existing $CONF (it may hold your settings)"
        echo "    make sure it loads $LIBEXECDIR/mod_hsm_ssl.so"
    else
        {
            echo "# mod_hsm_ssl: mod_ssl private keys that stay inside a PKCS#11 token."
            echo "# Written by apxs/install.sh; loaded after 00-ssl.conf (mod_ssl)."
            echo "LoadModule hsm_ssl_module $LIBEXECDIR/mod_hsm_ssl.so"
            echo
            commented_conf
        } | write_file "$CONF" 0644
    fi
    NEXT="edit $CONF; apachectl configtest; systemctl restart httpd"
else
    step "no /etc/apache2/mods-available and no /etc/httpd/conf.modules.d: not writing a load file"
    echo "    add to your httpd configuration, after mod_ssl's LoadModule line:"
    echo "      LoadModule hsm_ssl_module $LIBEXECDIR/mod_hsm_ssl.so"
    echo "    and the directives of $CONF_TEMPLATE"
    NEXT="add the LoadModule line and the HSMSSL* directives; apachectl configtest"
fi

step "done"
if [ "$DRY_RUN" = 1 ]; then
    echo "    dry run: nothing was changed"
else
    echo "    next: $NEXT"
    echo "    then create keys with: $PREFIX/bin/hsm-ssl-keytool --help (see docs/keytool.md)"
fi

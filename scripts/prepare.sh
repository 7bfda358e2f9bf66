# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/bench.sh (not run on its own):
# what both need before cargo runs. Sets say/die, checks root, installs
# the dependencies unless SKIP_DEPS=1, finds cargo, and picks a target
# directory that Apache's children (www-data) can read, since they load
# the module's PKCS#11 wrapper from it.
#
# Expects REPO (the repository root) and SCRIPT (the caller's name).

say() { printf '\n==> %s\n' "$*"; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo bash scripts/$SCRIPT): it installs packages and starts apache2 as root"

if [ "${SKIP_DEPS:-0}" = 1 ]; then
    say "skipping scripts/install-deps.sh (SKIP_DEPS=1)"
else
    say "installing dependencies (scripts/install-deps.sh)"
    bash "$REPO/scripts/install-deps.sh"
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if [ -x "$d/cargo" ]; then
            PATH="$d:$PATH"
            export PATH
            break
        fi
    done
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install a Rust toolchain (rustup, Rust 1.77 or newer) for root, then re-run"

if [ -z "${CARGO_TARGET_DIR:-}" ] && ! runuser -u www-data -- test -x "$REPO" 2>/dev/null; then
    CARGO_TARGET_DIR="/var/tmp/mod_hsm_ssl-target-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"
    export CARGO_TARGET_DIR
    mkdir -p "$CARGO_TARGET_DIR"
    chmod 0755 "$CARGO_TARGET_DIR"
    echo "$SCRIPT: www-data cannot reach $REPO; building into CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
fi
if [ -n "${TMPDIR:-}" ] && ! runuser -u www-data -- test -x "$TMPDIR" 2>/dev/null; then
    echo "$SCRIPT: www-data cannot reach TMPDIR=$TMPDIR; using /tmp"
    export TMPDIR=/tmp
fi
say "$(cargo --version)"

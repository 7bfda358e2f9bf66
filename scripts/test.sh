#!/usr/bin/env bash
# The test command of mod_hsm_ssl:
#
#     sudo bash scripts/test.sh
#
# 1. installs the build and test dependencies (scripts/install-deps.sh,
#    which runs apt-get update first),
# 2. builds the workspace (the module, and the PKCS#11 test wrapper the
#    integration tests load),
# 3. runs every unit and integration test. The integration tests in tests/
#    start real apache2 servers with SoftHSM2 tokens and talk TLS to them.
#
# Exits non-zero if anything fails. Runs as root: apt-get, and apache2 is
# started as root like in production (its children run as www-data).
#
# Environment:
#   TEST_THREADS   parallel test threads (default 4)
#   SKIP_DEPS=1    do not run install-deps.sh (for repeated local runs)
#   any other args are passed to the test binaries, e.g. a test name filter:
#       sudo bash scripts/test.sh rsa_static
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo bash scripts/test.sh): it installs packages and starts apache2 as root"

if [ "${SKIP_DEPS:-0}" = 1 ]; then
    say "skipping scripts/install-deps.sh (SKIP_DEPS=1)"
else
    say "installing dependencies (scripts/install-deps.sh)"
    bash scripts/install-deps.sh
fi

# cargo: sudo resets PATH, and rustup installs into ~/.cargo/bin.
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

# The apache2 children run as www-data and load the PKCS#11 test wrapper
# from the cargo target directory; a clone under /root (mode 0700) is not
# reachable for them. Build into a world-traversable directory then.
if [ -z "${CARGO_TARGET_DIR:-}" ] && ! runuser -u www-data -- test -x "$REPO" 2>/dev/null; then
    CARGO_TARGET_DIR="/var/tmp/mod_hsm_ssl-target-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"
    export CARGO_TARGET_DIR
    mkdir -p "$CARGO_TARGET_DIR"
    chmod 0755 "$CARGO_TARGET_DIR"
    echo "test.sh: www-data cannot reach $REPO; building into CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
fi

# The tests make their scratch directories under the temp dir; www-data must
# be able to traverse it too.
if [ -n "${TMPDIR:-}" ] && ! runuser -u www-data -- test -x "$TMPDIR" 2>/dev/null; then
    echo "test.sh: www-data cannot reach TMPDIR=$TMPDIR; using /tmp"
    export TMPDIR=/tmp
fi

say "$(cargo --version)"

say "cargo build --workspace"
cargo build --workspace

say "cargo test --workspace (test threads: ${TEST_THREADS:-4})"
# --no-fail-fast: run every test binary even when an earlier one failed, so
# one run shows all failures; the exit status is still non-zero.
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" "$@"

say "all tests passed"

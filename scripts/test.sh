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
#    start real apache2 servers with SoftHSM2 tokens and talk TLS to them;
#    some run a second time with HSMSSLKeyService Off (the in-process path),
#    and the TLS matrix again with keys loaded through the ENGINE shim,
# 4. runs the TLS matrix and configtest on Debian 13 (a debootstrap'd root,
#    scripts/compat-debian13.sh),
# 5. runs the handshake benchmark in its short mode (scripts/bench.sh).
#
# Exits non-zero if anything fails. Runs as root: apt-get, and apache2 is
# started as root like in production (its children run as www-data).
#
# Environment:
#   TEST_THREADS   parallel test threads (default 4)
#   SKIP_DEPS=1    do not run install-deps.sh (for repeated local runs)
#   SKIP_BENCH=1   do not run the short benchmark (scripts/bench.sh --short)
#   SKIP_COMPAT=1  do not run the Debian 13 check (scripts/compat-debian13.sh)
#   any other args are passed to the test binaries, e.g. a test name filter:
#       sudo bash scripts/test.sh rsa_static
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

SCRIPT=test.sh
# shellcheck source=scripts/prepare.sh
. "$REPO/scripts/prepare.sh"

say "cargo build --workspace"
cargo build --workspace

# Formatted (rustfmt.toml) and clippy-clean, tests and benchmark included;
# the crate also denies undocumented unsafe blocks, which only clippy sees.
say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test --workspace (test threads: ${TEST_THREADS:-4})"
# --no-fail-fast: run every test binary even when an earlier one failed, so
# one run shows all failures; the exit status is still non-zero.
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" "$@"

# The in-process path (HSMSSLKeyService Off) is kept for now: the tests of
# TLS, of token faults and of a hostile token run again on it.
say "cargo test with HSMSSLKeyService Off (core_tls, resilience, rsa_kx, hostile_token)"
HSM_TEST_KEY_SERVICE=Off cargo test --no-fail-fast --test core_tls --test resilience --test rsa_kx --test hostile_token \
    -- --test-threads="${TEST_THREADS:-4}" "$@"

# The tests above load the keys the way OpenSSL 4.0 must: mod_ssl opens the
# URIs with OSSL_STORE and the module's provider store answers. With an
# OpenSSL 3.x engines directory holding libp11's pkcs11 engine, the module
# registers an ENGINE of its own instead (src/tls/loader.rs): the TLS
# matrix runs again that way.
say "cargo test with OpenSSL's engines directory (the ENGINE path: core_tls, core_resumption)"
HSM_TEST_KEY_LOADING=engine cargo test --no-fail-fast --test core_tls --test core_resumption \
    -- --test-threads="${TEST_THREADS:-4}" "$@"

# The same build on Debian 13 (OpenSSL 3.5 LTS): the TLS matrix and
# configtest in a debootstrap'd trixie root, on both key-loading paths
# (about 3 minutes the first time, 90 s with the root cached).
if [ "${SKIP_COMPAT:-0}" = 1 ]; then
    say "skipping the Debian 13 run (SKIP_COMPAT=1)"
else
    say "Debian 13 compatibility (scripts/compat-debian13.sh)"
    SKIP_DEPS=1 bash scripts/compat-debian13.sh "$@"
fi

if [ "${SKIP_BENCH:-0}" = 1 ]; then
    say "skipping the short benchmark (SKIP_BENCH=1)"
else
    # The benchmark in its short mode, so that it never rots: it fails only
    # when a setup that must work does not, never on speed.
    say "short benchmark (scripts/bench.sh --short)"
    SKIP_DEPS=1 bash scripts/bench.sh --short --out "${CARGO_TARGET_DIR:-$REPO/target}/bench/ci"
fi

say "all tests passed"

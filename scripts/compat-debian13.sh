#!/usr/bin/env bash
# mod_hsm_ssl on the next Debian release: the module built here, on Debian 12
# (OpenSSL 3.0), run by Debian 13 "trixie"'s apache2 and mod_ssl, whose
# OpenSSL is 3.5 LTS:
#
#     sudo bash scripts/compat-debian13.sh [TEST-NAME-FILTER...]
#
# Why: a Debian 12 .deb of the module must keep working when its users move
# to Debian 13, and OpenSSL 3.5 is what mod_ssl and the token keys meet
# there. This shows that the Debian 12 build loads and serves on Debian 13,
# with Debian's own packages and nothing else.
#
# 1. builds the workspace and the test binaries here, on Debian 12 (the
#    module target/debug/libmod_hsm_ssl.so, the PKCS#11 test wrapper
#    libhsm_test_p11wrap.so, the key tools, and the integration tests
#    core_tls, core_resumption and configtest),
# 2. makes a Debian 13 root with debootstrap (--variant=minbase, from
#    deb.debian.org, with trixie-updates and trixie-security applied), holding
#    what the tests run: apache2 with mod_ssl, softhsm2, opensc
#    (pkcs11-tool), openssl, libengine-pkcs11-openssl (libp11's engine).
#    The root is kept in a cache directory and reused while complete (a
#    stamp file); it is brought up to date when a week old or on --refresh,
#    and made anew on --rebuild,
# 3. bind-mounts the repository (and CARGO_TARGET_DIR) at the same absolute
#    paths inside the root, checks with the root's ldd that the Debian 12
#    binaries find their libraries there (libssl.so.3 is trixie's OpenSSL 3.5),
#    and runs the test binaries in the root (chroot) against its
#    /usr/sbin/apache2, twice: as is (mod_ssl opens the pkcs11: URIs with
#    OSSL_STORE and the module's provider store answers, since the harness
#    hides OpenSSL's engines directory) and with HSM_TEST_KEY_LOADING=engine
#    (OpenSSL's engines directory holds trixie's libp11 engine, and the
#    module's ENGINE shadows it),
# 4. unmounts everything on exit, failure included, and prints a summary.
#
# Exits non-zero if a test fails. Runs as root on Debian 12 (debootstrap,
# mount, chroot; apache2 is started as root). The first run downloads some
# 70 MB and makes the root in 2 to 3 minutes; later runs reuse it (about
# 90 s in all, with the build up to date).
#
# Environment:
#   HSM_COMPAT_ROOT  the Debian 13 root (default
#                    /var/cache/mod_hsm_ssl-compat/trixie)
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   TEST_THREADS     parallel test threads (default 4)
#   SKIP_DEPS=1      do not run install-deps.sh (debootstrap must be there)
#   HSM_TEST_*       passed on to the tests (e.g. HSM_TEST_KEY_SERVICE=Off),
#                    except HSM_TEST_KEY_LOADING, which this script sets
# Test directories of failed tests and the test output are kept under
# <target>/compat-debian13/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SCRIPT=compat-debian13.sh
SUITE=trixie
TESTS=(core_tls core_resumption configtest)
# What the tests run in the root (tests/common/): apache2 (mod_ssl is in
# apache2-bin), softhsm2-util, pkcs11-tool, openssl s_client/x509/req/pkey,
# sha256sum (coreutils), /etc/mime.types (TypesConfig), libp11's engine for
# the ENGINE path; procps and iproute2 to look around in the root.
PACKAGES=(apache2 media-types softhsm2 opensc openssl libengine-pkcs11-openssl
    curl ca-certificates procps iproute2)

# usage and the options, the root's mounts, lock and stamp, debootstrap,
# in_root and the test runs: shared with compat-openssl4.sh.
# shellcheck source=scripts/compat-lib.sh
. "$REPO/scripts/compat-lib.sh"

parse_args "$@"

# say, die, the root check, install-deps.sh, cargo on PATH, and a
# CARGO_TARGET_DIR that www-data can read.
# shellcheck source=scripts/prepare.sh
. "$REPO/scripts/prepare.sh"

check_host

set_root HSM_COMPAT_ROOT "/var/cache/mod_hsm_ssl-compat/$SUITE"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# The stamp holds what the root was made with: another list remakes it.
STAMP_TEXT="$SUITE minbase ${PACKAGES[*]}"
START=$SECONDS

# ---------------------------------------------------------------- build --

say "cargo build --workspace"
cargo build --workspace
say "cargo test --no-run (${TESTS[*]})"
set_test_args
cargo test --no-run "${test_args[@]}"
# Again (nothing left to build) for the executables' paths.
read_test_exes "" < <(cargo test --no-run --message-format=json "${test_args[@]}")
# <target>/debug/deps/<test>-<hash>
PROFILE_DIR="$(dirname "$(dirname "${EXE[${TESTS[0]}]}")")"
TARGET_DIR="$(dirname "$PROFILE_DIR")"
ARTIFACTS=("$PROFILE_DIR/libmod_hsm_ssl.so" "$PROFILE_DIR/libhsm_test_p11wrap.so"
    "$PROFILE_DIR/hsm_test_keygen" "$PROFILE_DIR/hsm-ssl-keytool")
for f in "${ARTIFACTS[@]}"; do
    [ -f "$f" ] || die "$f missing after cargo build --workspace"
done
OUT="$TARGET_DIR/compat-debian13"
mkdir -p "$OUT"

# --------------------------------------------------------------- mounts --

lock_root
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_root # left by a run that was killed

# ------------------------------------------------------------- the root --

apt_upgrade() {
    say "apt-get update and upgrade in the Debian 13 root"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mount_base
    in_root apt-get -o Acquire::Languages=none update
    in_root apt-get -y -o Dpkg::Options::=--force-confnew dist-upgrade
    in_root apt-get clean
    unmount_root
}

make_root() {
    local t0=$SECONDS include
    say "making a Debian 13 ($SUITE) root in $ROOT (debootstrap, minbase)"
    include="$(IFS=,; echo "${PACKAGES[*]}")"
    debootstrap_root "$include"
    rm -f "$ROOT/etc/apt/sources.list"
    cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
EOF
    apt_upgrade
    echo "$STAMP_TEXT" >"$STAMP"
    echo "$SCRIPT: Debian 13 root made in $((SECONDS - t0)) s"
}

make_or_refresh_root "the Debian 13 root"

APACHE_VERSION="$(in_root /usr/sbin/apache2 -v | sed -n 's|^Server version: Apache/\([^ ]*\).*|\1|p')"
OPENSSL_VERSION="$(in_root openssl version | awk '{ print $2 }')"
say "Debian 13 root: Debian $(cat "$ROOT/etc/debian_version")"
echo "  apache2                   $APACHE_VERSION (package $(pkg_version apache2))"
echo "  openssl version           $(in_root openssl version)"
echo "  libssl3t64                $(pkg_version libssl3t64)"
echo "  softhsm2                  $(pkg_version softhsm2)"
echo "  opensc                    $(pkg_version opensc)"
echo "  libengine-pkcs11-openssl  $(pkg_version libengine-pkcs11-openssl)"
echo "  libc6                     $(pkg_version libc6)"
if [ -z "$APACHE_VERSION" ] || [ -z "$OPENSSL_VERSION" ]; then
    die "no apache2 or openssl in $ROOT"
fi
MULTIARCH=x86_64-linux-gnu
ENGINE_SO="$ROOT/usr/lib/$MULTIARCH/engines-3/pkcs11.so"
[ -f "$ENGINE_SO" ] || die "libp11's engine is not in the root (${ENGINE_SO#"$ROOT"}): the ENGINE path would not be tested"

# ------------------------------------------------------------ the tests --

mount_base
mount_same_path "$REPO"
case "$TARGET_DIR/" in
    "$REPO"/*) ;;
    *) mount_same_path "$TARGET_DIR" ;;
esac

say "the Debian 12 binaries in the Debian 13 root (its ldd)"
for f in "${EXE[@]}" "${ARTIFACTS[@]}"; do
    root_ldd "$f" "${f#"$TARGET_DIR"/}: libraries missing in the Debian 13 root"
    ssl="$(awk '/libssl\.so/ { print $3 }' <<<"$LIBS")"
    echo "  ${f#"$TARGET_DIR"/}: all libraries found${ssl:+, libssl: $ssl}"
done

# The environment the tests get in the root.
test_env=(TMPDIR=/tmp RUST_BACKTRACE="${RUST_BACKTRACE:-1}")
[ -n "${CARGO_TARGET_DIR:-}" ] && test_env+=(CARGO_TARGET_DIR="$TARGET_DIR")
pass_hsm_test_env HSM_TEST_KEY_LOADING

# run_path NAME [VAR=VALUE...]: every test binary in the root; sets PASSED
# and FAILED (a binary that ends without libtest's result line fails).
run_path() {
    local name=$1 t log rc ok=1
    shift
    PASSED=0
    FAILED=0
    for t in "${TESTS[@]}"; do
        log="$OUT/$name-$t.log"
        say "$t on the $name path, in Debian 13"
        set +e
        run_test "$t" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e
        tally_test_result "$log"
        if [ "$rc" -ne 0 ] || [ -z "$RESULT" ]; then
            ok=0
            [ -n "$RESULT" ] || FAILED=$((FAILED + 1))
            echo "$SCRIPT: $t failed on the $name path (exit $rc), output in $log" >&2
        fi
    done
    # Failed tests keep their directories (tests/common/dirs.rs): out of
    # the root's /tmp before it goes.
    if [ -d "$ROOT/tmp/hsm-ssl-tests" ] && [ -n "$(ls -A "$ROOT/tmp/hsm-ssl-tests")" ]; then
        local kept
        kept="$OUT/$name-kept-$(date +%Y%m%d-%H%M%S)"
        save_test_dirs "$kept"
        echo "$SCRIPT: test directories kept in $kept"
    fi
    [ "$ok" = 1 ]
}

status=0
run_path store || status=1
STORE_PASSED=$PASSED
STORE_FAILED=$FAILED
run_path engine HSM_TEST_KEY_LOADING=engine || status=1
ENGINE_PASSED=$PASSED
ENGINE_FAILED=$FAILED

trap - EXIT INT TERM
unmount_root

elapsed=$((SECONDS - START))
say "summary"
echo "Debian 13 (apache2 $APACHE_VERSION, OpenSSL $OPENSSL_VERSION): $STORE_PASSED tests passed on the store path, $ENGINE_PASSED on the engine path"
if [ "$status" -ne 0 ]; then
    echo "FAILED: $STORE_FAILED on the store path, $ENGINE_FAILED on the engine path (logs in $OUT)"
fi
echo "elapsed: $((elapsed / 60)) min $((elapsed % 60)) s"
exit "$status"

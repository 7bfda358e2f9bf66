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

usage() {
    # The header comment above, without the shebang and the '# '.
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --refresh   apt-get update and upgrade the cached root before the tests
  --rebuild   delete the cached root and make it anew
  -h, --help  this text
Other arguments are passed to the test binaries, e.g. a test name filter:
  sudo bash scripts/compat-debian13.sh rsa_static
EOF
}

REFRESH=0
REBUILD=0
FILTER=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --refresh) REFRESH=1 ;;
        --rebuild) REBUILD=1 ;;
        --) shift; FILTER+=("$@"); break ;;
        *) FILTER+=("$1") ;;
    esac
    shift
done

# say, die, the root check, install-deps.sh, cargo on PATH, and a
# CARGO_TARGET_DIR that www-data can read.
# shellcheck source=scripts/prepare.sh
. "$REPO/scripts/prepare.sh"

command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap (scripts/install-deps.sh installs it)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is supported (the tests name /usr/lib/x86_64-linux-gnu)"

ROOT="${HSM_COMPAT_ROOT:-/var/cache/mod_hsm_ssl-compat/$SUITE}"
ROOT="$(realpath -m "$ROOT")"
case "$ROOT" in
    / | "") die "HSM_COMPAT_ROOT must not be /" ;;
esac
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
STAMP="$ROOT/.mod_hsm_ssl-compat-complete"
# The stamp holds what the root was made with: another list remakes it.
STAMP_TEXT="$SUITE minbase ${PACKAGES[*]}"
START=$SECONDS

# ---------------------------------------------------------------- build --

say "cargo build --workspace"
cargo build --workspace
say "cargo test --no-run (${TESTS[*]})"
test_args=()
for t in "${TESTS[@]}"; do
    test_args+=(--test "$t")
done
cargo test --no-run "${test_args[@]}"
# Again (nothing left to build) for the executables' paths: one JSON object
# a line, and a test target's artifact names its executable.
declare -A EXE=()
while read -r name exe; do
    EXE[$name]=$exe
done < <(cargo test --no-run --message-format=json "${test_args[@]}" \
    | sed -n 's/.*"reason":"compiler-artifact".*"target":{"kind":\["test"\][^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p')
for t in "${TESTS[@]}"; do
    if [ -z "${EXE[$t]:-}" ] || [ ! -x "${EXE[$t]}" ]; then
        die "no test executable found for $t"
    fi
done
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

# Mount points under the root, deepest first (from this mount namespace).
mounts_under_root() {
    awk -v r="$ROOT" '{ p = $5; gsub(/\\040/, " ", p); if (p == r || index(p, r "/") == 1) print p }' /proc/self/mountinfo \
        | sort -r
}

# Processes whose root directory is the Debian 13 root: what this script
# started there (a test that died may leave apache2 running).
procs_in_root() {
    local p link
    for p in /proc/[0-9]*; do
        link="$(readlink "$p/root" 2>/dev/null)" || continue
        [ "$link" = "$ROOT" ] && echo "${p#/proc/}"
    done
    return 0
}

unmount_root() {
    local pids m
    mapfile -t pids < <(procs_in_root)
    if [ "${#pids[@]}" -gt 0 ]; then
        echo "$SCRIPT: stopping processes left in the root: ${pids[*]}" >&2
        kill -TERM "${pids[@]}" 2>/dev/null || true
        sleep 2
        mapfile -t pids < <(procs_in_root)
        [ "${#pids[@]}" -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || echo "$SCRIPT: WARNING: cannot unmount $m" >&2
    done < <(mounts_under_root)
}

# /proc, /sys, /dev, /dev/pts, /dev/shm, /run and a fresh /tmp in the root.
mount_base() {
    mkdir -p "$ROOT"/{proc,sys,dev,run,tmp}
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs -o ro sysfs "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"
    mount -t tmpfs -o mode=0755 run "$ROOT/run"
    mount -t tmpfs -o mode=1777 tmp "$ROOT/tmp"
}

# A directory of this machine at the same absolute path in the root.
mount_same_path() {
    mkdir -p "$ROOT$1"
    mount --bind "$1" "$ROOT$1"
}

# Runs a command in the root with a clean environment.
in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@" 9>&-
}

# One run at a time per root (they would share its mounts).
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
if ! flock -n 9; then
    say "waiting for another run using $ROOT"
    flock 9
fi
trap unmount_root EXIT
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
    if [ -e "$ROOT" ]; then
        [ -z "$(mounts_under_root)" ] || die "something is still mounted under $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    include="$(IFS=,; echo "${PACKAGES[*]}")"
    # --foreign, then the second stage in the root: in between, a
    # policy-rc.d keeps the packages' scripts from starting apache2 there.
    debootstrap --foreign --variant=minbase --arch=amd64 --include="$include" "$SUITE" "$ROOT" "$MIRROR"
    mkdir -p "$ROOT/usr/sbin"
    printf '#!/bin/sh\n# mod_hsm_ssl compat root: no service starts here.\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage 9>&-
    unmount_root # in case debootstrap left /proc or /sys mounted
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

if [ "$REBUILD" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$STAMP_TEXT" ]; then
    make_root
elif [ "$REFRESH" = 1 ] || [ -n "$(find "$STAMP" -mtime +6)" ]; then
    apt_upgrade
    touch "$STAMP"
else
    say "reusing the Debian 13 root in $ROOT (made or refreshed $(date -r "$STAMP" '+%F %T'))"
fi

pkg_version() {
    in_root dpkg-query -W -f="\${Version}" "$1" 2>/dev/null || echo "not installed"
}
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
    libs="$(in_root ldd "$f")" || die "ldd $f failed in the root"
    if grep -q 'not found' <<<"$libs"; then
        printf '%s\n' "$libs" >&2
        die "${f#"$TARGET_DIR"/}: libraries missing in the Debian 13 root"
    fi
    ssl="$(awk '/libssl\.so/ { print $3 }' <<<"$libs")"
    echo "  ${f#"$TARGET_DIR"/}: all libraries found${ssl:+, libssl: $ssl}"
done

# The environment the tests get in the root.
test_env=(TMPDIR=/tmp RUST_BACKTRACE="${RUST_BACKTRACE:-1}")
[ -n "${CARGO_TARGET_DIR:-}" ] && test_env+=(CARGO_TARGET_DIR="$TARGET_DIR")
while IFS='=' read -r k _; do
    case "$k" in
        HSM_TEST_KEY_LOADING) ;;
        HSM_TEST_*) test_env+=("$k=${!k}") ;;
    esac
done < <(env)

# run_path NAME [VAR=VALUE...]: every test binary in the root; sets PASSED
# and FAILED (a binary that ends without libtest's result line fails).
run_path() {
    local name=$1 t log result n m rc ok=1
    shift
    PASSED=0
    FAILED=0
    for t in "${TESTS[@]}"; do
        log="$OUT/$name-$t.log"
        say "$t on the $name path, in Debian 13"
        set +e
        in_root "${test_env[@]}" "$@" /usr/bin/env -C "$REPO" "${EXE[$t]}" \
            --test-threads="${TEST_THREADS:-4}" "${FILTER[@]}" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e
        result="$(grep '^test result: ' "$log" | tail -n 1)"
        n="$(sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p' <<<"$result")"
        m="$(sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p' <<<"$result")"
        PASSED=$((PASSED + ${n:-0}))
        FAILED=$((FAILED + ${m:-0}))
        if [ "$rc" -ne 0 ] || [ -z "$result" ]; then
            ok=0
            [ -n "$result" ] || FAILED=$((FAILED + 1))
            echo "$SCRIPT: $t failed on the $name path (exit $rc), output in $log" >&2
        fi
    done
    # Failed tests keep their directories (tests/common/dirs.rs): out of
    # the root's /tmp before it goes.
    if [ -d "$ROOT/tmp/hsm-ssl-tests" ] && [ -n "$(ls -A "$ROOT/tmp/hsm-ssl-tests")" ]; then
        local kept
        kept="$OUT/$name-kept-$(date +%Y%m%d-%H%M%S)"
        cp -a "$ROOT/tmp/hsm-ssl-tests" "$kept"
        rm -rf "${ROOT:?}/tmp/hsm-ssl-tests"
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

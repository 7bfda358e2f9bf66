#!/usr/bin/env bash
# mod_hsm_ssl with OpenSSL 4.0, which has no ENGINE API: the module and
# mod_ssl both built against Debian experimental's OpenSSL 4.0, run by
# Debian unstable's apache2:
#
#     sudo bash scripts/compat-openssl4.sh [TEST-NAME-FILTER...]
#
# Why: with OpenSSL 4.0 mod_ssl has no ENGINE to ask, so OSSL_STORE, and
# the module's provider store for pkcs11: URIs behind it, is the only way
# the token keys reach mod_ssl; and the module itself builds without its
# ENGINE shim (build.rs: cfg ossl_engine only below 4.0). This shows that
# such a build serves the TLS matrix. Run by hand, not in CI: it needs
# Debian experimental, which changes under it, and compiles mod_ssl and
# the whole workspace; its last result is in docs/development.md.
#
# 1. makes a Debian unstable (sid) root with debootstrap (--variant=minbase,
#    from deb.debian.org), adds experimental and deb-src lines, installs
#    OpenSSL 4.0 from experimental (openssl, libssl4, libssl-dev) and from
#    sid apache2, apache2-dev, softhsm2, opensc and the build tools (gcc,
#    clang and libclang for bindgen, pkg-config, dpkg-dev). The root is kept
#    in a cache directory and reused while complete (a stamp file); it is
#    brought up to date when a week old or on --refresh, and made anew on
#    --rebuild,
# 2. rebuilds mod_ssl against OpenSSL 4.0 from Debian's apache2 source
#    package (apt-get source of the root's apache2-bin version; if the
#    mirror lacks that source, the newest 2.4 source it has, from trixie or
#    bookworm, with a warning): the modules/ssl/*.c files compiled with the
#    root's apxs and the sid apache2-dev headers (about 20 s), installed in
#    place of the root's /usr/lib/apache2/modules/mod_ssl.so (Debian's is
#    kept as mod_ssl.so.debian). OpenSSL 4.0's configuration.h defines
#    OPENSSL_NO_ENGINE, so mod_ssl compiles without its ENGINE code
#    (MODSSL_HAVE_ENGINE_API 0). Checked: it links libssl.so.4 and imports
#    no ENGINE_ function; apache2 -M loads it. Kept while the apache2 and
#    OpenSSL versions stay,
# 3. builds this repository in the root against OpenSSL 4.0: the repository
#    is bind-mounted at its own path, this machine's Rust toolchain
#    (rustup's toolchain directory) read-only at its own path; the target
#    directory (/build/target-<hash of the checkout's path>) and CARGO_HOME (a copy of this machine's crate registry, so
#    cargo runs --offline) are in the root. cargo build --workspace, then
#    the test binaries core_tls, key_loading and configtest. Checked: the
#    module links libssl.so.4 and libcrypto.so.4 and imports no ENGINE_
#    function,
# 4. runs the test binaries in the root (chroot) against its
#    /usr/sbin/apache2 and the rebuilt mod_ssl, with the test directories
#    kept (HSM_TEST_KEEP=1), and checks their error logs: the keys were
#    handed over by the provider store (HSM00523) and never by an ENGINE
#    (HSM00524), and mod_ssl logged no AH10132 (its "no engine, trying
#    OSSL_STORE" notice: mod_ssl has no engine code at all),
# 5. unmounts everything on exit, failure included, and prints each test's
#    result, a summary line and the elapsed time.
#
# Exits non-zero if a build or a test fails. Runs as root on Debian 12
# (debootstrap, mount, chroot; apache2 is started as root). The first run
# downloads a few hundred MB and took 4 minutes on two CPUs with a near
# mirror (root 2 min, mod_ssl 20 s, cargo 90 s, tests 20 s); later runs
# reuse the root, mod_ssl and the target directory and take under a minute.
#
# Environment:
#   HSM_COMPAT_OPENSSL4_ROOT  the root (default
#                    /var/cache/mod_hsm_ssl-compat/openssl4)
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   TEST_THREADS     parallel test threads (default 4)
#   BUILD_JOBS       cargo and make jobs (default: the number of CPUs)
#   HSM_TEST_*       passed on to the tests (e.g. HSM_TEST_KEY_SERVICE=Off),
#                    except HSM_TEST_KEY_LOADING and HSM_TEST_KEEP
# The test output, the error logs and the build logs are kept under
# <root>/build/out/ (the tests' directories of the last run in
# <root>/build/out/kept/).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SCRIPT=compat-openssl4.sh
SUITE=sid
TESTS=(core_tls key_loading configtest)
# From sid: what the tests run (as in compat-debian13.sh, without libp11's
# engine: OpenSSL 4.0 loads no engine) and what the builds need.
PACKAGES=(apache2 apache2-dev media-types softhsm2 opensc curl ca-certificates
    procps iproute2 build-essential pkg-config clang libclang-dev dpkg-dev
    libapr1-dev libaprutil1-dev binutils file)
# From experimental.
OPENSSL_PACKAGES=(openssl libssl4 libssl-dev)

# usage and the options, the root's mounts, lock and stamp, debootstrap,
# in_root and the test runs: shared with compat-debian13.sh.
# shellcheck source=scripts/compat-lib.sh
. "$REPO/scripts/compat-lib.sh"

parse_args "$@"

say() { printf '\n==> %s\n' "$*"; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo bash scripts/$SCRIPT): it makes a chroot and starts apache2 as root"
check_host

set_root HSM_COMPAT_OPENSSL4_ROOT /var/cache/mod_hsm_ssl-compat/openssl4
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
JOBS="${BUILD_JOBS:-$(nproc)}"
# The stamp holds what the root was made with: another list remakes it.
STAMP_TEXT="$SUITE+experimental minbase ${PACKAGES[*]} / ${OPENSSL_PACKAGES[*]}"
# In the root (paths as the root sees them).
BUILD=/build
SRC_DIR=$BUILD/apache2-src
MODSSL_DIR=$BUILD/mod_ssl
# One target directory per checkout: cargo's fingerprints are mtimes and
# paths relative to the workspace, so another checkout's artifacts would
# pass for fresh.
TARGET_DIR=$BUILD/target-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
CARGO_HOME_IN=$BUILD/cargo-home
OUT_IN=$BUILD/out
OUT="$ROOT$OUT_IN"
START=$SECONDS

# This machine's Rust toolchain: the directory holding bin/cargo and
# lib/rustlib (rustup's toolchains/<name>), mounted read-only in the root.
find_toolchain() {
    local cargo
    if command -v rustup >/dev/null 2>&1 && cargo="$(rustup which cargo 2>/dev/null)"; then
        :
    elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/rustup" ]; then
        cargo="$("${CARGO_HOME:-$HOME/.cargo}/bin/rustup" which cargo)"
    elif [ -x /root/.cargo/bin/rustup ]; then
        cargo="$(/root/.cargo/bin/rustup which cargo)"
    else
        cargo="$(command -v cargo)" || die "cargo not found: install a Rust toolchain (rustup) for root"
    fi
    TOOLCHAIN="$(dirname "$(dirname "$(realpath "$cargo")")")"
    if [ ! -x "$TOOLCHAIN/bin/cargo" ] || [ ! -x "$TOOLCHAIN/bin/rustc" ] || [ ! -d "$TOOLCHAIN/lib/rustlib" ]; then
        die "$TOOLCHAIN is not a self-contained Rust toolchain (bin/cargo, bin/rustc, lib/rustlib): use rustup"
    fi
    case "$TOOLCHAIN" in
        /usr | /usr/local | /) die "cargo comes from $TOOLCHAIN (a system package): the root cannot borrow it; use rustup" ;;
    esac
}
find_toolchain
# The host's crate registry (index and .crate files), copied into the root.
HOST_REGISTRY="${CARGO_HOME:-$HOME/.cargo}/registry"
[ -d "$HOST_REGISTRY/cache" ] || HOST_REGISTRY=/root/.cargo/registry
[ -d "$HOST_REGISTRY/cache" ] || die "no crate registry cache in ~/.cargo/registry: run cargo fetch here first"

# --------------------------------------------------------------- mounts --

lock_root
unmount_root # left by a run that was killed

# ------------------------------------------------------------- the root --

write_sources() {
    rm -f "$ROOT/etc/apt/sources.list"
    cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb deb-src
URIs: $MIRROR
Suites: $SUITE experimental
Components: main

# Only for apt-get source apache2, when the mirror lacks sid's (below).
Types: deb-src
URIs: $MIRROR
Suites: trixie bookworm
Components: main
EOF
    # sid's and experimental's Release files are valid for a week only: a
    # mirror snapshot or a slow mirror would stop apt-get update.
    printf 'Acquire::Check-Valid-Until "false";\n' >"$ROOT/etc/apt/apt.conf.d/99mod-hsm-ssl-compat"
}

# Installs the packages: sid's, then OpenSSL 4.0 from experimental (whose
# packages apt takes only when asked: experimental is NotAutomatic).
install_packages() {
    in_root apt-get update
    in_root apt-get -y -o Dpkg::Options::=--force-confnew dist-upgrade
    in_root apt-get -y --no-install-recommends install "${PACKAGES[@]}"
    in_root apt-get -y --no-install-recommends -t experimental install "${OPENSSL_PACKAGES[@]}"
    in_root apt-get clean
}

apt_upgrade() {
    say "apt-get update and upgrade in the sid root"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mount_base
    install_packages
    unmount_root
}

make_root() {
    local t0=$SECONDS
    say "making a Debian unstable ($SUITE) root in $ROOT (debootstrap, minbase)"
    debootstrap_root "" # sid's packages: install_packages, below
    write_sources
    apt_upgrade
    echo "$STAMP_TEXT" >"$STAMP"
    echo "$SCRIPT: sid root with OpenSSL 4.0 made in $((SECONDS - t0)) s"
}

T_ROOT=$SECONDS
make_or_refresh_root "the sid root"
T_ROOT=$((SECONDS - T_ROOT))

APACHE_VERSION="$(in_root /usr/sbin/apache2 -v | sed -n 's|^Server version: Apache/\([^ ]*\).*|\1|p')"
APACHE_PKG="$(pkg_version apache2-bin)"
OPENSSL_VERSION="$(in_root openssl version | awk '{ print $2 }')"
LIBSSL_PKG="$(pkg_version libssl4)"
say "the root: Debian $(cat "$ROOT/etc/debian_version")"
echo "  openssl version       $(in_root openssl version)"
echo "  libssl4, libssl-dev   $LIBSSL_PKG, $(pkg_version libssl-dev)"
echo "  libssl3t64            $(pkg_version libssl3t64) (softhsm2, opensc and apache2-bin's other modules link it)"
echo "  apache2 -v            $(in_root /usr/sbin/apache2 -v | head -n 1) (package $APACHE_PKG)"
echo "  softhsm2-util         $(in_root softhsm2-util --version) (package $(pkg_version softhsm2))"
echo "  opensc                $(pkg_version opensc)"
echo "  libc6                 $(pkg_version libc6)"
echo "  rustc (this machine)  $("$TOOLCHAIN/bin/rustc" --version)"
case "$OPENSSL_VERSION" in
    4.*) ;;
    *) die "the root's openssl is '$OPENSSL_VERSION', not 4.x" ;;
esac
case "$LIBSSL_PKG" in
    4.*) ;;
    *) die "libssl4 is not installed in the root" ;;
esac
[ -n "$APACHE_VERSION" ] || die "no apache2 in $ROOT"
mkdir -p "$OUT"

# What a binary links and imports: libssl.so.4 and libcrypto.so.4 (with
# "optional": if it links OpenSSL at all), no libssl.so.3 or
# libcrypto.so.3, no ENGINE_ symbol.
check_openssl4() {
    local f=$1 engine
    if [ "${2:-}" = optional ] && ! in_root ldd "$f" | grep -q 'lib\(ssl\|crypto\)\.so'; then
        echo "  $f: links no OpenSSL"
        return 0
    fi
    root_ldd "$f" "$f: libraries missing in the root"
    grep -q 'libssl\.so\.4 ' <<<"$LIBS" || { printf '%s\n' "$LIBS" >&2; die "$f does not link libssl.so.4"; }
    grep -q 'libcrypto\.so\.4 ' <<<"$LIBS" || { printf '%s\n' "$LIBS" >&2; die "$f does not link libcrypto.so.4"; }
    if grep -q 'lib\(ssl\|crypto\)\.so\.3 ' <<<"$LIBS"; then
        printf '%s\n' "$LIBS" >&2
        die "$f links OpenSSL 3 too"
    fi
    engine="$(in_root nm -D --undefined-only "$f" | awk '$2 ~ /^ENGINE_/ { print $2 }')"
    [ -z "$engine" ] || die "$f imports ENGINE functions: $(echo "$engine" | tr '\n' ' ')"
    echo "  $f: libssl.so.4 and libcrypto.so.4 ($(awk '/libssl\.so\.4/ { print $3 }' <<<"$LIBS")), no ENGINE_ import"
}

mount_base

# ------------------------------------------------------------- mod_ssl --

# Rebuilt when the apache2 source or the OpenSSL version changes.
MODSSL_STAMP_TEXT="apache2 $APACHE_PKG libssl-dev $(pkg_version libssl-dev)"
MODSSL_STAMP="$ROOT$MODSSL_DIR/.built"
MODSSL_SO=/usr/lib/apache2/modules/mod_ssl.so
T_MODSSL=$SECONDS
if [ -f "$MODSSL_STAMP" ] && [ "$(cat "$MODSSL_STAMP")" = "$MODSSL_STAMP_TEXT" ] \
    && cmp -s "$ROOT$MODSSL_DIR/mod_ssl.so" "$ROOT$MODSSL_SO"; then
    say "reusing mod_ssl rebuilt against OpenSSL 4.0 ($MODSSL_STAMP_TEXT)"
    MODSSL_HOW="$(sed -n 2p "$ROOT$MODSSL_DIR/.how" 2>/dev/null || echo "?")"
else
    say "mod_ssl from Debian's apache2 source, against OpenSSL $OPENSSL_VERSION"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    rm -rf "${ROOT:?}$SRC_DIR" "${ROOT:?}$MODSSL_DIR"
    mkdir -p "$ROOT$SRC_DIR" "$ROOT$MODSSL_DIR"
    write_sources
    in_root apt-get update >"$OUT/apt-get-update.log" 2>&1 || { cat "$OUT/apt-get-update.log" >&2; die "apt-get update failed"; }
    # apt-get source unpacks with dpkg-source, patches applied: the version
    # of the root's apache2-bin, else (a mirror that has not every source
    # package) the newest other 2.4 source Debian has, said loudly.
    mapfile -t versions < <(in_root apt-cache showsrc apache2 | sed -n 's/^Version: //p' | sort -u -V -r | grep -vxF "$APACHE_PKG")
    SOURCE_PKG=""
    : >"$OUT/apt-get-source.log"
    for v in "$APACHE_PKG" "${versions[@]}"; do
        case "$v" in 2.4.*) ;; *) continue ;; esac
        echo "  apt-get source apache2=$v"
        if in_root /usr/bin/env -C "$SRC_DIR" apt-get source --only-source "apache2=$v" >>"$OUT/apt-get-source.log" 2>&1; then
            SOURCE_PKG=$v
            break
        fi
        grep '^E: ' "$OUT/apt-get-source.log" | tail -n 2 | sed 's/^/    /'
        rm -rf "${ROOT:?}$SRC_DIR" && mkdir -p "$ROOT$SRC_DIR"
    done
    [ -n "$SOURCE_PKG" ] || die "no apache2 source package could be downloaded (log: $OUT/apt-get-source.log)"
    if [ "$SOURCE_PKG" != "$APACHE_PKG" ]; then
        echo "$SCRIPT: WARNING: the mirror has no source for apache2 $APACHE_PKG (the root's apache2-bin);" \
            "mod_ssl is built from Debian's apache2 $SOURCE_PKG source instead" >&2
    fi
    src="$(find "$ROOT$SRC_DIR" -mindepth 1 -maxdepth 1 -type d -name 'apache2-*' | head -n 1)"
    [ -d "$src/modules/ssl" ] || die "no modules/ssl in the apache2 source under $SRC_DIR"
    src="${src#"$ROOT"}"
    echo "  source: Debian apache2 $SOURCE_PKG, in $src"
    # The light way: apxs compiles modules/ssl/*.c (mod_ssl.c first: it
    # names the module) with the installed httpd headers and links
    # libssl/libcrypto, which are 4.0 here (libssl-dev from experimental).
    cp "$ROOT$src"/modules/ssl/*.c "$ROOT$src"/modules/ssl/*.h "$ROOT$MODSSL_DIR/"
    cfiles=(mod_ssl.c)
    for f in "$ROOT$MODSSL_DIR"/*.c; do
        [ "${f##*/}" = mod_ssl.c ] || cfiles+=("${f##*/}")
    done
    set +e
    in_root /usr/bin/env -C "$MODSSL_DIR" nice apxs -c -I. -I"$src/modules/md" -Wc,-Wall -o mod_ssl.so \
        "${cfiles[@]}" -lssl -lcrypto >"$OUT/mod_ssl-build.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        grep -E -A3 "error:|Error" "$OUT/mod_ssl-build.log" | head -n 80 >&2
        die "apxs could not build mod_ssl against OpenSSL 4.0 (log: $OUT/mod_ssl-build.log)"
    fi
    warnings="$(grep -c 'warning:' "$OUT/mod_ssl-build.log" || true)"
    [ -f "$ROOT$MODSSL_DIR/.libs/mod_ssl.so" ] || die "apxs made no .libs/mod_ssl.so"
    cp "$ROOT$MODSSL_DIR/.libs/mod_ssl.so" "$ROOT$MODSSL_DIR/mod_ssl.so"
    check_openssl4 "$MODSSL_DIR/mod_ssl.so"
    # Debian's own, kept aside once.
    [ -f "$ROOT$MODSSL_SO.debian" ] || cp -a "$ROOT$MODSSL_SO" "$ROOT$MODSSL_SO.debian"
    install -m 0644 "$ROOT$MODSSL_DIR/mod_ssl.so" "$ROOT$MODSSL_SO"
    MODSSL_HOW="from Debian's apache2 $SOURCE_PKG source by apxs -c modules/ssl/*.c -lssl -lcrypto, $warnings compiler warnings, $((SECONDS - T_MODSSL)) s"
    printf 'apache2 %s\n%s\n' "$APACHE_PKG" "$MODSSL_HOW" >"$ROOT$MODSSL_DIR/.how"
    echo "$MODSSL_STAMP_TEXT" >"$MODSSL_STAMP"
fi
T_MODSSL=$((SECONDS - T_MODSSL))
check_openssl4 "$MODSSL_SO"
# Loads in the root's apache2 (-M lists it).
modules="$(in_root /usr/sbin/apache2 -d /tmp -f /dev/null -C "ServerName localhost" -C "ErrorLog /dev/stderr" \
    -C "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so" \
    -C "LoadModule ssl_module $MODSSL_SO" -M 2>&1 || true)"
grep -q 'ssl_module' <<<"$modules" || { printf '%s\n' "$modules" >&2; die "the rebuilt mod_ssl does not load in the root's apache2"; }
echo "  the root's apache2 loads it (apache2 -M lists ssl_module)"

# --------------------------------------------------------------- build --

mount_same_path "$REPO"
mount_same_path "$TOOLCHAIN" ro
mkdir -p "$ROOT$TARGET_DIR" "$ROOT$CARGO_HOME_IN/registry"
chmod 0755 "$ROOT$BUILD" "$ROOT$TARGET_DIR"
# The registry's index and .crate files, refreshed from this machine.
cp -a "$HOST_REGISTRY/index" "$HOST_REGISTRY/cache" "$ROOT$CARGO_HOME_IN/registry/"

build_env=(PATH="$TOOLCHAIN/bin:/usr/sbin:/usr/bin:/sbin:/bin" CARGO_HOME="$CARGO_HOME_IN"
    CARGO_TARGET_DIR="$TARGET_DIR" CARGO="$TOOLCHAIN/bin/cargo" RUSTC="$TOOLCHAIN/bin/rustc"
    CARGO_NET_OFFLINE=true CARGO_BUILD_JOBS="$JOBS")

# The summary line when the module or the tests do not build.
build_failed() {
    say "summary"
    echo "OpenSSL $OPENSSL_VERSION, apache2 $APACHE_VERSION with mod_ssl rebuilt: $1 failed, no test run (log: $2)"
    echo "elapsed: $(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s"
    exit 1
}

T_CARGO=$SECONDS
say "cargo build --workspace --offline, in the root (OpenSSL $OPENSSL_VERSION)"
set +e
in_root "${build_env[@]}" /usr/bin/env -C "$REPO" nice "$TOOLCHAIN/bin/cargo" build --offline --workspace 2>&1 \
    | tee "$OUT/cargo-build.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    echo "$SCRIPT: cargo build failed against OpenSSL $OPENSSL_VERSION; the errors:" >&2
    grep -E -A12 '^error' "$OUT/cargo-build.log" | head -n 200 >&2
    build_failed "cargo build --workspace" "$OUT/cargo-build.log"
fi
say "cargo test --no-run (${TESTS[*]}), in the root"
set_test_args
set +e
in_root "${build_env[@]}" /usr/bin/env -C "$REPO" nice "$TOOLCHAIN/bin/cargo" test --offline --no-run \
    --message-format=json-diagnostic-rendered-ansi "${test_args[@]}" >"$OUT/cargo-test-build.json" 2>"$OUT/cargo-test-build.log"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    grep -E -A12 '^error' "$OUT/cargo-test-build.log" | head -n 200 >&2
    build_failed "cargo test --no-run" "$OUT/cargo-test-build.log"
fi
T_CARGO=$((SECONDS - T_CARGO))
read_test_exes "$ROOT" <"$OUT/cargo-test-build.json"
PROFILE_DIR="$TARGET_DIR/debug"
say "what the OpenSSL 4.0 build links"
# OpenSSL's version as openssl-sys saw it, and whether the ENGINE shim
# was compiled (build.rs: cfg ossl_engine below 4.0).
# shellcheck disable=SC2012 # the newest build script output
ossl_out="$(ls -t "$ROOT$PROFILE_DIR"/build/openssl-sys-*/output | head -n 1)"
echo "  openssl-sys saw: $(grep -h 'cargo:version_number=\|cargo:rustc-cfg=ossl3' "$ossl_out" | tr '\n' ' ')"
for f in "$PROFILE_DIR/libmod_hsm_ssl.so" "$PROFILE_DIR/deps/libmod_hsm_ssl.so" "$PROFILE_DIR/libhsm_test_p11wrap.so" \
    "$PROFILE_DIR/hsm-ssl-keytool" "${EXE[@]}"; do
    [ -f "$ROOT$f" ] || continue
    case "$f" in
        *p11wrap*) in_root ldd "$f" | grep -q 'not found' && die "$f: libraries missing"
            echo "  $f: (PKCS#11 wrapper, no OpenSSL needed)"; continue ;;
    esac
    case "$f" in
        */libmod_hsm_ssl.so) check_openssl4 "$f" ;;
        *) check_openssl4 "$f" optional ;;
    esac
done
if in_root nm -D "$PROFILE_DIR/libmod_hsm_ssl.so" | grep -q 'ENGINE'; then
    die "the module has ENGINE symbols: cfg ossl_engine was set against OpenSSL 4"
fi

# ------------------------------------------------------------ the tests --

# The environment the tests get in the root. The test directories are
# kept, for their error logs.
test_env=(TMPDIR=/tmp RUST_BACKTRACE="${RUST_BACKTRACE:-1}" CARGO_TARGET_DIR="$TARGET_DIR" HSM_TEST_KEEP=1
    "${build_env[@]}")
pass_hsm_test_env HSM_TEST_KEY_LOADING HSM_TEST_KEEP

rm -rf "$OUT/kept"
mkdir -p "$OUT/kept"
PASSED=0
FAILED=0
status=0
T_TESTS=$SECONDS
for t in "${TESTS[@]}"; do
    log="$OUT/$t.log"
    say "$t with OpenSSL 4.0, in the sid root"
    set +e
    run_test "$t" >"$log" 2>&1
    rc=$?
    set -e
    grep -E '^test .* \.\.\. ' "$log" | sed 's/^/  /' || true
    tally_test_result "$log"
    if [ "$rc" -ne 0 ] || [ -z "$RESULT" ]; then
        status=1
        [ -n "$RESULT" ] || FAILED=$((FAILED + 1))
        echo "$SCRIPT: $t failed (exit $rc):" >&2
        grep -A1 ' panicked at ' "$log" | grep -v '^--$' | head -n 40 | sed 's/^/    /' >&2
        echo "$SCRIPT: full output in $log" >&2
    fi
    if [ -d "$ROOT/tmp/hsm-ssl-tests" ]; then
        save_test_dirs "$OUT/kept/$t"
    fi
done
T_TESTS=$((SECONDS - T_TESTS))

say "the error logs: how the keys reached mod_ssl"
mapfile -t logs < <(find "$OUT/kept" -type f -path '*/logs/error.log' | sort)
with_store=0
for l in "${logs[@]}"; do
    grep -q 'HSM00523' "$l" && with_store=$((with_store + 1))
done
engine_logs="$(grep -l 'HSM00524' "${logs[@]}" 2>/dev/null || true)"
ah10132_logs="$(grep -l 'AH10132' "${logs[@]}" 2>/dev/null || true)"
echo "  ${#logs[@]} error logs; $with_store with HSM00523 (key handed over by the provider store)"
nlogs() { if [ -z "$1" ]; then echo none; else echo "in $(wc -l <<<"$1") logs"; fi; }
echo "  HSM00524 (an ENGINE loaded a key): $(nlogs "$engine_logs")"
echo "  AH10132 (mod_ssl's engine fallback notice): $(nlogs "$ah10132_logs")"
if [ "${#logs[@]}" -eq 0 ] || [ "$with_store" -eq 0 ]; then
    echo "$SCRIPT: no error log shows a key loaded through the provider store (HSM00523)" >&2
    status=1
fi
if [ -n "$engine_logs" ] || [ -n "$ah10132_logs" ]; then
    echo "$SCRIPT: engine traces in: $engine_logs $ah10132_logs" >&2
    status=1
fi
example="$(grep -l 'HSM00523' "${logs[@]}" 2>/dev/null | head -n 1 || true)"
[ -z "$example" ] || grep -m 2 'HSM00523' "$example" | sed 's/^/  e.g. /'

unmount_root
trap - EXIT

elapsed=$((SECONDS - START))
say "summary"
echo "root: ${T_ROOT} s, mod_ssl: ${T_MODSSL} s ($MODSSL_HOW), cargo: ${T_CARGO} s, tests: ${T_TESTS} s"
echo "OpenSSL $OPENSSL_VERSION, apache2 $APACHE_VERSION with mod_ssl rebuilt: $PASSED passed, $FAILED failed"
[ "$status" -eq 0 ] || echo "FAILED (test output and error logs in $OUT)"
echo "elapsed: $((elapsed / 60)) min $((elapsed % 60)) s"
exit "$status"

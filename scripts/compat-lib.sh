# shellcheck shell=bash
# Sourced by scripts/compat-debian13.sh and scripts/compat-openssl4.sh (not
# run on its own): what both do with their debootstrap'd Debian root. Only
# functions; nothing runs when it is sourced.
#
# Expects REPO (the repository root), SCRIPT (the caller's name), SUITE
# (the root's Debian suite), MIRROR, TESTS (the test binaries' names),
# STAMP_TEXT (what the root is made with) and, by the time the functions
# run, say and die. set_root sets ROOT and STAMP.
#
#   usage               the caller's header comment and the options
#   parse_args ARGS     --refresh, --rebuild, -h/--help; sets REFRESH,
#                       REBUILD and FILTER (the other arguments)
#   check_host          debootstrap is there and the machine is amd64
#   set_root VAR DEFAULT  ROOT from $VAR (else DEFAULT), absolute and not /;
#                       STAMP, the file that marks the root complete
#   mounts_under_root   the mount points under ROOT, deepest first
#   procs_in_root       the processes whose root directory is ROOT
#   unmount_root        stops those processes, unmounts everything under ROOT
#   mount_base          /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp
#   mount_same_path DIR [ro]  DIR bind-mounted at its own path in the root
#   in_root CMD...      CMD in the root (chroot) with a clean environment
#   lock_root           one run at a time per root (fd 9); unmount_root on EXIT
#   debootstrap_root INCLUDE  a new minbase root of SUITE in ROOT (the old
#                       one deleted) with the packages INCLUDE (comma-separated,
#                       may be empty), no service started in it
#   make_or_refresh_root WHAT  by the stamp: make_root, apt_upgrade (both
#                       the caller's) or reuse the root
#   pkg_version PKG     a package's version in the root
#   set_test_args       test_args: --test NAME for each of TESTS
#   read_test_exes PREFIX  EXE[name] from cargo's JSON messages on stdin;
#                       dies unless each of TESTS is executable at PREFIX+path
#   root_ldd FILE MESSAGE  the root's ldd of FILE in LIBS; dies (MESSAGE)
#                       when a library is not found
#   pass_hsm_test_env [VAR...]  appends this environment's HSM_TEST_*
#                       variables, but the VARs, to test_env
#   run_test NAME [VAR=VALUE...]  the test binary NAME in the root, in REPO,
#                       with test_env, TEST_THREADS and FILTER
#   tally_test_result LOG  RESULT: libtest's last "test result:" line of
#                       LOG; its passed and failed counts added to PASSED
#                       and FAILED
#   save_test_dirs DEST the tests' kept directories moved from the root's
#                       /tmp to DEST

# ------------------------------------------------------------ arguments --

usage() {
    # The caller's header comment, without the shebang and the '# '.
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[-1]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --refresh   apt-get update and upgrade the cached root before the tests
  --rebuild   delete the cached root and make it anew
  -h, --help  this text
Other arguments are passed to the test binaries, e.g. a test name filter:
  sudo bash scripts/$SCRIPT rsa_static
EOF
}

parse_args() {
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
}

check_host() {
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap (scripts/install-deps.sh installs it)"
    [ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is supported (the tests name /usr/lib/x86_64-linux-gnu)"
}

set_root() {
    ROOT="${!1:-$2}"
    ROOT="$(realpath -m "$ROOT")"
    case "$ROOT" in
        / | "") die "$1 must not be /" ;;
    esac
    STAMP="$ROOT/.mod_hsm_ssl-compat-complete"
}

# --------------------------------------------------------------- mounts --

# Mount points under the root, deepest first (from this mount namespace).
mounts_under_root() {
    awk -v r="$ROOT" '{ p = $5; gsub(/\\040/, " ", p); if (p == r || index(p, r "/") == 1) print p }' /proc/self/mountinfo \
        | sort -r
}

# Processes whose root directory is this root: what the script started
# there (a test that died may leave apache2 running).
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

# A directory of this machine at the same absolute path in the root
# (read-only with "ro").
mount_same_path() {
    mkdir -p "$ROOT$1"
    mount --bind "$1" "$ROOT$1"
    if [ "${2:-}" = ro ]; then
        mount -o remount,bind,ro "$ROOT$1"
    fi
}

# Runs a command in the root with a clean environment (and without the
# lock's fd 9: what is left running there does not hold the lock).
in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@" 9>&-
}

# One run at a time per root (they would share its mounts). The caller
# then runs unmount_root, for what a run that was killed left.
lock_root() {
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    if ! flock -n 9; then
        say "waiting for another run using $ROOT"
        flock 9
    fi
    trap unmount_root EXIT
}

# ------------------------------------------------------------- the root --

# debootstrap_root INCLUDE: INCLUDE is debootstrap's --include (none when
# empty). --foreign, then the second stage in the root: in between, a
# policy-rc.d keeps the packages' scripts from starting apache2 there.
debootstrap_root() {
    if [ -e "$ROOT" ]; then
        [ -z "$(mounts_under_root)" ] || die "something is still mounted under $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    debootstrap --foreign --variant=minbase --arch=amd64 ${1:+"--include=$1"} "$SUITE" "$ROOT" "$MIRROR"
    mkdir -p "$ROOT/usr/sbin"
    printf '#!/bin/sh\n# mod_hsm_ssl compat root: no service starts here.\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage 9>&-
    unmount_root # in case debootstrap left /proc or /sys mounted
}

# make_or_refresh_root WHAT (e.g. "the sid root"): the root made anew
# (make_root) on --rebuild or when the stamp is missing or holds another
# STAMP_TEXT; brought up to date (apt_upgrade) on --refresh or when a week
# old; else reused.
make_or_refresh_root() {
    if [ "$REBUILD" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$STAMP_TEXT" ]; then
        make_root
    elif [ "$REFRESH" = 1 ] || [ -n "$(find "$STAMP" -mtime +6)" ]; then
        apt_upgrade
        touch "$STAMP"
    else
        say "reusing $1 in $ROOT (made or refreshed $(date -r "$STAMP" '+%F %T'))"
    fi
}

pkg_version() {
    in_root dpkg-query -W -f="\${Version}" "$1" 2>/dev/null || echo "not installed"
}

# ------------------------------------------------------------ the tests --

set_test_args() {
    local t
    test_args=()
    for t in "${TESTS[@]}"; do
        test_args+=(--test "$t")
    done
}

# read_test_exes PREFIX: cargo's --message-format=json on stdin, one JSON
# object a line; a test target's artifact names its executable. PREFIX is
# where the paths are, as this machine sees them ("" or the root).
read_test_exes() {
    local name exe t
    declare -gA EXE=()
    while read -r name exe; do
        EXE[$name]=$exe
    done < <(sed -n 's/.*"reason":"compiler-artifact".*"target":{"kind":\["test"\][^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p')
    for t in "${TESTS[@]}"; do
        if [ -z "${EXE[$t]:-}" ] || [ ! -x "$1${EXE[$t]}" ]; then
            die "no test executable found for $t"
        fi
    done
}

# root_ldd FILE MESSAGE: FILE is a path in the root.
root_ldd() {
    LIBS="$(in_root ldd "$1")" || die "ldd $1 failed in the root"
    if grep -q 'not found' <<<"$LIBS"; then
        printf '%s\n' "$LIBS" >&2
        die "$2"
    fi
}

pass_hsm_test_env() {
    local k x
    while IFS='=' read -r k _; do
        case "$k" in
            HSM_TEST_*) ;;
            *) continue ;;
        esac
        for x in "$@"; do
            [ "$k" = "$x" ] && continue 2
        done
        test_env+=("$k=${!k}")
    done < <(env)
}

run_test() {
    local t=$1
    shift
    in_root "${test_env[@]}" "$@" /usr/bin/env -C "$REPO" "${EXE[$t]}" \
        --test-threads="${TEST_THREADS:-4}" "${FILTER[@]}"
}

# A binary that ends without libtest's result line leaves RESULT empty.
tally_test_result() {
    local n m
    # No result line (a test binary that died) leaves RESULT empty, also
    # under set -e.
    RESULT="$(grep '^test result: ' "$1" | tail -n 1 || true)"
    n="$(sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p' <<<"$RESULT")"
    m="$(sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p' <<<"$RESULT")"
    PASSED=$((PASSED + ${n:-0}))
    FAILED=$((FAILED + ${m:-0}))
}

# save_test_dirs DEST: DEST made if need be; the directory's own mode and
# times are kept too (cp -a of "dir/.").
save_test_dirs() {
    mkdir -p "$1"
    cp -a "$ROOT/tmp/hsm-ssl-tests/." "$1/"
    rm -rf "${ROOT:?}/tmp/hsm-ssl-tests"
}

#!/usr/bin/env bash
# The docs sandbox: runs the shell blocks of one documentation page, in
# order, on a throwaway copy of this Debian machine shaped like the platform
# the page is written for (tests/docs_commands.rs, "doc-test: run KIND").
#
# tests/docs_commands.rs starts it, as root, as
#
#     unshare --mount --net --pid --fork --kill-child --mount-proc \
#         bash tests/docs_sandbox/sandbox.sh KIND STATE
#
# KIND is al2023 (setup-al2023.sh) or debian (setup-debian.sh). STATE is a
# directory of the test, seen inside the sandbox as /run/docs-sandbox:
#   blocks/NNN.sh                 the blocks, in order (written by the test),
#                                 each run by run-block.sh
#   out/NNN.{rc,stdout,stderr}    what each block did (written here)
#   setup.log                     what the setup printed
#   logs/                         httpd's logs, copied when the sandbox ends
#   upper/, work/                 the overlayfs layers: all the blocks wrote
# The environment names what to install: DOCS_SANDBOX_REPO (the checkout),
# DOCS_SANDBOX_MODULE and DOCS_SANDBOX_KEYTOOL (the module and the key tool
# as cargo built them), DOCS_SANDBOX_PIN (the token's user PIN) and
# DOCS_SANDBOX_HOST_MNTNS (the caller's mount namespace, see below).
#
# Exit code: 0 every block passed; 1 a block failed (its out/NNN.rc is not
# 0 and no later block ran); 2 the sandbox could not be set up (setup.log).
#
# Isolation: private mount, network and pid namespaces. /etc /opt /usr /var
# and /root are overlayfs mounts whose writes land in STATE/upper; /run,
# /tmp and /dev/shm are fresh tmpfs; the network is a loopback of its own
# (ports 80 and 443 are free, www.example.com is 127.0.0.1). This script is
# pid 1 of the namespace: when it exits the kernel kills whatever is left.
set -euo pipefail

kind=${1:?usage: sandbox.sh al2023|debian STATE}
state=${2:?usage: sandbox.sh al2023|debian STATE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Inside the sandbox the state directory is here (it may live under /tmp,
# which gets a tmpfs of its own).
S=/run/docs-sandbox
# A block that runs longer than this (seconds) fails.
BLOCK_TIMEOUT=${DOCS_SANDBOX_BLOCK_TIMEOUT:-300}

# Never touch the real machine: refuse to run outside a fresh mount and pid
# namespace (the overlays below would then cover the host's /etc).
if [ "$$" -ne 1 ] || [ "$(readlink /proc/self/ns/mnt)" = "${DOCS_SANDBOX_HOST_MNTNS:-}" ] || [ -z "${DOCS_SANDBOX_HOST_MNTNS:-}" ]; then
    echo "sandbox.sh: must run as pid 1 of new mount and pid namespaces (see the header)" >&2
    exit 2
fi
case "$kind" in
    al2023 | debian) ;;
    *)
        echo "sandbox.sh: unknown sandbox '$kind' (al2023 or debian)" >&2
        exit 2
        ;;
esac

# The mounts; afterwards /etc, /opt, /usr, /var, /root are copy-on-write.
mount_layers() {
    mount --make-rprivate /
    local d
    for d in etc opt usr var root; do
        mkdir -p "$state/upper/$d" "$state/work/$d"
        mount -t overlay "docs-sandbox-$d" -o "lowerdir=/$d,upperdir=$state/upper/$d,workdir=$state/work/$d" "/$d"
    done
    mount -t tmpfs -o mode=0755 docs-sandbox-run /run
    # What systemd-tmpfiles makes at boot (/var/lock is a link to it).
    install -d -m 1777 /run/lock
    mkdir -p "$S"
    mount --bind "$state" "$S"
    mount -t tmpfs -o mode=1777 docs-sandbox-shm /dev/shm
    # Check what was mounted before anything writes to /etc.
    for d in etc opt usr var root; do
        [ "$(findmnt -n -o FSTYPE "/$d")" = overlay ] || {
            echo "sandbox.sh: /$d is not an overlay mount" >&2
            return 1
        }
    done
    ip link set lo up
}

# httpd's pid file and log directory, per sandbox kind.
case "$kind" in
    al2023)
        pidfile=/run/httpd/httpd.pid
        logdir=/var/log/httpd
        ;;
    debian)
        pidfile=/run/apache2/apache2.pid
        logdir=/var/log/apache2
        ;;
esac

# At the end: stop httpd the way systemd would (SIGTERM to the master),
# keep its logs. The kernel kills the rest when this script exits.
# shellcheck disable=SC2317 # (called by the EXIT trap)
teardown() {
    local pid n
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
        for n in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            [ "$n" -lt 100 ] && sleep 0.1
        done
    fi
    mkdir -p "$S/logs"
    cp -a "$logdir/." "$S/logs/" 2>/dev/null || true
}

setup() {
    mount_layers
    # shellcheck source=tests/docs_sandbox/setup-al2023.sh
    . "$here/setup-$kind.sh"
    # The shims (sudo, systemctl, ...), first on PATH, and the block runner.
    mkdir -p "$S/bin"
    cp "$here"/bin/* "$S/bin/"
    chmod 0755 "$S"/bin/*
    cp "$here/run-block.sh" "$S/run-block.sh"
    # systemd loads the units at boot.
    DOCS_SANDBOX=$kind "$S/bin/systemctl" daemon-reload
    # Last, as it hides the test's directories if they are under /tmp.
    mount -t tmpfs -o mode=1777 docs-sandbox-tmp /tmp
}

trap teardown EXIT
# A subshell outside any "if" or "||", where errexit would be ignored.
set +e
(
    set -e
    setup
) >"$state/setup.log" 2>&1
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "sandbox.sh: setup failed (exit code $rc), see $state/setup.log" >&2
    exit 2
fi

# What a root login on the platform has, plus SOFTHSM2_CONF for the
# SoftHSM2 token standing in for the HSM. Nothing of the test's environment.
block_env=(
    HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM=dumb
    PATH="$S/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    SOFTHSM2_CONF=/etc/softhsm/softhsm2.conf
    DOCS_SANDBOX="$kind"
)

# One shell session, as the reader has: exported variables and the working
# directory carry over from block to block (run-block.sh). It starts in
# /root, or where the setup says (start-dir).
mkdir -p "$S/out"
start_dir=$(cat "$S/start-dir" 2>/dev/null || echo /root)
printf 'cd %q\n' "$start_dir" >"$S/shell.env"
for block in "$S"/blocks/*.sh; do
    [ -e "$block" ] || continue
    n=$(basename "$block" .sh)
    rc=0
    (cd /root && exec env -i "${block_env[@]}" timeout --kill-after=10 "$BLOCK_TIMEOUT" \
        bash -euo pipefail "$S/run-block.sh" "$block") </dev/null >"$S/out/$n.stdout" 2>"$S/out/$n.stderr" || rc=$?
    echo "$rc" >"$S/out/$n.rc"
    if [ "$rc" -ne 0 ]; then
        exit 1
    fi
    if [ -f "$S/shell.env.next" ]; then
        mv "$S/shell.env.next" "$S/shell.env"
    fi
done
exit 0

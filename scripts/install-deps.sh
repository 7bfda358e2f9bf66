#!/usr/bin/env bash
# Install everything the build and the tests of mod_hsm_ssl need on a fresh
# Debian 12 machine. Idempotent; run as root (CI and the dev machines are root).
#
# libengine-pkcs11-openssl (libp11's OpenSSL engine) is installed on purpose:
# mod_ssl auto-loads it for pkcs11: URIs when it is on disk, and the tests
# prove mod_hsm_ssl keeps the keys both with it and without it (they hide it
# with OPENSSL_ENGINES=<empty dir>).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: must run as root (apt-get install)" >&2
    exit 1
fi

PACKAGES=(
    apache2          # /usr/sbin/apache2 + mod_ssl + MPM modules used by the tests
    apache2-dev      # httpd/APR headers for bindgen, apxs
    softhsm2         # PKCS#11 token used by the tests (/usr/lib/softhsm/libsofthsm2.so)
    opensc           # pkcs11-tool (key generation, object listing)
    libengine-pkcs11-openssl  # libp11 engine: the "with engine" test case, and the benchmark's third setup
    valgrind         # callgrind: instruction counts in the benchmark (scripts/bench.sh)
    libssl-dev       # openssl-sys
    pkg-config
    clang            # bindgen
    libclang-dev     # bindgen
    curl
    openssl          # openssl s_client / x509 / req used by the test harness
    ca-certificates
    rpm              # rpmbuild, rpm: rpm/build.sh and tests/packaging_rpm.rs
    rpm2cpio         # extracting the built RPM in tests/packaging_rpm.rs
    cpio
    rpmlint          # lints the RPM (tests/packaging_rpm.rs)
    shellcheck       # rpm/build.sh must stay shellcheck clean
    python3-venv     # the venv that holds sslyze (below)
    lua-socket       # tests/key_service.rs: a mod_lua handler sends malformed requests to the key service
    prometheus       # tests/status.rs: promtool checks the metrics, a real Prometheus scrapes them
    iproute2         # tests/docs_commands.rs: ip link set lo up in the docs' sandboxes
    git              # tests/docs_commands.rs: the debian sandbox's checkout; rpm/build.sh
    debootstrap      # scripts/compat-debian13.sh: the Debian 13 root the tests run in
)

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# sslyze (PyPI), whose ROBOT check tests/rsa_kx.rs runs against the RSA
# key-exchange vhost: pinned, in a venv of Debian's python3 of its own so
# the system Python stays untouched; the tests look for it there.
SSLYZE_VERSION=6.3.1
VENV=/opt/mod_hsm_ssl-venv
if [ "$("$VENV/bin/pip" show sslyze 2>/dev/null | sed -n 's/^Version: //p')" != "$SSLYZE_VERSION" ]; then
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "sslyze==$SSLYZE_VERSION"
fi
"$VENV/bin/sslyze" --help >/dev/null

# Debian's apache2 package starts (and enables) the system apache2 on port 80.
# The tests start their own private instances and do not need it; leave it be,
# it does not conflict (tests bind 127.0.0.1 on free ephemeral ports).

if command -v cargo >/dev/null 2>&1; then
    echo "install-deps.sh: cargo found: $(cargo --version)"
    # scripts/test.sh checks formatting and clippy's lints.
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
else
    echo "install-deps.sh: WARNING: cargo is not on PATH; install a Rust toolchain (>= 1.77) before building" >&2
fi
echo "install-deps.sh: done"

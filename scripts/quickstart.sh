#!/usr/bin/env bash
# mod_hsm_ssl quickstart: HTTPS on https://localhost:8443/ with a private key
# that is generated inside a (SoftHSM2) PKCS#11 token and never leaves it.
#
#     sudo bash scripts/quickstart.sh
#
# On a fresh Debian 12, as root, this
#   1. installs the dependencies (scripts/install-deps.sh; SKIP_DEPS=1 skips
#      that, as scripts/test.sh does) and builds the
#      module (cargo build --release),
#   2. creates a SoftHSM2 token "quickstart" in $BASE/tokens with a random
#      user PIN (stored in the 0600 file $BASE/pin),
#   3. generates an RSA-2048 key pair inside the token,
#   4. issues a certificate for that key from a throwaway local CA,
#   5. writes a self-contained apache2 configuration under $BASE/httpd and
#      starts apache2 on 127.0.0.1:8443 (the system apache2 is not touched),
#   6. checks that https://localhost:8443/ answers 200.
#
# Re-running it stops the quickstart server and recreates everything (new
# token, new key, new PIN, new CA).
set -euo pipefail

BASE=/var/lib/mod_hsm_ssl-quickstart
TOKENS="$BASE/tokens"
PKI="$BASE/pki"
HTTPD="$BASE/httpd"
CONF="$HTTPD/httpd.conf"
PIDFILE="$HTTPD/run/httpd.pid"
ERROR_LOG="$HTTPD/logs/error.log"
SOFTHSM_CONF="$BASE/softhsm2.conf"
PIN_FILE="$BASE/pin"
P11LIB=/usr/lib/softhsm/libsofthsm2.so
APACHE=/usr/sbin/apache2
MODULES=/usr/lib/apache2/modules
PORT=8443
TOKEN_LABEL=quickstart
KEY_LABEL=www-rsa
KEY_URI="pkcs11:token=$TOKEN_LABEL;object=$KEY_LABEL"
RUN_USER=www-data

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: sudo bash scripts/quickstart.sh"

# ---------------------------------------------------------------------------
if [ "${SKIP_DEPS:-0}" = 1 ]; then
    say "SKIP_DEPS=1: not installing dependencies"
else
    say "installing dependencies (scripts/install-deps.sh)"
    bash "$REPO/scripts/install-deps.sh"
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if [ -x "$d/cargo" ]; then PATH="$d:$PATH"; export PATH; break; fi
    done
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install a Rust toolchain (rustup, Rust 1.77 or newer) for root, then re-run"

say "building the module (cargo build --release)"
(cd "$REPO" && cargo build --release)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
MODULE="$TARGET_DIR/release/libmod_hsm_ssl.so"
[ -f "$MODULE" ] || die "cargo build --release did not produce $MODULE"

# ---------------------------------------------------------------------------
# Stop a quickstart server left from an earlier run. Only the process named
# in our own PidFile is touched.
master_alive() {
    local pid="$1"
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    # A zombie (state Z) has exited already.
    local state
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
    [ "$state" != Z ] || return 1
    # Make sure it is our apache2, not a recycled pid.
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"
}

stop_previous() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid="$(tr -dc '0-9' < "$PIDFILE")"
    master_alive "$pid" || return 0
    say "stopping the running quickstart server (pid $pid)"
    SOFTHSM2_CONF="$SOFTHSM_CONF" "$APACHE" -d "$HTTPD" -f "$CONF" -k stop || true
    for _ in $(seq 1 50); do
        master_alive "$pid" || return 0
        sleep 0.2
    done
    echo "apache2 -k stop did not stop pid $pid; sending SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        master_alive "$pid" || return 0
        sleep 0.2
    done
    die "the previous quickstart server (pid $pid) does not stop; stop it and re-run"
}
stop_previous

if ss -Hltn "sport = :$PORT" | grep -q .; then
    ss -ltnp "sport = :$PORT" >&2 || true
    die "port $PORT is in use by another program (above); free it and re-run"
fi

say "recreating $BASE"
rm -rf "$BASE"
install -d -m 0755 "$BASE" "$PKI" "$HTTPD" "$HTTPD/run" "$HTTPD/logs" "$HTTPD/htdocs"
install -d -m 0700 "$TOKENS"

# ---------------------------------------------------------------------------
say "creating SoftHSM2 token '$TOKEN_LABEL' in $TOKENS"
cat > "$SOFTHSM_CONF" <<EOF
# SoftHSM2 configuration of the mod_hsm_ssl quickstart
directories.tokendir = $TOKENS
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
chmod 0644 "$SOFTHSM_CONF"
export SOFTHSM2_CONF="$SOFTHSM_CONF"

PIN="$(openssl rand -hex 16)"
SO_PIN="$(openssl rand -hex 16)"   # not kept: nobody administers this token
(umask 077 && printf '%s\n' "$PIN" > "$PIN_FILE")
chmod 0600 "$PIN_FILE"
chown root:root "$PIN_FILE"

softhsm2-util --init-token --free --label "$TOKEN_LABEL" --so-pin "$SO_PIN" --pin "$PIN"
unset SO_PIN

p11() { pkcs11-tool --module "$P11LIB" --token-label "$TOKEN_LABEL" "$@"; }

say "generating an RSA-2048 key pair inside the token"
p11 --login --pin "$PIN" --keypairgen --key-type rsa:2048 \
    --label "$KEY_LABEL" --id 01 --usage-sign --usage-decrypt --sensitive

say "exporting the public key"
p11 --read-object --type pubkey --label "$KEY_LABEL" -o "$PKI/pub.der"
openssl pkey -pubin -inform DER -in "$PKI/pub.der" -out "$PKI/pub.pem"

# ---------------------------------------------------------------------------
say "issuing a certificate for the token key from a throwaway local CA"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -subj "/CN=mod_hsm_ssl quickstart CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
# openssl x509 -req needs a CSR; this one is signed by a throwaway software
# key, and -force_pubkey puts the token's public key into the certificate.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$PKI/throwaway.key" -out "$PKI/throwaway.csr" 2>/dev/null
cat > "$PKI/server.ext" <<EOF
subjectAltName = DNS:localhost
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
EOF
openssl x509 -req -in "$PKI/throwaway.csr" -force_pubkey "$PKI/pub.pem" \
    -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -sha256 -days 30 \
    -extfile "$PKI/server.ext" -out "$PKI/server.crt" 2>/dev/null
# Nothing else may be signed by this CA, and the throwaway key is unused.
rm -f "$PKI/ca.key" "$PKI/ca.srl" "$PKI/throwaway.key" "$PKI/throwaway.csr" "$PKI/server.ext"
cmp -s <(openssl x509 -in "$PKI/server.crt" -noout -pubkey) "$PKI/pub.pem" \
    || die "the certificate does not carry the token's public key"
chmod 0644 "$PKI"/*

# apache2 children run as www-data and open the token files themselves.
chown -R "$RUN_USER:$RUN_USER" "$TOKENS"

# ---------------------------------------------------------------------------
say "writing the apache2 configuration $CONF"
cat > "$HTTPD/htdocs/index.html" <<EOF
<!doctype html>
<title>mod_hsm_ssl quickstart</title>
<p>This page came over TLS signed by key <code>$KEY_URI</code>, inside a PKCS#11 token.</p>
EOF
chmod 0644 "$HTTPD/htdocs/index.html"

cat > "$CONF" <<EOF
# mod_hsm_ssl quickstart, written by scripts/quickstart.sh. Self-contained:
# it does not read /etc/apache2.
ServerRoot "$HTTPD"
DefaultRuntimeDir "$HTTPD/run"
PidFile "$PIDFILE"
Mutex file:$HTTPD/run default
ErrorLog "$ERROR_LOG"
LogLevel warn ssl:info hsm_ssl:info
# LogLevel warn ssl:info hsm_ssl:debug   # more detail from mod_hsm_ssl

LoadModule mpm_event_module $MODULES/mod_mpm_event.so
LoadModule authz_core_module $MODULES/mod_authz_core.so
LoadModule mime_module $MODULES/mod_mime.so
LoadModule dir_module $MODULES/mod_dir.so
LoadModule socache_shmcb_module $MODULES/mod_socache_shmcb.so
LoadModule ssl_module $MODULES/mod_ssl.so
# After mod_ssl:
LoadModule hsm_ssl_module $MODULE

User $RUN_USER
Group $RUN_USER
ServerName localhost
Listen 127.0.0.1:$PORT

TypesConfig /etc/mime.types
DocumentRoot "$HTTPD/htdocs"
DirectoryIndex index.html
<Directory />
    Require all denied
</Directory>
<Directory "$HTTPD/htdocs">
    Require all granted
</Directory>
CustomLog "$HTTPD/logs/access.log" "%h %t \"%r\" %>s %b %{SSL_PROTOCOL}x %{SSL_CIPHER}x"

# mod_hsm_ssl: the PKCS#11 library and where the token user PIN comes from.
HSMSSLLibrary $P11LIB
HSMSSLPin file:$PIN_FILE

# A resumed TLS session costs no token operation.
SSLSessionCache shmcb:$HTTPD/run/ssl_scache(512000)

<VirtualHost 127.0.0.1:$PORT>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile "$PKI/server.crt"
    SSLCertificateKeyFile "$KEY_URI"
</VirtualHost>
EOF
chmod 0644 "$CONF"

# ---------------------------------------------------------------------------
say "starting apache2 on 127.0.0.1:$PORT"
if ! env SOFTHSM2_CONF="$SOFTHSM_CONF" "$APACHE" -d "$HTTPD" -f "$CONF" -k start; then
    echo "--- $ERROR_LOG ---" >&2
    tail -n 30 "$ERROR_LOG" >&2 2>/dev/null || true
    die "apache2 did not start (see above)"
fi

CURL=(curl --silent --show-error --cacert "$PKI/ca.crt" -o /dev/null -w '%{http_code}' "https://localhost:$PORT/")
code=000
for _ in $(seq 1 50); do
    code="$("${CURL[@]}" 2>/dev/null || true)"
    [ "$code" = 200 ] && break
    sleep 0.2
done
if [ "$code" != 200 ]; then
    echo "--- curl ---" >&2
    "${CURL[@]}" >&2 || true
    echo >&2
    echo "--- $ERROR_LOG ---" >&2
    tail -n 30 "$ERROR_LOG" >&2 2>/dev/null || true
    die "https://localhost:$PORT/ did not answer 200 (got $code)"
fi
say "https://localhost:$PORT/ answers 200"
grep -F "[hsm_ssl:info]" "$ERROR_LOG" | tail -n 1 || true

# A few more requests, so that several apache2 children (each sending its
# key operations to the key service) have served one.
failed=0
for _ in $(seq 1 12); do
    code="$("${CURL[@]}" 2>/dev/null || true)"
    [ "$code" = 200 ] || failed=$((failed + 1))
done

cat <<EOF

mod_hsm_ssl quickstart is running: apache2 on https://localhost:$PORT/ with
the private key '$KEY_LABEL' inside the SoftHSM2 token '$TOKEN_LABEL'.

Try it:
  curl --cacert $PKI/ca.crt https://localhost:$PORT/
  openssl s_client -connect 127.0.0.1:$PORT -servername localhost \\
      -CAfile $PKI/ca.crt -brief </dev/null
  openssl s_client -connect 127.0.0.1:$PORT -servername localhost \\
      -CAfile $PKI/ca.crt -brief -tls1_2 -cipher AES128-GCM-SHA256 </dev/null
      (TLS 1.2 RSA key exchange: the premaster secret is decrypted in the token)

See that the private key is in the token and cannot be read out:
  SOFTHSM2_CONF=$SOFTHSM_CONF pkcs11-tool --module $P11LIB \\
      --token-label $TOKEN_LABEL --login --pin "\$(cat $PIN_FILE)" --list-objects

Files:
  configuration  $CONF
  error log      $ERROR_LOG
  certificate    $PKI/server.crt (CA: $PKI/ca.crt)
  token          $TOKENS (SOFTHSM2_CONF=$SOFTHSM_CONF)
  user PIN       $PIN_FILE

Stop it:
  $APACHE -d $HTTPD -f $CONF -k stop
Start it again:
  SOFTHSM2_CONF=$SOFTHSM_CONF $APACHE -d $HTTPD -f $CONF -k start
Remove it (after stopping): rm -rf $BASE
EOF

if [ "$failed" -ne 0 ]; then
    {
        echo
        echo "WARNING: $failed of 12 further requests to https://localhost:$PORT/ failed."
        echo "The server is running, but not every apache2 child can use the token."
        echo "mod_hsm_ssl errors from $ERROR_LOG:"
        grep -F -e "[hsm_ssl:error]" -e "[hsm_ssl:warn]" "$ERROR_LOG" | tail -n 10 || true
    } >&2
    exit 1
fi

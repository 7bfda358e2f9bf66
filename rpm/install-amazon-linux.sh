#!/usr/bin/env bash
# Install and set up mod_hsm_ssl with AWS CloudHSM on Amazon Linux 2023.
# Safe to run again: every step checks what is already there.
#
#   sudo bash rpm/install-amazon-linux.sh ./mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm \
#        [--generate LABEL --type rsa:2048 --subject CN=www.example.com]
#
# See --help. The crypto-user PIN is asked for without echo (or read from
# stdin when stdin is not a terminal) and is never printed.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install-amazon-linux.sh [options] [mod_hsm_ssl-*.rpm]

Sets up mod_hsm_ssl with AWS CloudHSM on Amazon Linux 2023, as root:
  1. dnf install httpd mod_ssl
  2. check the CloudHSM PKCS#11 client (Client SDK 5)
  3. dnf install the mod_hsm_ssl RPM given as argument
  4. ask for the crypto-user PIN (user:password, no echo) and store it in
     /etc/httpd/hsm-ssl/hsm-ssl-pin (mode 0600, directory 0700), which the
     RPM's systemd drop-in hands to httpd as a credential (LoadCredential=);
     httpd reads it with HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin
  5. optionally create or import a key in the HSM, get a certificate for it
     (self-signed, or your own with --cert; --csr also writes a request for a
     CA), write the global HSMSSL* lines to /etc/httpd/conf.d/hsm_ssl.conf
     (unless a file already sets HSMSSLLibrary) and the vhost to
     /etc/httpd/conf.d/hsm_ssl-vhost.conf
  6. apachectl configtest, systemctl restart httpd, curl -k https://NAME/

Options:
  --generate LABEL     make a new key pair in the HSM with this label
  --type TYPE          key type for --generate: rsa:2048 (default), rsa:3072,
                       rsa:4096, ec:P-256, ec:P-384
  --import LABEL       put an existing PEM private key into the HSM ...
  --key FILE           ... read from FILE (remove FILE afterwards: shred -u)
  --passphrase SOURCE  for an encrypted --key: env:VAR, file:/path, exec:/prog
  --subject DN         certificate subject, e.g. CN=www.example.com,O=Example
  --san LIST           e.g. DNS:www.example.com,DNS:example.com
  --days N             validity of the self-signed certificate (default 365)
  --cert FILE          use this certificate (issued for the key) instead of
                       making a self-signed one
  --csr FILE           also write a certificate request for your CA to FILE
  --server-name NAME   ServerName of the vhost and the name curl checks
                       (default: the certificate's CN)
  --new-pin            ask for the PIN even if /etc/httpd/hsm-ssl/hsm-ssl-pin has one
  --dry-run            print every action, change nothing, ask nothing
  -h, --help           this text

Environment (for tests and unusual layouts):
  CLOUDHSM_PKCS11_LIB  the PKCS#11 library
                       (default /opt/cloudhsm/lib/libcloudhsm_pkcs11.so)
  HSM_SSL_ROOT         prefix for every /etc path (and the systemd unit
                       directories) this script reads or writes
EOF
}

# --- options ----------------------------------------------------------------
DRY_RUN=0
RPM_FILE=""
MODE=""            # generate | import | ""
LABEL=""
KEY_TYPE="rsa:2048"
KEY_FILE=""
PASSPHRASE=""
SUBJECT=""
SAN=""
DAYS=365
CERT_IN=""
CSR_OUT=""
SERVER_NAME=""
NEW_PIN=0

need_arg() {
    [ "$2" -ge 2 ] || { echo "install-amazon-linux.sh: $1 needs a value (see --help)" >&2; exit 1; }
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --new-pin) NEW_PIN=1 ;;
        --generate) need_arg "$1" $#; MODE=generate; LABEL=$2; shift ;;
        --import) need_arg "$1" $#; MODE=import; LABEL=$2; shift ;;
        --type) need_arg "$1" $#; KEY_TYPE=$2; shift ;;
        --key) need_arg "$1" $#; KEY_FILE=$2; shift ;;
        --passphrase) need_arg "$1" $#; PASSPHRASE=$2; shift ;;
        --subject) need_arg "$1" $#; SUBJECT=$2; shift ;;
        --san) need_arg "$1" $#; SAN=$2; shift ;;
        --days) need_arg "$1" $#; DAYS=$2; shift ;;
        --cert) need_arg "$1" $#; CERT_IN=$2; shift ;;
        --csr) need_arg "$1" $#; CSR_OUT=$2; shift ;;
        --server-name) need_arg "$1" $#; SERVER_NAME=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install-amazon-linux.sh: unknown option '$1' (see --help)" >&2; exit 1 ;;
        *)
            [ -z "$RPM_FILE" ] || { echo "install-amazon-linux.sh: only one RPM file, got '$RPM_FILE' and '$1'" >&2; exit 1; }
            RPM_FILE=$1 ;;
    esac
    shift
done

ROOT=${HSM_SSL_ROOT:-}
PKCS11_LIB=${CLOUDHSM_PKCS11_LIB:-/opt/cloudhsm/lib/libcloudhsm_pkcs11.so}
# The PIN file systemd hands to httpd.service as the credential hsm-ssl-pin
# (LoadCredential= in the RPM's drop-in). Its directory doubles as a
# credentials directory for checks run from a shell (configtest).
CRED_DIR_SYS=/etc/httpd/hsm-ssl
CRED_DIR="$ROOT$CRED_DIR_SYS"
PIN_FILE="$CRED_DIR/hsm-ssl-pin"
LOAD_CREDENTIAL="LoadCredential=hsm-ssl-pin:$CRED_DIR_SYS/hsm-ssl-pin"
# shellcheck disable=SC2016 # httpd expands it, from systemd's environment
PIN_LINE='HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin'
# Where earlier versions of this script kept the PIN (HSMSSLPin env:).
LEGACY_PIN_FILE="$ROOT/etc/sysconfig/httpd-hsm-ssl"
VHOST_FILE="$ROOT/etc/httpd/conf.d/hsm_ssl-vhost.conf"
# The one place for the global HSMSSL* lines (the RPM ships its example).
GLOBAL_FILE="$ROOT/etc/httpd/conf.d/hsm_ssl.conf"
CERT_DIR="$ROOT/etc/pki/tls/certs"
MODULE_DIR="$ROOT/etc/httpd/conf.modules.d"
KEYTOOL=hsm-ssl-keytool
PIN=""

STEP=0
step() {
    STEP=$((STEP + 1))
    echo
    echo "==> [$STEP] $*"
}

note() { echo "    $*"; }

# die MESSAGE WHAT-TO-DO
die() {
    echo "install-amazon-linux.sh: error: $1" >&2
    [ -n "${2:-}" ] && echo "install-amazon-linux.sh: what to do: $2" >&2
    exit 1
}

# run CMD ARGS...: print the command, run it unless --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: $*"
    else
        echo "    running: $*"
        "$@"
    fi
}

# run_cred CMD ARGS...: like run, with CREDENTIALS_DIRECTORY pointing at the
# PIN file's directory, as systemd does for httpd.service.
run_cred() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: CREDENTIALS_DIRECTORY=$CRED_DIR $*"
    else
        echo "    running: CREDENTIALS_DIRECTORY=$CRED_DIR $*"
        CREDENTIALS_DIRECTORY=$CRED_DIR "$@"
    fi
}

# write_file PATH MODE < content: atomically, unless --dry-run.
write_file() {
    local path=$1 mode=$2 tmp
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would write $path (mode $mode):"
        sed 's/^/      | /'
        return 0
    fi
    install -d -m 0755 "$(dirname "$path")"
    tmp=$(mktemp "$path.XXXXXX") || die "cannot create a file next to $path" "check that $(dirname "$path") is writable (run as root)"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    echo "    wrote $path (mode $mode)"
}

# --- checks on the arguments ------------------------------------------------
if [ -n "$MODE" ]; then
    case "$KEY_TYPE" in
        rsa:2048|rsa:3072|rsa:4096|ec:P-256|ec:P-384) ;;
        *) die "--type $KEY_TYPE is not supported" "use rsa:2048, rsa:3072, rsa:4096, ec:P-256 or ec:P-384" ;;
    esac
    [ -n "$LABEL" ] || die "the key label is empty" "give --generate LABEL or --import LABEL"
    if [ "$MODE" = import ]; then
        [ -n "$KEY_FILE" ] || die "--import needs --key FILE" "give the PEM private key with --key"
        [ -f "$KEY_FILE" ] || die "--key $KEY_FILE does not exist" "give the path of the PEM private key"
    fi
    if [ -z "$CERT_IN" ] && [ -z "$SUBJECT" ]; then
        die "no certificate: give --subject (for a self-signed certificate) or --cert FILE" \
            "e.g. --subject CN=www.example.com, or --cert /path/to/the/certificate.crt"
    fi
    if [ -n "$CERT_IN" ] && [ ! -f "$CERT_IN" ]; then
        die "--cert $CERT_IN does not exist" "give the certificate issued for the key"
    fi
    case "$DAYS" in
        ''|*[!0-9]*) die "--days $DAYS is not a number" "give the validity in days, 1 to 36500" ;;
    esac
elif [ -n "$SUBJECT$CERT_IN$CSR_OUT$KEY_FILE" ]; then
    die "--subject, --cert, --csr and --key go with --generate LABEL or --import LABEL" "add --generate LABEL or --import LABEL"
fi
[ -z "$RPM_FILE" ] || [ -f "$RPM_FILE" ] || die "the RPM $RPM_FILE does not exist" "give the path of mod_hsm_ssl-*.rpm (build it with rpm/ or download it)"

# The name curl checks: --server-name, else the subject's CN (else, after
# the vhost is written, its ServerName; else localhost).
CN_NAME=""
case ",$SUBJECT" in
    *,CN=*) CN_NAME=${SUBJECT#*CN=}; CN_NAME=${CN_NAME%%,*} ;;
esac

[ "$DRY_RUN" = 1 ] && echo "install-amazon-linux.sh: dry run: nothing is installed, written, asked or started"

# --- 1. system ----------------------------------------------------------------
step "checking the system (root, Amazon Linux 2023)"
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "not running as root" "run it as root (sudo bash $0 ...), or add --dry-run to see what it would do"
fi
if [ -r /etc/os-release ] && grep -q '^ID="\?amzn' /etc/os-release; then
    note "Amazon Linux: $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')"
else
    note "warning: this is not Amazon Linux; the steps assume Amazon Linux 2023 (dnf, httpd, /etc/httpd)"
fi

# --- 2. httpd and mod_ssl -------------------------------------------------------
step "installing httpd and mod_ssl with dnf (nothing to do if already installed)"
run dnf install -y httpd mod_ssl || die "dnf install httpd mod_ssl failed" "read dnf's output above; check the network and the repositories (dnf repolist)"

# --- 3. CloudHSM PKCS#11 client -------------------------------------------------
step "checking the CloudHSM PKCS#11 client library $PKCS11_LIB"
CLOUDHSM_HELP="install the AWS CloudHSM Client SDK 5 PKCS#11 library:
    sudo dnf install -y ./cloudhsm-pkcs11-latest.amzn2023.\$(uname -m).rpm   (download it from AWS)
  put the cluster's issuing certificate in /opt/cloudhsm/etc/customerCA.crt, then point it at an HSM:
    sudo /opt/cloudhsm/bin/configure-pkcs11 -a <HSM IP>
  (a cluster with a single HSM also needs: sudo /opt/cloudhsm/bin/configure-pkcs11 --disable-key-availability-check)
  then run this script again"
if [ -f "$PKCS11_LIB" ]; then
    note "found $PKCS11_LIB"
    CFG="$(dirname "$(dirname "$PKCS11_LIB")")/etc/cloudhsm-pkcs11.cfg"
    if [ -f "$CFG" ]; then
        note "configuration: $CFG"
    else
        note "warning: $CFG not found; if the library is not configured yet, run: sudo /opt/cloudhsm/bin/configure-pkcs11 -a <HSM IP>"
    fi
elif [ "$DRY_RUN" = 1 ]; then
    note "[dry-run] $PKCS11_LIB is missing; a real run stops here. To fix it:"
    printf '%s\n' "$CLOUDHSM_HELP" | while IFS= read -r l; do echo "    $l"; done
else
    die "the CloudHSM PKCS#11 library $PKCS11_LIB is missing" "$CLOUDHSM_HELP"
fi

# --- 4. the mod_hsm_ssl RPM -----------------------------------------------------
step "installing the mod_hsm_ssl RPM"
if [ -n "$RPM_FILE" ]; then
    case "$RPM_FILE" in
        /*) RPM_PATH=$RPM_FILE ;;
        *) RPM_PATH="./$RPM_FILE" ;;   # dnf takes ./file as a local file
    esac
    run dnf install -y "$RPM_PATH" || die "dnf install $RPM_PATH failed" "read dnf's output above (a missing dependency? another version installed: dnf downgrade/upgrade)"
else
    note "no RPM given: assuming mod_hsm_ssl is already installed"
    if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && ! ls /etc/httpd/conf.modules.d/*hsm_ssl* >/dev/null 2>&1; then
        die "no RPM given and no /etc/httpd/conf.modules.d/*hsm_ssl* found" "give the RPM file: $0 ./mod_hsm_ssl-*.rpm"
    fi
fi

# --- 5. the PIN -------------------------------------------------------------------
step "storing the crypto-user PIN in $PIN_FILE (mode 0600, directory 0700)"
existing_pin() {
    head -n 1 "$PIN_FILE" 2>/dev/null || true
}
legacy_pin() {
    # The value of the CLOUDHSM_PIN= line, without surrounding single quotes.
    sed -n "s/^CLOUDHSM_PIN=//p" "$LEGACY_PIN_FILE" 2>/dev/null | tail -n 1 | sed "s/^'\(.*\)'\$/\1/"
}
if [ "$DRY_RUN" = 1 ]; then
    note "[dry-run] would ask for the PIN (user:password) without echo, or reuse the one in $PIN_FILE"
    note "[dry-run] would write the PIN (hidden) to $PIN_FILE, mode 0600, owner root"
else
    WRITE_PIN=1
    if [ "$NEW_PIN" = 0 ] && [ -n "$(existing_pin)" ]; then
        WRITE_PIN=0
        note "$PIN_FILE already has a PIN: keeping it (--new-pin to replace it)"
    elif [ "$NEW_PIN" = 0 ] && [ -n "$(legacy_pin)" ]; then
        PIN=$(legacy_pin)
        note "taking the PIN from CLOUDHSM_PIN in $LEGACY_PIN_FILE; remove that line once httpd uses $PIN_LINE"
    else
        if [ -t 0 ]; then
            read -rs -p "CloudHSM crypto-user PIN (user:password): " PIN; echo >&2
            read -rs -p "The same again: " PIN2; echo >&2
            [ "$PIN" = "$PIN2" ] || die "the two PINs differ" "run the script again"
            unset PIN2
        else
            note "stdin is not a terminal: reading the PIN from its first line"
            IFS= read -r PIN || [ -n "$PIN" ] || die "no PIN on stdin" "pipe the PIN in (printf '%s\n' 'user:password' | ...) or run on a terminal"
        fi
        PIN=${PIN%$'\r'}
        [ -n "$PIN" ] || die "the PIN is empty" "give the crypto user's PIN as user:password"
        case "$PIN" in
            *:*) ;;
            *) note "warning: the PIN has no ':'; CloudHSM PINs are <crypto-user-name>:<password>" ;;
        esac
    fi
    if [ "$WRITE_PIN" = 1 ]; then
        # mod_hsm_ssl refuses a PIN file others can read or replace: root
        # owns the file (0600) and its directory (0700).
        install -d -m 0700 "$CRED_DIR"
        [ "$(id -u)" != 0 ] || chown 0:0 "$CRED_DIR"
        TMP_PIN=$(umask 077 && mktemp "$PIN_FILE.XXXXXX") || die "cannot create a file in $CRED_DIR" "check that it is writable (run as root)"
        printf '%s\n' "$PIN" >"$TMP_PIN"
        chmod 0600 "$TMP_PIN"
        [ "$(id -u)" != 0 ] || chown 0:0 "$TMP_PIN"
        mv -f "$TMP_PIN" "$PIN_FILE"
        note "wrote $PIN_FILE (mode 0600); the PIN is not shown"
    fi
    PIN=""
fi

step "checking that httpd's systemd unit hands $PIN_FILE to httpd ($LOAD_CREDENTIAL)"
DROPIN_FOUND=""
for d in "$ROOT/etc/systemd/system/httpd.service.d" "$ROOT/usr/lib/systemd/system/httpd.service.d"; do
    if grep -qsF "$LOAD_CREDENTIAL" "$d"/*.conf; then
        DROPIN_FOUND=$d
    fi
done
if [ -n "$DROPIN_FOUND" ]; then
    note "a drop-in in $DROPIN_FOUND has $LOAD_CREDENTIAL (from the RPM)"
else
    note "no drop-in with $LOAD_CREDENTIAL found: writing one"
    printf '[Service]\n%s\n' "$LOAD_CREDENTIAL" \
        | write_file "$ROOT/etc/systemd/system/httpd.service.d/hsm_ssl.conf" 0644
fi

# --- 6. key, certificate, vhost ---------------------------------------------------
KT_OPTS=(--library "$PKCS11_LIB" --pin "file:$PIN_FILE")
if [ -n "$MODE" ]; then
    if [ "$DRY_RUN" = 0 ]; then
        command -v "$KEYTOOL" >/dev/null 2>&1 || die "$KEYTOOL not found in PATH" "the mod_hsm_ssl RPM installs it; check 'rpm -ql mod_hsm_ssl'"
    fi

    step "looking for a key labelled '$LABEL' in the HSM"
    HAVE_KEY=0
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: $KEYTOOL list --json ${KT_OPTS[*]}"
    else
        echo "    running: $KEYTOOL list --json ${KT_OPTS[*]}"
        LIST=$("$KEYTOOL" list --json "${KT_OPTS[@]}") \
            || die "$KEYTOOL list failed (see its message above)" "check the PIN ($PIN_FILE, --new-pin), that the HSM is reachable (configure-pkcs11 -a <HSM IP>, security groups) and the library's log"
        case "$LIST" in
            *"\"label\":\"$LABEL\""*) HAVE_KEY=1 ;;
        esac
    fi

    if [ "$MODE" = generate ]; then
        step "generating the key pair '$LABEL' ($KEY_TYPE) inside the HSM"
        if [ "$HAVE_KEY" = 1 ]; then
            note "the HSM already has a key labelled '$LABEL': keeping it"
        else
            run "$KEYTOOL" generate "${KT_OPTS[@]}" --label "$LABEL" --type "$KEY_TYPE" \
                || die "key generation failed (see the message above)" "check the PIN and that the crypto user may create keys; exit code 3 means the label is taken"
        fi
    else
        step "importing $KEY_FILE into the HSM as '$LABEL'"
        if [ "$HAVE_KEY" = 1 ]; then
            note "the HSM already has a key labelled '$LABEL': keeping it, not importing"
        else
            IMPORT_OPTS=()
            [ -z "$PASSPHRASE" ] || IMPORT_OPTS=(--passphrase "$PASSPHRASE")
            run "$KEYTOOL" import "${KT_OPTS[@]}" --label "$LABEL" --key "$KEY_FILE" "${IMPORT_OPTS[@]}" \
                || die "the import failed (see the message above)" "check the key file, its passphrase (--passphrase) and the PIN"
            note "remove the key file for good once the site works: shred -u $KEY_FILE"
        fi
    fi

    if [ -n "$CERT_IN" ]; then
        CERT=$CERT_IN
        step "using the certificate $CERT"
    else
        CERT="$CERT_DIR/$LABEL.crt"
        step "making a self-signed certificate $CERT for '$LABEL', signed in the HSM"
        if [ -f "$CERT" ]; then
            note "$CERT exists: keeping it (the vhost step checks that it belongs to the key)"
        else
            run install -d -m 0755 "$CERT_DIR"
            SAN_OPTS=()
            [ -z "$SAN" ] || SAN_OPTS=(--san "$SAN")
            run "$KEYTOOL" selfsign "${KT_OPTS[@]}" --label "$LABEL" --subject "$SUBJECT" \
                "${SAN_OPTS[@]}" --days "$DAYS" --out "$CERT" \
                || die "selfsign failed (see the message above)" "check --subject (e.g. CN=www.example.com) and --san"
            note "browsers do not trust it: for production use --csr, send the request to your CA, and run again with --cert"
        fi
    fi

    if [ -n "$CSR_OUT" ]; then
        step "writing a certificate request for '$LABEL' to $CSR_OUT"
        [ -n "$SUBJECT" ] || die "--csr needs --subject" "add --subject CN=..."
        SAN_OPTS=()
        [ -z "$SAN" ] || SAN_OPTS=(--san "$SAN")
        run "$KEYTOOL" csr "${KT_OPTS[@]}" --label "$LABEL" --subject "$SUBJECT" "${SAN_OPTS[@]}" --out "$CSR_OUT" \
            || die "csr failed (see the message above)" "check --subject and --san"
    fi

    step "writing the vhost $VHOST_FILE from '$KEYTOOL config'"
    NAME_OPTS=()
    [ -z "$SERVER_NAME" ] || NAME_OPTS=(--server-name "$SERVER_NAME")
    # The HSMSSL* lines belong in the main configuration once: they go to
    # $GLOBAL_FILE unless another file already sets HSMSSLLibrary.
    GLOBAL_SET=""
    for f in "$ROOT"/etc/httpd/conf/httpd.conf "$MODULE_DIR"/*.conf "$ROOT"/etc/httpd/conf.d/*.conf; do
        if [ ! -f "$f" ] || [ "$f" = "$VHOST_FILE" ]; then continue; fi
        if grep -Eq '^[[:space:]]*HSMSSLLibrary[[:space:]]' "$f"; then
            GLOBAL_SET=$f
        fi
    done
    if [ "$DRY_RUN" = 1 ]; then
        echo "    [dry-run] would run: $KEYTOOL config ${KT_OPTS[*]} --label $LABEL --cert $CERT ${NAME_OPTS[*]}"
        echo "    [dry-run] would write its HSMSSL* lines, with $PIN_LINE, to $GLOBAL_FILE (unless a file sets HSMSSLLibrary) and its vhost to $VHOST_FILE (mode 0644)"
    else
        echo "    running: $KEYTOOL config ${KT_OPTS[*]} --label $LABEL --cert $CERT ${NAME_OPTS[*]}"
        VHOST=$("$KEYTOOL" config "${KT_OPTS[@]}" --label "$LABEL" --cert "$CERT" "${NAME_OPTS[@]}") \
            || die "$KEYTOOL config failed (see the message above)" "exit code 4 means the certificate does not belong to the key: give the certificate issued for '$LABEL' (--cert)"
        # httpd reads the PIN from the credential systemd hands it, not
        # from the file the key tool was given.
        VHOST=$(printf '%s\n' "$VHOST" | awk -v line="$PIN_LINE" '$1 == "HSMSSLPin" { print line; next } { print }')
        if [ -n "$GLOBAL_SET" ]; then
            note "HSMSSLLibrary is already set in $GLOBAL_SET: keeping it"
        else
            {
                echo "# Written by mod_hsm_ssl's install-amazon-linux.sh: the module's global settings"
                echo "# (docs: /usr/share/mod_hsm_ssl/docs/directives.md; example: hsm_ssl.conf.example)."
                printf '%s\n' "$VHOST" | grep -E '^[[:space:]]*HSMSSL'
            } | write_file "$GLOBAL_FILE" 0644
        fi
        VHOST=$(printf '%s\n' "$VHOST" | grep -Ev '^[[:space:]]*HSMSSL')
        {
            echo "# Written by mod_hsm_ssl's install-amazon-linux.sh from 'hsm-ssl-keytool config'."
            printf '%s\n' "$VHOST"
        } | write_file "$VHOST_FILE" 0644
        if [ -z "$SERVER_NAME" ]; then
            SERVER_NAME=$(awk '$1 == "ServerName" { print $2; exit }' "$VHOST_FILE")
        fi
    fi
else
    step "no --generate or --import: not touching keys or $VHOST_FILE"
    note "configure the HSMSSL* lines in $GLOBAL_FILE (from hsm_ssl.conf.example) and a vhost with a pkcs11: key yourself (/usr/share/mod_hsm_ssl/docs/cloudhsm-al2023.md)"
fi

# --- 7. SELinux ---------------------------------------------------------------------
step "checking SELinux (httpd must reach the HSM on TCP 2223-2225)"
if command -v getenforce >/dev/null 2>&1 && [ "$(getenforce 2>/dev/null)" = Enforcing ]; then
    note "SELinux is enforcing. If configtest or startup times out reaching the HSM, allow the ports:"
    note "  sudo semanage port -a -t http_port_t -p tcp 2223-2225   (or: sudo setsebool -P httpd_can_network_connect 1)"
    note "  see httpd-conf/selinux.md; denials: sudo ausearch -m AVC -ts recent -c httpd"
else
    note "SELinux is not enforcing (or not installed): nothing to do"
fi

# --- 8. configtest, restart, check ----------------------------------------------------
step "checking the configuration with apachectl configtest (logs in to the HSM once)"
run_cred apachectl configtest || die "apachectl configtest failed (see the message above)" \
    "fix what the message names (/usr/share/mod_hsm_ssl/docs/troubleshooting.md, docs/messages.md by message ID); the running httpd was not touched"

step "restarting httpd with systemctl"
run systemctl daemon-reload || die "systemctl daemon-reload failed" "check 'systemctl status' and the drop-in files"
run systemctl enable httpd || die "systemctl enable httpd failed" "check 'systemctl status httpd'"
run systemctl restart httpd || die "httpd did not start" "see 'journalctl -u httpd -n 50' and /var/log/httpd/error_log"

CHECK_NAME=${SERVER_NAME:-${CN_NAME:-localhost}}
step "checking the site with curl -k https://$CHECK_NAME/"
CURL_ARGS=(-k -sS -o /dev/null -w '%{http_code}' --retry 5 --retry-delay 1 --retry-connrefused)
[ "$CHECK_NAME" = localhost ] || CURL_ARGS+=(--resolve "$CHECK_NAME:443:127.0.0.1")
if [ "$DRY_RUN" = 1 ]; then
    echo "    [dry-run] would run: curl ${CURL_ARGS[*]} https://$CHECK_NAME/"
else
    echo "    running: curl ${CURL_ARGS[*]} https://$CHECK_NAME/"
    CODE=$(curl "${CURL_ARGS[@]}" "https://$CHECK_NAME/") \
        || die "no TLS answer from https://$CHECK_NAME/" "see /var/log/httpd/error_log and /var/log/httpd/ssl_error_log (handshake refused? token unreachable?)"
    note "HTTPS works: the server answered with HTTP status ${CODE:-?} (403 is the empty default site)"
fi

step "done"
if [ "$DRY_RUN" = 1 ]; then
    note "dry run: nothing was changed"
else
    note "httpd serves HTTPS with the key in the HSM; logs: /var/log/httpd/error_log (LogLevel hsm_ssl:info shows the keys found)"
fi

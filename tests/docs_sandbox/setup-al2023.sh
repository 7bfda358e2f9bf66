# shellcheck shell=bash
# Sourced by sandbox.sh inside the sandbox, after the overlays are mounted:
# turns the Debian copy into what an Amazon Linux 2023 instance looks like
# after
#     dnf install -y httpd mod_ssl ./mod_hsm_ssl-*.rpm
# plus the CloudHSM client, with SoftHSM2 in place of the HSM, so that the
# docs' commands run literally. Debian's own programs stand in for
# AL2023's: apache2 for httpd (driven by the shims in bin/), SoftHSM2's
# library behind /opt/cloudhsm/lib/libcloudhsm_pkcs11.so.
#
# What is not like AL2023: no dnf, rpm, SELinux or systemd (bin/systemctl
# plays systemd's part for httpd.service); Debian's module set (no
# mod_systemd; mod_log_config, mod_logio, mod_unixd, mod_version and
# mod_watchdog are built into Debian's apache2).

# From sandbox.sh: this directory, and the state directory's path inside.
here=${here:?} S=${S:?}
repo=$DOCS_SANDBOX_REPO
files=$here/al2023

# --- httpd and mod_ssl ---------------------------------------------------
# The user the packages create; httpd's children run as it.
getent passwd apache >/dev/null || useradd --system --user-group --home-dir /usr/share/httpd --no-create-home --shell /sbin/nologin apache
install -d -m 0755 /etc/httpd /etc/httpd/conf /etc/httpd/conf.d /etc/httpd/conf.modules.d /usr/lib64/httpd/modules /usr/share/httpd
install -d -m 0700 /var/log/httpd
install -d -m 0710 -g apache /run/httpd
install -d -m 0755 /var/www/html /var/www/cgi-bin /etc/pki/tls/certs /etc/pki/tls/private
ln -s ../../usr/lib64/httpd/modules /etc/httpd/modules
ln -s ../../var/log/httpd /etc/httpd/logs
ln -s /run/httpd /etc/httpd/run
# Debian's modules under AL2023's names and directory.
for so in /usr/lib/apache2/modules/*.so; do
    ln -s "$so" "/usr/lib64/httpd/modules/$(basename "$so")"
done
install -m 0644 "$files/httpd.conf" /etc/httpd/conf/httpd.conf
install -m 0644 "$files/00-base.conf" "$files/00-mpm.conf" "$files/00-ssl.conf" /etc/httpd/conf.modules.d/
install -m 0644 "$files/ssl.conf" /etc/httpd/conf.d/ssl.conf
echo '<html><body>docs sandbox (al2023)</body></html>' >/var/www/html/index.html
# mod_ssl's default vhost serves a self-signed localhost certificate, which
# AL2023 makes at the first start (httpd-init.service, sscg).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout /etc/pki/tls/private/localhost.key -out /etc/pki/tls/certs/localhost.crt 2>/dev/null
chmod 0600 /etc/pki/tls/private/localhost.key
# The wrappers for absolute paths too (/usr/sbin/httpd -t, /usr/bin/systemctl).
ln -sf "$S/bin/httpd" /usr/sbin/httpd
ln -sf "$S/bin/apachectl" /usr/sbin/apachectl
ln -sf "$S/bin/systemctl" /usr/bin/systemctl
ln -sf "$S/bin/sudo" /usr/bin/sudo

# --- mod_hsm_ssl, as rpm/mod_hsm_ssl.spec's %install lays it out -------------
# (Keep in step with the spec.)
install -D -m 0755 "$DOCS_SANDBOX_MODULE" /usr/lib64/httpd/modules/mod_hsm_ssl.so
install -D -m 0755 "$DOCS_SANDBOX_KEYTOOL" /usr/bin/hsm-ssl-keytool
install -D -m 0644 "$repo/rpm/10-hsm_ssl.conf" /etc/httpd/conf.modules.d/10-hsm_ssl.conf
install -D -m 0644 "$repo/rpm/hsm_ssl.conf.example" /etc/httpd/conf.d/hsm_ssl.conf.example
install -D -m 0644 "$repo/rpm/httpd-hsm-ssl.dropin.conf" /usr/lib/systemd/system/httpd.service.d/hsm_ssl.conf
install -D -m 0600 "$repo/rpm/httpd-hsm-ssl.sysconfig" /etc/sysconfig/httpd-hsm-ssl
install -d -m 0700 /etc/httpd/hsm-ssl
install -m 0600 /dev/null /etc/httpd/hsm-ssl/hsm-ssl-pin
install -d /usr/share/man/man8 /usr/share/bash-completion/completions
/usr/bin/hsm-ssl-keytool manpage >/usr/share/man/man8/hsm-ssl-keytool.8
/usr/bin/hsm-ssl-keytool manpage --module >/usr/share/man/man8/mod_hsm_ssl.8
/usr/bin/hsm-ssl-keytool completions bash >/usr/share/bash-completion/completions/hsm-ssl-keytool
install -d /usr/share/mod_hsm_ssl/docs /usr/share/mod_hsm_ssl/httpd-conf /usr/share/doc/mod_hsm_ssl /usr/share/licenses/mod_hsm_ssl
install -m 0644 "$repo"/docs/*.md /usr/share/mod_hsm_ssl/docs/
install -m 0644 "$repo"/httpd-conf/* /usr/share/mod_hsm_ssl/httpd-conf/
sed '1s|^#!/usr/bin/env bash$|#!/usr/bin/bash|' "$repo/rpm/install-amazon-linux.sh" >/usr/share/mod_hsm_ssl/install-amazon-linux.sh
chmod 0755 /usr/share/mod_hsm_ssl/install-amazon-linux.sh
install -m 0644 "$repo/README.md" /usr/share/doc/mod_hsm_ssl/README.md
install -m 0644 "$repo/rpm/LICENSE" /usr/share/licenses/mod_hsm_ssl/LICENSE

# --- the CloudHSM client, played by SoftHSM2 -----------------------------
# One token, "hsm1", whose user PIN is DOCS_SANDBOX_PIN (the placeholder
# the docs write into the PIN file). The token store is a tmpfs of its own:
# the host's tokens are not visible, and nothing is written to its disk.
install -d -m 0755 /opt/cloudhsm /opt/cloudhsm/bin /opt/cloudhsm/etc /opt/cloudhsm/lib
ln -s /usr/lib/softhsm/libsofthsm2.so /opt/cloudhsm/lib/libcloudhsm_pkcs11.so
mount -t tmpfs -o mode=0755 docs-sandbox-softhsm /var/lib/softhsm
install -d -m 0750 -o apache -g apache /var/lib/softhsm/tokens
cat >/etc/softhsm/softhsm2.conf <<'EOF'
# docs sandbox: the token standing in for the CloudHSM cluster
directories.tokendir = /var/lib/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
# Readable by httpd's user, like the CloudHSM client's configuration
# (Debian keeps /etc/softhsm to root and group softhsm).
chmod 0755 /etc/softhsm
chmod 0644 /etc/softhsm/softhsm2.conf
SOFTHSM2_CONF=/etc/softhsm/softhsm2.conf softhsm2-util --init-token --free --label hsm1 \
    --pin "$DOCS_SANDBOX_PIN" --so-pin "so-$DOCS_SANDBOX_PIN" >/dev/null
# SoftHSM2 keeps the token in files that only their writer can read; the
# shims hand them to apache again before httpd starts or reloads.
chown -R apache:apache /var/lib/softhsm/tokens

# --- the machine ----------------------------------------------------------
printf '%s\n' '127.0.0.1 localhost www.example.com example.com' "127.0.1.1 $(hostname)" \
    '::1 localhost ip6-localhost ip6-loopback' >/etc/hosts
echo docs-sandbox-al2023 >/etc/hostname
cat >/etc/os-release <<'EOF'
NAME="Amazon Linux"
VERSION="2023"
ID="amzn"
ID_LIKE="fedora"
VERSION_ID="2023"
PRETTY_NAME="Amazon Linux 2023 (docs sandbox on Debian)"
EOF

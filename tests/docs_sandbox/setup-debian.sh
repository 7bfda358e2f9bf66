# shellcheck shell=bash
# Sourced by sandbox.sh inside the sandbox, after the overlays are mounted:
# the Debian 12 machine as it is (apache2, mod_ssl, softhsm2 and the other
# packages of scripts/install-deps.sh), plus what a reader of a Debian page
# has before its first command:
#   - a checkout of mod_hsm_ssl in /root/mod_hsm_ssl (the working directory
#     of the blocks) after "cargo build --release": the module and key tool
#     as cargo built them for the test are in its target/release/;
#   - one SoftHSM2 token, label "web", user PIN 1234 (SO PIN 12345678), in
#     Debian's default token directory, with Debian's permissions (root,
#     group softhsm): a page must show how httpd's user gets to it.
# Nothing of mod_hsm_ssl is installed into apache2. apache2ctl, a2enmod and
# friends are Debian's own; bin/systemctl plays systemd for apache2.service.

# From sandbox.sh: this directory, and the state directory's path inside.
here=${here:?} S=${S:?}
repo=$DOCS_SANDBOX_REPO

# --- the checkout, built --------------------------------------------------
checkout=/root/mod_hsm_ssl
mkdir -p "$checkout"
# The files of the work tree that git knows or would add (not target/).
if git -c safe.directory='*' -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    git -c safe.directory='*' -C "$repo" ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            if [ -f "$repo/$f" ]; then printf '%s\0' "$f"; fi
        done | (cd "$repo" && xargs -0 cp --parents -t "$checkout")
else
    tar -C "$repo" --exclude=./target --exclude=./.git -cf - . | tar -C "$checkout" -xf -
fi
install -D -m 0755 "$DOCS_SANDBOX_MODULE" "$checkout/target/release/libmod_hsm_ssl.so"
install -D -m 0755 "$DOCS_SANDBOX_KEYTOOL" "$checkout/target/release/hsm-ssl-keytool"
echo "$checkout" >"$S/start-dir"

# --- SoftHSM2, as the softhsm2 package leaves it --------------------------
# A tmpfs of its own: the host's tokens are not visible and stay untouched.
mount -t tmpfs -o mode=2770,gid="$(getent group softhsm | cut -d: -f3)" docs-sandbox-softhsm /var/lib/softhsm
install -d -m 2770 -o root -g softhsm /var/lib/softhsm/tokens
softhsm2-util --init-token --free --label web --pin 1234 --so-pin 12345678 >/dev/null

# --- the machine ----------------------------------------------------------
printf '%s\n' '127.0.0.1 localhost www.example.com example.com' "127.0.1.1 $(hostname)" \
    '::1 localhost ip6-localhost ip6-loopback' >/etc/hosts
# The wrappers for absolute paths too.
ln -sf "$S/bin/systemctl" /usr/bin/systemctl
ln -sf "$S/bin/sudo" /usr/bin/sudo

#!/usr/bin/env bash
# Build the mod_hsm_ssl RPM (binary and source) from this checkout.
#
#     bash rpm/build.sh [WORKDIR]        # WORKDIR defaults to target/rpm
#
# 1. copies the files git tracks, as they are in the working tree (uncommitted
#    edits included; RPM_SOURCE=head takes `git archive HEAD` instead),
# 2. vendors every crate (`cargo vendor`) into the copy and writes the
#    .cargo/config.toml that points cargo at vendor/, so the RPM build needs
#    no network (`cargo build --offline`),
# 3. packs mod_hsm_ssl-<version>.tar.gz and sets up an rpmbuild tree
#    (SOURCES, SPECS, ...) under WORKDIR/rpmbuild,
# 4. runs `rpmbuild -ba rpm/mod_hsm_ssl.spec`,
# 5. prints the paths of the binary and the source RPM (the last two lines of
#    stdout are "binary rpm: PATH" and "source rpm: PATH").
#
# On a system whose packages are not RPMs (Debian, Ubuntu), the BuildRequires
# name RPM packages that the empty rpm database cannot know, so rpmbuild runs
# with --nodeps there (the Debian equivalents come from
# scripts/install-deps.sh). The resulting RPM is laid out for Amazon Linux
# 2023 but links against the build machine's glibc and OpenSSL: build the
# RPM you install on Amazon Linux on Amazon Linux.
#
# Environment:
#   RPM_SOURCE=worktree|head   what goes into the tarball (default worktree)
#   RPMBUILD_NODEPS=1|0        force --nodeps on or off (default: auto)
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'rpm/build.sh: error: %s\n' "$*" >&2; exit 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPEC="$REPO/rpm/mod_hsm_ssl.spec"
NAME=mod_hsm_ssl

case "${1:-}" in
    -h|--help)
        sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "build.sh: unknown option $1 (usage: bash rpm/build.sh [WORKDIR])" >&2
        exit 1
        ;;
esac
WORKDIR="${1:-$REPO/target/rpm}"
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"

# cargo from rustup lives in ~/.cargo/bin, which sudo drops from PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
fi

say "checking the tools: git, tar, gzip, cargo, rpmbuild"
for tool in git tar gzip cargo rpmbuild; do
    command -v "$tool" >/dev/null 2>&1 || {
        case "$tool" in
            rpmbuild) die "rpmbuild not found (Debian: apt-get install rpm; Amazon Linux: dnf install rpm-build)" ;;
            cargo) die "cargo not found: install a Rust toolchain, 1.77 or newer" ;;
            *) die "$tool not found" ;;
        esac
    }
done

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)"
[ -n "$VERSION" ] || die "no version in $REPO/Cargo.toml"
SPEC_VERSION="$(sed -n 's/^Version: *//p' "$SPEC" | head -n 1)"
[ "$VERSION" = "$SPEC_VERSION" ] \
    || die "Cargo.toml has version $VERSION but rpm/mod_hsm_ssl.spec has $SPEC_VERSION: update the spec (Version, %changelog)"
TOPNAME="$NAME-$VERSION"
say "building $TOPNAME in $WORKDIR"

TOPDIR="$WORKDIR/rpmbuild"
STAGE="$WORKDIR/stage"
say "setting up the rpmbuild tree $TOPDIR"
rm -rf "$STAGE" "$TOPDIR"
mkdir -p "$STAGE/$TOPNAME" "$TOPDIR"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS}

case "${RPM_SOURCE:-worktree}" in
    head)
        say "source: git archive HEAD ($(git -C "$REPO" rev-parse --short HEAD))"
        git -C "$REPO" archive --format=tar HEAD | tar -x -C "$STAGE/$TOPNAME"
        ;;
    worktree)
        say "source: the files git tracks, as they are in the working tree"
        # Tracked files deleted in the working tree are left out.
        (cd "$REPO" && git ls-files -z | while IFS= read -r -d '' f; do
            if [ -e "$f" ]; then printf '%s\0' "$f"; fi
        done | tar --null -T - -cf -) | tar -x -C "$STAGE/$TOPNAME"
        ;;
    *) die "RPM_SOURCE must be worktree or head, not '$RPM_SOURCE'" ;;
esac

say "vendoring the crates (cargo vendor; the registry is used only if the crates are not cached yet)"
mkdir -p "$STAGE/$TOPNAME/.cargo"
# cargo vendor prints the source replacement for .cargo/config.toml on stdout.
# Its progress goes to WORKDIR/cargo-vendor.log.
(cd "$STAGE/$TOPNAME" && cargo vendor --locked vendor) \
    >>"$STAGE/$TOPNAME/.cargo/config.toml" 2>"$WORKDIR/cargo-vendor.log" \
    || { cat "$WORKDIR/cargo-vendor.log" >&2; die "cargo vendor failed"; }
say "vendored $(find "$STAGE/$TOPNAME/vendor" -mindepth 1 -maxdepth 1 -type d | wc -l) crates (log: $WORKDIR/cargo-vendor.log)"
grep -q 'directory = "vendor"' "$STAGE/$TOPNAME/.cargo/config.toml" \
    || die "cargo vendor did not print the vendored-sources configuration"
say ".cargo/config.toml in the tarball:"
sed 's/^/    /' "$STAGE/$TOPNAME/.cargo/config.toml"

TARBALL="$TOPDIR/SOURCES/$TOPNAME.tar.gz"
say "packing $TARBALL"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$STAGE" -czf "$TARBALL" "$TOPNAME"
rm -rf "$STAGE"
say "tarball: $(du -h "$TARBALL" | cut -f1)"

say "copying the spec and the packaged configuration files into SOURCES/SPECS"
cp "$SPEC" "$TOPDIR/SPECS/"
for f in LICENSE 10-hsm_ssl.conf hsm_ssl.conf.example httpd-hsm-ssl.dropin.conf httpd-hsm-ssl.sysconfig; do
    cp "$REPO/rpm/$f" "$TOPDIR/SOURCES/"
done

NODEPS=()
case "${RPMBUILD_NODEPS:-auto}" in
    1) NODEPS=(--nodeps); say "RPMBUILD_NODEPS=1: not checking BuildRequires" ;;
    0) say "RPMBUILD_NODEPS=0: rpmbuild checks BuildRequires" ;;
    auto)
        # On an RPM-based system the rpm database knows the rpm package itself.
        if rpm -q --quiet rpm 2>/dev/null; then
            say "RPM-based system: rpmbuild checks BuildRequires (httpd-devel, openssl-devel, clang, cargo, rust ...)"
        else
            NODEPS=(--nodeps)
            say "this is not an RPM-based system (the rpm database does not know the package 'rpm'):"
            say "  the BuildRequires are RPM package names that cannot be checked here, so rpmbuild runs with --nodeps."
            say "  Their Debian equivalents (apache2-dev, libssl-dev, clang, libclang-dev, pkg-config) come from"
            say "  scripts/install-deps.sh, Rust 1.77+ from rustup. The RPM links against this machine's glibc and"
            say "  OpenSSL: build the RPM you install on Amazon Linux on Amazon Linux."
        fi
        ;;
    *) die "RPMBUILD_NODEPS must be 1 or 0" ;;
esac

say "running rpmbuild -ba (this compiles the module and the key tool in release mode; it takes a few minutes)"
rpmbuild -ba "${NODEPS[@]}" \
    --define "_topdir $TOPDIR" \
    "$TOPDIR/SPECS/$NAME.spec"

BIN_RPM="$(find "$TOPDIR/RPMS" -name "$NAME-$VERSION-*.rpm" ! -name '*-debuginfo-*' ! -name '*-debugsource-*' | head -n 1)"
SRC_RPM="$(find "$TOPDIR/SRPMS" -name "$NAME-$VERSION-*.src.rpm" | head -n 1)"
[ -n "$BIN_RPM" ] || die "rpmbuild made no binary RPM under $TOPDIR/RPMS"
[ -n "$SRC_RPM" ] || die "rpmbuild made no source RPM under $TOPDIR/SRPMS"
say "done"
echo "binary rpm: $BIN_RPM"
echo "source rpm: $SRC_RPM"

#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb, from files in this repository:
#   packaging/build-deb.sh        # -> target/debian/chtail_<version>_<arch>.deb
# CHTAIL_DEB_VERSION overrides the version (default: Cargo.toml's, -1);
# CHTAIL_BIN names a binary already built (default: cargo build --release);
# CHTAIL_MAINTAINER the Maintainer field and changelog signature.
# Prints the path of the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
version=${CHTAIL_DEB_VERSION:-${crate_version}-1}
arch=$(dpkg --print-architecture)
bin=${CHTAIL_BIN:-target/release/chtail}
maintainer=${CHTAIL_MAINTAINER:-chtail maintainers <maintainers@chtail.example.org>}
if [ -z "${CHTAIL_BIN:-}" ]; then
  cargo build --release --locked >&2
fi

out=target/debian
stage=$out/stage-$version
rm -rf "$stage"
install -D -m 0755 "$bin" "$stage/usr/bin/chtail"
# Debian ships binaries stripped (the build keeps line tables for profiles).
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/chtail"
install -D -m 0644 systemd/chtail.service "$stage/lib/systemd/system/chtail.service"
install -D -m 0640 config.example.toml "$stage/etc/chtail/chtail.toml"
doc=$stage/usr/share/doc/chtail
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 config.example.toml "$doc/examples/chtail.toml"
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
# Lintian's warnings that hold for chtail, each with its reason there.
install -D -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/chtail"
# The man page and the shell completions, from the CLI's own definitions.
mkdir -p "$stage/usr/share/man/man1"
"$bin" generate man | gzip -9n >"$stage/usr/share/man/man1/chtail.1.gz"
chmod 0644 "$stage/usr/share/man/man1/chtail.1.gz"
"$bin" generate bash | install -D -m 0644 /dev/stdin "$stage/usr/share/bash-completion/completions/chtail"
"$bin" generate zsh | install -D -m 0644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_chtail"
"$bin" generate fish | install -D -m 0644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/chtail.fish"
{
  echo "chtail ($version) stable; urgency=medium"
  echo
  echo "  * Package built from the chtail repository."
  echo
  echo " -- $maintainer  $(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n >"$doc/changelog.Debian.gz"

# The newest glibc symbol version the binary needs.
glibc=$(objdump -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1 || true)
depends="libc6 (>= ${glibc:-2.36}), libgcc-s1"

mkdir -p "$stage/DEBIAN"
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  -e "s|@MAINTAINER@|$maintainer|" \
  -e "s/@SIZE@/$installed_kb/" packaging/debian/control >"$stage/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
done

deb=$out/chtail_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
rm -rf "$stage"
echo "$deb"

#!/usr/bin/env bash
# The Debian package, for real: build it (two versions), install, check the
# files, the user, the unit and that `chtail check` runs as that user,
# upgrade keeping the operator's config, then purge. Needs root and dpkg;
# it changes the machine (a chtail user stays behind after the purge, as
# Debian packages leave their system users).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/package.sh: needs root (dpkg -i); skipped" >&2
  exit 0
fi
fail() { echo "package test FAILED: $*" >&2; exit 1; }
step() { echo "== package: $*"; }

cargo build --release --locked
base=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
deb1=$(CHTAIL_BIN=target/release/chtail CHTAIL_DEB_VERSION="$base-1" packaging/build-deb.sh | tail -n1)
deb2=$(CHTAIL_BIN=target/release/chtail CHTAIL_DEB_VERSION="$base-2" packaging/build-deb.sh | tail -n1)
dpkg-deb --info "$deb1" >/dev/null
contents=$(dpkg-deb --contents "$deb1")
grep -q './etc/chtail/chtail.toml' <<<"$contents" || fail "no conffile in the package"

step "lintian"
# No error and no warning; the two warnings that hold for chtail are
# overridden in the package, each with its reason
# (packaging/debian/lintian-overrides).
lintian --fail-on error,warning --info "$deb1" || fail "lintian"

dpkg --purge chtail >/dev/null 2>&1 || true
work=$(mktemp -d)
logs=/var/log/chtail-package-test
cleanup() { dpkg --purge chtail >/dev/null 2>&1 || true; rm -rf "$work" "$logs"; }
trap cleanup EXIT

step "install $deb1"
dpkg -i "$deb1"
[ "$(dpkg-query -W -f='${Status} ${Version}' chtail)" = "install ok installed $base-1" ] || fail "not installed"
/usr/bin/chtail --version | grep -q "$base" || fail "chtail --version"
id chtail >/dev/null || fail "no chtail user"
[ "$(getent passwd chtail | cut -d: -f7)" = /usr/sbin/nologin ] || fail "chtail has a login shell"
id -nG chtail | grep -qw adm || fail "chtail is not in group adm"
[ "$(stat -c '%U:%G %a' /var/lib/chtail)" = "chtail:chtail 750" ] || fail "state dir: $(stat -c '%U:%G %a' /var/lib/chtail)"
[ "$(stat -c '%U:%G %a' /etc/chtail/chtail.toml)" = "root:chtail 640" ] || fail "config: $(stat -c '%U:%G %a' /etc/chtail/chtail.toml)"
cmp -s /etc/chtail/chtail.toml config.example.toml || fail "the config is not the example"
[ -f /lib/systemd/system/chtail.service ] || fail "no unit"
[ -f /usr/share/doc/chtail/README.md ] && [ -f /usr/share/doc/chtail/copyright ] || fail "no docs"
zcat /usr/share/man/man1/chtail.1.gz | grep -c '^\.TH chtail 1' >/dev/null || fail "no man page"
zcat /usr/share/man/man1/chtail.1.gz | grep -c 'check' >/dev/null || fail "the man page lacks the commands"
grep -q 'chtail' /usr/share/bash-completion/completions/chtail || fail "no bash completion"
grep -q 'offline' /usr/share/zsh/vendor-completions/_chtail || fail "no zsh completion"
grep -q 'complete -c chtail' /usr/share/fish/vendor_completions.d/chtail.fish || fail "no fish completion"
if command -v bash >/dev/null; then
  # The completion loads, and completes the subcommands.
  words=$(bash -c 'source /usr/share/bash-completion/completions/chtail; COMP_WORDS=(chtail c); COMP_CWORD=1; _chtail chtail c chtail; echo "${COMPREPLY[@]}"')
  grep -qw check <<<"$words" || fail "bash completion of 'chtail c': $words"
fi

step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /lib/systemd/system/chtail.service
  systemd-analyze security --offline=true /lib/systemd/system/chtail.service | tail -n1
else
  echo "systemd-analyze not available; unit not verified" >&2
fi

step "chtail check as the chtail user"
# The bot's logs, readable through the adm group only.
install -d -o root -g adm -m 0750 "$logs"
echo '{"ts":"2026-11-22T10:00:00Z","event":"interaction","guild_id":"1"}' >"$logs/events.jsonl"
chown root:adm "$logs/events.jsonl"
chmod 0640 "$logs/events.jsonl"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The operator's edit: the bot's logs, and a ClickHouse that is not up.
sed -i -e "s#^url = .*#url = \"http://127.0.0.1:$port\"#" \
  -e "s#^paths = .*#paths = [\"$logs/events*.jsonl\"]#" \
  -e 's#^connect_timeout = .*#connect_timeout = "1s"#' /etc/chtail/chtail.toml
set +e
runuser -u chtail -- /usr/bin/chtail check --config /etc/chtail/chtail.toml >"$work/check.out" 2>&1
status=$?
set -e
cat "$work/check.out"
[ "$status" -eq 1 ] || fail "check exited $status (want 1: ClickHouse is down)"
grep -q '^ok       configuration is valid' "$work/check.out" || fail "config not read"
grep -q '^ok       state directory /var/lib/chtail is writable' "$work/check.out" || fail "state dir not writable by chtail"
grep -q "is readable" "$work/check.out" || fail "logs not readable through adm"
grep -q "^PROBLEM  ClickHouse at http://127.0.0.1:$port does not answer" "$work/check.out" || fail "ClickHouse problem not reported"
runuser -u chtail -- /usr/bin/chtail status --config /etc/chtail/chtail.toml >/dev/null || fail "status as chtail"

step "upgrade to $deb2, keeping the edited config"
uid=$(id -u chtail)
dpkg -i --force-confold "$deb2"
[ "$(dpkg-query -W -f='${Version}' chtail)" = "$base-2" ] || fail "not upgraded"
grep -q "127.0.0.1:$port" /etc/chtail/chtail.toml || fail "the operator's config was replaced"
[ "$(id -u chtail)" = "$uid" ] || fail "the user changed"
[ "$(stat -c '%U:%G %a' /etc/chtail/chtail.toml)" = "root:chtail 640" ] || fail "config permissions after upgrade"

step "purge"
dpkg --purge chtail
for gone in /usr/bin/chtail /lib/systemd/system/chtail.service /etc/chtail /var/lib/chtail /usr/share/doc/chtail; do
  [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
id chtail >/dev/null || fail "the system user should stay"
echo "== package: install, upgrade and purge passed"

#!/usr/bin/env bash
# The package under a real systemd: systemd-nspawn boots this machine's own
# tree (/usr shared through an overlay, copies of /etc and of dpkg's
# database, everything else volatile) with systemd as PID 1, on the host's
# network; the test talks to it with `nsenter -t <its PID 1> -a`.
#   tests/systemd.sh [PACKAGE.deb]   # default: build one
# Checks: install; start through READY while ClickHouse is down (no restart
# loop); the bot's events at its pace arrive; STATUS in `systemctl status`;
# levels in the journal; reload; the watchdog restarts a frozen chtail; the
# sandbox (no write outside the state directory, no read outside its
# groups); `systemctl stop` drains and exits 0. Skips, saying why, where
# systemd cannot boot in a container.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "== systemd: $*"; }
skip() {
  echo "== systemd: SKIPPED: $*"
  exit 0
}
P=
in_ct() { nsenter -t "$P" -a "$@"; }
# `cmd | grep -c … >/dev/null` rather than `grep -q`: grep reads all of
# the output, so `cmd` never dies of SIGPIPE, which pipefail would count.
fail() {
  echo "systemd test FAILED: $*" >&2
  if [ -n "$P" ]; then
    in_ct systemctl status chtail --no-pager >&2 || true
    in_ct journalctl -u chtail --no-pager | tail -n 60 >&2 || true
  fi
  exit 1
}

command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (Debian's systemd-container)"
deb=${1:-}
if [ -z "$deb" ]; then
  deb=$(packaging/build-deb.sh | tail -n1)
fi

work=$(mktemp -d /tmp/chtail-systemd.XXXXXX)
ns=
ch=
cleanup() {
  [ -n "$P" ] && nsenter -t "$P" -a systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do
    [ -n "$ns" ] && kill -0 "$ns" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$ns" ] && kill -9 "$ns" 2>/dev/null || true
  [ -n "$ch" ] && kill "$ch" 2>/dev/null && wait "$ch" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/etc" "$work/var/lib" "$work/debs" "$work/ch"
cp -a /etc/. "$work/etc/"
cp -a /var/lib/dpkg "$work/var/lib/"
cp "$deb" "$work/debs/chtail.deb"

step "boot systemd in a container"
systemd-nspawn --register=no --keep-unit -D / --volatile=yes --overlay=/usr::/usr \
  --bind="$work/etc:/etc" --bind="$work/var:/var" --bind="$work/debs:/debs" \
  -b -- systemd.firstboot=off >"$work/console.log" 2>&1 &
ns=$!
for _ in $(seq 1 120); do
  P=$(pgrep -P "$ns" -x systemd || true)
  if [ -n "$P" ]; then
    state=$(nsenter -t "$P" -a systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
  fi
  kill -0 "$ns" 2>/dev/null || skip "systemd-nspawn exited: $(tail -n 5 "$work/console.log")"
  sleep 0.5
done
case "${state:-}" in
  running | degraded) ;;
  *) skip "systemd did not finish booting in 60 s (state: ${state:-none}): $(tail -n 5 "$work/console.log")" ;;
esac
in_ct systemctl --version | head -n1

step "install"
in_ct dpkg -i /debs/chtail.deb >/dev/null
in_ct systemctl is-enabled chtail | grep -qx enabled || fail "not enabled"

# The bot's logs, readable through group adm only; a secret beside them
# that chtail's groups cannot read.
logs=/var/log/argus
install -d -o root -g adm -m 0750 "$work$logs"
install -d -o root -g root -m 0700 "$work/var/secret"
echo '{"ts":"2026-11-22T10:00:00Z","event":"secret"}' >"$work/var/secret/events.jsonl"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tcp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
conf=$work/etc/chtail/chtail.toml
sed -i -e "s#^url = .*#url = \"http://127.0.0.1:$port\"#" \
  -e "s#^paths = .*#paths = [\"$logs/events.jsonl*\"]#" \
  -e 's#^connect_timeout = .*#connect_timeout = "1s"#' "$conf"
# A quicker watchdog than the unit's 60 s, as an operator's drop-in.
mkdir -p "$work/etc/systemd/system/chtail.service.d"
printf '[Service]\nWatchdogSec=10\n' >"$work/etc/systemd/system/chtail.service.d/test.conf"
in_ct systemctl daemon-reload

step "start while ClickHouse is down: READY, no restart loop"
in_ct systemctl start chtail
sleep 8
[ "$(in_ct systemctl show -p ActiveState --value chtail)" = active ] || fail "not active while ClickHouse is down"
[ "$(in_ct systemctl show -p SubState --value chtail)" = running ] || fail "not running"
[ "$(in_ct systemctl show -p NRestarts --value chtail)" = 0 ] || fail "restarted while ClickHouse was down"
in_ct journalctl -u chtail --no-pager -p warning | grep -c chtail >/dev/null ||
  fail "no warning in the journal at warning level about the unreachable server"
# ConfigurationDirectoryMode matches what the package makes.
! in_ct journalctl -u chtail --no-pager | grep -c "ConfigurationDirectory" >/dev/null ||
  fail "systemd warns about the configuration directory"

step "ClickHouse comes up; the bot writes at its pace"
cat >"$work/ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$work/ch/server.log</log><errorlog>$work/ch/server.err.log</errorlog></logger>
  <http_port>$port</http_port>
  <tcp_port>$tcp</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$work/ch/data/</path>
  <tmp_path>$work/ch/tmp/</tmp_path>
  <user_files_path>$work/ch/user_files/</user_files_path>
  <users_config>$work/ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
EOF
cat >"$work/ch/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
server=clickhouse-server
command -v clickhouse >/dev/null && server="clickhouse server"
$server --config-file="$work/ch/config.xml" >"$work/ch/stdout" 2>&1 &
ch=$!
q() { curl -sS --fail "http://127.0.0.1:$port/" --data-binary "$1"; }
for _ in $(seq 1 120); do q 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
n=300000
python3 tests/support/bot.py "$work$logs/events.jsonl" rotating 0 $n $((8 << 20)) 20000
rows=0
for _ in $(seq 1 240); do
  rows=$(q "SELECT count() FROM default.argus_events" 2>/dev/null || echo 0)
  [ "$rows" -ge $n ] && break
  sleep 0.5
done
[ "$rows" = $n ] || fail "$rows rows of $n"
distinct=$(q "SELECT uniqExact(ts) FROM default.argus_events")
[ "$distinct" = $n ] || fail "$distinct distinct events of $n"
[ "$(in_ct systemctl show -p NRestarts --value chtail)" = 0 ] || fail "restarted during the load"
main=$(in_ct systemctl show -p MainPID --value chtail)
peak=$(in_ct awk '/^VmHWM:/ {print $2}' "/proc/$main/status")
echo "chtail's peak RSS under systemd: $peak KiB"
[ "$peak" -lt $((48 << 10)) ] || fail "peak RSS $peak KiB"

step "STATUS line and journal levels"
status=$(in_ct systemctl show -p StatusText --value chtail)
[ -n "$status" ] || fail "no STATUS line"
in_ct systemctl status chtail --no-pager | grep -c 'Status: "' >/dev/null || fail "systemctl status shows no Status"
echo "status: $status"
in_ct journalctl -u chtail --no-pager -p info -o cat | grep -c "tracking new file" >/dev/null || fail "info lines missing from the journal"
! in_ct journalctl -u chtail --no-pager -p warning -o cat | grep -c "tracking new file" >/dev/null ||
  fail "info lines logged at warning level"
! in_ct journalctl -u chtail --no-pager -o cat | grep -c '^<[0-9]>' >/dev/null || fail "priority prefixes left in the journal text"

step "the sandbox"
# Reading outside its groups: a source in a root-only directory.
sed -i -e "s#^paths = .*#paths = [\"$logs/events.jsonl*\", \"/var/secret/events.jsonl\"]#" "$conf"
in_ct systemctl reload chtail
sleep 3
in_ct journalctl -u chtail --no-pager -o cat | grep -ci "reload" >/dev/null || fail "no reload in the journal"
in_ct journalctl -u chtail --no-pager -o cat | grep -c "/var/secret" >/dev/null || fail "the unreadable source is not reported"
[ "$(q "SELECT count() FROM default.argus_events WHERE event = 'secret'")" = 0 ] || fail "read a root-only file"
# Writing outside its state directory: the whole file system is read-only
# to it but for /var/lib/chtail.
out=$(in_ct systemd-run --wait --pipe --quiet -p User=chtail -p ProtectSystem=strict -p ReadWritePaths=/var/lib/chtail \
  /bin/sh -c 'touch /var/log/argus/x 2>&1; touch /etc/chtail/x 2>&1; touch /var/lib/chtail/probe && echo state-ok' || true)
grep -q state-ok <<<"$out" || fail "cannot write the state directory: $out"
for f in /var/log/argus/x /etc/chtail/x; do
  [ ! -e "$work$f" ] || fail "wrote $f"
done
in_ct systemctl show chtail -p ProtectSystem --value | grep -qx strict || fail "ProtectSystem is not strict"

step "the watchdog restarts a frozen chtail"
pid=$(in_ct systemctl show -p MainPID --value chtail)
in_ct kill -STOP "$pid"
for _ in $(seq 1 60); do
  [ "$(in_ct systemctl show -p NRestarts --value chtail)" != 0 ] && break
  sleep 1
done
[ "$(in_ct systemctl show -p NRestarts --value chtail)" != 0 ] || fail "not restarted by the watchdog"
for _ in $(seq 1 30); do
  [ "$(in_ct systemctl show -p SubState --value chtail)" = running ] && break
  sleep 1
done
[ "$(in_ct systemctl show -p SubState --value chtail)" = running ] || fail "not running after the watchdog's restart"
in_ct journalctl --no-pager -u chtail | grep -c "Watchdog timeout" >/dev/null || fail "the restart was not the watchdog's"

step "stop drains and exits 0"
python3 tests/support/bot.py "$work$logs/events.jsonl" rotating $n 20000 $((8 << 20)) 20000 >/dev/null
in_ct systemctl stop chtail
[ "$(in_ct systemctl show -p ExecMainStatus --value chtail)" = 0 ] || fail "exit status $(in_ct systemctl show -p ExecMainStatus --value chtail)"
[ "$(in_ct systemctl show -p Result --value chtail)" = success ] || fail "result $(in_ct systemctl show -p Result --value chtail)"
rows=$(q "SELECT uniqExact(ts) FROM default.argus_events")
# The watchdog's kill may re-send the batch it interrupted: distinct events.
[ "$rows" = $((n + 20000)) ] || fail "$rows distinct events after the stop, want $((n + 20000))"
step "passed"

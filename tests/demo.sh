#!/usr/bin/env bash
# The demo: ships sample bot events into ClickHouse and shows them.
#   tests/demo.sh                      # starts a private ClickHouse
#   CHTAIL_DEMO_URL=http://127.0.0.1:8123 tests/demo.sh   # uses yours
# It builds chtail, writes events the way the bot does (Python logging with
# a RotatingFileHandler, so the demo rotates files while chtail reads them),
# runs chtail, shows the rows and a guild's report, applies the managed
# schema (the daily rollup) and shows the same report from the rollups,
# stops chtail with SIGTERM, and shows `chtail status`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/chtail-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ -z "${CHTAIL_DEMO_URL:-}" ] && ! command -v clickhouse-server >/dev/null 2>&1 && ! command -v clickhouse >/dev/null 2>&1; then
  need_apt+=(clickhouse-server)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== building chtail"
cargo build --release --quiet
chtail=$root/target/release/chtail

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

metrics_port=$(free_port)
if [ -n "${CHTAIL_DEMO_URL:-}" ]; then
  url=$CHTAIL_DEMO_URL
else
  http=$(free_port); tcp=$(free_port)
  mkdir -p "$work/ch"
  cat >"$work/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$work/ch/server.log</log><errorlog>$work/ch/server.err.log</errorlog><console>0</console></logger>
  <http_port>$http</http_port><tcp_port>$tcp</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$work/ch/data/</path><tmp_path>$work/ch/tmp/</tmp_path>
  <user_files_path>$work/ch/user_files/</user_files_path><format_schema_path>$work/ch/fs/</format_schema_path>
  <users_config>$work/ch/users.xml</users_config><default_profile>default</default_profile>
  <default_database>default</default_database><mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
  cat >"$work/ch/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default/></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default/></quotas>
</yandex>
XML
  if command -v clickhouse >/dev/null 2>&1; then server=(clickhouse server); else server=(clickhouse-server); fi
  echo "== starting a private ClickHouse on 127.0.0.1:$http"
  "${server[@]}" --config-file="$work/ch/config.xml" >"$work/ch/stdout" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$http
  for _ in $(seq 100); do curl -sf "$url/ping" >/dev/null && break; sleep 0.2; done
fi
q() { curl -sS --fail-with-body "$url/" --data-binary "$1"; }
q "SELECT version()" >/dev/null

mkdir -p "$work/logs" "$work/state"
cat >"$work/chtail.toml" <<TOML
[clickhouse]
url = "$url"
database = "chtail_demo"

[[source]]
paths = ["$work/logs/events.jsonl*"]

[state]
dir = "$work/state"

[batch]
max_wait = "500ms"

[metrics]
listen = "127.0.0.1:$metrics_port"
TOML

echo "== chtail check"
"$chtail" check --config "$work/chtail.toml"
q "TRUNCATE TABLE chtail_demo.argus_events"

echo "== running chtail, and a bot writing 20000 events with Python's RotatingFileHandler"
"$chtail" run --config "$work/chtail.toml" 2>"$work/chtail.log" &
chtail_pid=$!
pids+=($chtail_pid)
python3 - "$work/logs/events.jsonl" <<'PY'
import json, logging, logging.handlers, random, sys, datetime
h = logging.handlers.RotatingFileHandler(sys.argv[1], maxBytes=512 * 1024, backupCount=10)
h.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("events"); log.addHandler(h); log.setLevel(logging.INFO)
rnd = random.Random(7)
now = datetime.datetime.now(datetime.timezone.utc)
for i in range(20000):
    ts = (now - datetime.timedelta(minutes=rnd.randrange(7 * 24 * 60))).isoformat()
    guild = str(rnd.choice([111, 222, 333]))
    if rnd.random() < 0.5:
        e = {"ts": ts, "event": "interaction", "guild_id": guild, "type": "application_command"}
    else:
        e = {"ts": ts, "event": "app_command", "guild_id": guild, "type": "application_command",
             "command": rnd.choice(["ping", "play", "skip", "queue", "help"]),
             "duration_ms": round(rnd.uniform(5, 400), 1)}
    log.info(json.dumps(e))
PY
for _ in $(seq 300); do
  n=$(q "SELECT count() FROM chtail_demo.argus_events")
  [ "$n" -ge 20000 ] && break
  sleep 0.2
done
echo "rows in ClickHouse: $(q 'SELECT count() FROM chtail_demo.argus_events') (the bot wrote 20000 across $(ls "$work/logs" | wc -l) rotated files)"

echo
echo "== health, readiness and a few metrics (http://127.0.0.1:$metrics_port)"
curl -s "http://127.0.0.1:$metrics_port/health"
curl -s "http://127.0.0.1:$metrics_port/ready"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^chtail_(rows_inserted_total|quarantined_total|lag_bytes|event_delay_seconds_count) '

echo
echo "== the dashboards' four figures for guild 111, from the raw events"
"$chtail" report --config "$work/chtail.toml" --guild 111 --days 7 --limit 3 --from raw

echo
echo "== chtail schema plan (the SQL apply would run; it changes nothing)"
"$chtail" schema plan --config "$work/chtail.toml" | head -n 24
echo "   ..."
echo "== chtail schema apply (chtail keeps running)"
"$chtail" schema apply --config "$work/chtail.toml"
echo "== chtail schema status"
"$chtail" schema status --config "$work/chtail.toml"
echo
echo "== the same report, now read from the rollups"
"$chtail" report --config "$work/chtail.toml" --guild 111 --days 7 --limit 3
for g in 111 222 333; do
  diff <("$chtail" report --config "$work/chtail.toml" --guild $g --json --from raw | grep -v '"source"') \
       <("$chtail" report --config "$work/chtail.toml" --guild $g --json --from rollups | grep -v '"source"')
done && echo "guilds 111, 222, 333: the rollups give exactly the raw events' figures"

echo "== stopping chtail (SIGTERM drains and commits)"
kill -TERM "$chtail_pid"
wait "$chtail_pid" && echo "chtail exited 0"
tail -n 2 "$work/chtail.log"
echo "== chtail status"
"$chtail" status --config "$work/chtail.toml"

#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
#   tests/run.sh            # unit, property and end-to-end tests, then the
#                           # Debian package install/upgrade/purge test
# The end-to-end tests start their own ClickHouse servers on free loopback
# ports; nothing may be listening on 8123 for them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v clickhouse-server >/dev/null 2>&1 || command -v clickhouse >/dev/null 2>&1 || need_apt+=(clickhouse-server)
command -v logrotate >/dev/null 2>&1 || need_apt+=(logrotate)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The package's checks: lintian; bash to load the completion.
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
# The unit under a real systemd (tests/systemd.sh).
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v strip >/dev/null 2>&1 || need_apt+=(binutils)
# Network faults: a namespace of the tests' own (ip) with iptables rules.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
# The cluster tests: ZooKeeper for the replicated tables (and its Java).
[ -e /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # The package's maintainer scripts try to start the service; tests start
  # their own servers, so a failure to start one here is harmless.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# A modern ClickHouse engine for the tests that need one (chdb embeds
# ClickHouse 26.9; tests/support/chdb_front.py serves it over HTTP).
if ! python3 -c 'import chdb, lz4.block' >/dev/null 2>&1; then
  echo "installing: chdb-core lz4 (PyPI)"
  pip_install() { python3 -m pip install -q --disable-pip-version-check "$@" chdb-core==26.9.0 lz4; }
  # Debian's own Python refuses system-wide installs unless told otherwise.
  pip_install 2>/dev/null || pip_install --break-system-packages
  python3 -c 'import chdb, lz4.block'
fi

cargo test --locked --lib --bins --tests -- --test-threads="${CHTAIL_TEST_THREADS:-4}" \
  --skip live:: --skip faults:: --skip network:: --skip cluster::

# The tests that write at the bot's pace (20,000 events/s through Python's
# logging) need the machine to themselves: one at a time, nothing beside.
# They run the release build, whose memory (peak RSS) they judge. The
# network faults (network::) run chtail and a server in a network namespace
# with iptables rules; they need root, and skip, saying why, without it.
# The cluster tests (cluster::) run ZooKeeper and three ClickHouse servers.
cargo test --release --locked --test e2e -- --test-threads=1 live:: faults:: network:: cluster::

# The Debian package: built, installed, upgraded and purged with dpkg
# (as root; skipped otherwise).
tests/package.sh

# The package under a real systemd as PID 1 (systemd-nspawn booting this
# machine's tree): READY, STATUS, the journal, reload, the watchdog, the
# sandbox, stop. Skipped, saying why, where systemd cannot boot.
tests/systemd.sh

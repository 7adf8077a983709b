#!/usr/bin/env bash
# Starts a throw-away PostgreSQL on 127.0.0.1 and a free port for the store tests and
# benchmarks. Prints shell `export` lines on stdout, so use it as:
#
#   eval "$(bash scripts/start-postgres.sh)"
#   ... tests read UDN_TEST_POSTGRES ...
#   bash scripts/stop-postgres.sh        # or: pg_ctl -D "$UDN_PG_DATA" stop
#
# Runs the server as the `postgres` user when started as root (PostgreSQL refuses root).
# Needs the Debian `postgresql` package (scripts/install-deps.sh).
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || { echo "start-postgres: no /usr/lib/postgresql/*/bin (install postgresql)" >&2; exit 1; }
base=$(mktemp -d /tmp/udn-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$base"
  as_pg=(runuser -u postgres --)
fi
# A free loopback port: ask the kernel for one, then hand it to PostgreSQL.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
"${as_pg[@]}" "$bindir/initdb" -D "$base/data" -U postgres -A trust --no-sync -E UTF8 >"$base/initdb.log" 2>&1 \
  || { cat "$base/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$bindir/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $base -c max_connections=200 -c fsync=on" start >&2 \
  || { cat "$base/server.log" >&2; exit 1; }
"${as_pg[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres udn_test >&2
url="postgres://postgres@127.0.0.1:$port/udn_test"
echo "start-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') at $url (data $base/data)" >&2
echo "export UDN_TEST_POSTGRES=$url"
echo "export UDN_PG_DATA=$base/data"
echo "export UDN_PG_BIN=$bindir"

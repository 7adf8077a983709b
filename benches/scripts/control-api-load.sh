#!/usr/bin/env bash
# Load benchmark of the control plane's REST API on its two stores: the same `udn
# control` binary on SQLite (default) and on PostgreSQL (`--postgres`), the same
# requests, the same client (wrk), interleaved rounds. Two requests:
#   me   GET /v1/me    with a bearer token: one session lookup (what every call pays)
#   cdn  GET /v1/cdn   session lookup + the current configuration read and filtered
# Reports the median round of each and the ratio PostgreSQL / SQLite.
#
# Everything listens on loopback; every process this script starts is stopped on exit.
# Usage:
#   bash benches/scripts/control-api-load.sh           # 3 rounds x 4 s per store and request
#   DURATION=5 ROUNDS=5 CONNS=16 bash benches/scripts/control-api-load.sh
# Needs: wrk, curl, python3, PostgreSQL (scripts/start-postgres.sh is used when
# UDN_TEST_POSTGRES is unset) and a release build of `udn` (built here if missing).
set -euo pipefail

DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
[ "$DURATION" -le 60 ] || { echo "DURATION is capped at 60 s" >&2; exit 2; }
[ "$ROUNDS" -le 10 ] || { echo "ROUNDS is capped at 10" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
UDN=${UDN:-$ROOT/target/release/udn}
if [ ! -x "$UDN" ]; then
  (cd "$ROOT" && cargo build --release -p udn-bins)
fi
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/udn-control-load.XXXXXX)
PIDS=()
STARTED_PG=""
cleanup() {
  # `start` runs in a command substitution (a subshell): its processes are known by
  # their pid files.
  for f in "$TMP"/*.pid; do [ -e "$f" ] && PIDS+=("$(cat "$f")"); done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$STARTED_PG" ]; then bash "$ROOT/scripts/stop-postgres.sh" >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

if [ -z "${UDN_TEST_POSTGRES:-}" ]; then
  eval "$(bash "$ROOT/scripts/start-postgres.sh")"
  STARTED_PG=1
fi
# A database of its own, so the run starts empty.
PGDB="udn_control_load_$$"
psql "$UDN_TEST_POSTGRES" -qc "DROP DATABASE IF EXISTS $PGDB"
psql "$UDN_TEST_POSTGRES" -qc "CREATE DATABASE $PGDB"
PG_URL="${UDN_TEST_POSTGRES%/*}/$PGDB"

# The sample network (the one embedded in `udn`) as the control plane's first version.
CONFIG="$TMP/network.toml"
cp "$ROOT/udn-core/src/sample.toml" "$CONFIG"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME EXTRA_ARGS... -> prints the API base URL
start() {
  local name=$1; shift
  local api_port portal_port listen_port
  api_port=$(free_port); portal_port=$(free_port); listen_port=$(free_port)
  "$UDN" control --listen "127.0.0.1:$listen_port" \
    --portal-listen "127.0.0.1:$portal_port" --api-listen "127.0.0.1:$api_port" \
    --bootstrap-admin admin:benchmark-password --config "$CONFIG" \
    --data-dir "$TMP/$name" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  echo $! >"$TMP/$name.pid"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$api_port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$api_port/health" >/dev/null \
    || { echo "udn control ($name) did not start:" >&2; cat "$TMP/$name.err" >&2; exit 1; }
  echo "https://127.0.0.1:$portal_port" >"$TMP/$name.portal"
  echo "http://127.0.0.1:$api_port"
}

# token NAME -> a bearer token. Passwords are taken over HTTPS only: the token is asked
# of the portal listener (its self-signed certificate, on loopback: -k), then used on
# the plain-HTTP API.
token() {
  curl -skf "$(cat "$TMP/$1.portal")/v1/auth/token" -H 'content-type: application/json' \
    -d '{"username":"admin","password":"benchmark-password"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

SQLITE=$(start sqlite)
PG=$(start postgres --postgres "$PG_URL")
SQLITE_TOKEN=$(token sqlite)
PG_TOKEN=$(token postgres)

# rps BASE TOKEN PATH -> requests per second (wrk, non-2xx answers are an error)
rps() {
  local out
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Authorization: Bearer $2" "$1$3")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers from $1$3:" >&2; echo "$out" >&2; exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "control API load: wrk -t1 -c$CONNS, $ROUNDS rounds x ${DURATION}s, $(nproc) cores"
printf '%-6s %14s %14s %8s\n' request "sqlite req/s" "postgres req/s" "pg/sqlite"
for req in me cdn; do
  path="/v1/$req"
  : >"$TMP/s.txt"; : >"$TMP/p.txt"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      rps "$SQLITE" "$SQLITE_TOKEN" "$path" >>"$TMP/s.txt"
      rps "$PG" "$PG_TOKEN" "$path" >>"$TMP/p.txt"
    else
      rps "$PG" "$PG_TOKEN" "$path" >>"$TMP/p.txt"
      rps "$SQLITE" "$SQLITE_TOKEN" "$path" >>"$TMP/s.txt"
    fi
  done
  s=$(median <"$TMP/s.txt"); p=$(median <"$TMP/p.txt")
  printf '%-6s %14.0f %14.0f %8.2f\n' "$req" "$s" "$p" "$(python3 -c "print($p/$s)")"
done

#!/usr/bin/env bash
# Load benchmark: cached 1 KiB and 1 MiB objects served by `udn edge` and, in the same
# run, by nginx (Debian package) configured as a caching reverse proxy (proxy_cache) of
# the same origin, with the same client (wrk) and the same bounded duration.
#
# Everything listens on loopback; every process this script starts is stopped by its
# pid on exit. Usage:
#   bash benches/scripts/edge-load.sh            # 10 s per run, wrk -t1 -c64
#   DURATION=5 CONNS=32 bash benches/scripts/edge-load.sh
#   LOGS=0 bash benches/scripts/edge-load.sh     # both without access logs
# Needs: nginx, wrk, curl, and a release build of `udn` (built here if missing).
set -euo pipefail

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-2}
LOGS=${LOGS:-1}
[ "$DURATION" -le 60 ] || { echo "DURATION is capped at 60 s" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
UDN=${UDN:-$ROOT/target/release/udn}
if [ ! -x "$UDN" ]; then
  (cd "$ROOT" && cargo build --release -p udn-bins)
fi
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/udn-edge-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
EDGE_PORT=$(free_port)

# The origin: static files with an hour of freshness, served by its own nginx.
mkdir -p "$TMP/www" "$TMP/ncache" "$TMP/logs" "$TMP/edge-logs"
head -c 1024 /dev/urandom > "$TMP/www/1k.bin"
head -c 1048576 /dev/urandom > "$TMP/www/1m.bin"

USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root;"
if [ "$LOGS" = 1 ]; then
  NGINX_LOG="access_log $TMP/logs/cache-access.log combined buffer=64k flush=1s;"
  EDGE_LOG=(--log-dir "$TMP/edge-logs")
else
  NGINX_LOG="access_log off;"
  EDGE_LOG=()
fi

cat > "$TMP/origin.conf" <<CONF
$USER_LINE
worker_processes 1;
pid $TMP/origin.pid;
error_log $TMP/logs/origin-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $TMP/www;
    location / { expires 1h; }
  }
}
CONF

cat > "$TMP/cache.conf" <<CONF
$USER_LINE
worker_processes $WORKERS;
pid $TMP/cache.pid;
error_log $TMP/logs/cache-error.log;
events { worker_connections 4096; }
http {
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  $NGINX_LOG
  proxy_cache_path $TMP/ncache levels=1:2 keys_zone=edge:10m max_size=1g inactive=1h;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT;
      proxy_cache edge;
      proxy_http_version 1.1;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
CONF

nginx -p "$TMP" -c "$TMP/origin.conf" -g 'daemon off;' &
PIDS+=($!)
nginx -p "$TMP" -c "$TMP/cache.conf" -g 'daemon off;' &
PIDS+=($!)
"$UDN" edge --listen "127.0.0.1:$EDGE_PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" \
  --pop bench "${EDGE_LOG[@]}" 2>"$TMP/logs/edge.err" &
PIDS+=($!)

for port in $ORIGIN_PORT $NGINX_PORT $EDGE_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/1k.bin" && break
    sleep 0.1
  done
done

# Warm both caches and check that the second answer is a hit.
for port in $NGINX_PORT $EDGE_PORT; do
  for obj in 1k.bin 1m.bin; do
    curl -s -o /dev/null "http://127.0.0.1:$port/$obj"
    sleep 0.2
    status=$(curl -s -o /dev/null -D - "http://127.0.0.1:$port/$obj" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
    echo "warm: port $port $obj -> X-Cache: $status"
  done
done

# wrk's Transfer/sec in MB/s (MiB units as wrk prints them).
to_mb() {
  awk '{v=$1; u=$1; gsub(/[0-9.]/,"",u); gsub(/[A-Za-z]/,"",v);
        f=1; if(u=="B")f=1/1048576; if(u=="KB")f=1/1024; if(u=="MB")f=1; if(u=="GB")f=1024;
        printf "%.1f", v*f}'
}

declare -A RPS MBS
run() { # name url
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "$2")
  RPS[$1]=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  MBS[$1]=$(echo "$out" | awk '/Transfer\/sec/{print $2}' | to_mb)
  echo "$1: ${RPS[$1]} req/s, ${MBS[$1]} MB/s"
  if echo "$out" | grep -q -e 'Non-2xx' -e 'Socket errors'; then
    echo "$out" | grep -e 'Non-2xx' -e 'Socket errors' | sed "s/^/  $1 WARNING: /"
  fi
}

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s; nginx worker_processes $WORKERS; access logs: $LOGS"
run udn-1k "http://127.0.0.1:$EDGE_PORT/1k.bin"
run nginx-1k "http://127.0.0.1:$NGINX_PORT/1k.bin"
run udn-1m "http://127.0.0.1:$EDGE_PORT/1m.bin"
run nginx-1m "http://127.0.0.1:$NGINX_PORT/1m.bin"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
echo
printf "%-8s %14s %14s %10s %12s %12s %10s\n" object "udn req/s" "nginx req/s" ratio "udn MB/s" "nginx MB/s" ratio
for o in 1k 1m; do
  printf "%-8s %14s %14s %10s %12s %12s %10s\n" "$o" "${RPS[udn-$o]}" "${RPS[nginx-$o]}" \
    "$(ratio "${RPS[udn-$o]}" "${RPS[nginx-$o]}")x" "${MBS[udn-$o]}" "${MBS[nginx-$o]}" \
    "$(ratio "${MBS[udn-$o]}" "${MBS[nginx-$o]}")x"
done

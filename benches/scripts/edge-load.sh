#!/usr/bin/env bash
# Load benchmark: cached 1 KiB and 1 MiB objects served by `udn edge` and, in the same
# run, by nginx (Debian package) configured as a caching reverse proxy (proxy_cache) and
# by Varnish (Debian package, malloc storage) in front of the same origin, with the same
# client (wrk) and the same bounded duration.
#
# The references run in their fastest configuration (nginx `access_log off`, Varnish
# without varnishncsa), UDN with its access log on (a CDN must log). Everything listens
# on loopback; every process this script starts is stopped by its pid on exit. Usage:
#   bash benches/scripts/edge-load.sh            # 5 rounds x 4 s per server and object
#   DURATION=10 ROUNDS=1 CONNS=32 bash benches/scripts/edge-load.sh
#   CONNS_1K=64 CONNS_1M=16 bash benches/scripts/edge-load.sh   # the defaults
#   LOGS=0 bash benches/scripts/edge-load.sh     # udn without its access log too
#   NGINX_LOGS=1 ...                             # nginx with a buffered access log
# Needs: nginx, varnish, wrk, curl, and a release build of `udn` (built here if missing).
set -euo pipefail

# Each round runs udn, nginx and Varnish back to back (rotating who goes first); the
# table reports the median of the per-round ratios, so a burst of other load on the
# machine hits all of them.
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-5}
CONNS_1K=${CONNS_1K:-${CONNS:-64}}
CONNS_1M=${CONNS_1M:-${CONNS:-16}}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-2}
LOGS=${LOGS:-1}
NGINX_LOGS=${NGINX_LOGS:-0}
[ "$DURATION" -le 60 ] || { echo "DURATION is capped at 60 s" >&2; exit 2; }
[ "$ROUNDS" -le 10 ] || { echo "ROUNDS is capped at 10" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
UDN=${UDN:-$ROOT/target/release/udn}
if [ ! -x "$UDN" ]; then
  (cd "$ROOT" && cargo build --release -p udn-bins)
fi
for tool in nginx varnishd wrk curl; do
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
VARNISH_PORT=$(free_port)
EDGE_PORT=$(free_port)

# The origin: static files with an hour of freshness, served by its own nginx.
mkdir -p "$TMP/www" "$TMP/ncache" "$TMP/logs" "$TMP/edge-logs"
head -c 1024 /dev/urandom > "$TMP/www/1k.bin"
head -c 1048576 /dev/urandom > "$TMP/www/1m.bin"

USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root;"
if [ "$LOGS" = 1 ]; then
  EDGE_LOG=(--log-dir "$TMP/edge-logs")
else
  EDGE_LOG=()
fi
if [ "$NGINX_LOGS" = 1 ]; then
  NGINX_LOG="access_log $TMP/logs/cache-access.log combined buffer=64k flush=1s;"
else
  NGINX_LOG="access_log off;"
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
# Varnish: the Debian defaults (2 thread pools) with malloc storage; the origin's
# `expires 1h` makes every object cacheable.
varnishd -F -a "127.0.0.1:$VARNISH_PORT" -b "127.0.0.1:$ORIGIN_PORT" -s malloc,512m \
  -n "$TMP/varnish" -p thread_pools="$WORKERS" >"$TMP/logs/varnish.out" 2>&1 &
PIDS+=($!)
"$UDN" edge --listen "127.0.0.1:$EDGE_PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" \
  --pop bench "${EDGE_LOG[@]}" 2>"$TMP/logs/edge.err" &
PIDS+=($!)

for port in $ORIGIN_PORT $NGINX_PORT $VARNISH_PORT $EDGE_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/1k.bin" && break
    sleep 0.1
  done
done

# Warm both caches and check that the second answer is a hit.
for port in $NGINX_PORT $VARNISH_PORT $EDGE_PORT; do
  for obj in 1k.bin 1m.bin; do
    curl -s -o /dev/null "http://127.0.0.1:$port/$obj"
    sleep 0.2
    # nginx and udn say X-Cache; Varnish shows a hit as a non-zero Age.
    status=$(curl -s -o /dev/null -D - "http://127.0.0.1:$port/$obj" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"||tolower($1)=="age"{printf "%s=%s ", $1, $2}')
    echo "warm: port $port $obj -> $status"
  done
done

# wrk's Transfer/sec in MB/s (MiB units as wrk prints them).
to_mb() {
  awk '{v=$1; u=$1; gsub(/[0-9.]/,"",u); gsub(/[A-Za-z]/,"",v);
        f=1; if(u=="B")f=1/1048576; if(u=="KB")f=1/1024; if(u=="MB")f=1; if(u=="GB")f=1024;
        printf "%.1f", v*f}'
}

declare -A RPS MBS
run() { # name url connections
  local out rps mbs
  out=$(wrk -t"$THREADS" -c"$3" -d"${DURATION}s" "$2")
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  mbs=$(echo "$out" | awk '/Transfer\/sec/{print $2}' | to_mb)
  RPS[$1]="${RPS[$1]:-} $rps"
  MBS[$1]="${MBS[$1]:-} $mbs"
  echo "  $1: $rps req/s, $mbs MB/s"
  if echo "$out" | grep -q -e 'Non-2xx' -e 'Socket errors'; then
    echo "$out" | grep -e 'Non-2xx' -e 'Socket errors' | sed "s/^/  $1 WARNING: /"
  fi
}
median() { echo "$@" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

declare -A PORT=([udn]=$EDGE_PORT [nginx]=$NGINX_PORT [varnish]=$VARNISH_PORT)
declare -A CONNS_OF=([1k]=$CONNS_1K [1m]=$CONNS_1M)
ORDER=(udn nginx varnish)
echo "wrk -t$THREADS -c$CONNS_1K (1 KiB) / -c$CONNS_1M (1 MiB) -d${DURATION}s x $ROUNDS rounds; nginx worker_processes $WORKERS, Varnish thread_pools $WORKERS; udn access log: $LOGS, nginx access log: $NGINX_LOGS"
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  for o in 1k 1m; do
    for i in 0 1 2; do
      s=${ORDER[$(( (i + r) % 3 ))]}
      run "$s-$o" "http://127.0.0.1:${PORT[$s]}/$o.bin" "${CONNS_OF[$o]}"
    done
  done
done
# Paired ratios: udn over each reference within each round, then their median (robust
# against load that other processes put on the machine between rounds).
declare -A RATIO_RPS RATIO_MBS
ratios() { # udn-values ref-values
  local -a u n; local out=""
  read -r -a u <<<"$1"; read -r -a n <<<"$2"
  for i in "${!u[@]}"; do
    out="$out $(awk -v a="${u[$i]}" -v b="${n[$i]}" 'BEGIN{ if (b>0) printf "%.3f", a/b; else print 0 }')"
  done
  echo "$out"
}
for ref in nginx varnish; do
  for o in 1k 1m; do
    rr=$(ratios "${RPS[udn-$o]}" "${RPS[$ref-$o]}")
    rm=$(ratios "${MBS[udn-$o]}" "${MBS[$ref-$o]}")
    echo "paired ratios udn/$ref $o (req/s): $rr"
    RATIO_RPS[$ref-$o]=$(median $rr)
    RATIO_MBS[$ref-$o]=$(median $rm)
  done
done
for k in "${!RPS[@]}"; do
  RPS[$k]=$(median ${RPS[$k]})
  MBS[$k]=$(median ${MBS[$k]})
done

echo
echo "medians of $ROUNDS rounds (ratio = median of the per-round udn/reference ratios):"
printf "%-8s %-8s %12s %12s %8s %10s %10s %8s\n" object ref "udn req/s" "ref req/s" ratio "udn MB/s" "ref MB/s" ratio
for o in 1k 1m; do
  for ref in nginx varnish; do
    printf "%-8s %-8s %12s %12s %8s %10s %10s %8s\n" "$o" "$ref" "${RPS[udn-$o]}" "${RPS[$ref-$o]}" \
      "$(printf %.2f "${RATIO_RPS[$ref-$o]}")x" "${MBS[udn-$o]}" "${MBS[$ref-$o]}" \
      "$(printf %.2f "${RATIO_MBS[$ref-$o]}")x"
  done
done
echo "targets (issue 15, point 7): 1k udn/nginx req/s >= 1.0x at -c64; 1m udn/varnish MB/s >= 1.0x at -c16"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

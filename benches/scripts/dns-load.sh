#!/usr/bin/env bash
# DNS load benchmark: dnsperf against `udn dns` and against NSD serving the same zone,
# in the same run, interleaved, on loopback only. Prints QPS, lost queries and ratios.
#
#   bash benches/scripts/dns-load.sh            # 10 s per run, 2 rounds
#   SECS=5 ROUNDS=1 bash benches/scripts/dns-load.sh
#
# Runs:
#   static: `udn dns --zone Z` vs NSD, same 10k-name zone, same query file;
#   gtm:    `udn dns --config` (the sample network; every query is a GTM/CDN decision
#           with the query log on) vs NSD on the static zone.
# Needs: dnsperf, nsd, dig (scripts/install-deps.sh). Every load is bounded by -l SECS.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-2}
NAMES=${NAMES:-10000}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-100}
for tool in dnsperf nsd dig; do
  command -v "$tool" >/dev/null || { echo "dns-load: $tool missing (scripts/install-deps.sh)" >&2; exit 1; }
done

cargo build --release -q -p udn-bins
UDN=target/release/udn
WORK=$(mktemp -d /tmp/udn-dns-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 - <<'PY'
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        t.close(); u.close()
PY
}

# The zone: SOA, NS and NAMES A records; the query file asks each name once (A).
ZONE=$WORK/bench.zone
{
  echo '$ORIGIN bench.example.'
  echo '$TTL 300'
  echo '@ IN SOA ns1 hostmaster ( 1 7200 900 1209600 60 )'
  echo '@ IN NS ns1'
  echo 'ns1 IN A 127.0.0.53'
  for i in $(seq 1 "$NAMES"); do echo "h$i IN A 10.$((i / 65536 % 256)).$((i / 256 % 256)).$((i % 256))"; done
} > "$ZONE"
seq 1 "$NAMES" | shuf --random-source=<(yes) | sed 's/^/h/; s/$/.bench.example A/' > "$WORK/static.queries"
# GTM queries: the sample network's GTM and CDN hostnames, A.
for i in $(seq 1 1000); do echo "www.shop.udn.example A"; echo "cdn.shop.udn.example A"; done > "$WORK/gtm.queries"

# NSD with its own config: no RRL (all loopback traffic is one source), 2 servers.
NSD_PORT=$(free_port)
mkdir -p "$WORK/nsd"
cp "$ZONE" "$WORK/nsd/bench.zone"
cat > "$WORK/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  port: $NSD_PORT
  server-count: 2
  username: ""
  chroot: ""
  zonesdir: "$WORK/nsd"
  database: ""
  zonelistfile: "$WORK/nsd/zone.list"
  xfrdfile: "$WORK/nsd/xfrd.state"
  xfrdir: "$WORK/nsd"
  pidfile: "$WORK/nsd/nsd.pid"
  logfile: "$WORK/nsd/nsd.log"
  verbosity: 0
  hide-version: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  tcp-count: 100
  reuseport: yes
remote-control:
  control-enable: no
zone:
  name: bench.example
  zonefile: bench.zone
CONF
nsd -d -c "$WORK/nsd/nsd.conf" &
PIDS+=($!)

UDN_PORT=$(free_port)
"$UDN" dns --zone "$ZONE" --listen "127.0.0.1:$UDN_PORT" >"$WORK/udn-static.log" 2>&1 &
PIDS+=($!)

# The sample network with its zone, for GTM decisions; query log on.
GTM_PORT=$(free_port)
cp udn-core/src/sample.toml "$WORK/network.toml"
"$UDN" dns --config "$WORK/network.toml" --listen "127.0.0.1:$GTM_PORT" --log-dir "$WORK/logs" --name bench >"$WORK/udn-gtm.log" 2>&1 &
GTM_PID=$!
PIDS+=($GTM_PID)

wait_up() { # port name
  for _ in $(seq 1 100); do
    if dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" "$2" A >/dev/null 2>&1 && \
       [ -n "$(dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" "$2" A)" ]; then return 0; fi
    sleep 0.1
  done
  echo "dns-load: server on port $1 did not answer $2" >&2; exit 1
}
wait_up "$NSD_PORT" h1.bench.example
wait_up "$UDN_PORT" h1.bench.example
wait_up "$GTM_PORT" www.shop.udn.example
# Same answers from both for a sample of names.
for n in h1 h77 h$NAMES; do
  a=$(dig +short @127.0.0.1 -p "$NSD_PORT" $n.bench.example A); b=$(dig +short @127.0.0.1 -p "$UDN_PORT" $n.bench.example A)
  [ "$a" = "$b" ] || { echo "dns-load: answers differ for $n: nsd=$a udn=$b" >&2; exit 1; }
done

run() { # label port queryfile -> prints "qps lost sent"
  local out
  out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$3" -l "$SECS" -c "$CLIENTS" -T 1 -q "$OUTSTANDING" 2>&1)
  local qps lost sent
  qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
  sent=$(echo "$out" | awk '/Queries sent:/ {print $3}')
  printf '%-12s qps=%-12s sent=%-10s lost=%s\n' "$1" "$qps" "$sent" "$lost" >&2
  echo "$qps $lost"
}

declare -A SUM LOST
for k in nsd udn_static udn_gtm; do SUM[$k]=0; LOST[$k]=0; done
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS (${SECS}s each)" >&2
  for k in nsd udn_static nsd udn_gtm; do
    case $k in
      nsd) res=$(run nsd "$NSD_PORT" "$WORK/static.queries") ;;
      udn_static) res=$(run udn-static "$UDN_PORT" "$WORK/static.queries") ;;
      udn_gtm) res=$(run udn-gtm "$GTM_PORT" "$WORK/gtm.queries") ;;
    esac
    read -r q l <<<"$res"
    SUM[$k]=$(python3 -c "print(${SUM[$k]} + $q)")
    LOST[$k]=$((${LOST[$k]} + l))
  done
done
# NSD ran twice per round.
python3 - "${SUM[nsd]}" "${SUM[udn_static]}" "${SUM[udn_gtm]}" "$ROUNDS" "${LOST[nsd]}" "${LOST[udn_static]}" "${LOST[udn_gtm]}" <<'PY'
import sys
nsd, st, gtm, rounds = float(sys.argv[1]) / (2 * int(sys.argv[4])), float(sys.argv[2]) / int(sys.argv[4]), float(sys.argv[3]) / int(sys.argv[4]), int(sys.argv[4])
ln, ls, lg = sys.argv[5:8]
print(f"NSD static         : {nsd:12.0f} qps  (lost {ln})")
print(f"udn static (--zone): {st:12.0f} qps  (lost {ls})  ratio {st / nsd:.2f}x NSD")
print(f"udn GTM decisions  : {gtm:12.0f} qps  (lost {lg})  ratio {gtm / nsd:.2f}x NSD")
PY
logs=$(cat "$WORK"/logs/*.jsonl* 2>/dev/null | grep -c '"type":"dns"' || true)
echo "query-log records written by the GTM server: $logs"

#!/usr/bin/env bash
# DNS load benchmark: dnsperf against `udn dns` and against NSD serving the same zone,
# in the same run, interleaved, on loopback only. Prints QPS, lost queries and ratios.
#
#   bash benches/scripts/dns-load.sh            # 10 s per run, 3 rounds (about 2 minutes)
#   SECS=5 ROUNDS=5 bash benches/scripts/dns-load.sh
#
# Runs:
#   static: `udn dns --zone Z` vs NSD, same 10k-name zone, same query file;
#   gtm:    `udn dns --config` (the sample network; every query is a GTM/CDN decision
#           with the query log on) vs NSD on the static zone.
# Server CPU per query: user + system time of the server's processes (all threads; NSD's
# children too) over the run, from /proc, divided by the queries answered.
#
# Response rate limiting stays ON for both udn servers (with cookies on by default):
# every answer is counted in the RRL table. dnsperf sends everything from 127.0.0.1,
# one /24, so the default 200 answers/s per name would limit it; the bench raises the
# rate to the maximum (--rrl-rate 16777215) instead of exempting the client, so the
# table work is measured and no query is limited. NSD runs without RRL.
# Needs: dnsperf, nsd, dig (scripts/install-deps.sh). Every load is bounded by -l SECS.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
NAMES=${NAMES:-10000}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-100}
# Extra flags for both udn servers, e.g. UDN_FLAGS="--udp-sockets 1".
UDN_FLAGS=${UDN_FLAGS:-}
RRL_FLAGS=${RRL_FLAGS:---rrl-rate 16777215}
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
NSD_PID=$!
PIDS+=($NSD_PID)

UDN_PORT=$(free_port)
"$UDN" dns $UDN_FLAGS $RRL_FLAGS --zone "$ZONE" --listen "127.0.0.1:$UDN_PORT" >"$WORK/udn-static.log" 2>&1 &
UDN_PID=$!
PIDS+=($UDN_PID)

# The sample network with its zone, for GTM decisions; query log on.
GTM_PORT=$(free_port)
cp udn-core/src/sample.toml "$WORK/network.toml"
"$UDN" dns $UDN_FLAGS $RRL_FLAGS --config "$WORK/network.toml" --listen "127.0.0.1:$GTM_PORT" --log-dir "$WORK/logs" --name bench >"$WORK/udn-gtm.log" 2>&1 &
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

cpu_ticks() { # pid -> user+system clock ticks of it and its descendants
  local total=0 p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
  for p in $1 $kids $(for k in $kids; do ps -o pid= --ppid "$k" 2>/dev/null || true; done); do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command name, which may hold spaces (NSD's children are named
    # "nsd: server 1"): utime and stime are the 12th and 13th after it.
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

run() { # label port queryfile pid -> prints "qps lost cpu_us_per_query"
  local out c0 c1
  c0=$(cpu_ticks "$4")
  out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$3" -l "$SECS" -c "$CLIENTS" -T 1 -q "$OUTSTANDING" 2>&1)
  c1=$(cpu_ticks "$4")
  local qps lost sent cpu
  qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
  sent=$(echo "$out" | awk '/Queries sent:/ {print $3}')
  cpu=$(python3 -c "import os; t=os.sysconf('SC_CLK_TCK'); print(f'{($c1 - $c0) / t * 1e6 / max(1, $sent - $lost):.3f}')")
  printf '%-12s qps=%-12s sent=%-10s lost=%-6s cpu/query=%s us\n' "$1" "$qps" "$sent" "$lost" "$cpu" >&2
  echo "$qps $lost $cpu"
}

# Each round: NSD, udn static, NSD, udn GTM. Each udn run is compared with the NSD runs
# next to it (the machine's load drifts), and the per-round ratios are summarised by
# their median.
RESULTS=$WORK/results.txt
: > "$RESULTS"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS (${SECS}s each)" >&2
  read -r n1 l1 c1 <<<"$(run nsd "$NSD_PORT" "$WORK/static.queries" "$NSD_PID")"
  read -r us ls cs <<<"$(run udn-static "$UDN_PORT" "$WORK/static.queries" "$UDN_PID")"
  read -r n2 l2 c2 <<<"$(run nsd "$NSD_PORT" "$WORK/static.queries" "$NSD_PID")"
  read -r ug lg cg <<<"$(run udn-gtm "$GTM_PORT" "$WORK/gtm.queries" "$GTM_PID")"
  echo "$n1 $l1 $us $ls $n2 $l2 $ug $lg $c1 $cs $c2 $cg" >> "$RESULTS"
done
python3 - "$RESULTS" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
nsd = [x for r in rows for x in (r[0], r[4])]
ust = [r[2] for r in rows]; ugt = [r[6] for r in rows]
rs = [r[2] / ((r[0] + r[4]) / 2) for r in rows]
rg = [r[6] / r[4] for r in rows]
lost = lambda idx: int(sum(r[idx] for r in rows))
print(f"rounds: {len(rows)}")
print(f"NSD static          : median {st.median(nsd):10.0f} qps  (runs {', '.join(f'{x:.0f}' for x in nsd)}; lost {lost(1) + lost(5)})")
print(f"udn static (--zone) : median {st.median(ust):10.0f} qps  (lost {lost(3)})  ratio to adjacent NSD: median {st.median(rs):.2f}x  (rounds {', '.join(f'{x:.2f}' for x in rs)})")
print(f"udn GTM decisions   : median {st.median(ugt):10.0f} qps  (lost {lost(7)})  ratio to adjacent NSD: median {st.median(rg):.2f}x  (rounds {', '.join(f'{x:.2f}' for x in rg)})")
# CPU per query: udn over the mean of the NSD runs next to it.
cs = [r[9] / ((r[8] + r[10]) / 2) for r in rows]
cg = [r[11] / r[10] for r in rows]
print(f"server CPU per query: NSD median {st.median([x for r in rows for x in (r[8], r[10])]):.2f} us, udn static {st.median([r[9] for r in rows]):.2f} us, udn GTM {st.median([r[11] for r in rows]):.2f} us")
print(f"CPU per query ratio : static median {st.median(cs):.2f}x (rounds {', '.join(f'{x:.2f}' for x in cs)}); GTM median {st.median(cg):.2f}x (rounds {', '.join(f'{x:.2f}' for x in cg)})")
PY
logs=$(cat "$WORK"/logs/*.jsonl* 2>/dev/null | grep -c '"type":"dns"' || true)
echo "query-log records written by the GTM server: $logs"

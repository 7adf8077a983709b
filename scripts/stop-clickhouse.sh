#!/usr/bin/env bash
# Stops the ClickHouse started by scripts/start-clickhouse.sh and removes its files.
set -euo pipefail
[ -n "${UDN_CH_BASE:-}" ] || { echo "stop-clickhouse: UDN_CH_BASE not set" >&2; exit 0; }
if [ -f "$UDN_CH_BASE/pid" ]; then
  pid=$(cat "$UDN_CH_BASE/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
fi
rm -rf "$UDN_CH_BASE"

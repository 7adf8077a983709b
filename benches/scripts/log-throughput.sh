#!/usr/bin/env bash
# Log pipeline throughput (records/s from written log files to rows in the store) for
# SQLite and PostgreSQL. Starts a throw-away PostgreSQL unless UDN_TEST_POSTGRES is set.
# Bounded: RECORDS records (default 1,000,000), written once.
#   bash benches/scripts/log-throughput.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
records=${1:-1000000}
cargo build --release -q -p udn-bins --bin udn
cargo build --release -q -p udn-benches --bin log-throughput
if [ -z "${UDN_TEST_POSTGRES:-}" ]; then
  eval "$(bash scripts/start-postgres.sh)"
  trap 'bash scripts/stop-postgres.sh' EXIT
fi
nproc_=$(nproc); echo "machine: $nproc_ cores, $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/log-throughput --records "$records" --postgres "$UDN_TEST_POSTGRES" --udn target/release/udn

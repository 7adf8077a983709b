#!/usr/bin/env bash
# The README's test command: everything the tests need, then `cargo test --workspace`.
#
#  1. installs the system packages the tests use (scripts/install-deps.sh: dig, curl,
#     sqlite3, nsd, nginx, PostgreSQL, ClickHouse, Chromium + ChromeDriver, aiosmtpd;
#     needs root or sudo, and is a no-op when they are present);
#  2. starts a throw-away PostgreSQL and a throw-away ClickHouse on loopback for the
#     store tests (both stopped on exit);
#  3. runs `cargo test --workspace` with any extra arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
eval "$(bash scripts/start-postgres.sh)"
trap 'bash scripts/stop-postgres.sh' EXIT
eval "$(bash scripts/start-clickhouse.sh)"
trap 'bash scripts/stop-clickhouse.sh; bash scripts/stop-postgres.sh' EXIT
cargo test --workspace "$@"

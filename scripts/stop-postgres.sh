#!/usr/bin/env bash
# Stops the PostgreSQL started by scripts/start-postgres.sh and removes its files.
set -euo pipefail
[ -n "${UDN_PG_DATA:-}" ] || { echo "stop-postgres: UDN_PG_DATA not set" >&2; exit 0; }
bindir=${UDN_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
"${as_pg[@]}" "$bindir/pg_ctl" -D "$UDN_PG_DATA" -m fast -w stop >&2 || true
rm -rf "$(dirname "$UDN_PG_DATA")"

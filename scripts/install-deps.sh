#!/usr/bin/env bash
# Installs the system packages the tests and benchmarks use (Debian 12). Idempotent;
# needs root (or sudo). Each package is listed with the test that needs it.
set -euo pipefail
PKGS=(
  bind9-dnsutils   # dig: DNS integration tests
  dnsperf          # benches/scripts/dns-load.sh
  nsd              # reference authoritative server for the DNS load benchmark
  nginx            # reference cache for the edge load benchmark
  wrk              # HTTP load client
  curl             # edge integration tests (udn-bins/tests/edge.rs): the real HTTP client
  openssl          # edge HTTPS test: self-signed certificates per hostname
  postgresql       # the store's PostgreSQL tests
  chromium         # portal browser tests
  chromium-driver
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"

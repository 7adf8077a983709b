#!/usr/bin/env bash
# Installs the system packages the tests and benchmarks use (Debian 12). Idempotent;
# needs root (or sudo). Each package is listed with the test that needs it.
set -euo pipefail
PKGS=(
  bind9-dnsutils   # dig: DNS integration tests
  dnsperf          # benches/scripts/dns-load.sh
  nsd              # reference authoritative server for the DNS load benchmark
  nginx            # reference cache for the edge load benchmark
  varnish          # second reference cache for the edge load benchmark (malloc storage)
  wrk              # HTTP load client
  curl             # edge tests and the README tour's CDN requests: the real HTTP client
  openssl          # edge HTTPS test: self-signed certificates per hostname
  sqlite3          # the README tour's store query (udn-bins/tests/it/demo.rs)
  poppler-utils    # pdftotext: reads the PDF invoices back (udn-bins/tests/it/billing_delivery.rs)
  ffmpeg           # a live HLS stream and its viewers (udn-bins/tests/it/edge_hls.rs)
  postgresql       # the store's PostgreSQL tests
  clickhouse-server # the log store's ClickHouse tests (scripts/start-clickhouse.sh; Debian ships 18.16)
  clickhouse-client
  chromium         # portal browser tests
  chromium-driver
  util-linux       # unshare: the ICMP datagram test's own network namespace (probe_latency.rs)
  iproute2         # ip: brings loopback up inside that namespace
  procps           # sysctl: opens ping_group_range inside that namespace only
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Python packages from PyPI, for whichever python3 is first on PATH.
#   aiosmtpd: the real SMTP server the billing delivery tests start on loopback
#   (udn-bins/tests/it/billing_delivery.rs).
#   pyftpdlib: the real FTP server of the FTP service tests (udn-probe/tests/agent_ftp.rs,
#   udn-bins/tests/it/probe_dns_e2e.rs).
PY_PKGS=(aiosmtpd==1.4.6 pyftpdlib==1.5.10)
if command -v python3 >/dev/null && ! python3 -c "import aiosmtpd, pyftpdlib" 2>/dev/null; then
  echo "install-deps: pip installing ${PY_PKGS[*]}"
  python3 -m pip install --quiet "${PY_PKGS[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${PY_PKGS[@]}"
fi
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

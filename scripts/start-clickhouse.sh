#!/usr/bin/env bash
# Starts a throw-away ClickHouse on 127.0.0.1 and free ports for the store tests and the
# year-long chart bench. Prints shell `export` lines on stdout, so use it as:
#
#   eval "$(bash scripts/start-clickhouse.sh)"
#   ... tests read UDN_TEST_CLICKHOUSE ...
#   bash scripts/stop-clickhouse.sh
#
# Needs the Debian `clickhouse-server` package (scripts/install-deps.sh; Debian 12 ships
# 18.16, an old release: UDN's SQL is written for it and for current releases alike). The
# server runs in the background with its own config, data directory and a `default` user
# without password that only 127.0.0.1 may use.
set -euo pipefail
bin=$(command -v clickhouse-server || true)
[ -n "$bin" ] || { echo "start-clickhouse: no clickhouse-server (install clickhouse-server)" >&2; exit 1; }
base=$(mktemp -d /tmp/udn-ch.XXXXXX)
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
http_port=$(free_port)
tcp_port=$(free_port)
mkdir -p "$base/data" "$base/tmp" "$base/log"
cat > "$base/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
XML
cat > "$base/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$base/log/server.log</log><errorlog>$base/log/error.log</errorlog><console>0</console></logger>
  <http_port>$http_port</http_port>
  <tcp_port>$tcp_port</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$base/data/</path>
  <tmp_path>$base/tmp/</tmp_path>
  <users_config>$base/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>104857600</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
user_args=()
# ClickHouse refuses to run as root only in newer releases; run it as the clickhouse user
# when that exists so its files belong to it.
if [ "$(id -u)" -eq 0 ] && id clickhouse >/dev/null 2>&1; then
  chown -R clickhouse: "$base"
  user_args=(runuser -u clickhouse --)
fi
"${user_args[@]}" "$bin" --config-file="$base/config.xml" >"$base/log/stdout.log" 2>&1 &
echo $! > "$base/pid"
url="http://127.0.0.1:$http_port"
for _ in $(seq 1 300); do
  if curl -sf "$url/ping" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$base/pid")" 2>/dev/null; then
    cat "$base/log/stdout.log" "$base/log/error.log" >&2 2>/dev/null || true
    echo "start-clickhouse: the server exited" >&2; exit 1
  fi
  sleep 0.1
done
curl -sf "$url/ping" >/dev/null || { echo "start-clickhouse: no answer on $url after 30 s" >&2; exit 1; }
version=$(curl -sf "$url/" --data-binary 'SELECT version()' || echo unknown)
echo "start-clickhouse: ClickHouse $version at $url (data $base)" >&2
echo "export UDN_TEST_CLICKHOUSE=$url"
echo "export UDN_CH_BASE=$base"

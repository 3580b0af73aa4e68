#!/usr/bin/env bash
# Dragonflow's whole test suite, from a fresh Debian machine with Rust:
# installs what the tests need, starts the services they talk to (the Kafka-compatible broker
# tansu and InfluxDB 1.x) on loopback ports of its own with data directories of their own,
# runs every test, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- System packages: build tools for the bundled librdkafka, InfluxDB 1.x.
apt_missing=()
for tool in cc c++ make perl python3; do
  command -v "$tool" >/dev/null 2>&1 || apt_missing+=(build-essential perl python3)
done
command -v influxd >/dev/null 2>&1 || apt_missing+=(influxdb)
# Debian's package lands in the system Python, which may not be the first python3 on PATH.
{ python3 -c 'import aiosmtpd' || /usr/bin/python3 -c 'import aiosmtpd'; } >/dev/null 2>&1 || apt_missing+=(python3-aiosmtpd)
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# --- The Kafka-compatible broker (built once; about 10 minutes).
if ! tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
  log "building tansu 0.6.0 (cargo install, once)"
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi

# --- A Kafka client we did not write, for the outside check.
if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
  log "installing confluent-kafka (PyPI)"
  python3 -m pip install -q --disable-pip-version-check confluent-kafka
fi

# --- Start the services on free loopback ports; stop them on exit, by pid.
work=$(mktemp -d -t dragonflow-tests.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_tcp() { # host port seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

kafka_port=$(free_port)
log "starting tansu on 127.0.0.1:$kafka_port"
tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
wait_tcp 127.0.0.1 "$kafka_port" 30 || { cat "$work/tansu.log"; echo "tansu did not start" >&2; exit 1; }

influx_port=$(free_port)
influx_rpc=$(free_port)
mkdir -p "$work/influxdb"
cat >"$work/influxdb/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$influx_rpc"
[meta]
  dir = "$work/influxdb/meta"
[data]
  dir = "$work/influxdb/data"
  wal-dir = "$work/influxdb/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false
CONF
log "starting influxd on 127.0.0.1:$influx_port"
influxd -config "$work/influxdb/influxdb.conf" >"$work/influxd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$influx_port/ping")" = 204 ] && break
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$influx_port/ping")" = 204 ] \
  || { cat "$work/influxd.log"; echo "influxd did not start" >&2; exit 1; }

export DRAGONFLOW_TEST_KAFKA="127.0.0.1:$kafka_port"
export DRAGONFLOW_TEST_INFLUX="http://127.0.0.1:$influx_port"

# --- Tests.
log "cargo test --workspace (Kafka at $DRAGONFLOW_TEST_KAFKA, InfluxDB at $DRAGONFLOW_TEST_INFLUX)"
export RUST_BACKTRACE=1
cargo test --workspace --locked "$@"

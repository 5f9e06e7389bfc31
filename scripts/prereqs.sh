#!/usr/bin/env bash
# Installs what building and running sluice needs beyond Rust itself:
# the bundled librdkafka's build tools (cmake, a C++ compiler), python3-venv
# for the demo's MongoDB client, and the wasm32-wasip2 Rust target.
# Idempotent: does nothing when all is present.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/prereqs.sh   install build prerequisites (apt, rustup target)"
  exit 0
fi
need=()
for pkg in cmake g++ make pkg-config libssl-dev libsasl2-dev libcurl4-openssl-dev python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || { echo "error: missing packages: ${need[*]} (apt-get install them as root)" >&2; exit 1; }
  echo "==> apt-get install ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}" >/dev/null
fi
# rust-toolchain.toml pins the toolchain; make sure it and the wasm target exist.
cd "$ROOT"
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target list --installed | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2

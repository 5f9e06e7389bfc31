#!/usr/bin/env bash
# Builds the example plugins to wasm32-wasip2 and copies each .wasm into
# plugins/, where `sluice run` loads and watches them. Also builds orders
# "v2" into plugins/target/v2 for the hot-reload test and benchmark.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/build-plugins.sh   build plugins/*/ to plugins/NAME.wasm"
  exit 0
fi
cd "$ROOT/plugins"
echo "==> building plugins (wasm32-wasip2, release)"
cargo build --release --target wasm32-wasip2 --quiet
for crate in */Cargo.toml; do
  name="$(dirname "$crate")"
  # hostile* misbehave on purpose and legacy* keeps an old contract: tests
  # use them from target/.
  [[ "$name" == hostile* || "$name" == legacy* ]] && continue
  cp "target/wasm32-wasip2/release/$name.wasm" "$ROOT/plugins/$name.wasm"
  echo "    plugins/$name.wasm ($(du -h "$ROOT/plugins/$name.wasm" | cut -f1))"
done
cargo build --release --target wasm32-wasip2 --quiet --target-dir target/v2 -p orders --features orders/v2
echo "    plugins/target/v2/wasm32-wasip2/release/orders.wasm (orders v2, for the reload test)"
# The secure profile's plugin (config/secure.toml): orders with its
# sensitive fields declared, which sluice encrypts.
cargo build --release --target wasm32-wasip2 --quiet --target-dir target/sensitive -p orders --features orders/sensitive
mkdir -p "$ROOT/.sluice-secure/plugins"
cp target/sensitive/wasm32-wasip2/release/orders.wasm "$ROOT/.sluice-secure/plugins/orders.wasm"
echo "    .sluice-secure/plugins/orders.wasm (orders with sensitive fields, for config/secure.toml)"

#!/usr/bin/env bash
# Benchmarks, each a ratio against a baseline measured in the same run:
#   transform   the orders plugin in the WASM sandbox vs the same code native
# Results are printed and written to bench/transform.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/bench.sh   run the benchmarks (release build), write bench/*.txt"
  exit 0
fi
cd "$ROOT"
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet -p orders)
mkdir -p bench
for batch in 100 1000; do
  ORDERS_WASM="$ROOT/plugins/target/wasm32-wasip2/release/orders.wasm" BATCH=$batch \
    cargo bench --quiet -p sluice --bench transform
done | tee bench/transform.txt

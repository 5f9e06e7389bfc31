#!/usr/bin/env bash
# Benchmarks, each a ratio against a baseline measured in the same run:
#   transform   the orders plugin in the WASM sandbox vs the same code native
#   reload      file renamed into plugins/ -> new version current (p50, max)
#   runs        one scheduled run over 100,000 waiting events vs the same
#               events consumed continuously (needs the local services)
#   isolation   a healthy pipeline's throughput beside a hostile one in the
#               same host vs alone (needs the local services)
#   reloads     100 hot reloads during 200,000 events: p50/p99 latency, no
#               loss or duplicates; several-MiB plugin vs small (services)
#   partitions  writes into a plain table vs the same table partitioned by
#               hash and by day; EXPLAIN PARTITIONS of a one-day query
#   secure      the demo pipeline on the secure profile (SCRAM, TLS, field
#               encryption) vs the plaintext profile (services)
# Results are printed and written to bench/transform.txt, bench/scheduler.txt,
# bench/isolation.txt, bench/reload.txt, bench/partitions.txt and
# bench/secure.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/bench.sh   run the benchmarks (release build), write bench/*.txt"
  exit 0
fi
cd "$ROOT"
"$ROOT/scripts/prereqs.sh"
"$ROOT/scripts/build-plugins.sh"
mkdir -p bench
export ORDERS_WASM="$ROOT/plugins/target/wasm32-wasip2/release/orders.wasm"
for batch in 100 1000; do
  BATCH=$batch cargo bench --quiet -p sluice --bench transform
done | tee bench/transform.txt
ORDERS_V2_WASM="$ROOT/plugins/target/v2/wasm32-wasip2/release/orders.wasm" BATCH=1000 \
  cargo bench --quiet -p sluice --bench transform | tail -n 1 | tee -a bench/transform.txt
"$ROOT/scripts/services.sh" up
cargo bench --quiet -p sluice-tests --bench scheduled_vs_continuous | tee bench/scheduler.txt
cargo bench --quiet -p sluice-tests --bench isolation | tee bench/isolation.txt
cargo bench --quiet -p sluice-tests --bench reloads | tee bench/reload.txt
cargo bench --quiet -p sluice-tests --bench partitions | tee bench/partitions.txt
cargo bench --quiet -p sluice-tests --bench secure | tee bench/secure.txt

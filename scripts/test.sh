#!/usr/bin/env bash
# Runs every test: starts the local services (Kafka, FerretDB, MariaDB) if
# they are not running, then unit tests, plugin tests and end-to-end tests.
# Last, the fault tests that stop services, one at a time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/test.sh   start local services, run all tests"
  exit 0
fi
cd "$ROOT"
"$ROOT/scripts/prereqs.sh"
"$ROOT/scripts/services.sh" up
"$ROOT/scripts/build-plugins.sh"
echo "==> plugin tests (native)"
(cd plugins && cargo test --quiet)
echo "==> workspace tests (unit + end-to-end against the local services)"
cargo test --workspace --quiet -- --test-threads=2
echo "==> fault tests: MariaDB, FerretDB and the Kafka broker stopped in turn"
SLUICE_OUTAGE_SECS=10 cargo test --quiet -p sluice-tests --test faults -- --ignored --test-threads=1

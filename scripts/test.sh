#!/usr/bin/env bash
# Runs every test. First the unit tests, which need no service (in-memory
# doubles; seconds), while the local services (Kafka, FerretDB, MariaDB)
# start; then plugin tests and end-to-end tests against those services;
# last, the fault tests that stop services, one at a time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/test.sh   start local services, run all tests"
  exit 0
fi
cd "$ROOT"
"$ROOT/scripts/prereqs.sh"
services_log="$(mktemp)"
"$ROOT/scripts/services.sh" up > "$services_log" 2>&1 &
services=$!
echo "==> unit tests: SDK and host, in-memory doubles, no services (services start meanwhile)"
started=$SECONDS
cargo test --quiet -p sluice-plugin-sdk -p sluice
echo "==> unit tests took $((SECONDS - started))s"
if ! wait "$services"; then
  cat "$services_log"
  exit 1
fi
tail -n 3 "$services_log"
"$ROOT/scripts/build-plugins.sh"
echo "==> plugin tests (native)"
(cd plugins && cargo test --quiet)
echo "==> end-to-end tests against the local services"
cargo test --quiet -p sluice-tests -- --test-threads=2
echo "==> fault tests: MariaDB, FerretDB and the Kafka broker stopped in turn"
SLUICE_OUTAGE_SECS=10 cargo test --quiet -p sluice-tests --test faults -- --ignored --test-threads=1

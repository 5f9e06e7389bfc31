#!/usr/bin/env bash
# Prints the host library's module graph by layer (and fails on an import
# that points sideways or up, or on a loop), then its largest files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/module-graph.sh   module graph of host/src, checked; largest files"
  exit 0
fi
cd "$ROOT"
cargo test -p sluice --lib layers -- --nocapture --test-threads=1 --format=terse 2>&1 \
  | sed -E 's/^\.+//' \
  | grep -E '^(module graph|  [0-9]|.*imports|import loop|files of|thread|error)'
echo "largest files in host/src (lines):"
find host/src -name '*.rs' -print0 | xargs -0 wc -l | sort -rn | sed -n '2,9p'

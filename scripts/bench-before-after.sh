#!/usr/bin/env bash
# The MongoDB write path on FerretDB, this checkout against an earlier
# commit: builds both `sluice` binaries (release; REF in a git worktree
# under target/), then runs tests/benches/mongo_path.rs, which alternates
# them over the same workloads. Results go to bench/mongo_path.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ne 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  echo "usage: scripts/bench-before-after.sh REF   compare REF's sluice with this checkout's (needs the local services)"
  exit 0
fi
cd "$ROOT"
ref="$(git rev-parse --short "$1")"
before="$ROOT/target/before-$ref"
"$ROOT/scripts/prereqs.sh"
"$ROOT/scripts/build-plugins.sh"
"$ROOT/scripts/services.sh" up
if [[ ! -x $before/bin/sluice ]]; then
  echo "==> building sluice at $ref (release) in $before"
  rm -rf "$before/src"
  git worktree add --force --detach "$before/src" "$ref" >/dev/null
  (cd "$before/src" && cargo build --quiet --release --bin sluice --target-dir "$before/target")
  mkdir -p "$before/bin"
  cp "$before/target/release/sluice" "$before/bin/sluice"
  git worktree remove --force "$before/src"
  rm -rf "$before/target"
fi
echo "==> building this checkout's sluice (release)"
cargo build --quiet --release --bin sluice
mkdir -p bench
{
  echo "before: $ref ($(git log -1 --format=%s "$ref" | cut -c1-60))"
  echo "after:  $(git describe --always --dirty)"
  SLUICE_BEFORE_BIN="$before/bin/sluice" SLUICE_AFTER_BIN="$ROOT/target/release/sluice" \
    cargo bench --quiet -p sluice-tests --bench mongo_path
} | tee bench/mongo_path.txt

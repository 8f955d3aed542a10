#!/usr/bin/env bash
# Regenerates every generated file from its one source. With --check, fails if any differs from
# what is committed (CI's drift check).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gearfleet/target}"

cargo run -q --locked -p gearfleet-crd --bin crdgen -- --out deploy/crds
mkdir -p charts/gearfleet/crds
cp deploy/crds/*.yaml charts/gearfleet/crds/

if [ "${1:-}" = "--check" ]; then
  if ! git diff --exit-code --stat -- deploy/crds charts/gearfleet/crds; then
    echo "generated files drifted from the code: run scripts/generate.sh and commit the result" >&2
    exit 1
  fi
  untracked=$(git ls-files --others --exclude-standard -- deploy/crds charts/gearfleet/crds)
  if [ -n "$untracked" ]; then
    echo "generated files not committed: $untracked" >&2
    exit 1
  fi
fi

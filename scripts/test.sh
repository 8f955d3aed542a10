#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting, lints, every test of the
# workspace (against real Gearman peers) and the generated-file drift checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# One target dir outside the work tree, so every clone on this machine shares the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gearfleet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/install-test-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> generated files are up to date"
bash scripts/generate.sh --check

echo "==> cargo test"
# Missing Gearman peers are a failure here, not a skip.
export GEARFLEET_REQUIRE_PEERS=1
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/gearfleet-test.log"
status=${PIPESTATUS[0]}
set -e

# One closing line over all test binaries.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' \
  "${TMPDIR:-/tmp}/gearfleet-test.log"
exit "$status"

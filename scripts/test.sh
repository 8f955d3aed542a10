#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting, lints, the generated-file
# drift checks, and every test of the workspace: against real Gearman peers (gearman CLI, gearadmin,
# gearmand, Python gear, Perl Gearman::Client) and a real single-node Kubernetes cluster that
# e2e/cluster/up builds and starts (cold: ~20 minutes for the Kubernetes build; then seconds).
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

echo "==> code layout: file lengths, no import circles (scripts/check-layout.py)"
python3 scripts/check-layout.py

echo "==> fuzzing the codec and admin parsers (bounded)"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q --locked cargo-fuzz
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ_TOOLCHAIN=nightly bash scripts/fuzz.sh 20
else
  # No nightly here: stable accepts the sanitizer flags with RUSTC_BOOTSTRAP.
  FUZZ_TOOLCHAIN=stable bash scripts/fuzz.sh 20
fi

echo "==> local Kubernetes cluster for the e2e suite (e2e/cluster/up; cached after the first build)"
cluster_env=$(bash e2e/cluster/up)
eval "$cluster_env"
trap 'bash e2e/cluster/down >/dev/null 2>&1 || true' EXIT
# With a cluster up, an e2e test that cannot reach it is a failure, not a skip.
export GEARFLEET_REQUIRE_CLUSTER=1

echo "==> building the operator binary the e2e suite runs"
cargo build -q --locked -p gearfleet-operator
export GEARFLEET_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/gearfleet-operator"

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

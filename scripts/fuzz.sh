#!/usr/bin/env bash
# Runs each cargo-fuzz target of proto/fuzz for a bounded time.
#
#   scripts/fuzz.sh [seconds-per-target]      (default 60; CI uses ~20)
#
# Needs a nightly toolchain (`cargo +nightly`, or stable with RUSTC_BOOTSTRAP=1 via
# FUZZ_TOOLCHAIN=stable) and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Corpora live in proto/fuzz/corpus/<target>, crashes in proto/fuzz/artifacts/<target>.
# Exits non-zero as soon as a target finds a crash.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
TARGETS=(${FUZZ_TARGETS:-codec admin})
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO/proto/fuzz"

# The fuzz crate is its own workspace; keep its (instrumented) build apart from the main target dir.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$REPO/proto/fuzz/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi
if [[ "$TOOLCHAIN" == "stable" ]]; then
  export RUSTC_BOOTSTRAP=1
  TC=()
else
  TC=("+$TOOLCHAIN")
fi

# Seed corpora: a few valid frames and admin lines, so both targets start past the header checks.
seed() {
  local dir="corpus/$1"; shift
  mkdir -p "$dir"
  local i=0
  for s in "$@"; do printf "$s" > "$dir/seed-$i"; i=$((i + 1)); done
}
seed codec '\0REQ\0\0\0\x10\0\0\0\x00' '\0REQ\0\0\0\x07\0\0\0\x0bfn\0uniq\0data' \
           '\0REQ\0\0\0\x01\0\0\0\x03fn\0' 'status\r\n' 'workers\n' '\0RES\0\0\0\x06\0\0\0\0'
seed admin 'status' 'workers' 'maxqueue fn 10' 'cancel job H:x:1' 'show jobs' 'show unique jobs' \
           'fn\t3\t1\t2' '12 127.0.0.1 id : fn1 fn2' 'fn\t1\t2\t3\t4\t5\t6\t7\t8\t9' \
           'w1\t127.0.0.1:5\tbusy\t1\t3\tH:x:1,H:x:2\tfn1,fn2'

cargo "${TC[@]}" fuzz build -O

status=0
for t in "${TARGETS[@]}"; do
  echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s"
  if ! cargo "${TC[@]}" fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1 2>"target/fuzz-$t.log"; then
    echo "fuzz.sh: $t FAILED; artifacts in proto/fuzz/artifacts/$t" >&2
    tail -40 "target/fuzz-$t.log" >&2
    status=1
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added|cov:.*ft:" "target/fuzz-$t.log" | tail -3 || true
done
exit "$status"

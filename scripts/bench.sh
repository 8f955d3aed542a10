#!/usr/bin/env bash
# The benchmark: gearfleet-broker against gearmand, side by side, on this machine.
#
# Installs gearmand (Debian's gearman-job-server) if it is missing, builds the release binaries,
# runs every standard workload 3 times against gearmand, gearmand tuned for deep queues and
# gearfleet-broker (one server at a time, on loopback ports), and writes
# docs/benchmarks/results.md and docs/benchmarks/results.svg; then the several-brokers sweep
# (fg 4/4 per broker against 1, 2 and 3 servers of each kind at once) into
# docs/benchmarks/brokers.md. About 12 minutes on 2 cores.
#
# Extra arguments go to gearfleet-bench instead (and skip the sweep), e.g. `--repeat 5`,
# `--duration 5s`, `--workloads fg-1-1,drain`, `--smoke`, or `brokers --max 4` for the sweep
# alone. See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gearfleet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ ! -x /usr/sbin/gearmand ]; then
  echo "==> apt-get install gearman-job-server"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq gearman-job-server >/dev/null
  # Debian starts gearmand as a service on install; the benchmark starts its own, so keep the
  # machine quiet.
  ($sudo service gearman-job-server stop || true) >/dev/null 2>&1
fi

echo "==> cargo build --release -p gearfleet-bench -p gearfleet-broker"
cargo build --release -p gearfleet-bench -p gearfleet-broker

echo "==> load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "    (absolute figures need a quiet machine; ratios from the same run hold either way)"
# Defaults: 3 runs per workload and server, 3 s per throughput run, 200,000 queued jobs.
bench="$CARGO_TARGET_DIR/release/gearfleet-bench"
"$bench" "$@"
if [ $# -eq 0 ]; then
  echo "==> several brokers: fg 4/4 per broker against 1, 2 and 3 servers at once"
  "$bench" brokers
fi

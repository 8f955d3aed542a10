#!/usr/bin/env bash
# The demo: a gearfleet broker with example workers on this machine, a burst of jobs from the
# stock `gearman` CLI, and the queue and workers shown live as they drain.
#
# It runs what exists today (broker, SDK workers, real Gearman clients). The Kubernetes version —
# local cluster, operator, WorkerPool, replicas rising and falling — replaces it as those land.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gearfleet/target}"
PORT="${GEARFLEET_DEMO_PORT:-14730}"
HTTP_PORT="${GEARFLEET_DEMO_HTTP_PORT:-19730}"
JOBS="${GEARFLEET_DEMO_JOBS:-40}"
WORKERS="${GEARFLEET_DEMO_WORKERS:-4}"

bash scripts/install-test-deps.sh
echo "==> building gearfleet-broker and gearfleet-example-worker"
cargo build -q --locked -p gearfleet-broker -p gearfleet-worker --bins
BIN="$CARGO_TARGET_DIR/debug"

pids=()
cleanup() {
  # Workers first (they drain), then the broker.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; sleep 0.1; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

admin() { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; printf '%s\n' "$1" >&3; sed '/^\.$/q' <&3; exec 3>&-; }

echo "==> starting the broker on 127.0.0.1:$PORT (metrics on :$HTTP_PORT)"
GEARFLEET_LOG=warn "$BIN/gearfleet-broker" --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP_PORT" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

echo "==> starting $WORKERS example workers (functions: sleep, reverse)"
for i in $(seq "$WORKERS"); do
  RUST_LOG=warn "$BIN/gearfleet-example-worker" sleep reverse --servers "127.0.0.1:$PORT" \
    --client-id "demo-worker-$i" --http off >/dev/null &
  pids+=($!)
done
sleep 1

echo "==> a foreground job from the gearman CLI"
echo "  gearman -f reverse 'hello gearfleet'  →  $(gearman -h 127.0.0.1 -p "$PORT" -f reverse 'hello gearfleet')"

echo "==> submitting $JOBS background 'sleep' jobs of 300 ms each"
for i in $(seq "$JOBS"); do gearman -h 127.0.0.1 -p "$PORT" -b -f sleep 300 >/dev/null; done

echo "==> the queue draining (fleet status: function, queued high/normal/low, scheduled, running, workers, idle, ...)"
for _ in $(seq 60); do
  line=$(admin "fleet status" | grep '^sleep' || true)
  printf '  %s  %s\n' "$(date +%T)" "$line"
  queued_running=$(echo "$line" | awk -F'\t' '{ print $2 + $3 + $4 + $6 }')
  [ "${queued_running:-1}" = "0" ] && break
  sleep 0.5
done

echo "==> workers as gearadmin sees them"
gearadmin -h 127.0.0.1 -p "$PORT" --workers | sed 's/^/  /'
echo "==> per-worker state (fleet workers)"
admin "fleet workers" | sed 's/^/  /'
echo "==> metrics (curl 127.0.0.1:$HTTP_PORT/metrics)"
curl -s "127.0.0.1:$HTTP_PORT/metrics" | grep -E '^gearfleet_broker_(jobs_completed_total|function_jobs_completed_total|job_latency_seconds_count)' | sed 's/^/  /'
echo
echo "Done. Everything started here is stopped on exit. Try it by hand:"
echo "  $BIN/gearfleet-broker --listen 127.0.0.1:4730 &"
echo "  $BIN/gearfleet-example-worker reverse &"
echo "  gearman -f reverse hello; gearadmin --status"

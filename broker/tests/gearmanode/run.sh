#!/usr/bin/env bash
# GearmaNode acceptance suite against a Gearman server on 127.0.0.1:4730.
#
#   broker/tests/gearmanode/run.sh [--server gearfleet|gearmand] [mocha args...]
#
# Environment:
#   GEARFLEET_BROKER_BIN  broker binary (default $CARGO_TARGET_DIR/debug/gearfleet-broker,
#                         CARGO_TARGET_DIR defaulting to <repo>/target)
#   GEARMAND_BIN          gearmand binary for --server gearmand (default /usr/sbin/gearmand)
#   GEARMANODE_CACHE      npm install dir (default ~/.cache/gearfleet/gearmanode)
#   GEARMANODE_TEST_DIR   directory holding GearmaNode's own mocha test files (test-*.js).
#                         The npm tarball of gearmanode 0.9.x does NOT contain its test/
#                         directory (package.json "files": ["lib", "README.md", "LICENSE"]),
#                         so that suite must come from a checkout of the upstream repository's
#                         test/ folder. Default: $GEARMANODE_CACHE/test. Without it only
#                         gearfleet's own live checks (live/*.js beside this script) run.
#
# Exit codes: 0 all tests passed; 1 test failures; 2 setup error (port busy, server did
# not start, npm failure); 77 suite files not available (treated as "skip" by callers).
set -euo pipefail

SERVER=gearfleet
if [[ "${1:-}" == "--server" ]]; then SERVER="${2:?--server needs gearfleet|gearmand}"; shift 2; fi
case "$SERVER" in gearfleet|gearmand) ;; *) echo "run.sh: unknown server '$SERVER'" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
BROKER_BIN="${GEARFLEET_BROKER_BIN:-$CARGO_TARGET_DIR/debug/gearfleet-broker}"
GEARMAND_BIN="${GEARMAND_BIN:-/usr/sbin/gearmand}"
CACHE="${GEARMANODE_CACHE:-$HOME/.cache/gearfleet/gearmanode}"
TEST_DIR="${GEARMANODE_TEST_DIR:-$CACHE/test}"
PORT=4730

log() { echo "gearmanode: $*" >&2; }

command -v node >/dev/null && command -v npm >/dev/null || { log "node/npm not found"; exit 77; }

# 1. Install the library and the test tools pinned to what the suite is known to pass with.
mkdir -p "$CACHE"
installed_ok() {
  [[ -f "$CACHE/node_modules/gearmanode/package.json" && -x "$CACHE/node_modules/.bin/mocha" ]] &&
  node -e 'const v=require(process.argv[1]+"/node_modules/gearmanode/package.json").version;
           const m=require(process.argv[1]+"/node_modules/mocha/package.json").version;
           process.exit(v.startsWith("0.9.")&&m.startsWith("3.")?0:1)' "$CACHE"
}
if ! installed_ok; then
  log "installing gearmanode@0.9 mocha@3 should@11 sinon@1.17 winston@2 into $CACHE"
  [[ -f "$CACHE/package.json" ]] || echo '{"name":"gearfleet-gearmanode-harness","private":true}' > "$CACHE/package.json"
  (cd "$CACHE" && npm install --no-audit --no-fund --loglevel=error \
      gearmanode@0.9 mocha@3 should@11 sinon@1.17 winston@2) >&2 || { log "npm install failed"; exit 2; }
fi

# 2. Assemble the suite: a copy of the installed package with the test files beside lib/
#    (the tests require '../lib/gearmanode').
shopt -s nullglob
upstream=("$TEST_DIR"/test-*.js)
if (( ${#upstream[@]} == 0 )); then
  log "no upstream GearmaNode test files in '$TEST_DIR': the npm package gearmanode@0.9.x ships"
  log "only lib/. Put the upstream repository's test/*.js there (or set GEARMANODE_TEST_DIR) to run"
  log "that suite too; running gearfleet's own live checks only."
fi
tests=("${upstream[@]}" "$(dirname "${BASH_SOURCE[0]}")"/live/test-*.js)
(( ${#tests[@]} > 0 )) || { log "no test files at all"; exit 2; }
SUITE="$CACHE/suite"
rm -rf "$SUITE"; mkdir -p "$SUITE/test"
cp -r "$CACHE/node_modules/gearmanode/lib" "$CACHE/node_modules/gearmanode/package.json" "$SUITE/"
cp "${tests[@]}" "$SUITE/test/"
[[ -f "$TEST_DIR/mocha.opts" ]] && cp "$TEST_DIR/mocha.opts" "$SUITE/test/"

# 3. Start the server on the fixed port the suite hard-codes (localhost:4730). Runs of this
#    script (a parallel test runner, two clones on one machine) take turns through a lock file.
if command -v flock >/dev/null; then
  exec 9>"${TMPDIR:-/tmp}/gearfleet-port-$PORT.lock"
  flock -w 600 9 || { log "waited 600 s for another run holding port $PORT"; exit 2; }
fi
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
  (exec 3<>"/dev/tcp/::1/$PORT") 2>/dev/null && return 0
  return 1
}
if port_busy; then
  log "port $PORT is already in use (127.0.0.1 or ::1); stop whatever listens there first:"
  (command -v ss >/dev/null && ss -ltnp "sport = :$PORT") >&2 || true
  exit 2
fi

SERVER_LOG="$CACHE/server-$SERVER.log"
case "$SERVER" in
  gearfleet)
    [[ -x "$BROKER_BIN" ]] || { log "broker binary '$BROKER_BIN' missing: cargo build -p gearfleet-broker"; exit 2; }
    "$BROKER_BIN" --listen "127.0.0.1:$PORT" --http-listen 127.0.0.1:0 >"$SERVER_LOG" 2>&1 &
    ;;
  gearmand)
    [[ -x "$GEARMAND_BIN" ]] || { log "'$GEARMAND_BIN' missing (apt-get install gearman-job-server)"; exit 2; }
    "$GEARMAND_BIN" --listen=127.0.0.1 --port="$PORT" --threads=2 --log-file=stderr \
        --verbose=ERROR >"$SERVER_LOG" 2>&1 &
    ;;
esac
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { log "$SERVER exited at startup:"; cat "$SERVER_LOG" >&2; exit 2; }
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { log "$SERVER did not listen on $PORT in 10 s"; exit 2; }
log "running ${#tests[@]} test files against $SERVER (pid $SERVER_PID) on 127.0.0.1:$PORT"

# 4. Run mocha. Node >= 17 may resolve 'localhost' to ::1 first; the suite connects to
#    'localhost', so prefer IPv4 to reach a server listening on 127.0.0.1 only.
set +e
(cd "$SUITE" && NODE_OPTIONS="${NODE_OPTIONS:-} --dns-result-order=ipv4first" \
   "$CACHE/node_modules/.bin/mocha" --reporter spec "$@" test)
rc=$?
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  log "$SERVER died during the run; its log:"; cat "$SERVER_LOG" >&2; rc=${rc/#0/1}
fi
log "mocha exit code $rc against $SERVER (server log: $SERVER_LOG)"
exit $(( rc == 0 ? 0 : 1 ))

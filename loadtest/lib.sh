# Shared by bench.sh and goose.sh (source it from the repository root): builds the release
# binaries, gives a temporary work directory, and starts background servers that are stopped
# and cleaned up on exit.

cargo build --release --quiet -p relay -p relay-loadtest
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background and waits for its "listening on" line;
# LAST_PID is its pid.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$WORK/$name.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1
}

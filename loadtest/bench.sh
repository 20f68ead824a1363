#!/usr/bin/env bash
# relay's benchmarks, on loopback, release build. Figures go to docs/benchmarks.md by hand.
#
#   loadtest/bench.sh ingest     ack latency at 2,000/s and saturation, relay vs a bare handler
#   loadtest/bench.sh dispatch   delivered share of an undisclosed 50/s limit, 0 and 200 ms latency
#   loadtest/bench.sh memory     RSS of `relay up` holding a 1,000,000-event backlog
#   loadtest/bench.sh all
#
# Every run is bounded in time and count and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

source loadtest/lib.sh

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
stats() { curl -sf "http://$1/admin/stats"; }

ingest() {
  echo "## ingest (open loop, $(nproc) cores, sender on the same machine)"
  start target "$BIN/relay" target --listen 127.0.0.1:4301 --rate 50
  T=$LAST_PID
  start relay "$BIN/relay" up --listen 127.0.0.1:8301 --target-url http://127.0.0.1:4301/graphql \
    --api-key bench --data-dir "$WORK/ingest-data"
  R=$LAST_PID
  start bare "$BIN/bare-ingest" 127.0.0.1:8302
  B=$LAST_PID
  printf '| server | load | acked/s | p50 ms | p99 ms | p99.9 ms | max ms | not acked |\n|---|---|---|---|---|---|---|---|\n'
  for server in relay:8301 bare:8302; do
    name=${server%%:*}; port=${server##*:}
    # warm-up, then the measured runs
    "$BIN/relay" simulate --url "http://127.0.0.1:$port" --api-key bench --rps 500 --count 1000 --json >/dev/null || true
    for load in 2000 saturation; do
      if [ "$load" = 2000 ]; then
        args=(--rps 2000 --duration 20s)
      else
        args=(--rps 60000 --duration 10s --max-in-flight 256)
      fi
      "$BIN/relay" simulate --url "http://127.0.0.1:$port" --api-key bench "${args[@]}" --json \
        >"$WORK/$name-$load.json" || true
      f="$WORK/$name-$load.json"
      printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$load" \
        "$(json "$f" "round(d['acked_per_s'])")" "$(json "$f" "d['latency_ms']['p50']")" \
        "$(json "$f" "d['latency_ms']['p99']")" "$(json "$f" "d['latency_ms']['p999']")" \
        "$(json "$f" "d['latency_ms']['max']")" "$(json "$f" "d['sent'] - d['acked']")"
    done
  done
  stop "$B"; stop "$R"; stop "$T"
}

dispatch() {
  echo "## dispatch (target limit 50/s, not given to the relay; 60 s measured after 15 s warm-up)"
  printf '| target latency | delivered/s | share of limit | rate-limited share of requests | relay estimate |\n|---|---|---|---|---|\n'
  for latency in 0 200; do
    start target "$BIN/relay" target --listen 127.0.0.1:4302 --rate 50 --latency-ms "$latency"
    T=$LAST_PID
    start relay "$BIN/relay" up --listen 127.0.0.1:8303 --target-url http://127.0.0.1:4302/graphql \
      --api-key bench --data-dir "$WORK/dispatch-$latency"
    R=$LAST_PID
    "$BIN/relay" simulate --url http://127.0.0.1:8303 --api-key bench --rps 1000 --count 5000 --json >/dev/null
    sleep 15
    s0=$(stats 127.0.0.1:4302); sleep 60; s1=$(stats 127.0.0.1:4302)
    estimate=$(grep -o 'estimated_limit[^ ]*' "$WORK/relay.err" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
    python3 - "$s0" "$s1" "$latency" "$estimate" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
events = b["events"] - a["events"]; reqs = b["requests"] - a["requests"]; rl = b["rate_limited"] - a["rate_limited"]
print(f"| {sys.argv[3]} ms | {events/60:.1f} | {events/60/50:.1%} | {rl/max(reqs,1):.2%} ({rl} of {reqs}) | {sys.argv[4]} |")
assert b["duplicates"] == 0, "duplicates at the target"
PY
    stop "$R"; stop "$T"
  done
}

memory() {
  echo "## memory (backlog of 1,000,000 events held by relay up)"
  start target "$BIN/relay" target --listen 127.0.0.1:4303 --rate 1
  T=$LAST_PID
  start relay "$BIN/relay" up --listen 127.0.0.1:8304 --target-url http://127.0.0.1:4303/graphql \
    --api-key bench --data-dir "$WORK/memory-data" --target-rate 1
  R=$LAST_PID
  rss() { awk '/VmRSS|VmHWM/ {printf "%s %.1f MB  ", $1, $2/1024}' "/proc/$R/status"; echo; }
  echo "idle: $(rss)"
  for i in 1 2 3 4 5; do
    "$BIN/relay" simulate --url http://127.0.0.1:8304 --api-key bench --rps 8000 --count 200000 \
      --max-in-flight 512 --json >"$WORK/mem-$i.json" || true
    f="$WORK/mem-$i.json"
    echo "after batch $i ($(json "$f" "d['acked']") of 200000 acked at $(json "$f" "round(d['acked_per_s'])")/s;" \
      "late $(json "$f" "d['late']"), skipped $(json "$f" "d['skipped']"), no answer $(json "$f" "d['errors']");" \
      "p99 $(json "$f" "d['latency_ms']['p99']") ms): $(rss)"
  done
  sleep 10
  echo "holding the backlog 10 s later: $(rss)"
  echo "store on disk: $(du -sh "$WORK/memory-data" | cut -f1)"
  stop "$R"; stop "$T"
}

case "${1:-all}" in
  ingest) ingest ;;
  dispatch) dispatch ;;
  memory) memory ;;
  all) ingest; dispatch; memory ;;
  *) echo "usage: $0 [ingest|dispatch|memory|all]" >&2; exit 2 ;;
esac

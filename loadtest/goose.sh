#!/usr/bin/env bash
# Goose load tests of relay's ingest API, against `relay up` on loopback (release build).
#
#   loadtest/goose.sh steady   2,000 requests/s from 32 users for 30 s
#   loadtest/goose.sh burst    8 users, then a jump to 128 unthrottled users for 10 s, then back
#   loadtest/goose.sh soak     500 requests/s from 16 users for SOAK (default 5m)
#   loadtest/goose.sh all
#
# Reports (markdown and JSON) land in $REPORTS (default ./loadtest/reports). Bounded in time;
# talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

source loadtest/lib.sh
REPORTS="${REPORTS:-loadtest/reports}"
SOAK="${SOAK:-5m}"
mkdir -p "$REPORTS"

export RELAY_API_KEY="goose-$RANDOM$RANDOM"
start target "$BIN/relay" target --listen 127.0.0.1:4310 --rate 200
start relay "$BIN/relay" up --listen 127.0.0.1:8310 --target-url http://127.0.0.1:4310/graphql \
  --data-dir "$WORK/data"

run() {
  local name=$1; shift
  echo "== $name"
  "$BIN/relay-load" --host http://127.0.0.1:8310 --quiet --report-file "$REPORTS/$name.md" \
    --report-file "$REPORTS/$name.json" "$@" >"$WORK/$name.log" 2>&1 || {
    echo "goose failed:"; tail -20 "$WORK/$name.log"; return 1; }
  # The request, latency and status-code rows of goose's report.
  sed -n '/## Request Metrics/,/## Transaction Metrics/p' "$REPORTS/$name.md" | grep -E '^[|] (POST|Method)'
}

case "${1:-all}" in
  steady) run steady --test-plan "32,2s;32,30s;0,1s" --throttle-requests 2000 ;;
  burst) run burst --test-plan "8,1s;8,10s;128,1s;128,10s;8,1s;8,10s;0,1s" ;;
  soak) run soak --test-plan "16,2s;16,$SOAK;0,1s" --throttle-requests 500 ;;
  all)
    run steady --test-plan "32,2s;32,30s;0,1s" --throttle-requests 2000
    run burst --test-plan "8,1s;8,10s;128,1s;128,10s;8,1s;8,10s;0,1s"
    run soak --test-plan "16,2s;16,$SOAK;0,1s" --throttle-requests 500
    ;;
  *) echo "usage: $0 [steady|burst|soak|all]" >&2; exit 2 ;;
esac

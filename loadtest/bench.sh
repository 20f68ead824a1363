#!/usr/bin/env bash
# relay's benchmarks, on loopback, release build. Figures go to docs/benchmarks.md by hand.
#
#   loadtest/bench.sh ingest     ack latency at 2,000/s and saturation, relay vs a bare handler
#   loadtest/bench.sh dispatch   delivered share of an undisclosed 50/s limit, 0 and 200 ms latency
#   loadtest/bench.sh memory     RSS of `relay up` holding a 1,000,000-event backlog
#   loadtest/bench.sh ack-tail   ack p99/p99.9 at 2,000/s over 16 and 256 connections (wrk2-style)
#   loadtest/bench.sh pressure   200/s for 20 s while `dd … conv=fsync` writes 3 GB to the same disk
#   loadtest/bench.sh fsyncs     fsync/fdatasync calls per acknowledged event at 100/s and 2,000/s
#   loadtest/bench.sh retention  store size and RSS over 10 min of 500/s with --retention 1m
#   loadtest/bench.sh pacing     a strict 50/s target (burst 5), limit steps 5→50→10→200 changed at
#                                runtime, and a fixed window with and without budget headers
#   loadtest/bench.sh concurrency  a target that allows 4 requests in progress of 100 ms each
#                                (40/s, more get 429): delivered share and refusals
#   loadtest/bench.sh budgets    a 20/s fixed window announcing its budget in whole seconds, in
#                                each syntax (draft 6, drafts 8+, X-RateLimit-*, epoch resets)
#   loadtest/bench.sh outage     a target down for 60 s under a 2,000-event backlog, then back:
#                                requests it got while down, dead letters, time to drain after
#   loadtest/bench.sh fleet      1, 2 and 4 dispatchers sharing a 50/s limit through the control
#                                table (moto), work from an embedded store, then through SQS
#   loadtest/bench.sh lambda     Lambda zip and bootstrap sizes, and each bootstrap's init time
#                                under cargo-lambda's local Runtime API (against moto)
#   loadtest/bench.sh aws-ack    receiver ack p50/p99 of `relay up --backend aws` against moto, at
#                                50/s for 20 s, with X-Ray segments on and off (informational:
#                                moto is not DynamoDB)
#   loadtest/bench.sh batching   a target limited to 10 requests/s: delivered events/s with
#                                --batch 1, 10 and 50, from a backlog loaded by `relay import`
#   loadtest/bench.sh batch-ingest  events/s through `relay import` (POST /events/batch) against
#                                single posts at saturation, and the ack p99 of single posts at
#                                2,000/s alone and while an import of 1,000,000 lines runs
#   loadtest/bench.sh console   the console's API over a 1,000,000-event store (paused, so it all
#                                waits): each call's median and max over 5, and import events/s
#                                (the event list's index costs every insert)
#   loadtest/bench.sh indexing  1,000,000 events imported into a paused relay: the import's time,
#                                and the time until the store has indexed every one
#   loadtest/bench.sh all
#
# RELAY=/path/to/relay runs `relay up` from another build (e.g. the previous commit's), with this
# build's simulator, for before/after comparisons in one run.
#
# Every run is bounded in time and count and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

source loadtest/lib.sh

UP=${RELAY:-$BIN/relay}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
stats() { curl -sf "http://$1/admin/stats"; }

ingest() {
  echo "## ingest (open loop, $(nproc) cores, sender on the same machine)"
  start target "$BIN/relay" target --listen 127.0.0.1:4301 --rate 50
  T=$LAST_PID
  start relay "$UP" up --listen 127.0.0.1:8301 --target-url http://127.0.0.1:4301/graphql \
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
    start relay "$UP" up --listen 127.0.0.1:8303 --target-url http://127.0.0.1:4302/graphql \
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
  start relay "$UP" up --listen 127.0.0.1:8304 --target-url http://127.0.0.1:4303/graphql \
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


# sim PORT ARGS...: this build's open-loop source against 127.0.0.1:PORT, JSON report on stdout.
sim() { local port=$1; shift; "$BIN/relay" simulate --url "http://127.0.0.1:$port" --api-key bench --json "$@" || true; }
row() {
  local f=$1 label=$2
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
    "$(json "$f" "d['acked']")/$(json "$f" "d['sent'] + d['skipped']")" \
    "$(json "$f" "sum(v for k, v in d['statuses'].items() if not k.startswith('2'))")" \
    "$(json "$f" "d['late'] + d['errors'] + d['skipped']")" \
    "$(json "$f" "d['latency_ms']['p50']")" "$(json "$f" "d['latency_ms']['p99']")" \
    "$(json "$f" "d['latency_ms']['p999']")" "$(json "$f" "d['latency_ms']['max']")"
}
up() { # up NAME PORT TARGET_PORT EXTRA...: relay up on a fresh data dir
  local name=$1 port=$2 tport=$3; shift 3
  start "$name" "$UP" up --listen "127.0.0.1:$port" --target-url "http://127.0.0.1:$tport/graphql" \
    --api-key bench --data-dir "$WORK/$name-data" "$@"
}

ack_tail() {
  echo "## ack tail at 2,000/s, 20 s, open loop over a fixed number of connections ($UP)"
  start target "$BIN/relay" target --listen 127.0.0.1:4310 --rate 50
  T=$LAST_PID
  printf '| connections | acked | refused | late/lost | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|\n'
  for conns in 16 256; do
    up "tail-$conns" 8310 4310
    R=$LAST_PID
    sim 8310 --rps 500 --count 1000 >/dev/null
    sim 8310 --rps 2000 --duration 20s --connections "$conns" >"$WORK/tail-$conns.json"
    row "$WORK/tail-$conns.json" "$conns"
    stop "$R"
  done
  stop "$T"
}

pressure() {
  echo "## 200/s for 20 s while dd writes 3 GB with conv=fsync to the same filesystem ($UP)"
  start target "$BIN/relay" target --listen 127.0.0.1:4311 --rate 25
  T=$LAST_PID
  up pressure 8311 4311
  R=$LAST_PID
  sim 8311 --rps 200 --count 200 >/dev/null
  # dd over and over, so the disk is under pressure for the whole run, not only its first seconds.
  (while :; do dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=3000 conv=fsync 2>>"$WORK/dd.err"; done) &
  D=$!
  sleep 1
  sim 8311 --rps 200 --duration 20s >"$WORK/pressure.json"
  kill "$D"; wait "$D" 2>/dev/null || true; pkill -f "of=$WORK/dd.bin" || true; rm -f "$WORK/dd.bin"
  printf '| run | acked | refused | late/lost | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|\n'
  row "$WORK/pressure.json" "200/s + dd"
  echo "dd runs: $(grep -c copied "$WORK/dd.err"), e.g. $(grep copied "$WORK/dd.err" | tail -1)"
  stop "$R"; stop "$T"
}

fsyncs() {
  echo "## fsync and fdatasync calls of relay up per acknowledged event ($UP)"
  printf '| load | events acked | fsync | fdatasync | per event |\n|---|---|---|---|---|\n'
  start target "$BIN/relay" target --listen 127.0.0.1:4312 --rate 100000
  T=$LAST_PID
  for load in 100:30s 2000:20s; do
    rps=${load%%:*}; dur=${load##*:}
    rm -rf "$WORK/fsync-data"
    "$UP" up --listen 127.0.0.1:8312 --target-url http://127.0.0.1:4312/graphql --api-key bench \
      --data-dir "$WORK/fsync-data" >"$WORK/fs.out" 2>"$WORK/fs.err" &
    R=$!
    for _ in $(seq 100); do grep -q "listening on" "$WORK/fs.out" && break; sleep 0.1; done
    # Counted from here: ingest, delivery to a target that takes everything, and housekeeping.
    strace -f -c -e trace=fsync,fdatasync -o "$WORK/strace-$rps.txt" -p "$R" 2>/dev/null &
    S=$!
    sleep 1
    sim 8312 --rps "$rps" --duration "$dur" >"$WORK/fs-$rps.json"
    sleep 3
    kill -INT "$S"; wait "$S" 2>/dev/null || true
    acked=$(json "$WORK/fs-$rps.json" "d['acked']")
    python3 - "$WORK/strace-$rps.txt" "$rps" "$acked" <<'PY'
import re, sys
calls = {"fsync": 0, "fdatasync": 0}
for line in open(sys.argv[1]):
    parts = line.split()
    if parts and parts[-1] in calls:
        calls[parts[-1]] = int(parts[3])
acked = int(sys.argv[3])
total = calls["fsync"] + calls["fdatasync"]
print(f"| {sys.argv[2]}/s | {acked} | {calls['fsync']} | {calls['fdatasync']} | {total / max(acked, 1):.3f} |")
PY
    stop "$R"
  done
  stop "$T"
}

retention() {
  echo "## constant 500/s for 10 min with --retention 1m: store size and RSS ($UP)"
  start target "$BIN/relay" target --listen 127.0.0.1:4313 --rate 100000
  T=$LAST_PID
  up retention 8313 4313 --retention 1m
  R=$LAST_PID
  sim 8313 --rps 500 --duration 600s >"$WORK/retention.json" &
  S=$!
  printf '| minute | store (relay.db + wal + journal) | archive | RSS MB |\n|---|---|---|---|\n'
  for m in $(seq 1 10); do
    sleep 60
    live=$(du -sk --exclude=archive "$WORK/retention-data" | cut -f1)
    arch=$(du -sk "$WORK/retention-data/archive" 2>/dev/null | cut -f1 || echo 0)
    rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$R/status")
    echo "| $m | $((live / 1024)) MB | $((${arch:-0} / 1024)) MB | $rss |"
  done
  wait "$S" || true
  row "$WORK/retention.json" "500/s, 10 min"
  stop "$R"; stop "$T"
}

# pace NAME TPORT RPORT SECS STEPS TARGET-ARGS...: relay up against a target given a 6,000-event
# backlog; samples the target every second for SECS and prints per-second figures as JSON.
# STEPS is "second:rate,…" for PUT /admin/limit at those seconds (burst 5), or "-".
pace() {
  local name=$1 tport=$2 rport=$3 secs=$4 steps=$5; shift 5
  start "$name-target" "$BIN/relay" target --listen "127.0.0.1:$tport" "$@"
  local T=$LAST_PID
  up "$name" "$rport" "$tport" --max-in-flight 64
  local R=$LAST_PID
  # The backlog goes in before the clock starts; the relay delivers at the target's pace.
  sim "$rport" --rps 3000 --count 6000 >/dev/null
  python3 - "$tport" "$secs" "$steps" <<'PY' >"$WORK/$name.json"
import json, sys, time, urllib.request
port, secs, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3]
changes = {} if steps == "-" else {int(k): float(v) for k, v in (s.split(":") for s in steps.split(","))}
def stats():
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats"))
samples, t0 = [], time.monotonic()
for s in range(secs + 1):
    time.sleep(max(0, t0 + s - time.monotonic()))
    if s in changes:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/limit", method="PUT",
            data=json.dumps({"rate": changes[s], "burst": 5}).encode(), headers={"content-type": "application/json"})
        urllib.request.urlopen(req)
    samples.append(stats())
per = [{k: b[k] - a[k] for k in ("events", "requests", "rate_limited")} for a, b in zip(samples, samples[1:])]
print(json.dumps(per))
PY
  stop "$R"; stop "$T"
}

pacing() {
  echo "## pacing ($UP)"
  echo "### a strict, fast target: 50/s, burst 5, 429 + Retry-After: 1; 70 s, a 6,000-event backlog"
  pace strict 4320 8320 70 - --rate 50 --burst 5
  python3 - "$WORK/strict.json" <<'PY'
import json, sys
per = json.load(open(sys.argv[1]))
for name, a, b in (("first 60 s", 0, 60), ("60 s after 10 s", 10, 70)):
    w = per[a:b]; ev = sum(x["events"] for x in w); rq = sum(x["requests"] for x in w); rl = sum(x["rate_limited"] for x in w)
    print(f"| {name} | {ev/len(w):.1f}/s | {ev/len(w)/50:.1%} | {rl/max(rq,1):.2%} ({rl} of {rq}) |")
PY
  echo "### limit steps 5 → 50 → 10 → 200 per second (burst 5), changed at runtime every 30 s"
  pace steps 4321 8321 120 "0:5,30:50,60:10,90:200" --rate 5 --burst 5
  python3 - "$WORK/steps.json" <<'PY'
import json, sys
per = json.load(open(sys.argv[1]))
limits = [5, 50, 10, 200]
for i in range(1, 4):
    old, new, at = limits[i-1], limits[i], 30 * i
    w = per[at:at+30]
    if new > old:
        hit = next((s for s, x in enumerate(w) if x["events"] >= 0.9 * new), None)
        what = f"90 % of {new}/s after {hit} s" if hit is not None else f"never reached 90 % of {new}/s in 30 s"
    else:
        hit = next((s for s, x in enumerate(w) if x["requests"] <= new), None)
        what = f"under {new}/s after {hit} s" if hit is not None else "never under"
    ev = sum(x["events"] for x in w); rq = sum(x["requests"] for x in w); rl = sum(x["rate_limited"] for x in w)
    print(f"| {old} → {new} | {what} | {ev/30/new:.1%} of the new limit over 30 s | {rl/max(rq,1):.2%} rate-limited |")
rq = sum(x["requests"] for x in per); rl = sum(x["rate_limited"] for x in per)
print(f"| all 120 s | | | {rl/max(rq,1):.2%} rate-limited ({rl} of {rq}) |")
PY
  echo "### a fixed window of 50 per second, 60 s: without and with budget headers"
  for mode in http429 headers; do
    pace "window-$mode" 4322 8322 60 - --rate 50 --window 1s --mode "$mode"
    python3 - "$WORK/window-$mode.json" "$mode" <<'PY'
import json, sys
per = json.load(open(sys.argv[1]))[5:]
ev = sum(x["events"] for x in per); rq = sum(x["requests"] for x in per); rl = sum(x["rate_limited"] for x in per)
print(f"| {sys.argv[2]} | {ev/len(per):.1f}/s | {ev/len(per)/50:.1%} | {rl/max(rq,1):.2%} ({rl} of {rq}) |")
PY
  done
}

concurrency() {
  echo "## a target that limits concurrency, not rate ($UP): 4 in progress, 100 ms each (40/s), 60 s"
  pace conc 4323 8323 60 - --rate 100000 --burst 100000 --concurrency 4 --latency-ms 100
  python3 - "$WORK/conc.json" <<'PY'
import json, sys
per = json.load(open(sys.argv[1]))[10:]
ev = sum(x["events"] for x in per); rq = sum(x["requests"] for x in per); rl = sum(x["rate_limited"] for x in per)
print(f"| 4 in progress × 100 ms | {ev/len(per):.1f}/s | {ev/len(per)/40:.1%} | {rl/max(rq,1):.2%} ({rl} of {rq}) |")
PY
}

budgets() {
  echo "## a fixed window of 20 per second announcing its budget in whole seconds, 40 s ($UP)"
  printf '| syntax | delivered/s | share of 20/s | refused |\n|---|---|---|---|\n'
  for syntax in draft6 draft8 x-ratelimit x-ratelimit-epoch; do
    pace "budget-$syntax" 4325 8325 40 - --rate 20 --window 1s --mode headers --announce "$syntax"
    python3 - "$WORK/budget-$syntax.json" "$syntax" <<'PY'
import json, sys
per = json.load(open(sys.argv[1]))[5:]
ev = sum(x["events"] for x in per); rq = sum(x["requests"] for x in per); rl = sum(x["rate_limited"] for x in per)
print(f"| {sys.argv[2]} | {ev/len(per):.1f}/s | {ev/len(per)/20:.1%} | {rl/max(rq,1):.2%} ({rl} of {rq}) |")
PY
  done
}

outage() {
  echo "## a target down for 60 s under a 2,000-event backlog, then back ($UP)"
  start outage-target "$BIN/relay" target --listen 127.0.0.1:4324 --rate 200
  local T=$LAST_PID
  faults() { curl -sf -X PUT -H 'content-type: application/json' -d "$1" http://127.0.0.1:4324/admin/faults >/dev/null; }
  faults '{"outage": true}'
  up outage 8324 4324
  local R=$LAST_PID
  sim 8324 --rps 2000 --count 2000 >/dev/null
  sleep 60
  local down; down=$(json <(stats 127.0.0.1:4324) "d['requests']")
  faults '{"outage": false}'
  local t0; t0=$(date +%s)
  local drained=">240"
  for _ in $(seq 240); do
    "$UP" status --data-dir "$WORK/outage-data" --json >"$WORK/outage-status.json"
    if [ "$(json "$WORK/outage-status.json" "d['queued'] + d['in_flight']")" = 0 ]; then drained=$(( $(date +%s) - t0 )); break; fi
    sleep 1
  done
  printf '| requests while down (60 s) | dead-lettered | delivered | drained after it came back |\n|---|---|---|---|\n'
  printf '| %s | %s | %s | %s s |\n' "$down" "$(json "$WORK/outage-status.json" "d['dead']")" \
    "$(json <(stats 127.0.0.1:4324) "d['events']")" "$drained"
  stop "$R"; stop "$T"
}

fleet() {
  echo "## fleet: dispatchers sharing a 50/s limit (burst 5) through the stack's control table"
  if [ ! -x .venv-moto/bin/moto_server ]; then
    python3 -m venv .venv-moto && .venv-moto/bin/pip install --quiet "moto[server]==5.2.5"
  fi
  cargo build --release --quiet -p relay-lambda --example fleet
  "$BIN/examples/fleet" 30 2>/dev/null
  echo "### the same with the work through SQS and the events table on moto (moto-bound)"
  "$BIN/examples/fleet" 20 stack 2>/dev/null | tail -n 3
}

lambda() {
  echo "## Lambda: sizes (x86_64, release, stripped) and init under the local Runtime API"
  scripts/build-lambdas.sh | tail -n 5
  [ -x .venv-moto/bin/moto_server ] || { python3 -m venv .venv-moto && .venv-moto/bin/pip install --quiet "moto[server]==5.2.5"; }
  .venv-moto/bin/python loadtest/lambda_init.py "${CARGO_TARGET_DIR:-target}/lambda" "$BIN/relay" \
    .venv-lambda/bin/cargo-lambda 5
}

aws_ack() {
  echo "## AWS receiver: ack latency against moto (informational), X-Ray on and off"
  [ -x .venv-moto/bin/moto_server ] || { python3 -m venv .venv-moto && .venv-moto/bin/pip install --quiet "moto[server]==5.2.5"; }
  .venv-moto/bin/moto_server -H 127.0.0.1 -p 5311 >"$WORK/moto.out" 2>&1 &
  M=$!; PIDS+=("$M")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:5311/moto-api/ >/dev/null 2>&1 && break; sleep 0.1; done
  start target "$BIN/relay" target --listen 127.0.0.1:4311 --rate 200
  T=$LAST_PID
  printf '| X-Ray | acked/s | p50 ms | p99 ms | max ms | not acked |\n|---|---|---|---|---|---|\n'
  for xray in on off; do
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench RELAY_XRAY=$xray \
      start relay-aws-$xray "$UP" up --backend aws --create-resources --stack "bench-$xray" \
      --endpoint-url http://127.0.0.1:5311 --region us-east-1 --listen 127.0.0.1:8311 \
      --target-url http://127.0.0.1:4311/graphql --api-key bench --store-timeout 3s
    R=$LAST_PID
    "$BIN/relay" simulate --url http://127.0.0.1:8311 --api-key bench --rps 20 --count 100 --json >/dev/null || true
    f="$WORK/aws-ack-$xray.json"
    "$BIN/relay" simulate --url http://127.0.0.1:8311 --api-key bench --rps 50 --duration 20s --json >"$f" || true
    printf '| %s | %s | %s | %s | %s | %s |\n' "$xray" "$(json "$f" "round(d['acked_per_s'])")" \
      "$(json "$f" "d['latency_ms']['p50']")" "$(json "$f" "d['latency_ms']['p99']")" \
      "$(json "$f" "d['latency_ms']['max']")" "$(json "$f" "d['sent'] - d['acked']")"
    stop "$R"
  done
  stop "$T"; stop "$M"
}

# lines FILE N PREFIX: N valid events as JSON lines
lines() {
  python3 - "$@" <<'PY'
import json, sys
path, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"{prefix}-{i}", "name": "order.created", "body": "x" * 64,
                            "timestamp": 1763800000 + i}) + "\n")
PY
}

batching() {
  echo "## batching (target limit 10 requests/s, burst 10; a 30,000-event backlog; 30 s measured after 10 s)"
  printf '| --batch | delivered events/s | requests/s | rate-limited requests | duplicates |\n|---|---|---|---|---|\n'
  lines "$WORK/backlog.jsonl" 30000 backlog
  for batch in 1 10 50; do
    start target "$BIN/relay" target --listen 127.0.0.1:4320 --rate 10 --burst 10
    T=$LAST_PID
    start relay "$UP" up --listen 127.0.0.1:8320 --target-url http://127.0.0.1:4320/graphql \
      --api-key bench --data-dir "$WORK/batching-$batch" --batch "$batch"
    R=$LAST_PID
    "$BIN/relay" import "$WORK/backlog.jsonl" --url http://127.0.0.1:8320 --api-key bench --json >/dev/null
    sleep 10
    s0=$(stats 127.0.0.1:4320); sleep 30; s1=$(stats 127.0.0.1:4320)
    python3 - "$s0" "$s1" "$batch" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
events = b["events"] - a["events"]; reqs = b["requests"] - a["requests"]; rl = b["rate_limited"] - a["rate_limited"]
print(f"| {sys.argv[3]} | {events/30:.1f} | {reqs/30:.1f} | {rl} of {reqs} | {b['duplicates']} |")
PY
    stop "$R"; stop "$T"
  done
}

batch_ingest() {
  echo "## batch ingest ($(nproc) cores, sender on the same machine)"
  start target "$BIN/relay" target --listen 127.0.0.1:4321 --rate 1
  T=$LAST_PID
  start relay "$UP" up --listen 127.0.0.1:8321 --target-url http://127.0.0.1:4321/graphql \
    --api-key bench --data-dir "$WORK/batch-ingest" --target-rate 1
  R=$LAST_PID
  lines "$WORK/import-a.jsonl" 200000 a
  lines "$WORK/import-b.jsonl" 1000000 b
  sim 8321 --rps 500 --count 1000 >/dev/null
  printf '| how | events | events/s | p99 ms (single posts) |\n|---|---|---|---|\n'
  sim 8321 --rps 60000 --duration 10s --max-in-flight 256 >"$WORK/single.json"
  f="$WORK/single.json"
  printf '| single posts, saturation | %s | %s | %s |\n' "$(json "$f" "d['acked']")" \
    "$(json "$f" "round(d['acked_per_s'])")" "$(json "$f" "d['latency_ms']['p99']")"
  "$BIN/relay" import "$WORK/import-a.jsonl" --url http://127.0.0.1:8321 --api-key bench --json >"$WORK/import-a.json"
  f="$WORK/import-a.json"
  printf '| relay import, 500 per request, 4 in flight | %s | %s | |\n' "$(json "$f" "d['accepted']")" \
    "$(json "$f" "round(d['events_per_s'])")"
  echo
  printf '| single posts at 2,000/s for 10 s | acked | p50 ms | p99 ms | p99.9 ms | max ms | import events/s meanwhile |\n|---|---|---|---|---|---|---|\n'
  sim 8321 --rps 2000 --duration 10s >"$WORK/alone.json"
  f="$WORK/alone.json"
  printf '| alone | %s | %s | %s | %s | %s | |\n' "$(json "$f" "d['acked']")" "$(json "$f" "d['latency_ms']['p50']")" \
    "$(json "$f" "d['latency_ms']['p99']")" "$(json "$f" "d['latency_ms']['p999']")" "$(json "$f" "d['latency_ms']['max']")"
  for concurrency in 4 1; do
    # A fresh copy of the ids each time, so every import stores 1,000,000 new events.
    sed "s/\"b-/\"b$concurrency-/" "$WORK/import-b.jsonl" >"$WORK/import-b$concurrency.jsonl"
    "$BIN/relay" import "$WORK/import-b$concurrency.jsonl" --url http://127.0.0.1:8321 --api-key bench \
      --concurrency "$concurrency" --json >"$WORK/import-b$concurrency.json" &
    I=$!
    sim 8321 --rps 2000 --duration 10s >"$WORK/during.json"
    wait "$I" || true
    f="$WORK/during.json"; g="$WORK/import-b$concurrency.json"
    printf '| during an import, --concurrency %s | %s | %s | %s | %s | %s | %s (%s s for 1,000,000) |\n' "$concurrency" \
      "$(json "$f" "d['acked']")" "$(json "$f" "d['latency_ms']['p50']")" \
      "$(json "$f" "d['latency_ms']['p99']")" "$(json "$f" "d['latency_ms']['p999']")" "$(json "$f" "d['latency_ms']['max']")" \
      "$(json "$g" "round(d['events_per_s'])")" "$(json "$g" "round(d['elapsed_s'], 1)")"
    rm -f "$WORK/import-b$concurrency.jsonl"
  done
  stop "$R"; stop "$T"
}

indexing() {
  echo "## indexing 1,000,000 imported events ($(nproc) cores)"
  start target "$BIN/relay" target --listen 127.0.0.1:4324 --rate 1
  T=$LAST_PID
  rm -rf "$WORK/indexing-data"
  start relay "$UP" up --listen 127.0.0.1:8324 --target-url http://127.0.0.1:4324/graphql \
    --api-key bench --data-dir "$WORK/indexing-data"
  R=$LAST_PID
  "$BIN/relay" pause --data-dir "$WORK/indexing-data" --reason bench >/dev/null
  sleep 2
  lines "$WORK/indexing.jsonl" 1000000 i
  local t0 t1 t2 waiting
  t0=$(date +%s.%N)
  "$BIN/relay" import "$WORK/indexing.jsonl" --url http://127.0.0.1:8324 --api-key bench --json >/dev/null
  t1=$(date +%s.%N)
  while :; do
    waiting=$("$BIN/relay" status --data-dir "$WORK/indexing-data" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['queued'] + d['in_flight'])")
    [ "$waiting" -ge 1000000 ] && break
    sleep 0.2
  done
  t2=$(date +%s.%N)
  python3 - "$t0" "$t1" "$t2" <<'PY'
import sys
t0, t1, t2 = map(float, sys.argv[1:])
print(f"| import s | indexed s (from the import's start) | indexed events/s |\n|---|---|---|\n| {t1-t0:.1f} | {t2-t0:.1f} | {1_000_000/(t2-t0):,.0f} |")
PY
  stop "$R"; stop "$T"
  rm -f "$WORK/indexing.jsonl"
}

console_api() {
  echo "## console API over a 1,000,000-event store ($(nproc) cores)"
  start target "$BIN/relay" target --listen 127.0.0.1:4322 --rate 1
  T=$LAST_PID
  local token=bench-console-admin-token
  start relay "$UP" up --listen 127.0.0.1:8322 --target-url http://127.0.0.1:4322/graphql \
    --api-key bench --data-dir "$WORK/console-data" --console 127.0.0.1:8323 --admin-token "$token"
  R=$LAST_PID
  "$BIN/relay" pause --data-dir "$WORK/console-data" --reason bench >/dev/null
  sleep 2
  lines "$WORK/console.jsonl" 1000000 c
  "$BIN/relay" import "$WORK/console.jsonl" --url http://127.0.0.1:8322 --api-key bench --json >"$WORK/console-import.json"
  printf 'import: %s events/s (%s s for 1,000,000)\n\n' "$(json "$WORK/console-import.json" "round(d['events_per_s'])")" \
    "$(json "$WORK/console-import.json" "round(d['elapsed_s'], 1)")"
  sleep 5
  printf '| call | median ms | max ms | events on the page | read |\n|---|---|---|---|---|\n'
  for call in "/api/v1/overview" "/api/v1/events?limit=50" "/api/v1/events?limit=50&id_prefix=c-99999" \
      "/api/v1/events?limit=50&field=name%3Dnone" "/api/v1/events?limit=50&status=dead" \
      "/api/v1/events?limit=50&since=1m" "/api/v1/dead-letters/groups" "/metrics"; do
    python3 - "$call" "$token" <<'PY'
import json, sys, time, urllib.request
call, token = sys.argv[1], sys.argv[2]
times, body = [], b""
for _ in range(5):
    request = urllib.request.Request("http://127.0.0.1:8323" + call, headers={"authorization": "Bearer " + token})
    t = time.perf_counter()
    with urllib.request.urlopen(request) as answer:
        body = answer.read()
    times.append((time.perf_counter() - t) * 1000)
times.sort()
page = json.loads(body) if call.startswith("/api/v1/events") else None
events = len(page["events"]) if page else ""
scanned = page["scanned"] if page else ""
print(f"| `{call}` | {times[2]:.1f} | {times[-1]:.1f} | {events} | {scanned} |")
PY
  done
  stop "$R"; stop "$T"
  rm -f "$WORK/console.jsonl"
}

case "${1:-all}" in
  ingest) ingest ;;
  dispatch) dispatch ;;
  memory) memory ;;
  ack-tail) ack_tail ;;
  pressure) pressure ;;
  fsyncs) fsyncs ;;
  retention) retention ;;
  pacing) pacing ;;
  concurrency) concurrency ;;
  outage) outage ;;
  budgets) budgets ;;
  fleet) fleet ;;
  lambda) lambda ;;
  aws-ack) aws_ack ;;
  batching) batching ;;
  batch-ingest) batch_ingest ;;
  console) console_api ;;
  indexing) indexing ;;
  all) ingest; dispatch; memory; ack_tail; pressure; fsyncs; retention; pacing; concurrency; budgets; outage; fleet; lambda; aws_ack; batching; batch_ingest; indexing; console_api ;;
  *) echo "usage: $0 [ingest|dispatch|memory|ack-tail|pressure|fsyncs|retention|pacing|concurrency|budgets|outage|fleet|lambda|aws-ack|batching|batch-ingest|indexing|console|all]" >&2; exit 2 ;;
esac

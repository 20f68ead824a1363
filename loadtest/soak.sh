#!/usr/bin/env bash
# The soak: `relay soak` on each backend, bounded in time (default 10 minutes of sending each),
# on loopback. A source that never stops (50 events/s locally, 15 on AWS), a flaky target (5 %
# of requests fail), a SIGKILL every minute, and storage faults: the disk's on the embedded
# store (a release binary built with the fault-injection feature), a proxy that fails 3 % of
# AWS calls on AWS (moto, started here). Each run ends in a table; lost must be 0.
#
#   loadtest/soak.sh                 both backends, 10 minutes each
#   loadtest/soak.sh local 2m        one backend, another duration
#
# Tables and JSON go to loadtest/reports/soak-<backend>.{txt,json}. The release binary built
# here has fault injection in it: `cargo build --release` again before anything else uses it.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${1:-"local aws"}
DURATION=${2:-10m}
cargo build --release --quiet -p relay --features fault-injection
RELAY="${CARGO_TARGET_DIR:-target}/release/relay"
mkdir -p loadtest/reports

MOTO_PID=
cleanup() { [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true; }
trap cleanup EXIT

status=0
for backend in $BACKENDS; do
  args=(soak --backend "$backend" --duration "$DURATION")
  if [ "$backend" = aws ]; then
    if [ ! -x .venv-moto/bin/moto_server ]; then
      python3 -m venv .venv-moto && .venv-moto/bin/pip install --quiet "moto[server]==5.2.5"
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    .venv-moto/bin/moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break; sleep 0.1; done
    export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
    args+=(--endpoint-url "http://127.0.0.1:$port" --region us-east-1)
  fi
  echo "==> relay ${args[*]}"
  if ! "$RELAY" "${args[@]}" --json >"loadtest/reports/soak-$backend.json"; then status=1; fi
  python3 - "loadtest/reports/soak-$backend.json" <<'PY' | tee "loadtest/reports/soak-$backend.txt"
import json, sys
d = json.load(open(sys.argv[1]))
s = d["soak"]
rows = [
    ("backend", s["backend"]),
    ("ran", f'{s["seconds"]:.0f} s at {s["rps"]:g} events/s'),
    ("SIGKILLs", s["kills"]),
    ("storage faults injected", f'{s["storage_faults"]} {s["storage_faults_kind"]}'),
    ("target failures (503) / 429s", f'{s["target_failures"]} / {s["target_rate_limited"]}'),
    ("sent", s["sent"]),
    ("acknowledged (2xx within 500 ms)", s["acked"]),
    ("late 2xx / refused / unanswered", f'{s["late_acks"]} / {s["refused"]} / {s["unanswered"]}'),
    ("delivered", s["delivered"]),
    ("dead-lettered", s["dead_lettered"]),
    ("lost", len(s["lost"])),
    ("duplicates on the wire", s["duplicates_on_the_wire"]),
]
for k, v in rows:
    print(f"| {k} | {v} |")
for n in s["notes"]:
    print("note:", n)
print("PASSED" if d["passed"] else "FAILED")
PY
  cleanup; MOTO_PID=
done
exit $status

#!/usr/bin/env bash
# How long a coalition cut takes to apply on every node of the 15-node
# sample network, from the last signature of its quorum: runs the default
# scenario (USA cut halfway, 8 nations' admins signing, each on its own
# node, over the emulated WAN with the capitals' fibre delays) RUNS times
# (default 5) and prints each run's time, which node was last, and p50/max.
set -euo pipefail
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/entente"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for run in $(seq 1 "$RUNS"); do
  "$BIN" simulate "$ROOT/config/scenarios/europe-cut-usa.toml" --duration "${DURATION:-10s}" \
    --out "$WORK/report$run" --json >"$WORK/run$run.json" 2>/dev/null || true
done
python3 - "$WORK" "$RUNS" <<'PY'
import json, re, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
times = []
for run in range(1, runs + 1):
    report = json.load(open(f"{work}/run{run}.json"))
    for event in report["events"]:
        m = re.search(r"([0-9.]+) ms after the last signature \(the last: (\w+)\)", event["detail"])
        if event["action"].startswith("cut") and m:
            times.append(float(m.group(1)))
            print(f"run {run}: {event['action']}: every node applied it {m.group(1)} ms after the last signature (last: {m.group(2)}); verdict {'PASS' if report['verdict']['passed'] else 'FAIL'}")
print(f"p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms over {len(times)} runs")
PY

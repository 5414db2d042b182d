#!/usr/bin/env bash
# How long `entente admin cut USA` takes on the 15-node sample network:
# from the command starting to every other node having applied it (its
# `total_us`, connecting included), and the slowest node's own apply time.
# Runs its own `entente up` in a temporary folder, cuts and restores USA
# RUNS times (default 10), each time once USA is linked to all its peers
# again, and prints p50 and max of each.
set -euo pipefail
RUNS=${RUNS:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/entente"
WORK=$(mktemp -d)
trap 'kill $UP 2>/dev/null; rm -rf "$WORK"' EXIT
N=(--network "$ROOT/config/network.toml" --certs "$WORK/certs")
"$BIN" up "${N[@]}" --data "$WORK/data" >"$WORK/up.log" 2>&1 &
UP=$!
usa_links() {
  "$BIN" admin status "${N[@]}" --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sum(1 for n in d["nodes"] for p in n.get("status", {}).get("peers", [])
          if p["nation"] == "USA" and p["outbound"] and p["inbound"]))' 2>/dev/null || echo 0
}
for run in $(seq 1 "$RUNS"); do
  for _ in $(seq 1 150); do
    [ "$(usa_links)" = 4 ] && break
    sleep 0.2
  done
  "$BIN" admin cut USA "${N[@]}" --json >"$WORK/cut$run.json" || { cat "$WORK/cut$run.json"; tail -5 "$WORK/up.log"; exit 1; }
  "$BIN" admin restore USA "${N[@]}" --json >/dev/null
done
python3 - "$WORK" "$RUNS" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
total, apply = [], []
for run in range(1, runs + 1):
    report = json.load(open(f"{work}/cut{run}.json"))
    assert not report["failed"], report["failed"]
    total.append(report["total_us"] / 1000)
    apply.append(max(n["applied"]["apply_us"] for n in report["nodes"]) / 1000)
print(f"cut USA on 14 nodes, {runs} runs")
print(f"  start to every node applied: p50 {statistics.median(total):.1f} ms  max {max(total):.1f} ms")
print(f"  slowest node's own apply:    p50 {statistics.median(apply):.1f} ms  max {max(apply):.1f} ms")
PY

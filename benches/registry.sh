#!/usr/bin/env bash
# Registry benchmark: runs the demo (private redis-server + commander + 1000
# simulated agents) several times on fresh servers and prints the median and
# worst of each figure. Detection is measured in one extra run that kills
# 20 agents (it waits missed_heartbeats x interval, 15 s by default).
#
#   bash benches/registry.sh [runs] [agents]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
agents=${2:-1000}
out=.bench
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/fleet-commander

for i in $(seq 1 "$runs"); do
  "$bin" demo --agents "$agents" --kill 0 --status-queries 2000 --report "$out/reg-$i.json" >/dev/null
done
"$bin" demo --agents "$agents" --kill 20 --status-queries 100 --report "$out/detect.json" >/dev/null

python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
reps = [json.load(open(f"{out}/reg-{i}.json")) for i in range(1, runs + 1)]
det = json.load(open(f"{out}/detect.json"))
def row(name, values, unit):
    print(f"| {name} | {statistics.median(values):.2f} {unit} | {max(values):.2f} {unit} |")
print(f"agents: {reps[0]['agents']}, registrations in flight: {reps[0]['batch']}, runs: {runs}\n")
print("| figure | median of runs | worst run |")
print("|---|---|---|")
row("all agents registered (total)", [r["registration_total_ms"] for r in reps], "ms")
row("registration p50", [r["registration"]["p50_ms"] for r in reps], "ms")
row("registration p99", [r["registration"]["p99_ms"] for r in reps], "ms")
row("registration max", [r["registration"]["max_ms"] for r in reps], "ms")
row("fleet status p50 (HTTP)", [r["status"]["p50_ms"] for r in reps], "ms")
row("fleet status p99 (HTTP)", [r["status"]["p99_ms"] for r in reps], "ms")
print(f"| status fresh after registration | {all(r['status_fresh'] for r in reps)} | |")
print(f"\ndetection ({det['detected']}/{det['stopped']} stopped agents detected, bound {det['detection_bound_ms']:.0f} ms):")
print(f"p50 {det['detection']['p50_ms']:.0f} ms, max {det['detection']['max_ms']:.0f} ms after going silent; "
      f"false deaths: {det['false_deaths']}")
PY

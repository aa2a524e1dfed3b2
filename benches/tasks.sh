#!/usr/bin/env bash
# Task benchmark: the same workload through fleet-commander and through BullMQ,
# one after the other in one run, on the same private redis-server.
#  - paced: 1000 tasks submitted at 200/s; submit -> assignment p50/p99;
#  - saturated: 10,000 no-op tasks through 1000 agents; tasks per second.
# Installs the npm package bullmq into benches/bullmq/node_modules if missing.
#   bash benches/tasks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.bench
mkdir -p "$out"
# FLEET_BIN: another build to measure (a before/after comparison), with
# FLEET_CONFIG its config file; by default this tree's, built here.
if [[ -n ${FLEET_BIN:-} ]]; then bin=$FLEET_BIN; else cargo build --release --quiet; bin=target/release/fleet-commander; fi
if [[ ! -d benches/bullmq/node_modules/bullmq ]]; then
  (cd benches/bullmq && npm install --silent --no-audit --no-fund >/dev/null)
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --maxclients 20000 --daemonize yes >/dev/null
cleanup() { kill "${cmd_pid:-0}" 2>/dev/null || true; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

echo "BullMQ ($(node -p 'require("./benches/bullmq/node_modules/bullmq/package.json").version'))..."
node benches/bullmq/bench.mjs "$port" > "$out/bullmq.json"
redis-cli -p "$port" flushall >/dev/null

echo "fleet-commander..."
# Security as shipped: a commander key for the run; the simulator issues its agents' keys.
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
export FLEET_COMMANDER_KEY="$dir/commander.key"
export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn
"$bin" run & cmd_pid=$!
until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
"$bin" sim --agents 1000 --status-queries 10 --tasks 1000 --task-rate 200 --report "$out/fc-paced.json" >/dev/null
"$bin" sim --agents 1000 --status-queries 10 --tasks 10000 --report "$out/fc-saturated.json" >/dev/null

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
b = json.load(open(f"{out}/bullmq.json"))
p = json.load(open(f"{out}/fc-paced.json"))["tasks"]
s = json.load(open(f"{out}/fc-saturated.json"))["tasks"]
print()
print("| workload | fleet-commander | BullMQ |")
print("|---|---|---|")
print(f"| paced 200/s, submit -> assignment p50 | {p['dispatch']['p50_ms']:.2f} ms | {b['paced']['p50_ms']:.2f} ms |")
print(f"| paced 200/s, submit -> assignment p99 | {p['dispatch']['p99_ms']:.2f} ms | {b['paced']['p99_ms']:.2f} ms |")
print(f"| saturated, 10,000 no-op tasks, 1000 agents/concurrency | {s['throughput_per_sec']:.0f} tasks/s | {b['saturated']['per_sec']:.0f} jobs/s |")
PY

#!/usr/bin/env bash
# The cost of budget accounting per result (issue 18): the saturated task
# load (10,000 no-op tasks through 1000 agents, as benches/tasks.sh) and the
# paced one (1000 tasks at 200/s: submit -> assignment p50/p99), with budgets
# off (no allowance, no usage reported) and on (the shipped allowance, every
# result reporting usage: the result's script debits it), alternated in one
# run (off, on, off, on, ...) because this machine is noisy.
#
#   bash benches/budgets.sh [rounds]      # 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=.bench/budgets
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/fleet-commander
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for ((i = 1; i <= rounds; i++)); do
  for mode in off on; do
    port=$(free_port); http=$(free_port); dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --maxclients 20000 --daemonize yes >/dev/null
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
    if [[ $mode == off ]]; then
      sed 's/^allowance = [0-9]*/allowance = 0/' config/fleet.toml > "$dir/fleet.toml"; usage=0
    else
      cp config/fleet.toml "$dir/fleet.toml"; usage=1
    fi
    export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
    "$bin" --config "$dir/fleet.toml" run & cmd=$!
    trap 'kill $cmd 2>/dev/null; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1' EXIT
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
    "$bin" --config "$dir/fleet.toml" sim --agents 1000 --status-queries 10 --tasks 10000 --usage "$usage" --report "$out/sat-$mode-$i.json" >/dev/null
    "$bin" --config "$dir/fleet.toml" sim --agents 1000 --status-queries 10 --tasks 1000 --task-rate 200 --usage "$usage" --report "$out/paced-$mode-$i.json" >/dev/null
    spent=$(curl -sf "http://127.0.0.1:$http/metrics" | awk '/^fleet_budget_usage_total/ { print $2 }')
    kill $cmd; wait $cmd 2>/dev/null || true
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"
    python3 - "$out" "$mode" "$i" "$spent" <<'PY'
import json, sys
out, mode, i, spent = sys.argv[1:]
s = json.load(open(f"{out}/sat-{mode}-{i}.json"))["tasks"]
p = json.load(open(f"{out}/paced-{mode}-{i}.json"))["tasks"]
print(f"round {i}, budgets {mode}: saturated {s['throughput_per_sec']:.0f} tasks/s ({s['completed']}/{s['submitted']}); "
      f"paced dispatch p50 {p['dispatch']['p50_ms']:.2f} ms, p99 {p['dispatch']['p99_ms']:.2f} ms; units debited {float(spent):.0f}")
PY
  done
done

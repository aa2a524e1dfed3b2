#!/usr/bin/env bash
# Security on against off: the load test (benches/loadtest.sh) with signed
# messages (as shipped) and with security.mode = "open", alternated in one
# run (off, on, off, on, ...) because this machine is noisy. Prints each
# run's p99s and the commander's CPU, then the medians side by side.
# SATURATED=1 measures instead the saturated task throughput (10,000 no-op
# tasks through 1000 agents, as benches/tasks.sh), alternated the same way.
#
#   bash benches/security.sh [agents] [rounds] [hold_secs]    # 1000 agents, 3 rounds, 30 s
#   SATURATED=1 bash benches/security.sh 1000 3
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-1000}
rounds=${2:-3}
hold=${3:-30}
out=.bench/security
mkdir -p "$out"
cargo build --release --quiet
export FLEET_BIN=target/release/fleet-commander
if [[ -n ${SATURATED:-} ]]; then
  bin=$FLEET_BIN
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  for ((i = 1; i <= rounds; i++)); do
    for mode in open signed; do
      port=$(free_port); http=$(free_port); dir=$(mktemp -d)
      redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --maxclients 20000 --daemonize yes >/dev/null
      until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
      python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
      sed "s/^mode = \"signed\"/mode = \"$mode\"/" config/fleet.toml > "$dir/fleet.toml"
      export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
      "$bin" --config "$dir/fleet.toml" run & cmd=$!
      until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
      "$bin" --config "$dir/fleet.toml" sim --agents "$agents" --status-queries 10 --tasks 10000 --report "$out/sat-$mode-$i.json" >/dev/null
      kill $cmd; wait $cmd 2>/dev/null || true
      redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"
      python3 -c "import json; t = json.load(open('$out/sat-$mode-$i.json'))['tasks']; print(f'round $i, security $mode: {t[\"throughput_per_sec\"]:.0f} tasks/s, {t[\"completed\"]}/{t[\"submitted\"]} completed')"
    done
  done
  exit 0
fi
for ((i = 1; i <= rounds; i++)); do
  for mode in open signed; do
    echo "round $i: security $mode"
    SECURITY=$mode bash benches/loadtest.sh "$agents" "$hold" > "$out/$mode-$i.txt"
    cp ".bench/load-$agents.json" "$out/$mode-$i.json"
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(mode):
    return [json.load(open(f"{out}/{mode}-{i}.json")) for i in range(1, rounds + 1)]
runs = {m: load(m) for m in ("open", "signed")}
rows = [
    ("registration p99 (ms)", lambda r: r["registration"]["p99_ms"]),
    ("re-registration under churn p99 (ms)", lambda r: r["churn_registration"]["p99_ms"]),
    ("allocation p99 (ms)", lambda r: r["tasks"]["dispatch"]["p99_ms"]),
    ("fleet status p99 (ms)", lambda r: r["status"]["p99_ms"]),
    ("tasks per second", lambda r: r["tasks"]["throughput_per_sec"]),
    ("commander CPU, task load (% of a core)", lambda r: r["commander"]["tasks_cpu_percent"]),
    ("commander CPU, 5 s heartbeats (% of a core)", lambda r: r["commander"]["steady_cpu_percent"]),
    ("commander RSS (MB)", lambda r: r["commander"]["rss_mb"]),
]
print(f"\n{rounds} rounds each, alternated; medians (every run's value in brackets)\n")
print("| | security off (open) | security on (signed) | change |")
print("|---|---|---|---|")
for name, f in rows:
    off = [f(r) for r in runs["open"]]
    on = [f(r) for r in runs["signed"]]
    mo, mn = statistics.median(off), statistics.median(on)
    change = f"{100 * (mn - mo) / mo:+.0f}%" if mo else "-"
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    print(f"| {name} | {mo:.2f} [{fmt(off)}] | {mn:.2f} [{fmt(on)}] | {change} |")
names = list(runs["open"][0]["commander_latency"])
print("\n| inside the commander, p99 | off | on | change |")
print("|---|---|---|---|")
for n in names:
    off = statistics.median(r["commander_latency"][n]["p99_ms"] for r in runs["open"])
    on = statistics.median(r["commander_latency"][n]["p99_ms"] for r in runs["signed"])
    change = f"{100 * (on - off) / off:+.0f}%" if off else "-"
    print(f"| {n} | {off:.3f} ms | {on:.3f} ms | {change} |")
PY

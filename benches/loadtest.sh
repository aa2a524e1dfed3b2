#!/usr/bin/env bash
# The load test: a commander (its own process, release build) on a private
# redis-server, and a simulated fleet against it for a while: registrations,
# status queries, 5-second heartbeats, a paced task load, churn (agents
# crashing and re-registering) and agents killed for good (detection). Prints
# the report, including the commander's CPU and memory.
#
#   bash benches/loadtest.sh [agents] [hold_secs]     # 1000 agents, 30 s by default
#   bash benches/loadtest.sh 10000                    # pool maxima x10, fleet cap 12000
#   bash benches/loadtest.sh 50000                    # x50 and 60000; agents on shared connections
#
# SUBSCRIBERS=N: the simulated agents share N pub/sub connections
# (fleet_agent::Router) instead of one each; by default one each up to
# 10,000 agents, 64 shared above (a connection per agent would not fit).
#
# Agents join at JOIN_RATE registrations per second (1000 by default; for a
# larger fleet, a fifth of it per second, so that it joins in 5 s), each
# when its turn comes, answered or not (an open loop); JOIN_RATE=0 registers
# them in waves of 50 at the same instant instead (a burst: that measures how
# fast the commander drains a queue, see benches/registry.sh).
#
# Security as shipped (signed messages): a commander key is made for the run
# and the simulator issues every agent its own key. SECURITY=open runs the
# commander with security.mode = "open" (benches/security.sh compares).
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-1000}
hold=${2:-30}
out=.bench
mkdir -p "$out"
# FLEET_BIN: another build to measure (a before/after comparison), with
# FLEET_CONFIG its config file; by default this tree's, built here.
if [[ -n ${FLEET_BIN:-} ]]; then bin=$FLEET_BIN; else cargo build --release --quiet; bin=target/release/fleet-commander; fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
dir=$(mktemp -d)
config=${FLEET_CONFIG:-config/fleet.toml}
if (( agents > 1000 )); then
  # Room for the fleet: every pool's max x10 and a fleet cap of 12000 (for
  # more than 10,000 agents: x agents/1000, and 1.2 x agents).
  config="$dir/fleet.toml"
  python3 - "$config" "${FLEET_CONFIG:-config/fleet.toml}" "$agents" <<'PY'
import re, sys
text = open(sys.argv[2]).read()
agents = int(sys.argv[3])
factor = max(10, -(-agents // 1000))
cap = max(12000, agents * 6 // 5)
text = re.sub(r"^max_agents = 1000 ", f"max_agents = {cap}", text, flags=re.M)
text = re.sub(r"^(max_agents = )(\d+)$", lambda m: f"{m.group(1)}{int(m.group(2)) * factor}", text, flags=re.M)
open(sys.argv[1], "w").write(text)
PY
fi
if [[ ${SECURITY:-signed} == open ]]; then
  python3 - "$config" "$dir/open.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
if re.search(r"^\[security\]", text, flags=re.M):
    text = re.sub(r'^mode = "signed"', 'mode = "open"', text, count=1, flags=re.M)
else:
    text += '\n[security]\nmode = "open"\n'
open(sys.argv[2], "w").write(text)
PY
  config="$dir/open.toml"
else
  python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
  chmod 600 "$dir/commander.key"
  export FLEET_COMMANDER_KEY="$dir/commander.key"
fi
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --maxclients 20000 --slowlog-log-slower-than 2000 --slowlog-max-len 1024 --daemonize yes >/dev/null
cleanup() {
  kill "${cmd_pid:-0}" 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn
env ${COMMANDER_THREADS:+TOKIO_WORKER_THREADS=$COMMANDER_THREADS} "$bin" --config "$config" run & cmd_pid=$!
until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done

# Tasks at 100/s for 30 s, 50 ms of work each; churn of 0.2% of the fleet per
# second; 20 agents killed for good.
rate=${TASK_RATE:-100}
join=${JOIN_RATE:-$(( agents > 5000 ? agents / 5 : 1000 ))}
join_args=(--batch 50 --subscribers "${SUBSCRIBERS:-$(( agents > 10000 ? 64 : 0 ))}")
(( join > 0 )) && join_args+=(--join-rate "$join")
redis_cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { print s }'; }
r0=$(redis_cpu); t0=$(date +%s.%N)
TIMEFORMAT="sim process: %U s user + %S s system CPU over %R s"
time env ${SIM_THREADS:+TOKIO_WORKER_THREADS=$SIM_THREADS} "$bin" --config "$config" sim --agents "$agents" "${join_args[@]}" --status-queries 2000 \
  --tasks $(( rate * 30 )) --task-rate "$rate" --work-ms 50 \
  --churn-per-sec "$(python3 -c "print($agents * 0.002)")" --stop 20 --hold-secs "$hold" \
  --commander-pid "$cmd_pid" --report "$out/load-$agents.json"
python3 -c "print(f'redis-server: {100 * ($(redis_cpu) - $r0) / ($(date +%s.%N) - $t0):.1f}% of a core over the whole run')"
# Redis's memory at its peak (the whole fleet registered, the messages'
# nonces held for their window) and the connections made during the run.
redis-cli -p "$port" info memory | awk -F: '/^used_memory_peak:/ { printf "redis-server: memory peak %.1f MB", $2 / 1e6 }'
redis-cli -p "$port" info stats | awk -F: '/^total_connections_received:/ { printf ", %d connections made in all\n", $2 }'

# Commands that held Redis (single-threaded: everyone waits) 2 ms or more.
redis-cli -p "$port" --json slowlog get 1024 | python3 -c '
import json, sys
slow = json.load(sys.stdin)
print(f"redis-server: {len(slow)} commands took 2 ms or more inside Redis", end="")
top = sorted(slow, key=lambda e: -e[2])[:3]
print(": " + ", ".join(f"{e[3][0]} {e[2] / 1000:.1f} ms" for e in top) if top else "")
'

python3 - "$out/load-$agents.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, c = r["tasks"], r["commander"]
def lat(name, l):
    print(f"| {name} | {l['p50_ms']:.2f} ms | {l['p99_ms']:.2f} ms | {l['max_ms']:.2f} ms | {l['count']} |")
how = f"joining at {r['join_rate']:.0f}/s" if r.get("join_rate") else f"{r['batch']} registering at once"
print(f"\nagents {r['agents']} (registered {r['registered']}), {how}, all in {r['registration_total_ms']:.0f} ms\n")
print("| latency | p50 | p99 | max | samples |")
print("|---|---|---|---|---|")
lat(f"registration ({how})", r["registration"])
lat("re-registration under churn", r["churn_registration"])
lat("allocation (submit -> agent holds the task)", t["dispatch"])
lat("fleet status (HTTP)", r["status"])
lat("the machine's floor: Redis PING from the simulator, every 10 ms", r["redis_ping"])
w = r["wakeup_delay"]
lat("the machine's floor: how late a thread wakes from a 1 ms sleep", w["late"])
print()
print(f"tasks: {t['completed']}/{t['submitted']} completed, {t['throughput_per_sec']:.0f}/s")
print(f"heartbeats handled: {r['heartbeats_per_sec']:.0f}/s; churn: {r['churned']} agents restarted")
d = r["detection"]
print(f"detection: {r['detected']}/{r['stopped']} killed agents, p50 {d['p50_ms']:.0f} ms, max {d['max_ms']:.0f} ms "
      f"after going silent (bound {r['detection_bound_ms']:.0f} ms); false deaths {r['false_deaths']}")
print(f"commander CPU: {c['tasks_cpu_percent']:.1f}% of a core during the task load, "
      f"{c['steady_cpu_percent']:.1f}% over {c['steady_secs']:.0f} s after it (heartbeats, churn, detection)")
print(f"commander memory: RSS {c['rss_mb']:.1f} MB, peak {c['peak_rss_mb']:.1f} MB")
print(f"the machine: a sleeping thread woke {w['long']} times 5 ms or more late, "
      f"{w['long_time_percent']:.2f}% of the run (every process here is delayed alike)")
print("\n| measured inside the commander (its histograms) | p50 | p99 | samples | over 5 ms |")
print("|---|---|---|---|---|")
for name, m in r["commander_latency"].items():
    print(f"| {name} | {m['p50_ms']:.3f} ms | {m['p99_ms']:.3f} ms | {m['count']} | {m.get('over_5ms', '')} |")
PY

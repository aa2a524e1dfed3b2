#!/usr/bin/env bash
# What a task and a heartbeat cost, counted rather than timed, beside BullMQ
# in the same run on one private redis-server:
#   - Redis CPU (INFO cpu, user + system) and Redis commands (INFO
#     commandstats: every command, the scripts' inner calls included);
#   - the commander's CPU (/proc/PID/stat) and the clients' (rusage of the
#     node process, or of the simulator);
#   - the script calls, and Redis's time inside them (commandstats' usec of
#     EVALSHA/EVAL/FCALL, the commands they ran included): what the scripts'
#     own Lua work costs, beside BullMQ's;
# per task for 10,000 no-op tasks through 1000 agents (BullMQ: concurrency
# 1000), and per heartbeat for 1000 agents holding still.
#
# fleet-commander's per-task figures are those of a run with tasks minus a
# run of the same fleet, for as long, without tasks (registration,
# heartbeats and leaving are not the tasks' cost); its per-heartbeat figures
# are what 20 s more of holding the fleet cost, less 20 s of the commander
# alone (its loops' own cost), divided by the heartbeats in those 20 s.
#
#   bash benches/cost.sh [rounds]          # 1 round by default
#   FLEET_BIN=... bash benches/cost.sh     # another build (a before/after)
#   SECURITY=open bash benches/cost.sh     # security.mode = "open"
#   BUDGETS=off bash benches/cost.sh       # budgets.allowance = 0 (no budget)
#   USAGE=10 bash benches/cost.sh          # each attempt reports usage 10 (debited)
#   THREADS=2 bash benches/cost.sh         # fleet.runtime_threads = 2 (1 as shipped)
#   SUBMIT_BATCH=100 bash benches/cost.sh  # 100 tasks per POST /v1/tasks (an array)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
out=.bench
mkdir -p "$out"
if [[ -n ${FLEET_BIN:-} ]]; then bin=$FLEET_BIN; else cargo build --release --quiet; bin=target/release/fleet-commander; fi
if [[ ! -d benches/bullmq/node_modules/bullmq ]]; then
  (cd benches/bullmq && npm install --silent --no-audit --no-fund >/dev/null)
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --maxclients 20000 --daemonize yes >/dev/null
cleanup() { [[ -z ${cmd_pid:-} ]] || kill "$cmd_pid" 2>/dev/null || true; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

# One line: Redis CPU seconds, Redis commands, (if given) a process's CPU
# seconds, then the seconds Redis spent in script calls (EVALSHA, EVAL,
# FCALL: the commands they ran included) and how many there were.
snap() {
  python3 - "$port" "${1:-0}" <<'PY'
import os, subprocess, sys
port, pid = sys.argv[1], int(sys.argv[2])
info = subprocess.run(["redis-cli", "-p", port, "info", "all"], capture_output=True, text=True).stdout
cpu = calls = script_s = scripts = 0.0
for line in info.splitlines():
    if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
        cpu += float(line.split(":")[1])
    elif line.startswith("cmdstat_"):
        n = float(line.split("calls=")[1].split(",")[0])
        calls += n
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_fcall:")):
            scripts += n
            script_s += float(line.split("usec=")[1].split(",")[0]) / 1e6
proc = 0.0
if pid:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    proc = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
print(f"{cpu} {calls} {proc} {script_s} {scripts}")
PY
}
# cpu_of OUT CMD...: runs CMD with its output to OUT; prints its CPU seconds (user + system).
cpu_of() {
  local to=$1; shift
  /usr/bin/time -f "%U %S" -o "$dir/time" "$@" > "$to"
  awk '{print $1 + $2}' "$dir/time"
}

metric() { curl -s "http://127.0.0.1:$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

config="$dir/fleet.toml"
cp config/fleet.toml "$config"
if [[ ${BUDGETS:-on} == off ]]; then
  sed -i 's/^allowance = [0-9]*/allowance = 0/' "$config"
  grep -q '^allowance = 0' "$config"
fi
if [[ -n ${THREADS:-} ]]; then
  sed -i "s/^runtime_threads = [0-9]*/runtime_threads = $THREADS/" "$config"
  grep -q "^runtime_threads = $THREADS" "$config"
fi
if [[ ${SECURITY:-signed} == open ]]; then
  sed -i 's/^mode = "signed"/mode = "open"/' "$config"
  grep -q '^mode = "open"' "$config" || printf '\n[security]\nmode = "open"\n' >> "$config"
else
  python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
  export FLEET_COMMANDER_KEY="$dir/commander.key"
fi
export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn
rows=()
for round in $(seq 1 "$rounds"); do
  # --- BullMQ: 10,000 no-op jobs, concurrency 1000 ---
  redis-cli -p "$port" flushall >/dev/null
  read -r r0 c0 _ s0 n0 < <(snap)
  node_cpu=$(cpu_of "$out/cost-bullmq.json" node benches/bullmq/bench.mjs "$port" saturated)
  read -r r1 c1 _ s1 n1 < <(snap)
  bull="$r0 $c0 $r1 $c1 $node_cpu $s0 $n0 $s1 $n1"

  # --- fleet-commander ---
  redis-cli -p "$port" flushall >/dev/null
  "$bin" --config "$config" run > "$dir/commander.log" 2>&1 & cmd_pid=$!
  until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
  sim=("$bin" --config "$config" sim --agents 1000 --status-queries 0 --usage "${USAGE:-0}")
  if [[ ${SUBMIT_BATCH:-1} != 1 ]]; then sim+=(--submit-batch "$SUBMIT_BATCH"); fi
  # With tasks.
  read -r r0 c0 p0 s0 n0 < <(snap "$cmd_pid")
  sim_cpu=$(cpu_of /dev/null "${sim[@]}" --tasks 10000 --report "$out/cost-fc.json")
  read -r r1 c1 p1 s1 n1 < <(snap "$cmd_pid")
  tasks_run="$r0 $c0 $p0 $r1 $c1 $p1 $sim_cpu"
  tasks_scripts="$s0 $n0 $s1 $n1"
  secs=$(python3 -c "import json; t=json.load(open('$out/cost-fc.json'))['tasks']; print(max(1, round(t['submitted'] / t['throughput_per_sec'])))")
  # The same fleet for as long, without tasks.
  read -r r0 c0 p0 s0 n0 < <(snap "$cmd_pid")
  hb0=$(metric fleet_heartbeats_total)
  sim_cpu=$(cpu_of /dev/null "${sim[@]}" --hold-secs "$secs")
  read -r r1 c1 p1 s1 n1 < <(snap "$cmd_pid")
  hb1=$(metric fleet_heartbeats_total)
  idle_run="$r0 $c0 $p0 $r1 $c1 $p1 $sim_cpu $hb0 $hb1"
  idle_scripts="$s0 $n0 $s1 $n1"
  # Heartbeats: a long hold minus that one.
  long=$((secs + 20))
  read -r r0 c0 p0 _ < <(snap "$cmd_pid")
  sim_cpu=$(cpu_of /dev/null "${sim[@]}" --hold-secs "$long")
  read -r r1 c1 p1 _ < <(snap "$cmd_pid")
  hb2=$(metric fleet_heartbeats_total)
  long_run="$r0 $c0 $p0 $r1 $c1 $p1 $sim_cpu $hb1 $hb2"
  # The commander alone for the 20 s the long hold added: its loops' own cost.
  read -r r0 c0 p0 _ < <(snap "$cmd_pid")
  sleep 20
  read -r r1 c1 p1 _ < <(snap "$cmd_pid")
  alone="$r0 $c0 $p0 $r1 $c1 $p1"
  kill "$cmd_pid"; wait "$cmd_pid" 2>/dev/null || true; cmd_pid=

  rows+=("$(python3 - "$out" "$bull" "$tasks_run" "$idle_run" "$long_run" "$alone" "$tasks_scripts" "$idle_scripts" <<'PY'
import json, sys
out = sys.argv[1]
b = [float(x) for x in sys.argv[2].split()]
t = [float(x) for x in sys.argv[3].split()]
i = [float(x) for x in sys.argv[4].split()]
l = [float(x) for x in sys.argv[5].split()]
a = [float(x) for x in sys.argv[6].split()]
ts = [float(x) for x in sys.argv[7].split()]
is_ = [float(x) for x in sys.argv[8].split()]
n = 10000
bull = json.load(open(f"{out}/cost-bullmq.json"))["saturated"]
fc = json.load(open(f"{out}/cost-fc.json"))["tasks"]
row = {
  "bullmq_per_sec": bull["per_sec"],
  "bullmq_redis_us": (b[2] - b[0]) / n * 1e6,
  "bullmq_cmds": (b[3] - b[1]) / n,
  "bullmq_client_us": b[4] / n * 1e6,
  "fc_per_sec": fc["throughput_per_sec"],
  "fc_redis_us": ((t[3] - t[0]) - (i[3] - i[0])) / n * 1e6,
  "fc_cmds": ((t[4] - t[1]) - (i[4] - i[1])) / n,
  "fc_commander_us": ((t[5] - t[2]) - (i[5] - i[2])) / n * 1e6,
  "fc_client_us": (t[6] - i[6]) / n * 1e6,
  # Time inside script calls (their commands included), and the calls.
  "bullmq_script_us": (b[7] - b[5]) / n * 1e6,
  "bullmq_scripts": (b[8] - b[6]) / n,
  "fc_script_us": ((ts[2] - ts[0]) - (is_[2] - is_[0])) / n * 1e6,
  "fc_scripts": ((ts[3] - ts[1]) - (is_[3] - is_[1])) / n,
}
hb = (l[8] - l[7]) - (i[8] - i[7])
if hb > 0:
  row["hb"] = hb
  # The 20 s the long hold added, less the commander's loops alone for 20 s.
  extra = lambda k: (l[k + 3] - l[k]) - (i[k + 3] - i[k]) - (a[k + 3] - a[k])
  row["hb_commander_us"] = extra(2) / hb * 1e6
  row["hb_redis_us"] = extra(0) / hb * 1e6
  row["hb_cmds"] = extra(1) / hb
print(json.dumps(row))
PY
)")
  echo "round $round: ${rows[-1]}" >&2
done

python3 - "${rows[@]}" <<'PY'
import json, sys
rows = [json.loads(r) for r in sys.argv[1:]]
def span(k, fmt="{:.0f}"):
    vs = sorted(r[k] for r in rows if k in r)
    if not vs:
        return "-"
    return fmt.format(vs[0]) if len(vs) == 1 or fmt.format(vs[0]) == fmt.format(vs[-1]) else f"{fmt.format(vs[0])}-{fmt.format(vs[-1])}"
print()
print(f"| per task, 10,000 no-op tasks, 1000 agents / concurrency 1000 ({len(rows)} rounds) | BullMQ | fleet-commander |")
print("|---|---|---|")
print(f"| saturated throughput | {span('bullmq_per_sec')} jobs/s | {span('fc_per_sec')} tasks/s |")
print(f"| Redis CPU per task | {span('bullmq_redis_us')} µs | {span('fc_redis_us')} µs |")
print(f"| Redis commands per task (scripts' inner calls included) | {span('bullmq_cmds', '{:.1f}')} | {span('fc_cmds', '{:.1f}')} |")
print(f"| script calls per task | {span('bullmq_scripts', '{:.2f}')} | {span('fc_scripts', '{:.2f}')} |")
print(f"| Redis time inside script calls per task (their commands included) | {span('bullmq_script_us')} µs | {span('fc_script_us')} µs |")
print(f"| commander CPU per task | (none) | {span('fc_commander_us')} µs |")
print(f"| clients' CPU per task (node workers and producer / simulated agents and submitter) | {span('bullmq_client_us')} µs | {span('fc_client_us')} µs |")
print()
print("| per heartbeat, 1000 agents at 5 s (all that holding the fleet costs: heartbeats, detection, status to their channels) | fleet-commander |")
print("|---|---|")
print(f"| heartbeats measured | {span('hb')} |")
print(f"| commander CPU per heartbeat | {span('hb_commander_us', '{:.1f}')} µs |")
print(f"| Redis CPU per heartbeat | {span('hb_redis_us', '{:.1f}')} µs |")
print(f"| Redis commands per heartbeat | {span('hb_cmds', '{:.2f}')} |")
PY

#!/usr/bin/env bash
# Protocol fuzzing beside a working fleet (issue 25): the simulator's 50
# agents take a paced task load while benches/fuzz.py, holding one agent's
# and one submitter's key as a thief would, publishes 20,000 invalid mutants
# as fast as it can on the six inbound channels (tampered and replayed
# captures, signed messages with bad fields, unsigned and garbage ones).
# Per round: the legitimate agents declared dead (must be 0), legitimate
# tasks completed, poisoned or lost (all completed), and the mutants the
# commander counted as refused (fleet_messages_rejected_total, against what
# was sent) and answered as accepted (a registration or a task created).
#   bash benches/fuzz.sh [rounds] [mutants]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
mutants=${2:-20000}
cargo build --release --quiet
bin=target/release/fleet-commander
out=.bench/fuzz
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Sum of a metric's series (all labels) from a /metrics scrape.
metric() { awk -v m="$1" 'index($0, m) == 1 && $0 !~ /^#/ { s += $NF } END { printf "%d", s }'; }
for ((i = 1; i <= rounds; i++)); do
  port=$(free_port); http=$(free_port); dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes >/dev/null
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
  python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
  export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
  "$bin" run 2> "$dir/commander.log" & cmd=$!
  until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
  "$bin" keys issue fuzz-agent --pool ui --out "$dir/agent.cred" 2>/dev/null
  "$bin" keys issue fuzz-submitter --submitter --out "$dir/sub.cred" 2>/dev/null
  "$bin" sim --agents 50 --join-rate 50 --status-queries 10 --tasks 1000 --task-rate 40 --work-ms 20 \
    --hold-secs 3 --commander-pid "$cmd" --report "$out/round-$i.json" > "$dir/sim.txt" 2>&1 & sim=$!
  # Once the fleet works (its agents heartbeat, tasks flow): the mutants.
  until [[ $(curl -s "http://127.0.0.1:$http/metrics" | metric fleet_tasks_completed_total) -ge 50 ]]; do sleep 0.2; done
  before=$(curl -s "http://127.0.0.1:$http/metrics")
  python3 benches/fuzz.py "$REDIS_URL" "$dir/agent.cred" "$dir/sub.cred" "$mutants" > "$out/round-$i.fuzz.json"
  wait "$sim"
  after=$(curl -s "http://127.0.0.1:$http/metrics")
  for m in fleet_messages_rejected_total fleet_tasks_poisoned_total fleet_tasks_submitted_total; do
    echo "$m $(( $(metric "$m" <<<"$after") - $(metric "$m" <<<"$before") ))"
  done > "$out/round-$i.counts"
  accepted() { grep '^fleet_registrations_total' | grep 'result="accepted"' | metric fleet_registrations_total; }
  echo "registrations_accepted $(( $(accepted <<<"$after") - $(accepted <<<"$before") ))" >> "$out/round-$i.counts"
  echo "tasks_submitted_all $(metric fleet_tasks_submitted_total <<<"$after")" >> "$out/round-$i.counts"
  grep -E '^fleet_messages_rejected_total' <<<"$after" | grep -v ' 0$' \
    | sed -E 's/.*channel="([a-z]+)",reason="([a-z_]+)"\} (.*)/\1 \2 \3/' > "$out/round-$i.rejected" || true
  kill $cmd; wait $cmd 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"
done
python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| round | mutants sent | refused and counted | false deaths | legit tasks completed | poisoned | registrations accepted during | tasks not the simulator's |")
print("|---|---|---|---|---|---|---|---|")
for i in range(1, rounds + 1):
    r = json.load(open(f"{out}/round-{i}.json"))
    f = json.load(open(f"{out}/round-{i}.fuzz.json"))
    c = dict(l.split() for l in open(f"{out}/round-{i}.counts"))
    t = r["tasks"]
    print(f"| {i} | {f['sent']} ({f['seconds']} s) | {c['fleet_messages_rejected_total']} | {r['false_deaths']} | "
          f"{t['completed']}/{t['submitted']} | {c['fleet_tasks_poisoned_total']} | {c['registrations_accepted']} | "
          f"{int(c['tasks_submitted_all']) - t['submitted']} |")
print("\nrefusals by channel and reason (last round):")
print(open(f"{out}/round-{rounds}.rejected").read())
PY

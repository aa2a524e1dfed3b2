#!/usr/bin/env bash
# One flooding client against a fleet (issue 15's figure): the simulator's
# 200 agents join at 50/s and take a paced task load while, in the "flood"
# runs, one client publishes bursts of 100,000 messages for the whole run:
# half validly signed heartbeats of one registered agent (fresh nonces), half
# unsigned garbage, as fast as it can. A third kind of run, "elsewhere",
# sends the same flood to a channel no one listens to: on this 2-core machine
# the flooder and Redis take CPU from everyone, and that run shows how much of
# the change is the machine's and how much the commander's. The three are
# alternated. Prints the other agents' registration, allocation and (inside
# the commander) heartbeat p99, status queries' p99, a bystander's Redis PING
# p99 (what Redis itself adds for everyone while it delivers the flood), the
# flooder's refusals, and the commander's CPU and peak RSS.
#   bash benches/flood.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
# BIN=path: another build of the commander (an A/B: run this twice with two
# binaries, or compare rounds); MODES: which of quiet, elsewhere and flood.
if [[ -z ${BIN:-} ]]; then cargo build --release --quiet; fi
bin=${BIN:-target/release/fleet-commander}
modes=${MODES:-quiet elsewhere flood}
out=.bench/flood
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for ((i = 1; i <= rounds; i++)); do
  for mode in $modes; do
    port=$(free_port); http=$(free_port); dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --maxclients 20000 --daemonize yes >/dev/null
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
    export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
    "$bin" run & cmd=$!
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
    if [[ $mode != quiet ]]; then
      # "elsewhere": the same flood on a channel no one listens to, so the
      # machine is as busy (the flooder, Redis) but the commander is not hit.
      ch=swarm:phase-1:health; [[ $mode == elsewhere ]] && ch=swarm:phase-1:nowhere
      "$bin" keys issue flooder --pool ui --out "$dir/flooder.cred" 2>/dev/null
      PYTHONPATH=sdk/python python3 - "$REDIS_URL" "$dir/flooder.cred" "$ch" > "$dir/flooder.txt" 2>&1 <<'PY' &
# Registers one agent, then, until killed, sends bursts of 100,000 messages:
# 50,000 heartbeats validly signed for that agent (fresh nonces) interleaved
# with 50,000 unsigned garbage messages, as fast as one client can.
import asyncio, dataclasses, json, signal, sys, time
import redis
from fleet_agent import Agent, Credential, sign
url, cred, ch = sys.argv[1], Credential.load(sys.argv[2]), sys.argv[3]
cred = dataclasses.replace(cred, redis_user=None, redis_password=None)  # no ACL users here
async def register():
    a = Agent(url, cred)
    await a.connect(); await a.register(); await a.close()
asyncio.run(register())
key, _ = cred.keys()
r = redis.Redis.from_url(url)
body = json.dumps({"v": 1, "type": "heartbeat", "agentId": cred.subject, "status": "idle", "load": 0}).encode()
sent, t0, bursts = 0, time.time(), []
def done(*_):
    print(f"flooder: {sent} messages in {time.time() - t0:.1f} s; bursts of 100,000 took " + ", ".join(f"{b:.1f}" for b in bursts) + " s")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    t = time.time()
    signed = [sign(key, cred.kid, ch, body) for _ in range(50_000)]
    for c in range(0, 50_000, 1000):
        p = r.pipeline(transaction=False)
        for k in range(c, c + 1000):
            p.publish(ch, signed[k])
            p.publish(ch, b"garbage %d" % k)
        p.execute()
        sent += 2000
    bursts.append(time.time() - t)
PY
      flood=$!
    fi
    "$bin" sim --agents 200 --join-rate 50 --status-queries 100 --tasks 1500 --task-rate 50 --work-ms 20 \
      --hold-secs 5 --commander-pid "$cmd" --report "$out/$mode-$i.json" >/dev/null
    [[ $mode != quiet ]] && { kill "$flood"; wait "$flood" || true; cat "$dir/flooder.txt"; }
    curl -s "http://127.0.0.1:$http/metrics" | grep -E '^fleet_messages_rejected_total\{channel="health"' | grep -v ' 0$' | sed -E 's/.*reason="([a-z_]+)"\} (.*)/\1 \2/' > "$out/$mode-$i.rejected" || true
    kill $cmd; wait $cmd 2>/dev/null || true
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"
  done
done
python3 - "$out" "$rounds" "$modes" <<'PY'
import json, sys
out, rounds, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
print("| run | registration p99 | allocation p99 | heartbeat handling p99 (commander) | tasks | false deaths | commander CPU (tasks) | peak RSS | flooder refused |")
print("|---|---|---|---|---|---|---|---|---|")
for i in range(1, rounds + 1):
    for mode in modes:
        r = json.load(open(f"{out}/{mode}-{i}.json"))
        hb = r["commander_latency"].get("fleet_heartbeat_duration_seconds", {}).get("p99_ms", 0)
        rej = open(f"{out}/{mode}-{i}.rejected").read().strip().replace("\n", "; ") or "-"
        c = r["commander"]
        print(f"| {mode} {i} | {r['registration']['p99_ms']:.2f} ms | {r['tasks']['dispatch']['p99_ms']:.2f} ms | {hb:.3f} ms | "
              f"{r['tasks']['completed']}/{r['tasks']['submitted']} | {r['false_deaths']} | {c['tasks_cpu_percent']:.1f}% | {c['peak_rss_mb']:.1f} MB | {rej} |")
PY
if [[ $modes == "quiet elsewhere flood" ]]; then python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"\nmedians of {rounds} rounds")
print("| | quiet | flood elsewhere (machine busy) | flood on the commander | flood / quiet | flood / elsewhere |")
print("|---|---|---|---|---|---|")
for name, f in [("registration p99 (ms)", lambda r: r["registration"]["p99_ms"]),
                ("status query p99 (ms)", lambda r: r["status"]["p99_ms"]),
                ("allocation p99 (ms)", lambda r: r["tasks"]["dispatch"]["p99_ms"]),
                ("a bystander's Redis PING p99 (ms)", lambda r: r["redis_ping"]["p99_ms"]),
                ("heartbeat handling p99 in the commander (ms)", lambda r: r["commander_latency"].get("fleet_heartbeat_duration_seconds", {}).get("p99_ms", 0))]:
    m = {mode: statistics.median(f(json.load(open(f"{out}/{mode}-{i}.json"))) for i in range(1, rounds + 1))
         for mode in ("quiet", "elsewhere", "flood")}
    print(f"| {name} | {m['quiet']:.2f} | {m['elsewhere']:.2f} | {m['flood']:.2f} | {m['flood'] / m['quiet']:.1f}x | {m['flood'] / m['elsewhere']:.1f}x |")
PY
fi

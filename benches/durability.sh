#!/usr/bin/env bash
# Submission latency with tasks.durability = "replicated" (acknowledged once
# WAIT confirms a replica has the task) against the default "async", on one
# primary with one replica, alternated (async, replicated, async, ...) on the
# same pair of redis-servers. 1000 sequential POST /v1/tasks per run.
#   bash benches/durability.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet
bin=target/release/fleet-commander
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); rport=$(free_port); dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes >/dev/null
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --replicaof 127.0.0.1 "$port" --daemonize yes >/dev/null
cleanup() { kill "${cmd:-0}" 2>/dev/null || true; redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
until redis-cli -p "$rport" info replication | grep -q master_link_status:up; do sleep 0.1; done
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
export REDIS_URL="redis://127.0.0.1:$port" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
for ((i = 1; i <= rounds; i++)); do
  for mode in async replicated; do
    http=$(free_port)
    sed "s/^durability = \"async\"/durability = \"$mode\"/" config/fleet.toml > "$dir/fleet.toml"
    FLEET_HTTP_ADDR="127.0.0.1:$http" "$bin" --config "$dir/fleet.toml" run & cmd=$!
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
    token=$("$bin" --config "$dir/fleet.toml" tokens issue --role operator --name "bench-$mode-$i")
    python3 - "http://127.0.0.1:$http" "$token" "$mode" "$i" <<'PY'
import http.client, json, sys, time
base, token, mode, i = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
host = base.split("//")[1]
c = http.client.HTTPConnection(host)
lat, codes = [], {}
for n in range(1000):
    body = json.dumps({"pool": "ui", "payload": n})
    t = time.perf_counter()
    c.request("POST", "/v1/tasks", body, {"content-type": "application/json", "authorization": f"Bearer {token}"})
    r = c.getresponse(); r.read()
    lat.append((time.perf_counter() - t) * 1000)
    codes[r.status] = codes.get(r.status, 0) + 1
lat.sort()
print(f"round {i} {mode:10} p50 {lat[500]:.3f} ms  p99 {lat[990]:.3f} ms  max {lat[-1]:.2f} ms  {codes}")
PY
    kill $cmd; wait $cmd 2>/dev/null || true
  done
done

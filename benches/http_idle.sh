#!/usr/bin/env bash
# The HTTP API while idle connections are held open: /v1/fleet p50/p99 over
# 500 requests with no idle connections and with N (2000 by default) held,
# alternated (off, on, off, on, ...) on one release commander with security
# on (http.max_connections 512: the quietest connection makes room).
#   bash benches/http_idle.sh [idle] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-2000}
rounds=${2:-3}
cargo build --release --quiet
bin=target/release/fleet-commander
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); http=$(free_port); dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes >/dev/null
cleanup() { kill "${cmd:-0}" 2>/dev/null || true; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$dir/commander.key"
export REDIS_URL="redis://127.0.0.1:$port" FLEET_HTTP_ADDR="127.0.0.1:$http" RUST_LOG=warn FLEET_COMMANDER_KEY="$dir/commander.key"
"$bin" run & cmd=$!
until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.05; done
token=$("$bin" tokens issue --role viewer --name bench 2>/dev/null)
python3 - "$http" "$token" "$idle" "$rounds" <<'PY'
import socket, statistics, sys, time, http.client
port, token, idle, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def run(n=500):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", "/v1/fleet", headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        lat.append((time.perf_counter() - t) * 1000)
    c.close()
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]
print("| round | idle connections held | /v1/fleet p50 | p99 |\n|---|---|---|---|")
for i in range(1, rounds + 1):
    p50, p99 = run()
    print(f"| {i} | 0 | {p50:.2f} ms | {p99:.2f} ms |")
    held = []
    for _ in range(idle):
        s = socket.create_connection(("127.0.0.1", port)); held.append(s)
    p50, p99 = run()
    print(f"| {i} | {idle} | {p50:.2f} ms | {p99:.2f} ms |")
    for s in held: s.close()
    time.sleep(0.5)
PY

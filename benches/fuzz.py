"""Protocol fuzzer for benches/fuzz.sh: listens to a working fleet for a
second, then publishes N mutants as fast as one client can, spread over the
six inbound channels, every one of them invalid by construction:

- tamper:  a captured agent message, its signature header kept, its body
           changed by a byte (bad signature, or bad JSON);
- replay:  a captured message again, unchanged;
- fields:  a message signed with the fuzzer's own agent or submitter key
           (the keys a thief would have) whose fields break a rule: a wrong
           type, a missing field, a number out of range, another agent's id,
           an unknown type, a type on the wrong channel, a wrong version,
           nesting deeper than 64, an invalid reply channel, resources that
           are not an object;
- unsigned: a well-formed message without a signature;
- garbage: random bytes, truncated headers, a header with a bad signature.

Prints one JSON line: how many of each were sent, and the time it took.
   python3 benches/fuzz.py REDIS_URL AGENT_CRED SUBMITTER_CRED N
"""
import json
import os
import random
import sys
import time

import redis

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sdk", "python"))
from fleet_agent import Credential, sign  # noqa: E402

url, agent_cred, sub_cred, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
P = "swarm:phase-1"
CHANNELS = [f"{P}:{c}" for c in ("registry", "health", "fleet", "tasks", "results", "governance")]
rng = random.Random(25)
agent = Credential.load(agent_cred)
sub = Credential.load(sub_cred)
akey, _ = agent.keys()
skey, _ = sub.keys()
r = redis.Redis.from_url(url)

# A second of the fleet's own traffic, to tamper with and replay.
ps = r.pubsub()
ps.subscribe(*CHANNELS)
captured = []
end = time.time() + 1.0
while time.time() < end:
    m = ps.get_message(timeout=0.05)
    if m and m["type"] == "message" and m["data"].startswith(b"FC1 "):
        ch = m["channel"].decode()
        # Agents' messages only (the commander's own are ignored by design).
        if not m["data"].split(b" ", 2)[1].startswith(b"commander:"):
            captured.append((ch, m["data"]))
ps.close()
if not captured:
    sys.exit("fuzz: heard no agent traffic to mutate; is the fleet working?")

aid = agent.subject


def ch(name):
    return f"{P}:{name}"


def hb(**kw):
    m = {"v": 1, "type": "heartbeat", "agentId": aid, "status": "idle", "load": 0.0}
    m.update(kw)
    return m


def reg(**kw):
    m = {"v": 1, "type": "register", "id": os.urandom(8).hex(), "agentId": aid, "pool": agent.pool}
    m.update(kw)
    return m


def result(kind, **kw):
    m = {"v": 1, "type": kind, "taskId": "t-" + os.urandom(4).hex(), "attempt": 1, "agentId": aid}
    m.update(kw)
    return m


def submit(**kw):
    m = {"v": 1, "type": "task_submit", "id": os.urandom(8).hex(), "pool": "coder",
         "replyChannel": f"{P}:reply:{sub.subject}"}
    m.update(kw)
    return m


def deep(n):
    return json.loads("[" * n + "]" * n)


# (channel, message, signed by the submitter?) that no rule lets through.
def invalid_fields():
    victim = rng.choice(["coder-1", "sim-0001", "someone-else"])
    cases = [
        (ch("health"), hb(status=7)),
        (ch("health"), hb(status="failed")),
        (ch("health"), hb(load="x")),
        (ch("health"), hb(load=1.5)),
        (ch("health"), hb(resources=[1, 2, 3])),
        (ch("health"), hb(agentId=victim)),
        (ch("health"), {k: v for k, v in hb().items() if k != "status"}),
        (ch("health"), hb(v=2)),
        (ch("health"), hb(type="task_submit")),
        (ch("registry"), reg(priority=11)),
        (ch("registry"), reg(capacity=65)),
        (ch("registry"), reg(pool="wizards")),
        (ch("registry"), reg(resources=[])),
        (ch("registry"), reg(capabilities="rust")),
        (ch("registry"), reg(agentId=victim)),
        (ch("registry"), reg(capabilities=["validator", "weight:100"])),
        (ch("registry"), {"v": 1, "type": "deregister", "id": "d", "agentId": victim}),
        (ch("results"), result("task_fail", error=None)),
        (ch("results"), result("task_complete", result=deep(100))),
        (ch("results"), result("task_progress", progress="half")),
        (ch("results"), result("task_ack", attempt=-1)),
        (ch("results"), result("task_ack", agentId=victim)),
        (ch("fleet"), {"v": 1, "type": "status_request"}),
        (ch("fleet"), {"v": 1, "type": "launch", "id": "x"}),
        (ch("governance"), {"v": 1, "type": "vote", "proposalId": "p", "agentId": aid,
                            "vote": "maybe", "hash": "0" * 64}),
        (ch("governance"), {"v": 1, "type": "vote", "proposalId": "p", "agentId": victim,
                            "vote": "allow", "hash": "0" * 64}),
    ]
    subs = [
        (ch("tasks"), submit(replyChannel="elsewhere")),
        (ch("tasks"), submit(replyChannel=f"{P}:reply:{sub.subject}x")),
        (ch("tasks"), submit(pool="wizards")),
        (ch("tasks"), submit(priority=0)),
        (ch("tasks"), submit(timeoutMs=-1)),
        (ch("tasks"), submit(payload=deep(100))),
        (ch("tasks"), submit(maxRetries="many")),
    ]
    if rng.random() < len(subs) / (len(cases) + len(subs)):
        c, m = rng.choice(subs)
        return c, sign(skey, sub.kid, c, json.dumps(m).encode())
    c, m = rng.choice(cases)
    return c, sign(akey, agent.kid, c, json.dumps(m).encode())


def tamper():
    c, data = rng.choice(captured)
    head, _, body = data.partition(b"\n")
    if not body:
        return c, data[:-1]
    b = bytearray(body)
    i = rng.randrange(len(b))
    b[i] = (b[i] + rng.randrange(1, 255)) % 256
    return c, head + b"\n" + bytes(b)


def replay():
    return rng.choice(captured)


def unsigned():
    c, m = rng.choice([(ch("health"), hb()), (ch("registry"), reg()),
                       (ch("results"), result("task_ack")), (ch("tasks"), submit())])
    return c, json.dumps(m).encode()


def garbage():
    c = rng.choice(CHANNELS)
    kind = rng.randrange(4)
    if kind == 0:
        return c, os.urandom(rng.randrange(1, 300))
    if kind == 1:
        return c, b"FC1 " + os.urandom(20)
    if kind == 2:
        return c, f"FC1 {agent.kid} {int(time.time() * 1000)} nonce AAAA\n{{}}".encode()
    return c, b"{" * rng.randrange(1, 5000)


kinds = [("tamper", tamper, 30), ("replay", replay, 10), ("fields", invalid_fields, 35),
         ("unsigned", unsigned, 10), ("garbage", garbage, 15)]
weights = [w for _, _, w in kinds]
sent = {k: 0 for k, _, _ in kinds}
t0 = time.time()
p = r.pipeline(transaction=False)
for i in range(total):
    name, make, _ = rng.choices(kinds, weights)[0]
    c, data = make()
    p.publish(c, data)
    sent[name] += 1
    if i % 500 == 499:
        p.execute()
p.execute()
print(json.dumps({"sent": total, "by_kind": sent, "captured": len(captured),
                  "seconds": round(time.time() - t0, 2)}))

#!/usr/bin/env python3
"""A fleet-commander agent in Python, written from docs/PROTOCOL.md with redis-py.

    pip install redis
    python3 examples/python_agent.py --url redis://127.0.0.1:6379 --pool coder

With --beats N it heartbeats N times, deregisters and exits 0 (the test suite uses this).
"""
import argparse
import json
import sys
import time
import uuid

import redis

PREFIX = "swarm:phase-1"


class Agent:
    def __init__(self, url, agent_id, pool, capabilities):
        self.r = redis.Redis.from_url(url)
        self.id, self.pool, self.capabilities = agent_id, pool, capabilities
        self.ps = self.r.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(f"{PREFIX}:agent:{agent_id}")
        # Wait for the subscription to be confirmed before publishing anything.
        deadline = time.time() + 5
        while not self.ps.subscribed and time.time() < deadline:
            self.ps.get_message(timeout=0.1)
        self.interval = 5.0
        self.instance = uuid.uuid4().hex  # a new one each time the process starts

    def send(self, channel, msg):
        msg = {"v": 1, **msg}
        self.r.publish(f"{PREFIX}:{channel}", json.dumps(msg))

    def await_reply(self, kind, mid, timeout=2.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.ps.get_message(timeout=0.1)
            if not m:
                continue
            msg = json.loads(m["data"])
            if msg.get("type") == kind and msg.get("replyTo") == mid:
                return msg
            self.other(msg)
        return None

    def other(self, msg):
        if msg.get("type") == "reregister":
            print(f"commander asked to re-register ({msg.get('reason')})", flush=True)
            self.register()
        elif msg.get("type") == "task_assign":
            self.do_task(msg)

    def report(self, kind, msg, **fields):
        self.send("results", {"type": kind, "taskId": msg["taskId"], "attempt": msg["attempt"],
                              "agentId": self.id, **fields})

    def do_task(self, msg):
        # Acknowledge at once (else the task goes back after the ack timeout),
        # do the work, then report the result for this attempt.
        self.report("task_ack", msg)
        print(f"task {msg['taskId']} attempt {msg['attempt']}: {json.dumps(msg['payload'])}", flush=True)
        self.report("task_complete", msg, result={"echo": msg["payload"], "by": "python"})

    def register(self):
        for attempt in range(5):
            mid = str(uuid.uuid4())
            self.send("registry", {"type": "register", "id": mid, "agentId": self.id,
                                   "pool": self.pool, "capabilities": self.capabilities,
                                   "instance": self.instance, "capacity": 1,
                                   "resources": {"memory": 64, "cpu": 0.1, "network": 1}})
            reply = self.await_reply("register_reply", mid)
            if reply is None:
                continue  # lost or late: registration is idempotent, so send again
            if not reply["accepted"]:
                raise SystemExit(f"registration refused: {reply['reason']}: {reply.get('detail')}")
            self.interval = reply["heartbeatIntervalMs"] / 1000.0
            print(f"registered {self.id} in {self.pool} (reRegistered={reply['reRegistered']}, "
                  f"status={reply['agent']['status']})", flush=True)
            return reply
        raise SystemExit("no register_reply after 5 attempts: is the commander running?")

    def heartbeat(self, status="idle", load=0.0):
        self.send("health", {"type": "heartbeat", "agentId": self.id,
                             "status": status, "load": load})

    def wait(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            m = self.ps.get_message(timeout=max(0.0, min(0.2, end - time.time())))
            if m:
                self.other(json.loads(m["data"]))

    def deregister(self):
        for _ in range(3):
            mid = str(uuid.uuid4())
            self.send("registry", {"type": "deregister", "id": mid, "agentId": self.id,
                                   "reason": "shutdown"})
            reply = self.await_reply("deregister_reply", mid)
            if reply is not None:
                return reply["removed"]
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--id", default=f"py-{uuid.uuid4().hex[:8]}")
    p.add_argument("--pool", default="coder")
    p.add_argument("--capability", action="append", default=["python"])
    p.add_argument("--beats", type=int, default=0, help="heartbeats before leaving (0: forever)")
    a = p.parse_args()

    agent = Agent(a.url, a.id, a.pool, a.capability)
    agent.register()
    n = 0
    try:
        while a.beats == 0 or n < a.beats:
            agent.heartbeat("busy" if n % 2 else "idle", 0.5 if n % 2 else 0.0)
            n += 1
            agent.wait(agent.interval)
    except KeyboardInterrupt:
        pass
    print(f"deregistered: {agent.deregister()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

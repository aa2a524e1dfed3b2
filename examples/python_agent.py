#!/usr/bin/env python3
"""A fleet-commander agent in Python, with the SDK in sdk/python (asyncio, redis-py).

    python3 -m pip install ./sdk/python          # or run it from the clone as is
    fleet-commander keys issue py-1 --pool ui --out py-1.cred
    python3 examples/python_agent.py --credential py-1.cred

It signs everything it sends, believes only what the commander signed, echoes each
task's payload back as its result, leaves cleanly on SIGTERM or Ctrl-C, and with
--tasks N leaves after N tasks (the test suite uses this). The Redis URL is --url, else
REDIS_URL, else redis://127.0.0.1:6379. docs/PROTOCOL.md describes the same protocol
without the SDK.
"""
import argparse
import asyncio
import os
import sys

# Run from a clone, the SDK is found beside this file even if not installed.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))

from fleet_agent import Agent, Credential  # noqa: E402


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    p.add_argument("--credential", default=os.environ.get("FLEET_CREDENTIAL"), required=False)
    p.add_argument("--tasks", type=int, default=0, help="tasks to do before leaving (0: until Ctrl-C)")
    a = p.parse_args()
    if not a.credential:
        p.error("--credential (or FLEET_CREDENTIAL) is required: fleet-commander keys issue ...")

    agent = Agent(a.url, Credential.load(a.credential), capabilities=["python"])
    stop, done = asyncio.Event(), []

    @agent.task
    async def handle(task):
        print(f"task {task.task_id} attempt {task.attempt}: {task.payload!r}", flush=True)
        done.append(task.task_id)
        if a.tasks and len(done) >= a.tasks:
            asyncio.get_running_loop().call_later(0.2, stop.set)  # after the result is sent
        return {"echo": task.payload, "by": "python"}

    print(f"registering {agent.id} in {agent.pool}", flush=True)
    await agent.run(stop)
    print(f"left after {len(done)} task(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

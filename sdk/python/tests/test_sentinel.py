"""The Python SDK behind Sentinel: a master, a replica and three sentinels
on loopback, each server with the fleet's ACL users; the commander and the
agent connect with a redis+sentinel:// URL. The master is killed: the agent
follows the failover by itself and does the next task, and it is never
declared failed."""
from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import redis

from conftest import Fleet, free_port, wait_for
from fleet_agent import Agent

BOUND = 40.0  # a failover takes a few seconds: the bound of each wait


def redis_server(tmp: Path, port: int, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), "--repl-diskless-sync-delay", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: redis.Redis(port=port, socket_timeout=0.5).ping(), f"redis-server on {port}")
    return p


class SentinelFleet(Fleet):
    """Fleet's commander and CLI, on a master behind three sentinels."""

    def __init__(self, tmp: Path) -> None:
        self.procs: List[subprocess.Popen] = []
        self.master_port, self.replica_port = free_port(), free_port()
        self.procs.append(redis_server(tmp, self.master_port))
        rdir = tmp / "replica"
        rdir.mkdir()
        self.procs.append(redis_server(rdir, self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port)))
        wait_for(lambda: redis.Redis(port=self.replica_port).info("replication")["master_link_status"] == "up",
                 "the replica's first sync")
        self.sentinel_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(self.sentinel_ports):
            conf = tmp / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
                f"sentinel monitor fleet 127.0.0.1 {self.master_port} 2\n"
                "sentinel down-after-milliseconds fleet 1000\nsentinel failover-timeout fleet 10000\n")
            self.procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(lambda port=port: self.sentinel_master(port) == self.master_port, f"sentinel on {port}")
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.sentinel_url = f"redis+sentinel://{hosts}/fleet"
        super().__init__(tmp)

    # Fleet's hooks: its Redis is this one.
    def start_redis(self) -> None:
        self.redis_port = self.master_port
        self.redis_url = f"redis://127.0.0.1:{self.master_port}"
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.commander_url = f"redis+sentinel://fleet-commander:commander-pw@{hosts}/fleet"

    def apply_acl(self) -> None:
        # ACL rules are not replicated: every server gets them, from the
        # key store (which is), once the replica has all of it.
        keys = "swarm:phase-1:keys"
        wait_for(lambda: redis.Redis(port=self.master_port).hlen(keys)
                 == redis.Redis(port=self.replica_port).hlen(keys), "the key store on the replica")
        for port in (self.master_port, self.replica_port):
            self.cli("acl", "--apply", "--admin-url", f"redis://127.0.0.1:{port}")

    @staticmethod
    def sentinel_master(port: int) -> int:
        addr = redis.Redis(port=port, socket_timeout=0.5).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "fleet")
        return int(addr[1]) if addr else 0

    def close(self) -> None:
        super().close()
        for p in self.procs:
            p.kill()
            p.wait(5)


@pytest.fixture(scope="module")
def sfleet() -> Iterator[SentinelFleet]:
    with tempfile.TemporaryDirectory() as d:
        f = SentinelFleet(Path(d))
        try:
            yield f
        finally:
            f.close()


def submit_until_accepted(fleet: Fleet, task: dict) -> str:
    deadline = time.time() + BOUND
    while time.time() < deadline:
        code, body = fleet.request("POST", "/v1/tasks", task)
        if code == 201:
            return body["task"]["id"]
        time.sleep(0.1)
    raise AssertionError(f"not accepted within {BOUND}s: {code} {body}")


def test_an_agent_follows_a_sentinel_failover(sfleet):
    cred = sfleet.issue("py-s", "ui")

    async def until(cond, what: str) -> None:
        deadline = time.time() + BOUND
        while not await asyncio.to_thread(cond):
            assert time.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    async def main() -> None:
        agent = Agent(sfleet.sentinel_url, cred)
        done: List[int] = []

        @agent.task
        async def handle(task):
            done.append(task.payload)
            return {"n": task.payload}

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: sfleet.get("/v1/agents/py-s")[0] == 200, "py-s registered")
        first = submit_until_accepted(sfleet, {"pool": "ui", "payload": 1, "clientId": "s-1"})
        await until(lambda: sfleet.task(first).get("state") == "completed", "the first task")

        sfleet.procs[0].kill()  # the master
        sfleet.procs[0].wait(5)
        killed = time.time()
        await until(lambda: sfleet.sentinel_master(sfleet.sentinel_ports[0]) == sfleet.replica_port,
                    "the sentinels to promote the replica")
        second = submit_until_accepted(sfleet, {"pool": "ui", "payload": 2, "clientId": "s-2"})
        await until(lambda: sfleet.task(second).get("state") == "completed", "a task after the failover")
        print(f"python agent: a task done {time.time() - killed:.1f} s after the master was killed")
        assert sfleet.task(second)["agentId"] == "py-s"
        code, a = sfleet.get("/v1/agents/py-s")
        assert code == 200 and a["status"] != "failed", a
        assert sorted(done) == [1, 2], done
        stop.set()
        await asyncio.wait_for(run, BOUND)

    asyncio.run(main())

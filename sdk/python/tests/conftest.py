"""A private redis-server with the fleet's ACLs and a real fleet-commander
(security on) for each test module, on free loopback ports; credentials
issued with the CLI (`keys issue`, then `acl --apply`), as an operator would.

FLEET_BIN names the binary (the Rust test suite sets it); by default the
workspace's target/debug/fleet-commander."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))

from fleet_agent import Credential  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = os.environ.get("FLEET_BIN", str(ROOT / "target" / "debug" / "fleet-commander"))
        self.http_port = free_port()
        self.redis: Optional[subprocess.Popen] = None
        self.start_redis()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.key = tmp / "commander.key"
        self.key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        self.key.chmod(0o600)
        self.env = {**os.environ, "REDIS_URL": self.commander_url, "FLEET_COMMANDER_KEY": str(self.key),
                    "FLEET_HTTP_ADDR": f"127.0.0.1:{self.http_port}", "RUST_LOG": "warn"}
        self.apply_acl()
        self.token = ""
        self.start_commander()
        # An operator's token for the HTTP API, as `tokens issue` makes it.
        self.token = self.cli("tokens", "issue", "--role", "operator", "--name", "pytest").stdout.strip()

    def start_redis(self) -> None:
        """A private redis-server; sets redis_url (the default user: admin)
        and commander_url (the commander's ACL user)."""
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}"
        self.commander_url = f"redis://fleet-commander:commander-pw@127.0.0.1:{self.redis_port}"
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.redis_port), 0.2).close() or True,
                 "redis-server")

    def start_commander(self) -> None:
        self.commander = subprocess.Popen(
            [self.bin, "--config", str(ROOT / "config" / "fleet.toml"), "run"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A restarted commander stands by until the killed one's lease
        # lapses (ha.lease_ms, 5 s), then leads.
        wait_for(lambda: self.get("/readyz")[1].get("role") == "leader", "the commander to lead")

    def kill_commander(self) -> None:
        self.commander.kill()
        self.commander.wait(5)

    def close(self) -> None:
        for p in (self.commander, self.redis):
            if p is not None:
                p.kill()
                p.wait(5)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, "--config", str(ROOT / "config" / "fleet.toml"), *args],
                              env=self.env, capture_output=True, text=True, timeout=30, check=True)

    def apply_acl(self) -> None:
        self.cli("acl", "--apply", "--admin-url", self.redis_url)

    def issue(self, agent_id: str, pool: str, *grants: str) -> Credential:
        out = self.tmp / f"{agent_id}.cred"
        self.cli("keys", "issue", agent_id, "--pool", pool, "--out", str(out), *grants)
        self.apply_acl()  # the agent's Redis user
        return Credential.load(str(out))

    def request(self, method: str, path: str, body: Optional[Any] = None) -> "tuple[int, Any]":
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path: str) -> "tuple[int, Any]":
        return self.request("GET", path)

    def submit(self, task: dict) -> str:
        code, body = self.request("POST", "/v1/tasks", task)
        assert code == 201, body
        return body["task"]["id"]

    def task(self, task_id: str) -> dict:
        return self.get(f"/v1/tasks/{task_id}")[1]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with tempfile.TemporaryDirectory() as d:
        f = Fleet(Path(d))
        try:
            yield f
        finally:
            f.close()

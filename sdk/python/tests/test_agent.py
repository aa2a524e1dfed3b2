"""The Python SDK against a real commander with security on."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.request

import pytest
import redis.asyncio as aioredis

from fleet_agent import Agent, Credential, Refused, messages, sign, unframe
from fleet_agent.signing import CommanderCheck
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

WAIT = 10.0


async def until(cond, what: str) -> None:
    """Polls a blocking check in a thread (the agent keeps running) until true."""
    async def loop() -> None:
        while not await asyncio.to_thread(cond):
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(loop(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def state(fleet, task_id: str, want: str):
    return lambda: fleet.task(task_id).get("state") == want




def test_an_agent_registers_does_a_task_and_leaves(fleet):
    cred = fleet.issue("py-1", "ui")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred, capabilities=["python"])

        @agent.task
        async def handle(task):
            await task.progress(0.5)
            return {"echo": task.payload, "attempt": task.attempt}

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: fleet.get("/v1/agents/py-1")[0] == 200, "py-1 registered")
        tid = fleet.submit({"pool": "ui", "payload": {"big": 12345678901234567890123, "f": 1e2}})
        await until(state(fleet, tid, "completed"), "the task completed")
        t = fleet.task(tid)
        assert t["agentId"] == "py-1"
        assert t["result"]["attempt"] == 1
        assert t["result"]["echo"]["big"] == 12345678901234567890123
        stop.set()
        await asyncio.wait_for(run, WAIT)
        assert fleet.get("/v1/agents/py-1")[0] == 404, "deregistered"
        assert agent.refused == 0

    asyncio.run(main())


def test_a_failing_handler_fails_the_attempt_and_cancel_stops_one(fleet):
    cred = fleet.issue("py-2", "mobile")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)
        cancelled = asyncio.Event()

        @agent.task
        async def handle(task):
            if task.payload == "boom":
                raise ValueError("no such file")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: fleet.get("/v1/agents/py-2")[0] == 200, "py-2 registered")
        bad = fleet.submit({"pool": "mobile", "payload": "boom", "maxRetries": 0})
        await until(state(fleet, bad, "dead"), "the failed task dead-lettered")
        assert "no such file" in fleet.task(bad)["error"]

        slow = fleet.submit({"pool": "mobile", "payload": "slow"})
        await until(state(fleet, slow, "running"), "the slow task running")
        code, _ = await asyncio.to_thread(fleet.request, "POST", f"/v1/tasks/{slow}/cancel")
        assert code == 200
        await asyncio.wait_for(cancelled.wait(), WAIT)
        stop.set()
        await asyncio.wait_for(run, WAIT)

    asyncio.run(main())


def test_a_result_sent_while_no_commander_listens_is_sent_again(fleet):
    """The commander is killed while the agent works; the agent's result is
    published to nobody. After the restart the agent re-sends it (at its next
    heartbeat) until acknowledged: the task completes, executed once."""
    cred = fleet.issue("py-5", "analyst")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)
        release, runs = asyncio.Event(), []

        @agent.task
        async def handle(task):
            runs.append(task.attempt)
            await release.wait()
            return {"done": True}

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: fleet.get("/v1/agents/py-5")[0] == 200, "py-5 registered")
        tid = fleet.submit({"pool": "analyst", "payload": 1})
        await until(state(fleet, tid, "running"), "the task running")
        await asyncio.to_thread(fleet.kill_commander)
        release.set()  # the result goes out with no commander to hear it
        await until(lambda: not agent._running, "the handler finished")
        assert agent._unacked, "the result is kept until acknowledged"
        await asyncio.to_thread(fleet.start_commander)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * WAIT
        while fleet.task(tid).get("state") != "completed":
            assert loop.time() < deadline, "the re-sent result never counted"
            await asyncio.sleep(0.1)
        await until(lambda: not agent._unacked, "the result acknowledged")
        assert runs == [1], f"executed {len(runs)} times"
        stop.set()
        await asyncio.wait_for(run, WAIT)

    asyncio.run(main())


def test_a_drained_agent_finishes_and_leaves_by_itself(fleet):
    cred = fleet.issue("py-3", "database")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)
        agent.task(lambda task: asyncio.sleep(0, result="ok"))
        run = asyncio.create_task(agent.run())
        await until(lambda: fleet.get("/v1/agents/py-3")[0] == 200, "py-3 registered")
        code, _ = await asyncio.to_thread(fleet.request, "POST", "/v1/agents/py-3/drain")
        assert code == 200
        await asyncio.wait_for(run, WAIT)  # run() returns: drained, deregistered
        assert fleet.get("/v1/agents/py-3")[0] == 404

    asyncio.run(main())


def test_async_with_a_client_of_ones_own_and_typed_replies(fleet):
    """``async with`` connects and closes; a ``redis.asyncio.Redis`` the
    caller made is used as it is and left open; what the commander sends
    arrives as dataclasses."""
    cred = fleet.issue("py-with", "tester")
    auth = {"username": cred.redis_user, "password": cred.redis_password} if cred.redis_user else {}

    async def main() -> None:
        client = aioredis.Redis.from_url(fleet.redis_url, **auth)
        async with Agent(client, cred) as agent:
            reply = await agent.register()
            assert isinstance(reply, messages.RegisterReply)
            assert reply.accepted and reply.agent["id"] == "py-with"
            assert reply.heartbeat_interval_ms > 0
            await until(lambda: fleet.get("/v1/agents/py-with")[0] == 200, "py-with registered")
            assert await agent.deregister()
        # The agent closed what it opened, not the client it was given.
        assert await client.ping()
        await client.aclose()
        assert fleet.get("/v1/agents/py-with")[0] == 404

    asyncio.run(main())


def test_messages_parse_into_dataclasses_and_unknown_kinds_are_none():
    m = messages.parse({"type": "task_assign", "taskId": "t", "attempt": 2, "pool": "ui", "priority": 5,
                        "timeoutMs": 1000, "payload": {"a": 1}, "maxCost": 3.5})
    assert m == messages.TaskAssign("t", 2, "ui", 5, 1000, {"a": 1}, 0, 3.5)
    assert messages.parse({"type": "drain", "reason": "x"}) == messages.Drain("x")
    assert messages.parse({"type": "something_new"}) is None
    with pytest.raises(KeyError):
        messages.parse({"type": "task_cancel", "attempt": 1})


def test_forged_commands_are_ignored_and_a_wrong_key_is_not_heard(fleet):
    cred = fleet.issue("py-4", "network")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)
        ran = []

        @agent.task
        async def handle(task):
            ran.append(task.task_id)
            return None

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: fleet.get("/v1/agents/py-4")[0] == 200, "py-4 registered")
        channel = "swarm:phase-1:agent:py-4"
        assign = json.dumps({"v": 1, "type": "task_assign", "taskId": "evil", "attempt": 1,
                             "pool": "network", "priority": 5, "timeoutMs": 30000,
                             "payload": "rm -rf /"}).encode()
        r = aioredis.Redis.from_url(fleet.redis_url)
        await r.publish(channel, assign)  # unsigned
        await r.publish(channel, sign(Ed25519PrivateKey.generate(), "commander:99", channel, assign))
        await until(lambda: agent.refused >= 2, "both forgeries refused")
        assert ran == []
        await r.aclose()
        stop.set()
        await asyncio.wait_for(run, WAIT)

        # The same agent id with a key nobody issued: the commander does not answer.
        forged = Credential(cred.kid, cred.role, cred.subject, cred.pool,
                            base64.b64encode(os.urandom(32)).decode(), cred.commander)
        impostor = Agent(fleet.redis_url, forged)
        await impostor.connect()
        with pytest.raises(TimeoutError):
            await impostor.register(timeout=0.3, tries=2)
        await impostor.close()

    asyncio.run(main())


def test_the_signing_format_round_trips_and_refuses_tampering():
    key = Ed25519PrivateKey.generate()
    body = b'{"v":1,"type":"drain","reason":"x"}'
    framed = sign(key, "commander:3", "ch", body)
    s = unframe(framed)
    assert s is not None and s.body == body and s.kid == "commander:3"
    check = CommanderCheck(key.public_key())
    assert check.check("ch", framed) == body
    with pytest.raises(Refused) as e:
        check.check("ch", framed)
    assert e.value.reason == "replay"
    with pytest.raises(Refused) as e:
        check.check("other", sign(key, "commander:3", "ch", body))
    assert e.value.reason == "bad_signature"
    with pytest.raises(Refused) as e:
        check.check("ch", sign(key, "commander:2", "ch", body))
    assert e.value.reason == "old_epoch"
    with pytest.raises(Refused) as e:
        check.check("ch", body)
    assert e.value.reason == "unsigned"


def metric(fleet, series: str) -> float:
    text = urllib.request.urlopen(fleet.base + "/metrics", timeout=WAIT).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


def test_a_session_is_set_up_and_its_macs_replace_signatures_both_ways(fleet):
    cred = fleet.issue("py-s1", "ui")
    macs = 'fleet_signature_checks_total{scheme="session"}'
    signatures = 'fleet_signature_checks_total{scheme="ed25519"}'

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)

        @agent.task
        async def handle(task):
            return {"ok": True}

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: agent.in_session, "the session")
        m0, s0 = metric(fleet, macs), metric(fleet, signatures)
        tid = fleet.submit({"pool": "ui", "payload": {"n": 1}})
        await until(state(fleet, tid, "completed"), "the task completed")
        # The result (and heartbeats) were MACed, nothing signed; the
        # assignment came MACed and was taken.
        assert metric(fleet, macs) > m0
        assert metric(fleet, signatures) == s0
        assert agent.refused == 0
        stop.set()
        await asyncio.wait_for(run, WAIT)
        assert fleet.get("/v1/agents/py-s1")[0] == 404, "a MACed deregister is taken"
        assert not agent.in_session, "the session ends with the record"

    asyncio.run(main())


def test_the_session_frames_round_trip_and_refuse_tampering():
    from fleet_agent import Exchange, Session
    a, b = Exchange(), Exchange()
    # Either side's view of one exchange gives one secret only for the same agent id.
    s = a.session(b.public_b64(), "py-x")
    framed = s.seal("k1", "ch", b'{"type":"drain"}')
    parts = unframe(framed)
    assert parts is not None and parts.magic == b"FS1" and s.verify("ch", parts)
    assert not s.verify("other", parts)
    assert not a.session(b.public_b64(), "py-y").verify("ch", parts)
    check = CommanderCheck(Ed25519PrivateKey.generate().public_key())
    commander_framed = s.seal("commander:1", "ch", b"{}")
    with pytest.raises(Refused) as e:
        check.check("ch", commander_framed)
    assert e.value.reason == "no_session"
    check.session = s
    assert check.check("ch", commander_framed) == b"{}"
    with pytest.raises(Refused) as e:
        check.check("ch", commander_framed.replace(b"{}", b"[]"))
    assert e.value.reason == "bad_signature"
    with pytest.raises(ValueError):
        a.session(base64.b64encode(bytes(32)).decode(), "py-x")


def test_steps_and_usage_are_reported_and_a_spent_budget_halts_until_topped_up(fleet):
    cred = fleet.issue("py-spend", "ui")

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred)

        @agent.task
        async def handle(task):
            for step in (1, 2, 3):
                await task.progress(step=step)
            task.spend(task.payload["cost"])
            return {"ok": True}

        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await until(lambda: fleet.get("/v1/agents/py-spend")[0] == 200, "py-spend registered")
        _, b = fleet.get("/v1/agents/py-spend/budget")
        # Spend all but 500 of the allowance: below the 1000 minimum.
        tid = fleet.submit({"pool": "ui", "payload": {"cost": b["allowance"] - 500}})
        await until(state(fleet, tid, "completed"), "the task completed")
        assert fleet.task(tid)["usage"] == b["allowance"] - 500
        await until(lambda: fleet.get("/v1/agents/py-spend")[1]["status"] == "halted", "halted")
        await until(lambda: agent.halted, "the agent heard its halt")
        code, v = fleet.request("POST", "/v1/agents/py-spend/budget", {"topUp": 10000})
        assert code == 200 and v["resumed"] is True, v
        await until(lambda: not agent.halted, "the agent heard its resume")
        tid = fleet.submit({"pool": "ui", "payload": {"cost": 1}})
        await until(state(fleet, tid, "completed"), "a task after the top-up")
        stop.set()
        await asyncio.wait_for(run, WAIT)

    asyncio.run(main())


def test_a_vote_is_signed_and_heard(fleet):
    """No proposal of that id is open: the commander hears the signed vote
    (through the agent's ACL user) and refuses it as unknown, counted."""
    cred = fleet.issue("py-voter", "coordinator", "--validator-weight", "1")

    def refused_unknown() -> float:
        import urllib.request
        with urllib.request.urlopen(fleet.base + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('fleet_votes_rejected_total{reason="unknown"}'):
                    return float(line.split()[-1])
        return 0.0

    async def main() -> None:
        agent = Agent(fleet.redis_url, cred, capabilities=["validator"])
        await agent.connect()
        before = await asyncio.to_thread(refused_unknown)
        await agent.register()
        await agent.vote("no-such-proposal", "allow", "0" * 64, "looks fine")
        await until(lambda: refused_unknown() > before, "the vote refused as unknown")
        with pytest.raises(ValueError):
            await agent.vote("p", "maybe", "0" * 64)
        await agent.deregister()
        await agent.close()

    asyncio.run(main())


# An agent in its own process, as deployed: a handler that sleeps
# payload["sleep"] seconds, run() with the given grace.
AGENT_PROCESS = """
import asyncio, sys
sys.path.insert(0, {sdk!r})
from fleet_agent import Agent, Credential
agent = Agent({url!r}, Credential.load({cred!r}))

@agent.task
async def slow(task):
    await asyncio.sleep(task.payload["sleep"])
    return {{"slept": task.payload["sleep"]}}

asyncio.run(agent.run(grace={grace}))
print("exited", flush=True)
"""


def agent_process(fleet, agent_id: str, pool: str, grace: float):
    import subprocess
    import sys
    from pathlib import Path

    fleet.issue(agent_id, pool)
    script = AGENT_PROCESS.format(sdk=str(Path(__file__).resolve().parents[1]), url=fleet.redis_url,
                                  cred=str(fleet.tmp / f"{agent_id}.cred"), grace=grace)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    from conftest import wait_for
    wait_for(lambda: fleet.get(f"/v1/agents/{agent_id}")[0] == 200, f"{agent_id} registered")
    return p


def test_sigterm_finishes_the_task_then_deregisters_and_exits_0(fleet):
    import signal
    from conftest import wait_for

    p = agent_process(fleet, "py-term", "mobile", grace=30)
    tid = fleet.submit({"pool": "mobile", "payload": {"sleep": 1.5}})
    wait_for(lambda: fleet.task(tid).get("state") == "running", "the task running")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=WAIT)
    assert p.returncode == 0, err
    assert "exited" in out
    t = fleet.task(tid)
    assert (t["state"], t["agentId"], t["attempt"]) == ("completed", "py-term", 1), t
    assert not t.get("casualties"), t
    assert fleet.get("/v1/agents/py-term")[0] == 404, "deregistered"


def test_sigterm_past_the_grace_hands_the_task_back_with_no_casualty(fleet):
    import signal
    from conftest import wait_for

    p = agent_process(fleet, "py-term2", "network", grace=0.5)
    tid = fleet.submit({"pool": "network", "payload": {"sleep": 60}})
    wait_for(lambda: fleet.task(tid).get("state") == "running", "the task running")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=WAIT)
    assert p.returncode == 0, err
    t = fleet.task(tid)
    # Handed back at once by the deregistration: waiting for another agent,
    # its attempt no casualty (two rolling restarts never make it poison).
    assert t["state"] == "queued", t
    assert not t.get("casualties"), t
    assert fleet.get("/v1/agents/py-term2")[0] == 404, "deregistered"


def test_an_agent_over_its_capacity_heartbeats_a_load_of_one(fleet):
    """Holding more than its capacity for a while (work from before a
    re-registration still running), an agent heartbeats a load of 1: the
    commander refuses a load above 1, and an agent whose heartbeats are
    refused is declared dead."""
    cred = fleet.issue("py-over", "ui", "--max-capacity", "2")

    async def main() -> None:
        async with Agent(fleet.redis_url, cred, capacity=2) as agent:
            await agent.register()
            refused = metric(fleet, 'fleet_messages_rejected_total{channel="health",reason="invalid_fields"}')
            beats = metric(fleet, "fleet_heartbeats_total")
            agent._running = {(f"t-{i}", 1): None for i in range(3)}  # three in hand for two
            try:
                await agent.heartbeat()
                await until(lambda: metric(fleet, "fleet_heartbeats_total") > beats, "the heartbeat handled")
            finally:
                agent._running = {}
            record = fleet.get("/v1/agents/py-over")[1]
            assert record["status"] == "busy", record
            assert record["load"] == 1.0, record
            assert metric(fleet, 'fleet_messages_rejected_total{channel="health",reason="invalid_fields"}') == refused
            await agent.deregister()

    asyncio.run(main())


def test_a_reregister_after_deregistering_is_ignored(fleet):
    """A heartbeat sent just before leaving can be recorded after the
    deregistration (heartbeats are recorded in batches): the commander, not
    knowing the agent any more, answers reregister, which a leaving agent
    must not obey, or it is back in the fleet as it goes."""
    cred = fleet.issue("py-gone", "ui")

    async def main() -> None:
        async with Agent(fleet.redis_url, cred) as agent:
            await agent.register()
            assert await agent.deregister()
            beats = metric(fleet, "fleet_heartbeats_total")
            await agent.heartbeat()  # answered with reregister: unknown agent
            await until(lambda: metric(fleet, "fleet_heartbeats_total") > beats, "the heartbeat handled")
            await asyncio.sleep(0.3)  # room for a re-registration, were it sent
            assert fleet.get("/v1/agents/py-gone")[0] == 404

    asyncio.run(main())

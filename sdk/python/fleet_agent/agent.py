"""An asyncio agent: register, heartbeat, take tasks (ack, progress,
complete, fail), obey cancel, drain and reregister, leave. Every message it
sends is signed with its credential, and it believes only what the
commander signed. What the commander sends is read into the dataclasses of
``fleet_agent.messages``.

    async with Agent(url, credential) as agent:   # connects; leaves at the end
        await agent.run()

An ``Agent`` takes a Redis URL, or a ``redis.asyncio.Redis`` the caller
made (and keeps: the agent never closes it)."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import redis.asyncio as redis
from redis.asyncio.sentinel import Sentinel
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from . import messages as msgs
from .signing import CommanderCheck, Credential, Exchange, Refused, Session, now_ms, sign, unframe

log = logging.getLogger("fleet_agent")

PREFIX = "swarm:phase-1"
RESEND_TRIES = 20  # a result is sent at most this many times (once, then at each heartbeat)


def connect_redis(url: str, **auth: Any) -> redis.Redis:
    """A client for ``url``: ``redis://`` or ``rediss://`` (one server), or
    ``redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[/DB]``
    (``?sentinel_password=...``): the master the sentinels name, found again
    whenever a connection is made, so that it follows a failover. ``auth``
    (username, password) overrides the URL's."""
    if not url.startswith("redis+sentinel://"):
        if auth:
            # from_url lets the URL's user win over keyword arguments: drop it.
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return redis.Redis.from_url(url, **auth)
    rest, _, query = url[len("redis+sentinel://"):].partition("?")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("redis+sentinel:// needs the master's name: .../MASTER")
    addrs = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":") if ":" in h else (h, "", "26379")
        addrs.append((host, int(port)))
    q = {k: v[0] for k, v in parse_qs(query).items()}
    sentinel_kwargs = {k[len("sentinel_"):]: q[k] for k in ("sentinel_username", "sentinel_password") if k in q}
    node = {"username": unquote(user) or None, "password": unquote(password) or None, **auth}
    sentinel = Sentinel(addrs, sentinel_kwargs=sentinel_kwargs, socket_timeout=2.0)
    return sentinel.master_for(parts[0], db=int(parts[1]) if len(parts) > 1 else 0, socket_timeout=2.0, **node)


LOST = (redis.ConnectionError, redis.TimeoutError, OSError)


class RegistrationRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Task:
    """One attempt at a task, as handed to the handler."""

    task_id: str
    attempt: int
    pool: str
    priority: int
    timeout_ms: int
    payload: Any
    _agent: "Agent" = field(repr=False)
    #: Report a rising ``step`` at least this often, or the attempt is taken
    #: back as stuck (0: not watched).
    progress_timeout_ms: int = 0
    #: The most ``usage`` this attempt may report (None: no cap).
    max_cost: Optional[float] = None
    #: What this attempt consumed (budget units), reported with its result.
    usage: float = 0.0

    async def progress(self, fraction: Optional[float] = None, step: Optional[int] = None) -> None:
        """Tells the commander the work goes on (renews the lease). With a
        progress timeout, only a ``step`` higher than the last one counts as
        progress: an agent repeating a step is found stuck."""
        fields: Dict[str, Any] = {}
        if fraction is not None:
            fields["progress"] = fraction
        if step is not None:
            fields["step"] = step
        if not fields:
            raise ValueError("give a fraction (0..1), a step, or both")
        await self._agent.report("task_progress", self.task_id, self.attempt, **fields)

    def spend(self, amount: float) -> None:
        """Counts ``amount`` budget units as consumed by this attempt."""
        if amount < 0:
            raise ValueError("usage is never negative")
        self.usage += amount


Handler = Callable[[Task], Awaitable[Any]]


class Agent:
    """One agent. With a credential its id and pool come from it."""

    def __init__(
        self,
        redis_url: Union[str, redis.Redis],
        credential: Optional[Credential] = None,
        *,
        agent_id: Optional[str] = None,
        pool: Optional[str] = None,
        capabilities: Optional[List[str]] = None,
        capacity: int = 1,
        resources: Optional[Dict[str, float]] = None,
        priority: Optional[int] = None,
        prefix: str = PREFIX,
        sessions: bool = True,
    ) -> None:
        # A client the caller made is used as it is, and never closed here.
        self._given: Optional[redis.Redis] = None
        if isinstance(redis_url, str):
            self.redis_url = redis_url
        else:
            self._given, self.redis_url = redis_url, ""
        self.credential = credential
        self.id = agent_id or (credential.subject if credential else None)
        self.pool = pool or (credential.pool if credential else None)
        if not self.id or not self.pool:
            raise ValueError("an agent needs an id and a pool (or a credential naming them)")
        self.capabilities = list(capabilities or [])
        self.capacity = capacity
        self.resources = resources or {"memory": 64, "cpu": 0.1, "network": 1}
        self.priority = priority
        self.prefix = prefix
        self.instance = uuid.uuid4().hex  # this run: a restart gets a new one
        self.handler: Optional[Handler] = None
        self.heartbeat_s = 5.0
        self.refused = 0  # messages ignored: not signed by the commander
        self._key, self._check = None, None
        # With a credential, a session is offered at registration: once the
        # commander agrees, messages are MACed (FS1) instead of signed.
        self._exchange: Optional[Exchange] = None
        self._session: Optional[Session] = None
        if credential:
            key, commander = credential.keys()
            self._key, self._check = key, CommanderCheck(commander)
            if sessions:
                self._exchange = Exchange()
        self._pub: Optional[redis.Redis] = None
        self._ps: Any = None
        self._reader: Optional[asyncio.Task] = None
        self._replies: Dict[str, asyncio.Future] = {}
        self._running: Dict[Tuple[str, int], asyncio.Task] = {}
        # Results sent and not yet acknowledged (result_ack): kind, fields,
        # times sent. Re-sent at every heartbeat, RESEND_TRIES times at most.
        self._unacked: Dict[Tuple[str, int], Tuple[str, Dict[str, Any], int]] = {}
        self._drained = asyncio.Event()
        # Set once a signal asked the agent to leave: no new task is taken.
        self._leaving = False
        # Set while the commander has halted this agent (its budget is spent).
        self.halted = False
        self._seq = 0
        # The time the last message was sealed: each is sealed later than
        # the one before (a heartbeat sealed no later than the last one is
        # refused as a replay), even if the clock steps back.
        self._sealed_at = 0
        self._deregistering = False
        self._background: set = set()

    # ---- wiring ----

    def channel(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def task(self, fn: Handler) -> Handler:
        """Decorator: the coroutine that does a task; its return value is the
        result, an exception fails the attempt."""
        self.handler = fn
        return fn

    async def connect(self) -> None:
        """Connects as the credential's Redis ACL user, in place of any user
        the URL names (``fleet-commander acl --apply`` creates those users);
        if Redis refuses that user (ACLs not applied yet), as the URL says,
        with one warning. The Rust SDK does the same. (A client given to the
        constructor is used as it is.) Then subscribes to the agent's channel
        (before anything is sent, so no reply is missed) and starts reading
        it."""
        self._pub = self._given
        if self._pub is None and self.credential and self.credential.redis_user:
            auth = {"username": self.credential.redis_user, "password": self.credential.redis_password}
            client = connect_redis(self.redis_url, **auth)
            try:
                await client.ping()
                self._pub = client
            except redis.AuthenticationError:
                await client.aclose()
                log.warning("Redis has no ACL user %s for this credential: connecting as the URL says; "
                            "run `fleet-commander acl --apply` to confine the agent (docs/SECURITY.md)",
                            self.credential.redis_user)
        if self._pub is None:
            self._pub = connect_redis(self.redis_url)
        await self._subscribe()
        self._reader = asyncio.create_task(self._read())

    async def _subscribe(self) -> None:
        assert self._pub is not None
        self._ps = self._pub.pubsub(ignore_subscribe_messages=True)
        await self._ps.subscribe(self.channel(f"agent:{self.id}"))

    async def close(self) -> None:
        for t in list(self._running.values()):
            t.cancel()
        if self._reader:
            self._reader.cancel()
            self._reader = None
        if self._ps is not None:
            await self._ps.aclose()
            self._ps = None
        if self._pub is not None and self._pub is not self._given:
            await self._pub.aclose()
        self._pub = None

    async def __aenter__(self) -> "Agent":
        """Connects (and subscribes); ``run`` or ``register`` next."""
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Closes what the agent opened (not a client it was given)."""
        await self.close()

    @property
    def in_session(self) -> bool:
        """Whether the commander agreed to a session (messages are MACed)."""
        return self._session is not None

    async def send(self, channel: str, msg: Dict[str, Any], signed: bool = False) -> None:
        """Publishes ``msg``: MACed in a session unless ``signed`` (register
        and votes must be signed), else signed; plain without a credential."""
        name = self.channel(channel)
        body = json.dumps({"v": 1, **msg}, separators=(",", ":")).encode()
        self._sealed_at = ts = max(now_ms(), self._sealed_at + 1)
        if self._key is None:
            payload = body
        elif self._session is not None and not signed:
            payload = self._session.seal(self.credential.kid, name, body, ts)
        else:
            payload = sign(self._key, self.credential.kid, name, body, ts)
        assert self._pub is not None, "connect() first"
        try:
            await self._pub.publish(name, payload)
        except LOST as e:
            # As if lost in transit: requests are retried, heartbeats come
            # again, results are re-sent until acknowledged.
            log.warning("not sent (Redis unreachable: %s)", e)

    # ---- requests ----

    async def _request(self, channel: str, msg: Dict[str, Any], timeout: float, tries: int,
                       signed: bool = False) -> Optional[msgs.Message]:
        for _ in range(tries):
            mid = str(uuid.uuid4())
            fut = asyncio.get_running_loop().create_future()
            self._replies[mid] = fut
            try:
                await self.send(channel, {**msg, "id": mid}, signed)
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                continue  # lost or late: the request is idempotent, send again
            finally:
                self._replies.pop(mid, None)
        return None

    async def register(self, timeout: float = 2.0, tries: int = 5) -> msgs.RegisterReply:
        """Registers (idempotent) and returns the accepted reply; raises
        ``RegistrationRefused`` with the reason, or ``TimeoutError``."""
        self._deregistering = False
        msg: Dict[str, Any] = {
            "type": "register", "agentId": self.id, "pool": self.pool,
            "capabilities": self.capabilities, "capacity": self.capacity,
            "instance": self.instance, "resources": self.resources,
        }
        if self.priority is not None:
            msg["priority"] = self.priority
        if self._exchange is not None:
            msg["sessionKey"] = self._exchange.public_b64()
        reply = await self._request("registry", msg, timeout, tries, signed=True)
        if reply is None:
            raise TimeoutError("no register_reply: is the commander running, and the key issued?")
        if not isinstance(reply, msgs.RegisterReply):
            raise TimeoutError(f"a reply to register that is not a register_reply: {reply!r}")
        if not reply.accepted:
            raise RegistrationRefused(reply.reason or "?", reply.detail)
        self.heartbeat_s = reply.heartbeat_interval_ms / 1000.0
        self._session = None
        if self._exchange is not None and reply.session_key:
            try:
                self._session = self._exchange.session(reply.session_key, self.id)
            except ValueError as e:
                log.warning("the commander's session key is unusable (%s): signing everything", e)
        if self._check is not None:
            self._check.session = self._session
        return reply

    async def deregister(self, timeout: float = 2.0, tries: int = 3) -> bool:
        # A reregister from now on answers a heartbeat sent before leaving.
        self._deregistering = True
        reply = await self._request(
            "registry", {"type": "deregister", "agentId": self.id, "reason": "shutdown"}, timeout, tries
        )
        if isinstance(reply, msgs.DeregisterReply):
            # The session ended with the record: sign until registered again.
            self._session = None
            if self._check is not None:
                self._check.session = None
        return isinstance(reply, msgs.DeregisterReply) and reply.removed

    async def heartbeat(self) -> None:
        n = len(self._running)
        status = "busy" if n >= self.capacity else ("active" if n else "idle")
        self._seq += 1
        await self.send("health", {"type": "heartbeat", "agentId": self.id, "status": status,
                                   "load": min(1.0, n / max(1, self.capacity)), "seq": self._seq})

    async def report(self, kind: str, task_id: str, attempt: int, **fields: Any) -> None:
        await self.send("results", {"type": kind, "taskId": task_id, "attempt": attempt,
                                    "agentId": self.id, **fields})

    async def vote(self, proposal_id: str, vote: str, proposal_hash: str, reason: str = "") -> None:
        """A validator's vote (``allow``, ``quarantine`` or ``deny``) on a
        proposal announced on the governance channel, naming its ``hash``."""
        if vote not in ("allow", "quarantine", "deny"):
            raise ValueError("vote is allow, quarantine or deny")
        await self.send("governance", {"type": "vote", "proposalId": proposal_id, "agentId": self.id,
                                       "vote": vote, "hash": proposal_hash, "reason": reason},
                        signed=True)  # a vote's signature is its proof

    async def _result(self, kind: str, task: "Task", **fields: Any) -> None:
        """Sends a result and keeps it until the commander acknowledges it."""
        self._unacked[(task.task_id, task.attempt)] = (kind, fields, 1)
        await self.report(kind, task.task_id, task.attempt, **fields)

    async def _resend(self) -> None:
        for key, (kind, fields, n) in list(self._unacked.items()):
            if n >= RESEND_TRIES:
                log.warning("result for %s attempt %d never acknowledged; given up", *key)
                self._unacked.pop(key, None)
                continue
            self._unacked[key] = (kind, fields, n + 1)
            await self.report(kind, key[0], key[1], **fields)

    # ---- the agent's channel ----

    async def _read(self) -> None:
        name = self.channel(f"agent:{self.id}")
        lost = False
        while True:
            try:
                if lost:
                    # Redis restarted or failed over: subscribe again
                    # (behind Sentinel, on the master it names now).
                    await asyncio.sleep(0.2)
                    await self._ps.aclose()
                    await self._subscribe()
                    lost = False
                m = await self._ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except LOST as e:
                if not lost:
                    log.warning("lost the agent's channel (%s); subscribing again", e)
                lost = True
                continue
            if m is None:
                continue
            data: bytes = m["data"] if isinstance(m["data"], bytes) else str(m["data"]).encode()
            try:
                if self._check is not None:
                    body = self._check.check(name, data)
                else:
                    s = unframe(data)
                    body = s.body if s else data
                msg = msgs.parse(json.loads(body))
            except Refused as e:
                self.refused += 1
                log.warning("ignoring a message not from the commander: %s", e.reason)
                continue
            except (ValueError, KeyError, TypeError) as e:
                log.debug("ignoring a message this SDK cannot read: %s", e)
                continue
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: msgs.Message) -> None:
        if isinstance(msg, (msgs.RegisterReply, msgs.DeregisterReply)):
            fut = self._replies.get(msg.reply_to)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, msgs.TaskAssign):
            key = (msg.task_id, msg.attempt)
            if self._leaving:
                return  # not taken: the deregistration hands it back
            if key not in self._running:
                t = asyncio.create_task(self._do(msg))
                self._running[key] = t
                t.add_done_callback(lambda _t, k=key: self._running.pop(k, None))
        elif isinstance(msg, msgs.ResultAck):
            self._unacked.pop((msg.task_id, msg.attempt), None)
        elif isinstance(msg, msgs.TaskCancel):
            self._unacked.pop((msg.task_id, msg.attempt), None)
            t = self._running.get((msg.task_id, msg.attempt))
            if t is not None:
                t.cancel()
        elif isinstance(msg, msgs.Halt):
            log.warning("halted: budget below its minimum (balance %s %s); no new work until resumed",
                        msg.balance, msg.unit)
            self.halted = True
        elif isinstance(msg, msgs.Resume):
            log.info("resumed: budget balance %s", msg.balance)
            self.halted = False
        elif isinstance(msg, msgs.Drain):
            log.info("drained (%s): finishing what is held, then leaving", msg.reason)
            self._drained.set()
        elif isinstance(msg, msgs.Reregister):
            if self._deregistering:
                return  # it answers a heartbeat sent before leaving
            t = asyncio.create_task(self.register())
            self._background.add(t)
            t.add_done_callback(self._background.discard)

    async def _do(self, msg: msgs.TaskAssign) -> None:
        task = Task(msg.task_id, msg.attempt, msg.pool, msg.priority, msg.timeout_ms, msg.payload, self,
                    progress_timeout_ms=msg.progress_timeout_ms, max_cost=msg.max_cost)
        await self.report("task_ack", task.task_id, task.attempt)
        try:
            if self.handler is None:
                raise RuntimeError("this agent has no task handler")
            result = await self.handler(task)
        except asyncio.CancelledError:
            return  # cancelled by the commander (or stopping): no report
        except Exception as e:  # the task failed, not the agent
            used = {"usage": task.usage} if task.usage else {}
            await self._result("task_fail", task, error=f"{type(e).__name__}: {e}", **used)
            return
        used = {"usage": task.usage} if task.usage else {}
        await self._result("task_complete", task, result=result, **used)

    # ---- the whole life ----

    async def run(self, stop: Optional[asyncio.Event] = None, *, grace: float = 30.0,
                  handle_signals: bool = True) -> None:
        """Connects, registers, heartbeats and takes tasks until ``stop`` is
        set or the commander drains the agent; then deregisters.

        SIGTERM or SIGINT (a rolling restart, Ctrl-C) makes the agent leave
        cleanly: it takes no new task, keeps heartbeating while it finishes
        what it holds and has the results acknowledged (for at most
        ``grace`` seconds; what is still running then is abandoned), then
        deregisters, which hands back anything unfinished at once and counts
        no casualty. A second signal leaves at once. ``stop`` leaves at once
        too. ``handle_signals=False`` leaves the signals to the caller."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        leave = asyncio.Event()
        installed = []
        if handle_signals:
            import signal

            def on_signal(sig: "signal.Signals") -> None:
                if leave.is_set():
                    log.warning("%s again: leaving now", sig.name)
                    stop.set()
                    return
                log.info("%s: finishing %d task(s) (at most %.0f s), then leaving", sig.name,
                         len(self._running), grace)
                self._leaving = True
                leave.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or no signals here
        connected_here = self._pub is None  # else: inside `async with`
        if connected_here:
            await self.connect()
        try:
            await self.register()
            deadline = None
            while not stop.is_set():
                await self.heartbeat()
                await self._resend()
                if self._drained.is_set() or leave.is_set():
                    if deadline is None and leave.is_set():
                        deadline = loop.time() + grace
                    if not (self._running or self._unacked):
                        break
                    if deadline is not None and loop.time() >= deadline:
                        log.warning("grace over: handing back %d unfinished task(s)", len(self._running))
                        break
                # Wake for what has not happened yet (an event already set
                # would wake at once, again and again).
                waits = [asyncio.create_task(stop.wait())]
                waits += [asyncio.create_task(e.wait()) for e in (self._drained, leave) if not e.is_set()]
                if self._drained.is_set() or leave.is_set():
                    waits.append(asyncio.create_task(self._settled()))
                timeout = self.heartbeat_s
                if deadline is not None:
                    timeout = max(0.0, min(timeout, deadline - loop.time()))
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            for t in list(self._running.values()):
                t.cancel()
            await self.deregister()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if connected_here:
                await self.close()

    async def _settled(self) -> None:
        """Returns once the agent is leaving (drained or signalled) and holds
        nothing: no task running, no result unacknowledged."""
        while not ((self._drained.is_set() or self._leaving) and not self._running and not self._unacked):
            await asyncio.sleep(0.05)

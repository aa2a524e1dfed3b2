"""What the commander sends an agent, as dataclasses (docs/PROTOCOL.md,
"Messages to an agent"). ``parse`` turns a decoded message into one of them;
a message of a kind this SDK does not know is None (ignored, as the protocol
asks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union


@dataclass(frozen=True)
class RegisterReply:
    """The answer to ``register``: accepted (with the agent's record and the
    heartbeat interval) or refused (with a reason)."""

    reply_to: str
    accepted: bool
    agent: Dict[str, Any] = field(default_factory=dict)
    heartbeat_interval_ms: int = 5000
    re_registered: bool = False
    reason: str = ""
    detail: str = ""
    session_key: str = ""  # the commander's X25519 key: a session is set up


@dataclass(frozen=True)
class DeregisterReply:
    reply_to: str
    removed: bool


@dataclass(frozen=True)
class TaskAssign:
    """A task for this agent: acknowledge it, then complete or fail it."""

    task_id: str
    attempt: int
    pool: str
    priority: int
    timeout_ms: int
    payload: Any
    progress_timeout_ms: int = 0
    max_cost: Optional[float] = None


@dataclass(frozen=True)
class TaskCancel:
    task_id: str
    attempt: int


@dataclass(frozen=True)
class ResultAck:
    task_id: str
    attempt: int
    recorded: bool


@dataclass(frozen=True)
class Drain:
    reason: str = ""


@dataclass(frozen=True)
class Reregister:
    reason: str = ""


@dataclass(frozen=True)
class Halt:
    reason: str = ""
    balance: float = 0.0
    unit: str = ""


@dataclass(frozen=True)
class Resume:
    balance: float = 0.0


Message = Union[RegisterReply, DeregisterReply, TaskAssign, TaskCancel, ResultAck, Drain, Reregister, Halt, Resume]


def parse(m: Dict[str, Any]) -> Optional[Message]:
    """The dataclass for a message from the commander; None for a kind this
    SDK does not know. Raises KeyError or ValueError on a known kind that
    lacks a field it must have."""
    kind = m.get("type")
    if kind == "register_reply":
        return RegisterReply(
            reply_to=str(m["replyTo"]), accepted=bool(m["accepted"]), agent=m.get("agent") or {},
            heartbeat_interval_ms=int(m.get("heartbeatIntervalMs", 5000)),
            re_registered=bool(m.get("reRegistered", False)), reason=str(m.get("reason", "")),
            detail=str(m.get("detail", "")), session_key=str(m.get("sessionKey", "")))
    if kind == "deregister_reply":
        return DeregisterReply(reply_to=str(m["replyTo"]), removed=bool(m.get("removed")))
    if kind == "task_assign":
        return TaskAssign(
            task_id=str(m["taskId"]), attempt=int(m["attempt"]), pool=str(m["pool"]),
            priority=int(m["priority"]), timeout_ms=int(m["timeoutMs"]), payload=m.get("payload"),
            progress_timeout_ms=int(m.get("progressTimeoutMs", 0)), max_cost=m.get("maxCost"))
    if kind == "task_cancel":
        return TaskCancel(task_id=str(m["taskId"]), attempt=int(m["attempt"]))
    if kind == "result_ack":
        return ResultAck(task_id=str(m["taskId"]), attempt=int(m["attempt"]), recorded=bool(m.get("recorded")))
    if kind == "drain":
        return Drain(reason=str(m.get("reason", "")))
    if kind == "reregister":
        return Reregister(reason=str(m.get("reason", "")))
    if kind == "halt":
        return Halt(reason=str(m.get("reason", "")), balance=float(m.get("balance", 0.0)), unit=str(m.get("unit", "")))
    if kind == "resume":
        return Resume(balance=float(m.get("balance", 0.0)))
    return None

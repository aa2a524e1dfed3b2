"""Message signing, as docs/PROTOCOL.md ("Signing") defines it.

A signed message is one header line and the message's exact bytes::

    FC1 <kid> <ts> <nonce> <sig>\\n<body>

where ``sig`` is the Ed25519 signature, base64 (standard, padded), of::

    FC1\\n<channel>\\n<kid>\\n<ts>\\n<nonce>\\n<body>
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

MAGIC = b"FC1"
COMMANDER_KID = "commander:"
WINDOW_MS = 30_000
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Refused(Exception):
    """A message that is not from whom it says (the reason is the protocol's label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def now_ms() -> int:
    return int(time.time() * 1000)


def signing_input(channel: str, kid: str, ts: int, nonce: str, body: bytes) -> bytes:
    return b"\n".join([MAGIC, channel.encode(), kid.encode(), str(ts).encode(), nonce.encode(), body])


def sign(key: Ed25519PrivateKey, kid: str, channel: str, body: bytes, ts: Optional[int] = None) -> bytes:
    """The payload to publish on ``channel``: ``body`` signed with ``key``."""
    ts = now_ms() if ts is None else ts
    nonce = os.urandom(16).hex()
    sig = key.sign(signing_input(channel, kid, ts, nonce, body))
    header = f"FC1 {kid} {ts} {nonce} {base64.b64encode(sig).decode()}\n".encode()
    return header + body


@dataclass(frozen=True)
class Signed:
    kid: str
    ts: int
    nonce: str
    sig: bytes
    body: bytes


def unframe(payload: bytes) -> Optional[Signed]:
    """The parts of a signed payload; None if it is plain JSON. Raises
    Refused("bad_header") for a malformed header."""
    if not payload.startswith(b"FC1 "):
        return None
    end = payload.find(b"\n", 0, 4 + 256)
    if end < 0:
        raise Refused("bad_header")
    try:
        words = payload[4:end].decode("ascii").split(" ")
        kid, ts, nonce, sig = words
        if not (_TOKEN.match(kid) and _TOKEN.match(nonce)) or len(nonce) < 8:
            raise ValueError
        raw = base64.b64decode(sig, validate=True)
        if len(raw) != 64:
            raise ValueError
        return Signed(kid, int(ts), nonce, raw, payload[end + 1 :])
    except ValueError:
        raise Refused("bad_header") from None


class CommanderCheck:
    """Accepts only what the commander signed: for this channel, recently,
    once, and from its newest epoch."""

    def __init__(self, public: Ed25519PublicKey, window_ms: int = WINDOW_MS) -> None:
        self.public = public
        self.window_ms = window_ms
        self.epoch = 0
        self.seen: Dict[str, int] = {}

    def check(self, channel: str, payload: bytes, now: Optional[int] = None) -> bytes:
        now = now_ms() if now is None else now
        s = unframe(payload)
        if s is None:
            raise Refused("unsigned")
        if not s.kid.startswith(COMMANDER_KID):
            raise Refused("unknown_key")
        try:
            epoch = int(s.kid[len(COMMANDER_KID):])
        except ValueError:
            raise Refused("unknown_key") from None
        if abs(s.ts - now) > self.window_ms:
            raise Refused("stale_timestamp")
        try:
            self.public.verify(s.sig, signing_input(channel, s.kid, s.ts, s.nonce, s.body))
        except InvalidSignature:
            raise Refused("bad_signature") from None
        if epoch < self.epoch:
            raise Refused("old_epoch")
        if len(self.seen) > 4096:
            horizon = now - self.window_ms
            self.seen = {n: t for n, t in self.seen.items() if t >= horizon}
        if s.nonce in self.seen:
            raise Refused("replay")
        self.seen[s.nonce] = s.ts
        self.epoch = epoch
        return s.body


@dataclass(frozen=True)
class Credential:
    """What `fleet-commander keys issue` prints: the key id, the secret, the
    commander's public key; for an agent, its id (``subject``) and pool; and
    the Redis ACL user and password to connect with."""

    kid: str
    role: str
    subject: str
    pool: Optional[str]
    secret: str
    commander: str
    redis_user: Optional[str] = None  # the Redis ACL user (`fleet-commander acl --apply`)
    redis_password: Optional[str] = None

    @staticmethod
    def parse(text: str) -> "Credential":
        d = json.loads(text)
        c = Credential(d["kid"], d["role"], d["subject"], d.get("pool"), d["secret"], d["commander"],
                       d.get("redisUser"), d.get("redisPassword"))
        c.keys()  # both keys must decode
        return c

    @staticmethod
    def load(path: str) -> "Credential":
        with open(path, encoding="utf-8") as f:
            return Credential.parse(f.read())

    def keys(self) -> Tuple[Ed25519PrivateKey, Ed25519PublicKey]:
        secret = base64.b64decode(self.secret)
        public = base64.b64decode(self.commander)
        if len(secret) != 32 or len(public) != 32:
            raise ValueError("a credential's keys are 32 bytes of base64")
        return (
            Ed25519PrivateKey.from_private_bytes(secret),
            Ed25519PublicKey.from_public_bytes(public),
        )

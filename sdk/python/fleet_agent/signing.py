"""Message signing, as docs/PROTOCOL.md ("Signing") defines it.

A signed message is one header line and the message's exact bytes::

    FC1 <kid> <ts> <nonce> <sig>\\n<body>

where ``sig`` is the Ed25519 signature, base64 (standard, padded), of::

    FC1\\n<channel>\\n<kid>\\n<ts>\\n<nonce>\\n<body>

After a signed registration an agent may hold a session (docs/PROTOCOL.md,
"Sessions"): ``FS1`` frames carry an HMAC-SHA256 of the same input (with
``FS1`` for ``FC1``) keyed with the secret both sides derived by X25519 and
HKDF-SHA256.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"FC1"
SESSION_MAGIC = b"FS1"
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


def signing_input(channel: str, kid: str, ts: int, nonce: str, body: bytes, magic: bytes = MAGIC) -> bytes:
    return b"\n".join([magic, channel.encode(), kid.encode(), str(ts).encode(), nonce.encode(), body])


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
    sig: bytes  # the signature (FC1) or the MAC (FS1)
    body: bytes
    magic: bytes = MAGIC

    def covered(self, channel: str) -> bytes:
        return signing_input(channel, self.kid, self.ts, self.nonce, self.body, self.magic)


class Session:
    """A session's secret: MACs what the agent sends, checks what it gets."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def seal(self, kid: str, channel: str, body: bytes, ts: Optional[int] = None) -> bytes:
        ts = now_ms() if ts is None else ts
        nonce = os.urandom(16).hex()
        mac = hmac.new(self._secret, signing_input(channel, kid, ts, nonce, body, SESSION_MAGIC), hashlib.sha256)
        return f"FS1 {kid} {ts} {nonce} {base64.b64encode(mac.digest()).decode()}\n".encode() + body

    def verify(self, channel: str, s: Signed) -> bool:
        mac = hmac.new(self._secret, s.covered(channel), hashlib.sha256).digest()
        return s.magic == SESSION_MAGIC and hmac.compare_digest(mac, s.sig)


class Exchange:
    """This process's X25519 key, offered at registration (``sessionKey``)."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    def session(self, commander_key_b64: str, agent_id: str) -> Session:
        """The session agreed with the commander's ``sessionKey``. Raises
        ValueError for a key that is not 32 bytes or gives no secret."""
        raw = base64.b64decode(commander_key_b64, validate=True)
        if len(raw) != 32:
            raise ValueError("the commander's sessionKey is not 32 bytes")
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(raw))  # ValueError if all zero
        info = b"FC1 session\n" + agent_id.encode() + b"\n" + self.public
        return Session(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


def unframe(payload: bytes) -> Optional[Signed]:
    """The parts of a signed (FC1) or MACed (FS1) payload; None if it is
    plain JSON. Raises Refused("bad_header") for a malformed header."""
    magic = payload[:3]
    if payload[3:4] != b" " or magic not in (MAGIC, SESSION_MAGIC):
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
        if len(raw) != (64 if magic == MAGIC else 32):
            raise ValueError
        return Signed(kid, int(ts), nonce, raw, payload[end + 1 :], magic)
    except ValueError:
        raise Refused("bad_header") from None


class CommanderCheck:
    """Accepts only what the commander signed (or MACed with the session):
    for this channel, recently, once, and from its newest epoch."""

    def __init__(self, public: Ed25519PublicKey, window_ms: int = WINDOW_MS) -> None:
        self.public = public
        self.window_ms = window_ms
        self.epoch = 0
        self.seen: Dict[str, int] = {}
        self.session: Optional[Session] = None

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
        if s.magic == SESSION_MAGIC:
            if self.session is None:
                raise Refused("no_session")
            if not self.session.verify(channel, s):
                raise Refused("bad_signature")
        else:
            try:
                self.public.verify(s.sig, s.covered(channel))
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

//! Message signing: who sent a message, checked on its exact bytes.
//!
//! A signed message is one header line and then the message's bytes as they
//! were written:
//!
//! ```text
//! FC1 <kid> <ts> <nonce> <sig>\n<body>
//! ```
//!
//! `sig` is the Ed25519 signature (base64, standard alphabet, padded) of
//!
//! ```text
//! FC1\n<channel>\n<kid>\n<ts>\n<nonce>\n<body>
//! ```
//!
//! so a signature binds the key, the time, a one-time nonce and the channel
//! it was published on: a message cannot be altered, replayed later, or
//! replayed on another channel. The commander signs with the key id
//! `commander:<epoch>`, so an agent can also refuse a commander older than
//! one it has heard. `docs/PROTOCOL.md` ("Signing") is the reference and
//! `docs/SECURITY.md` says why Ed25519.
//!
//! After a signed registration an agent and the commander may share a
//! session secret ([`crate::session`]) and send `FS1` frames instead: the
//! same header and input with an HMAC-SHA256 in place of the signature.

use crate::pool::PoolType;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The header's first word: the signing scheme's version.
pub const MAGIC: &str = "FC1";
/// The header's first word of a frame authenticated by a session's MAC.
pub const SESSION_MAGIC: &str = "FS1";
/// The commander's key id is this and its epoch.
pub const COMMANDER_KID: &str = "commander:";
/// How far a message's timestamp may be from the receiver's clock, by default.
pub const DEFAULT_WINDOW_MS: u64 = 30_000;
/// The longest header accepted: the rest of a longer first line is not read.
const MAX_HEADER: usize = 256;

/// Why a message was not accepted as signed by whom it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not signed")]
    Unsigned,
    #[error("malformed signature header")]
    BadHeader,
    #[error("unknown key")]
    UnknownKey,
    #[error("revoked key")]
    RevokedKey,
    #[error("key expired after rotation")]
    ExpiredKey,
    #[error("key of another role")]
    WrongRole,
    #[error("key of another agent")]
    WrongAgent,
    #[error("key of another pool")]
    WrongPool,
    #[error("reply channel of another submitter")]
    WrongReply,
    #[error("timestamp outside the window")]
    Stale,
    #[error("bad signature")]
    BadSignature,
    #[error("nonce already seen (a replay)")]
    Replay,
    #[error("from an older commander epoch")]
    OldEpoch,
    #[error("over the sender's rate limit")]
    RateLimited,
    #[error("a session frame from a sender with no session")]
    NoSession,
}

impl AuthError {
    /// The `reason` label of `fleet_messages_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Unsigned => "unsigned",
            AuthError::BadHeader => "bad_header",
            AuthError::UnknownKey => "unknown_key",
            AuthError::RevokedKey => "revoked_key",
            AuthError::ExpiredKey => "expired_key",
            AuthError::WrongRole => "wrong_role",
            AuthError::WrongAgent => "wrong_agent",
            AuthError::WrongPool => "wrong_pool",
            AuthError::WrongReply => "wrong_reply",
            AuthError::Stale => "stale_timestamp",
            AuthError::BadSignature => "bad_signature",
            AuthError::Replay => "replay",
            AuthError::OldEpoch => "old_epoch",
            AuthError::RateLimited => "rate_limited",
            AuthError::NoSession => "no_session",
        }
    }
}

/// A payload split into its signature header (if any) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unframed<'a> {
    Plain(&'a [u8]),
    Signed(Signed<'a>),
}

/// What vouches for a frame: a signature (`FC1`) or a session's MAC (`FS1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Signature([u8; 64]),
    Mac([u8; 32]),
}

impl Proof {
    /// The header's first word for this proof.
    pub fn magic(&self) -> &'static str {
        match self {
            Proof::Signature(_) => MAGIC,
            Proof::Mac(_) => SESSION_MAGIC,
        }
    }

    /// The proof as written in the header (base64).
    pub fn encode(&self) -> String {
        match self {
            Proof::Signature(s) => B64.encode(s),
            Proof::Mac(m) => B64.encode(m),
        }
    }
}

/// A signed (or MACed) payload's parts, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<'a> {
    pub kid: &'a str,
    pub ts: u64,
    pub nonce: &'a str,
    pub proof: Proof,
    pub body: &'a [u8],
}

/// Splits a payload: a signed one starts with `FC1 `, a MACed one with
/// `FS1 `, anything else is plain.
pub fn unframe(payload: &[u8]) -> Result<Unframed<'_>, AuthError> {
    let (rest, mac) = if let Some(rest) = payload.strip_prefix(b"FC1 ") {
        (rest, false)
    } else if let Some(rest) = payload.strip_prefix(b"FS1 ") {
        (rest, true)
    } else {
        return Ok(Unframed::Plain(payload));
    };
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or(AuthError::BadHeader)?;
    let header = std::str::from_utf8(&rest[..end]).map_err(|_| AuthError::BadHeader)?;
    let mut words = header.split(' ');
    let (Some(kid), Some(ts), Some(nonce), Some(sig), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(AuthError::BadHeader);
    };
    if !token(kid) || !token(nonce) || nonce.len() < 8 {
        return Err(AuthError::BadHeader);
    }
    let ts = ts.parse().map_err(|_| AuthError::BadHeader)?;
    let bytes = B64.decode(sig).map_err(|_| AuthError::BadHeader)?;
    let proof = if mac {
        Proof::Mac(bytes.try_into().map_err(|_| AuthError::BadHeader)?)
    } else {
        Proof::Signature(bytes.try_into().map_err(|_| AuthError::BadHeader)?)
    };
    Ok(Unframed::Signed(Signed {
        kid,
        ts,
        nonce,
        proof,
        body: &rest[end + 1..],
    }))
}

/// Key ids and nonces: 1 to 64 of `A-Z a-z 0-9 - _ . :`.
fn token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// What the signature covers.
pub fn signing_input(channel: &str, kid: &str, ts: u64, nonce: &str, body: &[u8]) -> Vec<u8> {
    input_of(MAGIC, channel, kid, ts, nonce, body)
}

/// What a signature (`FC1`) or a MAC (`FS1`) covers: the scheme, channel,
/// key id, time and nonce, a line each, then the body.
pub fn input_of(
    magic: &str,
    channel: &str,
    kid: &str,
    ts: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let ts = ts.to_string();
    let mut m = Vec::with_capacity(16 + channel.len() + kid.len() + nonce.len() + body.len());
    for part in [
        magic.as_bytes(),
        channel.as_bytes(),
        kid.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
    ] {
        m.extend_from_slice(part);
        m.push(b'\n');
    }
    m.extend_from_slice(body);
    m
}

/// True when `sig` is `key`'s signature of `input` (a [`signing_input`]).
pub fn verify(key: &VerifyingKey, input: &[u8], sig: &[u8; 64]) -> bool {
    key.verify(input, &Signature::from_bytes(sig)).is_ok()
}

impl Signed<'_> {
    /// What this frame's proof covers, on `channel`.
    pub fn input(&self, channel: &str) -> Vec<u8> {
        input_of(
            self.proof.magic(),
            channel,
            self.kid,
            self.ts,
            self.nonce,
            self.body,
        )
    }

    /// True when `key` signed this on `channel` (a MACed frame: false).
    pub fn verify(&self, channel: &str, key: &VerifyingKey) -> bool {
        match &self.proof {
            Proof::Signature(sig) => verify(key, &self.input(channel), sig),
            Proof::Mac(_) => false,
        }
    }

    /// Whether the timestamp is within `window_ms` of `now`.
    pub fn fresh(&self, now: u64, window_ms: u64) -> bool {
        self.ts.abs_diff(now) <= window_ms
    }
}

/// Signs messages with one key.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(kid: impl Into<String>, secret: &[u8; 32]) -> Signer {
        Signer {
            kid: kid.into(),
            key: SigningKey::from_bytes(secret),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The bare signature of `bytes` (for records that are not messages:
    /// the audit log's entries).
    pub fn sign_bytes(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }

    /// The signed payload of `body` for `channel`, stamped `now`.
    pub fn sign(&self, channel: &str, body: &[u8], now: u64) -> Vec<u8> {
        let nonce = nonce();
        let sig = self
            .key
            .sign(&signing_input(channel, &self.kid, now, &nonce, body));
        let sig = B64.encode(sig.to_bytes());
        let mut out = Vec::with_capacity(body.len() + 160);
        out.extend_from_slice(format!("{MAGIC} {} {now} {nonce} {sig}\n", self.kid).as_bytes());
        out.extend_from_slice(body);
        out
    }
}

/// A fresh random nonce: 16 bytes, hex.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex(&b)
}

/// Bytes as lowercase hex (one allocation: a nonce is made for every
/// message the commander seals).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// A fresh random Ed25519 secret (seed).
pub fn new_secret() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    b
}

/// A fresh key id: `k` and 12 hex digits.
pub fn new_kid() -> String {
    format!("k{}", &nonce()[..12])
}

/// A signature in base64.
pub fn encode_sig(sig: &[u8; 64]) -> String {
    B64.encode(sig)
}

/// A signature written in base64.
pub fn decode_sig(s: &str) -> Option<[u8; 64]> {
    B64.decode(s).ok()?.try_into().ok()
}

pub fn encode_key(bytes: &[u8; 32]) -> String {
    B64.encode(bytes)
}

/// A 32-byte key written in base64.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s.trim()).ok()?.try_into().ok()
}

/// A public key written in base64.
pub fn decode_public(s: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&decode_key(s)?).ok()
}

pub use ed25519_dalek::VerifyingKey as PublicKey;

/// The Redis ACL user of a key's holder.
pub fn redis_user(role: Role, subject: &str) -> String {
    match role {
        Role::Agent => format!("fleet-agent-{subject}"),
        Role::Submitter => format!("fleet-submitter-{subject}"),
    }
}

/// What a key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// One agent's messages: `subject` is its agentId, `pool` its pool.
    Agent,
    /// `task_submit` (and `status_request`): `subject` names the submitter.
    Submitter,
}

/// A key as the commander keeps it: public half only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub kid: String,
    pub role: Role,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolType>,
    /// The Ed25519 public key, base64.
    pub public: String,
    pub created_ms: u64,
    /// Revoked: refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// Rotated out: accepted until then (the overlap), refused after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// What the operator granted the key's agent beyond its pool
    /// (`keys issue --validator-weight --max-priority --max-capacity`).
    #[serde(default, skip_serializing_if = "Grants::is_least")]
    pub grants: Grants,
    /// SHA-256 (hex) of the key's Redis ACL password (`fleet-commander
    /// acl` makes a Redis user of it; the password is in the credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password_sha256: Option<String>,
}

/// The power an agent's key carries, set by the operator when the key is
/// issued: a registration that claims more (validator, its weight, its
/// priority or capacity) is refused `not_granted`, and a vote signed by a
/// key that is no validator's is refused. Without grants a key is no
/// validator, and registers at its pool's priority or below with capacity 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// A validator, of at most this weight (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_weight: Option<u64>,
    /// The highest `priority` it may register with (0..=10); none: its
    /// pool's `priority_level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<u8>,
    /// The highest `capacity` (1..=64); none: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<u32>,
}

impl Grants {
    /// All a registration can claim: what security "open" amounts to.
    pub const ANY: Grants = Grants {
        validator_weight: Some(crate::governance::MAX_WEIGHT),
        max_priority: Some(crate::MAX_PRIORITY),
        max_capacity: Some(crate::MAX_CAPACITY),
    };

    pub fn is_least(&self) -> bool {
        *self == Grants::default()
    }

    /// Whether `r` claims no more than granted; `pool_priority` is the
    /// pool's default priority (the ceiling when none is granted). The
    /// error says what was claimed and how an operator grants it.
    pub fn allow(&self, r: &crate::Register, pool_priority: u8) -> Result<(), String> {
        use crate::governance::{weight, VALIDATOR};
        if r.capabilities.iter().any(|c| c == VALIDATOR) {
            let w = weight(&r.capabilities);
            match self.validator_weight {
                None => {
                    return Err("capability validator is not granted to this key \
                                (keys issue --validator-weight N)"
                        .into())
                }
                Some(g) if w > g => {
                    return Err(format!(
                        "validator weight {w} exceeds the key's grant of {g} \
                         (keys rotate --validator-weight N)"
                    ))
                }
                Some(_) => {}
            }
        }
        let priority = r.priority.unwrap_or(pool_priority);
        let max_priority = self.max_priority.unwrap_or(pool_priority);
        if priority > max_priority {
            return Err(format!(
                "priority {priority} exceeds the key's grant of {max_priority} \
                 (keys issue --max-priority N)"
            ));
        }
        let capacity = r.capacity.unwrap_or(1);
        let max_capacity = self.max_capacity.unwrap_or(1);
        if capacity > max_capacity {
            return Err(format!(
                "capacity {capacity} exceeds the key's grant of {max_capacity} \
                 (keys issue --max-capacity N)"
            ));
        }
        Ok(())
    }

    /// As `keys list` shows it: `validator:5 priority<=7 capacity<=4`, or `-`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = self.validator_weight {
            parts.push(format!("validator:{w}"));
        }
        if let Some(p) = self.max_priority {
            parts.push(format!("priority<={p}"));
        }
        if let Some(c) = self.max_capacity {
            parts.push(format!("capacity<={c}"));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

impl KeyRecord {
    /// Whether the key may sign at `now`.
    pub fn usable(&self, now: u64) -> Result<(), AuthError> {
        if self.revoked_ms.is_some() {
            return Err(AuthError::RevokedKey);
        }
        match self.expires_ms {
            Some(t) if t <= now => Err(AuthError::ExpiredKey),
            _ => Ok(()),
        }
    }

    pub fn state(&self, now: u64) -> &'static str {
        match self.usable(now) {
            Ok(()) if self.expires_ms.is_some() => "rotating_out",
            Ok(()) => "active",
            Err(AuthError::RevokedKey) => "revoked",
            Err(_) => "expired",
        }
    }
}

/// What an operator hands to an agent or a submitter, once: its key id and
/// secret, and the commander's public key to check what it receives.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub kid: String,
    pub role: Role,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolType>,
    /// The Ed25519 secret (seed), base64. Keep it like a password.
    pub secret: String,
    /// The commander's public key, base64.
    pub commander: String,
    /// The Redis ACL user and password this key's holder connects with
    /// (once `fleet-commander acl --apply` has made the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kid", &self.kid)
            .field("role", &self.role)
            .field("subject", &self.subject)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("not a credential: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the {0} key is not 32 bytes of base64")]
    Key(&'static str),
}

impl Credential {
    pub fn parse(text: &str) -> Result<Credential, CredentialError> {
        let c: Credential = serde_json::from_str(text.trim())?;
        decode_key(&c.secret).ok_or(CredentialError::Key("secret"))?;
        decode_public(&c.commander).ok_or(CredentialError::Key("commander"))?;
        Ok(c)
    }

    /// `base` (any Redis URL: `redis://`, `rediss://`, `redis+sentinel://`)
    /// with this credential's Redis user and password in place of any the
    /// URL names, if the credential has them. The Python SDK does the same.
    pub fn redis_url(&self, base: &str) -> String {
        let (Some(user), Some(pass)) = (&self.redis_user, &self.redis_password) else {
            return base.to_string();
        };
        let Some((scheme, rest)) = base.split_once("://") else {
            return base.to_string();
        };
        // The authority ends at the first '/' or '?'; a user in it ends at its last '@'.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        format!("{scheme}://{user}:{pass}@{hosts}{tail}")
    }

    pub fn signer(&self) -> Signer {
        Signer::new(
            self.kid.clone(),
            &decode_key(&self.secret).expect("checked by parse"),
        )
    }

    /// A checker of the commander's messages.
    pub fn commander_check(&self) -> CommanderCheck {
        CommanderCheck::new(decode_public(&self.commander).expect("checked by parse"))
    }
}

/// What an agent runs on everything it receives: signed by the commander,
/// on this channel, recently, once, and by its newest epoch.
#[derive(Debug, Clone)]
pub struct CommanderCheck {
    key: VerifyingKey,
    window_ms: u64,
    epoch: u64,
    /// Nonces seen, with their timestamps; forgotten once out of the window.
    seen: HashMap<String, u64>,
    /// The session agreed at registration: `FS1` frames are checked with it.
    session: Option<crate::session::Session>,
}

impl CommanderCheck {
    pub fn new(key: VerifyingKey) -> CommanderCheck {
        CommanderCheck {
            key,
            window_ms: DEFAULT_WINDOW_MS,
            epoch: 0,
            seen: HashMap::new(),
            session: None,
        }
    }

    /// Takes `FS1` frames MACed with `session` from now on (None: only
    /// signed ones).
    pub fn set_session(&mut self, session: Option<crate::session::Session>) {
        self.session = session;
    }

    /// The body of `payload` if the commander signed it for `channel`.
    pub fn check<'a>(
        &mut self,
        channel: &str,
        payload: &'a [u8],
        now: u64,
    ) -> Result<&'a [u8], AuthError> {
        let Unframed::Signed(s) = unframe(payload)? else {
            return Err(AuthError::Unsigned);
        };
        let epoch: u64 = s
            .kid
            .strip_prefix(COMMANDER_KID)
            .ok_or(AuthError::UnknownKey)?
            .parse()
            .map_err(|_| AuthError::UnknownKey)?;
        if !s.fresh(now, self.window_ms) {
            return Err(AuthError::Stale);
        }
        let good = match (&s.proof, &self.session) {
            (Proof::Signature(_), _) => s.verify(channel, &self.key),
            (Proof::Mac(_), Some(session)) => session.verify(channel, &s),
            (Proof::Mac(_), None) => return Err(AuthError::NoSession),
        };
        if !good {
            return Err(AuthError::BadSignature);
        }
        if epoch < self.epoch {
            return Err(AuthError::OldEpoch);
        }
        if self.seen.len() > 4096 {
            let horizon = now.saturating_sub(self.window_ms);
            self.seen.retain(|_, ts| *ts >= horizon);
        }
        if self.seen.insert(s.nonce.to_string(), s.ts).is_some() {
            return Err(AuthError::Replay);
        }
        self.epoch = epoch;
        Ok(s.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(nonce().len(), 32);
    }

    fn signer() -> Signer {
        Signer::new("commander:7", &[7; 32])
    }

    #[test]
    fn a_signed_message_round_trips_byte_for_byte() {
        let body = br#"{"type":"task_assign","payload":{"b":1,"a":1e2}}"#;
        let framed = signer().sign("swarm:phase-1:agent:a", body, 1000);
        let Unframed::Signed(s) = unframe(&framed).unwrap() else {
            panic!("signed")
        };
        assert_eq!(s.body, body);
        assert_eq!(s.kid, "commander:7");
        assert!(s.verify("swarm:phase-1:agent:a", &signer().public()));
        assert!(
            !s.verify("swarm:phase-1:agent:b", &signer().public()),
            "channel bound"
        );
        assert!(!s.verify(
            "swarm:phase-1:agent:a",
            &Signer::new("x", &[8; 32]).public()
        ));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let framed = signer().sign("c", b"{\"a\":1}", 1000);
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 1;
            let ok = match unframe(&bad) {
                Ok(Unframed::Signed(s)) => s.verify("c", &signer().public()),
                _ => false,
            };
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn plain_and_malformed_payloads() {
        assert_eq!(unframe(b"{}"), Ok(Unframed::Plain(b"{}")));
        for bad in [
            &b"FC1 k 1 nonce123"[..],
            b"FC1 k 1 nonce123 sig\n{}",
            b"FC1 k x nonce123 AAAA\n{}",
            b"FC1 k 1 short AAAA\n{}",
            b"FC1 k\xff 1 nonce123 AAAA\n{}",
        ] {
            assert_eq!(unframe(bad), Err(AuthError::BadHeader), "{bad:?}");
        }
    }

    #[test]
    fn the_agent_side_refuses_forgeries_replays_and_old_epochs() {
        let c = signer();
        let mut check = CommanderCheck::new(c.public());
        let now = 1_000_000;
        let m = c.sign("ch", b"{}", now);
        assert_eq!(check.check("ch", &m, now), Ok(&b"{}"[..]));
        assert_eq!(check.check("ch", &m, now), Err(AuthError::Replay));
        assert_eq!(
            check.check("other", &c.sign("ch", b"{}", now), now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(check.check("ch", b"{}", now), Err(AuthError::Unsigned));
        let forged = Signer::new("commander:9", &[1; 32]).sign("ch", b"{}", now);
        assert_eq!(
            check.check("ch", &forged, now),
            Err(AuthError::BadSignature)
        );
        let old = Signer::new("commander:6", &[7; 32]).sign("ch", b"{}", now);
        assert_eq!(check.check("ch", &old, now), Err(AuthError::OldEpoch));
        assert_eq!(
            check.check("ch", &c.sign("ch", b"{}", now - 40_000), now),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn credentials_parse_and_hide_their_secret() {
        let c = Credential {
            kid: new_kid(),
            role: Role::Agent,
            subject: "coder-1".into(),
            pool: Some(PoolType::Coder),
            secret: encode_key(&new_secret()),
            commander: B64.encode(signer().public().to_bytes()),
            redis_user: Some("fleet-agent-coder-1".into()),
            redis_password: Some("pw".into()),
        };
        assert_eq!(
            c.redis_url("redis://127.0.0.1:6379/0"),
            "redis://fleet-agent-coder-1:pw@127.0.0.1:6379/0"
        );
        // The credential's user replaces the URL's, as in the Python SDK.
        assert_eq!(
            c.redis_url("redis://default:admin@127.0.0.1:6379"),
            "redis://fleet-agent-coder-1:pw@127.0.0.1:6379"
        );
        assert_eq!(
            c.redis_url("redis+sentinel://u:p@s1:26379,s2:26379/fleet?sentinel_password=x"),
            "redis+sentinel://fleet-agent-coder-1:pw@s1:26379,s2:26379/fleet?sentinel_password=x"
        );
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(Credential::parse(&text).unwrap(), c);
        assert!(!format!("{c:?}").contains(&c.secret));
        assert!(Credential::parse(&text.replace(&c.secret, "AAAA")).is_err());
    }
}

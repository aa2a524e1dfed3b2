//! Sessions: a MAC in place of a signature once an agent has registered.
//!
//! An Ed25519 check costs the commander about 40 µs and a signature 28 µs;
//! an HMAC-SHA256 of a heartbeat about 1 µs. So an agent may offer, in its
//! signed `register`, an X25519 public key (`sessionKey`); the commander
//! answers, in its signed `register_reply`, with its own. Both sides then
//! hold the same 32-byte session secret:
//!
//! ```text
//! shared = X25519(own secret, peer's public key)
//! secret = HKDF-SHA256(salt = none, ikm = shared,
//!                      info = "FC1 session\n" || agentId || "\n" || agent's public key (32 raw bytes),
//!                      length = 32)
//! ```
//!
//! and may authenticate each other's later messages with `FS1` frames: the
//! `FC1` header and input with `FS1` in place of `FC1` and the base64
//! HMAC-SHA256 (keyed with the secret) of the input in place of the
//! signature. Timestamps, nonces and channel binding are as signed
//! messages have them; `register` and votes are always signed.
//!
//! The commander's X25519 key is derived from its signing seed
//! ([`Exchange::for_commander`]), so a standby with the same key file
//! derives the same secrets from the agents' stored public keys: a takeover
//! keeps every session. `docs/PROTOCOL.md` ("Sessions") is the reference;
//! `docs/SECURITY.md` says what changes in the threat model.

use crate::auth::{input_of, Proof, Signed, SESSION_MAGIC};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

type HmacSha256 = Hmac<Sha256>;

/// One side's X25519 key for setting up sessions.
#[derive(Clone)]
pub struct Exchange {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("public", &self.public_b64())
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// A fresh random key (an agent makes one per process).
    pub fn random() -> Exchange {
        Exchange::from_secret(crate::auth::new_secret())
    }

    /// The commander's: derived from its Ed25519 seed, so that every
    /// commander with the same key file has the same one.
    pub fn for_commander(seed: &[u8; 32]) -> Exchange {
        let mut h = Sha256::new();
        h.update(b"FC1 session key\n");
        h.update(seed);
        Exchange::from_secret(h.finalize().into())
    }

    fn from_secret(bytes: [u8; 32]) -> Exchange {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Exchange { secret, public }
    }

    /// The public key as sent (`sessionKey`): base64 of 32 bytes.
    pub fn public_b64(&self) -> String {
        B64.encode(self.public.as_bytes())
    }

    /// The session with the holder of `peer` (base64) for `agent_id`, whose
    /// own public key is `agent_public` (base64: this side's if it is the
    /// agent, `peer` if it is the commander). None when a key is not 32
    /// bytes of base64 or the exchange is degenerate (a low-order point).
    pub fn session(&self, peer: &str, agent_id: &str, agent_public: &str) -> Option<Session> {
        let peer = decode32(peer)?;
        let agent_public = decode32(agent_public)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer));
        if !shared.was_contributory() {
            return None;
        }
        let mut info = Vec::with_capacity(13 + agent_id.len() + 33);
        info.extend_from_slice(b"FC1 session\n");
        info.extend_from_slice(agent_id.as_bytes());
        info.push(b'\n');
        info.extend_from_slice(&agent_public);
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, shared.as_bytes())
            .expand(&info, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Some(Session { key })
    }
}

/// Whether `s` is a public key as sent: 32 bytes of base64.
pub fn valid_public(s: &str) -> bool {
    decode32(s).is_some()
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// A session's secret: MACs frames and checks them.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    key: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The `FS1` frame of `body` for `channel`, from `kid`, stamped `now`.
    pub fn seal(&self, kid: &str, channel: &str, body: &[u8], now: u64) -> Vec<u8> {
        let nonce = crate::auth::nonce();
        let mut m = self.mac();
        m.update(&input_of(SESSION_MAGIC, channel, kid, now, &nonce, body));
        let tag = Proof::Mac(m.finalize().into_bytes().into()).encode();
        let mut out = Vec::with_capacity(body.len() + 128);
        out.extend_from_slice(format!("{SESSION_MAGIC} {kid} {now} {nonce} {tag}\n").as_bytes());
        out.extend_from_slice(body);
        out
    }

    /// True when `s` is an `FS1` frame MACed with this session on `channel`
    /// (compared in constant time).
    pub fn verify(&self, channel: &str, s: &Signed<'_>) -> bool {
        self.verify_input(&s.input(channel), &s.proof)
    }

    /// True when `proof` is this session's MAC of `input`.
    pub fn verify_input(&self, input: &[u8], proof: &Proof) -> bool {
        let Proof::Mac(tag) = proof else {
            return false;
        };
        let mut m = self.mac();
        m.update(input);
        m.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{unframe, Unframed};

    fn parts(frame: &[u8]) -> Signed<'_> {
        match unframe(frame).unwrap() {
            Unframed::Signed(s) => s,
            Unframed::Plain(_) => panic!("framed"),
        }
    }

    #[test]
    fn both_sides_derive_one_secret_and_only_they_do() {
        let commander = Exchange::for_commander(&[7; 32]);
        let agent = Exchange::random();
        let a = agent
            .session(&commander.public_b64(), "coder-1", &agent.public_b64())
            .unwrap();
        let c = commander
            .session(&agent.public_b64(), "coder-1", &agent.public_b64())
            .unwrap();
        assert_eq!(a, c);
        // Bound to the agent's id and to the commander's key.
        let other_id = commander
            .session(&agent.public_b64(), "coder-2", &agent.public_b64())
            .unwrap();
        assert_ne!(a, other_id);
        let other_commander = Exchange::for_commander(&[8; 32])
            .session(&agent.public_b64(), "coder-1", &agent.public_b64())
            .unwrap();
        assert_ne!(a, other_commander);
        // A standby with the same seed derives the same.
        assert_eq!(
            Exchange::for_commander(&[7; 32]).session(
                &agent.public_b64(),
                "coder-1",
                &agent.public_b64()
            ),
            Some(c)
        );
    }

    #[test]
    fn degenerate_and_malformed_keys_are_refused() {
        let c = Exchange::for_commander(&[7; 32]);
        let zero = B64.encode([0u8; 32]);
        assert!(c.session(&zero, "a", &zero).is_none(), "low-order point");
        assert!(c.session("AAAA", "a", "AAAA").is_none());
        assert!(!valid_public("not base64!"));
        assert!(valid_public(&c.public_b64()));
    }

    #[test]
    fn a_mac_binds_body_channel_and_header() {
        let s = Session { key: [3; 32] };
        let frame = s.seal("k1", "swarm:phase-1:health", b"{\"a\":1}", 1000);
        assert!(frame.starts_with(b"FS1 k1 1000 "));
        assert!(s.verify("swarm:phase-1:health", &parts(&frame)));
        assert!(!s.verify("swarm:phase-1:tasks", &parts(&frame)), "channel");
        assert!(!Session { key: [4; 32] }.verify("swarm:phase-1:health", &parts(&frame)));
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 1;
            let ok = match unframe(&bad) {
                Ok(Unframed::Signed(p)) => s.verify("swarm:phase-1:health", &p),
                _ => false,
            };
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }

    /// The worked example in docs/PROTOCOL.md ("Sessions"): fixed keys, the
    /// secret and a MAC an implementation in another language can compare.
    #[test]
    fn the_documented_example_holds() {
        let commander = Exchange::from_secret([1; 32]);
        let agent = Exchange::from_secret([2; 32]);
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/PROTOCOL.md"
        ))
        .unwrap();
        let session = agent
            .session(&commander.public_b64(), "coder-7", &agent.public_b64())
            .unwrap();
        let mut m = session.mac();
        m.update(&input_of(
            SESSION_MAGIC,
            "swarm:phase-1:health",
            "k3f9c1a0b2d4e",
            1700000000000,
            "00112233445566778899aabbccddeeff",
            br#"{"type":"heartbeat"}"#,
        ));
        let tag = Proof::Mac(m.finalize().into_bytes().into()).encode();
        for (what, value) in [
            ("commander public", commander.public_b64()),
            ("agent public", agent.public_b64()),
            ("secret", B64.encode(session.key)),
            ("mac", tag),
        ] {
            assert!(
                doc.contains(&format!("{what}: `{value}`")),
                "PROTOCOL.md's example lacks {what}: `{value}`"
            );
        }
    }
}

//! The audit log: every privileged action, one entry each in a Redis stream
//! (`…:audit`), chained. An entry's `hash` is the SHA-256 of the previous
//! entry's hash and this entry's fields, and `sig` is the commander's
//! Ed25519 signature of that hash (every writer, the commander and the CLI
//! on its host, holds the commander's key). So an entry edited, deleted or
//! inserted by anyone without that key breaks the chain, and
//! [`verify`] names the first entry where it breaks. Trimming records the
//! last removed entry as the anchor the chain starts from, and writes an
//! `audit_trimmed` entry that vouches for that anchor.
//!
//! What the chain alone cannot show is its own end: whoever can write Redis
//! may remove the newest entries and set the head back, or restore an older
//! copy of the whole log. A [`Checkpoint`] (the head's seq and hash at a
//! time, signed by the commander) kept outside Redis catches that: the log
//! must still reach every checkpoint, through the same entries.

use crate::scripts::AUDIT_APPEND;
use crate::{Keys, StoreError};
use fleet_protocol::auth::{self, PublicKey, Signer};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The hash the first entry chains to.
pub const GENESIS: &str = "genesis";

/// One entry, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The stream id.
    pub id: String,
    pub seq: u64,
    pub ts: u64,
    /// Who: a token's name (`token:ci`), `cli:<user>`, `commander:<epoch>`.
    pub actor: String,
    /// What: `key_issued`, `token_revoked`, `drain`, `scale`, `requeue`, ...
    pub action: String,
    pub target: String,
    /// `ok`, or why it did not happen.
    pub result: String,
    pub prev: String,
    pub hash: String,
    pub sig: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The chain holds, from the anchor through the head.
    Intact { entries: usize, head_seq: u64 },
    /// It breaks at `seq`: `what` says how.
    Broken { seq: u64, what: String },
}

/// The action of the entry a trim writes, vouching for the new anchor.
pub const TRIMMED: &str = "audit_trimmed";

/// The head of the log at `ts`, signed by the commander: kept off the box
/// (a file the commander appends to, `fleet-commander audit checkpoint`),
/// it lets `verify` see a log cut short or rolled back to before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub ts: u64,
    /// The commander's signature of `fleet-audit-checkpoint\n{seq}\n{hash}\n{ts}`.
    pub sig: String,
}

impl Checkpoint {
    fn message(seq: u64, hash: &str, ts: u64) -> String {
        format!("fleet-audit-checkpoint\n{seq}\n{hash}\n{ts}")
    }

    pub fn sign(seq: u64, hash: &str, ts: u64, signer: &Signer) -> Checkpoint {
        let sig = signer.sign_bytes(Checkpoint::message(seq, hash, ts).as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_string(),
            ts,
            sig: auth::encode_sig(&sig),
        }
    }

    /// Whether the commander signed it.
    pub fn valid(&self, commander: &PublicKey) -> bool {
        let msg = Checkpoint::message(self.seq, &self.hash, self.ts);
        auth::decode_sig(&self.sig).is_some_and(|s| auth::verify(commander, msg.as_bytes(), &s))
    }
}

/// The chained hash of an entry's fields.
pub fn entry_hash(
    prev: &str,
    seq: u64,
    ts: u64,
    actor: &str,
    action: &str,
    target: &str,
    result: &str,
) -> String {
    crate::keystore::sha256_hex(&format!(
        "{prev}\n{seq}\n{ts}\n{actor}\n{action}\n{target}\n{result}"
    ))
}

/// Writes to the log (with the commander's key, when security is on).
#[derive(Debug, Clone)]
pub struct AuditLog {
    keys: Keys,
    signer: Option<Signer>,
}

impl AuditLog {
    pub fn new(keys: Keys, signer: Option<Signer>) -> AuditLog {
        AuditLog { keys, signer }
    }

    /// Appends an entry chained to the current head (retrying if another
    /// writer appended meanwhile).
    pub async fn append(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        actor: &str,
        action: &str,
        target: &str,
        result: &str,
    ) -> Result<(), StoreError> {
        for _ in 0..32 {
            let head: (Option<u64>, Option<String>) = redis::cmd("HMGET")
                .arg(self.keys.audit_head())
                .arg("seq")
                .arg("hash")
                .query_async(conn)
                .await?;
            let (seq, prev) = (
                head.0.unwrap_or(0) + 1,
                head.1.unwrap_or_else(|| GENESIS.into()),
            );
            let ts = fleet_protocol::now_ms();
            let hash = entry_hash(&prev, seq, ts, actor, action, target, result);
            let sig = self
                .signer
                .as_ref()
                .map(|s| auth::encode_sig(&s.sign_bytes(hash.as_bytes())))
                .unwrap_or_default();
            let r = AUDIT_APPEND
                .call()
                .key("stream", self.keys.audit())
                .key("head", self.keys.audit_head())
                .arg("prev", prev.as_str())
                .arg("seq", seq)
                .arg("ts", ts)
                .arg("actor", actor)
                .arg("action", action)
                .arg("target", target)
                .arg("result", result)
                .arg("hash", hash.as_str())
                .arg("sig", sig.as_str())
                .reply(conn)
                .await?;
            if r.outcome()? == "appended" {
                return Ok(());
            }
        }
        Err(StoreError::Reply(
            "audit: the log's head kept moving".into(),
        ))
    }

    /// Removes all but the newest `keep` entries; the last one removed
    /// becomes the anchor, and an `audit_trimmed` entry by `actor` (kept,
    /// and chained like any other) names it. How many were removed.
    pub async fn trim(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        keep: usize,
        actor: &str,
    ) -> Result<usize, StoreError> {
        let all = read_all(conn, &self.keys).await?;
        if all.len() <= keep {
            return Ok(0);
        }
        let cut = all.len() - keep;
        let last = &all[cut - 1];
        let (first, anchor) = (all[0].seq, anchor_result(last.seq, &last.hash));
        let target = format!("entries {first}..={}", last.seq);
        self.append(conn, actor, TRIMMED, &target, &anchor).await?;
        let mut p = redis::pipe();
        p.hset(self.keys.audit_head(), "anchor_seq", last.seq)
            .ignore();
        p.hset(self.keys.audit_head(), "anchor_hash", &last.hash)
            .ignore();
        for e in &all[..cut] {
            p.xdel(self.keys.audit(), &[&e.id]).ignore();
        }
        p.query_async::<()>(conn).await?;
        Ok(cut)
    }

    /// The head, signed at `ts` (None: the log is empty, or there is no key
    /// to sign with).
    pub async fn checkpoint(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        ts: u64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let head: (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.audit_head())
            .arg("seq")
            .arg("hash")
            .query_async(conn)
            .await?;
        Ok(match head {
            (Some(seq), Some(hash)) => Some(Checkpoint::sign(seq, &hash, ts, signer)),
            _ => None,
        })
    }
}

/// What an `audit_trimmed` entry says of the anchor it leaves.
fn anchor_result(seq: u64, hash: &str) -> String {
    format!("anchor {seq} {hash}")
}

/// The newest `limit` entries, newest first.
pub async fn list(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(keys.audit())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(conn)
        .await?;
    Ok(raw.into_iter().map(|(id, f)| entry(id, f)).collect())
}

async fn read_all(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
) -> Result<Vec<AuditEntry>, StoreError> {
    let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys.audit())
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(raw.into_iter().map(|(id, f)| entry(id, f)).collect())
}

fn entry(id: String, mut f: HashMap<String, String>) -> AuditEntry {
    let mut take = |k: &str| f.remove(k).unwrap_or_default();
    AuditEntry {
        seq: take("seq").parse().unwrap_or(0),
        ts: take("ts").parse().unwrap_or(0),
        actor: take("actor"),
        action: take("action"),
        target: take("target"),
        result: take("result"),
        prev: take("prev"),
        hash: take("hash"),
        sig: take("sig"),
        id,
    }
}

/// Checks the whole chain, from the anchor (or the start) to the head. With
/// `commander`, every entry must also carry its signature. The log must
/// reach every one of `checkpoints` (checked as the commander's by the
/// caller) through the entry it names.
pub async fn verify(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
    commander: Option<&PublicKey>,
    checkpoints: &[Checkpoint],
) -> Result<Verdict, StoreError> {
    let head: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.audit_head())
        .query_async(conn)
        .await?;
    let entries = read_all(conn, keys).await?;
    let verdict = check(&entries, &head, commander);
    let Verdict::Intact { head_seq, .. } = verdict else {
        return Ok(verdict);
    };
    Ok(against(&entries, &head, head_seq, checkpoints).unwrap_or(verdict))
}

/// The log against its checkpoints and its trims: the first way it falls
/// short, if any.
fn against(
    entries: &[AuditEntry],
    head: &HashMap<String, String>,
    head_seq: u64,
    checkpoints: &[Checkpoint],
) -> Option<Verdict> {
    let anchor_seq = head
        .get("anchor_seq")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let anchor_hash = head.get("anchor_hash").map_or("", String::as_str);
    if anchor_seq > 0 {
        let said = anchor_result(anchor_seq, anchor_hash);
        if !entries
            .iter()
            .any(|e| e.action == TRIMMED && e.result == said)
        {
            return Some(Verdict::Broken {
                seq: anchor_seq,
                what: format!(
                    "trimmed without record: entries through {anchor_seq} are gone and no \
                     {TRIMMED} entry names that anchor"
                ),
            });
        }
    }
    for cp in checkpoints {
        if cp.seq > head_seq {
            return Some(Verdict::Broken {
                seq: head_seq + 1,
                what: format!(
                    "truncated or rolled back: the checkpoint of {} saw entry {}, the log ends at {head_seq}",
                    cp.ts, cp.seq
                ),
            });
        }
        let hash = if cp.seq == anchor_seq {
            Some(anchor_hash)
        } else {
            entries
                .iter()
                .find(|e| e.seq == cp.seq)
                .map(|e| e.hash.as_str())
        };
        // Before the anchor: trimmed away, by a trim the log records.
        if matches!(hash, Some(h) if h != cp.hash) {
            return Some(Verdict::Broken {
                seq: cp.seq,
                what: format!(
                    "rewritten: entry {} is not the one the checkpoint of {} saw",
                    cp.seq, cp.ts
                ),
            });
        }
    }
    None
}

fn check(
    entries: &[AuditEntry],
    head: &HashMap<String, String>,
    commander: Option<&PublicKey>,
) -> Verdict {
    let num = |k: &str| head.get(k).and_then(|v| v.parse::<u64>().ok());
    let mut seq = num("anchor_seq").unwrap_or(0);
    let mut prev = head
        .get("anchor_hash")
        .cloned()
        .unwrap_or_else(|| GENESIS.into());
    let broken = |seq: u64, what: String| Verdict::Broken { seq, what };
    for e in entries {
        let want = seq + 1;
        if e.seq > want {
            return broken(
                want,
                format!("deleted: entries {want} to {} are missing", e.seq - 1),
            );
        }
        if e.seq < want {
            return broken(
                e.seq,
                format!("inserted: a second entry {} after {}", e.seq, seq),
            );
        }
        if e.prev != prev {
            return broken(
                e.seq,
                "inserted or replaced: it does not chain to the entry before".into(),
            );
        }
        let hash = entry_hash(
            &e.prev, e.seq, e.ts, &e.actor, &e.action, &e.target, &e.result,
        );
        if hash != e.hash {
            return broken(e.seq, "edited: its fields do not match its hash".into());
        }
        if let Some(pk) = commander {
            let ok =
                auth::decode_sig(&e.sig).is_some_and(|s| auth::verify(pk, e.hash.as_bytes(), &s));
            if !ok {
                return broken(e.seq, "forged: not signed by the commander".into());
            }
        }
        (seq, prev) = (e.seq, e.hash.clone());
    }
    match (num("seq"), head.get("hash")) {
        (Some(s), Some(h)) if s == seq && *h == prev => Verdict::Intact {
            entries: entries.len(),
            head_seq: seq,
        },
        (None, None) if entries.is_empty() => Verdict::Intact {
            entries: 0,
            head_seq: seq,
        },
        (s, _) => broken(
            seq + 1,
            format!(
                "deleted: the head says {} entries, the log ends at {seq}",
                s.unwrap_or(0)
            ),
        ),
    }
}

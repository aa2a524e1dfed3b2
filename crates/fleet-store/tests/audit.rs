//! The audit log's chain against a real redis-server: each kind of
//! tampering is found and named; with checkpoints kept elsewhere, so are a
//! log cut short, emptied or rolled back, and a trim nobody recorded.

use fleet_protocol::auth::Signer;
use fleet_store::audit::{self, AuditLog, Checkpoint, Verdict};
use fleet_store::connection::Conn;
use fleet_store::Keys;
use fleet_testkit::RedisServer;

struct Log {
    _redis: RedisServer,
    conn: Conn,
    keys: Keys,
    commander: Signer,
}

async fn log_of(n: u64) -> Log {
    let redis = RedisServer::start().expect("redis-server");
    let mut conn = fleet_store::connection::connect(&redis.url())
        .await
        .unwrap();
    let keys = Keys::new("swarm:phase-1");
    let commander = Signer::new("commander:1", &[5; 32]);
    let log = AuditLog::new(keys.clone(), Some(commander.clone()));
    for i in 1..=n {
        log.append(&mut conn, "token:ops", "drain", &format!("agent-{i}"), "ok")
            .await
            .unwrap();
    }
    Log {
        _redis: redis,
        conn,
        keys,
        commander,
    }
}

impl Log {
    async fn verdict(&mut self) -> Verdict {
        self.verdict_with(&[]).await
    }

    async fn verdict_with(&mut self, checkpoints: &[Checkpoint]) -> Verdict {
        let pk = self.commander.public();
        audit::verify(&mut self.conn, &self.keys, Some(&pk), checkpoints)
            .await
            .unwrap()
    }

    fn log(&self) -> AuditLog {
        AuditLog::new(self.keys.clone(), Some(self.commander.clone()))
    }

    async fn checkpoint(&mut self) -> Checkpoint {
        let cp = self.log().checkpoint(&mut self.conn, 1_000).await.unwrap();
        let cp = cp.expect("a head to sign");
        assert!(cp.valid(&self.commander.public()));
        cp
    }

    async fn append(&mut self, n: u64) {
        let log = self.log();
        for i in 0..n {
            log.append(
                &mut self.conn,
                "token:ops",
                "scale",
                &format!("pool-{i}"),
                "ok",
            )
            .await
            .unwrap();
        }
    }

    async fn redis(&mut self, args: &[&str]) {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        let _: redis::Value = c.query_async(&mut self.conn).await.unwrap();
    }

    /// The stream's entries as (id, fields).
    async fn raw(&mut self) -> Vec<(String, Vec<(String, String)>)> {
        redis::cmd("XRANGE")
            .arg(self.keys.audit())
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    /// Replaces the stream with `entries` (an attacker with write access).
    async fn rewrite(&mut self, entries: Vec<Vec<(String, String)>>) {
        let _: () = redis::cmd("DEL")
            .arg(self.keys.audit())
            .query_async(&mut self.conn)
            .await
            .unwrap();
        for fields in entries {
            let mut c = redis::cmd("XADD");
            c.arg(self.keys.audit()).arg("*");
            for (k, v) in fields {
                c.arg(k).arg(v);
            }
            let _: String = c.query_async(&mut self.conn).await.unwrap();
        }
    }
}

fn set(fields: &mut [(String, String)], key: &str, value: &str) {
    for (k, v) in fields.iter_mut() {
        if k == key {
            *v = value.to_string();
        }
    }
}

fn broken_at(v: &Verdict) -> (u64, &str) {
    match v {
        Verdict::Broken { seq, what } => (*seq, what.split(':').next().unwrap()),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let mut l = log_of(5).await;
    assert_eq!(
        l.verdict().await,
        Verdict::Intact {
            entries: 5,
            head_seq: 5
        }
    );
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let mut l = log_of(5).await;
    let raw = l.raw().await;
    let _: u64 = redis::cmd("XDEL")
        .arg(l.keys.audit())
        .arg(&raw[2].0)
        .query_async(&mut l.conn)
        .await
        .unwrap();
    assert_eq!(broken_at(&l.verdict().await), (3, "deleted"));
    // The newest one too: the head knows there were five.
    let mut l = log_of(5).await;
    let raw = l.raw().await;
    let _: u64 = redis::cmd("XDEL")
        .arg(l.keys.audit())
        .arg(&raw[4].0)
        .query_async(&mut l.conn)
        .await
        .unwrap();
    assert_eq!(broken_at(&l.verdict().await), (5, "deleted"));
}

#[tokio::test]
async fn an_edited_entry_is_named() {
    let mut l = log_of(5).await;
    let mut entries: Vec<_> = l.raw().await.into_iter().map(|(_, f)| f).collect();
    set(&mut entries[1], "target", "agent-innocent");
    l.rewrite(entries).await;
    assert_eq!(broken_at(&l.verdict().await), (2, "edited"));
}

#[tokio::test]
async fn an_inserted_or_forged_entry_is_named() {
    // A copy of entry 3 slipped in after it.
    let mut l = log_of(5).await;
    let mut entries: Vec<_> = l.raw().await.into_iter().map(|(_, f)| f).collect();
    let copy = entries[2].clone();
    entries.insert(3, copy);
    l.rewrite(entries).await;
    assert_eq!(broken_at(&l.verdict().await), (3, "inserted"));

    // A whole chain recomputed by someone without the commander's key: the
    // hashes hold, the signatures do not.
    let mut l = log_of(3).await;
    let forger = AuditLog::new(l.keys.clone(), Some(Signer::new("x", &[6; 32])));
    forger
        .append(&mut l.conn, "token:ops", "scale", "coder", "ok")
        .await
        .unwrap();
    assert_eq!(broken_at(&l.verdict().await), (4, "forged"));
}

#[tokio::test]
async fn a_trimmed_log_verifies_from_its_anchor() {
    let mut l = log_of(6).await;
    let log = l.log();
    let before = l.checkpoint().await;
    assert_eq!(log.trim(&mut l.conn, 2, "cli:root").await.unwrap(), 4);
    // Kept: 5, 6 and the trim's own entry, 7, which names the anchor.
    assert_eq!(
        l.verdict_with(std::slice::from_ref(&before)).await,
        Verdict::Intact {
            entries: 3,
            head_seq: 7
        }
    );
    let trim = &audit::list(&mut l.conn, &l.keys, 1).await.unwrap()[0];
    assert_eq!(
        (
            trim.action.as_str(),
            trim.actor.as_str(),
            trim.target.as_str()
        ),
        (audit::TRIMMED, "cli:root", "entries 1..=4")
    );
    log.append(&mut l.conn, "cli:root", "token_issued", "ci", "ok")
        .await
        .unwrap();
    assert_eq!(
        l.verdict_with(&[before]).await,
        Verdict::Intact {
            entries: 4,
            head_seq: 8
        }
    );
}

/// Issue 25, item 5: what the chain alone passed. Each is seen with and
/// without the checkpoint that catches it.
#[tokio::test]
async fn checkpoints_catch_a_log_cut_short_emptied_or_rolled_back() {
    // The tail removed and the head set back: a consistent, shorter chain.
    let mut l = log_of(5).await;
    let cp = l.checkpoint().await;
    let raw = l.raw().await;
    let (id4, id5) = (raw[3].0.clone(), raw[4].0.clone());
    let fields4 = &raw[2].1; // entry 3 is the new head
    let hash3 = fields4.iter().find(|(k, _)| k == "hash").unwrap().1.clone();
    let head = l.keys.audit_head();
    let stream = l.keys.audit();
    l.redis(&["XDEL", &stream, &id4, &id5]).await;
    l.redis(&["HSET", &head, "seq", "3", "hash", &hash3]).await;
    assert!(matches!(
        l.verdict().await,
        Verdict::Intact { head_seq: 3, .. }
    ));
    assert_eq!(
        broken_at(&l.verdict_with(&[cp]).await),
        (4, "truncated or rolled back")
    );

    // Everything deleted.
    let mut l = log_of(4).await;
    let cp = l.checkpoint().await;
    let (stream, head) = (l.keys.audit(), l.keys.audit_head());
    l.redis(&["DEL", &stream, &head]).await;
    assert!(matches!(
        l.verdict().await,
        Verdict::Intact { entries: 0, .. }
    ));
    assert_eq!(
        broken_at(&l.verdict_with(&[cp]).await),
        (1, "truncated or rolled back")
    );

    // Rolled back to an earlier genuine state (a restored copy).
    let mut l = log_of(3).await;
    let (stream, head) = (l.keys.audit(), l.keys.audit_head());
    let saved: (Vec<u8>, Vec<u8>) = redis::pipe()
        .cmd("DUMP")
        .arg(&stream)
        .cmd("DUMP")
        .arg(&head)
        .query_async(&mut l.conn)
        .await
        .unwrap();
    l.append(3).await;
    let cp = l.checkpoint().await;
    let _: () = redis::pipe()
        .cmd("RESTORE")
        .arg(&stream)
        .arg(0)
        .arg(&saved.0)
        .arg("REPLACE")
        .ignore()
        .cmd("RESTORE")
        .arg(&head)
        .arg(0)
        .arg(&saved.1)
        .arg("REPLACE")
        .ignore()
        .query_async(&mut l.conn)
        .await
        .unwrap();
    assert!(matches!(
        l.verdict().await,
        Verdict::Intact { head_seq: 3, .. }
    ));
    assert_eq!(
        broken_at(&l.verdict_with(&[cp]).await),
        (4, "truncated or rolled back")
    );

    // A forged checkpoint is no checkpoint.
    let forged = Checkpoint::sign(9, "x", 1, &Signer::new("x", &[6; 32]));
    assert!(!forged.valid(&l.commander.public()));
}

/// A trim by someone with Redis write access but not the commander's key:
/// the anchor moved with no signed entry naming it.
#[tokio::test]
async fn a_trim_nobody_recorded_is_named() {
    let mut l = log_of(5).await;
    let raw = l.raw().await;
    let hash2 = raw[1]
        .1
        .iter()
        .find(|(k, _)| k == "hash")
        .unwrap()
        .1
        .clone();
    let (stream, head) = (l.keys.audit(), l.keys.audit_head());
    l.redis(&["XDEL", &stream, &raw[0].0, &raw[1].0]).await;
    l.redis(&["HSET", &head, "anchor_seq", "2", "anchor_hash", &hash2])
        .await;
    assert_eq!(broken_at(&l.verdict().await), (2, "trimmed without record"));
}

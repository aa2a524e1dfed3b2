//! The audit log's chain against a real redis-server: each kind of
//! tampering is found and named.

use fleet_protocol::auth::Signer;
use fleet_store::audit::{self, AuditLog, Verdict};
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
        let pk = self.commander.public();
        audit::verify(&mut self.conn, &self.keys, Some(&pk))
            .await
            .unwrap()
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
    let log = AuditLog::new(l.keys.clone(), Some(l.commander.clone()));
    assert_eq!(log.trim(&mut l.conn, 2).await.unwrap(), 4);
    assert_eq!(
        l.verdict().await,
        Verdict::Intact {
            entries: 2,
            head_seq: 6
        }
    );
    log.append(&mut l.conn, "cli:root", "token_issued", "ci", "ok")
        .await
        .unwrap();
    assert_eq!(
        l.verdict().await,
        Verdict::Intact {
            entries: 3,
            head_seq: 7
        }
    );
}

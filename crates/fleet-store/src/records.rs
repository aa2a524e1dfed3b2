//! Records kept as JSON in one Redis hash, by id (the key store and the
//! token store): written with a notice on the key channel, so that the
//! commander reloads its caches at once.

use crate::{Keys, StoreError};
use redis::aio::ConnectionLike;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

/// Changes kept in a hash's change log (approximately): a reader that
/// falls further behind reads the whole hash again.
const CHANGES_MAX: usize = 10_000;

/// Stores `records` (id, record) in `hash` and tells the commander: in one
/// transaction, the records, an entry naming them in the hash's change log
/// (a stream, [`Keys::changes_of`]), and its version raised.
pub(crate) async fn put<T: Serialize>(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
    hash: &str,
    records: &[(&str, &T)],
) -> Result<(), StoreError> {
    let mut p = redis::pipe();
    p.atomic();
    for (id, r) in records {
        let json = serde_json::to_string(r).expect("records serialize");
        p.hset(hash, *id, json).ignore();
    }
    let ids: Vec<&str> = records.iter().map(|(id, _)| *id).collect();
    p.cmd("XADD")
        .arg(Keys::changes_of(hash))
        .arg("MAXLEN")
        .arg("~")
        .arg(CHANGES_MAX)
        .arg("*")
        .arg("ids")
        .arg(ids.join(" "))
        .ignore();
    p.incr(Keys::version_of(hash), 1).ignore();
    p.publish(keys.channels().keys(), "changed").ignore();
    p.query_async::<()>(conn).await?;
    Ok(())
}

/// A reader's place in a hash's change log: the last entry it read, and
/// how many entries the log had had added by then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub id: String,
    pub added: u64,
}

/// The version of `hash` and the state of its change log (its last entry
/// and its count of entries ever added, Redis 7's `XINFO STREAM`; None when
/// there is no log, or no such count), read together: every [`put`] moves
/// both in one transaction, so a version that moved while the count did not
/// is a writer that does not log.
pub(crate) async fn state(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
) -> Result<(Option<u64>, Option<Position>), StoreError> {
    let mut p = redis::pipe();
    p.atomic().ignore_errors();
    p.cmd("GET").arg(Keys::version_of(hash));
    p.cmd("XINFO").arg("STREAM").arg(Keys::changes_of(hash));
    let mut replies: Vec<redis::RedisResult<redis::Value>> = p.query_async(conn).await?;
    let info = replies.pop().and_then(|r| r.ok());
    let version = match replies.pop() {
        Some(v) => redis::from_redis_value::<Option<u64>>(v?)?,
        None => None,
    };
    let info: Option<HashMap<String, redis::Value>> =
        info.and_then(|v| redis::from_redis_value(v).ok());
    let log = info.and_then(|info| {
        let text = |name: &str| -> Option<String> {
            info.get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        let added = text("entries-added")?.parse().ok()?;
        Some(Position {
            id: text("last-generated-id").unwrap_or_else(|| "0-0".into()),
            added,
        })
    });
    Ok((version, log))
}

/// The ids of the records of `hash` written after `after` and up to `now`
/// (the log's state read with the version), and `now`; None when the log no
/// longer holds them all (trimmed past `after`, or made anew): then read
/// the whole hash.
pub(crate) async fn changed_since(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
    after: &Position,
    now: &Position,
) -> Result<Option<Vec<String>>, StoreError> {
    type Entries = Vec<(String, Vec<(String, String)>)>;
    if now.added < after.added {
        return Ok(None); // a new log since
    }
    let log = Keys::changes_of(hash);
    let expected = now.added - after.added;
    let (mut ids, mut last, mut read) = (Vec::new(), after.id.clone(), 0u64);
    while read < expected {
        let page: Entries = redis::cmd("XRANGE")
            .arg(&log)
            .arg(format!("({last}"))
            .arg(&now.id)
            .arg("COUNT")
            .arg((expected - read).min(1000))
            .query_async(conn)
            .await?;
        if page.is_empty() {
            break;
        }
        for (id, fields) in page {
            for (_, names) in fields {
                ids.extend(names.split(' ').filter(|n| !n.is_empty()).map(String::from));
            }
            last = id;
            read += 1;
        }
    }
    if read < expected {
        return Ok(None); // trimmed past our place: entries are gone
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Some(ids))
}

/// The records of `hash` with these ids (None where there is none), in order.
pub(crate) async fn get_many<T: DeserializeOwned>(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
    ids: &[String],
) -> Result<Vec<Option<T>>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(hash)
            .arg(chunk)
            .query_async(conn)
            .await?;
        for (id, r) in chunk.iter().zip(raw) {
            out.push(r.map(|r| parse(hash, id, &r)).transpose()?);
        }
    }
    Ok(out)
}

/// The version of `hash`: raised by every [`put`]; None if never written
/// (or Redis lost it).
pub(crate) async fn version(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(redis::cmd("GET")
        .arg(Keys::version_of(hash))
        .query_async(conn)
        .await?)
}

pub(crate) async fn get<T: DeserializeOwned>(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(hash)
        .arg(id)
        .query_async(conn)
        .await?;
    raw.map(|r| parse(hash, id, &r)).transpose()
}

/// Every record of `hash`.
pub(crate) async fn all<T: DeserializeOwned>(
    conn: &mut (impl ConnectionLike + Send),
    hash: &str,
) -> Result<Vec<T>, StoreError> {
    let raw: Vec<(String, String)> = redis::cmd("HGETALL").arg(hash).query_async(conn).await?;
    raw.iter().map(|(id, r)| parse(hash, id, r)).collect()
}

fn parse<T: DeserializeOwned>(hash: &str, id: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Reply(format!("{hash} {id}: {e}")))
}

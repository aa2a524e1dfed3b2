//! Records kept as JSON in one Redis hash, by id (the key store and the
//! token store): written with a notice on the key channel, so that the
//! commander reloads its caches at once.

use crate::{Keys, StoreError};
use redis::aio::ConnectionLike;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Stores `records` (id, record) in `hash` and tells the commander.
pub(crate) async fn put<T: Serialize>(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
    hash: &str,
    records: &[(&str, &T)],
) -> Result<(), StoreError> {
    let mut p = redis::pipe();
    for (id, r) in records {
        let json = serde_json::to_string(r).expect("records serialize");
        p.hset(hash, *id, json).ignore();
    }
    p.incr(Keys::version_of(hash), 1).ignore();
    p.publish(keys.channels().keys(), "changed").ignore();
    p.query_async::<()>(conn).await?;
    Ok(())
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

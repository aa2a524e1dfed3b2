//! The key store: every agent's and submitter's public key, by key id, in
//! one hash (`…:keys`), and the nonces seen lately (`…:nonce:{kid}:{nonce}`,
//! expiring). No signing secret is ever stored: an agent's secret is printed
//! once, when its key is issued.

pub use crate::records::Position;
use crate::{records, Keys, StoreError};
use fleet_protocol::auth::{self, Credential, Grants, KeyRecord, PublicKey, Role};
use fleet_protocol::PoolType;
use redis::aio::ConnectionLike;

/// Reads and writes key records.
#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Keys,
}

impl KeyStore {
    pub fn new(keys: Keys) -> KeyStore {
        KeyStore { keys }
    }

    /// Stores (or replaces) a record and tells the commander.
    pub async fn put(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        records: &[KeyRecord],
    ) -> Result<(), StoreError> {
        let by_id: Vec<(&str, &KeyRecord)> = records.iter().map(|r| (r.kid.as_str(), r)).collect();
        records::put(conn, &self.keys, &self.keys.keystore(), &by_id).await
    }

    pub async fn get(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        kid: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        records::get(conn, &self.keys.keystore(), kid).await
    }

    /// Every record, in key id order.
    /// The store's version, raised by every write (None: never written, or
    /// lost): read it to tell that nothing changed without reading the store.
    pub async fn version(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<Option<u64>, StoreError> {
        records::version(conn, &self.keys.keystore()).await
    }

    /// The store's version and its change log's state, read together
    /// (see `records::state`).
    pub async fn state(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<(Option<u64>, Option<Position>), StoreError> {
        records::state(conn, &self.keys.keystore()).await
    }

    /// The records written after the change-log position `after` and up to
    /// `now` (each key id with its record, None for one not found); None
    /// when the log no longer holds them all.
    pub async fn changed_since(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        after: &Position,
        now: &Position,
    ) -> Result<Option<Vec<(String, Option<KeyRecord>)>>, StoreError> {
        let hash = self.keys.keystore();
        let Some(ids) = records::changed_since(conn, &hash, after, now).await? else {
            return Ok(None);
        };
        let found: Vec<Option<KeyRecord>> = records::get_many(conn, &hash, &ids).await?;
        Ok(Some(ids.into_iter().zip(found).collect()))
    }

    pub async fn all(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out: Vec<KeyRecord> = records::all(conn, &self.keys.keystore()).await?;
        out.sort_by(|a, b| a.kid.cmp(&b.kid));
        Ok(out)
    }

    /// Issues a new key for `subject` with `grants`: stores its public half
    /// and returns the credential (with the secret) to hand over, once.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        role: Role,
        subject: &str,
        pool: Option<PoolType>,
        grants: Grants,
        commander: &PublicKey,
        now: u64,
    ) -> Result<Credential, StoreError> {
        let (rec, cred) = new_key(role, subject, pool, grants, commander, now);
        self.put(conn, &[rec]).await?;
        Ok(cred)
    }

    /// Revokes every key of `subject`; returns how many were usable.
    pub async fn revoke(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        subject: &str,
        now: u64,
    ) -> Result<usize, StoreError> {
        self.revoke_where(conn, now, |r| r.subject == subject).await
    }

    /// Revokes one key, by its id (the old key after a rotation, while the
    /// new one stays in use); 0 if it is not usable.
    pub async fn revoke_key(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        kid: &str,
        now: u64,
    ) -> Result<usize, StoreError> {
        self.revoke_where(conn, now, |r| r.kid == kid).await
    }

    async fn revoke_where(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        now: u64,
        which: impl Fn(&KeyRecord) -> bool,
    ) -> Result<usize, StoreError> {
        let mut hit: Vec<KeyRecord> = self
            .all(conn)
            .await?
            .into_iter()
            .filter(|r| which(r) && r.usable(now).is_ok())
            .collect();
        for r in &mut hit {
            r.revoked_ms = Some(now);
        }
        if !hit.is_empty() {
            self.put(conn, &hit).await?;
        }
        Ok(hit.len())
    }

    /// Issues `subject` a new key like its newest one (with `grants`, or
    /// the newest one's); its other usable keys keep working for
    /// `overlap_ms`, then stop. None if it has no usable key.
    pub async fn rotate(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        subject: &str,
        overlap_ms: u64,
        grants: Option<Grants>,
        commander: &PublicKey,
        now: u64,
    ) -> Result<Option<Credential>, StoreError> {
        let mut old: Vec<KeyRecord> = self
            .all(conn)
            .await?
            .into_iter()
            .filter(|r| r.subject == subject && r.usable(now).is_ok())
            .collect();
        let Some(newest) = old.iter().max_by_key(|r| r.created_ms).cloned() else {
            return Ok(None);
        };
        for r in &mut old {
            let until = now + overlap_ms;
            r.expires_ms = Some(r.expires_ms.map_or(until, |t| t.min(until)));
        }
        let grants = grants.unwrap_or(newest.grants);
        let (rec, cred) = new_key(newest.role, subject, newest.pool, grants, commander, now);
        old.push(rec);
        self.put(conn, &old).await?;
        Ok(Some(cred))
    }

    /// Where the nonce of a message signed with `kid` is recorded.
    pub fn nonce_key(&self, kid: &str, nonce: &str) -> String {
        self.keys.nonce(kid, nonce)
    }

    /// Records the first sight of a nonce; false if it was seen already (a
    /// replay). (Most messages have theirs recorded by the script that acts
    /// on them instead: [`crate::Once`].)
    pub async fn first_sight(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        once: &crate::Once,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(&once.key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(once.ttl_ms.max(1))
            .query_async(conn)
            .await?;
        Ok(set.is_some())
    }
}

/// A new key pair for `subject`: the record to store and the credential.
pub fn new_key(
    role: Role,
    subject: &str,
    pool: Option<PoolType>,
    grants: Grants,
    commander: &PublicKey,
    now: u64,
) -> (KeyRecord, Credential) {
    let secret = auth::new_secret();
    let kid = auth::new_kid();
    let password = auth::nonce() + &auth::nonce();
    let signer = auth::Signer::new(kid.clone(), &secret);
    let rec = KeyRecord {
        kid: kid.clone(),
        role,
        subject: subject.to_string(),
        pool,
        public: auth::encode_key(&signer.public().to_bytes()),
        created_ms: now,
        revoked_ms: None,
        expires_ms: None,
        grants,
        redis_password_sha256: Some(sha256_hex(&password)),
    };
    let cred = Credential {
        kid,
        role,
        subject: subject.to_string(),
        pool,
        secret: auth::encode_key(&secret),
        commander: auth::encode_key(&commander.to_bytes()),
        redis_user: Some(auth::redis_user(role, subject)),
        redis_password: Some(password),
    };
    (rec, cred)
}

/// SHA-256 of a password, hex: how Redis ACL rules name it (`#<hash>`).
pub fn sha256_hex(password: &str) -> String {
    use sha2::Digest;
    fleet_protocol::auth::hex(&sha2::Sha256::digest(password.as_bytes()))
}

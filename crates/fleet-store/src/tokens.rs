//! Operators' bearer tokens for the HTTP API: one hash (`…:tokens`), a
//! record per token id with its name, role, expiry and the SHA-256 of the
//! token. The token itself is shown once, when issued, and never stored.
//! A console sign-in opens a session: a token of its own, named like the
//! one signed in with (so revoking that name ends its sessions too), that
//! expires and that signing out revokes.

use crate::keystore::sha256_hex;
use crate::{records, Keys, StoreError};
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

/// What a token may do over HTTP. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// GET: read the fleet, pools, agents, tasks.
    Viewer,
    /// Also submit, cancel, drain, scale, requeue.
    Operator,
    /// Also manage keys and tokens and read the audit log.
    Admin,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Operator => "operator",
            TokenRole::Admin => "admin",
        }
    }
}

impl std::str::FromStr for TokenRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(TokenRole::Viewer),
            "operator" => Ok(TokenRole::Operator),
            "admin" => Ok(TokenRole::Admin),
            _ => Err(format!("unknown role {s:?}: viewer, operator or admin")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: TokenRole,
    /// SHA-256 (hex) of the whole token.
    pub sha256: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// Refused from then on (none: it does not expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// A console session: the id of the token it was opened with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_of: Option<String>,
}

impl TokenRecord {
    pub fn state(&self, now: u64) -> &'static str {
        match (self.revoked_ms, self.expires_ms) {
            (Some(_), _) => "revoked",
            (None, Some(t)) if t <= now => "expired",
            _ => "active",
        }
    }
}

/// A token's id is the part between `fct_` and the next `_`.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("fct_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && secret.len() == 32).then_some(id)
}

/// Whether `token` is the one `rec` was issued for: its hash, compared in
/// constant time, and neither revoked nor expired at `now`.
pub fn matches(rec: &TokenRecord, token: &str, now: u64) -> bool {
    let (a, b) = (sha256_hex(token), &rec.sha256);
    let same = a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    same && rec.state(now) == "active"
}

#[derive(Debug, Clone)]
pub struct TokenStore {
    keys: Keys,
}

impl TokenStore {
    pub fn new(keys: Keys) -> TokenStore {
        TokenStore { keys }
    }

    /// A new token for `name` that never expires: the record is stored,
    /// the token returned (once).
    pub async fn issue(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        name: &str,
        role: TokenRole,
        now: u64,
    ) -> Result<String, StoreError> {
        self.issue_until(conn, name, role, now, None, None).await
    }

    /// A new token that expires at `expires_ms` (if given); `session_of`
    /// makes it a console session opened with that token id.
    pub async fn issue_until(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        name: &str,
        role: TokenRole,
        now: u64,
        expires_ms: Option<u64>,
        session_of: Option<&str>,
    ) -> Result<String, StoreError> {
        let id = fleet_protocol::auth::nonce()[..12].to_string();
        let token = format!("fct_{id}_{}", fleet_protocol::auth::nonce());
        let rec = TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            role,
            sha256: sha256_hex(&token),
            created_ms: now,
            revoked_ms: None,
            expires_ms,
            session_of: session_of.map(str::to_string),
        };
        self.put(conn, &rec).await?;
        Ok(token)
    }

    /// Stores (or replaces) a record.
    pub async fn put(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        rec: &TokenRecord,
    ) -> Result<(), StoreError> {
        records::put(
            conn,
            &self.keys,
            &self.keys.tokens(),
            &[(rec.id.as_str(), rec)],
        )
        .await
    }

    pub async fn get(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        id: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        records::get(conn, &self.keys.tokens(), id).await
    }

    pub async fn all(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let mut out: Vec<TokenRecord> = records::all(conn, &self.keys.tokens()).await?;
        out.sort_by(|a, b| (&a.name, a.created_ms).cmp(&(&b.name, b.created_ms)));
        Ok(out)
    }

    /// Revokes the tokens named `name` (or with that id); how many.
    pub async fn revoke(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        name_or_id: &str,
        now: u64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut r in self.all(conn).await? {
            if (r.name == name_or_id || r.id == name_or_id) && r.revoked_ms.is_none() {
                r.revoked_ms = Some(now);
                self.put(conn, &r).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_its_record_and_not_once_revoked_or_expired() {
        let token = format!("fct_{}_{}", "a".repeat(12), "b".repeat(32));
        assert_eq!(token_id(&token), Some("aaaaaaaaaaaa"));
        assert_eq!(token_id("fct_short_x"), None);
        let mut rec = TokenRecord {
            id: "aaaaaaaaaaaa".into(),
            name: "ops".into(),
            role: TokenRole::Operator,
            sha256: sha256_hex(&token),
            created_ms: 0,
            revoked_ms: None,
            expires_ms: Some(100),
            session_of: None,
        };
        assert!(matches(&rec, &token, 99));
        assert!(!matches(&rec, &token, 100), "expired");
        assert!(!matches(&rec, &token.replace('b', "c"), 0));
        rec.revoked_ms = Some(1);
        assert!(!matches(&rec, &token, 0));
        assert!(TokenRole::Viewer < TokenRole::Operator && TokenRole::Operator < TokenRole::Admin);
    }
}

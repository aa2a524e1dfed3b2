//! Who sent a message: the commander's side of signing.
//!
//! The subscriber splits each payload into its signature header and body;
//! the handler asks the [`Gate`] before acting. The gate checks, cheapest
//! first: the timestamp window, the key (known, not revoked, not rotated
//! out), that the key may speak for the message (its role, agent and pool),
//! the Ed25519 signature over the exact bytes and channel, and last the
//! nonce (first sight, kept in Redis for twice the window so that a
//! replay is refused by this commander and by whichever takes over). The
//! messages whose handler runs one script (register, deregister, task
//! reports) have their nonce recorded by that script, in the same round
//! trip ([`fleet_store::Once`]); the others here, but for heartbeats: a
//! heartbeat must be sealed later than the last one recorded for its agent
//! (`sealedAt` in its record, checked by `heartbeat.lua`), which refuses a
//! replay without a nonce kept per heartbeat.
//!
//! Keys are cached in memory: read whole at start, again whenever the key
//! channel says a key changed, and every `security.key_refresh_ms` in case
//! that notice was lost (then only if the store's version moved: a large
//! fleet's store is not read whole every few seconds); a key not in the
//! cache is looked up at once, and a key id found in no store is remembered
//! as missing until the next reload.
//!
//! Before a message is queued for a handler, the subscriber [`Gate::screen`]s
//! it: without Redis and without checking the signature, it refuses what is
//! refused whatever the signature says (outside the window, a key missing,
//! revoked or expired, a sender whose bucket is empty). A flooder's messages
//! beyond its budget therefore cost a header parse and a map lookup, not a
//! signature check, and never wait in a queue ahead of anyone else's. The
//! screen only reads buckets; tokens are spent only after a good signature,
//! so a forger cannot empty someone else's bucket.

use crate::config::{Config, SecurityMode};
use crate::sessions::Sessions;
use fleet_protocol::auth::{
    self, AuthError, Grants, KeyRecord, Proof, PublicKey, Role, Signed, Signer,
};
use fleet_protocol::{now_ms, Inbound, Misfit};
use fleet_store::keystore::Position;
use fleet_store::registry::Registry;
use fleet_store::tokens::{self, TokenRecord, TokenRole, TokenStore};
use fleet_store::{KeyStore, Keys, Once, StoreError};
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::warn;

/// A signature (or session MAC) header and what it covers, owned: checked
/// by the handler.
#[derive(Debug)]
pub(crate) struct Seal {
    kid: String,
    ts: u64,
    nonce: String,
    proof: Proof,
    /// The covered bytes (scheme, header fields, channel and body).
    input: Vec<u8>,
}

impl Seal {
    /// The message as it was published (header line and body), for a
    /// record that anyone with the sender's public key can check again
    /// (votes, which are always signed).
    pub(crate) fn message(&self) -> String {
        // The input is `FC1\n<channel>\n<kid>\n<ts>\n<nonce>\n<body>`.
        let body = self
            .input
            .splitn(6, |b| *b == b'\n')
            .nth(5)
            .unwrap_or_default();
        format!(
            "{} {} {} {} {}\n{}",
            self.proof.magic(),
            self.kid,
            self.ts,
            self.nonce,
            self.proof.encode(),
            String::from_utf8_lossy(body)
        )
    }

    pub(crate) fn new(channel: &str, s: &Signed<'_>) -> Seal {
        Seal {
            kid: s.kid.to_string(),
            ts: s.ts,
            nonce: s.nonce.to_string(),
            proof: s.proof,
            input: s.input(channel),
        }
    }
}

/// Why a message may not be acted on: refused for who sent it, or the key
/// store could not be read (Redis).
#[derive(Debug)]
pub(crate) enum Refusal {
    Refused(AuthError),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

/// A message the gate let through: the nonce its script records (if it is
/// one of those), for a heartbeat the time it was sealed (what its script
/// checks instead), and what its key was granted (everything in open mode).
#[derive(Debug)]
pub(crate) struct Admitted {
    pub once: Option<Once>,
    pub sealed_at: Option<u64>,
    pub grants: Grants,
}

/// Who a message says it is from.
enum Claim<'a> {
    Agent {
        agent_id: &'a str,
        /// Only `register` names the pool.
        pool: Option<&'a str>,
    },
    /// A submission, with the channel it wants its reply on.
    Submitter { reply: Option<&'a str> },
    /// Any known key (status requests).
    Anyone,
}

fn claim(msg: &Inbound) -> Claim<'_> {
    match msg {
        Inbound::Register(r) => Claim::Agent {
            agent_id: &r.agent_id,
            pool: Some(&r.pool),
        },
        Inbound::Heartbeat(m) => Claim::Agent {
            agent_id: &m.agent_id,
            pool: None,
        },
        Inbound::Deregister(m) => Claim::Agent {
            agent_id: &m.agent_id,
            pool: None,
        },
        Inbound::Report(_, m) => Claim::Agent {
            agent_id: &m.agent_id,
            pool: None,
        },
        Inbound::Vote(m) => Claim::Agent {
            agent_id: &m.agent_id,
            pool: None,
        },
        Inbound::Misfit(Misfit::Register { agent_id, .. }) => Claim::Agent {
            agent_id,
            pool: None,
        },
        Inbound::TaskSubmit(t) => Claim::Submitter {
            reply: t.reply_channel.as_deref(),
        },
        Inbound::Misfit(Misfit::TaskSubmit { reply_channel, .. }) => Claim::Submitter {
            reply: reply_channel.as_deref(),
        },
        Inbound::StatusRequest(_) => Claim::Anyone,
    }
}

/// The commander's signing key and its cache of everyone else's.
pub(crate) struct Gate {
    mode: SecurityMode,
    window_ms: u64,
    store: KeyStore,
    keys: RwLock<HashMap<String, Arc<(KeyRecord, PublicKey)>>>,
    /// Key ids found in no store since the last reload (bounded).
    missing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The key store's version and its change-log position as of the last
    /// read: a reload that finds the version unchanged reads nothing more,
    /// and one that finds it moved reads only the keys written since (a
    /// fleet's keys are a large hash).
    loaded: std::sync::Mutex<(Option<u64>, Option<Position>)>,
    /// Wakes the refresher: a key changed.
    pub(crate) changed: tokio::sync::Notify,
    /// A token bucket per sender that proved who it is (by subject).
    buckets: std::sync::Mutex<HashMap<String, Bucket>>,
    rate_per_ms: f64,
    burst: f64,
    /// Operators' HTTP tokens, by id.
    tokens: RwLock<HashMap<String, TokenRecord>>,
    token_store: TokenStore,
    /// Tokens refused since the last audit entry saying so, and when that was.
    refused_tokens: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// When a refused token is audited ([`Gate::refused_token`]).
pub(crate) enum Refused {
    /// Now, with this many refused since the last entry.
    Now(u64),
    /// The first since the last entry, which was too recent: after this.
    Later(Duration),
    /// Counted into the entry already due.
    Counted,
}

/// At most one audit entry of refused tokens per this long.
const REFUSED_TOKENS_EVERY: Duration = Duration::from_secs(60);

/// Tokens left and when they were counted.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Key ids remembered as missing, at most (a flood of made-up ids clears it).
const MAX_MISSING: usize = 65_536;

impl Bucket {
    fn refill(&mut self, now: u64, rate_per_ms: f64, burst: f64) {
        let refill = now.saturating_sub(self.at_ms) as f64 * rate_per_ms;
        self.tokens = (self.tokens + refill).min(burst);
        self.at_ms = self.at_ms.max(now);
    }
}

impl Gate {
    pub(crate) fn new(config: &Config, keys: Keys) -> Gate {
        Gate {
            mode: config.security.mode,
            window_ms: config.security.window_ms,
            store: KeyStore::new(keys.clone()),
            keys: RwLock::new(HashMap::new()),
            missing: Default::default(),
            loaded: Default::default(),
            changed: tokio::sync::Notify::new(),
            buckets: Default::default(),
            tokens: RwLock::new(HashMap::new()),
            token_store: TokenStore::new(keys.clone()),
            refused_tokens: Default::default(),
            rate_per_ms: config.security.sender_rate_per_sec / 1000.0,
            burst: f64::from(config.security.sender_burst),
        }
    }

    pub(crate) fn mode(&self) -> SecurityMode {
        self.mode
    }

    pub(crate) fn signed(&self) -> bool {
        self.mode == SecurityMode::Signed
    }

    /// Re-reads every key (when the store's version moved since the last
    /// read: unchanged, one GET) and token. A store found empty while this
    /// commander knows some is a Redis that lost its data (restarted
    /// without persistence, or emptied), not a revocation of everything
    /// (revoking keeps the record): the known ones are kept, and written
    /// back so that the CLI and other commanders see them again.
    pub(crate) async fn reload(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<usize, StoreError> {
        let (version, log) = self.store.state(conn).await?;
        let (known, at) = self.loaded.lock().expect("no panics while held").clone();
        if version.is_none() || version != known {
            // Only what was logged since the last read; everything at the
            // first read, without a log, or when the version moved with no
            // entry logged (a writer that does not log).
            let read = match (&at, &log) {
                (Some(at), Some(now)) if version.is_some() && now.added > at.added => {
                    self.reload_changed(conn, at, now).await?
                }
                _ => false,
            };
            if !read {
                self.reload_keys(conn).await?;
            }
            let at = log.unwrap_or(Position {
                id: "0-0".into(),
                added: 0,
            });
            *self.loaded.lock().expect("no panics while held") = (version, Some(at));
        }
        let n = self.keys.read().expect("no panics while held").len();
        self.reload_tokens(conn).await?;
        Ok(n)
    }

    /// Reads the keys logged after `at` and up to `now` and puts them in the
    /// cache (a revoked one replaced by its revoked record); false when the
    /// log no longer holds them all (then everything must be read).
    async fn reload_changed(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        at: &Position,
        now: &Position,
    ) -> Result<bool, StoreError> {
        let Some(changed) = self.store.changed_since(conn, at, now).await? else {
            return Ok(false);
        };
        metrics::counter!(crate::metrics::KEYS_REREAD).increment(changed.len() as u64);
        let mut keys = self.keys.write().expect("no panics while held");
        let mut missing = self.missing.lock().expect("no panics while held");
        for (kid, record) in changed {
            missing.remove(&kid);
            let decoded = record.and_then(|r| {
                let pk = auth::decode_public(&r.public);
                if pk.is_none() {
                    warn!(
                        kid = r.kid,
                        "key record with an unreadable public key; ignored"
                    );
                }
                pk.map(|pk| Arc::new((r, pk)))
            });
            match decoded {
                Some(k) => keys.insert(kid, k),
                None => keys.remove(&kid),
            };
        }
        Ok(true)
    }

    /// Reads every key, unless the store was found empty while keys are
    /// known (see [`Gate::reload`]).
    async fn reload_keys(&self, conn: &mut (impl ConnectionLike + Send)) -> Result<(), StoreError> {
        metrics::counter!(crate::metrics::KEY_STORE_READS).increment(1);
        let all = self.store.all(conn).await?;
        let known: Vec<KeyRecord> = self
            .keys
            .read()
            .expect("no panics while held")
            .values()
            .map(|k| k.0.clone())
            .collect();
        if all.is_empty() && !known.is_empty() {
            warn!(
                keys = known.len(),
                "the key store is empty but keys are known: Redis lost its data? \
                 writing the known keys back"
            );
            for chunk in known.chunks(500) {
                self.store.put(conn, chunk).await?;
            }
        } else {
            let map: HashMap<_, _> = all
                .into_iter()
                .filter_map(|r| {
                    let Some(pk) = auth::decode_public(&r.public) else {
                        warn!(
                            kid = r.kid,
                            "key record with an unreadable public key; ignored"
                        );
                        return None;
                    };
                    Some((r.kid.clone(), Arc::new((r, pk))))
                })
                .collect();
            *self.keys.write().expect("no panics while held") = map;
            self.missing.lock().expect("no panics while held").clear();
        }
        Ok(())
    }

    /// Reads every operator token (a few), with the same care.
    async fn reload_tokens(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<(), StoreError> {
        let tokens = self.token_store.all(conn).await?;
        let known: Vec<TokenRecord> = self
            .tokens
            .read()
            .expect("no panics while held")
            .values()
            .cloned()
            .collect();
        if tokens.is_empty() && !known.is_empty() {
            warn!(
                tokens = known.len(),
                "the token store is empty but tokens are known: writing them back"
            );
            for t in &known {
                self.token_store.put(conn, t).await?;
            }
        } else {
            *self.tokens.write().expect("no panics while held") =
                tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
        }
        Ok(())
    }

    async fn key(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        kid: &str,
    ) -> Result<Option<Arc<(KeyRecord, PublicKey)>>, StoreError> {
        if let Some(k) = self.keys.read().expect("no panics while held").get(kid) {
            return Ok(Some(k.clone()));
        }
        if self
            .missing
            .lock()
            .expect("no panics while held")
            .contains(kid)
        {
            return Ok(None);
        }
        let Some(r) = self.store.get(conn, kid).await? else {
            let mut missing = self.missing.lock().expect("no panics while held");
            if missing.len() >= MAX_MISSING {
                missing.clear(); // made-up ids by the million: forget, look up again
            }
            missing.insert(kid.to_string());
            return Ok(None);
        };
        let Some(pk) = auth::decode_public(&r.public) else {
            return Ok(None);
        };
        let k = Arc::new((r, pk));
        self.keys
            .write()
            .expect("no panics while held")
            .insert(kid.to_string(), k.clone());
        Ok(Some(k))
    }

    /// The subscriber's look before queueing a message signed with `kid` at
    /// `ts`: refuses, without Redis or a signature check, what would be
    /// refused anyway. A key not in the cache passes (the handler looks it up).
    pub(crate) fn screen(&self, kid: &str, ts: u64, now: u64) -> Result<(), AuthError> {
        if !self.signed() {
            return Ok(());
        }
        if ts.abs_diff(now) > self.window_ms {
            return Err(AuthError::Stale);
        }
        let cached = self
            .keys
            .read()
            .expect("no panics while held")
            .get(kid)
            .cloned();
        let Some(key) = cached else {
            if self
                .missing
                .lock()
                .expect("no panics while held")
                .contains(kid)
            {
                return Err(AuthError::UnknownKey);
            }
            return Ok(());
        };
        key.0.usable(now)?;
        if !self.has_token(&key.0.subject, now) {
            return Err(AuthError::RateLimited);
        }
        Ok(())
    }

    /// Whether `msg`, sealed with `seal` (None: it came unsigned), may be
    /// acted on; and, for a message whose script records its nonce, the
    /// nonce to hand it. Open mode admits everything, granted everything.
    pub(crate) async fn admit(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        sessions: &Sessions,
        registry: &Registry,
        seal: Option<&Seal>,
        msg: &Inbound,
    ) -> Result<Admitted, Refusal> {
        if !self.signed() {
            return Ok(Admitted {
                once: None,
                sealed_at: None,
                grants: Grants::ANY,
            });
        }
        let Some(seal) = seal else {
            return Err(Refusal::Refused(AuthError::Unsigned));
        };
        let now = now_ms();
        if seal.ts.abs_diff(now) > self.window_ms {
            return Err(Refusal::Refused(AuthError::Stale));
        }
        let Some(key) = self.key(conn, &seal.kid).await? else {
            return Err(Refusal::Refused(AuthError::UnknownKey));
        };
        let (rec, pk) = &*key;
        if let Err(e) = rec.usable(now) {
            return Err(Refusal::Refused(e));
        }
        if let Err(e) = may_speak(rec, &claim(msg)) {
            return Err(Refusal::Refused(e));
        }
        let good = match &seal.proof {
            Proof::Signature(sig) => {
                metrics::counter!(crate::metrics::SIGNATURE_CHECKS, "scheme" => "ed25519")
                    .increment(1);
                auth::verify(pk, &seal.input, sig)
            }
            // A session is set up by a signed registration, and a vote's
            // signature is kept as its proof: both must be signed.
            Proof::Mac(_) if matches!(msg, Inbound::Register(_) | Inbound::Vote(_)) => {
                return Err(Refusal::Refused(AuthError::Unsigned));
            }
            Proof::Mac(_) => {
                let Some(session) = sessions.get(conn, registry, &rec.subject).await? else {
                    return Err(Refusal::Refused(AuthError::NoSession));
                };
                metrics::counter!(crate::metrics::SIGNATURE_CHECKS, "scheme" => "session")
                    .increment(1);
                session.verify_input(&seal.input, &seal.proof)
            }
        };
        if !good {
            return Err(Refusal::Refused(AuthError::BadSignature));
        }
        // Only after the signature: a forger cannot spend someone else's tokens.
        if !self.take_token(&rec.subject, now) {
            return Err(Refusal::Refused(AuthError::RateLimited));
        }
        let once = Once {
            key: self.store.nonce_key(&seal.kid, &seal.nonce),
            ttl_ms: 2 * self.window_ms,
        };
        let grants = rec.grants;
        let (once, sealed_at) = match msg {
            Inbound::Heartbeat(_) => (None, Some(seal.ts)),
            Inbound::Register(_) | Inbound::Deregister(_) | Inbound::Report(..) => {
                (Some(once), None)
            }
            _ if self.store.first_sight(conn, &once).await? => (None, None),
            _ => return Err(Refusal::Refused(AuthError::Replay)),
        };
        Ok(Admitted {
            once,
            sealed_at,
            grants,
        })
    }
}

impl Gate {
    /// The name and role of an HTTP bearer token, if it is a valid one.
    pub(crate) async fn token_role(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        token: &str,
    ) -> Result<Option<(String, TokenRole)>, StoreError> {
        let Some(id) = tokens::token_id(token) else {
            return Ok(None);
        };
        let cached = self
            .tokens
            .read()
            .expect("no panics while held")
            .get(id)
            .cloned();
        let rec = match cached {
            Some(r) => r,
            None => match self.token_store.get(conn, id).await? {
                Some(r) => {
                    self.tokens
                        .write()
                        .expect("no panics while held")
                        .insert(id.to_string(), r.clone());
                    r
                }
                None => return Ok(None),
            },
        };
        Ok(tokens::matches(&rec, token, now_ms()).then_some((rec.name, rec.role)))
    }

    /// Counts a refused token and says when to audit: the first at once,
    /// then at most one entry a minute for those since (a guessing storm is
    /// a few entries, not a flood).
    pub(crate) fn refused_token(&self) -> Refused {
        let mut r = self.refused_tokens.lock().expect("no panics while held");
        r.0 += 1;
        match r.1.map(|at| at.elapsed()) {
            Some(e) if e < REFUSED_TOKENS_EVERY => {
                if r.0 == 1 {
                    Refused::Later(REFUSED_TOKENS_EVERY - e)
                } else {
                    Refused::Counted
                }
            }
            _ => {
                let n = r.0;
                *r = (0, Some(std::time::Instant::now()));
                Refused::Now(n)
            }
        }
    }

    /// The refused tokens counted since the last entry, if any (and the
    /// entry is written now).
    pub(crate) fn refused_tokens_due(&self) -> Option<u64> {
        let mut r = self.refused_tokens.lock().expect("no panics while held");
        let n = r.0;
        *r = (0, Some(std::time::Instant::now()));
        (n > 0).then_some(n)
    }

    /// A console session for `token` (checked first): a token of its own,
    /// named and ranked like it, expiring after `ttl_ms`; None if `token`
    /// is not valid.
    pub(crate) async fn open_session(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        token: &str,
        ttl_ms: u64,
    ) -> Result<Option<(String, TokenRole, String)>, StoreError> {
        let Some((name, role)) = self.token_role(conn, token).await? else {
            return Ok(None);
        };
        let parent = tokens::token_id(token).unwrap_or_default().to_string();
        let now = now_ms();
        let session = self
            .token_store
            .issue_until(conn, &name, role, now, Some(now + ttl_ms), Some(&parent))
            .await?;
        Ok(Some((name, role, session)))
    }

    /// Ends the console session `token` (revokes it, here at once and in
    /// the store); a token that is not a session is left alone.
    pub(crate) async fn close_session(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        token: &str,
    ) -> Result<bool, StoreError> {
        let Some(id) = tokens::token_id(token) else {
            return Ok(false);
        };
        let Some(mut rec) = self.token_store.get(conn, id).await? else {
            return Ok(false);
        };
        if rec.session_of.is_none() || !tokens::matches(&rec, token, now_ms()) {
            return Ok(false);
        }
        rec.revoked_ms = Some(now_ms());
        self.token_store.put(conn, &rec).await?;
        self.tokens
            .write()
            .expect("no panics while held")
            .insert(rec.id.clone(), rec);
        Ok(true)
    }

    /// Takes one token from `subject`'s bucket; false when it is empty.
    fn take_token(&self, subject: &str, now: u64) -> bool {
        let mut buckets = self.buckets.lock().expect("no panics while held");
        let b = buckets.entry(subject.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now,
        });
        b.refill(now, self.rate_per_ms, self.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `subject`'s bucket holds a token now (spends none).
    fn has_token(&self, subject: &str, now: u64) -> bool {
        let buckets = self.buckets.lock().expect("no panics while held");
        buckets.get(subject).is_none_or(|b| {
            let mut b = *b;
            b.refill(now, self.rate_per_ms, self.burst);
            b.tokens >= 1.0
        })
    }
}

/// Whether a key may sign a message that claims this sender.
fn may_speak(rec: &KeyRecord, claim: &Claim<'_>) -> Result<(), AuthError> {
    match (rec.role, claim) {
        (Role::Agent, Claim::Agent { agent_id, pool }) => {
            if rec.subject != *agent_id {
                return Err(AuthError::WrongAgent);
            }
            // A pool that does not exist is refused by the handler
            // (unknown_pool, to the agent's own channel): nothing to guard.
            let named = pool.and_then(|p| p.parse::<fleet_protocol::PoolType>().ok());
            match (named, rec.pool) {
                (Some(p), Some(k)) if p != k => Err(AuthError::WrongPool),
                _ => Ok(()),
            }
        }
        (Role::Submitter, Claim::Submitter { reply }) => match reply {
            // A submitter hears only its own replies (its ACL user may
            // subscribe to nothing else): `…:reply:{name}` or
            // `…:reply:{name}:{anything}`.
            Some(r) => {
                let own = r.split_once(":reply:").is_some_and(|(_, rest)| {
                    rest == rec.subject
                        || rest
                            .strip_prefix(rec.subject.as_str())
                            .is_some_and(|t| t.starts_with(':'))
                });
                if own {
                    Ok(())
                } else {
                    Err(AuthError::WrongReply)
                }
            }
            None => Ok(()),
        },
        (_, Claim::Anyone) => Ok(()),
        _ => Err(AuthError::WrongRole),
    }
}

/// The commander's signer for an epoch: key id `commander:<epoch>`.
pub(crate) fn commander_signer(secret: &[u8; 32], epoch: u64) -> Signer {
    Signer::new(format!("{}{epoch}", auth::COMMANDER_KID), secret)
}

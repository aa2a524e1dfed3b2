//! Agents' sessions: the MAC secrets agreed at registration.
//!
//! An agent that offers an X25519 key in its signed `register` gets the
//! commander's in the reply, and both then MAC (`FS1`) what they send
//! instead of signing it (`fleet_protocol::session`). The commander keeps
//! each agent's secret here, for one term: set at registration, and on a
//! miss (after a takeover, or once the cache was cleared) derived again
//! from the agent's public key stored in its record (`sessionKey`) and the
//! commander's key, so no secret is ever written to Redis.
//!
//! An `FS1` frame from an agent with no session (its record gone: it
//! expired, or Redis lost it) cannot be checked; it is refused
//! (`no_session`) and the agent is told, at most once per
//! [`TELL_EVERY`], to register again.

use fleet_protocol::session::{Exchange, Session};
use fleet_store::registry::Registry;
use fleet_store::StoreError;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// At most one `reregister` per agent per this long for `no_session`.
pub(crate) const TELL_EVERY: Duration = Duration::from_secs(5);

/// Cached secrets, at most (a cache this full is cleared and refilled from
/// the records on demand).
const MAX_CACHED: usize = 1 << 20;

/// The term's sessions: the commander's exchange key and the secrets by agent.
pub(crate) struct Sessions {
    /// None when security is open (no key: no sessions).
    exchange: Option<Exchange>,
    /// Each agent's public key (as it registered) and its session.
    by_agent: RwLock<HashMap<String, (String, Arc<Session>)>>,
    /// When each agent was last told it has no session.
    told: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Sessions for a commander whose signing seed is `seed` (None: security open).
    pub(crate) fn new(seed: Option<&[u8; 32]>) -> Sessions {
        Sessions {
            exchange: seed.map(Exchange::for_commander),
            by_agent: Default::default(),
            told: Default::default(),
        }
    }

    /// The commander's public key, answered to an agent that offered
    /// `offered` (None: no session, either side).
    pub(crate) fn answer(&self, offered: Option<&str>) -> Option<String> {
        offered?;
        self.exchange.as_ref().map(Exchange::public_b64)
    }

    /// The key an agent's registration stores: its offer, if sessions are on.
    pub(crate) fn stored<'a>(&self, offered: Option<&'a str>) -> &'a str {
        match (&self.exchange, offered) {
            (Some(_), Some(k)) => k,
            _ => "",
        }
    }

    /// The session an agent's registration offers: None when there is none
    /// (no key offered, or security open); `Err` when the key gives none (a
    /// low-order point). A re-registration with the key it has is not
    /// derived again.
    pub(crate) fn offer(
        &self,
        agent_id: &str,
        offered: Option<&str>,
    ) -> Result<Option<Arc<Session>>, ()> {
        let public = self.stored(offered);
        if public.is_empty() {
            return Ok(None);
        }
        if let Some((known, s)) = self
            .by_agent
            .read()
            .expect("no panics while held")
            .get(agent_id)
        {
            if known == public {
                return Ok(Some(s.clone()));
            }
        }
        self.derive(agent_id, public)
            .map(|s| Some(Arc::new(s)))
            .ok_or(())
    }

    /// After a registration: the agent's session is the one it offered now
    /// (`offer`'s), or none.
    pub(crate) fn registered(
        &self,
        agent_id: &str,
        offered: Option<&str>,
        session: Option<Arc<Session>>,
    ) {
        let mut map = self.by_agent.write().expect("no panics while held");
        match (session, self.stored(offered)) {
            (Some(s), public) if !public.is_empty() => {
                if map.len() >= MAX_CACHED {
                    map.clear();
                }
                map.insert(agent_id.to_string(), (public.to_string(), s));
            }
            _ => {
                map.remove(agent_id);
            }
        }
    }

    /// The agent left: its session ends with its record.
    pub(crate) fn forget(&self, agent_id: &str) {
        self.by_agent
            .write()
            .expect("no panics while held")
            .remove(agent_id);
    }

    /// The agent's session if this commander holds it (for what it sends).
    pub(crate) fn cached(&self, agent_id: &str) -> Option<Arc<Session>> {
        self.by_agent
            .read()
            .expect("no panics while held")
            .get(agent_id)
            .map(|(_, s)| s.clone())
    }

    /// The agent's session: cached, or derived from its record's key.
    pub(crate) async fn get(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        registry: &Registry,
        agent_id: &str,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        if let Some(s) = self.cached(agent_id) {
            return Ok(Some(s));
        }
        if self.exchange.is_none() {
            return Ok(None);
        }
        let Some(key) = registry.session_key(conn, agent_id).await? else {
            return Ok(None);
        };
        let session = self.offer(agent_id, Some(&key)).ok().flatten();
        self.registered(agent_id, Some(&key), session.clone());
        Ok(session)
    }

    /// Whether to tell `agent_id` now that it has no session (at most once
    /// per [`TELL_EVERY`]).
    pub(crate) fn tell_now(&self, agent_id: &str) -> bool {
        let now = Instant::now();
        let mut told = self.told.lock().expect("no panics while held");
        if told.len() >= 65_536 {
            told.retain(|_, at| now.duration_since(*at) < TELL_EVERY);
        }
        match told.get(agent_id) {
            Some(at) if now.duration_since(*at) < TELL_EVERY => false,
            _ => {
                told.insert(agent_id.to_string(), now);
                true
            }
        }
    }

    fn derive(&self, agent_id: &str, agent_public: &str) -> Option<Session> {
        if agent_public.is_empty() {
            return None;
        }
        self.exchange
            .as_ref()?
            .session(agent_public, agent_id, agent_public)
    }
}

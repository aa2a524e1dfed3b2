//! Credentials for simulated agents, issued as an operator would with
//! `fleet-commander keys issue`: the public half into the key store, the
//! credential to the agent.

use fleet_agent::{Agent, AgentSpec};
use fleet_protocol::auth::{Grants, PublicKey, Role, Signer};
use fleet_protocol::{now_ms, PoolType};
use fleet_store::connection::Conn;
use fleet_store::keystore::new_key;
use fleet_store::{KeyStore, Keys};

/// Issues agents' keys, with the commander's public key.
#[derive(Debug, Clone)]
pub struct Issuer {
    store: KeyStore,
    store_keys: Keys,
    commander: PublicKey,
}

impl Issuer {
    /// For the fleet under `prefix` whose commander signs with `secret`.
    pub fn new(prefix: &str, commander_secret: &[u8; 32]) -> Issuer {
        Issuer {
            store: KeyStore::new(Keys::new(prefix)),
            store_keys: Keys::new(prefix),
            commander: Signer::new("-", commander_secret).public(),
        }
    }

    /// What an operator grants an agent of this spec: the priority and
    /// capacity it asks for, and validator weight if it is one.
    pub fn grants_for(spec: &AgentSpec) -> Grants {
        let validator = spec
            .capabilities
            .iter()
            .any(|c| c == fleet_protocol::governance::VALIDATOR);
        Grants {
            validator_weight: validator
                .then(|| fleet_protocol::governance::weight(&spec.capabilities)),
            max_priority: spec.priority,
            max_capacity: (spec.capacity > 1).then_some(spec.capacity),
        }
    }

    /// Gives each agent a key of its own, granted what its spec asks (one
    /// round trip for them all).
    pub async fn equip(&self, conn: &mut Conn, agents: Vec<Agent>) -> anyhow::Result<Vec<Agent>> {
        let now = now_ms();
        let (records, creds): (Vec<_>, Vec<_>) = agents
            .iter()
            .map(|a| {
                let s = a.spec();
                let grants = Issuer::grants_for(s);
                new_key(
                    Role::Agent,
                    &s.id,
                    Some(s.pool),
                    grants,
                    &self.commander,
                    now,
                )
            })
            .unzip();
        for chunk in records.chunks(500) {
            self.store.put(conn, chunk).await?;
        }
        Ok(agents
            .into_iter()
            .zip(creds)
            .map(|(a, c)| a.with_credential(&c))
            .collect())
    }

    /// A submitter's credential.
    pub async fn submitter(
        &self,
        conn: &mut Conn,
        name: &str,
    ) -> anyhow::Result<fleet_protocol::auth::Credential> {
        Ok(self
            .store
            .issue(
                conn,
                Role::Submitter,
                name,
                None,
                Grants::default(),
                &self.commander,
                now_ms(),
            )
            .await?)
    }

    /// An operator's bearer token for the HTTP API (submitting, draining).
    pub async fn operator_token(&self, conn: &mut Conn, name: &str) -> anyhow::Result<String> {
        let store = fleet_store::tokens::TokenStore::new(self.store_keys.clone());
        Ok(store
            .issue(
                conn,
                name,
                fleet_store::tokens::TokenRole::Operator,
                now_ms(),
            )
            .await?)
    }

    /// One agent's credential, for an agent of `pool` called `id`, with
    /// `grants`.
    pub async fn agent(
        &self,
        conn: &mut Conn,
        id: &str,
        pool: PoolType,
        grants: Grants,
    ) -> anyhow::Result<fleet_protocol::auth::Credential> {
        Ok(self
            .store
            .issue(
                conn,
                Role::Agent,
                id,
                Some(pool),
                grants,
                &self.commander,
                now_ms(),
            )
            .await?)
    }
}

/// An HTTP client that sends `token` as its bearer, if given.
pub fn http_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

//! Redis ACL users for the fleet (`fleet-commander acl`): who may touch
//! which keys and channels, built from the key store. Passwords appear only
//! as SHA-256 hashes (`#…`): the rules are safe to print and to commit.
//!
//! - the commander: every key and channel under the prefix, no dangerous
//!   commands (FLUSHALL, CONFIG, KEYS, DEBUG…);
//! - one user per agent: PUBLISH on the registry, health and results
//!   channels only; SUBSCRIBE to its own `agent:{id}` channel and its
//!   pool's channel only; no key at all. A validator (its key granted
//!   validator weight) may also PUBLISH and SUBSCRIBE on the governance
//!   channel (votes and proposals);
//! - one user per submitter: PUBLISH on the tasks channel; SUBSCRIBE to
//!   `reply:{name}` and `reply:{name}:…` channels; no key;
//! - the operator: read-only commands on the fleet's keys, SUBSCRIBE to its
//!   channels, no PUBLISH.

use crate::Keys;
use fleet_protocol::auth::{redis_user, KeyRecord, Role};
use std::collections::BTreeMap;

/// One ACL user: its name and its `ACL SETUSER` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    pub name: String,
    pub rules: Vec<String>,
}

impl AclUser {
    /// As an `ACL SETUSER` line (what `acl` prints).
    pub fn line(&self) -> String {
        format!("ACL SETUSER {} {}", self.name, self.rules.join(" "))
    }
}

/// Connection-level commands every user needs.
// (CLIENT SETINFO, which clients send on Redis 7.2+, is left out: 7.0 does
// not know it, and clients ignore its refusal.)
const BASICS: &str = "+ping +hello +auth +client|setname";

/// The commander's user, from its name and password hash.
pub fn commander(keys: &Keys, name: &str, password_sha256: &str) -> AclUser {
    let p = keys.prefix();
    AclUser {
        name: name.to_string(),
        rules: words(&format!(
            "reset on #{password_sha256} ~{p}:* &{p}:* +@all -@dangerous +info"
        )),
    }
}

/// The read-only operator's user.
pub fn operator(keys: &Keys, name: &str, password_sha256: &str) -> AclUser {
    let p = keys.prefix();
    AclUser {
        name: name.to_string(),
        rules: words(&format!(
            "reset on #{password_sha256} ~{p}:* &{p}:* -@all {BASICS} +@read \
             +subscribe +psubscribe +unsubscribe +punsubscribe"
        )),
    }
}

/// A user per agent and submitter with a usable key at `now` (each accepts
/// the passwords of all its usable keys: a rotation overlaps here too);
/// and the names of users whose every key is revoked or expired.
pub fn holders(keys: &Keys, records: &[KeyRecord], now: u64) -> (Vec<AclUser>, Vec<String>) {
    let c = keys.channels();
    // By user: its role, a record, its usable keys' passwords, and whether
    // one of those keys is a validator's.
    let mut by_user: BTreeMap<String, (Role, &KeyRecord, Vec<String>, bool)> = BTreeMap::new();
    for r in records {
        let e =
            by_user
                .entry(redis_user(r.role, &r.subject))
                .or_insert((r.role, r, Vec::new(), false));
        if let (Ok(()), Some(h)) = (r.usable(now), &r.redis_password_sha256) {
            e.2.push(format!("#{h}"));
            e.3 |= r.grants.validator_weight.is_some();
        }
    }
    let (mut users, mut gone) = (Vec::new(), Vec::new());
    for (name, (role, r, passwords, validator)) in by_user {
        if passwords.is_empty() {
            gone.push(name);
            continue;
        }
        let (publish, subscribe) = match role {
            Role::Agent => {
                let mut sub = vec![format!("&{}", c.agent(&r.subject))];
                if let Some(pool) = r.pool {
                    sub.push(format!("&{}", c.pool(pool)));
                }
                let mut publish = vec![
                    format!("&{}", c.registry()),
                    format!("&{}", c.health()),
                    format!("&{}", c.results()),
                ];
                if validator {
                    sub.push(format!("&{}", c.governance()));
                    publish.push(format!("&{}", c.governance()));
                }
                (publish.join(" "), sub.join(" "))
            }
            // Its own reply channels only: `reply:{name}` and
            // `reply:{name}:…` (a bare `{name}*` would let `c` hear `ci`).
            Role::Submitter => (
                format!("&{}", c.tasks()),
                format!("&{p}{s} &{p}{s}:*", p = c.reply_prefix(), s = r.subject),
            ),
        };
        let mut rules = words(&format!("reset on {} -@all {BASICS}", passwords.join(" ")));
        rules.push(format!("(+publish {publish})"));
        rules.push(format!("(+subscribe +unsubscribe {subscribe})"));
        users.push(AclUser { name, rules });
    }
    (users, gone)
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::PoolType;

    fn rec(kid: &str, role: Role, subject: &str, revoked: bool) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            role,
            subject: subject.into(),
            pool: (role == Role::Agent).then_some(PoolType::Coder),
            public: String::new(),
            created_ms: 0,
            revoked_ms: revoked.then_some(1),
            expires_ms: None,
            grants: Default::default(),
            redis_password_sha256: Some(format!("h{kid}")),
        }
    }

    #[test]
    fn agents_publish_to_three_channels_and_hear_only_their_own() {
        let keys = Keys::new("swarm:phase-1");
        let mut plain = rec("k5", Role::Agent, "plain", false);
        plain.pool = Some(PoolType::Ui);
        let mut validator = rec("k2", Role::Agent, "a1", false);
        validator.grants.validator_weight = Some(1);
        let recs = [
            rec("k1", Role::Agent, "a1", false),
            validator,
            rec("k3", Role::Submitter, "ci", false),
            rec("k4", Role::Agent, "gone", true),
            plain,
        ];
        let (users, gone) = holders(&keys, &recs, 10);
        assert_eq!(gone, vec!["fleet-agent-gone"]);
        let a1 = users.iter().find(|u| u.name == "fleet-agent-a1").unwrap();
        let line = a1.line();
        assert!(line.contains("#hk1 #hk2"), "{line}");
        assert!(line.contains(
            "(+publish &swarm:phase-1:registry &swarm:phase-1:health &swarm:phase-1:results &swarm:phase-1:governance)"
        ));
        assert!(line.contains(
            "(+subscribe +unsubscribe &swarm:phase-1:agent:a1 &swarm:phase-1:pool:coder &swarm:phase-1:governance)"
        ));
        assert!(!line.contains('~'), "no key pattern: {line}");
        // Not a validator: no governance channel at all.
        let plain = users
            .iter()
            .find(|u| u.name == "fleet-agent-plain")
            .unwrap();
        assert!(
            plain.line().ends_with(
                "(+publish &swarm:phase-1:registry &swarm:phase-1:health &swarm:phase-1:results) \
             (+subscribe +unsubscribe &swarm:phase-1:agent:plain &swarm:phase-1:pool:ui)"
            ),
            "{}",
            plain.line()
        );
        let ci = users
            .iter()
            .find(|u| u.name == "fleet-submitter-ci")
            .unwrap();
        assert!(ci.line().contains("(+publish &swarm:phase-1:tasks)"));
    }
}

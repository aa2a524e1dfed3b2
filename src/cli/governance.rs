//! `fleet-commander governance`: list proposals, and `show` one with every
//! check a reviewer needs: the proposal's hash, each vote's signature (with
//! the validator's public key from the key store), the seal, and the seal's
//! entry in the audit log (whose chain must be intact). Exit status 1 when
//! any check fails.

use super::load;
use clap::Subcommand;
use fleet_protocol::auth::{decode_public, unframe, Unframed};
use fleet_protocol::governance::{Outcome, Vote};
use fleet_store::audit::{self, Verdict};
use fleet_store::governance::{seal, Governance};
use fleet_store::{KeyStore, Keys};
use serde_json::json;
use std::path::Path;

#[derive(Subcommand)]
pub(crate) enum GovernanceAction {
    /// The newest proposals, newest first.
    List {
        /// How many proposals.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One proposal, its votes and decision, with the seal and every
    /// signature verified.
    Show {
        /// The proposal's id.
        id: String,
    },
}

/// `governance ...`: one arm per subcommand (kept as one match, as clap declares them).
pub(crate) async fn governance_cmd(
    config: &Path,
    action: GovernanceAction,
) -> anyhow::Result<bool> {
    let config = load(config)?;
    let keys = Keys::new(config.fleet.prefix.clone());
    let mut conn = fleet_store::connection::connect(&config.redis.url).await?;
    let gov = Governance::new(keys.clone(), 0); // reads only
    match action {
        GovernanceAction::List { limit } => {
            out!(
                "{}",
                serde_json::to_string_pretty(&gov.list(&mut conn, limit).await?)?
            );
            Ok(true)
        }
        GovernanceAction::Show { id } => {
            let Some(rec) = gov.get(&mut conn, &id).await? else {
                anyhow::bail!("no proposal {id}");
            };
            let mut problems: Vec<String> = Vec::new();
            if rec.proposal.hash() != rec.hash {
                problems.push("the proposal's fields do not match its hash".into());
            }
            let channel = keys.channels().governance();
            let store = KeyStore::new(keys.clone());
            let open = config.security.mode == fleet_commander::config::SecurityMode::Open;
            let mut votes = Vec::new();
            for (agent, message) in &rec.votes {
                let (vote, signed_by) = match unframe(message.as_bytes()) {
                    Ok(Unframed::Signed(s)) => {
                        let key = store.get(&mut conn, s.kid).await?;
                        let good = key.as_ref().is_some_and(|k| {
                            k.subject == *agent
                                && decode_public(&k.public)
                                    .is_some_and(|pk| s.verify(&channel, &pk))
                        });
                        if !good {
                            problems.push(format!("{agent}: bad signature (key {})", s.kid));
                        }
                        (
                            serde_json::from_slice::<Vote>(s.body).ok(),
                            Some(s.kid.to_string()),
                        )
                    }
                    Ok(Unframed::Plain(b)) if open => {
                        (serde_json::from_slice::<Vote>(b).ok(), None)
                    }
                    _ => {
                        problems.push(format!("{agent}: not signed"));
                        (None, None)
                    }
                };
                match &vote {
                    Some(v)
                        if v.agent_id == *agent && v.proposal_id == id && v.hash == rec.hash => {}
                    _ => problems.push(format!("{agent}: the vote does not name this proposal")),
                }
                if !rec.proposal.validators.contains_key(agent) {
                    problems.push(format!("{agent}: not a validator of this proposal"));
                }
                votes.push(json!({"agent": agent, "vote": vote.map(|v| v.vote), "key": signed_by}));
            }
            let outcome: Option<Outcome> = rec.state.parse().ok();
            let sealed = outcome.map(|o| seal(&rec.hash, &rec.votes, o));
            match (&sealed, &rec.seal) {
                (Some(a), Some(b)) if a == b => {}
                (None, _) => problems.push(format!("not decided ({})", rec.state)),
                _ => problems.push("the seal does not match the proposal and its votes".into()),
            }
            // The seal as the audit log has it, and the log's chain.
            let target = format!("proposal:{id}");
            let entries = audit::list(&mut conn, &keys, 100_000).await?;
            let entry = entries
                .iter()
                .find(|e| e.action == "governance" && e.target == target);
            match (entry, &sealed) {
                (Some(e), Some(s)) if e.result.ends_with(&format!("seal={s}")) => {}
                (Some(_), _) => problems.push("the audit log's seal differs".into()),
                (None, _) => problems.push("no audit entry for the decision".into()),
            }
            let commander = config
                .commander_secret()?
                .map(|s| fleet_protocol::auth::Signer::new("commander:cli", &s).public());
            if let Verdict::Broken { seq, what } =
                audit::verify(&mut conn, &keys, commander.as_ref(), &[]).await?
            {
                problems.push(format!("the audit log is broken at entry {seq}: {what}"));
            }
            let valid = problems.is_empty();
            out!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "proposalId": id, "action": rec.proposal.action, "params": rec.proposal.params,
                    "state": rec.state, "weights": rec.weights, "quorum": rec.proposal.quorum,
                    "totalWeight": rec.proposal.total_weight, "seal": rec.seal, "votes": votes,
                    "valid": valid, "problems": problems,
                }))?
            );
            Ok(valid)
        }
    }
}

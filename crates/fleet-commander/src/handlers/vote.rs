//! `vote`: a validator's signed vote on a proposal. Refused (and counted)
//! when it is from a non-validator, a second from the same validator, late
//! or for another proposal hash; a vote that decides the proposal seals it
//! and carries it out (crate::governance).

use crate::context::Shared;
use crate::metrics as m;
use fleet_protocol::auth::Grants;
use fleet_protocol::governance::Vote;
use fleet_protocol::now_ms;
use fleet_store::connection::Conn;
use fleet_store::governance::Voted;
use fleet_store::StoreError;
use tracing::{info, warn};

pub(super) async fn handle(
    shared: &Shared,
    conn: &mut Conn,
    vote: Vote,
    signed: String,
    grants: &Grants,
) -> Result<(), StoreError> {
    // The registry's validator set follows registrations, which a grant
    // bounds; the key that signed this vote must still be a validator's.
    if grants.validator_weight.is_none() {
        metrics::counter!(m::VOTES_REJECTED, "reason" => "not_granted").increment(1);
        warn!(
            proposal_id = vote.proposal_id,
            reason = "not_granted",
            "vote refused: its key is not granted validator"
        );
        return Ok(());
    }
    let voted = shared
        .governance
        .vote(conn, &vote, &signed, now_ms())
        .await?;
    match voted {
        Voted::Counted => {
            metrics::counter!(m::VOTES, "vote" => vote.vote.as_str()).increment(1);
            info!(
                proposal_id = vote.proposal_id,
                vote = vote.vote.as_str(),
                "vote counted"
            );
        }
        Voted::Decided(outcome) => {
            metrics::counter!(m::VOTES, "vote" => vote.vote.as_str()).increment(1);
            crate::governance::decided(shared, &vote.proposal_id, outcome).await?;
        }
        Voted::Refused(why) => {
            let reason = why.as_str();
            metrics::counter!(m::VOTES_REJECTED, "reason" => reason).increment(1);
            warn!(proposal_id = vote.proposal_id, reason, "vote refused");
        }
    }
    Ok(())
}

//! Taking attempts back (a lease run out, an agent stuck: a Takeback), retries
//! released after their backoff, quarantines ended (parole).

use super::*;

/// Why a commander takes an attempt back from its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeback {
    /// The attempt's lease ran out.
    Lease,
    /// The agent showed no progress within the progress timeout.
    Stuck,
}

impl Takeback {
    pub fn as_str(self) -> &'static str {
        match self {
            Takeback::Lease => "lease",
            Takeback::Stuck => "stuck",
        }
    }
}

/// An attempt taken back from its agent ([`TaskStore::expire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBack {
    /// Where the task went.
    pub to: Requeued,
    /// The agent it was taken from.
    pub agent: String,
    /// The agent's `task_cancel`, to publish.
    pub notice: Option<Notice>,
}

/// Where a task taken back goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Back to its queue, for another attempt.
    Queued,
    /// Out of retries: dead-lettered.
    Dead,
    /// It took down too many agents: held as poison.
    Poison,
}

impl TaskStore {
    /// Leases that ran out at or before `now`.
    pub async fn expired_leases(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.leases(), now, limit).await
    }

    /// Attempts that showed no progress in time, at or before `now`.
    pub async fn stalled(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<Vec<String>> {
        scored_upto(conn, &self.keys.stalls(), now, limit).await
    }

    /// Takes a task back from an agent whose lease ran out, or that is
    /// stuck on it: `None` if there was nothing to take back (the attempt
    /// finished, or its lease is still fresh).
    pub async fn expire(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
        now: u64,
        why: Takeback,
    ) -> Result<Option<TakenBack>> {
        let r = EXPIRE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("why", why.as_str())
            .reply(conn)
            .await?;
        let to = match r.outcome()? {
            "queued" => Requeued::Queued,
            "dead" => Requeued::Dead,
            "poison" => Requeued::Poison,
            "fresh" | "stale" | "gone" => return Ok(None),
            _ => return Err(r.unexpected()),
        };
        Ok(Some(TakenBack {
            to,
            agent: r.text("agent")?.to_string(),
            notice: r.notice(),
        }))
    }

    /// Moves retries whose backoff is over back to their queues; returns how many pools got tasks.
    pub async fn release_delayed(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        limit: usize,
    ) -> Result<usize> {
        let pools: Vec<String> = RELEASE
            .fenced(&self.keys, self.epoch)
            .task_keys(&self.keys)
            .arg("now", now)
            .arg("max", limit)
            .run(conn)
            .await?;
        Ok(pools.len())
    }

    /// Ends the quarantine of agents whose period is over (they go on
    /// probation). Returns their ids.
    pub async fn parole(
        &self,
        conn: &mut impl ConnectionLike,
        now: u64,
        max: usize,
    ) -> Result<Vec<String>> {
        PAROLE
            .fenced(&self.keys, self.epoch)
            .task_keys(&self.keys)
            .arg("now", now)
            .arg("max", max)
            .run(conn)
            .await
    }
}

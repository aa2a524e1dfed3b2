//! Tasks held aside for an operator: dead letters and poison; listed, counted,
//! requeued, deleted.

use super::*;

/// The sets where tasks are held aside until an operator acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Out of retries.
    Dead,
    /// Took down `tasks.poison_after` agents.
    Poison,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Dead => "dead",
            Held::Poison => "poison",
        }
    }
}

impl TaskStore {
    /// Tasks held aside (dead letters or poison), most recent first.
    pub async fn held(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let ids = crate::registry::newest(conn, &self.held_key(which), limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for the page, not one per task.
        let mut p = redis::pipe();
        for id in &ids {
            p.hgetall(self.keys.task(id));
        }
        let rows: Vec<HashMap<String, String>> = p.query_async(conn).await?;
        Ok(rows.iter().filter_map(task_from_fields).collect())
    }

    /// The ids of the newest `limit` tasks held aside.
    pub async fn held_ids(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        limit: usize,
    ) -> Result<Vec<String>> {
        crate::registry::newest(conn, &self.held_key(which), limit).await
    }

    /// How many tasks are held aside: (dead letters, poison), in one round trip.
    pub async fn held_counts(&self, conn: &mut impl ConnectionLike) -> Result<(u64, u64)> {
        Ok(redis::pipe()
            .zcard(self.held_key(Held::Dead))
            .zcard(self.held_key(Held::Poison))
            .query_async(conn)
            .await?)
    }

    pub(super) fn held_key(&self, which: Held) -> String {
        match which {
            Held::Dead => self.keys.dead(),
            Held::Poison => self.keys.poison(),
        }
    }

    /// Deletes a dead letter for good (record, evidence, client id); false
    /// if the task is not in the dead letters.
    pub async fn delete_dead(&self, conn: &mut impl ConnectionLike, id: &str) -> Result<bool> {
        let r = DLQ_DELETE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .key("dead", self.keys.dead())
            .key("evidence", self.keys.task_evidence(id))
            .key("recent", self.keys.recent_tasks())
            .arg("id", id)
            .arg("prefix.task_client", self.keys.task_client_prefix())
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "deleted" => true,
            "not_dead" => false,
            _ => return Err(r.unexpected()),
        })
    }

    /// Sends a task held aside back to its queue with fresh retries (and,
    /// from poison, no casualties). `Err(state)` if it is not held there.
    pub async fn requeue_held(
        &self,
        conn: &mut impl ConnectionLike,
        which: Held,
        id: &str,
        now: u64,
    ) -> Result<Requeue> {
        let r = DLQ_REQUEUE
            .fenced(&self.keys, self.epoch)
            .key("task", self.keys.task(id))
            .task_keys(&self.keys)
            .arg("id", id)
            .arg("now", now)
            .arg("from", which.as_str())
            .reply(conn)
            .await?;
        Ok(match r.outcome()? {
            "queued" => Requeue::Queued,
            "not_held" => Requeue::NotHeld(r.text("state")?.to_string()),
            _ => return Err(r.unexpected()),
        })
    }
}

/// What asking to requeue a held task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Back in its queue with fresh retries.
    Queued,
    /// Not in that held set: the task's state.
    NotHeld(String),
}

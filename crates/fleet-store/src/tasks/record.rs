//! A task's record as stored: read by id or client id, listed, summarised; its
//! hash's fields parsed in one place.

use super::*;

/// Builds a task record from its hash's fields; `None` if a required field is missing or bad.
pub fn task_from_fields(f: &HashMap<String, String>) -> Option<TaskRecord> {
    let s = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let u = |k: &str| s(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(TaskRecord {
        id: s("id")?.to_string(),
        client_id: s("clientId").map(str::to_string),
        pool: s("pool")?.parse().ok()?,
        capabilities: s("capabilities")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default(),
        priority: u("priority") as u8,
        payload: s("payload")
            .and_then(|v| RawJson::from_text(v.to_string()).ok())
            .unwrap_or_default(),
        timeout_ms: u("timeoutMs"),
        max_retries: u("maxRetries") as u32,
        state: s("state")?.parse().ok()?,
        attempt: u("attempt") as u32,
        agent_id: s("agent").filter(|a| !a.is_empty()).map(str::to_string),
        submitted_at: u("submittedAt"),
        updated_at: u("updatedAt"),
        result: s("result").and_then(|v| RawJson::from_text(v.to_string()).ok()),
        error: s("error").map(str::to_string),
        progress_timeout_ms: s("progressTimeoutMs").and_then(|v| v.parse().ok()),
        max_cost: s("maxCost").and_then(|v| v.parse().ok()),
        usage: s("usage").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        casualties: u("casualties") as u32,
        attempts: attempts(f),
    })
}

/// The attempts of a task: its history (`history`, written by the scripts'
/// `attempt_ended`), then the current attempt while one is held.
pub(super) fn attempts(f: &HashMap<String, String>) -> Vec<fleet_protocol::task::Attempt> {
    let mut all: Vec<fleet_protocol::task::Attempt> = f
        .get("history")
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let state = f.get("state").map(String::as_str);
    if let (Some("assigned" | "running"), Some(agent)) = (state, f.get("agent")) {
        all.push(fleet_protocol::task::Attempt {
            attempt: f.get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
            agent_id: agent.clone(),
            started_at: f
                .get("assignedAt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            ended_at: None,
            outcome: "running".into(),
            error: None,
        });
    }
    all
}

/// A task as listed (`GET /v1/tasks`): no payload or result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub pool: String,
    pub state: String,
    pub priority: u8,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub submitted_at: u64,
    pub updated_at: u64,
}

impl TaskSummary {
    const FIELDS: [&'static str; 10] = [
        "id",
        "clientId",
        "pool",
        "state",
        "priority",
        "attempt",
        "agent",
        "submittedAt",
        "updatedAt",
        "lastAgent",
    ];

    pub(super) fn from_row(row: Vec<Option<String>>) -> Option<TaskSummary> {
        let [id, client, pool, state, priority, attempt, agent, submitted, updated, last]: [Option<
            String,
        >;
            10] = row.try_into().ok()?;
        let num = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(TaskSummary {
            id: id?,
            client_id: client.filter(|c| !c.is_empty()),
            pool: pool?,
            state: state?,
            priority: num(priority).min(255) as u8,
            attempt: num(attempt) as u32,
            // The agent that holds it, else the last one that tried it.
            agent_id: agent
                .filter(|a| !a.is_empty())
                .or(last.filter(|a| !a.is_empty())),
            submitted_at: num(submitted),
            updated_at: num(updated),
        })
    }
}

impl TaskStore {
    pub async fn get(
        &self,
        conn: &mut impl ConnectionLike,
        id: &str,
    ) -> Result<Option<TaskRecord>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        task_from_fields(&fields)
            .map(Some)
            .ok_or_else(|| StoreError::Reply(format!("task {id}: bad record")))
    }

    /// The ids of the newest tasks, newest first (the recent index:
    /// [`RECENT_TASKS`] at most).
    pub async fn recent_ids(&self, conn: &mut impl ConnectionLike) -> Result<Vec<String>> {
        Ok(redis::cmd("ZREVRANGE")
            .arg(self.keys.recent_tasks())
            .arg(0)
            // The index is trimmed now and then (submit.lua), not at once.
            .arg(RECENT_TASKS - 1)
            .query_async(conn)
            .await?)
    }

    /// The id of the task a client id names, while it is remembered.
    pub async fn by_client_id(
        &self,
        conn: &mut impl ConnectionLike,
        client_id: &str,
    ) -> Result<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(self.keys.task_client(client_id))
            .query_async(conn)
            .await?)
    }

    /// A summary of each task of `ids`, in order, leaving out those whose
    /// record has expired. Pipelined, 500 at a time.
    pub async fn summaries(
        &self,
        conn: &mut impl ConnectionLike,
        ids: &[String],
    ) -> Result<Vec<TaskSummary>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut p = redis::pipe();
            for id in chunk {
                p.cmd("HMGET")
                    .arg(self.keys.task(id))
                    .arg(&TaskSummary::FIELDS);
            }
            let rows: Vec<Vec<Option<String>>> = p.query_async(conn).await?;
            out.extend(rows.into_iter().filter_map(TaskSummary::from_row));
        }
        Ok(out)
    }
}

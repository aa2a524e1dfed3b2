//! Tasks in Redis, one file per concept: `submit` (and cancel),
//! `allocate` (queues, allocation, pause, fairness, evidence), `report`
//! (agents' reports), `takeback` (leases run out, stuck attempts, retries
//! released, parole), `held` (dead letters and poison), `record` (a
//! task's hash read and parsed), `settings` (what the scripts read from
//! the config). Every type is re-exported here: `fleet_store::tasks::X`.
//!
//! Layout (names in [`crate::keys`]): one hash per task; one sorted set per
//! pool as its queue, scored `enqueue time - priority x aging step` so that
//! higher priority goes first and waiting ages a task upwards; a sorted set of
//! tasks waiting out a retry backoff, one of leases, one of dead letters. A
//! task is acknowledged to its submitter only after the script that persists
//! it has returned.

use crate::error::{from_script, Result, StoreError};
use crate::keys::Keys;
use crate::registry::scored_upto;
use crate::script::{Call, Reply};
use crate::scripts::{
    ALLOCATE, CANCEL, DLQ_DELETE, DLQ_REQUEUE, EXPIRE, PAROLE, POOL_PAUSE, RELEASE, SUBMIT,
    TASK_ACK, TASK_DONE,
};
use crate::{Notice, Once};
use fleet_protocol::pool::Strategy;
use fleet_protocol::task::{RawJson, TaskRecord, ValidTask};
use fleet_protocol::{PoolType, ReportKind, TaskReport};
use redis::aio::ConnectionLike;
use redis::Value;
use std::collections::HashMap;

mod allocate;
mod held;
mod record;
mod report;
mod settings;
mod submit;
mod takeback;

pub use allocate::*;
pub use held::*;
pub use record::*;
pub use report::*;
pub use settings::*;
pub use submit::*;
pub use takeback::*;

/// Tasks one allocate call may assign (and the window of the queue it reads;
/// it chooses among twice as many agents). A pool that fills a batch is
/// served again at once.
pub const ALLOCATE_BATCH: usize = 64;

/// How many of the newest tasks [`Keys::recent_tasks`] indexes (what
/// `GET /v1/tasks` can list; any task is found by its id or client id).
pub const RECENT_TASKS: u64 = 10_000;

/// Allocation decisions kept in the evidence stream (approximately).
pub const EVIDENCE_CAP: u64 = 100_000;

/// Queue score: lower runs first. One priority level is worth
/// `aging_ms_per_priority` of waiting.
pub fn queue_score(enqueued_at: u64, priority: u8, cfg: &TaskPolicy) -> f64 {
    enqueued_at as f64 - f64::from(priority) * cfg.aging_ms_per_priority as f64
}

#[derive(Debug, Clone)]
pub struct TaskStore {
    keys: Keys,
    epoch: u64,
    cfg: TaskPolicy,
}

impl TaskStore {
    pub fn new(keys: Keys, epoch: u64, cfg: TaskPolicy) -> Self {
        Self { keys, epoch, cfg }
    }
}

//! Audit checkpoints: the leader signs the audit log's head every
//! `security.audit_checkpoint_ms` the log has grown, and appends it to
//! `security.audit_checkpoint_file`, one JSON line each. Kept off the host,
//! they let `fleet-commander audit verify --checkpoint` see a log that was
//! cut short or rolled back in Redis (fleet_store::audit).

use crate::context::Shared;
use crate::metrics as m;
use crate::supervise::pause;
use fleet_store::audit::Checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Appends one checkpoint to `path` (creating it).
pub fn append(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let line = serde_json::to_string(cp).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

/// The leader's loop: a checkpoint to `path` whenever the head moved since
/// the last (signed mode only: open mode has no key).
pub(crate) async fn writer(shared: Arc<Shared>, path: PathBuf) {
    let every = Duration::from_millis(shared.config().security.audit_checkpoint_ms);
    let mut conn = shared.redis.clone();
    let (mut last, mut failing) = (0u64, false);
    loop {
        let cp = match shared
            .audit
            .checkpoint(&mut conn, fleet_protocol::now_ms())
            .await
        {
            Ok(cp) => cp,
            Err(e) => {
                crate::metrics::redis_error("checkpoint", &e);
                None
            }
        };
        if let Some(cp) = cp.filter(|c| c.seq != last) {
            match append(&path, &cp) {
                Ok(()) => {
                    if failing {
                        info!(path = %path.display(), "audit checkpoints written again");
                    }
                    (last, failing) = (cp.seq, false);
                    metrics::gauge!(m::AUDIT_CHECKPOINT_SEQ).set(cp.seq as f64);
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(path = %path.display(), error = %e,
                        "cannot write the audit checkpoint; fix the path or set security.audit_checkpoint_file = \"\"");
                }
                Err(_) => {}
            }
        }
        if !pause(&shared.shutdown, every).await {
            return;
        }
    }
}

//! The loop that keeps the gate's key cache fresh (crate::auth::Gate):
//! reloads on a key-change notice, and on a timer in case one was lost.

use crate::context::Shared;
use crate::supervise::pause;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Keeps the key cache fresh: at once on a key-change notice, and on a
/// timer in case a notice was lost. (The gate outlives terms; a leader
/// loads it before its first term, crate::service.) Notices are taken at
/// most one per [`NOTICE_GAP`]: the key channel has no ACL of its own
/// without Redis ACLs, and a flood of notices must not become a flood of
/// key store reads (those in a gap make one reload after it).
pub(crate) async fn refresh(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config().security.key_refresh_ms);
    let mut conn = shared.redis.clone();
    loop {
        let noticed = tokio::select! {
            _ = shared.gate.changed.notified() => true,
            ok = pause(&shared.shutdown, every) => if ok { false } else { return },
        };
        metrics::counter!(crate::metrics::KEY_RELOADS).increment(1);
        if let Err(e) = shared.gate.reload(&mut conn).await {
            crate::metrics::redis_error("keys", &e);
            warn!(error = %e, "cannot read the key store; keeping the keys known");
        }
        if noticed && !pause(&shared.shutdown, NOTICE_GAP).await {
            return;
        }
    }
}

/// The least time between two reloads that key-change notices ask for.
const NOTICE_GAP: Duration = Duration::from_millis(200);

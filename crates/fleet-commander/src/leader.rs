//! Leadership among the commanders sharing one Redis (`[ha]`; the lease
//! itself is `fleet_store::lease`).
//!
//! A commander process goes through terms (crate::service). Standing by, it
//! serves the read API, refuses writes with 503 and the leader's address
//! (crate::http), and tries to take the lease every `ha.renew_ms`
//! ([`stand_by`]). Taking it claims the next epoch, which fences the
//! previous leader; the new leader runs every loop of the service and
//! renews the lease ([`keep`]). Its term ends when the lease is lost: a
//! newer epoch was claimed (its next write, or renewal, is refused), or it
//! could not renew for `lease_ms - renew_ms`, so it stops before the lease
//! can lapse in Redis and another take over. It then stands by again, in
//! the same process. A clean stop releases the lease, so a standby takes
//! over at its next try instead of after the lease.

use crate::context::Shared;
use crate::ha::LeaderInfo;
use crate::supervise::pause;
use fleet_store::lease::{self, Acquire, Holder};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long one lease command may take before it counts as failed.
const LEASE_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Stands by until this commander takes the lease (its epoch, and when the
/// try that took it began), or shutdown (None). Tries at once, then every
/// `ha.renew_ms`; each try is the standby's probe of Redis for the circuit
/// breaker.
pub(crate) async fn stand_by(shared: &Shared) -> Option<(u64, Instant)> {
    let ha = &shared.ha;
    let every = Duration::from_millis(shared.config().ha.renew_ms);
    let mut conn = shared.redis.clone();
    let mut first = true;
    let mut seen: Option<Holder> = None;
    loop {
        if !first && !pause(shared.shutdown_token(), every).await {
            return None;
        }
        first = false;
        let tried = Instant::now();
        match tokio::time::timeout(LEASE_CALL_TIMEOUT, ha.lease.acquire(&mut conn)).await {
            Ok(Ok(Acquire::Leading(epoch))) => {
                shared.breaker.ok();
                return Some((epoch, tried));
            }
            Ok(Ok(Acquire::Held(holder))) => {
                shared.breaker.ok();
                if holder != seen {
                    let info = match &holder {
                        Some(h) => Some(LeaderInfo {
                            id: h.id.clone(),
                            epoch: h.epoch,
                            address: lease::commander(&mut conn, &shared.keys, &h.id)
                                .await
                                .ok()
                                .flatten()
                                .map(|c| c.address),
                        }),
                        None => None,
                    };
                    if let Some(l) = &info {
                        info!(leader = l.id, epoch = l.epoch, address = ?l.address, "standing by");
                    }
                    // Known once the leader's address is known.
                    if info.as_ref().is_none_or(|l| l.address.is_some()) {
                        seen = holder;
                    }
                    ha.saw(info);
                }
                if let Err(e) = lease::announce(&mut conn, &shared.keys, &ha.entry()).await {
                    crate::metrics::redis_error("lease", &e);
                }
            }
            Ok(Err(e)) => {
                shared.breaker.failed();
                crate::metrics::redis_error("lease", &e);
                warn!(reason = e.reason(), error = %e, "cannot look at the lease");
            }
            Err(_) => shared.breaker.failed(),
        }
    }
}

/// The leader's side: renews the lease every `ha.renew_ms` and announces
/// itself; ends the term when the lease is lost, or the moment it has not
/// been renewed for `lease_ms - renew_ms` (counted from `acquired`, when the
/// try that took it began): a timer, not the next round, so a renewal stuck
/// on a frozen Redis cannot hold the term past that bound. Returns on
/// shutdown or at the end of the term.
pub(crate) async fn keep(shared: std::sync::Arc<Shared>, acquired: Instant) {
    let ha = &shared.ha;
    let cfg = shared.config().ha.clone();
    let every = Duration::from_millis(cfg.renew_ms);
    let deadline = Duration::from_millis(cfg.lease_ms - cfg.renew_ms);
    let epoch = shared.registry.epoch();
    let mut conn = shared.redis.clone();
    let mut renewed = acquired;
    shared.lease_until(renewed + deadline);
    // The first renewal at once: getting the term ready (settings, the key
    // store) may have taken a good part of the deadline on a busy machine.
    let mut first = true;
    loop {
        let until = renewed + deadline;
        let wait = !std::mem::take(&mut first);
        let round = async {
            if wait && !pause(shared.shutdown_token(), every).await {
                return Round::Stop;
            }
            let started = Instant::now();
            match tokio::time::timeout(LEASE_CALL_TIMEOUT, ha.lease.renew(&mut conn, epoch)).await {
                Ok(Ok(true)) => {
                    if let Err(e) = lease::announce(&mut conn, &shared.keys, &ha.entry()).await {
                        crate::metrics::redis_error("lease", &e);
                    }
                    Round::Renewed(started)
                }
                Ok(Ok(false)) => Round::Lost,
                Ok(Err(e)) => {
                    crate::metrics::redis_error("lease", &e);
                    warn!(reason = e.reason(), error = %e, "cannot renew the lease");
                    Round::Failed
                }
                Err(_) => {
                    warn!("renewing the lease timed out");
                    Round::Failed
                }
            }
        };
        tokio::select! {
            // A leader paused (SIGSTOP, a VM migration) or cut off past its
            // deadline may have been replaced: it stops at once.
            _ = tokio::time::sleep_until(until.into()) => {
                warn!(
                    epoch,
                    since_ms = renewed.elapsed().as_millis() as u64,
                    "the lease was not renewed in time: stepping down"
                );
                shared.end_term("lease_not_renewed");
                return;
            }
            r = round => match r {
                Round::Stop => return,
                Round::Renewed(at) => {
                    renewed = at;
                    shared.lease_until(renewed + deadline);
                }
                Round::Lost => {
                    shared.on_fenced();
                    return;
                }
                Round::Failed => {}
            },
        }
    }
}

/// How one renewal round of [`keep`] went.
enum Round {
    Stop,
    Renewed(Instant),
    Lost,
    Failed,
}

//! The circuit breaker on Redis. The failure detector's query, every
//! `fleet.detect_tick_ms`, is the probe: after `TRIP_AFTER` failed or
//! unanswered probes in a row the breaker opens, and the first answered one
//! closes it. While it is open, HTTP requests that need Redis fail at once
//! with 503 and `Retry-After` instead of hanging (crate::http), and the
//! state is in `fleet_redis_breaker_open`. Loops that meet Redis errors back
//! off on their own (crate::supervise).

use crate::metrics as m;
use fleet_protocol::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tracing::{info, warn};

/// Failed probes in a row that open the breaker.
const TRIP_AFTER: u32 = 3;

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: AtomicU32,
    /// When it opened (ms); 0 while closed.
    open_since: AtomicU64,
}

impl Breaker {
    /// Redis answered a probe in time.
    pub(crate) fn ok(&self) {
        self.failures.store(0, Ordering::Release);
        let since = self.open_since.swap(0, Ordering::AcqRel);
        if since != 0 {
            metrics::gauge!(m::BREAKER_OPEN).set(0.0);
            info!(
                down_ms = now_ms().saturating_sub(since),
                "Redis answers again: circuit breaker closed"
            );
        }
    }

    /// A probe failed or went unanswered.
    pub(crate) fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= TRIP_AFTER
            && self
                .open_since
                .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            metrics::gauge!(m::BREAKER_OPEN).set(1.0);
            warn!(
                probes = n,
                "Redis does not answer: circuit breaker open, HTTP requests fail fast"
            );
        }
    }

    /// Since when it has been open (ms), if it is.
    pub(crate) fn open_since(&self) -> Option<u64> {
        match self.open_since.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_three_failures_in_a_row_and_closes_on_the_first_answer() {
        let b = Breaker::default();
        b.failed();
        b.failed();
        b.ok();
        b.failed();
        b.failed();
        assert_eq!(
            b.open_since(),
            None,
            "an answer in between resets the count"
        );
        b.failed();
        assert!(b.open_since().is_some());
        b.failed();
        b.ok();
        assert_eq!(b.open_since(), None);
    }
}

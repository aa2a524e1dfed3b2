//! The scaling policy, pure: what a pool's recent demand asks for. No Redis,
//! no clock, no I/O: the loop in `scaler/mod.rs` samples each pool, feeds
//! [`PoolState`] and acts on what [`decide`] returns. Its rules are in
//! `scaler/README.md`.

use crate::config::{Config, ScalingPolicy};
use fleet_protocol::pool::PoolType;
use std::collections::VecDeque;

/// The longest a pool waits between growth requests that nobody answers.
pub const MAX_RETRY_MS: u64 = 600_000;

/// One reading of a pool's demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: u64,
    /// Agents that can work: idle, active, busy (not failed or recovering;
    /// retiring ones count until they leave, and the scaler subtracts its own).
    pub live: u64,
    /// Agents registered but not working (failed, recovering, halted): they keep
    /// their place against max_agents until they return or are removed.
    pub held: u64,
    /// Agents holding at least one task.
    pub busy: u64,
    /// Tasks waiting that an agent of the pool could run (tasks needing
    /// capabilities that no agent declares are left out).
    pub queued: u64,
    /// How long the longest-waiting of the next tasks to run has waited (ms).
    pub oldest_wait_ms: u64,
}

impl Sample {
    pub fn utilization(&self) -> f64 {
        if self.live == 0 {
            if self.queued > 0 {
                1.0
            } else {
                0.0
            }
        } else {
            self.busy as f64 / self.live as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// What the policy wants for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub direction: Direction,
    pub count: u32,
    pub reason: &'static str,
}

/// A pool's memory between samples.
#[derive(Debug, Default)]
pub struct PoolState {
    pub samples: VecDeque<Sample>,
    pub last_up: Option<u64>,
    pub last_down: Option<u64>,
    /// Agents requested and not yet registered.
    pub pending_up: u32,
    /// Agents retiring and not yet gone.
    pub pending_down: u32,
    /// Growth requests in a row that nobody answered (no agent came).
    pub unanswered: u32,
    /// While nobody answers: no growth request before this time.
    pub retry_at: Option<u64>,
    /// The pool's registrations when the last request went unanswered: one
    /// more means somebody answers after all.
    pub registered_then: u64,
}

/// How long a pool waits before asking again after its `unanswered`-th
/// request in a row went unanswered: the request timeout, doubling, capped.
pub fn retry_delay(request_timeout_ms: u64, unanswered: u32) -> u64 {
    let doubled = request_timeout_ms.saturating_mul(1u64 << unanswered.saturating_sub(1).min(20));
    doubled.min(MAX_RETRY_MS.max(request_timeout_ms))
}

impl PoolState {
    pub(crate) fn record(&mut self, s: Sample, window_ms: u64) {
        self.samples.push_back(s);
        while self
            .samples
            .front()
            .is_some_and(|f| f.at + window_ms < s.at)
        {
            self.samples.pop_front();
        }
    }

    /// The samples cover a whole window.
    fn window_full(&self, p: &ScalingPolicy) -> bool {
        match (self.samples.front(), self.samples.back()) {
            (Some(f), Some(b)) => b.at - f.at + p.sample_ms >= p.window_ms,
            _ => false,
        }
    }

    /// Both cooldowns have passed: the pool may change in either direction.
    fn cooled(&self, p: &ScalingPolicy, now: u64) -> bool {
        self.last_up.is_none_or(|t| now >= t + p.up_cooldown_ms)
            && self.last_down.is_none_or(|t| now >= t + p.down_cooldown_ms)
    }
}

/// The policy for one pool: what it wants now, before the fleet cap.
/// `manual`: a size an operator fixed, which replaces demand.
///
/// Kept whole (about 90 lines) on purpose: it is the rules in their order of
/// precedence, read top to bottom (the bounds and a fixed size first, then
/// the window and cooldowns, then growth, then shrinkage); pieces would hide
/// that order. It is pure, and unit-tested below.
pub fn decide(
    p: &ScalingPolicy,
    min: u32,
    max: u32,
    manual: Option<u32>,
    st: &PoolState,
    now: u64,
) -> Option<Want> {
    let last = st.samples.back()?;
    // The size the pool is heading for, counting requests in flight.
    let size = (last.live + u64::from(st.pending_up)).saturating_sub(u64::from(st.pending_down));
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    // Growth the pool's bound allows: failed agents still hold their places,
    // and asking for an agent that could not register would only time out.
    let room =
        max.saturating_sub(size.saturating_add(u32::try_from(last.held).unwrap_or(u32::MAX)));
    // Nobody answered the last request: no growth until the retry is due.
    let room = if st.retry_at.is_some_and(|t| now < t) {
        0
    } else {
        room
    };
    let floor = manual.unwrap_or(min).clamp(min, max);
    if size < floor && room > 0 {
        let reason = if manual.is_some() {
            "manual"
        } else {
            "below_min"
        };
        return Some(Want {
            direction: Direction::Up,
            count: (floor - size).min(p.max_step).min(room),
            reason,
        });
    }
    let ceiling = manual.unwrap_or(max).clamp(min, max);
    if size > ceiling && st.pending_down == 0 {
        let reason = if manual.is_some() {
            "manual"
        } else {
            "above_max"
        };
        return Some(Want {
            direction: Direction::Down,
            count: (size - ceiling).min(p.max_step),
            reason,
        });
    }
    if manual.is_some() || !st.window_full(p) || !st.cooled(p, now) {
        return None;
    }
    let n = st.samples.len() as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| st.samples.iter().map(f).sum::<f64>() / n;
    let util = mean(&|s| s.utilization());
    let wait = mean(&|s| s.oldest_wait_ms as f64);
    let busy = mean(&|s| s.busy as f64);
    let queued = mean(&|s| s.queued as f64);
    if (util >= p.scale_up_utilization || wait >= p.scale_up_queue_wait_ms as f64)
        && room > 0
        && st.pending_up == 0
    {
        // Enough agents for the work in hand and the work waiting, at the
        // utilisation that would not trigger growth again.
        let wanted = ((busy + queued) / p.scale_up_utilization).ceil() as u32;
        let count = wanted.saturating_sub(size).clamp(1, p.max_step).min(room);
        let reason = if util >= p.scale_up_utilization {
            "utilization"
        } else {
            "queue_wait"
        };
        return Some(Want {
            direction: Direction::Up,
            count,
            reason,
        });
    }
    let quiet = st
        .samples
        .iter()
        .all(|s| s.utilization() <= p.scale_down_utilization && s.queued == 0);
    if quiet && size > min && st.pending_down == 0 {
        let wanted = ((busy / p.scale_up_utilization).ceil() as u32).max(min);
        let count = size.saturating_sub(wanted).min(p.max_step);
        if count > 0 {
            return Some(Want {
                direction: Direction::Down,
                count,
                reason: "low_utilization",
            });
        }
    }
    None
}

/// Grants growth within the fleet-wide cap, highest pool priority first.
/// `room`: agents the fleet may still add. Returns the wants as granted
/// (growth cut to what fits; shrinkage always passes).
pub fn share_cap(
    config: &Config,
    wants: Vec<(PoolType, Want)>,
    mut room: u64,
) -> Vec<(PoolType, Want)> {
    let mut wants = wants;
    wants.sort_by_key(|(p, w)| {
        (
            w.direction == Direction::Up,
            std::cmp::Reverse(config.pool(*p).priority_level),
            p.index(),
        )
    });
    wants
        .into_iter()
        .filter_map(|(p, mut w)| {
            if w.direction == Direction::Up {
                let granted = u64::from(w.count).min(room);
                room -= granted;
                if granted == 0 {
                    return None;
                }
                w.count = granted as u32;
            }
            Some((p, w))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            sample_ms: 100,
            window_ms: 300,
            up_cooldown_ms: 1_000,
            down_cooldown_ms: 2_000,
            max_step: 5,
            ..ScalingPolicy::default()
        }
    }

    fn state(samples: &[(u64, u64, u64)], t0: u64) -> PoolState {
        let mut st = PoolState::default();
        for (i, &(live, busy, queued)) in samples.iter().enumerate() {
            st.record(
                Sample {
                    at: t0 + i as u64 * 100,
                    live,
                    held: 0,
                    busy,
                    queued,
                    oldest_wait_ms: 0,
                },
                300,
            );
        }
        st
    }

    #[test]
    fn one_busy_sample_is_not_a_trend() {
        let st = state(&[(4, 4, 10)], 0);
        assert_eq!(decide(&policy(), 1, 20, None, &st, 0), None);
    }

    #[test]
    fn sustained_load_grows_the_pool_by_at_most_max_step() {
        let st = state(&[(4, 4, 10), (4, 4, 12), (4, 4, 14)], 0);
        let w = decide(&policy(), 1, 20, None, &st, 200).unwrap();
        assert_eq!(
            (w.direction, w.count, w.reason),
            (Direction::Up, 5, "utilization")
        );
        // Never above max.
        let w = decide(&policy(), 1, 6, None, &st, 200).unwrap();
        assert_eq!(w.count, 2);
    }

    #[test]
    fn cooldowns_stop_flapping() {
        let mut st = state(&[(4, 0, 0), (4, 0, 0), (4, 0, 0)], 10_000);
        st.last_up = Some(9_500); // grew 500 ms ago; up cooldown is 1 s
        assert_eq!(decide(&policy(), 1, 20, None, &st, 10_200), None);
        st.last_up = Some(9_000);
        let w = decide(&policy(), 1, 20, None, &st, 10_200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Down, 3));
        st.last_down = Some(10_200);
        let busy = state(&[(1, 1, 9), (1, 1, 9), (1, 1, 9)], 11_000);
        let busy = PoolState {
            last_down: st.last_down,
            ..busy
        };
        assert_eq!(
            decide(&policy(), 1, 20, None, &busy, 11_200),
            None,
            "down cooldown 2 s"
        );
        assert!(decide(&policy(), 1, 20, None, &busy, 12_200).is_some());
    }

    #[test]
    fn shrinking_needs_a_whole_quiet_window_and_stops_at_min() {
        let st = state(&[(6, 0, 0), (6, 3, 0), (6, 0, 0)], 0);
        assert_eq!(decide(&policy(), 2, 20, None, &st, 200), None);
        let st = state(&[(6, 0, 0), (6, 0, 0), (6, 0, 0)], 0);
        let w = decide(&policy(), 2, 20, None, &st, 200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Down, 4));
    }

    #[test]
    fn below_min_is_topped_up_at_once_and_requests_in_flight_count() {
        let mut st = state(&[(1, 0, 0)], 0);
        st.last_up = Some(0);
        let w = decide(&policy(), 3, 20, None, &st, 0).unwrap();
        assert_eq!(
            (w.direction, w.count, w.reason),
            (Direction::Up, 2, "below_min")
        );
        st.pending_up = 2;
        assert_eq!(decide(&policy(), 3, 20, None, &st, 0), None);
    }

    #[test]
    fn failed_agents_keep_their_places_against_max() {
        // 10 live and 1 failed in a pool of at most 12: room for one more,
        // whatever the load asks (the registration bound counts the failed one).
        let mut st = state(&[(10, 10, 40), (10, 10, 40), (10, 10, 40)], 0);
        for s in st.samples.iter_mut() {
            s.held = 1;
        }
        let w = decide(&policy(), 1, 12, None, &st, 200).unwrap();
        assert_eq!((w.direction, w.count), (Direction::Up, 1));
        // Full once the failed ones are counted: nothing to ask for.
        for s in st.samples.iter_mut() {
            s.held = 2;
        }
        assert_eq!(decide(&policy(), 1, 12, None, &st, 200), None);
        // Below min with no room: no request that could not be fulfilled.
        let mut st = state(&[(1, 0, 0)], 0);
        st.samples.back_mut().unwrap().held = 3;
        assert_eq!(decide(&policy(), 2, 4, None, &st, 0), None);
    }

    #[test]
    fn a_pool_nobody_answers_waits_longer_each_time_before_asking_again() {
        let mut st = state(&[(0, 0, 0)], 0);
        st.unanswered = 1;
        st.retry_at = Some(5_000);
        assert_eq!(decide(&policy(), 2, 20, None, &st, 4_999), None);
        let w = decide(&policy(), 2, 20, None, &st, 5_000).unwrap();
        assert_eq!((w.direction, w.reason), (Direction::Up, "below_min"));
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(30_000, n)).collect();
        assert_eq!(
            delays,
            [30_000, 60_000, 120_000, 240_000, 480_000, 600_000, 600_000]
        );
        assert_eq!(retry_delay(30_000, u32::MAX), MAX_RETRY_MS);
        // Backing off stops growth, not shrinking.
        let mut quiet = state(&[(6, 0, 0), (6, 0, 0), (6, 0, 0)], 0);
        quiet.retry_at = Some(u64::MAX);
        let w = decide(&policy(), 2, 20, None, &quiet, 200).unwrap();
        assert_eq!(w.direction, Direction::Down);
    }

    #[test]
    fn a_manual_size_replaces_demand() {
        let st = state(&[(2, 2, 50), (2, 2, 50), (2, 2, 50)], 0);
        let w = decide(&policy(), 1, 20, Some(5), &st, 200).unwrap();
        assert_eq!((w.count, w.reason), (3, "manual"));
        let st = state(&[(5, 5, 50), (5, 5, 50), (5, 5, 50)], 0);
        assert_eq!(decide(&policy(), 1, 20, Some(5), &st, 200), None);
    }

    #[test]
    fn the_fleet_cap_goes_to_the_higher_priority_pool_first() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/fleet.toml"
        ))
        .unwrap();
        let c = Config::parse("fleet.toml", &text).unwrap();
        let up = |count| Want {
            direction: Direction::Up,
            count,
            reason: "utilization",
        };
        // coder is priority 8, ui lower.
        assert!(c.pool(PoolType::Coder).priority_level > c.pool(PoolType::Ui).priority_level);
        let got = share_cap(&c, vec![(PoolType::Ui, up(4)), (PoolType::Coder, up(4))], 5);
        assert_eq!(got, vec![(PoolType::Coder, up(4)), (PoolType::Ui, up(1))]);
    }
}

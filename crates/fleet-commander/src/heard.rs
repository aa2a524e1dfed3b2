//! How far the commander has heard the fleet: a time before which every
//! message published to it has been read *and* handled. The failure
//! detector judges silence against this, not against the clock, so that a
//! backlog in the commander itself (a flood, a slow spell) never makes it
//! declare dead an agent whose heartbeat is still queued inside it.
//!
//! The commander publishes a tick to itself every few milliseconds
//! (`Channels::ticks`), carrying a random token it remembers with the time
//! it sent it. Redis delivers a subscriber's messages in the order they were
//! published, so reading a tick proves that everything published before the
//! tick was sent has been read: `caught_up` becomes the tick's time. (The
//! token is unguessable and used once, so a tick forged or replayed by
//! someone else moves nothing.) Each message read is stamped with
//! `caught_up` and numbered; the handlers finish them in any order. The
//! watermark is the stamp of the oldest message not yet finished, or, with
//! none in flight, `caught_up`.
//!
//! It also keeps the spans in which the commander may have missed messages
//! (`Deaf`): not subscribed (from the last time it had read everything to
//! the re-subscription, because Redis discards what it had buffered for a
//! dropped subscriber), or out of timely contact with Redis. Silence counts
//! only while listening: an agent is dead when the time *listened* since its
//! last heartbeat exceeds the window. A deaf spell therefore postpones
//! detection by its own length, and no more; a subscriber that Redis drops
//! every two seconds delays detection by the few milliseconds each
//! reconnection takes, instead of restarting the window each time.

use fleet_protocol::now_ms;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Heard {
    /// Messages read, not yet handled: sequence number -> stamp.
    inflight: Mutex<BTreeMap<u64, u64>>,
    next_seq: AtomicU64,
    /// Every message published before this time (ms) has been read.
    caught_up: AtomicU64,
    /// Ticks sent and not yet read back: token, time sent.
    ticks: Mutex<VecDeque<(String, u64)>>,
    /// When messages may have been missed.
    deaf: Mutex<Deaf>,
}

/// One message's place in the watermark; finishing it (or dropping it)
/// takes it out.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    heard: &'a Heard,
    seq: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.heard
            .inflight
            .lock()
            .expect("no panics while held")
            .remove(&self.seq);
    }
}

impl Heard {
    /// A tick to publish: its payload (a fresh token), remembered with
    /// the time it is sent.
    pub(crate) fn tick(&self) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut sent = self.ticks.lock().expect("no panics while held");
        while sent.len() >= MAX_TICKS_IN_FLIGHT {
            sent.pop_front(); // lost on the way: forget the oldest
        }
        sent.push_back((token.clone(), now_ms()));
        token
    }

    /// A tick was read: caught up to when it was sent (if it is ours).
    pub(crate) fn ticked(&self, payload: &[u8]) {
        let mut sent = self.ticks.lock().expect("no panics while held");
        let Some(i) = sent.iter().position(|(t, _)| t.as_bytes() == payload) else {
            return;
        };
        let (_, at) = sent[i];
        sent.drain(..=i);
        self.caught_up.fetch_max(at, Ordering::AcqRel);
    }

    /// The message that arrived goes to a handler: its number and stamp.
    pub(crate) fn read(&self) -> (u64, u64) {
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        let stamp = self.caught_up.load(Ordering::Acquire);
        self.inflight
            .lock()
            .expect("no panics while held")
            .insert(seq, stamp);
        (seq, stamp)
    }

    /// The handle on message `seq`: dropping it marks the message handled.
    pub(crate) fn ticket(&self, seq: u64) -> Ticket<'_> {
        Ticket { heard: self, seq }
    }

    /// Every message published before this time (ms) has been handled.
    pub(crate) fn through(&self) -> u64 {
        let oldest = self
            .inflight
            .lock()
            .expect("no panics while held")
            .first_key_value()
            .map(|(_, stamp)| *stamp);
        oldest.unwrap_or_else(|| self.caught_up.load(Ordering::Acquire))
    }

    /// Every message published before this time (ms) has been read.
    pub(crate) fn caught_up(&self) -> u64 {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Messages may be missed from `since` on, for `cause`.
    pub(crate) fn deaf(&self, cause: Deafness, since: u64) {
        self.deaf
            .lock()
            .expect("no panics while held")
            .begin(cause, since);
    }

    /// Hearing again, for `cause`.
    pub(crate) fn hearing(&self, cause: Deafness, now: u64) {
        self.deaf
            .lock()
            .expect("no panics while held")
            .end(cause, now);
    }

    /// See [`Deaf::cutoff`], judged at [`Heard::through`].
    pub(crate) fn cutoff(&self, window: u64, now: u64) -> Option<u64> {
        let heard = self.through().min(now);
        self.deaf
            .lock()
            .expect("no panics while held")
            .cutoff(heard, window)
    }

    /// Messages read and not yet handled.
    pub(crate) fn backlog(&self) -> usize {
        self.inflight.lock().expect("no panics while held").len()
    }
}

/// Why the commander may have missed messages; each cause opens and closes
/// its own span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deafness {
    /// Not subscribed.
    Unsubscribed = 0,
    /// Redis failed, stalled or answered too slowly.
    NoContact = 1,
}

/// Spans of time (ms) in which messages may have been missed.
#[derive(Debug, Default)]
pub(crate) struct Deaf {
    /// When the commander first listened (0: never yet). Nothing before it
    /// was heard.
    origin: u64,
    /// Open spans, by cause: their start.
    open: [Option<u64>; 2],
    /// Closed spans, ordered and disjoint.
    spans: VecDeque<(u64, u64)>,
}

/// Ticks awaited at most (more means they are being lost).
const MAX_TICKS_IN_FLIGHT: usize = 256;

/// Closed spans kept, at most; older ones move the origin forward.
const MAX_SPANS: usize = 4096;

impl Deaf {
    /// From `since` on, messages may be missed (kept if already deaf
    /// for this cause).
    pub(crate) fn begin(&mut self, cause: Deafness, since: u64) {
        let slot = &mut self.open[cause as usize];
        if slot.is_none() {
            *slot = Some(since);
        }
    }

    /// Hearing again at `now` (for this cause). The first time anything is
    /// heard sets the origin.
    pub(crate) fn end(&mut self, cause: Deafness, now: u64) {
        if self.origin == 0 {
            if cause == Deafness::Unsubscribed {
                self.origin = now;
                self.open[cause as usize] = None;
            }
            return;
        }
        if let Some(start) = self.open[cause as usize].take() {
            self.insert(start.min(now), now);
        }
    }

    fn insert(&mut self, start: u64, end: u64) {
        // Spans come roughly in time order: merge from the back.
        let mut start = start;
        let mut end = end;
        while let Some(&(s, e)) = self.spans.back() {
            if e < start {
                break;
            }
            start = start.min(s);
            end = end.max(e);
            self.spans.pop_back();
        }
        self.spans.push_back((start, end));
        while self.spans.len() > MAX_SPANS {
            if let Some((_, e)) = self.spans.pop_front() {
                self.origin = self.origin.max(e);
            }
        }
    }

    /// The heartbeat time before which an agent has been silent for more
    /// than `window` ms of listening, judged at `heard` (crate::heard); None
    /// while deaf, or before a full window has been listened to.
    pub(crate) fn cutoff(&self, heard: u64, window: u64) -> Option<u64> {
        if self.origin == 0 || self.open.iter().any(Option::is_some) {
            return None;
        }
        let mut remaining = window;
        let mut t = heard;
        for &(s, e) in self.spans.iter().rev() {
            if s >= t {
                continue; // after the point judged
            }
            let listened = t.saturating_sub(e);
            if listened >= remaining {
                return Some(t - remaining);
            }
            remaining -= listened;
            t = s;
        }
        let listened = t.saturating_sub(self.origin);
        (listened >= remaining).then(|| t - remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaf_spells_postpone_detection_by_their_length_only() {
        let mut d = Deaf::default();
        assert_eq!(d.cutoff(10_000, 1000), None, "never listened");
        d.end(Deafness::Unsubscribed, 1000);
        assert_eq!(d.cutoff(1500, 1000), None, "listened 500 ms only");
        assert_eq!(d.cutoff(2000, 1000), Some(1000));
        // Dropped every 200 ms for 10 ms each: 50 ms lost per second.
        for k in 0..20 {
            let at = 2000 + k * 200;
            d.begin(Deafness::Unsubscribed, at);
            assert_eq!(d.cutoff(at + 5, 1000), None, "deaf now");
            d.end(Deafness::Unsubscribed, at + 10);
        }
        assert_eq!(
            d.cutoff(6000, 1000),
            Some(4950),
            "1000 ms listened back from 6000 skips five 10 ms spells"
        );
        // Two causes overlap: one span.
        d.begin(Deafness::NoContact, 7000);
        d.begin(Deafness::Unsubscribed, 7100);
        d.end(Deafness::NoContact, 7200);
        assert_eq!(d.cutoff(7300, 1000), None, "still unsubscribed");
        d.end(Deafness::Unsubscribed, 7300);
        assert_eq!(d.cutoff(8000, 1000), Some(6700), "700 after, 300 before");
        assert_eq!(d.spans.back(), Some(&(7000, 7300)));
    }

    #[test]
    fn the_watermark_waits_for_the_oldest_message_in_flight() {
        let h = Heard::default();
        assert_eq!(h.through(), 0, "nothing read back yet");
        let first = h.tick();
        let sent = now_ms();
        h.ticked(b"forged");
        assert_eq!(h.through(), 0, "not our tick");
        h.ticked(first.as_bytes());
        let t0 = h.through();
        assert!(t0 > 0 && t0 <= sent);
        let (a, stamp_a) = h.read();
        let (b, _) = h.read();
        assert_eq!(stamp_a, t0, "stamped with the last tick read");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = h.tick();
        h.ticked(second.as_bytes());
        assert!(h.caught_up() >= t0 + 5);
        assert_eq!(h.through(), stamp_a, "a and b in flight");
        drop(h.ticket(b)); // b done, a still in flight
        assert_eq!(h.through(), stamp_a);
        drop(h.ticket(a));
        assert!(h.through() >= t0 + 5, "nothing in flight: the last tick");
        assert_eq!(h.backlog(), 0);
        // A tick read back again (a replay) moves nothing.
        let third = h.tick();
        let before = h.caught_up();
        h.ticked(first.as_bytes());
        assert_eq!(h.caught_up(), before);
        h.ticked(third.as_bytes());
        assert!(h.caught_up() >= before);
    }
}

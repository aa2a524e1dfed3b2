//! How far the commander has heard the fleet: a time before which every
//! message published to it has been read *and* handled. The failure
//! detector judges silence against this, not against the clock, so that a
//! backlog in the commander itself (a flood, a slow spell) never makes it
//! declare dead an agent whose heartbeat is still queued inside it.
//!
//! The subscriber stamps each message with the last time it found nothing
//! more to read (everything published before then had been read, so it
//! stands at or before this message in the stream). Messages are numbered in
//! the order read; the handlers finish them in any order. The watermark is
//! the stamp of the oldest message not yet finished, or, with none in
//! flight, the subscriber's own caught-up time (now, while it waits).

use fleet_protocol::now_ms;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Heard {
    /// Messages read, not yet handled: sequence number -> stamp.
    inflight: Mutex<BTreeMap<u64, u64>>,
    next_seq: AtomicU64,
    /// The last time the subscriber had read everything (ms).
    caught_up: AtomicU64,
    /// The subscriber is waiting for a message: caught up now.
    waiting: AtomicBool,
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
    /// The subscriber waits for the next message: it has read everything.
    pub(crate) fn waiting(&self) {
        self.caught_up.store(now_ms(), Ordering::Release);
        self.waiting.store(true, Ordering::Release);
    }

    /// A message came; `after_wait` when the subscriber had been waiting
    /// for it (then nothing was pending before it).
    pub(crate) fn arrived(&self, after_wait: bool) {
        if after_wait {
            self.caught_up.store(now_ms(), Ordering::Release);
        }
        self.waiting.store(false, Ordering::Release);
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
        match oldest {
            Some(stamp) => stamp,
            None if self.waiting.load(Ordering::Acquire) => now_ms(),
            None => self.caught_up.load(Ordering::Acquire),
        }
    }

    /// Messages read and not yet handled.
    pub(crate) fn backlog(&self) -> usize {
        self.inflight.lock().expect("no panics while held").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_message_in_flight() {
        let h = Heard::default();
        h.waiting();
        let t0 = h.through();
        assert!(t0 > 0 && t0 <= now_ms());
        h.arrived(true);
        let (a, stamp_a) = h.read();
        h.arrived(false);
        let (b, _) = h.read(); // read at once: stamped like a
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(h.through(), stamp_a, "a and b in flight");
        drop(h.ticket(b)); // b done, a still in flight
        assert_eq!(h.through(), stamp_a);
        drop(h.ticket(a));
        assert_eq!(
            h.through(),
            stamp_a,
            "nothing in flight, not waiting: last caught up"
        );
        h.waiting();
        assert!(h.through() >= stamp_a + 5, "waiting: caught up now");
        assert_eq!(h.backlog(), 0);
    }
}

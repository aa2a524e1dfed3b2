//! The fleet's recent past, as this commander sampled it: every status
//! interval (5 s) while it leads, the tasks completed and failed so far, the
//! agents live and busy, the tasks queued. The last hour is kept in memory
//! (`GET /v1/history`), so the console's charts survive a reload; a standby,
//! or a commander just started, has only what it sampled itself.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Samples kept: an hour at the shipped 5 s.
const KEEP: usize = 720;

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub ts: u64,
    /// Tasks completed since this commander started (results it handled).
    pub completed: u64,
    /// Attempts failed since this commander started.
    pub failed: u64,
    pub live: u64,
    pub busy: u64,
    pub queued: u64,
}

/// The samples, and the counters they read.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl History {
    pub(crate) fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a sample of the fleet now.
    pub(crate) fn record(&self, ts: u64, live: u64, busy: u64, queued: u64) {
        let s = Sample {
            ts,
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            live,
            busy,
            queued,
        };
        let mut all = self.samples.lock().expect("no panics while held");
        all.push_back(s);
        while all.len() > KEEP {
            all.pop_front();
        }
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("no panics while held")
            .iter()
            .copied()
            .collect()
    }
}

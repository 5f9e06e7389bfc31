//! Counters a pipeline keeps as it runs; read by logs, tests and summaries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub records_in: AtomicU64,
    pub rows_written: AtomicU64,
    /// Keys deleted (rows or documents).
    pub deletes: AtomicU64,
    pub dead_letters: AtomicU64,
    pub sink_retries: AtomicU64,
    /// Records skipped because the sink's stored offsets say they were
    /// written before (offsets in the sink's transaction).
    pub already_written: AtomicU64,
    /// Batches whose whole-batch plugin call failed and were split.
    pub failing_batches: AtomicU64,
    /// Why the pipeline is paused (plugin removed or quarantined), if it is.
    pub paused: Mutex<Option<String>>,
    /// What keeps failing while it is retried, per cause, and since when:
    /// the pipeline is degraded until every cause succeeded again.
    degraded: Mutex<BTreeMap<Trouble, String>>,
    /// Content hash of the plugin version serving the last batch.
    pub serving: Mutex<Option<String>>,
    /// File change seen -> first batch served by the new version; the
    /// latest `KEPT_LATENCIES`.
    pub reload_latencies: Mutex<Vec<Duration>>,
}

/// Something a pipeline retries until it works; each is cleared only by
/// its own success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trouble {
    /// Writing to a sink, preparing it, or reading offsets stored in it.
    Sink,
    /// Committing offsets to the source.
    Commit,
}

/// How many reload latencies `Stats` keeps.
pub const KEPT_LATENCIES: usize = 1000;

/// A point-in-time copy of `Stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub batches: u64,
    pub records_in: u64,
    pub rows_written: u64,
    pub deletes: u64,
    pub dead_letters: u64,
    pub sink_retries: u64,
    pub already_written: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            batches: self.batches.load(Relaxed),
            records_in: self.records_in.load(Relaxed),
            rows_written: self.rows_written.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            sink_retries: self.sink_retries.load(Relaxed),
            already_written: self.already_written.load(Relaxed),
        }
    }

    /// Sets or clears the pause reason; true if that changed it.
    pub(crate) fn pause(&self, why: Option<String>) -> bool {
        let mut paused = self.paused.lock().unwrap();
        let changed = paused.is_some() != why.is_some();
        *paused = why;
        changed
    }

    /// Marks the pipeline degraded: `what` keeps failing while retried.
    pub(crate) fn set_degraded(&self, what: Trouble, why: String) {
        self.degraded.lock().unwrap().insert(what, why);
    }

    /// `what` works again; true if it was failing.
    pub(crate) fn clear_degraded(&self, what: Trouble) -> bool {
        self.degraded.lock().unwrap().remove(&what).is_some()
    }

    /// What keeps failing, if anything: every cause, `; `-separated.
    pub fn degraded(&self) -> Option<String> {
        let degraded = self.degraded.lock().unwrap();
        (!degraded.is_empty()).then(|| degraded.values().cloned().collect::<Vec<_>>().join("; "))
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_cleared_only_by_its_own_success() {
        let stats = Stats::default();
        stats.set_degraded(Trouble::Commit, "committing offsets: broker down".into());
        stats.set_degraded(Trouble::Sink, "writing batch: refused".into());
        assert!(stats.clear_degraded(Trouble::Sink), "the sink was failing");
        assert_eq!(
            stats.degraded().as_deref(),
            Some("committing offsets: broker down"),
            "a successful write leaves the pending commit failure"
        );
        assert!(!stats.clear_degraded(Trouble::Sink));
        assert!(stats.clear_degraded(Trouble::Commit));
        assert_eq!(stats.degraded(), None);
    }
}

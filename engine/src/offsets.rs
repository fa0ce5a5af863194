//! Offset tracker: the commit watermark of one partition when records finish
//! out of order.
//!
//! Records of a partition are handed to the dispatcher in offset order but
//! finish (delivered, dropped, dead-lettered) in any order: a slow target or
//! a retry holds one offset while later ones complete. The watermark is the
//! lowest offset not yet finished — the next offset a restarted consumer must
//! read — so committing it never skips an unfinished record (at-least-once).
//! A record sent to several targets finishes when its last copy does.
//!
//! [`Partition`] wraps one partition's tracker with its in-flight window
//! (`pipeline.max_inflight_records`: a worker waits for room before it
//! hands on a batch) and the key bindings that keep per-key order
//! (`delivery.key_order = "strict"`), and stores each new watermark in the
//! consumer.

use crate::metrics::Metrics;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Pending offsets of one partition.
///
/// Offsets are tracked in increasing order, so they sit in a ring buffer
/// sorted by offset: finishing one is a binary search, and the watermark is
/// the front once finished entries are popped. No allocation per record
/// (a `BTreeMap` insert and remove per record showed in `cdrs bench`'s
/// profile).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// `(offset, copies still unfinished, record timestamp ms or 0)` in
    /// offset order; finished entries (0 copies) stay until they reach the
    /// front.
    entries: VecDeque<(i64, u32, i64)>,
    /// Entries with unfinished copies.
    unfinished: usize,
    /// One past the highest offset ever tracked; the watermark when nothing is
    /// pending. `None` until the first record.
    next: Option<i64>,
    /// The last watermark handed out by [`OffsetTracker::advanced`].
    stored: Option<i64>,
    /// Timestamp of the last record tracked, ms (0: none or unknown).
    last_ts: i64,
}

impl OffsetTracker {
    /// Starts tracking `offset` with `copies` unfinished copies (0: already
    /// finished, e.g. dropped by a filter). Offsets must be tracked in
    /// increasing order.
    ///
    /// `timestamp_ms`: the record's Kafka timestamp (0 if it has none), for
    /// [`OffsetTracker::oldest_timestamp_ms`].
    pub fn track(&mut self, offset: i64, copies: u32, timestamp_ms: i64) {
        debug_assert!(self.next.is_none_or(|n| offset >= n), "offsets in order");
        if copies > 0 {
            self.entries.push_back((offset, copies, timestamp_ms));
            self.unfinished += 1;
        }
        self.next = Some(offset + 1);
        self.last_ts = timestamp_ms;
    }

    /// Kafka timestamp of the oldest unfinished record, or, when none is
    /// pending, of the last record tracked (ms; `None` if unknown).
    pub fn oldest_timestamp_ms(&self) -> Option<i64> {
        let ts = self.entries.front().map_or(self.last_ts, |e| e.2);
        (ts > 0).then_some(ts)
    }

    fn find(&mut self, offset: i64) -> Option<&mut u32> {
        // Offsets are mostly dense (no record dropped before tracking), so
        // the entry usually sits at `offset - first`: one look instead of a
        // binary search (which was ~4% of the HTTP path's CPU in `perf`).
        let first = self.entries.front()?.0;
        let guess = usize::try_from(offset - first).ok()?;
        let i = match self.entries.get(guess) {
            Some(&(o, _, _)) if o == offset => guess,
            _ => self
                .entries
                .binary_search_by_key(&offset, |&(o, _, _)| o)
                .ok()?,
        };
        Some(&mut self.entries[i].1).filter(|c| **c > 0)
    }

    /// Adds `copies` more unfinished copies to a pending `offset` (a record
    /// re-routed to several targets). No-op for an unknown offset.
    pub fn add_copies(&mut self, offset: i64, copies: u32) {
        if let Some(c) = self.find(offset) {
            *c += copies;
        }
    }

    /// One copy of `offset` finished. Returns true when that was its last.
    pub fn finish(&mut self, offset: i64) -> bool {
        let Some(c) = self.find(offset) else {
            return false;
        };
        *c -= 1;
        if *c > 0 {
            return false;
        }
        self.unfinished -= 1;
        while self.entries.front().is_some_and(|&(_, c, _)| c == 0) {
            self.entries.pop_front();
        }
        true
    }

    /// The next offset to commit: the lowest unfinished one, or one past the
    /// highest tracked when none is pending. `None` before any record.
    pub fn watermark(&self) -> Option<i64> {
        self.entries.front().map(|&(o, _, _)| o).or(self.next)
    }

    /// The watermark if it moved since the last call (what to store now).
    pub fn advanced(&mut self) -> Option<i64> {
        let w = self.watermark()?;
        if self.stored == Some(w) {
            return None;
        }
        self.stored = Some(w);
        Some(w)
    }

    /// Records (offsets) still unfinished.
    pub fn pending(&self) -> usize {
        self.unfinished
    }
}

/// One partition's records in flight: its offset tracker, its in-flight
/// window and where its in-flight keys are bound to (`D`: the dispatcher's
/// destination, a target or the parking queue).
pub struct Partition<D> {
    pub topic: Arc<str>,
    pub partition: i32,
    state: Mutex<PartitionState<D>>,
    window: Semaphore,
    /// Set on revoke/shutdown: the worker takes no new batches.
    pub revoked: AtomicBool,
    /// Stores the watermark (next offset to read) in the consumer.
    store: Box<dyn Fn(i64) + Send + Sync>,
    inflight: prometheus::IntGauge,
}

struct PartitionState<D> {
    tracker: OffsetTracker,
    /// Key hash → where its in-flight copies were sent to last.
    /// Keys are already hashes ([`crate::dispatch::key_hash`]): foldhash
    /// mixes them cheaply where SipHash would hash them again.
    keys: HashMap<u64, KeyRoute<D>, foldhash::fast::FixedState>,
}

struct KeyRoute<D> {
    target: D,
    copies: u32,
}

impl<D: Clone + PartialEq> Partition<D> {
    /// `window`: `pipeline.max_inflight_records`; `store(w)` is called with
    /// each new watermark.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        window: usize,
        metrics: &Metrics,
        store: impl Fn(i64) + Send + Sync + 'static,
    ) -> Arc<Partition<D>> {
        let inflight = metrics
            .partition_inflight
            .with_label_values(&[&*topic, &partition.to_string()]);
        Arc::new(Partition {
            topic,
            partition,
            state: Mutex::new(PartitionState {
                tracker: OffsetTracker::default(),
                keys: HashMap::default(),
            }),
            window: Semaphore::new(window),
            revoked: AtomicBool::new(false),
            store: Box::new(store),
            inflight,
        })
    }

    /// Waits for room for `n` more records in the in-flight window, then
    /// tracks their `(offset, timestamp ms or 0)` (ascending offsets) as
    /// unfinished. False (nothing tracked) if the partition was revoked
    /// meanwhile.
    pub async fn admit(&self, offsets: &[(i64, i64)]) -> bool {
        let n = offsets.len() as u32;
        let permits = self
            .window
            .acquire_many(n)
            .await
            .expect("window semaphore is never closed");
        if self.revoked.load(Ordering::Relaxed) {
            return false;
        }
        permits.forget();
        let mut st = self.state.lock().expect("partition lock");
        for &(o, ts) in offsets {
            st.tracker.track(o, 1, ts);
        }
        self.inflight.add(n.into());
        true
    }

    /// A record finished before routing (dropped or dead-lettered by a filter).
    pub(crate) fn finish_unrouted(&self, offset: i64) {
        self.finish(offset, None);
    }

    /// Kafka timestamp of the oldest record read and not finished, else
    /// of the last one read (ms; `None` if unknown): what
    /// `cdrs_partition_lag_seconds` measures from.
    pub fn oldest_timestamp_ms(&self) -> Option<i64> {
        self.state
            .lock()
            .expect("partition lock")
            .tracker
            .oldest_timestamp_ms()
    }

    /// Whether the in-flight window is full: the worker waits before it
    /// reads on (`pipeline.max_inflight_records`).
    pub fn window_full(&self) -> bool {
        self.window.available_permits() == 0
    }

    /// Records read and not yet finished.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("partition lock").tracker.pending()
    }

    /// One copy of `offset` finished (delivered, dropped, dead-lettered);
    /// `key` if the copy was bound to its key's route.
    pub(crate) fn finish(&self, offset: i64, key: Option<u64>) {
        self.finish_many(&[(offset, key)]);
    }

    /// [`Partition::finish`] for many copies under one lock, with one
    /// release of window permits and at most one offset store.
    pub(crate) fn finish_many(&self, done: &[(i64, Option<u64>)]) {
        let mut st = self.state.lock().expect("partition lock");
        let mut freed = 0;
        for &(offset, key) in done {
            if let Some(h) = key {
                if let Some(k) = st.keys.get_mut(&h) {
                    k.copies -= 1;
                    if k.copies == 0 {
                        st.keys.remove(&h);
                    }
                }
            }
            if st.tracker.finish(offset) {
                freed += 1;
            }
        }
        if freed > 0 {
            self.window.add_permits(freed);
            self.inflight.sub(freed as i64);
        }
        if let Some(w) = st.tracker.advanced() {
            (self.store)(w);
        }
    }

    /// Binds one more copy of each key (hash) to its destination, or — if
    /// the key already has copies in flight — rewrites the destination to
    /// the one they are bound to: they all sit in one lane there, in offset
    /// order, and move together.
    pub(crate) fn bind_keys<'a>(&self, keyed: impl IntoIterator<Item = (u64, &'a mut D)>)
    where
        D: 'a,
    {
        let mut st = self.state.lock().expect("partition lock");
        for (h, target) in keyed {
            let k = st.keys.entry(h).or_insert_with(|| KeyRoute {
                target: target.clone(),
                copies: 0,
            });
            k.copies += 1;
            if k.target != *target {
                *target = k.target.clone();
            }
        }
    }

    /// Where the in-flight copies of the key with hash `key` are bound
    /// ([`crate::dispatch::key_hash`]); `None` if none is in flight. Records
    /// of that key read now follow them there.
    pub fn bound_to(&self, key: u64) -> Option<D> {
        let st = self.state.lock().expect("partition lock");
        st.keys.get(&key).map(|k| k.target.clone())
    }

    /// Adds `extra` unfinished copies of `offset` (fan-out).
    pub(crate) fn add_copies(&self, offset: i64, extra: u32) {
        if extra > 0 {
            let mut st = self.state.lock().expect("partition lock");
            st.tracker.add_copies(offset, extra);
        }
    }

    /// Stores the current watermark now (revoke, shutdown).
    pub fn store_now(&self) {
        let st = self.state.lock().expect("partition lock");
        if let Some(w) = st.tracker.watermark() {
            (self.store)(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_timestamp_is_the_oldest_unfinished_record_else_the_last_read() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.oldest_timestamp_ms(), None);
        t.track(0, 1, 1_000);
        t.track(1, 1, 2_000);
        t.track(2, 0, 0); // dropped by a filter, no timestamp
        t.track(3, 1, 4_000);
        assert_eq!(t.oldest_timestamp_ms(), Some(1_000));
        t.finish(1);
        assert_eq!(t.oldest_timestamp_ms(), Some(1_000), "0 is still out");
        t.finish(0);
        assert_eq!(t.oldest_timestamp_ms(), Some(4_000));
        t.finish(3);
        assert_eq!(t.oldest_timestamp_ms(), Some(4_000), "the last read");
    }

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.watermark(), None);
        for o in 10..15 {
            t.track(o, 1, 0);
        }
        assert_eq!(t.watermark(), Some(10));
        // 11..=13 finish first: the watermark stays at 10.
        for o in [12, 11, 13] {
            assert!(t.finish(o));
        }
        assert_eq!(t.watermark(), Some(10));
        assert!(t.finish(10));
        assert_eq!(t.watermark(), Some(14));
        assert!(t.finish(14));
        assert_eq!(t.watermark(), Some(15));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn copies_and_finished_records() {
        let mut t = OffsetTracker::default();
        t.track(0, 2, 0);
        t.track(1, 0, 0); // dropped by a filter
        assert_eq!(t.watermark(), Some(0));
        assert!(!t.finish(0));
        t.add_copies(0, 1);
        assert!(!t.finish(0));
        assert_eq!(t.watermark(), Some(0));
        assert!(t.finish(0));
        assert_eq!(t.watermark(), Some(2));
        assert!(!t.finish(0), "unknown offsets are ignored");
        assert!(!t.finish(7), "unknown offsets are ignored");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn finished_offsets_in_the_middle_are_not_found_again() {
        let mut t = OffsetTracker::default();
        for o in [3, 5, 8, 9] {
            t.track(o, 1, 0);
        }
        assert!(t.finish(8));
        assert!(!t.finish(8), "already finished");
        t.add_copies(8, 1);
        assert_eq!(t.pending(), 3);
        assert!(t.finish(3));
        assert_eq!(t.watermark(), Some(5));
        assert!(t.finish(5));
        assert_eq!(t.watermark(), Some(9), "8 finished earlier");
        assert!(t.finish(9));
        assert_eq!((t.watermark(), t.pending()), (Some(10), 0));
    }

    #[test]
    fn advanced_reports_each_watermark_once() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.advanced(), None);
        t.track(5, 1, 0);
        assert_eq!(t.advanced(), Some(5));
        assert_eq!(t.advanced(), None);
        t.finish(5);
        assert_eq!(t.advanced(), Some(6));
    }

    /// Against a plain model: offsets with gaps (records dropped before
    /// tracking) and some with two copies, finished in a shuffled order;
    /// the watermark is always the lowest offset with copies left.
    #[test]
    fn sparse_offsets_finished_in_any_order_match_a_model() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = OffsetTracker::default();
            let mut left: std::collections::BTreeMap<i64, u32> = Default::default();
            let mut copies_list = Vec::new();
            for offset in 100..400 {
                let copies = [0, 1, 1, 1, 2][rng.usize(..5)];
                t.track(offset, copies, 0);
                if copies > 0 {
                    left.insert(offset, copies);
                    copies_list.extend(std::iter::repeat_n(offset, copies as usize));
                }
            }
            rng.shuffle(&mut copies_list);
            for offset in copies_list {
                let c = left.get_mut(&offset).unwrap();
                *c -= 1;
                let last = *c == 0;
                if last {
                    left.remove(&offset);
                }
                assert_eq!(t.finish(offset), last, "seed {seed}, offset {offset}");
                assert!(!t.finish(1_000), "unknown offset");
                let want = left.keys().next().copied().unwrap_or(400);
                assert_eq!(t.watermark(), Some(want), "seed {seed}");
            }
            assert_eq!(t.pending(), 0);
        }
    }
}

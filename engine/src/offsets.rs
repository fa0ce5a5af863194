//! Offset tracker: the commit watermark of one partition when records finish
//! out of order.
//!
//! Records of a partition are handed to the dispatcher in offset order but
//! finish (delivered, dropped, dead-lettered) in any order: a slow target or
//! a retry holds one offset while later ones complete. The watermark is the
//! lowest offset not yet finished — the next offset a restarted consumer must
//! read — so committing it never skips an unfinished record (at-least-once).
//! A record sent to several targets finishes when its last copy does.

use std::collections::VecDeque;

/// Pending offsets of one partition.
///
/// Offsets are tracked in increasing order, so they sit in a ring buffer
/// sorted by offset: finishing one is a binary search, and the watermark is
/// the front once finished entries are popped. No allocation per record
/// (a `BTreeMap` insert and remove per record showed in `cdrs bench`'s
/// profile).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// `(offset, copies still unfinished)` in offset order; finished
    /// entries (0 copies) stay until they reach the front.
    entries: VecDeque<(i64, u32)>,
    /// Entries with unfinished copies.
    unfinished: usize,
    /// One past the highest offset ever tracked; the watermark when nothing is
    /// pending. `None` until the first record.
    next: Option<i64>,
    /// The last watermark handed out by [`OffsetTracker::advanced`].
    stored: Option<i64>,
}

impl OffsetTracker {
    /// Starts tracking `offset` with `copies` unfinished copies (0: already
    /// finished, e.g. dropped by a filter). Offsets must be tracked in
    /// increasing order.
    pub fn track(&mut self, offset: i64, copies: u32) {
        debug_assert!(self.next.is_none_or(|n| offset >= n), "offsets in order");
        if copies > 0 {
            self.entries.push_back((offset, copies));
            self.unfinished += 1;
        }
        self.next = Some(offset + 1);
    }

    fn find(&mut self, offset: i64) -> Option<&mut u32> {
        let i = self
            .entries
            .binary_search_by_key(&offset, |&(o, _)| o)
            .ok()?;
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
        while self.entries.front().is_some_and(|&(_, c)| c == 0) {
            self.entries.pop_front();
        }
        true
    }

    /// The next offset to commit: the lowest unfinished one, or one past the
    /// highest tracked when none is pending. `None` before any record.
    pub fn watermark(&self) -> Option<i64> {
        self.entries.front().map(|&(o, _)| o).or(self.next)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.watermark(), None);
        for o in 10..15 {
            t.track(o, 1);
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
        t.track(0, 2);
        t.track(1, 0); // dropped by a filter
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
            t.track(o, 1);
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
        t.track(5, 1);
        assert_eq!(t.advanced(), Some(5));
        assert_eq!(t.advanced(), None);
        t.finish(5);
        assert_eq!(t.advanced(), Some(6));
    }
}

//! What a replayable source must remember so that a restarted job produces exactly what an
//! uninterrupted one would.
//!
//! A [`Tracker`] follows one source partition. For every window still open it keeps the offset
//! of the partition's first record in that window; for late values and rejects it keeps the
//! timely time they were emitted at. Given a *frontier* `F` — every window ending before `F`
//! has been written durably by every sink — [`Tracker::checkpoint`] says where reading must
//! resume: the first record whose output is not yet durable. Records between that offset and
//! the read position of the moment are read again after a restart; [`Replay`] tells which of
//! them are already in the output (values of windows ending before `F`) and must be skipped,
//! and which were late by the combined watermark (a wall-clock matter a replay cannot
//! reconstruct) so they are late again.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

/// Where one partition resumes, and how to treat what it reads again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// The topic (or other source name).
    pub source: String,
    pub partition: i32,
    /// The offset to resume reading at.
    pub offset: i64,
    /// The partition's largest event time before `offset` (restores its watermark).
    pub max_ts: Option<i64>,
    /// Records in `offset..replay_until` were read before the checkpoint.
    pub replay_until: i64,
    /// Offsets in `offset..replay_until` whose values were late by the combined watermark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<i64>,
}

/// How a partition treats records it reads again after a restart.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// Records before this offset were read before the checkpoint.
    pub until: i64,
    /// Windows ending before this (ns) are already in the output.
    pub frontier: i64,
    /// Offsets that were late by the combined watermark.
    pub late: FxHashSet<i64>,
}

/// A record's first offset in a window or batch of side output, and the partition's largest
/// event time before it.
type Mark = (i64, Option<i64>);

/// Checkpoint bookkeeping of one partition (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    /// Window end → first record of the partition in that window.
    windows: BTreeMap<i64, Mark>,
    /// The window of the last record noted, to skip the map for runs of one window.
    last_window: Option<i64>,
    /// Side output (late values, rejects) by the timely time it was emitted at.
    side: VecDeque<(u64, Mark)>,
    /// Side output of the batch being read, not yet stamped with its time.
    pending_side: Option<Mark>,
    /// Offsets late by the combined watermark only, in reading order.
    combined_late: Vec<i64>,
    replay: Option<Replay>,
}

impl Tracker {
    /// A tracker resuming from `checkpoint`, whose windows before `frontier` are written.
    pub fn resumed(checkpoint: &PartitionCheckpoint, frontier: i64) -> Tracker {
        let replay = (checkpoint.replay_until > checkpoint.offset).then(|| Replay {
            until: checkpoint.replay_until,
            frontier,
            late: checkpoint.late.iter().copied().collect(),
        });
        Tracker { replay, ..Tracker::default() }
    }

    /// The replay rule for a record at `offset`, if it was read before the checkpoint.
    #[inline]
    pub fn replaying(&self, offset: i64) -> Option<&Replay> {
        self.replay.as_ref().filter(|r| offset < r.until)
    }

    /// A value at `offset` went into the window ending at `window_end`.
    #[inline]
    pub fn note_window(&mut self, window_end: i64, offset: i64, max_ts_before: Option<i64>) {
        if self.last_window == Some(window_end) {
            return;
        }
        self.last_window = Some(window_end);
        self.windows.entry(window_end).or_insert((offset, max_ts_before));
    }

    /// A record at `offset` produced a late value or a reject.
    #[inline]
    pub fn note_side(&mut self, offset: i64, max_ts_before: Option<i64>) {
        if self.pending_side.is_none() {
            self.pending_side = Some((offset, max_ts_before));
        }
    }

    /// A value at `offset` was late by the combined watermark only.
    pub fn note_combined_late(&mut self, offset: i64) {
        if self.combined_late.last() != Some(&offset) {
            self.combined_late.push(offset);
        }
    }

    /// The side output of the batch just read is emitted at timely time `time`.
    pub fn stamp_side(&mut self, time: u64) {
        if let Some(mark) = self.pending_side.take() {
            self.side.push_back((time, mark));
        }
    }

    /// Open windows and side batches held (for status and tests).
    pub fn held(&self) -> usize {
        self.windows.len() + self.side.len()
    }

    /// Where this partition resumes given `frontier`, with `next` the offset after the last
    /// record read and `max_ts` the partition's largest event time now. Forgets what the
    /// frontier made durable.
    pub fn checkpoint(
        &mut self,
        source: &str,
        partition: i32,
        frontier: i64,
        next: i64,
        max_ts: Option<i64>,
    ) -> PartitionCheckpoint {
        self.windows = self.windows.split_off(&frontier);
        self.last_window = None;
        let frontier_time = frontier.max(0) as u64;
        while self.side.front().is_some_and(|(t, _)| *t < frontier_time) {
            self.side.pop_front();
        }
        // Side output read but not emitted yet (`pending_side`) cannot be durable either.
        let mut resume: Mark = (next, max_ts);
        for mark in self.windows.values().chain(self.side.iter().map(|(_, m)| m)).chain(&self.pending_side) {
            if mark.0 < resume.0 {
                resume = *mark;
            }
        }
        self.combined_late.retain(|&o| o >= resume.0);
        let mut late = self.combined_late.clone();
        let mut replay_until = next;
        if let Some(r) = &self.replay {
            if next < r.until {
                // The earlier replay is not finished: what it would skip must stay skipped.
                replay_until = r.until;
                late.extend(r.late.iter().copied().filter(|&o| o >= resume.0 && o >= next));
            } else {
                self.replay = None;
            }
        }
        late.sort_unstable();
        late.dedup();
        PartitionCheckpoint {
            source: source.to_string(),
            partition,
            offset: resume.0,
            max_ts: resume.1,
            replay_until,
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_at_the_first_record_of_an_open_window() {
        let mut t = Tracker::default();
        // Offsets 0..3 in window 10, 3..5 in window 20, 5 in window 10 again (out of order).
        for (o, w) in [(0, 10), (1, 10), (2, 10), (3, 20), (4, 20), (5, 10)] {
            t.note_window(w, o, Some(o));
        }
        let c = t.checkpoint("t", 0, 5, 6, Some(99));
        assert_eq!((c.offset, c.max_ts, c.replay_until), (0, Some(0), 6));
        // Window 10 durable: resume at window 20's first record.
        let c = t.checkpoint("t", 0, 11, 6, Some(99));
        assert_eq!((c.offset, c.max_ts), (3, Some(3)));
        // Everything durable: resume after the last record read.
        let c = t.checkpoint("t", 0, 21, 6, Some(99));
        assert_eq!((c.offset, c.max_ts), (6, Some(99)));
    }

    #[test]
    fn side_output_holds_the_offset_until_durable() {
        let mut t = Tracker::default();
        t.note_window(30, 10, None);
        t.note_side(4, None);
        t.stamp_side(15);
        assert_eq!(t.checkpoint("t", 0, 15, 11, None).offset, 4);
        assert_eq!(t.checkpoint("t", 0, 16, 11, None).offset, 10);
        t.note_side(11, None);
        // Not yet stamped: still held.
        assert_eq!(t.checkpoint("t", 0, 16, 12, None).offset, 10);
    }

    #[test]
    fn unfinished_replay_is_carried_over() {
        let cp = PartitionCheckpoint {
            source: "t".into(),
            partition: 1,
            offset: 100,
            max_ts: Some(7),
            replay_until: 200,
            late: vec![150],
        };
        let mut t = Tracker::resumed(&cp, 50);
        assert!(t.replaying(199).is_some());
        assert!(t.replaying(200).is_none());
        // Read up to 120, nothing open: resume at 120 but keep skipping up to 200.
        let c = t.checkpoint("t", 1, 50, 120, Some(9));
        assert_eq!((c.offset, c.replay_until, c.late.clone()), (120, 200, vec![150]));
        // Past the replay: it is forgotten.
        let c = t.checkpoint("t", 1, 60, 210, Some(9));
        assert_eq!((c.offset, c.replay_until), (210, 210));
        assert!(t.replaying(150).is_none());
    }
}

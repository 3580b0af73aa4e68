//! Event time: tumbling windows aligned to the epoch, and watermarks kept per source partition.
//!
//! A partition's watermark is the largest event time it has delivered minus the allowed
//! lateness. The combined watermark of a source is the minimum over its partitions, except that
//! a partition idle (no messages) for longer than the idle timeout stops holding it back. A
//! partition that has not delivered anything yet holds the watermark back until it turns idle,
//! so a slow starter does not find its windows already closed.

use std::time::{Duration, Instant};

/// Nanoseconds in a second.
pub const NANOS: i64 = 1_000_000_000;

/// Tumbling windows of `size` nanoseconds, `[k·size, (k+1)·size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub size: i64,
    pub lateness: i64,
}

impl WindowSpec {
    pub fn new(size: Duration, lateness: Duration) -> Self {
        WindowSpec { size: size.as_nanos() as i64, lateness: lateness.as_nanos() as i64 }
    }

    #[inline]
    pub fn start(&self, ts: i64) -> i64 {
        ts.div_euclid(self.size) * self.size
    }

    #[inline]
    pub fn end(&self, ts: i64) -> i64 {
        self.start(ts) + self.size
    }
}

/// The wall clock, ns since the Unix epoch (0 before it).
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[derive(Clone, Debug)]
struct Partition {
    max_ts: Option<i64>,
    last_active: Instant,
    finished: bool,
}

/// Watermarks of the partitions one worker reads.
#[derive(Clone, Debug)]
pub struct Watermarks {
    lateness: i64,
    idle_timeout: Duration,
    parts: Vec<Partition>,
    combined: i64,
    /// The first [`Watermarks::advance`]: a worker that has had no partition since this long
    /// ago is idle.
    since: Option<Instant>,
}

impl Watermarks {
    pub fn new(lateness: i64, idle_timeout: Duration) -> Self {
        Watermarks { lateness, idle_timeout, parts: Vec::new(), combined: i64::MIN, since: None }
    }

    /// Whether nothing this worker reads can move its watermark: it has had no partition for
    /// `idle_timeout`, or every partition not yet finished is idle. Such a worker should not
    /// hold the job back: it may follow the other workers ([`Watermarks::raise_combined`]).
    pub fn idle(&self, now: Instant) -> bool {
        let quiet = |since: Instant| now.saturating_duration_since(since) > self.idle_timeout;
        if self.parts.is_empty() {
            return self.since.is_some_and(quiet);
        }
        let mut open = self.parts.iter().filter(|p| !p.finished).peekable();
        open.peek().is_some() && open.all(|p| quiet(p.last_active))
    }

    /// Registers a partition and returns its slot.
    pub fn add_partition(&mut self, now: Instant) -> usize {
        self.parts.push(Partition { max_ts: None, last_active: now, finished: false });
        self.parts.len() - 1
    }

    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Records activity on a partition (a message arrived), even one without usable timestamps.
    #[inline]
    pub fn touch(&mut self, slot: usize, now: Instant) {
        self.parts[slot].last_active = now;
    }

    /// Records an event time delivered by a partition.
    #[inline]
    pub fn observe(&mut self, slot: usize, ts: i64) {
        let p = &mut self.parts[slot];
        if p.max_ts.is_none_or(|m| ts > m) {
            p.max_ts = Some(ts);
        }
    }

    /// The partition's own watermark (`None` before its first event).
    #[inline]
    pub fn partition_watermark(&self, slot: usize) -> Option<i64> {
        self.parts[slot].max_ts.map(|m| m.saturating_sub(self.lateness))
    }

    /// A partition that reached its end no longer holds the watermark back.
    pub fn finish(&mut self, slot: usize) {
        self.parts[slot].finished = true;
    }

    /// The largest event time of a partition (`None` before its first event).
    pub fn max_event_time(&self, slot: usize) -> Option<i64> {
        self.parts[slot].max_ts
    }

    /// Restores a partition's largest event time from a checkpoint.
    pub fn restore(&mut self, slot: usize, max_ts: Option<i64>) {
        self.parts[slot].max_ts = max_ts;
    }

    /// Raises the combined watermark to at least `watermark` (windows ending at or before it are
    /// closed), as when a job resumes from a checkpoint.
    pub fn raise_combined(&mut self, watermark: i64) {
        self.combined = self.combined.max(watermark);
    }

    /// Whether a value is late by its own partition's watermark alone (deterministic for a
    /// given partition's order, unlike the combined watermark).
    #[inline]
    pub fn is_partition_late(&self, slot: usize, window_end: i64) -> bool {
        self.partition_watermark(slot).is_some_and(|w| window_end <= w)
    }

    /// The lowest watermark among partitions that delivered data (`None` if none did).
    pub fn lowest_partition_watermark(&self) -> Option<i64> {
        self.parts.iter().filter_map(|p| p.max_ts.map(|m| m.saturating_sub(self.lateness))).min()
    }

    /// A value is late if its window ended at or before its partition's watermark, or before
    /// the combined watermark already published (its window has been emitted).
    #[inline]
    pub fn is_late(&self, slot: usize, window_end: i64) -> bool {
        window_end <= self.combined || self.is_partition_late(slot, window_end)
    }

    /// The combined watermark published so far (`i64::MIN` before any).
    pub fn combined(&self) -> i64 {
        self.combined
    }

    /// Recomputes the combined watermark: the minimum over active partitions. Never moves back.
    /// When every partition is idle nothing new is known and the watermark stays where it is.
    pub fn advance(&mut self, now: Instant) -> i64 {
        self.since.get_or_insert(now);
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for p in &self.parts {
            if p.finished {
                continue;
            }
            let idle = now.saturating_duration_since(p.last_active) > self.idle_timeout;
            if idle {
                continue;
            }
            any_active = true;
            let w = p.max_ts.map(|m| m.saturating_sub(self.lateness)).unwrap_or(i64::MIN);
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
        if !any_active {
            // Every partition is idle or finished: finished ones may advance to their own end.
            let finished_max = self
                .parts
                .iter()
                .filter(|p| p.finished)
                .filter_map(|p| p.max_ts.map(|m| m.saturating_sub(self.lateness)))
                .max();
            if self.parts.iter().all(|p| p.finished) {
                if let Some(w) = finished_max {
                    self.combined = self.combined.max(w);
                }
            }
            return self.combined;
        }
        if let Some(m) = min {
            self.combined = self.combined.max(m);
        }
        self.combined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_without_partitions_or_with_idle_ones_is_idle_after_the_timeout() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(5);
        let mut none = Watermarks::new(0, idle);
        none.advance(t0);
        assert!(!none.idle(t0 + Duration::from_secs(1)));
        assert!(none.idle(t0 + Duration::from_secs(6)));
        let mut one = Watermarks::new(0, idle);
        let slot = one.add_partition(t0);
        one.advance(t0);
        assert!(!one.idle(t0 + Duration::from_secs(1)));
        assert!(one.idle(t0 + Duration::from_secs(6)));
        one.touch(slot, t0 + Duration::from_secs(6));
        assert!(!one.idle(t0 + Duration::from_secs(7)));
        one.finish(slot);
        assert!(!one.idle(t0 + Duration::from_secs(60)), "a finished worker is not idle: it is done");
    }

    #[test]
    fn windows_align_to_epoch() {
        let w = WindowSpec::new(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(w.start(1_700_000_003 * NANOS), 1_700_000_000 * NANOS);
        assert_eq!(w.end(1_700_000_000 * NANOS), 1_700_000_010 * NANOS);
        assert_eq!(w.end(1_700_000_009 * NANOS + 999_999_999), 1_700_000_010 * NANOS);
    }

    #[test]
    fn slowest_partition_holds_watermark_until_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5, Duration::from_secs(30));
        let a = w.add_partition(t0);
        let b = w.add_partition(t0);
        w.observe(a, 100);
        w.touch(a, t0);
        // b has no data and is not idle yet: it holds the watermark.
        assert_eq!(w.advance(t0), i64::MIN);
        w.observe(b, 50);
        assert_eq!(w.advance(t0), 45);
        // b goes idle: a alone decides.
        let later = t0 + Duration::from_secs(31);
        w.touch(a, later);
        assert_eq!(w.advance(later), 95);
        // Never moves back, even when b wakes up with old data.
        w.touch(b, later);
        assert_eq!(w.advance(later), 95);
        assert!(w.is_late(b, 90));
        assert!(!w.is_late(b, 96));
    }

    #[test]
    fn all_finished_releases_to_the_max() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, Duration::from_secs(30));
        let a = w.add_partition(t0);
        let b = w.add_partition(t0);
        w.observe(a, 10);
        w.observe(b, 20);
        w.finish(a);
        assert_eq!(w.advance(t0), 20);
        w.finish(b);
        assert_eq!(w.advance(t0), 20);
    }
}

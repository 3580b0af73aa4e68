//! The window aggregate: count, sum, min, max, mean, first and last of one series in one
//! window, and from first and last the per-second rate of a cumulative counter.
//!
//! Aggregates are mergeable, so each worker pre-aggregates what it reads and only the partial
//! aggregates cross workers. The sum is kept as a double-double (`sum` + `sum_err`, Knuth's
//! TwoSum), which makes it exact to about 1e-30 relative and therefore independent of the
//! order in which values and partial aggregates are combined: replays produce the same bits.

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    pub count: u64,
    sum_hi: f64,
    sum_lo: f64,
    pub min: f64,
    pub max: f64,
    /// Value with the greatest `(last_ts, last_order)`.
    pub last: f64,
    pub last_ts: i64,
    pub last_order: u64,
    /// Value with the least `(first_ts, first_order)`.
    pub first: f64,
    pub first_ts: i64,
    pub first_order: u64,
}

#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, err)
}

impl Agg {
    /// The aggregate of one value.
    #[inline]
    pub fn of(ts: i64, order: u64, value: f64) -> Self {
        Agg {
            count: 1,
            sum_hi: value,
            sum_lo: 0.0,
            min: value,
            max: value,
            last: value,
            last_ts: ts,
            last_order: order,
            first: value,
            first_ts: ts,
            first_order: order,
        }
    }

    #[inline]
    pub fn add(&mut self, ts: i64, order: u64, value: f64) {
        self.count += 1;
        self.add_sum(value, 0.0);
        if value < self.min {
            self.min = value;
        }
        if value > self.max {
            self.max = value;
        }
        if (ts, order) >= (self.last_ts, self.last_order) {
            self.last = value;
            self.last_ts = ts;
            self.last_order = order;
        }
        if (ts, order) < (self.first_ts, self.first_order) {
            self.first = value;
            self.first_ts = ts;
            self.first_order = order;
        }
    }

    #[inline]
    fn add_sum(&mut self, hi: f64, lo: f64) {
        let (s, e) = two_sum(self.sum_hi, hi);
        let e = e + self.sum_lo + lo;
        let (s2, e2) = two_sum(s, e);
        self.sum_hi = s2;
        self.sum_lo = e2;
    }

    /// Combines two partial aggregates of the same series and window.
    pub fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.add_sum(other.sum_hi, other.sum_lo);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if (other.last_ts, other.last_order) >= (self.last_ts, self.last_order) {
            self.last = other.last;
            self.last_ts = other.last_ts;
            self.last_order = other.last_order;
        }
        if (other.first_ts, other.first_order) < (self.first_ts, self.first_order) {
            self.first = other.first;
            self.first_ts = other.first_ts;
            self.first_order = other.first_order;
        }
    }

    pub fn sum(&self) -> f64 {
        self.sum_hi + self.sum_lo
    }

    /// The sum as the double-double it is kept in: `(hi, lo)`, with `hi + lo` the sum.
    pub fn sum_parts(&self) -> (f64, f64) {
        (self.sum_hi, self.sum_lo)
    }

    /// The per-second rate of a cumulative counter over the window: the increase from the first
    /// to the last value divided by the time between them. A counter that went down was reset,
    /// and its increase is counted from zero (the last value), so the rate is never negative.
    /// `None` with fewer than two distinct timestamps.
    pub fn rate(&self) -> Option<f64> {
        counter_rate(self.first_ts, self.first, self.last_ts, self.last)
    }

    pub fn mean(&self) -> f64 {
        // Divide the double-double before rounding, so the mean is as exact as the sum.
        let n = self.count as f64;
        self.sum_hi / n + self.sum_lo / n
    }
}

/// The non-negative derivative between two samples of a counter, per second (timestamps in ns).
pub fn counter_rate(first_ts: i64, first: f64, last_ts: i64, last: f64) -> Option<f64> {
    if last_ts <= first_ts {
        return None;
    }
    let increase = if last >= first { last - first } else { last.max(0.0) };
    Some(increase / ((last_ts - first_ts) as f64 / 1e9))
}

/// Which fields are cumulative counters: whole measurements (`net`) or single fields
/// (`nginx.requests`). By default every field of `diskio` and `net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    measurements: FxHashSet<Box<str>>,
    fields: FxHashSet<(Box<str>, Box<str>)>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(["diskio", "net"])
    }
}

impl Counters {
    /// From entries `measurement` or `measurement.field`.
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Self {
        let mut c = Counters { measurements: FxHashSet::default(), fields: FxHashSet::default() };
        for e in entries {
            match e.as_ref().split_once('.') {
                Some((m, f)) => c.fields.insert((m.into(), f.into())),
                None => c.measurements.insert(e.as_ref().into()),
            };
        }
        c
    }

    pub fn is_counter(&self, measurement: &str, field: &str) -> bool {
        self.measurements.contains(measurement)
            || (!self.fields.is_empty() && self.fields.contains(&(measurement.into(), field.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(values: &[(i64, u64, f64)]) -> (u64, f64, f64, f64, f64) {
        let n = values.len() as u64;
        let sum: f64 = values.iter().map(|v| v.2).sum();
        let min = values.iter().map(|v| v.2).fold(f64::INFINITY, f64::min);
        let max = values.iter().map(|v| v.2).fold(f64::NEG_INFINITY, f64::max);
        let last = values.iter().max_by_key(|v| (v.0, v.1)).unwrap().2;
        (n, sum, min, max, last)
    }

    proptest! {
        #[test]
        fn split_and_merge_matches_reference(
            values in prop::collection::vec((0i64..50, 0u64..1_000_000, -1e6f64..1e6), 1..200),
            cut in 0usize..200,
        ) {
            // Orders are unique per arrival, as positions in a partition are.
            let values: Vec<_> = values.into_iter().enumerate().map(|(i, (t, _, v))| (t, i as u64, v)).collect();
            let cut = cut % values.len();
            let fold = |vals: &[(i64, u64, f64)]| {
                let mut it = vals.iter();
                let first = it.next()?;
                let mut a = Agg::of(first.0, first.1, first.2);
                for v in it { a.add(v.0, v.1, v.2); }
                Some(a)
            };
            let whole = fold(&values).unwrap();
            let merged = match (fold(&values[..cut]), fold(&values[cut..])) {
                (Some(mut a), Some(b)) => { a.merge(&b); a }
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => unreachable!(),
            };
            let (n, sum, min, max, last) = reference(&values);
            let first = values.iter().min_by_key(|v| (v.0, v.1)).unwrap();
            for a in [whole, merged] {
                prop_assert_eq!((a.first, a.first_ts), (first.2, first.0));
                prop_assert_eq!(a.count, n);
                prop_assert!((a.sum() - sum).abs() <= 1e-9 * sum.abs().max(1.0));
                prop_assert_eq!(a.min, min);
                prop_assert_eq!(a.max, max);
                prop_assert_eq!(a.last, last);
            }
            // Exact summation: the order of combination does not change the bits.
            prop_assert_eq!(whole.sum(), merged.sum());
        }
    }

    #[test]
    fn rate_is_non_negative_across_resets() {
        let mut a = Agg::of(0, 0, 100.0);
        a.add(2_000_000_000, 1, 300.0);
        assert_eq!(a.rate(), Some(100.0));
        a.add(4_000_000_000, 2, 40.0); // reset: counted from zero
        assert_eq!(a.rate(), Some(10.0));
        assert_eq!(Agg::of(5, 0, 1.0).rate(), None);
    }

    #[test]
    fn last_prefers_later_arrival_on_equal_timestamps() {
        let mut a = Agg::of(10, 1, 1.0);
        a.add(10, 2, 2.0);
        a.add(9, 3, 3.0);
        assert_eq!(a.last, 2.0);
    }
}

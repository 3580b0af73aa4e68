//! Counters and gauges of a running job, shared by its workers and whoever reports on it.
//!
//! [`JobMetrics::snapshot`] gathers them into a [`Status`] (serializable: the status log and an
//! API read the same thing); [`JobMetrics::record`] keeps the last snapshots, from which rates
//! over the last minute are computed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::source::pull::PullStats;
use serde::Serialize;

/// One source partition as its worker last saw it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PartitionStatus {
    pub source: String,
    pub partition: i32,
    /// The offset after the last record read.
    pub next: Option<i64>,
    /// Records the broker holds beyond `next`.
    pub lag: Option<i64>,
    /// The partition's own watermark (ns).
    pub watermark: Option<i64>,
}

/// One sink of one worker.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SinkStatus {
    pub kind: &'static str,
    pub worker: usize,
    /// Rows or lines waiting to be written.
    pub queued: u64,
    pub last_error: Option<String>,
}

/// A job's state at one moment, for the status log and the API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Unix time of the snapshot (ms).
    pub at_ms: i64,
    pub uptime_s: f64,
    pub records_in: u64,
    pub values: u64,
    pub rows_out: u64,
    pub windows: u64,
    pub files: u64,
    pub rejects: u64,
    pub late: u64,
    /// Values read again after a restart and skipped because they were already written.
    pub replayed: u64,
    /// Records per second over the last minute (or since the start).
    pub records_per_s: f64,
    /// The job's watermark (ns) and how far it is behind the wall clock (s).
    pub watermark: Option<i64>,
    pub watermark_lag_s: Option<f64>,
    /// Sum of the partitions' consumer lag.
    pub consumer_lag: Option<i64>,
    pub partitions: Vec<PartitionStatus>,
    pub sinks: Vec<SinkStatus>,
    /// Live series over all workers.
    pub series: u64,
    /// The last checkpoint written: epoch and frontier (ns).
    pub checkpoint_epoch: u64,
    pub checkpoint_frontier: Option<i64>,
    pub last_error: Option<String>,
    /// The pull source's counts, when the job polls agents.
    pub pull: Option<PullStats>,
}

#[derive(Debug)]
pub struct JobMetrics {
    pub started: Instant,
    /// Messages read (Kafka messages or file lines).
    pub messages: AtomicU64,
    /// Numeric field values aggregated.
    pub values: AtomicU64,
    pub rejects: AtomicU64,
    pub late: AtomicU64,
    /// Windows closed (distinct window ends) and aggregate rows emitted.
    pub windows: AtomicU64,
    pub rows: AtomicU64,
    pub files: AtomicU64,
    pub replayed: AtomicU64,
    /// Alarm events raised, and deliveries (one per event, through all its handlers) that
    /// succeeded or failed.
    pub alarm_events: AtomicU64,
    pub alarm_deliveries: AtomicU64,
    pub alarm_delivery_failures: AtomicU64,
    watermarks: Vec<AtomicI64>,
    /// Each worker's watermark as its data moved it (not raised when the input ends).
    data_watermarks: Arc<Vec<AtomicI64>>,
    series: Vec<AtomicU64>,
    last_window_end: AtomicI64,
    /// Wall-clock time from a window's end to its close, for windows closed within
    /// [`LATENCY_BUCKETS`] of each upper bound (seconds); the last counts every window.
    close_latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of those latencies, ms.
    close_latency_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    partitions: Mutex<BTreeMap<(String, i32), PartitionStatus>>,
    sinks: Mutex<BTreeMap<(usize, usize), SinkStatus>>,
    /// Each worker's pull reader.
    pull: Mutex<BTreeMap<usize, PullStats>>,
    checkpoint: Mutex<(u64, Option<i64>)>,
    history: Mutex<VecDeque<(Instant, u64)>>,
}

/// Upper bounds (seconds) of the window-close latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// How far back [`JobMetrics::record`] keeps snapshots for rates.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl JobMetrics {
    pub fn new(workers: usize) -> Self {
        JobMetrics {
            started: Instant::now(),
            messages: AtomicU64::new(0),
            values: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            late: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            files: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            alarm_events: AtomicU64::new(0),
            alarm_deliveries: AtomicU64::new(0),
            alarm_delivery_failures: AtomicU64::new(0),
            watermarks: (0..workers).map(|_| AtomicI64::new(i64::MIN)).collect(),
            data_watermarks: Arc::new((0..workers).map(|_| AtomicI64::new(i64::MIN)).collect()),
            series: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            last_window_end: AtomicI64::new(i64::MIN),
            close_latency: Default::default(),
            close_latency_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            partitions: Mutex::new(BTreeMap::new()),
            sinks: Mutex::new(BTreeMap::new()),
            pull: Mutex::new(BTreeMap::new()),
            checkpoint: Mutex::new((0, None)),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// A worker's live series.
    pub fn set_series(&self, worker: usize, live: usize) {
        if let Some(s) = self.series.get(worker) {
            s.store(live as u64, Ordering::Relaxed);
        }
    }

    /// What a worker knows of its partitions now.
    pub fn set_partitions(&self, parts: impl IntoIterator<Item = PartitionStatus>) {
        if let Ok(mut map) = self.partitions.lock() {
            for p in parts {
                map.insert((p.source.clone(), p.partition), p);
            }
        }
    }

    /// The state of sink `index` of `worker`.
    pub fn set_sink(&self, worker: usize, index: usize, status: SinkStatus) {
        if let Ok(mut map) = self.sinks.lock() {
            map.insert((worker, index), status);
        }
    }

    /// A checkpoint was written.
    /// A worker's pull reader's counts.
    pub fn set_pull(&self, worker: usize, stats: PullStats) {
        if let Ok(mut p) = self.pull.lock() {
            p.insert(worker, stats);
        }
    }

    /// The pull readers' counts summed (`None`: the job polls nothing).
    pub fn pull(&self) -> Option<PullStats> {
        let p = self.pull.lock().ok()?;
        let mut all: Option<PullStats> = None;
        for stats in p.values() {
            all.get_or_insert_with(PullStats::default).add(stats);
        }
        all
    }

    pub fn set_checkpoint(&self, epoch: u64, frontier: i64) {
        if let Ok(mut c) = self.checkpoint.lock() {
            *c = (epoch, Some(frontier));
        }
    }

    /// Remembers the record count now, for [`Status::records_per_s`]; call it periodically.
    pub fn record(&self, now: Instant) {
        let Ok(mut h) = self.history.lock() else { return };
        h.push_back((now, self.messages.load(Ordering::Relaxed)));
        while h.len() > 2 && h.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            h.pop_front();
        }
    }

    /// Everything at once (see [`Status`]).
    pub fn snapshot(&self) -> Status {
        let now = Instant::now();
        let records_in = self.messages.load(Ordering::Relaxed);
        let uptime = now.duration_since(self.started).as_secs_f64();
        let records_per_s = match self.history.lock().ok().and_then(|h| h.front().copied()) {
            Some((t, n)) if now.duration_since(t).as_secs_f64() > 0.5 => {
                (records_in - n.min(records_in)) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => records_in as f64 / uptime.max(1e-9),
        };
        let watermark = self.watermark();
        let partitions: Vec<PartitionStatus> =
            self.partitions.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
        let lags: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
        let (checkpoint_epoch, checkpoint_frontier) = self.checkpoint.lock().map(|c| *c).unwrap_or((0, None));
        Status {
            at_ms: crate::source::wall_ns() / 1_000_000,
            uptime_s: uptime,
            records_in,
            values: self.values.load(Ordering::Relaxed),
            rows_out: self.rows.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            records_per_s,
            watermark,
            watermark_lag_s: watermark.map(|w| (crate::source::wall_ns() - w) as f64 / 1e9),
            consumer_lag: (!lags.is_empty()).then(|| lags.iter().sum()),
            partitions,
            sinks: self.sinks.lock().map(|m| m.values().cloned().collect()).unwrap_or_default(),
            series: self.series.iter().map(|s| s.load(Ordering::Relaxed)).sum(),
            checkpoint_epoch,
            checkpoint_frontier,
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            pull: self.pull(),
        }
    }

    pub fn set_watermark(&self, worker: usize, wm: i64) {
        if let Some(w) = self.watermarks.get(worker) {
            w.store(wm, Ordering::Relaxed);
        }
    }

    /// Records the watermark a worker's data has reached (the end of the input does not raise it).
    pub fn set_data_watermark(&self, worker: usize, wm: i64) {
        if let Some(w) = self.data_watermarks.get(worker) {
            w.store(wm, Ordering::Relaxed);
        }
    }

    /// A worker's input ended: a worker that saw no data holds nothing back.
    pub fn data_finished(&self, worker: usize) {
        if let Some(w) = self.data_watermarks.get(worker) {
            let _ = w.compare_exchange(i64::MIN, i64::MAX, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The watermark the data has reached: the minimum over this process's workers. Windows that
    /// end after it were closed only by the end of the input.
    pub fn data_watermark(&self) -> Arc<dyn Fn() -> i64 + Send + Sync> {
        let wms = self.data_watermarks.clone();
        Arc::new(move || wms.iter().map(|w| w.load(Ordering::Relaxed)).min().unwrap_or(i64::MIN))
    }

    /// The lowest watermark of this process's other workers that have one (`None` if none has):
    /// what an idle worker follows, so that it holds nothing back without closing windows the
    /// others still hold open.
    pub fn others_watermark(&self, worker: usize) -> Option<i64> {
        self.watermarks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != worker)
            .map(|(_, w)| w.load(Ordering::Relaxed))
            .filter(|w| *w != i64::MIN && *w != i64::MAX)
            .min()
    }

    /// The job's watermark: the minimum over workers (`None` before any).
    pub fn watermark(&self) -> Option<i64> {
        let min = self.watermarks.iter().map(|w| w.load(Ordering::Relaxed)).min()?;
        (min != i64::MIN && min != i64::MAX).then_some(min)
    }

    /// Counts a window once, however many workers emit a part of it (ends only increase).
    pub fn window_closed(&self, end: i64, rows: usize) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if self.last_window_end.fetch_max(end, Ordering::Relaxed) < end {
            self.windows.fetch_add(1, Ordering::Relaxed);
            // Once per window: how long after its end (wall clock) it closed. Replays of old
            // data count as very late closes, in the last bucket.
            let latency = (crate::source::wall_ns() - end).max(0) as f64 / 1e9;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if latency <= *bound {
                    self.close_latency[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            self.close_latency[LATENCY_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
            self.close_latency_ms.fetch_add((latency * 1e3).min(u64::MAX as f64 / 2.0) as u64, Ordering::Relaxed);
        }
    }

    /// The window-close latency histogram: cumulative counts per upper bound of
    /// [`LATENCY_BUCKETS`] (seconds) then `+Inf`, and the sum in seconds.
    pub fn window_close_latency(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, self.close_latency[i].load(Ordering::Relaxed)))
            .collect();
        let count = self.close_latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, count));
        (buckets, count, self.close_latency_ms.load(Ordering::Relaxed) as f64 / 1e3)
    }

    pub fn error(&self, text: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(text);
        }
    }

    /// A one-line status for people.
    pub fn status_line(&self) -> String {
        self.record(Instant::now());
        status_line(&self.snapshot())
    }
}

/// A [`Status`] as one line for people.
pub fn status_line(s: &Status) -> String {
    let wm = match (s.watermark, s.watermark_lag_s) {
        (Some(w), Some(lag)) => format!("watermark {} (lag {lag:.1}s)", format_ts(w)),
        _ => "watermark -".into(),
    };
    let mut line = format!(
        "in {} msgs ({:.0}/s) | values {} | rejects {} | late {} | windows {} | rows {} | {wm}",
        s.records_in, s.records_per_s, s.values, s.rejects, s.late, s.windows, s.rows_out
    );
    if let Some(lag) = s.consumer_lag {
        line.push_str(&format!(" | kafka lag {lag}"));
    }
    let queued: u64 = s.sinks.iter().map(|k| k.queued).sum();
    if queued > 0 {
        line.push_str(&format!(" | sink queue {queued}"));
    }
    if s.series > 0 {
        line.push_str(&format!(" | series {}", s.series));
    }
    if let Some(p) = &s.pull {
        line.push_str(&format!(
            " | pull {} agents ({} unhealthy), polls {} ok {} failed, {} skipped",
            p.agents, p.unhealthy_agents, p.polls_ok, p.polls_failed, p.skipped
        ));
    }
    if s.replayed > 0 {
        line.push_str(&format!(" | replayed {}", s.replayed));
    }
    if let Some(f) = s.checkpoint_frontier {
        line.push_str(&format!(" | checkpoint {} @ {}", s.checkpoint_epoch, format_ts(f)));
    }
    for k in &s.sinks {
        if let Some(e) = &k.last_error {
            line.push_str(&format!(" | {} w{}: {e}", k.kind, k.worker));
        }
    }
    line
}

/// RFC 3339 in UTC with second precision, for status lines.
pub fn format_ts(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_ts(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::format_ts(0), "1970-01-01T00:00:00Z");
    }
}

//! Counters and gauges of a running job, shared by its workers and whoever reports on it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    watermarks: Vec<AtomicI64>,
    last_window_end: AtomicI64,
    pub last_error: Mutex<Option<String>>,
}

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
            watermarks: (0..workers).map(|_| AtomicI64::new(i64::MIN)).collect(),
            last_window_end: AtomicI64::new(i64::MIN),
            last_error: Mutex::new(None),
        }
    }

    pub fn set_watermark(&self, worker: usize, wm: i64) {
        if let Some(w) = self.watermarks.get(worker) {
            w.store(wm, Ordering::Relaxed);
        }
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
        }
    }

    pub fn error(&self, text: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(text);
        }
    }

    /// A one-line status for people.
    pub fn status_line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let msgs = self.messages.load(Ordering::Relaxed);
        let wm = match self.watermark() {
            Some(w) => {
                let lag = (crate::source::wall_ns() - w) as f64 / 1e9;
                format!("watermark {} (lag {lag:.1}s)", format_ts(w))
            }
            None => "watermark -".into(),
        };
        format!(
            "in {msgs} msgs ({:.0}/s) | values {} | rejects {} | late {} | windows {} | rows {} | {wm}",
            msgs as f64 / secs,
            self.values.load(Ordering::Relaxed),
            self.rejects.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
            self.windows.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
        )
    }
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

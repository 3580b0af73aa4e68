//! What a run sent, and how to show it: [`Stats`], [`status_line`], and the once-a-second
//! progress clock the writers share.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::Message;

/// What a run has sent so far.
#[derive(Default, Clone, Debug)]
pub struct Stats {
    /// Messages written (file) or handed to the Kafka producer.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Messages that failed: refused by the producer, or reported undelivered by Kafka.
    pub errors: u64,
    /// Messages per measurement.
    pub by_measurement: BTreeMap<String, u64>,
    /// Wall-clock time since the run started.
    pub elapsed: Duration,
    /// The most recent error, if any, to say why `errors` is not zero.
    pub last_error: Option<String>,
}

impl Stats {
    /// Counts one message as sent.
    pub fn record(&mut self, msg: &Message) {
        self.messages += 1;
        self.bytes += msg.payload.len() as u64;
        match self.by_measurement.get_mut(msg.measurement) {
            Some(n) => *n += 1,
            None => {
                self.by_measurement.insert(msg.measurement.to_string(), 1);
            }
        }
    }

    /// Messages per second over the whole run (0 before any time has passed).
    pub fn messages_per_sec(&self) -> f64 {
        per_sec(self.messages, self.elapsed)
    }

    /// The stats as JSON: counts, elapsed seconds and average rates.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "messages": self.messages,
            "bytes": self.bytes,
            "errors": self.errors,
            "by_measurement": self.by_measurement,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "messages_per_sec": per_sec(self.messages, self.elapsed),
            "bytes_per_sec": per_sec(self.bytes, self.elapsed),
        });
        if let (Some(e), Some(obj)) = (&self.last_error, v.as_object_mut()) {
            obj.insert("last_error".into(), e.clone().into());
        }
        v
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// A status line for people: `agents 1000 | sent 123456 msgs | 3000 msg/s | 1.2 MB/s | errors 0`.
///
/// Rates are over the interval since `since_last` (the stats then, and the time that has passed)
/// when given, over the whole run otherwise.
pub fn status_line(agents: usize, s: &Stats, since_last: Option<(&Stats, Duration)>) -> String {
    let (msgs, bytes, secs) = match since_last {
        Some((prev, dt)) => {
            (s.messages.saturating_sub(prev.messages), s.bytes.saturating_sub(prev.bytes), dt.as_secs_f64())
        }
        None => (s.messages, s.bytes, s.elapsed.as_secs_f64()),
    };
    let (rate, mbps) = if secs > 0.0 { (msgs as f64 / secs, bytes as f64 / secs / 1e6) } else { (0.0, 0.0) };
    format!("agents {agents} | sent {} msgs | {rate:.0} msg/s | {mbps:.1} MB/s | errors {}", s.messages, s.errors)
}

/// Says when about a second has passed since the last progress report. Cheap to ask often: it
/// only reads the clock every 256th time.
pub(crate) struct ProgressClock {
    start: Instant,
    last: Instant,
    asked: u32,
}

impl ProgressClock {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        ProgressClock { start: now, last: now, asked: 0 }
    }

    /// Time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether a report is due; if so, the next one is due a second from now.
    pub(crate) fn due(&mut self) -> bool {
        self.asked = self.asked.wrapping_add(1);
        if !self.asked.is_multiple_of(256) {
            return false;
        }
        self.due_now()
    }

    /// Like [`ProgressClock::due`], reading the clock every time (for call sites that are rare).
    pub(crate) fn due_now(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.last) >= Duration::from_secs(1) {
            self.last = now;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_rates() {
        let mut s =
            Stats { messages: 123_456, bytes: 2_400_000, elapsed: Duration::from_secs(2), ..Default::default() };
        assert_eq!(status_line(1000, &s, None), "agents 1000 | sent 123456 msgs | 61728 msg/s | 1.2 MB/s | errors 0");
        let prev = s.clone();
        s.messages += 3000;
        s.bytes += 600_000;
        s.errors = 2;
        assert_eq!(
            status_line(1000, &s, Some((&prev, Duration::from_millis(500)))),
            "agents 1000 | sent 126456 msgs | 6000 msg/s | 1.2 MB/s | errors 2"
        );
        assert_eq!(status_line(5, &Stats::default(), None), "agents 5 | sent 0 msgs | 0 msg/s | 0.0 MB/s | errors 0");
    }

    #[test]
    fn json_has_counts_and_rates() {
        let mut s = Stats { elapsed: Duration::from_secs(4), ..Default::default() };
        let msg = Message { key: "k".into(), measurement: "cpu", timestamp_ns: 0, payload: vec![b'x'; 10] };
        s.record(&msg);
        s.record(&msg);
        let v = s.to_json();
        assert_eq!(v["messages"], 2);
        assert_eq!(v["bytes"], 20);
        assert_eq!(v["by_measurement"]["cpu"], 2);
        assert_eq!(v["messages_per_sec"], 0.5);
        assert!(v.get("last_error").is_none());
        s.last_error = Some("boom".into());
        assert_eq!(s.to_json()["last_error"], "boom");
    }
}

//! From raw messages to observations stamped with their window.
//!
//! [`Ingest`] decodes a message, interns each metric's series, judges every value against its
//! partition's watermark, and sorts the result into three piles: observations grouped by the
//! end of their window, late values (their window has closed), and rejects (with a reason).
//! Sources call it once per message and drain the piles once per batch.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::checkpoint::{PartitionCheckpoint, Tracker};
use crate::decode::{decode, Decoded, Format, Metric, TimestampUnit};
use crate::intern::{SeriesTable, TagRefs};
use crate::model::{LateRow, Observation, Origin, RejectRow};
use crate::time::{Watermarks, WindowSpec};

/// Which tag names a measurement's instance (disk `path`, net `interface`, …).
#[derive(Clone, Debug)]
pub struct InstanceTags(FxHashMap<Box<str>, Box<str>>);

impl Default for InstanceTags {
    fn default() -> Self {
        InstanceTags::from_pairs([("cpu", "cpu"), ("disk", "path"), ("diskio", "name"), ("net", "interface")])
    }
}

impl InstanceTags {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        InstanceTags(pairs.into_iter().map(|(m, t)| (m.into(), t.into())).collect())
    }

    pub fn set(&mut self, measurement: &str, tag: &str) {
        self.0.insert(measurement.into(), tag.into());
    }

    pub fn tag_for(&self, measurement: &str) -> Option<&str> {
        self.0.get(measurement).map(|t| &**t)
    }
}

/// How a source turns messages into observations.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub format: Format,
    pub unit: TimestampUnit,
    pub window: WindowSpec,
    pub instance_tags: InstanceTags,
    /// Values further than this ahead of `max(partition watermark, arrival time)` are rejected,
    /// so a broken clock cannot drag the watermark into the future (ns; `None` = no bound).
    pub max_skew: Option<i64>,
    /// A series silent this long in event time is forgotten (ns; `None` = never).
    pub series_ttl: Option<i64>,
}

/// What one or more messages produced.
#[derive(Debug, Default)]
pub struct IngestOutput {
    /// Observations by the end of their window (ns), in arrival order.
    pub windows: BTreeMap<i64, Vec<Observation>>,
    pub late: Vec<LateRow>,
    pub rejects: Vec<RejectRow>,
    pub messages: u64,
    pub metrics: u64,
    pub values: u64,
    /// Values read again after a restart that were already in the output, and skipped.
    pub replayed: u64,
}

impl IngestOutput {
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.late.is_empty() && self.rejects.is_empty()
    }
}

pub struct Ingest {
    table: Rc<RefCell<SeriesTable>>,
    config: IngestConfig,
    out: IngestOutput,
    /// The observations of the last window used, to skip the map lookup for runs of one window.
    current: Option<(i64, Vec<Observation>)>,
    /// Checkpoint bookkeeping per partition slot, when the source can be replayed.
    trackers: Option<Vec<Tracker>>,
}

impl Ingest {
    pub fn new(table: Rc<RefCell<SeriesTable>>, config: IngestConfig) -> Self {
        // A released series may still sit in a window open at the release: it is reused only
        // once the watermark has gone two windows and the lateness further.
        let w = config.window;
        table.borrow_mut().set_reuse_delay(2 * (w.size + w.lateness));
        Ingest { table, config, out: IngestOutput::default(), current: None, trackers: None }
    }

    /// Series this worker knows now.
    pub fn live_series(&self) -> usize {
        self.table.borrow().live_series()
    }

    /// Forgets series silent for the configured ttl before `watermark` — the job's watermark, so
    /// that no window still open anywhere holds one of them. Returns how many were released.
    pub fn evict_idle(&mut self, watermark: i64) -> usize {
        match self.config.series_ttl {
            Some(ttl) => self.table.borrow_mut().evict_idle(watermark, ttl),
            None => 0,
        }
    }

    /// Keeps what checkpoints need (see [`crate::checkpoint`]) for every partition.
    pub fn track(&mut self) {
        self.trackers.get_or_insert_with(Vec::new);
    }

    fn tracker(&mut self, slot: usize) -> Option<&mut Tracker> {
        tracker_at(&mut self.trackers, slot)
    }

    /// Resumes partition `slot` from a checkpoint whose windows before `frontier` are written.
    pub fn resume(&mut self, slot: usize, checkpoint: &PartitionCheckpoint, frontier: i64) {
        if let Some(t) = self.tracker(slot) {
            *t = Tracker::resumed(checkpoint, frontier);
        }
    }

    /// Where partition `slot` resumes given `frontier` (see [`Tracker::checkpoint`]).
    pub fn checkpoint(
        &mut self,
        slot: usize,
        source: &str,
        partition: i32,
        frontier: i64,
        next: i64,
        max_ts: Option<i64>,
    ) -> Option<PartitionCheckpoint> {
        self.tracker(slot).map(|t| t.checkpoint(source, partition, frontier, next, max_ts))
    }

    /// A copy of partition `slot`'s bookkeeping (for the checkpoint written when the job ends).
    pub fn tracker_snapshot(&mut self, slot: usize) -> Option<Tracker> {
        self.tracker(slot).map(|t| t.clone())
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Decodes one message from partition `slot` of `watermarks`.
    pub fn message(
        &mut self,
        payload: &[u8],
        origin: &Origin,
        slot: usize,
        watermarks: &mut Watermarks,
        arrival_ns: i64,
        now: Instant,
    ) {
        let (format, unit) = (self.config.format, self.config.unit);
        self.message_as(format, unit, payload, origin, slot, watermarks, arrival_ns, now);
    }

    /// Decodes one message of a format of its own, not the source's: what the pull source's
    /// agents answer (Telegraf JSON) beside a topic of line protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn message_as(
        &mut self,
        format: Format,
        unit: TimestampUnit,
        payload: &[u8],
        origin: &Origin,
        slot: usize,
        watermarks: &mut Watermarks,
        arrival_ns: i64,
        now: Instant,
    ) {
        self.out.messages += 1;
        watermarks.touch(slot, now);
        let order = ((origin.position.max(0) as u64) << 16) | (origin.partition as u64 & 0xffff);
        let max_ts_before = watermarks.max_event_time(slot);
        let tracker = tracker_at(&mut self.trackers, slot);
        let mut table = self.table.borrow_mut();
        let mut sink = Sink {
            table: &mut table,
            config: &self.config,
            out: &mut self.out,
            current: &mut self.current,
            origin,
            slot,
            watermarks,
            arrival_ns,
            order,
            tracker,
            max_ts_before,
        };
        decode(format, payload, unit, arrival_ns, &mut sink);
    }

    /// Records a reject found outside the decoder (an empty message, a read error, …).
    /// `slot` is the partition it came from, when it has one.
    pub fn reject(
        &mut self,
        origin: &Origin,
        slot: Option<usize>,
        max_ts: Option<i64>,
        reason: impl Into<String>,
        payload: &[u8],
        arrival_ns: i64,
    ) {
        if let Some(t) = slot.and_then(|s| self.tracker(s)) {
            t.note_side(origin.position, max_ts);
        }
        self.out.rejects.push(RejectRow::new(origin.clone(), reason, payload, arrival_ns));
    }

    /// Takes everything produced since the last call.
    pub fn take(&mut self) -> IngestOutput {
        self.take_at(0)
    }

    /// Takes everything produced since the last call; late values and rejects among it are
    /// emitted at timely time `side_time`.
    pub fn take_at(&mut self, side_time: u64) -> IngestOutput {
        if let Some((end, obs)) = self.current.take() {
            self.out.windows.entry(end).or_default().extend(obs);
        }
        if let Some(trackers) = self.trackers.as_mut() {
            trackers.iter_mut().for_each(|t| t.stamp_side(side_time));
        }
        std::mem::take(&mut self.out)
    }
}

/// The tracker of partition `slot`, when partitions are tracked.
fn tracker_at(trackers: &mut Option<Vec<Tracker>>, slot: usize) -> Option<&mut Tracker> {
    let trackers = trackers.as_mut()?;
    if trackers.len() <= slot {
        trackers.resize_with(slot + 1, Tracker::default);
    }
    Some(&mut trackers[slot])
}

struct Sink<'a> {
    table: &'a mut SeriesTable,
    config: &'a IngestConfig,
    out: &'a mut IngestOutput,
    current: &'a mut Option<(i64, Vec<Observation>)>,
    origin: &'a Origin,
    slot: usize,
    watermarks: &'a mut Watermarks,
    arrival_ns: i64,
    order: u64,
    tracker: Option<&'a mut Tracker>,
    /// The partition's largest event time before this message.
    max_ts_before: Option<i64>,
}

impl Sink<'_> {
    fn note_side(&mut self) {
        if let Some(t) = self.tracker.as_deref_mut() {
            t.note_side(self.origin.position, self.max_ts_before);
        }
    }

    fn push(&mut self, window_end: i64, obs: Observation) {
        match self.current {
            Some((end, v)) if *end == window_end => v.push(obs),
            _ => {
                if let Some((end, v)) = self.current.take() {
                    self.out.windows.entry(end).or_default().extend(v);
                }
                let mut v = self.out.windows.remove(&window_end).unwrap_or_default();
                v.push(obs);
                *self.current = Some((window_end, v));
            }
        }
    }
}

impl Decoded for Sink<'_> {
    fn metric(&mut self, m: &Metric<'_>) {
        let ts = m.timestamp;
        if let Some(skew) = self.config.max_skew {
            let reference = self.watermarks.partition_watermark(self.slot).unwrap_or(i64::MIN).max(self.arrival_ns);
            if ts > reference.saturating_add(skew) {
                let ahead = (ts - reference) / 1_000_000_000;
                let reason = format!(
                    "timestamp {ts} is {ahead}s ahead of the watermark and clock (allowed skew {}s)",
                    skew / 1_000_000_000
                );
                self.note_side();
                self.out.rejects.push(RejectRow::new(self.origin.clone(), reason, &metric_text(m), self.arrival_ns));
                return;
            }
        }
        let mut tags = TagRefs::default();
        let instance_tag = self.config.instance_tags.tag_for(&m.name);
        let mut instance = "";
        for (k, v) in &m.tags {
            match &**k {
                "nsId" => tags.ns_id = v,
                "mcisId" => tags.mcis_id = v,
                "vmId" => tags.vm_id = v,
                "cspType" => tags.csp_type = v,
                "osType" => tags.os_type = v,
                _ => {}
            }
            if instance_tag == Some(&**k) {
                instance = v;
            }
        }
        self.out.metrics += 1;
        let window_end = self.config.window.end(ts);
        let offset = self.origin.position;
        let partition_late = self.watermarks.is_partition_late(self.slot, window_end);
        let late = match self.tracker.as_deref().and_then(|t| t.replaying(offset)) {
            // Read before the checkpoint: late exactly as it was then, or already in the output.
            Some(replay) => {
                if partition_late || replay.late.contains(&offset) {
                    true
                } else if window_end < replay.frontier {
                    self.watermarks.observe(self.slot, ts);
                    self.out.replayed += m.fields.iter().filter(|(_, v)| v.numeric().is_some()).count() as u64;
                    return;
                } else {
                    window_end <= self.watermarks.combined()
                }
            }
            None => partition_late || window_end <= self.watermarks.combined(),
        };
        if let Some(t) = self.tracker.as_deref_mut() {
            if late {
                t.note_side(offset, self.max_ts_before);
                if !partition_late {
                    t.note_combined_late(offset);
                }
            } else {
                t.note_window(window_end, offset, self.max_ts_before);
            }
        }
        let watermark =
            self.watermarks.partition_watermark(self.slot).unwrap_or(i64::MIN).max(self.watermarks.combined());
        self.watermarks.observe(self.slot, ts);
        let group = self.table.group(&tags, &m.name, instance);
        self.table.seen(group, ts);
        for (field, value) in &m.fields {
            let Some(value) = value.numeric() else {
                continue;
            };
            if late {
                let (agent, measurement, instance) = self.table.group_parts(group);
                let (agent, measurement, instance) = (agent.clone(), measurement.clone(), instance.clone());
                let field = self.table.field_name(field);
                self.out.late.push(LateRow {
                    agent,
                    measurement,
                    instance,
                    field,
                    timestamp: ts,
                    value,
                    watermark,
                    origin: self.origin.clone(),
                });
                continue;
            }
            match self.table.series(group, field) {
                Ok(series) => {
                    self.out.values += 1;
                    self.push(window_end, Observation { series, ts, order: self.order, value });
                }
                Err(e) => {
                    self.note_side();
                    let reason = format!("{e}: new series {}.{field} refused", m.name);
                    self.out.rejects.push(RejectRow::new(
                        self.origin.clone(),
                        reason,
                        &metric_text(m),
                        self.arrival_ns,
                    ));
                }
            }
        }
    }

    fn reject(&mut self, reason: String, payload: &[u8]) {
        self.note_side();
        self.out.rejects.push(RejectRow::new(self.origin.clone(), reason, payload, self.arrival_ns));
    }
}

/// A compact text form of a decoded metric, for rejects found after decoding.
fn metric_text(m: &Metric<'_>) -> Vec<u8> {
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let fields: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{},{} {} {}", m.name, tags.join(","), fields.join(","), m.timestamp).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn origin(source: &Arc<str>, partition: i32, position: i64) -> Origin {
        Origin { source: source.clone(), partition, position }
    }

    fn config() -> IngestConfig {
        IngestConfig {
            format: Format::Json,
            unit: TimestampUnit::Auto,
            window: WindowSpec::new(Duration::from_secs(10), Duration::from_secs(5)),
            instance_tags: InstanceTags::default(),
            max_skew: Some(600 * 1_000_000_000),
            series_ttl: None,
        }
    }

    fn msg(vm: &str, ts: i64, v: f64) -> String {
        format!(
            r#"{{"name":"cpu","tags":{{"vmId":"{vm}","cpu":"cpu-total"}},"fields":{{"usage_idle":{v},"s":"x"}},"timestamp":{ts}}}"#
        )
    }

    #[test]
    fn stamps_values_and_splits_late_ones() {
        let table = Rc::new(RefCell::new(SeriesTable::new()));
        let mut ingest = Ingest::new(table.clone(), config());
        let now = Instant::now();
        let mut wm = Watermarks::new(5_000_000_000, Duration::from_secs(30));
        let slot = wm.add_partition(now);
        let src: Arc<str> = "f".into();
        let t0 = 1_700_000_000i64;
        for (i, (ts, v)) in [(t0, 1.0), (t0 + 3, 2.0), (t0 + 16, 3.0), (t0 + 2, 4.0), (t0 + 12, 5.0)].iter().enumerate()
        {
            ingest.message(
                msg("vm-1", *ts, *v).as_bytes(),
                &origin(&src, 0, i as i64),
                slot,
                &mut wm,
                t0 * 1_000_000_000,
                now,
            );
        }
        ingest.message(b"garbage", &origin(&src, 0, 9), slot, &mut wm, t0 * 1_000_000_000, now);
        let out = ingest.take();
        // t0+16 moves the watermark to t0+11: the window ending at t0+10 is closed for t0+2.
        assert_eq!(out.late.len(), 1);
        assert_eq!(out.late[0].value, 4.0);
        assert_eq!(out.late[0].watermark, (t0 + 11) * 1_000_000_000);
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].origin.position, 9);
        let w1: Vec<f64> = out.windows[&((t0 + 10) * 1_000_000_000)].iter().map(|o| o.value).collect();
        let w2: Vec<f64> = out.windows[&((t0 + 20) * 1_000_000_000)].iter().map(|o| o.value).collect();
        assert_eq!(w1, vec![1.0, 2.0]);
        assert_eq!(w2, vec![3.0, 5.0]);
        assert_eq!(&*table.borrow().key(0).instance, "cpu-total");
    }

    #[test]
    fn far_future_is_rejected_and_does_not_move_the_watermark() {
        let table = Rc::new(RefCell::new(SeriesTable::new()));
        let mut ingest = Ingest::new(table, config());
        let now = Instant::now();
        let mut wm = Watermarks::new(0, Duration::from_secs(30));
        let slot = wm.add_partition(now);
        let src: Arc<str> = "f".into();
        let t0 = 1_700_000_000i64;
        let arrival = t0 * 1_000_000_000;
        ingest.message(msg("a", t0, 1.0).as_bytes(), &origin(&src, 0, 0), slot, &mut wm, arrival, now);
        ingest.message(msg("a", t0 + 86_400, 1.0).as_bytes(), &origin(&src, 0, 1), slot, &mut wm, arrival, now);
        let out = ingest.take();
        assert_eq!(out.rejects.len(), 1);
        assert!(out.rejects[0].reason.contains("ahead"), "{}", out.rejects[0].reason);
        assert_eq!(wm.partition_watermark(slot), Some(arrival));
    }
}

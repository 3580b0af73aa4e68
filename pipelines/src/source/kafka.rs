//! The Kafka source: a `BaseConsumer` per worker with manually assigned partitions.
//!
//! Partition `p` of topic `t` belongs to worker `(p + h(t)) % workers` (h: a stable hash of the
//! topic name, 0 for the first topic of a list), so with one topic worker `i` reads the
//! partitions with `p % workers == i`. Topics are a list or a regular expression; metadata is
//! re-read periodically, so topics and partitions created later (per-agent topics of new agents)
//! are picked up. Offsets are never auto-committed: they are committed from checkpoints (see
//! [`crate::checkpoint`]), after the sinks have written what needs them; a job resuming from a
//! checkpoint seeks each partition to its offset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use operators::checkpoint::PartitionCheckpoint;
use operators::ingest::Ingest;
use operators::model::{stable_hash, Origin};
use operators::time::Watermarks;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;
use rustc_hash::FxHashMap;

use super::{wall_ns, PartitionPosition, ReadStatus, Reader};
use crate::checkpoint::Checkpoint;
use crate::control::JobControl;
use crate::spec::{KafkaSource, StartAt};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Part {
    topic: Arc<str>,
    partition: i32,
    slot: usize,
    /// Next offset to read (the offset after the last message seen), if any was seen.
    next: Option<i64>,
    /// Offset to stop at (exclusive) once draining.
    end: Option<i64>,
    done: bool,
    /// Resuming from a checkpoint: reading starts a little before its offset (see [`Resume`]).
    resume: Option<Resume>,
    /// `end` was checked against the high watermark the broker reports with fetched records.
    end_confirmed: bool,
}

/// A partition resuming at `target`. Reading starts at `asked`, somewhat earlier, and records
/// before `target` are passed over: some brokers answer a fetch that starts inside a record
/// batch with the *next* batch, which would silently skip the records between. If the first
/// record seen is already past `target`, reading starts again further back.
#[derive(Debug)]
struct Resume {
    target: i64,
    asked: i64,
    /// A record before `target` was seen: the broker delivers from before it.
    reached: bool,
    /// After starting again further back: the last record seen of the earlier reading, whose
    /// continuation (records still queued from before the seek) is passed over.
    rewinding: Option<i64>,
}

/// How far before a checkpoint's offset a resumed partition starts reading (librdkafka's
/// producers put at most 10 000 messages in one batch by default).
const RESUME_REWIND: i64 = 10_000;

/// What to do with a record of a partition that is resuming.
enum ResumeStep {
    /// Before the checkpoint's offset: already accounted for.
    Skip,
    /// Reading from further back; the record will come again.
    Rewound,
    /// At or past the checkpoint's offset, with nothing skipped: read it.
    Read,
}

impl Resume {
    fn step(&mut self, offset: i64, low_watermark: impl FnOnce() -> Option<i64>) -> (ResumeStep, Option<i64>) {
        if offset < self.target {
            self.reached = true;
            return (ResumeStep::Skip, None);
        }
        if self.reached {
            return (ResumeStep::Read, None);
        }
        if let Some(last) = self.rewinding {
            if offset > last {
                self.rewinding = Some(offset);
                return (ResumeStep::Rewound, None);
            }
        }
        if self.asked == 0 {
            return (ResumeStep::Read, None);
        }
        // The broker skipped from `asked` to past `target`. Unless the records were deleted,
        // start again further back.
        let low = low_watermark().unwrap_or(0);
        if low >= self.target || self.asked <= low {
            return (ResumeStep::Read, None);
        }
        let rewind = (self.target - self.asked).max(RESUME_REWIND) * 8;
        self.asked = (self.target - rewind).max(low);
        self.rewinding = Some(offset);
        (ResumeStep::Rewound, Some(self.asked))
    }
}

/// Keeps the broker's high watermark of every partition from librdkafka's statistics, for the
/// consumer lag (no extra requests to the broker).
#[derive(Default)]
pub struct LagContext {
    /// Topic → partition → high watermark.
    high: Mutex<FxHashMap<String, FxHashMap<i32, i64>>>,
}

impl LagContext {
    fn high(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high.lock().ok()?.get(topic)?.get(&partition).copied()
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let Ok(mut high) = self.high.lock() else { return };
        for (name, topic) in statistics.topics {
            let parts = high.entry(name).or_default();
            for (id, p) in topic.partitions {
                if id >= 0 && p.hi_offset >= 0 {
                    parts.insert(id, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// The consumer of one worker.
pub type Kafka = BaseConsumer<LagContext>;

pub struct KafkaReader {
    consumer: Kafka,
    spec: KafkaSource,
    regex: Option<Regex>,
    worker: usize,
    peers: usize,
    parts: Vec<Part>,
    index: FxHashMap<Box<str>, Vec<Option<usize>>>,
    last_metadata: Option<Instant>,
    control: Arc<JobControl>,
    draining: bool,
    errors: u64,
    last_message: Instant,
    /// The checkpoint this job resumes from, if any.
    resume: Option<Arc<Checkpoint>>,
    /// Records the broker delivered a second time, passed over.
    redelivered: u64,
    next_lag_check: Instant,
}

/// Without a high watermark from the broker's fetch responses, an end offset is trusted only
/// after this long without records.
const UNCONFIRMED_END_QUIET: Duration = Duration::from_secs(10);
/// How often partitions with records still to read are marked active.
const LAG_CHECK: Duration = Duration::from_millis(500);

/// When finishing at the end, the partitions must also have been quiet this long: some brokers
/// report end offsets that lag behind what they serve, and reading on costs nothing.
const QUIET_BEFORE_END: Duration = Duration::from_secs(1);

/// Creates the consumer for one worker.
pub fn consumer(spec: &KafkaSource) -> Result<Kafka, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("group.id", &spec.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "5")
        .set("statistics.interval.ms", "1000")
        .set("auto.offset.reset", if spec.start == StartAt::Latest { "latest" } else { "earliest" });
    for (k, v) in &spec.options {
        config.set(k, v);
    }
    config.create_with_context(LagContext::default())
}

impl KafkaReader {
    pub fn new(
        spec: KafkaSource,
        worker: usize,
        peers: usize,
        control: Arc<JobControl>,
        resume: Option<Arc<Checkpoint>>,
    ) -> Result<Self, KafkaError> {
        let consumer = consumer(&spec)?;
        let regex = spec.topic_regex.as_deref().map(Regex::new).transpose().ok().flatten();
        Ok(KafkaReader {
            consumer,
            spec,
            regex,
            worker,
            peers: peers.max(1),
            parts: Vec::new(),
            index: FxHashMap::default(),
            last_metadata: None,
            control,
            draining: false,
            errors: 0,
            last_message: Instant::now(),
            resume,
            redelivered: 0,
            next_lag_check: Instant::now(),
        })
    }

    fn owner(&self, topic: &str, partition: i32) -> usize {
        let offset = if self.spec.topics.first().is_some_and(|t| t == topic) { 0 } else { stable_hash(&[topic]) };
        ((partition as u64).wrapping_add(offset) % self.peers as u64) as usize
    }

    /// Reads topic metadata and assigns partitions this worker owns and does not read yet.
    fn refresh_assignment(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, now: Instant) {
        self.last_metadata = Some(now);
        let metadata = match self.consumer.fetch_metadata(None, METADATA_TIMEOUT) {
            Ok(m) => m,
            Err(e) => {
                self.errors += 1;
                eprintln!("dragonflow: kafka metadata from {}: {e}", self.spec.brokers);
                return;
            }
        };
        let mut new = TopicPartitionList::new();
        for topic in metadata.topics() {
            let name = topic.name();
            let wanted = match &self.regex {
                Some(re) => !name.starts_with("__") && re.is_match(name),
                None => self.spec.topics.iter().any(|t| t == name),
            };
            if !wanted || topic.error().is_some() {
                continue;
            }
            for p in topic.partitions() {
                let id = p.id();
                if self.owner(name, id) != self.worker {
                    continue;
                }
                let known = self.index.get(name).and_then(|v| v.get(id as usize).copied().flatten()).is_some();
                if known {
                    continue;
                }
                let slot = watermarks.add_partition(now);
                let part = self.parts.len();
                let topic: Arc<str> = name.into();
                self.parts.push(Part {
                    topic,
                    partition: id,
                    slot,
                    next: None,
                    end: None,
                    done: false,
                    resume: None,
                    end_confirmed: false,
                });
                let v = self.index.entry(name.into()).or_default();
                if v.len() <= id as usize {
                    v.resize(id as usize + 1, None);
                }
                v[id as usize] = Some(part);
                let resumed = self.resume.as_ref().and_then(|c| c.partition(name, id).map(|p| (c.frontier, p)));
                let offset = match (self.spec.start, resumed) {
                    (StartAt::Committed, Some((frontier, cp))) => {
                        ingest.resume(slot, cp, frontier);
                        watermarks.restore(slot, cp.max_ts);
                        let asked = (cp.offset - RESUME_REWIND).max(0);
                        self.parts[part].next = Some(cp.offset);
                        self.parts[part].resume =
                            Some(Resume { target: cp.offset, asked, reached: false, rewinding: None });
                        Offset::Offset(asked)
                    }
                    (StartAt::Earliest, _) => Offset::Beginning,
                    (StartAt::Latest, _) => Offset::End,
                    (StartAt::Committed, None) => Offset::Stored,
                };
                if let Err(e) = new.add_partition_offset(name, id, offset) {
                    eprintln!("dragonflow: kafka {name}/{id}: {e}");
                }
                if self.draining || self.spec.stop_at_end {
                    let end = self.high_watermark(name, id);
                    self.parts[part].end = end;
                }
            }
        }
        if new.count() > 0 {
            if let Err(e) = self.consumer.incremental_assign(&new) {
                self.errors += 1;
                eprintln!("dragonflow: kafka assign: {e}");
            }
        }
    }

    fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        match self.consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
            Ok((_, high)) => Some(high),
            Err(e) => {
                eprintln!("dragonflow: kafka watermarks of {topic}/{partition}: {e}");
                None
            }
        }
    }

    /// Marks partitions that reached their end offset as done.
    fn check_ends(&mut self, quiet: Duration) {
        let context = self.consumer.context();
        let positions = if self.parts.iter().any(|p| !p.done && p.end.is_some() && p.next.is_none()) {
            self.consumer.position().ok()
        } else {
            None
        };
        for part in &mut self.parts {
            let Some(end) = part.end else { continue };
            if part.done {
                continue;
            }
            let mut pos = part.next;
            if pos.is_none() {
                if let Some(tpl) = &positions {
                    if let Some(Offset::Offset(o)) = tpl.find_partition(&part.topic, part.partition).map(|e| e.offset())
                    {
                        pos = Some(o);
                    }
                }
            }
            // Some brokers (tansu 0.6) report an end offset short of the last record batch in
            // ListOffsets; the high watermark that comes with fetched records is right.
            let mut end = end;
            if !part.end_confirmed {
                if let Some(high) = context.high(&part.topic, part.partition) {
                    end = end.max(high);
                    part.end = Some(end);
                    part.end_confirmed = true;
                }
            }
            let confirmed = part.end_confirmed || quiet >= UNCONFIRMED_END_QUIET;
            if confirmed && (end == 0 || pos.is_some_and(|p| p >= end)) {
                // Finished for progress purposes only when the whole source finishes: a
                // partition still delivering must keep holding the watermark.
                part.done = true;
            }
        }
    }
}

/// Commits a checkpoint's offsets to the consumer group of `spec` (with a consumer of its own),
/// so that standard Kafka tools show the group's lag. Returns how many partitions it committed.
pub fn commit_offsets(spec: &KafkaSource, partitions: &[PartitionCheckpoint]) -> Result<usize, KafkaError> {
    if partitions.is_empty() {
        return Ok(0);
    }
    let consumer = consumer(spec)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(&p.source, p.partition, Offset::Offset(p.offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(partitions.len())
}

impl Reader for KafkaReader {
    fn positions(&self) -> Vec<PartitionPosition> {
        let context = self.consumer.context();
        self.parts
            .iter()
            .map(|p| PartitionPosition {
                source: p.topic.clone(),
                partition: p.partition,
                slot: p.slot,
                next: p.next,
                lag: context.high(&p.topic, p.partition).map(|h| (h - p.next.unwrap_or(0)).max(0)),
            })
            .collect()
    }

    fn commit(&mut self, partitions: &[PartitionCheckpoint]) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let mine = self
                .index
                .get(p.source.as_str())
                .and_then(|v| v.get(p.partition as usize))
                .is_some_and(|s| s.is_some());
            if mine && tpl.add_partition_offset(&p.source, p.partition, Offset::Offset(p.offset)).is_err() {
                continue;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            self.errors += 1;
            eprintln!("dragonflow: kafka commit: {e}");
        }
    }

    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        if self.control.stopping() {
            return ReadStatus::Done;
        }
        if self.last_metadata.is_none_or(|t| now.duration_since(t) >= METADATA_REFRESH) {
            self.refresh_assignment(ingest, watermarks, now);
        }
        if self.control.draining() && !self.draining {
            self.draining = true;
            self.refresh_assignment(ingest, watermarks, now);
            let ends: Vec<Option<i64>> =
                self.parts.iter().map(|p| self.high_watermark(&p.topic, p.partition)).collect();
            for (p, e) in self.parts.iter_mut().zip(ends) {
                if p.end.is_none() {
                    p.end = e.or(Some(0));
                }
            }
        }
        let arrival = wall_ns();
        let mut read = 0;
        let mut origin = Origin { source: "".into(), partition: 0, position: 0 };
        while read < budget {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.errors += 1;
                    if self.errors % 1000 == 1 {
                        eprintln!("dragonflow: kafka consumer: {e}");
                    }
                    break;
                }
                Some(Ok(msg)) => {
                    read += 1;
                    let Some(&Some(part)) = self.index.get(msg.topic()).and_then(|v| v.get(msg.partition() as usize))
                    else {
                        continue;
                    };
                    self.last_message = now;
                    let p = &mut self.parts[part];
                    if let Some(r) = p.resume.as_mut() {
                        let consumer = &self.consumer;
                        let (topic, partition) = (&p.topic, p.partition);
                        let low = || consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT).ok().map(|(l, _)| l);
                        match r.step(msg.offset(), low) {
                            (ResumeStep::Skip, _) => continue,
                            (ResumeStep::Rewound, Some(at)) => {
                                eprintln!(
                                    "dragonflow: kafka {topic}/{partition}: the broker skipped to offset {} instead of {}; reading again from {at}",
                                    msg.offset(),
                                    r.target
                                );
                                if let Err(e) = consumer.seek(topic, partition, Offset::Offset(at), METADATA_TIMEOUT) {
                                    eprintln!("dragonflow: kafka seek {topic}/{partition}: {e}");
                                }
                                continue;
                            }
                            (ResumeStep::Rewound, None) => continue,
                            (ResumeStep::Read, _) => p.resume = None,
                        }
                    }
                    // A record delivered again (some brokers answer a fetch at the end of the log
                    // with records already served) is never read twice.
                    if p.next.is_some_and(|n| msg.offset() < n) {
                        if self.redelivered == 0 {
                            eprintln!(
                                "dragonflow: kafka {}/{}: the broker delivered offset {} again (expected {:?}); records delivered twice are passed over",
                                p.topic, p.partition, msg.offset(), p.next
                            );
                        }
                        self.redelivered += 1;
                        continue;
                    }
                    p.next = Some(msg.offset() + 1);
                    if !Arc::ptr_eq(&origin.source, &p.topic) {
                        origin.source = p.topic.clone();
                    }
                    origin.partition = p.partition;
                    origin.position = msg.offset();
                    match msg.payload() {
                        Some(payload) if !payload.is_empty() => {
                            ingest.message(payload, &origin, p.slot, watermarks, arrival, now);
                        }
                        _ => {
                            watermarks.touch(p.slot, now);
                            let max_ts = watermarks.max_event_time(p.slot);
                            ingest.reject(&origin, Some(p.slot), max_ts, "empty message", b"", arrival);
                        }
                    }
                }
            }
        }
        if now >= self.next_lag_check {
            self.next_lag_check = now + LAG_CHECK;
            // A partition with records still to read is behind, not idle: it holds the watermark.
            let context = self.consumer.context();
            for p in &self.parts {
                if context.high(&p.topic, p.partition).is_some_and(|h| h > p.next.unwrap_or(0)) {
                    watermarks.touch(p.slot, now);
                }
            }
        }
        if self.draining || self.spec.stop_at_end {
            self.check_ends(now.duration_since(self.last_message));
            let quiet = now.duration_since(self.last_message) >= QUIET_BEFORE_END;
            if quiet && !self.parts.is_empty() && self.parts.iter().all(|p| p.done) {
                for p in &self.parts {
                    watermarks.finish(p.slot);
                }
                return ReadStatus::Done;
            }
            // Nothing to read at all (no such topic, or no partition for this worker).
            if self.parts.is_empty() {
                return ReadStatus::Done;
            }
        }
        if read >= budget {
            ReadStatus::Busy
        } else {
            ReadStatus::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(target: i64, asked: i64) -> Resume {
        Resume { target, asked, reached: false, rewinding: None }
    }

    #[test]
    fn records_before_the_target_are_passed_over() {
        let mut r = resume(100, 90);
        assert!(matches!(r.step(95, || Some(0)).0, ResumeStep::Skip));
        assert!(matches!(r.step(100, || Some(0)).0, ResumeStep::Read));
    }

    #[test]
    fn a_broker_that_skips_past_the_target_is_read_again_from_further_back() {
        let mut r = resume(20_000, 10_000);
        // The broker answered from 20 372: rewind.
        let (step, at) = r.step(20_372, || Some(0));
        assert!(matches!(step, ResumeStep::Rewound));
        assert_eq!(at, Some(0));
        // Records still queued from the first reading are passed over without rewinding again.
        assert!(matches!(r.step(20_373, || Some(0)), (ResumeStep::Rewound, None)));
        // The new reading delivers from before the target.
        assert!(matches!(r.step(5, || Some(0)).0, ResumeStep::Skip));
        assert!(matches!(r.step(20_000, || Some(0)).0, ResumeStep::Read));
    }

    #[test]
    fn deleted_records_are_not_waited_for() {
        // Retention removed everything before 30 000.
        let mut r = resume(20_000, 10_000);
        assert!(matches!(r.step(30_000, || Some(30_000)).0, ResumeStep::Read));
    }
}

//! The Kafka source: a `BaseConsumer` per worker with manually assigned partitions.
//!
//! Partition `p` of topic `t` belongs to worker `(p + h(t)) % workers` (h: a stable hash of the
//! topic name, 0 for the first topic of a list), so with one topic worker `i` reads the
//! partitions with `p % workers == i`. Topics are a list or a regular expression; metadata is
//! re-read periodically, so topics and partitions created later (per-agent topics of new agents)
//! are picked up. Offsets are never auto-committed: the job commits what it consumed only after
//! the sinks have written it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::ingest::Ingest;
use operators::model::{stable_hash, Origin};
use operators::time::Watermarks;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;
use rustc_hash::FxHashMap;

use super::{wall_ns, ReadStatus, Reader};
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
}

/// Offsets consumed so far, shared with the job so it can commit after the sinks flushed.
#[derive(Clone, Default)]
pub struct Consumed(Rc<RefCell<Vec<ConsumedOffset>>>);

/// Topic, partition, and the next offset to read.
type ConsumedOffset = (Arc<str>, i32, i64);

pub struct KafkaReader {
    consumer: Rc<BaseConsumer>,
    spec: KafkaSource,
    regex: Option<Regex>,
    worker: usize,
    peers: usize,
    parts: Vec<Part>,
    index: FxHashMap<Box<str>, Vec<Option<usize>>>,
    last_metadata: Option<Instant>,
    control: Arc<JobControl>,
    draining: bool,
    consumed: Consumed,
    errors: u64,
    last_message: Instant,
}

/// When finishing at the end, the partitions must also have been quiet this long: some brokers
/// report end offsets that lag behind what they serve, and reading on costs nothing.
const QUIET_BEFORE_END: Duration = Duration::from_secs(1);

/// Creates the consumer for one worker.
pub fn consumer(spec: &KafkaSource) -> Result<BaseConsumer, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("group.id", &spec.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "5")
        .set("auto.offset.reset", if spec.start == StartAt::Latest { "latest" } else { "earliest" });
    for (k, v) in &spec.options {
        config.set(k, v);
    }
    config.create()
}

impl KafkaReader {
    pub fn new(spec: KafkaSource, worker: usize, peers: usize, control: Arc<JobControl>) -> Result<Self, KafkaError> {
        let consumer = Rc::new(consumer(&spec)?);
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
            consumed: Consumed::default(),
            errors: 0,
            last_message: Instant::now(),
        })
    }

    /// A handle on the offsets consumed, and the consumer to commit them with.
    pub fn commit_handle(&self) -> KafkaCommit {
        KafkaCommit { consumer: self.consumer.clone(), consumed: self.consumed.clone() }
    }

    fn owner(&self, topic: &str, partition: i32) -> usize {
        let offset = if self.spec.topics.first().is_some_and(|t| t == topic) { 0 } else { stable_hash(&[topic]) };
        ((partition as u64).wrapping_add(offset) % self.peers as u64) as usize
    }

    /// Reads topic metadata and assigns partitions this worker owns and does not read yet.
    fn refresh_assignment(&mut self, watermarks: &mut Watermarks, now: Instant) {
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
                self.parts.push(Part { topic, partition: id, slot, next: None, end: None, done: false });
                let v = self.index.entry(name.into()).or_default();
                if v.len() <= id as usize {
                    v.resize(id as usize + 1, None);
                }
                v[id as usize] = Some(part);
                let offset = match self.spec.start {
                    StartAt::Earliest => Offset::Beginning,
                    StartAt::Latest => Offset::End,
                    StartAt::Committed => Offset::Stored,
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
    fn check_ends(&mut self) {
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
            if end == 0 || pos.is_some_and(|p| p >= end) {
                // Finished for progress purposes only when the whole source finishes: a
                // partition still delivering must keep holding the watermark.
                part.done = true;
            }
        }
    }
}

impl Reader for KafkaReader {
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        if self.control.stopping() {
            return ReadStatus::Done;
        }
        if self.last_metadata.is_none_or(|t| now.duration_since(t) >= METADATA_REFRESH) {
            self.refresh_assignment(watermarks, now);
        }
        if self.control.draining() && !self.draining {
            self.draining = true;
            self.refresh_assignment(watermarks, now);
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
                            ingest.reject(&origin, "empty message", b"", arrival);
                        }
                    }
                }
            }
        }
        // The committable offsets change only when messages were read.
        if read > 0 {
            let mut consumed = self.consumed.0.borrow_mut();
            consumed.clear();
            consumed.extend(self.parts.iter().filter_map(|p| p.next.map(|n| (p.topic.clone(), p.partition, n))));
        }
        if self.draining || self.spec.stop_at_end {
            self.check_ends();
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

/// Commits the offsets a worker consumed, once the sinks have written what they hold.
pub struct KafkaCommit {
    consumer: Rc<BaseConsumer>,
    consumed: Consumed,
}

impl KafkaCommit {
    pub fn commit(&self) -> Result<usize, KafkaError> {
        let consumed = self.consumed.0.borrow();
        if consumed.is_empty() {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in consumed.iter() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(consumed.len())
    }
}

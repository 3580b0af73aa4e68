//! The registry topic: agent records on the Kafka source's brokers (see `docs/groups.md`).
//!
//! Every partition of the topic is read from the beginning by a consumer of its own, with a
//! group id of its own and no offset commits: each job run sees the whole topic. The topic's
//! metadata is fetched on a helper thread, so [`RegistryTopic::poll`] never waits for the broker;
//! until the topic has partitions it is asked for again every second, then every few seconds,
//! so partitions added later are read as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::registry::{parse_registry_message, RegistryUpdate};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;

use operators::model::{Origin, RejectRow};

use crate::spec::KafkaSource;

/// Most messages one call to [`RegistryTopic::poll`] reads.
pub const MAX_PER_POLL: usize = 10_000;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often metadata is asked for while the topic has no partitions.
const METADATA_RETRY: Duration = Duration::from_secs(1);
/// How often metadata is asked for once partitions are read.
const METADATA_REFRESH: Duration = Duration::from_secs(5);

/// The partitions the broker reports for the topic, or why it reports none.
type Partitions = Result<Vec<i32>, String>;

/// A reader of a topic of registry updates.
pub struct RegistryTopic {
    consumer: Arc<BaseConsumer>,
    topic: String,
    /// Partition → the offset after the last message read (or `None` before the first).
    partitions: FxHashMap<i32, Option<i64>>,
    /// A metadata request in flight on the helper thread.
    metadata: Option<Receiver<Partitions>>,
    next_metadata: Instant,
    /// Consumer errors so far (reported sparingly: a broker that is down reports one per try).
    errors: u64,
    /// The last metadata error reported, so that it is not reported at every try.
    metadata_error: Option<String>,
    /// Messages that are not registry updates, for the `rejects` table.
    rejects: Vec<RejectRow>,
}

impl RegistryTopic {
    /// A reader of `topic` on the brokers of `source`, with its security and other options.
    /// Reading starts with the first call to [`poll`](Self::poll).
    pub fn new(source: &KafkaSource, topic: &str) -> Result<Self, String> {
        static READERS: AtomicU64 = AtomicU64::new(0);
        let group = format!(
            "dragonflow-registry-{}-{}-{}",
            std::process::id(),
            super::wall_ns(),
            READERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &source.brokers)
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "5");
        for (k, v) in &source.options {
            config.set(k, v);
        }
        // What makes this reader see the whole topic at every run, whatever the options say.
        config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer =
            config.create().map_err(|e| format!("registry topic {topic} on {}: {e}", source.brokers))?;
        Ok(RegistryTopic {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            partitions: FxHashMap::default(),
            metadata: None,
            next_metadata: Instant::now(),
            errors: 0,
            metadata_error: None,
            rejects: Vec::new(),
        })
    }

    /// The messages read so far that were not registry updates, with the reason.
    pub fn take_rejects(&mut self) -> Vec<RejectRow> {
        std::mem::take(&mut self.rejects)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions being read.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Reads what has arrived, without waiting: up to [`MAX_PER_POLL`] messages, each a registry
    /// update or why it is not one. Consumer and metadata errors are returned as errors too
    /// (a repeated one only now and then).
    pub fn poll(&mut self) -> Vec<Result<RegistryUpdate, String>> {
        let mut out = Vec::new();
        self.metadata(Instant::now(), &mut out);
        while out.len() < MAX_PER_POLL {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.errors += 1;
                    if self.errors % 1000 == 1 {
                        out.push(Err(format!("registry topic {}: {e}", self.topic)));
                    }
                    break;
                }
                Some(Ok(msg)) => {
                    if msg.topic() != self.topic {
                        continue;
                    }
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let next = self.partitions.entry(partition).or_default();
                    // Some brokers deliver records again at the end of the log: an update read
                    // twice could undo a later one, so it is passed over.
                    if next.is_some_and(|n| offset < n) {
                        continue;
                    }
                    *next = Some(offset + 1);
                    match parse_registry_message(msg.key(), msg.payload()) {
                        Ok(update) => out.push(Ok(update)),
                        // Kept with the reason, like any input that cannot be used.
                        Err(e) => self.rejects.push(RejectRow::new(
                            Origin { source: self.topic.as_str().into(), partition, position: offset },
                            format!("registry update: {e}"),
                            msg.payload().unwrap_or_default(),
                            super::wall_ns(),
                        )),
                    }
                }
            }
        }
        out
    }

    /// Takes the answer of a metadata request if it came, assigning partitions not read yet from
    /// their beginning, and sends the next request when it is due.
    fn metadata(&mut self, now: Instant, out: &mut Vec<Result<RegistryUpdate, String>>) {
        if let Some(rx) = &self.metadata {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.metadata = None,
                Ok(answer) => {
                    self.metadata = None;
                    match answer {
                        Ok(partitions) => {
                            self.metadata_error = None;
                            self.assign(&partitions, out);
                        }
                        Err(e) => {
                            if self.metadata_error.as_ref() != Some(&e) {
                                out.push(Err(e.clone()));
                            }
                            self.metadata_error = Some(e);
                        }
                    }
                }
            }
            let wait = if self.partitions.is_empty() { METADATA_RETRY } else { METADATA_REFRESH };
            self.next_metadata = now + wait;
        }
        if self.metadata.is_some() || now < self.next_metadata {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let spawned = std::thread::Builder::new().name("dragonflow-registry-metadata".into()).spawn(move || {
            let _ = tx.send(topic_partitions(&consumer, &topic));
        });
        match spawned {
            Ok(_) => self.metadata = Some(rx),
            Err(e) => {
                out.push(Err(format!("registry topic {}: cannot start a metadata thread: {e}", self.topic)));
                self.next_metadata = now + METADATA_RETRY;
            }
        }
    }

    /// Reads the topic up to the end it has now (waiting up to `timeout`), so that a job starts
    /// with every registry update already published: a backfill then places VMs in their groups
    /// the same way at every run. Later updates come with [`poll`](Self::poll).
    pub fn catch_up(&mut self, timeout: Duration) -> Vec<Result<RegistryUpdate, String>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        match topic_partitions(&self.consumer, &self.topic) {
            Ok(partitions) => self.assign(&partitions, &mut out),
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
        let mut ends = FxHashMap::default();
        for &p in self.partitions.keys() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.fetch_watermarks(&self.topic, p, left) {
                Ok((_, high)) => {
                    ends.insert(p, high);
                }
                Err(e) => out.push(Err(format!("registry topic {}/{p}: end offset: {e}", self.topic))),
            }
        }
        self.next_metadata = Instant::now() + METADATA_REFRESH;
        let caught_up = |parts: &FxHashMap<i32, Option<i64>>| {
            ends.iter().all(|(p, end)| *end <= 0 || parts.get(p).copied().flatten().is_some_and(|n| n >= *end))
        };
        while !caught_up(&self.partitions) && Instant::now() < deadline {
            let before = out.len();
            out.extend(self.poll());
            if out.len() == before {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        out
    }

    fn assign(&mut self, partitions: &[i32], out: &mut Vec<Result<RegistryUpdate, String>>) {
        let mut new = TopicPartitionList::new();
        for &p in partitions.iter().filter(|p| !self.partitions.contains_key(p)) {
            if let Err(e) = new.add_partition_offset(&self.topic, p, Offset::Beginning) {
                out.push(Err(format!("registry topic {}/{p}: {e}", self.topic)));
            }
        }
        if new.count() == 0 {
            return;
        }
        match self.consumer.incremental_assign(&new) {
            Ok(()) => {
                for e in new.elements() {
                    self.partitions.insert(e.partition(), None);
                }
            }
            // Not recorded as read: assigned again with the next metadata.
            Err(e) => out.push(Err(format!("registry topic {}: assigning partitions: {e}", self.topic))),
        }
    }
}

/// The topic's partitions as the broker reports them (blocking, up to [`METADATA_TIMEOUT`]).
fn topic_partitions(consumer: &BaseConsumer, topic: &str) -> Partitions {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| format!("registry topic {topic}: metadata: {e}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("registry topic {topic}: not known to the brokers yet"));
    };
    if let Some(e) = t.error() {
        return Err(format!("registry topic {topic}: {}", rdkafka::error::RDKafkaErrorCode::from(e)));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

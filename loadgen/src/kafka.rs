//! The fleet into Kafka: one message per metric on one topic, keyed by the agent's identity so
//! that an agent's messages stay on one partition and in order (apart from deliberate reordering).
//!
//! The producer never drops a message on its own account: when librdkafka's queue is full the
//! sender polls (which also serves delivery reports) and tries again. Failed deliveries are
//! counted from the delivery reports; the run ends with a bounded flush.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::stats::ProgressClock;
use crate::{interval_ns, Fleet, FleetConfig, LoadgenError, Message, Stats};

/// How long the final flush may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long creating the topic may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Bootstrap servers, `host:port,…`.
    pub brokers: String,
    /// The topic every agent publishes to.
    pub topic: String,
    /// Create the topic with this many partitions if it does not exist (replication: the broker's default).
    pub partitions: Option<i32>,
    /// Extra librdkafka producer settings, applied last (they override the generator's defaults).
    pub config: Vec<(String, String)>,
}

/// Counts failed deliveries as librdkafka reports them.
#[derive(Default)]
struct DeliveryReports {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DeliveryReports {
    fn note(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    /// Copies the error count and last error into `stats`, on top of `refused` send errors.
    fn fill(&self, stats: &mut Stats, refused: u64) {
        stats.errors = refused + self.failed.load(Ordering::Relaxed);
        if let Ok(last) = self.last_error.lock() {
            if last.is_some() {
                stats.last_error.clone_from(&last);
            }
        }
    }
}

impl ClientContext for DeliveryReports {
    fn error(&self, error: KafkaError, reason: &str) {
        // Client-wide trouble (brokers down, …): not a lost message by itself, but worth showing.
        self.note(format!("{error}: {reason}"));
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.note(format!("delivery failed: {e}"));
        }
    }
}

/// The producer's settings: throughput-minded defaults, then the target's own.
fn client_config(target: &KafkaTarget) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &target.brokers)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in &target.config {
        cfg.set(k, v);
    }
    cfg
}

/// Publishes to Kafka for `duration`.
///
/// - `realtime = true`: one tick every `interval` of wall clock, event time = now (unix; `start_ns` is
///   not used), `ceil(duration / interval)` ticks.
/// - `realtime = false`: as fast as possible with a synthetic clock from `start_ns`,
///   `duration / interval` ticks.
///
/// Key = agent key, so one agent stays on one partition; the Kafka timestamp is the event time.
/// A full producer queue is handled by polling and retrying (never dropping); delivery errors are
/// counted in `Stats.errors` from the delivery reports, as are messages the producer refuses and
/// messages still undelivered when the final flush (at most 30 s) gives up. `Stats.messages`
/// counts the messages handed to the producer. Stops early (still flushing) when `stop` becomes
/// true. Calls `progress` about once a second.
#[allow(clippy::too_many_arguments)]
pub fn run_kafka(
    cfg: FleetConfig,
    target: &KafkaTarget,
    start_ns: i64,
    interval: Duration,
    duration: Duration,
    realtime: bool,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Stats),
) -> Result<Stats, LoadgenError> {
    let step = interval_ns(interval)?;
    if target.topic.is_empty() {
        return Err(LoadgenError::Config("the Kafka topic name is empty".into()));
    }
    let config = client_config(target);
    if let Some(partitions) = target.partitions {
        create_topic(&config, target, partitions)?;
    }
    let producer: BaseProducer<DeliveryReports> =
        config.create_with_context(DeliveryReports::default()).map_err(|source| LoadgenError::Kafka {
            what: format!("creating a producer for {}", target.brokers),
            source,
        })?;

    let mut fleet = Fleet::new(cfg);
    let mut sender = Sender { producer: &producer, topic: &target.topic, stats: Stats::default(), refused: 0 };
    let mut clock = ProgressClock::new();
    let mut out = Vec::new();
    let stopped = || stop.load(Ordering::Relaxed);

    if realtime {
        let begin = Instant::now();
        let mut t: u32 = 0;
        while !stopped() {
            let Some(offset) = interval.checked_mul(t) else { break };
            if offset >= duration {
                break;
            }
            // Wait for this tick's moment, serving delivery reports meanwhile.
            let due = begin + offset;
            loop {
                let now = Instant::now();
                if now >= due || stopped() {
                    break;
                }
                producer.poll((due - now).min(Duration::from_millis(100)));
                if clock.due_now() {
                    sender.report(&clock, &mut progress);
                }
            }
            if stopped() {
                break;
            }
            out.clear();
            fleet.tick(wall_ns(), &mut out);
            sender.send_all(&mut out, stop, &mut clock, &mut progress);
            t += 1;
        }
    } else {
        let ticks = (duration.as_nanos() / interval.as_nanos()).min(u64::MAX as u128) as u64;
        for t in 0..ticks {
            if stopped() {
                break;
            }
            out.clear();
            fleet.tick(start_ns.saturating_add((t as i64).saturating_mul(step)), &mut out);
            sender.send_all(&mut out, stop, &mut clock, &mut progress);
        }
    }
    if !stopped() {
        out.clear();
        fleet.drain_held(&mut out);
        sender.send_all(&mut out, stop, &mut clock, &mut progress);
    }

    let flushed = producer.flush(FLUSH_TIMEOUT);
    let mut stats = std::mem::take(&mut sender.stats);
    producer.context().fill(&mut stats, sender.refused);
    if let Err(e) = flushed {
        let undelivered = u64::try_from(producer.in_flight_count()).unwrap_or(0);
        stats.errors += undelivered;
        stats.last_error =
            Some(format!("flush gave up after {FLUSH_TIMEOUT:?} with {undelivered} messages undelivered: {e}"));
    }
    stats.elapsed = clock.elapsed();
    Ok(stats)
}

/// Hands messages to the producer, keeping count.
struct Sender<'a> {
    producer: &'a BaseProducer<DeliveryReports>,
    topic: &'a str,
    stats: Stats,
    /// Messages the producer refused outright (not counting a full queue, which is retried).
    refused: u64,
}

impl Sender<'_> {
    fn report(&mut self, clock: &ProgressClock, progress: &mut impl FnMut(&Stats)) {
        self.stats.elapsed = clock.elapsed();
        self.producer.context().fill(&mut self.stats, self.refused);
        progress(&self.stats);
    }

    /// Sends `msgs` (emptying it) unless `stop` is set, which abandons the rest.
    fn send_all(
        &mut self,
        msgs: &mut Vec<Message>,
        stop: &AtomicBool,
        clock: &mut ProgressClock,
        progress: &mut impl FnMut(&Stats),
    ) {
        for (i, msg) in msgs.drain(..).enumerate() {
            if i % 1024 == 1023 {
                // Serve delivery reports as we go, so they do not pile up.
                self.producer.poll(Duration::ZERO);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            let mut record = BaseRecord::to(self.topic).key(msg.key.as_bytes()).payload(msg.payload.as_slice());
            if msg.timestamp_ns >= 0 {
                record = record.timestamp(msg.timestamp_ns / 1_000_000);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => {
                        self.stats.record(&msg);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                        if clock.due_now() {
                            self.report(clock, progress);
                        }
                    }
                    Err((e, _)) => {
                        self.refused += 1;
                        self.stats.last_error = Some(format!("producer refused a message: {e}"));
                        break;
                    }
                }
            }
            if clock.due() {
                self.report(clock, progress);
            }
        }
        self.producer.poll(Duration::ZERO);
    }
}

/// Creates the topic with `partitions` partitions unless it exists.
fn create_topic(config: &ClientConfig, target: &KafkaTarget, partitions: i32) -> Result<(), LoadgenError> {
    let what = || format!("creating topic '{}' with {partitions} partitions on {}", target.topic, target.brokers);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|source| LoadgenError::Kafka { what: what(), source })?;
    let topic = NewTopic::new(&target.topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)).operation_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &opts), ADMIN_TIMEOUT + Duration::from_secs(5))
        .ok_or_else(|| LoadgenError::Timeout(what()))?
        .map_err(|source| LoadgenError::Kafka { what: what(), source })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(LoadgenError::Kafka { what: what(), source: KafkaError::AdminOp(code) }),
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (the admin client completes it from its own
/// polling thread), or gives up after `timeout`.
fn block_on<F: Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

pub(crate) use operators::time::wall_ns;

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use operators::decode::{decode, Collected, TimestampUnit};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::{Message as _, Offset, TopicPartitionList};

    use super::*;
    use crate::Format;

    const T0: i64 = 1_700_000_000_000_000_000;

    /// Reads `topic` from the start until `want` messages arrived (or 20 s passed).
    fn consume(brokers: &str, topic: &str, partitions: i32, want: usize) -> Vec<(i32, String, Vec<u8>, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "loadgen-test")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                got.push((m.partition(), key, m.payload().unwrap().to_vec(), m.timestamp().to_millis().unwrap()));
            }
        }
        // Nothing more than what was sent.
        assert!(consumer.poll(Duration::from_millis(200)).is_none());
        got
    }

    #[test]
    fn publishes_every_message_once_keyed_by_agent() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("metrics", 3, 1).unwrap();
        let target = KafkaTarget {
            brokers: cluster.bootstrap_servers(),
            topic: "metrics".into(),
            partitions: None,
            config: vec![("linger.ms".into(), "1".into())],
        };
        let cfg =
            FleetConfig { agents: 8, seed: 2, format: Format::Json, skew_ns: 0, reorder: 0.1, churn: 0.0, first_vm: 0 };
        let mut calls = 0;
        let stats = run_kafka(
            cfg,
            &target,
            T0,
            Duration::from_secs(2),
            Duration::from_secs(10),
            false,
            &AtomicBool::new(false),
            |_| calls += 1,
        )
        .unwrap();
        assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
        assert_eq!(stats.messages, 8 * 6 * 5);
        let got = consume(&target.brokers, "metrics", 3, stats.messages as usize);
        assert_eq!(got.len() as u64, stats.messages);
        assert_eq!(got.iter().map(|g| g.2.len() as u64).sum::<u64>(), stats.bytes);

        let mut partition_of: HashMap<&str, i32> = HashMap::new();
        let mut seen = HashSet::new();
        for (partition, key, payload, ts_ms) in &got {
            assert_eq!(*partition_of.entry(key).or_insert(*partition), *partition, "{key} on one partition");
            let mut c = Collected::default();
            decode(Format::Json, payload, TimestampUnit::Auto, 0, &mut c);
            assert!(c.rejects.is_empty());
            let m = &c.metrics[0];
            assert_eq!(m.timestamp / 1_000_000, *ts_ms, "the Kafka timestamp is the event time");
            let vm = m.tag("vmId").unwrap();
            assert!(key.contains(&format!("/{vm}/")));
            assert!(seen.insert((key.clone(), m.name.to_string(), m.timestamp)), "duplicate");
        }
        assert_eq!(partition_of.len(), 8);
    }

    #[test]
    fn stop_ends_early_and_an_unreachable_topic_counts_errors() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let target =
            KafkaTarget { brokers: cluster.bootstrap_servers(), topic: "t".into(), partitions: None, config: vec![] };
        let stop = AtomicBool::new(true);
        let cfg = FleetConfig { agents: 3, ..FleetConfig::default() };
        let stats =
            run_kafka(cfg.clone(), &target, T0, Duration::from_secs(2), Duration::from_secs(3600), true, &stop, |_| {})
                .unwrap();
        assert_eq!(stats.messages, 0);

        // Real time: two ticks 100 ms apart.
        let stats = run_kafka(
            cfg.clone(),
            &target,
            0,
            Duration::from_millis(100),
            Duration::from_millis(200),
            true,
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        assert_eq!(stats.messages, 3 * 6 * 2);
        assert_eq!(stats.errors, 0);

        // Messages that cannot be delivered in time are errors, not silently gone.
        let bad = KafkaTarget {
            config: vec![("message.timeout.ms".into(), "300".into())],
            brokers: "127.0.0.1:1".into(),
            ..target.clone()
        };
        let stats = run_kafka(
            cfg,
            &bad,
            T0,
            Duration::from_secs(2),
            Duration::from_secs(4),
            false,
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        assert_eq!(stats.messages, 3 * 6 * 2);
        assert_eq!(stats.errors, stats.messages, "{:?}", stats.last_error);
        assert!(stats.last_error.is_some());
    }

    #[test]
    fn bad_settings_are_reported() {
        let target = KafkaTarget {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            partitions: None,
            config: vec![("no.such.setting".into(), "1".into())],
        };
        let err = run_kafka(
            FleetConfig::default(),
            &target,
            T0,
            Duration::from_secs(2),
            Duration::from_secs(2),
            false,
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("no.such.setting"), "{err}");
    }
}

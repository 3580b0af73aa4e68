//! The pull source: Dragonflow calls the agents, for VMs in private networks that cannot reach
//! Kafka (the reference framework's pull mode), and on-demand calls that answer "what is this VM
//! doing now?" without writing anything.
//!
//! A [`PullClient`] per process owns a small tokio runtime, one HTTP/1 client with a connection
//! pool, and the semaphore that bounds the agents polled at once. A [`PullReader`] per timely
//! worker polls its share of the registry's pull agents (`stable_hash(key) % peers == worker`,
//! mechanism `pull`, state `enable`, with a `pull_url`): every `interval`, at a phase drawn from
//! the key so that polls are spread over the interval, it asks `{pull_url}/metric/{measurement}`
//! for each measurement, one request after another on one connection. Answers reach
//! [`Reader::read`] through a bounded channel and become messages of one watermark partition per
//! worker (source `pull`, partition = worker index, position = arrival count), so pulled values
//! are windowed by the agent's timestamp under the same watermark rules as Kafka records.
//!
//! Nothing is retried within an interval: an agent whose last round has not finished when its
//! next one is due misses that round (counted as skipped), and a round stops at the first timeout
//! or connection error. More than `failures_unhealthy` failed rounds in a row (no answer with a
//! 2xx status) make the agent unhealthy: it is then only probed at `{pull_url}/healthcheck` every
//! `healthcheck_interval`, and polled again once a probe answers 2xx. The agents come from the
//! registry file, read again when it changes, and from the registry topic, read as it grows (each
//! reader reads all of it): switching an agent between push and pull needs no restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use operators::decode::{Format, TimestampUnit, MAX_MESSAGE_BYTES};
use operators::ingest::Ingest;
use operators::model::{stable_hash, Origin};
use operators::registry::{AgentRecord, AgentState, Mechanism, RegistryError, RegistryFile, RegistryUpdate};
use operators::time::Watermarks;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use sinks::error::chain;

use super::registry::RegistryTopic;
use super::{wall_ns, PartitionPosition, ReadStatus, Reader};
use crate::control::JobControl;
use crate::spec::KafkaSource;

/// The source name of pulled messages (their `Origin::source`).
pub const SOURCE: &str = "pull";

/// How often the registry file is checked for changes (at most; never less often than the
/// polling interval).
const REGISTRY_CHECK: Duration = Duration::from_secs(1);

/// Answers fetched and not yet read, per reader; beyond, polls wait (and rounds get skipped).
const QUEUE: usize = 65_536;

/// The most of an error answer's body kept in the reason.
const REASON_BODY: usize = 160;

/// How the pull source polls. `Default` gives the reference framework's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PullConfig {
    /// What to ask every agent for: `GET {pull_url}/metric/{measurement}`.
    pub measurements: Vec<String>,
    /// How often each agent is polled (default 10 s).
    pub interval: Duration,
    /// How long one request may take, connecting included (default 5 s).
    pub timeout: Duration,
    /// Agents polled at once in the process, each on one connection (default 256).
    pub concurrency: usize,
    /// More failed rounds in a row than this make an agent unhealthy (default 5).
    pub failures_unhealthy: u32,
    /// How often an unhealthy agent is probed at `{pull_url}/healthcheck` (default 60 s).
    pub healthcheck_interval: Duration,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            measurements: ["cpu", "cpufreq", "mem", "disk", "diskio", "net"].map(String::from).to_vec(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            concurrency: 256,
            failures_unhealthy: 5,
            healthcheck_interval: Duration::from_secs(60),
        }
    }
}

impl PullConfig {
    /// Refuses settings that cannot be polled, naming the field.
    pub fn validate(&self) -> Result<(), PullError> {
        let bad = |field: &'static str, message: String| Err(PullError::Config { field, message });
        if self.measurements.is_empty() {
            return bad("measurements", "expected at least one measurement".into());
        }
        if let Some(m) = self.measurements.iter().find(|m| !is_measurement_name(m)) {
            return bad("measurements", format!("expected names of letters, digits, `_`, `-` or `.`, got {m:?}"));
        }
        for (field, d) in [
            ("interval", self.interval),
            ("timeout", self.timeout),
            ("healthcheck_interval", self.healthcheck_interval),
        ] {
            if d.is_zero() {
                return bad(field, "expected a positive duration, got 0s".into());
            }
        }
        if self.concurrency == 0 {
            return bad("concurrency", "expected at least 1".into());
        }
        Ok(())
    }
}

/// A name that goes into a URL path as it is.
fn is_measurement_name(m: &str) -> bool {
    !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("`{field}`: {message}")]
    Config { field: &'static str, message: String },
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("cannot start the pull runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Topic(String),
}

/// Where a pull reader finds its agents: the registry file, the registry topic, or both.
#[derive(Clone, Debug, Default)]
pub struct PullRegistry {
    pub file: Option<PathBuf>,
    /// The registry topic, on the brokers (and with the options) of a Kafka source.
    pub topic: Option<(KafkaSource, String)>,
}

impl PullRegistry {
    /// Just a registry file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        PullRegistry { file: Some(path.into()), topic: None }
    }
}

/// How long a new reader waits for the registry topic's existing records before it starts.
const TOPIC_CATCH_UP: Duration = Duration::from_secs(10);

/// An agent turning unhealthy or healthy again, as the pull source judged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullHealthChange {
    /// The agent's registry key.
    pub key: String,
    /// Wall-clock time of the judgement, ns since the epoch.
    pub time_ns: i64,
    pub healthy: bool,
    /// Why: the failures and the last error, the healthcheck's answer, or why polling ended.
    pub reason: String,
}

/// Upper bounds (ms) of the round-delay histogram: from an agent's slot to the end of its round
/// (waiting for a permit included). The last bucket, past these, counts the rest.
pub const ROUND_DELAY_BUCKETS_MS: [u64; 12] = [5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000];

/// What one reader (or, summed, a job's readers) has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullStats {
    /// Pull agents this reader polls now (healthy or not).
    pub agents: u64,
    /// Metric requests answered with a 2xx status.
    pub polls_ok: u64,
    /// Metric requests that failed: error, timeout or another status.
    pub polls_failed: u64,
    /// Healthcheck probes of unhealthy agents, answered 2xx and not.
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Agents unhealthy now.
    pub unhealthy_agents: u64,
    /// Rounds not started because the agent's previous round was still running.
    pub skipped: u64,
    /// Answers fetched and not read yet.
    pub queued: u64,
    /// Registry reloads that failed (the last good version stays in use).
    pub registry_errors: u64,
    pub last_registry_error: Option<String>,
    /// Polling rounds finished, and how long after their slot each ended: counts per bucket of
    /// [`ROUND_DELAY_BUCKETS_MS`], then those beyond.
    pub rounds: u64,
    pub round_delay: Vec<u64>,
}

impl PullStats {
    /// Adds another reader's counts (the last registry error kept is the latest given).
    pub fn add(&mut self, other: &PullStats) {
        self.agents += other.agents;
        self.polls_ok += other.polls_ok;
        self.polls_failed += other.polls_failed;
        self.probes_ok += other.probes_ok;
        self.probes_failed += other.probes_failed;
        self.unhealthy_agents += other.unhealthy_agents;
        self.skipped += other.skipped;
        self.queued += other.queued;
        self.registry_errors += other.registry_errors;
        if other.last_registry_error.is_some() {
            self.last_registry_error.clone_from(&other.last_registry_error);
        }
        self.rounds += other.rounds;
        self.round_delay.resize(self.round_delay.len().max(other.round_delay.len()), 0);
        for (mine, theirs) in self.round_delay.iter_mut().zip(&other.round_delay) {
            *mine += theirs;
        }
    }

    /// The bucket bound (ms) below which the share `q` (0–1) of rounds ended after their slot;
    /// `None` without rounds, `Some(u64::MAX)` beyond the last bound.
    pub fn round_delay_quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.round_delay.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.round_delay.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(ROUND_DELAY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// An HTTP/1 client whose connections live across polling intervals.
fn http_client(timeout: Duration, idle: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    connector.set_keepalive(Some(idle));
    Client::builder(TokioExecutor::new()).pool_idle_timeout(idle).pool_timer(TokioTimer::new()).build(connector)
}

/// What the pull readers of one process share: the runtime their polls run on, the HTTP client
/// and its connection pool, and the limit of agents polled at once.
pub struct PullClient {
    config: PullConfig,
    /// Taken when dropped (a runtime is shut down in the background, from any context).
    runtime: Option<tokio::runtime::Runtime>,
    http: HttpClient,
    permits: Arc<Semaphore>,
}

impl PullClient {
    /// Validates `config` and starts the runtime (two threads).
    pub fn new(config: PullConfig) -> Result<Arc<PullClient>, PullError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dragonflow-pull")
            .enable_all()
            .build()
            .map_err(PullError::Runtime)?;
        // Idle connections are kept until the next round at least.
        let idle = config.interval.saturating_mul(2).max(Duration::from_secs(1));
        let http = {
            let _entered = runtime.enter();
            http_client(config.timeout, idle)
        };
        let permits = Arc::new(Semaphore::new(config.concurrency.min(Semaphore::MAX_PERMITS)));
        Ok(Arc::new(PullClient { config, runtime: Some(runtime), http, permits }))
    }

    pub fn config(&self) -> &PullConfig {
        &self.config
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the client")
    }
}

impl Drop for PullClient {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An answer on its way to the reader.
struct Fetched {
    body: Bytes,
    /// When it arrived: the event time of metrics without a timestamp.
    fetched_ns: i64,
}

/// Counters and health changes, shared by a reader and its polls.
#[derive(Default)]
struct Shared {
    agents: AtomicU64,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    unhealthy: AtomicU64,
    skipped: AtomicU64,
    rounds: AtomicU64,
    round_delay: [AtomicU64; ROUND_DELAY_BUCKETS_MS.len() + 1],
    registry_errors: AtomicU64,
    last_registry_error: Mutex<Option<String>>,
    /// Wall time of the latest answer with a 2xx status (ns; 0: none yet).
    last_ok_ns: AtomicI64,
    health: Mutex<Vec<PullHealthChange>>,
}

impl Shared {
    /// A round that was due at `slot` has ended.
    fn round_ended(&self, slot: tokio::time::Instant) {
        let ms = slot.elapsed().as_millis().min(u64::MAX as u128) as u64;
        let bucket = ROUND_DELAY_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(ROUND_DELAY_BUCKETS_MS.len());
        self.round_delay[bucket].fetch_add(1, Ordering::Relaxed);
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    fn health_change(&self, key: &str, healthy: bool, reason: String) {
        let change = PullHealthChange { key: key.to_string(), time_ns: wall_ns(), healthy, reason };
        match self.health.lock() {
            Ok(mut h) => h.push(change),
            Err(poisoned) => poisoned.into_inner().push(change),
        }
    }
}

/// Polls one worker's share of the pull agents and reads what they answer.
///
/// ```no_run
/// use std::path::Path;
/// use std::sync::Arc;
///
/// use pipelines::control::JobControl;
/// use pipelines::source::pull::{PullClient, PullConfig, PullReader, PullRegistry};
///
/// // One client per process, one reader per timely worker (here worker 0 of 2).
/// let client = PullClient::new(PullConfig::default())?;
/// let control = Arc::new(JobControl::new());
/// let registry = PullRegistry::file("agents.json");
/// let mut reader = PullReader::new(client.clone(), &registry, 0, 2, control)?;
/// // … `reader` goes to `ingest_source` like any `Reader`; now and then:
/// for change in reader.take_health_changes() {
///     println!("{} healthy: {} ({})", change.key, change.healthy, change.reason);
/// }
/// # Ok::<(), pipelines::source::pull::PullError>(())
/// ```
pub struct PullReader {
    /// Keeps the runtime of the polls alive.
    _client: Arc<PullClient>,
    interval: Duration,
    rx: mpsc::Receiver<Fetched>,
    shared: Arc<Shared>,
    control: Arc<JobControl>,
    drain: watch::Sender<bool>,
    scheduler: tokio::task::JoinHandle<()>,
    slot: Option<usize>,
    origin: Origin,
    draining: bool,
    done: bool,
}

impl PullReader {
    /// Reads the registry file once (a file that cannot be read or parsed is an error) and the
    /// registry topic up to its end (waiting at most 10 s), then starts polling the pull agents of
    /// worker `worker` of `peers`.
    pub fn new(
        client: Arc<PullClient>,
        registry: &PullRegistry,
        worker: usize,
        peers: usize,
        control: Arc<JobControl>,
    ) -> Result<PullReader, PullError> {
        let peers = peers.max(1);
        if worker >= peers {
            let message = format!("worker {worker} of {peers} workers");
            return Err(PullError::Config { field: "worker", message });
        }
        let mut file = registry.file.as_deref().map(RegistryFile::new);
        let mut initial = match &mut file {
            Some(file) => file.poll()?.unwrap_or_default(),
            None => Vec::new(),
        };
        let mut topic = match &registry.topic {
            Some((source, name)) => Some(RegistryTopic::new(source, name).map_err(PullError::Topic)?),
            None => None,
        };
        let mut topic_errors = Vec::new();
        if let Some(topic) = &mut topic {
            for u in topic.catch_up(TOPIC_CATCH_UP) {
                match u {
                    Ok(u) => initial.push(u),
                    Err(e) => topic_errors.push(e),
                }
            }
            // Messages that are not records are the job's registry reader's to report.
            topic.take_rejects();
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let (drain, draining) = watch::channel(false);
        let config = client.config();
        let mut scheduler = Scheduler {
            http: client.http.clone(),
            permits: client.permits.clone(),
            measurements: config.measurements.iter().map(|m| Arc::<str>::from(m.as_str())).collect(),
            interval: config.interval,
            timeout: config.timeout,
            failures_unhealthy: config.failures_unhealthy,
            healthcheck_interval: config.healthcheck_interval,
            shared: shared.clone(),
            tx,
            path: registry.file.clone(),
            registry: file,
            topic,
            worker: worker as u64,
            peers: peers as u64,
            histories: HashMap::new(),
            agents: HashMap::new(),
            due: BinaryHeap::new(),
            rounds: JoinSet::new(),
            start: tokio::time::Instant::now(),
            next_id: 0,
        };
        scheduler.apply(initial);
        for e in topic_errors {
            scheduler.registry_error(e);
        }
        let interval = config.interval;
        let task = client.runtime().spawn(scheduler.run(draining));
        Ok(PullReader {
            _client: client,
            interval,
            rx,
            shared,
            control,
            drain,
            scheduler: task,
            slot: None,
            origin: Origin { source: SOURCE.into(), partition: worker as i32, position: 0 },
            draining: false,
            done: false,
        })
    }

    /// The agents that turned unhealthy or healthy since the last call, in order.
    pub fn take_health_changes(&mut self) -> Vec<PullHealthChange> {
        match self.shared.health.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    pub fn stats(&self) -> PullStats {
        let s = &self.shared;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PullStats {
            agents: load(&s.agents),
            polls_ok: load(&s.polls_ok),
            polls_failed: load(&s.polls_failed),
            probes_ok: load(&s.probes_ok),
            probes_failed: load(&s.probes_failed),
            unhealthy_agents: load(&s.unhealthy),
            skipped: load(&s.skipped),
            queued: self.rx.len() as u64,
            registry_errors: load(&s.registry_errors),
            last_registry_error: s.last_registry_error.lock().ok().and_then(|e| e.clone()),
            rounds: load(&s.rounds),
            round_delay: s.round_delay.iter().map(load).collect(),
        }
    }
}

impl Drop for PullReader {
    fn drop(&mut self) {
        // Its polls go with it (they belong to the scheduler's task set).
        self.scheduler.abort();
    }
}

impl Reader for PullReader {
    fn pull_stats(&self) -> Option<PullStats> {
        Some(self.stats())
    }

    /// `agent_health` rows of the agents whose polls failed or recovered, named by their key.
    fn take_health(&mut self) -> Vec<operators::model::HealthRow> {
        self.take_health_changes()
            .into_iter()
            .map(|c| {
                let mut parts = c.key.splitn(4, '/').map(String::from);
                let mut part = || parts.next().unwrap_or_default();
                let (ns_id, mcis_id, vm_id, csp_type) = (part(), part(), part(), part());
                let (from, to) = if c.healthy { ("unhealthy", "healthy") } else { ("healthy", "unhealthy") };
                operators::model::HealthRow {
                    time: c.time_ns,
                    ns_id,
                    mcis_id,
                    vm_id,
                    csp_type,
                    from: from.into(),
                    to: to.into(),
                    reason: format!("pull: {}", c.reason),
                }
            })
            .collect()
    }

    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        let slot = *self.slot.get_or_insert_with(|| watermarks.add_partition(now));
        if self.done || self.control.stopping() {
            self.scheduler.abort();
            return ReadStatus::Done;
        }
        if self.control.draining() && !self.draining {
            // No new rounds; the rounds under way are read, then the partition finishes.
            self.draining = true;
            let _ = self.drain.send(true);
        }
        let mut taken = 0;
        while taken < budget {
            match self.rx.try_recv() {
                Ok(fetched) => {
                    taken += 1;
                    self.origin.position += 1;
                    if fetched.body.iter().all(|b| b.is_ascii_whitespace()) {
                        watermarks.touch(slot, now);
                        let max_ts = watermarks.max_event_time(slot);
                        ingest.reject(&self.origin, Some(slot), max_ts, "empty answer", b"", fetched.fetched_ns);
                    } else {
                        // Agents answer Telegraf JSON, whatever the job's other source reads.
                        ingest.message_as(
                            Format::Json,
                            TimestampUnit::Auto,
                            &fetched.body,
                            &self.origin,
                            slot,
                            watermarks,
                            fetched.fetched_ns,
                            now,
                        );
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // Only a drain ends the scheduler (or its runtime going away).
                    self.done = true;
                    watermarks.finish(slot);
                    return ReadStatus::Done;
                }
            }
        }
        // Agents answering every interval keep the partition active between their answers, so
        // that an interval longer than the idle timeout does not let windows close under them.
        let last_ok = self.shared.last_ok_ns.load(Ordering::Relaxed);
        let recent = self.interval.saturating_mul(2).as_nanos().min(i64::MAX as u128) as i64;
        if last_ok > 0 && wall_ns().saturating_sub(last_ok) <= recent {
            watermarks.touch(slot, now);
        }
        if taken >= budget {
            ReadStatus::Busy
        } else {
            ReadStatus::Idle
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        // No `next`: pulled answers cannot be read again, so they take no part in checkpoints.
        // No consumer lag either: answers waiting to be read are `queued` in the pull stats.
        self.slot
            .map(|slot| PartitionPosition {
                source: self.origin.source.clone(),
                partition: self.origin.partition,
                slot,
                next: None,
                lag: None,
            })
            .into_iter()
            .collect()
    }
}

/// A registry key's entries as the registry file gives them (sorted by time, untimed last).
type History = Vec<(Option<i64>, Option<AgentRecord>)>;

/// The record of `history` in force at `now_ns`: the last entry without a time or from before
/// `now_ns` (`None`: removed, or nothing in force yet).
fn record_at(history: &History, now_ns: i64) -> Option<&AgentRecord> {
    history.iter().rev().find(|(time, _)| time.is_none_or(|t| t <= now_ns)).and_then(|(_, record)| record.as_ref())
}

/// Why an agent is not polled, or `Ok(pull_url)`.
fn pull_url(record: Option<&AgentRecord>) -> Result<&str, &'static str> {
    let Some(r) = record else { return Err("removed from the registry") };
    if r.mechanism != Mechanism::Pull {
        return Err("mechanism push");
    }
    if r.state != AgentState::Enable {
        return Err("state disable");
    }
    match r.pull_url.as_deref().map(|u| u.trim().trim_end_matches('/')) {
        Some(url) if !url.is_empty() => Ok(url),
        _ => Err("no pull_url"),
    }
}

/// The first time at or after `after` of the slots `start + phase + k × interval`.
fn next_slot(
    start: tokio::time::Instant,
    phase: Duration,
    interval: Duration,
    after: tokio::time::Instant,
) -> tokio::time::Instant {
    let first = start + phase;
    if after <= first {
        return first;
    }
    let behind = (after - first).as_nanos();
    let k = behind.div_ceil(interval.as_nanos().max(1));
    first + Duration::from_nanos((k * interval.as_nanos()).min(u64::MAX as u128) as u64)
}

/// Where in the interval an agent is polled: from its key, so that polls are spread evenly and
/// each agent keeps its pace across restarts and reloads.
fn phase(key: &str, interval: Duration) -> Duration {
    let nanos = interval.as_nanos().clamp(1, u64::MAX as u128) as u64;
    Duration::from_nanos(stable_hash(&[key, "pull-phase"]) % nanos)
}

/// One polled agent.
struct Agent {
    /// Tells this agent from an earlier one under the same key (a round's result is its own);
    /// ids and epochs come from one counter.
    id: u64,
    url: Arc<str>,
    /// Unique, renewed when the agent is scheduled anew: older entries of the due queue (of this
    /// agent or of an earlier one under its key) are stale.
    epoch: u64,
    /// Failed rounds in a row.
    failures: u32,
    healthy: bool,
    /// A round or probe is under way.
    busy: bool,
}

/// A due queue entry: when, which agent, and the epoch it was scheduled in.
type Due = Reverse<(tokio::time::Instant, Arc<str>, u64)>;

/// How a round or probe went.
struct RoundResult {
    key: Arc<str>,
    id: u64,
    probe: bool,
    /// `None`: at least one answer with a 2xx status.
    error: Option<String>,
}

/// The task that decides which agent is polled when, and judges their health.
struct Scheduler {
    http: HttpClient,
    permits: Arc<Semaphore>,
    measurements: Arc<[Arc<str>]>,
    interval: Duration,
    timeout: Duration,
    failures_unhealthy: u32,
    healthcheck_interval: Duration,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Fetched>,
    /// The registry file, if any.
    path: Option<PathBuf>,
    /// `None` while it is being read (or without a file).
    registry: Option<RegistryFile>,
    /// The registry topic, if any (`None` while it is being read).
    topic: Option<RegistryTopic>,
    worker: u64,
    peers: u64,
    /// The registry entries of this worker's keys.
    histories: HashMap<String, History>,
    agents: HashMap<Arc<str>, Agent>,
    due: BinaryHeap<Due>,
    rounds: JoinSet<RoundResult>,
    start: tokio::time::Instant,
    /// The last agent id or epoch given.
    next_id: u64,
}

impl Scheduler {
    async fn run(mut self, mut drain: watch::Receiver<bool>) {
        let check = REGISTRY_CHECK.min(self.interval);
        self.sync_agents(tokio::time::Instant::now());
        let mut next_check = tokio::time::Instant::now() + check;
        loop {
            if *drain.borrow() {
                // Draining: let the rounds under way finish and deliver, start none.
                while let Some(done) = self.rounds.join_next().await {
                    self.finish(done);
                }
                return;
            }
            let wake = match self.due.peek() {
                Some(Reverse((at, _, _))) => next_check.min(*at),
                None => next_check,
            };
            tokio::select! {
                Some(done) = self.rounds.join_next(), if !self.rounds.is_empty() => self.finish(done),
                () = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= next_check {
                        self.reload().await;
                        next_check = tokio::time::Instant::now() + check;
                    }
                    self.start_due(tokio::time::Instant::now());
                }
                changed = drain.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn owns(&self, key: &str) -> bool {
        stable_hash(&[key]) % self.peers == self.worker
    }

    /// Takes in what the registry file says changed: each key given has the history given.
    fn apply(&mut self, updates: Vec<RegistryUpdate>) {
        let mut fresh: HashMap<String, History> = HashMap::new();
        for u in updates {
            if self.owns(&u.key) {
                fresh.entry(u.key).or_default().push((u.time, u.record));
            }
        }
        for (key, history) in fresh {
            if history.iter().all(|(_, r)| r.is_none()) {
                self.histories.remove(&key);
            } else {
                self.histories.insert(key, history);
            }
        }
    }

    async fn reload(&mut self) {
        if let Some(path) = &self.path {
            let file = self.registry.take().unwrap_or_else(|| RegistryFile::new(path));
            let read = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let result = file.poll();
                (file, result)
            })
            .await;
            match read {
                Ok((file, result)) => {
                    self.registry = Some(file);
                    match result {
                        Ok(Some(updates)) => self.apply(updates),
                        Ok(None) => {}
                        Err(e) => self.registry_error(e.to_string()),
                    }
                }
                Err(e) => self.registry_error(format!("reading the registry file failed: {e}")),
            }
        }
        if let Some(mut topic) = self.topic.take() {
            // Never waits for the broker, but its client calls are kept off the polling threads.
            match tokio::task::spawn_blocking(move || {
                let read = topic.poll();
                topic.take_rejects();
                (topic, read)
            })
            .await
            {
                Ok((topic, read)) => {
                    self.topic = Some(topic);
                    let mut updates = Vec::new();
                    for u in read {
                        match u {
                            Ok(u) => updates.push(u),
                            Err(e) => self.registry_error(e),
                        }
                    }
                    self.apply(updates);
                }
                Err(e) => self.registry_error(format!("reading the registry topic failed: {e}")),
            }
        }
        // Timed entries come into force as time passes, even without a change of the file.
        self.sync_agents(tokio::time::Instant::now());
    }

    fn registry_error(&self, message: String) {
        self.shared.registry_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.shared.last_registry_error.lock() {
            if last.as_deref() != Some(message.as_str()) {
                eprintln!("dragonflow: pull source: {message} (keeping the last good version)");
            }
            *last = Some(message);
        }
    }

    /// Makes the polled agents those the registry says now.
    fn sync_agents(&mut self, now: tokio::time::Instant) {
        let now_ns = wall_ns();
        let mut wanted: HashMap<&str, &str> = HashMap::with_capacity(self.histories.len());
        for (key, history) in &self.histories {
            if let Ok(url) = pull_url(record_at(history, now_ns)) {
                wanted.insert(key.as_str(), url);
            }
        }
        let gone: Vec<Arc<str>> = self.agents.keys().filter(|k| !wanted.contains_key(&***k)).cloned().collect();
        for key in gone {
            let Some(agent) = self.agents.remove(&key) else { continue };
            if !agent.healthy {
                // Its unhealthy verdict came from polling, which ends here.
                self.shared.unhealthy.fetch_sub(1, Ordering::Relaxed);
                let why = pull_url(self.histories.get(&*key).and_then(|h| record_at(h, now_ns))).err();
                let reason = format!("no longer pulled: {}", why.unwrap_or("removed from the registry"));
                self.shared.health_change(&key, true, reason);
            }
        }
        for (key, url) in wanted {
            match self.agents.get_mut(key) {
                Some(agent) => {
                    if &*agent.url != url {
                        agent.url = url.into();
                    }
                }
                None => {
                    let key: Arc<str> = key.into();
                    self.next_id += 1;
                    let id = self.next_id;
                    let agent = Agent { id, url: url.into(), epoch: id, failures: 0, healthy: true, busy: false };
                    let at = next_slot(self.start, phase(&key, self.interval), self.interval, now);
                    self.due.push(Reverse((at, key.clone(), id)));
                    self.agents.insert(key, agent);
                }
            }
        }
        self.shared.agents.store(self.agents.len() as u64, Ordering::Relaxed);
    }

    /// Starts the rounds and probes that are due.
    fn start_due(&mut self, now: tokio::time::Instant) {
        while let Some(Reverse((at, _, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key, epoch))) = self.due.pop() else { break };
            let Some(agent) = self.agents.get_mut(&key) else { continue };
            if agent.epoch != epoch {
                continue;
            }
            if !agent.healthy {
                // Probes are scheduled one at a time, when the previous one ends.
                agent.busy = true;
                self.rounds.spawn(probe(
                    self.http.clone(),
                    self.shared.clone(),
                    key,
                    agent.id,
                    agent.url.clone(),
                    self.timeout,
                ));
                continue;
            }
            // The next slot of its pace; slots the scheduler itself slept through are skipped.
            let mut next = at + self.interval;
            if next <= now {
                let late = next_slot(at, Duration::ZERO, self.interval, now);
                let missed = ((late - next).as_nanos() / self.interval.as_nanos().max(1)) as u64;
                self.shared.skipped.fetch_add(missed, Ordering::Relaxed);
                next = late;
            }
            self.due.push(Reverse((next, key.clone(), epoch)));
            if agent.busy {
                self.shared.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            agent.busy = true;
            self.rounds.spawn(poll_round(
                at,
                self.http.clone(),
                self.permits.clone(),
                self.shared.clone(),
                self.tx.clone(),
                key,
                agent.id,
                agent.url.clone(),
                self.measurements.clone(),
                self.timeout,
            ));
        }
    }

    /// Judges the agent by how its round or probe went.
    fn finish(&mut self, done: Result<RoundResult, tokio::task::JoinError>) {
        // A round never panics; one cancelled went with its scheduler.
        let Ok(r) = done else { return };
        let Some(agent) = self.agents.get_mut(&r.key).filter(|a| a.id == r.id) else { return };
        agent.busy = false;
        let now = tokio::time::Instant::now();
        match (r.probe, r.error) {
            (false, None) => agent.failures = 0,
            (false, Some(error)) => {
                agent.failures = agent.failures.saturating_add(1);
                if agent.healthy && agent.failures > self.failures_unhealthy {
                    agent.healthy = false;
                    self.next_id += 1;
                    agent.epoch = self.next_id;
                    self.shared.unhealthy.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("{} failed polls in a row, the last: {error}", agent.failures);
                    self.shared.health_change(&r.key, false, reason);
                    self.due.push(Reverse((now + self.healthcheck_interval, r.key, agent.epoch)));
                }
            }
            (true, None) => {
                agent.healthy = true;
                agent.failures = 0;
                self.next_id += 1;
                agent.epoch = self.next_id;
                self.shared.unhealthy.fetch_sub(1, Ordering::Relaxed);
                self.shared.health_change(&r.key, true, "the healthcheck answered".into());
                let at = next_slot(self.start, phase(&r.key, self.interval), self.interval, now);
                self.due.push(Reverse((at, r.key, agent.epoch)));
            }
            (true, Some(_)) => {
                self.due.push(Reverse((now + self.healthcheck_interval, r.key, agent.epoch)));
            }
        }
    }
}

/// One agent's round: each measurement in turn, on one connection. A timeout or connection error
/// ends the round (the agent is not reachable now); other failures do not.
#[allow(clippy::too_many_arguments)]
async fn poll_round(
    slot: tokio::time::Instant,
    http: HttpClient,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Fetched>,
    key: Arc<str>,
    id: u64,
    url: Arc<str>,
    measurements: Arc<[Arc<str>]>,
    timeout: Duration,
) -> RoundResult {
    let mut result = RoundResult { key, id, probe: false, error: None };
    let Ok(_permit) = permits.acquire_owned().await else {
        result.error = Some("the pull client is closed".into());
        return result;
    };
    let mut answered = false;
    for m in measurements.iter() {
        let uri = format!("{url}/metric/{m}");
        match get(&http, &uri, timeout).await {
            Ok((status, body)) if status.is_success() => {
                answered = true;
                shared.polls_ok.fetch_add(1, Ordering::Relaxed);
                let fetched_ns = wall_ns();
                shared.last_ok_ns.store(fetched_ns, Ordering::Relaxed);
                if tx.send(Fetched { body, fetched_ns }).await.is_err() {
                    break;
                }
            }
            Ok((status, body)) => {
                shared.polls_failed.fetch_add(1, Ordering::Relaxed);
                result.error.get_or_insert_with(|| status_reason(&uri, status, &body));
            }
            Err(e) => {
                shared.polls_failed.fetch_add(1, Ordering::Relaxed);
                let unreachable = matches!(e, CallError::Timeout(_) | CallError::Connect(_));
                result.error.get_or_insert_with(|| format!("GET {uri}: {e}"));
                if unreachable {
                    break;
                }
            }
        }
    }
    if answered {
        result.error = None;
    } else {
        result.error.get_or_insert_with(|| "no answer".into());
    }
    shared.round_ended(slot);
    result
}

/// One healthcheck of an unhealthy agent (outside the polling limit: probes are few).
async fn probe(
    http: HttpClient,
    shared: Arc<Shared>,
    key: Arc<str>,
    id: u64,
    url: Arc<str>,
    timeout: Duration,
) -> RoundResult {
    let uri = format!("{url}/healthcheck");
    let error = match get(&http, &uri, timeout).await {
        Ok((status, _)) if status.is_success() => None,
        Ok((status, body)) => Some(status_reason(&uri, status, &body)),
        Err(e) => Some(format!("GET {uri}: {e}")),
    };
    let counter = if error.is_none() { &shared.probes_ok } else { &shared.probes_failed };
    counter.fetch_add(1, Ordering::Relaxed);
    RoundResult { key, id, probe: true, error }
}

/// Why a call got no answer.
#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Connect(String),
    Invalid(String),
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(t) => write!(f, "no answer within {}", humantime::format_duration(*t)),
            CallError::Connect(e) => write!(f, "cannot connect: {e}"),
            CallError::Invalid(e) => write!(f, "invalid URL: {e}"),
            CallError::Failed(e) => f.write_str(e),
        }
    }
}

/// `GET {uri}/…: HTTP 500 Internal Server Error: {the start of the body}`.
fn status_reason(uri: &str, status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim();
    if let Some((cut, _)) = text.char_indices().nth(REASON_BODY) {
        text = &text[..cut];
    }
    if text.is_empty() {
        format!("GET {uri}: HTTP {status}")
    } else {
        format!("GET {uri}: HTTP {status}: {text}")
    }
}

/// A GET within `timeout` (connecting and the whole body included); bodies over the ingest's
/// message limit are refused.
async fn get(http: &HttpClient, uri: &str, timeout: Duration) -> Result<(StatusCode, Bytes), CallError> {
    let uri: Uri = uri.parse().map_err(|e: hyper::http::uri::InvalidUri| CallError::Invalid(format!("{uri}: {e}")))?;
    let request = Request::get(uri).body(Empty::new()).map_err(|e| CallError::Invalid(e.to_string()))?;
    let call = async {
        let response = http.request(request).await.map_err(|e| {
            if e.is_connect() {
                CallError::Connect(chain(&e))
            } else {
                CallError::Failed(chain(&e))
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_MESSAGE_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Failed(format!("reading the answer: {}", chain(&*e))))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call).await.unwrap_or(Err(CallError::Timeout(timeout)))
}

/// One on-demand call's outcome per measurement: the agent's metric as JSON and how long the
/// call took, or why there is none.
pub type OnDemand = Vec<(String, Result<(serde_json::Value, Duration), String>)>;

/// Calls the agent at `pull_url` now for each measurement (at once, each within `timeout`) and
/// returns what it answered with each call's latency, in the order asked. Writes nothing.
///
/// ```no_run
/// # async fn ask() {
/// use std::time::Duration;
///
/// let asked = vec!["cpu".to_string(), "mem".to_string()];
/// for (measurement, answer) in
///     pipelines::source::pull::fetch_now("http://10.0.0.7:8888", &asked, Duration::from_secs(5)).await
/// {
///     match answer {
///         Ok((metric, latency)) => println!("{measurement} in {latency:?}: {metric}"),
///         Err(why) => println!("{measurement}: {why}"),
///     }
/// }
/// # }
/// ```
pub async fn fetch_now(pull_url: &str, measurements: &[String], timeout: Duration) -> OnDemand {
    let http = http_client(timeout, Duration::from_secs(1));
    let base = pull_url.trim().trim_end_matches('/');
    let calls: Vec<_> = measurements
        .iter()
        .map(|m| {
            let (http, m) = (http.clone(), m.clone());
            let uri = format!("{base}/metric/{m}");
            tokio::spawn(async move {
                if !is_measurement_name(&m) {
                    return Err(format!("{m:?} is not a measurement name"));
                }
                let started = tokio::time::Instant::now();
                let answer = get(&http, &uri, timeout).await;
                let latency = started.elapsed();
                match answer {
                    Ok((status, body)) if status.is_success() => match serde_json::from_slice(&body) {
                        Ok(value) => Ok((value, latency)),
                        Err(e) => Err(format!("GET {uri}: the answer is not JSON: {e}")),
                    },
                    Ok((status, body)) => Err(status_reason(&uri, status, &body)),
                    Err(e) => Err(format!("GET {uri}: {e}")),
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(calls.len());
    for (m, call) in measurements.iter().zip(calls) {
        let result = call.await.unwrap_or_else(|e| Err(format!("the call failed: {e}")));
        out.push((m.clone(), result));
    }
    out
}

/// [`fetch_now`] for callers without a runtime (from within one too: it then runs on a thread
/// of its own).
pub fn fetch_now_blocking(pull_url: &str, measurements: &[String], timeout: Duration) -> OnDemand {
    let failed = |why: String| -> OnDemand { measurements.iter().map(|m| (m.clone(), Err(why.clone()))).collect() };
    let run = || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fetch_now(pull_url, measurements, timeout)),
        Err(e) => failed(format!("cannot start a runtime: {e}")),
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| s.spawn(run).join()).unwrap_or_else(|_| failed("the call panicked".into()))
}

/// An on-demand call's outcome as the server and the CLI show it: `{"key", "pull_url", "results":
/// [{"measurement", "latency_ms", "metric"} or {"measurement", "error"}]}`.
pub fn ondemand_json(key: &str, pull_url: &str, answers: OnDemand) -> serde_json::Value {
    let results: Vec<serde_json::Value> = answers
        .into_iter()
        .map(|(measurement, answer)| match answer {
            Ok((metric, latency)) => serde_json::json!({
                "measurement": measurement, "latency_ms": latency.as_secs_f64() * 1e3, "metric": metric
            }),
            Err(error) => serde_json::json!({"measurement": measurement, "error": error}),
        })
        .collect();
    serde_json::json!({"key": key, "pull_url": pull_url, "results": results})
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashSet};
    use std::rc::Rc;

    use loadgen::{AgentListener, Behaviour, FleetConfig, ListenerConfig};
    use operators::decode::{Format, TimestampUnit};
    use operators::ingest::{IngestConfig, InstanceTags};
    use operators::intern::SeriesTable;
    use operators::time::WindowSpec;
    use serde_json::Value;

    use super::*;

    /// One value as the pipeline saw it or the listener served it: vm, measurement, field,
    /// timestamp (s) and the value's bits.
    type Row = (String, String, String, i64, u64);

    /// A listener of `agents` agents on its own runtime, writing a registry file and a log of
    /// every value served.
    struct Served {
        rt: tokio::runtime::Runtime,
        listener: Option<AgentListener>,
        dir: tempfile::TempDir,
    }

    impl Served {
        fn start(agents: usize, cfg: ListenerConfig) -> Served {
            Served::serve(agents, cfg, true)
        }

        fn serve(agents: usize, cfg: ListenerConfig, log: bool) -> Served {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let cfg = ListenerConfig {
                registry_out: Some(dir.path().join("agents.json")),
                log: log.then(|| dir.path().join("served.jsonl")),
                ..cfg
            };
            let fleet = FleetConfig { agents, seed: 7, ..FleetConfig::default() };
            let listener = rt.block_on(AgentListener::start(fleet, cfg)).unwrap();
            Served { rt, listener: Some(listener), dir }
        }

        fn listener(&self) -> &AgentListener {
            self.listener.as_ref().unwrap()
        }

        fn registry(&self) -> PathBuf {
            self.dir.path().join("agents.json")
        }

        fn pull_url(&self, vm: &str) -> String {
            format!("{}/agents/{vm}", self.listener().base_url())
        }

        fn set(&self, vm: &str, behaviour: Option<Behaviour>) {
            assert!(self.listener().set_behaviour(vm, behaviour), "{vm}");
        }

        /// Rewrites the registry file with `edit` applied to each record (atomically).
        fn edit_registry(&self, edit: impl Fn(&mut serde_json::Map<String, Value>)) {
            let path = self.registry();
            let mut records: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for r in &mut records {
                edit(r.as_object_mut().unwrap());
            }
            let tmp = self.dir.path().join("agents.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&records).unwrap()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }

        /// Stops serving; every value served and the answers per vm and measurement, from the log.
        fn shutdown(mut self) -> (Vec<Row>, BTreeMap<(String, String), usize>) {
            let listener = self.listener.take().unwrap();
            let stats = self.rt.block_on(listener.shutdown()).unwrap();
            assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
            let text = std::fs::read_to_string(self.dir.path().join("served.jsonl")).unwrap();
            let (mut rows, mut answers) = (Vec::new(), BTreeMap::new());
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let (vm, m) = (v["vm_id"].as_str().unwrap(), v["measurement"].as_str().unwrap());
                *answers.entry((vm.to_string(), m.to_string())).or_default() += 1;
                for (field, value) in v["fields"].as_object().unwrap() {
                    let Some(x) = value.as_f64().filter(|_| value.is_number()) else { continue };
                    rows.push((vm.into(), m.into(), field.clone(), v["timestamp"].as_i64().unwrap(), x.to_bits()));
                }
            }
            (rows, answers)
        }
    }

    /// A reader with the ingest and watermarks of one worker, keeping what it produced.
    struct Worker {
        reader: PullReader,
        ingest: Ingest,
        table: Rc<RefCell<SeriesTable>>,
        watermarks: Watermarks,
        rows: Vec<Row>,
        /// Distinct messages per vm.
        messages: HashSet<(String, u64)>,
        late: usize,
        rejects: Vec<String>,
        health: Vec<PullHealthChange>,
    }

    impl Worker {
        fn new(
            client: &Arc<PullClient>,
            registry: &std::path::Path,
            worker: usize,
            peers: usize,
            control: &Arc<JobControl>,
        ) -> Self {
            let table = Rc::new(RefCell::new(SeriesTable::new()));
            // The job's other source reads line protocol in ms: the agents' Telegraf JSON must
            // be read as such all the same.
            let config = IngestConfig {
                format: Format::Influx,
                unit: TimestampUnit::Ms,
                window: WindowSpec::new(Duration::from_secs(10), Duration::from_secs(5)),
                instance_tags: InstanceTags::default(),
                max_skew: Some(600 * 1_000_000_000),
                series_ttl: None,
            };
            let reader =
                PullReader::new(client.clone(), &PullRegistry::file(registry), worker, peers, control.clone()).unwrap();
            Worker {
                reader,
                ingest: Ingest::new(table.clone(), config),
                table,
                watermarks: Watermarks::new(5_000_000_000, Duration::from_secs(30)),
                rows: Vec::new(),
                messages: HashSet::new(),
                late: 0,
                rejects: Vec::new(),
                health: Vec::new(),
            }
        }

        fn step(&mut self) -> ReadStatus {
            let now = Instant::now();
            let status = self.reader.read(&mut self.ingest, &mut self.watermarks, 4096, now);
            let out = self.ingest.take();
            let table = self.table.borrow();
            for obs in out.windows.into_values().flatten() {
                let k = table.key(obs.series);
                let vm = k.agent.vm_id.to_string();
                self.messages.insert((vm.clone(), obs.order));
                let row =
                    (vm, k.measurement.to_string(), k.field.to_string(), obs.ts / 1_000_000_000, obs.value.to_bits());
                self.rows.push(row);
            }
            for l in out.late {
                self.late += 1;
                let vm = l.agent.vm_id.to_string();
                self.rows.push((
                    vm,
                    l.measurement.to_string(),
                    l.field.to_string(),
                    l.timestamp / 1_000_000_000,
                    l.value.to_bits(),
                ));
            }
            self.rejects.extend(out.rejects.into_iter().map(|r| r.reason));
            self.health.extend(self.reader.take_health_changes());
            self.watermarks.advance(now);
            status
        }

        fn messages_of(&self, vm: &str) -> usize {
            self.messages.iter().filter(|(v, _)| v == vm).count()
        }
    }

    /// Runs the workers for `d`.
    fn run_for(workers: &mut [&mut Worker], d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            for w in workers.iter_mut() {
                w.step();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs the workers until `done` holds (panics after `limit`).
    fn run_until(workers: &mut [&mut Worker], limit: Duration, what: &str, done: impl Fn(&[&mut Worker]) -> bool) {
        let until = Instant::now() + limit;
        loop {
            for w in workers.iter_mut() {
                w.step();
            }
            if done(workers) {
                return;
            }
            assert!(Instant::now() < until, "not within {limit:?}: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Drains the workers to their end.
    fn drain(workers: &mut [&mut Worker], control: &JobControl) {
        control.drain();
        let until = Instant::now() + Duration::from_secs(20);
        let mut done = vec![false; workers.len()];
        while done.iter().any(|d| !d) {
            for (w, d) in workers.iter_mut().zip(&mut done) {
                if !*d {
                    *d = w.step() == ReadStatus::Done;
                }
            }
            assert!(Instant::now() < until, "the drain did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn fast() -> PullConfig {
        PullConfig { interval: Duration::from_millis(200), timeout: Duration::from_secs(2), ..PullConfig::default() }
    }

    fn listener_config() -> ListenerConfig {
        ListenerConfig { interval: Duration::from_secs(1), ..ListenerConfig::default() }
    }

    fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
        rows.sort();
        rows
    }

    #[test]
    fn pull_collects_every_agent_of_its_worker_once_per_interval_with_the_values_served() {
        let served = Served::start(12, listener_config());
        let client = PullClient::new(fast()).unwrap();
        let control = Arc::new(JobControl::new());
        let mut w0 = Worker::new(&client, &served.registry(), 0, 2, &control);
        let mut w1 = Worker::new(&client, &served.registry(), 1, 2, &control);
        let started = Instant::now();
        run_for(&mut [&mut w0, &mut w1], Duration::from_secs(2));
        drain(&mut [&mut w0, &mut w1], &control);
        let elapsed = started.elapsed();
        let (s0, s1) = (w0.reader.stats(), w1.reader.stats());
        let agents = served.listener().agents();
        let (log, answers) = served.shutdown();

        // Exactly the values served, each once, none late or refused.
        assert_eq!((w0.late, w1.late), (0, 0));
        assert!(w0.rejects.is_empty() && w1.rejects.is_empty(), "{:?} {:?}", w0.rejects, w1.rejects);
        let pulled = sorted([w0.rows.clone(), w1.rows.clone()].concat());
        assert!(!pulled.is_empty());
        assert_eq!(pulled, sorted(log.clone()), "what was pulled is what was served");

        // Each worker polls its own agents, and together all of them.
        let vms = |rows: &[Row]| rows.iter().map(|r| r.0.clone()).collect::<HashSet<_>>();
        for (w, worker) in [(0, &w0), (1, &w1)] {
            for vm in vms(&worker.rows) {
                let key = &agents.iter().find(|a| a.vm_id == vm).unwrap().key;
                assert_eq!(stable_hash(&[key]) % 2, w, "{vm} polled by worker {w}");
            }
        }
        assert!(vms(&w0.rows).is_disjoint(&vms(&w1.rows)));
        assert_eq!(vms(&pulled).len(), 12);
        assert_eq!(s0.agents + s1.agents, 12);

        // Once per interval: every measurement of every agent, about elapsed / interval times.
        assert_eq!(answers.len(), 12 * 6);
        let rounds = (elapsed.as_secs_f64() / 0.2).ceil() as usize;
        for (k, n) in &answers {
            assert!((3..=rounds + 1).contains(n), "{k:?} polled {n} times in {elapsed:?}");
        }
        let requests = (s0.polls_ok + s1.polls_ok) as usize;
        assert_eq!(requests, answers.values().sum::<usize>());
        assert_eq!((s0.polls_failed, s1.polls_failed, s0.unhealthy_agents, s1.unhealthy_agents), (0, 0, 0, 0));
        assert!(w0.health.is_empty() && w1.health.is_empty());

        // Every round is in the delay histogram, and the job's sum is the readers' sum.
        let mut all = s0.clone();
        all.add(&s1);
        assert_eq!(all.rounds, (requests / 6) as u64);
        assert_eq!(all.round_delay.iter().sum::<u64>(), all.rounds);
        assert_eq!((all.agents, all.polls_ok), (12, requests as u64));
        assert!(all.round_delay_quantile_ms(0.5).is_some());
    }

    #[test]
    fn pull_round_delay_quantiles_are_bucket_bounds() {
        let mut stats = PullStats::default();
        assert_eq!(stats.round_delay_quantile_ms(0.5), None);
        stats.round_delay = vec![0; ROUND_DELAY_BUCKETS_MS.len() + 1];
        stats.round_delay[0] = 90; // ≤ 5 ms
        stats.round_delay[3] = 9; // ≤ 50 ms
        stats.round_delay[ROUND_DELAY_BUCKETS_MS.len()] = 1; // beyond the last bound
        assert_eq!(stats.round_delay_quantile_ms(0.5), Some(5));
        assert_eq!(stats.round_delay_quantile_ms(0.9), Some(5));
        assert_eq!(stats.round_delay_quantile_ms(0.95), Some(50));
        assert_eq!(stats.round_delay_quantile_ms(0.99), Some(50));
        assert_eq!(stats.round_delay_quantile_ms(1.0), Some(u64::MAX));
    }

    #[test]
    fn pull_failing_agents_turn_unhealthy_are_probed_and_recover_while_the_others_go_on() {
        let served = Served::start(6, listener_config());
        let config = PullConfig {
            timeout: Duration::from_millis(500),
            failures_unhealthy: 2,
            healthcheck_interval: Duration::from_millis(400),
            ..fast()
        };
        let client = PullClient::new(config).unwrap();
        let control = Arc::new(JobControl::new());
        let mut w = Worker::new(&client, &served.registry(), 0, 1, &control);
        run_until(&mut [&mut w], Duration::from_secs(10), "every agent answers", |w| {
            (0..6).all(|i| w[0].messages_of(&format!("vm-{i}")) > 0)
        });

        served.set("vm-0", Some(Behaviour::Fail));
        served.set("vm-1", Some(Behaviour::Down));
        let before: Vec<usize> = (2..6).map(|i| w.messages_of(&format!("vm-{i}"))).collect();
        fn unhealthy<'a>(w: &'a Worker, vm: &str) -> Option<&'a PullHealthChange> {
            w.health.iter().find(|h| !h.healthy && h.key.contains(&format!("/{vm}/")))
        }
        run_until(&mut [&mut w], Duration::from_secs(20), "both unhealthy", |w| {
            unhealthy(w[0], "vm-0").is_some() && unhealthy(w[0], "vm-1").is_some()
        });
        let failing = unhealthy(&w, "vm-0").unwrap().reason.clone();
        let down = unhealthy(&w, "vm-1").unwrap().reason.clone();
        assert!(failing.starts_with("3 failed polls in a row") && failing.contains("HTTP 500"), "{failing}");
        assert!(down.starts_with("3 failed polls in a row") && down.contains("no answer within 500ms"), "{down}");
        assert_eq!(w.reader.stats().unhealthy_agents, 2);

        // Unhealthy: probed every 400 ms, no longer polled (each poll would be 6 answers of 500).
        let (errors, probes) = (served.listener().stats().status(500), w.reader.stats().probes_failed);
        let (vm0, vm1) = (w.messages_of("vm-0"), w.messages_of("vm-1"));
        run_for(&mut [&mut w], Duration::from_millis(1600));
        let errors = served.listener().stats().status(500) - errors;
        assert!(errors <= 7, "{errors} answers of 500 in 1.6 s: polled, not only probed");
        assert!(w.reader.stats().probes_failed - probes >= 2, "probed");
        assert_eq!((w.messages_of("vm-0"), w.messages_of("vm-1")), (vm0, vm1));

        // Meanwhile the others went on at their pace (≥ 10 rounds in the 2 s or more since).
        for (i, b) in (2..6).zip(before) {
            let n = w.messages_of(&format!("vm-{i}")) - b;
            assert!(n >= 6 * 5, "vm-{i}: {n} answers during the failures");
        }

        served.set("vm-0", None);
        served.set("vm-1", None);
        let recovered = |w: &Worker, vm: &str| w.health.iter().any(|h| h.healthy && h.key.contains(&format!("/{vm}/")));
        run_until(&mut [&mut w], Duration::from_secs(10), "both recover", |w| {
            recovered(w[0], "vm-0") && recovered(w[0], "vm-1")
        });
        assert!(w.health.iter().filter(|h| h.healthy).all(|h| h.reason == "the healthcheck answered"));
        assert_eq!(w.reader.stats().unhealthy_agents, 0);
        run_until(&mut [&mut w], Duration::from_secs(10), "polled again", |w| {
            w[0].messages_of("vm-0") > vm0 && w[0].messages_of("vm-1") > vm1
        });
        assert_eq!(w.health.len(), 4, "{:?}", w.health);
        assert!(w.rejects.is_empty(), "{:?}", w.rejects);
        drop(w);
        served.shutdown();
    }

    #[test]
    fn pull_stops_polling_an_agent_switched_to_push_or_disabled() {
        let served = Served::start(4, listener_config());
        let client = PullClient::new(fast()).unwrap();
        let control = Arc::new(JobControl::new());
        let mut w = Worker::new(&client, &served.registry(), 0, 1, &control);
        run_until(&mut [&mut w], Duration::from_secs(10), "every agent answers", |w| {
            (0..4).all(|i| w[0].messages_of(&format!("vm-{i}")) > 0)
        });
        assert_eq!(w.reader.stats().agents, 4);

        served.edit_registry(|r| match r["vm_id"].as_str() {
            Some("vm-0") => drop(r.insert("mechanism".into(), "push".into())),
            Some("vm-1") => drop(r.insert("state".into(), "disable".into())),
            _ => {}
        });
        run_until(&mut [&mut w], Duration::from_secs(10), "the change is read", |w| w[0].reader.stats().agents == 2);
        // A round under way may still deliver.
        run_for(&mut [&mut w], Duration::from_millis(300));
        let counts = |w: &Worker| (0..4).map(|i| w.messages_of(&format!("vm-{i}"))).collect::<Vec<_>>();
        let before = counts(&w);
        run_for(&mut [&mut w], Duration::from_secs(1));
        let after = counts(&w);
        assert_eq!((after[0], after[1]), (before[0], before[1]), "no longer polled");
        assert!(after[2] > before[2] && after[3] > before[3], "the others are: {before:?} → {after:?}");

        // And back to pull.
        served.edit_registry(|r| {
            r.insert("mechanism".into(), "pull".into());
            r.insert("state".into(), "enable".into());
        });
        run_until(&mut [&mut w], Duration::from_secs(10), "polled again", |w| {
            let now = counts(w[0]);
            now[0] > after[0] && now[1] > after[1]
        });
        assert!(w.health.is_empty());
        drop(w);
        served.shutdown();
    }

    #[test]
    fn pull_fetch_now_answers_with_values_and_latency_and_errors_within_the_timeout() {
        let served = Served::start(3, listener_config());
        let asked: Vec<String> = ["cpu", "mem", "gpu"].map(String::from).to_vec();
        let got = fetch_now_blocking(&served.pull_url("vm-0"), &asked, Duration::from_secs(2));
        assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["cpu", "mem", "gpu"]);
        for (m, result) in &got[..2] {
            let (value, latency) = result.as_ref().unwrap();
            assert_eq!(value["name"], m.as_str());
            assert_eq!(value["tags"]["vmId"], "vm-0");
            assert!(value["timestamp"].as_i64().unwrap() > 1_600_000_000);
            assert!(*latency < Duration::from_secs(2), "{latency:?}");
        }
        let e = got[2].1.as_ref().unwrap_err();
        assert!(e.contains("HTTP 404") && e.contains("has no measurement"), "{e}");

        // From within a runtime too, and asynchronously.
        let in_runtime = served.rt.block_on(async {
            let blocking = fetch_now_blocking(&served.pull_url("vm-1"), &asked[..1], Duration::from_secs(2));
            let direct = fetch_now(&served.pull_url("vm-1"), &asked[..1], Duration::from_secs(2)).await;
            (blocking, direct)
        });
        assert!(in_runtime.0[0].1.is_ok() && in_runtime.1[0].1.is_ok(), "{in_runtime:?}");

        // An agent that never answers: an error once the timeout passes.
        served.set("vm-2", Some(Behaviour::Down));
        let started = Instant::now();
        let got = fetch_now_blocking(&served.pull_url("vm-2"), &asked[..2], Duration::from_millis(300));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        for (_, result) in &got {
            assert!(result.as_ref().unwrap_err().contains("no answer within 300ms"), "{result:?}");
        }
        // Nobody there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let got = fetch_now_blocking(&format!("http://127.0.0.1:{port}/agents/x"), &asked[..1], Duration::from_secs(2));
        assert!(got[0].1.as_ref().unwrap_err().contains("cannot connect"), "{got:?}");
        served.shutdown();
    }

    #[test]
    fn pull_config_is_checked_naming_the_field() {
        assert!(PullConfig::default().validate().is_ok());
        let refused = |c: PullConfig| c.validate().unwrap_err().to_string();
        assert!(refused(PullConfig { measurements: vec![], ..PullConfig::default() }).starts_with("`measurements`"));
        let e = refused(PullConfig { measurements: vec!["cpu/x".into()], ..PullConfig::default() });
        assert!(e.starts_with("`measurements`") && e.contains("cpu/x"), "{e}");
        assert!(refused(PullConfig { interval: Duration::ZERO, ..PullConfig::default() }).starts_with("`interval`"));
        assert!(refused(PullConfig { timeout: Duration::ZERO, ..PullConfig::default() }).starts_with("`timeout`"));
        assert!(refused(PullConfig { concurrency: 0, ..PullConfig::default() }).starts_with("`concurrency`"));
        let client = PullClient::new(PullConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let control = Arc::new(JobControl::new());
        let missing =
            PullReader::new(client.clone(), &PullRegistry::file(dir.path().join("none.json")), 0, 1, control.clone());
        assert!(missing.err().unwrap().to_string().contains("cannot read"));
        let path = dir.path().join("agents.json");
        std::fs::write(&path, "[]").unwrap();
        let e = PullReader::new(client, &PullRegistry::file(&path), 2, 2, control).err().unwrap().to_string();
        assert!(e.starts_with("`worker`"), "{e}");
    }

    #[test]
    fn pull_slots_keep_each_agent_at_its_phase() {
        let start = tokio::time::Instant::now();
        let (p, i) = (Duration::from_millis(300), Duration::from_secs(1));
        assert_eq!(next_slot(start, p, i, start), start + p);
        assert_eq!(next_slot(start, p, i, start + p), start + p);
        assert_eq!(next_slot(start, p, i, start + p + Duration::from_nanos(1)), start + p + i);
        assert_eq!(next_slot(start, p, i, start + Duration::from_millis(4200)), start + Duration::from_millis(4300));
        // Phases spread over the interval.
        let phases: Vec<Duration> = (0..1000).map(|k| phase(&format!("ns/m/vm-{k}/aws"), i)).collect();
        assert!(phases.iter().all(|p| *p < i));
        let first_half = phases.iter().filter(|p| **p < i / 2).count();
        assert!((400..600).contains(&first_half), "{first_half}");
    }

    #[test]
    fn pull_takes_the_record_in_force() {
        let rec = |m: Mechanism, url: Option<&str>| AgentRecord {
            key: "k".into(),
            mechanism: m,
            pull_url: url.map(String::from),
            ..AgentRecord::default()
        };
        let history: History = vec![
            (Some(10), Some(rec(Mechanism::Push, None))),
            (Some(20), Some(rec(Mechanism::Pull, Some("http://a/")))),
        ];
        assert_eq!(pull_url(record_at(&history, 5)), Err("removed from the registry"));
        assert_eq!(pull_url(record_at(&history, 15)), Err("mechanism push"));
        assert_eq!(pull_url(record_at(&history, 25)), Ok("http://a"));
        let untimed: History = vec![(Some(10), Some(rec(Mechanism::Pull, Some("http://a")))), (None, None)];
        assert_eq!(record_at(&untimed, 15), None);
        let disabled = AgentRecord { state: AgentState::Disable, ..rec(Mechanism::Pull, Some("http://a")) };
        assert_eq!(pull_url(Some(&disabled)), Err("state disable"));
        assert_eq!(pull_url(Some(&rec(Mechanism::Pull, Some(" ")))), Err("no pull_url"));
    }
}

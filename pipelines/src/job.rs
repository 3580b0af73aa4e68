//! A job, wired top to bottom: source → window aggregate → fleet metrics → sinks, on `workers` timely workers.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use operators::alarm::eval::{evaluate, with_field_inputs, with_group_inputs, RestoredLevel};
use operators::alarm::LiveRules;
use operators::ingest::{Ingest, IngestConfig, InstanceTags};
use operators::intern::SeriesTable;
use operators::model::SinkItem;
use operators::time::{Watermarks, WindowSpec};
use operators::window::{Time, WindowAggregate};
use sinks::influx::{InfluxConfig, InfluxWriter};
use sinks::lake::{LakeConfig, LakeWriter};
use sinks::notify::Dispatcher;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Inspect, Probe};

use crate::checkpoint::{Checkpoint, Coordinator};
use crate::control::JobControl;
use crate::fleet::{open_registry_file, registry_updates, RegistryInputs};
use crate::metrics::JobMetrics;
use crate::sink::{lake_sink, SinkOutcome, Writer};
use crate::source::file::FileReader;
use crate::source::kafka::{commit_offsets, KafkaReader};
use crate::source::pull::{PullClient, PullReader};
use crate::source::{ingest_source, Both, SourceCheckpoints};
use crate::spec::{JobSpec, SinkSpec, SourceSpec, StartAt};

/// How a job runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workers: usize,
    /// Timely cluster: this process's index and every process's `host:port` (empty = one process).
    pub process: usize,
    pub hosts: Vec<String>,
    /// Rules and handlers that change while the job runs (the job server's), evaluated beside
    /// the spec's own.
    pub alarms: Option<crate::alarms::LiveAlarms>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 2, process: 0, hosts: Vec::new(), alarms: None }
    }
}

/// What a finished job did.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    pub messages: u64,
    pub values: u64,
    pub rejects: u64,
    pub late: u64,
    pub windows: u64,
    pub rows: u64,
    pub files: u64,
    /// Values read again after a restart and skipped, being already written.
    pub replayed: u64,
    /// The checkpoint written when the job ended, and how many partitions' offsets were
    /// committed to the consumer group from it.
    pub checkpoint: Option<Checkpoint>,
    pub committed_partitions: usize,
    pub elapsed: Duration,
}

impl JobReport {
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot open source: {0}")]
    Source(String),
    #[error("sink failed: {0}")]
    Sink(String),
    #[error("worker failed: {0}")]
    Worker(String),
}

/// Builds the ingest settings of a spec.
pub fn ingest_config(spec: &JobSpec) -> IngestConfig {
    let mut instance_tags = InstanceTags::default();
    for (m, t) in &spec.keys.instance_tags {
        instance_tags.set(m, t);
    }
    IngestConfig {
        format: spec.source.format(),
        unit: spec.source.timestamp_unit(),
        window: WindowSpec::new(spec.window.size, spec.window.lateness),
        instance_tags,
        max_skew: Some(spec.window.max_skew.as_nanos() as i64),
        series_ttl: Some(spec.limits.series_ttl.as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// Runs a job to its end: end of a file, `stop_at_end`, or `control` asking to drain or stop.
pub fn run_job(
    spec: &JobSpec,
    options: &RunOptions,
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
) -> Result<JobReport, JobError> {
    spec.validate().map_err(|e| JobError::Source(e.to_string()))?;
    let spec_source = spec.source.clone();
    let spec_for_grace = spec.clone();
    let live_handlers = options.alarms.as_ref().map(|l| l.handlers()).unwrap_or_default();
    if let SourceSpec::File(f) = &spec.source {
        // Fail before starting workers, with the path in the message.
        std::fs::metadata(&f.path).map_err(|e| JobError::Source(format!("{}: {e}", f.path.display())))?;
    }
    if let (Some(_), Some(path)) = (spec.groups_config(), &spec.registry.file) {
        open_registry_file(path).map_err(JobError::Source)?;
    }
    let config = if options.hosts.len() > 1 {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: options.workers.max(1),
                process: options.process,
                addresses: options.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    } else {
        timely::Config::process(options.workers.max(1))
    };
    let coordinator = match (&spec.source, spec.checkpoint_dir()) {
        (SourceSpec::Kafka(k), Some(dir)) => {
            let resume = k.start == StartAt::Committed;
            let c = Coordinator::new(&dir, options.process, options.workers.max(1), spec.checkpoint.interval, resume)
                .map_err(JobError::Source)?;
            if let Some(r) = c.restored() {
                eprintln!(
                    "dragonflow: resuming from checkpoint {} (epoch {}, windows before {} written, {} partitions)",
                    c.path().display(),
                    r.epoch,
                    crate::metrics::format_ts(r.frontier),
                    r.partitions.len()
                );
                metrics.set_checkpoint(r.epoch, r.frontier);
            }
            Some(Arc::new(c))
        }
        _ => None,
    };
    // A job resuming from a checkpoint carries on its agents' registry and health from the lake.
    let restored_agents = match (coordinator.as_ref().and_then(|c| c.restored()), spec.groups_config()) {
        (Some(r), Some(g)) => match spec.sinks.iter().find_map(|s| match s {
            SinkSpec::Parquet(p) => Some(p.path.clone()),
            _ => None,
        }) {
            Some(lake) => {
                let span = g.snapshot_every + (g.unhealthy_after as i64 + 2) * g.window;
                sinks::sql::agents_before(&lake, r.frontier.saturating_sub(g.window), span)
                    .map_err(|e| JobError::Source(format!("cannot read the agents of the last run: {e}")))?
            }
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    let restored_agents = Arc::new(restored_agents);
    // Alarm rules carry on the levels their targets had when the last run stopped.
    let size = spec.window.size.as_nanos() as i64;
    let alarms = match (coordinator.as_ref().and_then(|c| c.restored()), crate::alarms::lake_path(spec)) {
        (Some(r), Some(lake)) if !spec.alarms.is_empty() || options.alarms.is_some() => {
            let levels = crate::alarms::restored_levels(&lake, &spec.source_id(), r.frontier)
                .map_err(|e| JobError::Source(format!("cannot read the alarm levels of the last run: {e}")))?;
            AlarmSetup { levels: Arc::new(levels), evaluated_until: (r.frontier - 1).div_euclid(size) * size }
        }
        _ => AlarmSetup { levels: Arc::new(Vec::new()), evaluated_until: i64::MIN },
    };
    let live = options.alarms.clone();
    let dispatcher = crate::alarms::start_dispatcher(spec, metrics.clone(), live.is_some())
        .map_err(|e| JobError::Source(format!("cannot start the alarm handlers: {e}")))?;
    // Rules are wired into the dataflow when the spec has some or the server may add some.
    let rules = (!spec.alarms.is_empty() || live.is_some()).then(|| LiveRules::new(crate::alarms::rules(spec)));
    let subscription = match (&live, &rules) {
        (Some(live), Some(rules)) => Some(live.attach(spec, rules.clone(), dispatcher.clone())),
        _ => None,
    };
    let spec = Arc::new(spec.clone());
    let started = std::time::Instant::now();
    let worker_metrics = metrics.clone();
    let worker_coordinator = coordinator.clone();
    let local_workers = options.workers.max(1);
    let worker_dispatcher = dispatcher.clone();
    // One HTTP runtime for the pull agents of every worker of the process.
    let pull_client = match &spec.pull {
        Some(p) => Some(PullClient::new(p.config()).map_err(|e| JobError::Source(format!("pull: {e}")))?),
        None => None,
    };
    let guards = timely::execute(config, move |worker| -> Result<(), String> {
        run_worker(
            worker,
            &spec,
            control.clone(),
            worker_metrics.clone(),
            worker_coordinator.clone(),
            local_workers,
            restored_agents.clone(),
            WorkerExtras {
                alarm_setup: alarms.clone(),
                rules: rules.clone(),
                dispatcher: worker_dispatcher.clone(),
                pull_client: pull_client.clone(),
            },
        )
    })
    .map_err(JobError::Worker)?;
    let mut report = JobReport::default();
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(subscription);
    // Deliveries still in flight get one full retry policy; what is left is recorded as failed.
    if let Some(d) = dispatcher.and_then(Arc::into_inner) {
        let pending = d.pending();
        let grace = crate::alarms::delivery_grace(&spec_for_grace.handlers, &live_handlers);
        if pending > 0 {
            eprintln!("dragonflow: delivering {pending} alarm event(s), waiting up to {} s", grace.as_secs());
        }
        d.shutdown(grace);
    }
    if let Some(e) = first_error {
        return Err(JobError::Sink(e));
    }
    // Every sink finished: what the job read is written. Checkpoint it, then tell Kafka.
    if let (Some(c), SourceSpec::Kafka(k)) = (&coordinator, &spec_source) {
        let checkpoint = c.write_final().map_err(JobError::Sink)?;
        if let Some(cp) = &checkpoint {
            metrics.set_checkpoint(cp.epoch, cp.frontier);
            report.committed_partitions =
                commit_offsets(k, &cp.partitions).map_err(|e| JobError::Sink(format!("kafka commit: {e}")))?;
        }
        report.checkpoint = checkpoint;
    }
    report.messages = metrics.messages.load(Ordering::Relaxed);
    report.values = metrics.values.load(Ordering::Relaxed);
    report.rejects = metrics.rejects.load(Ordering::Relaxed);
    report.late = metrics.late.load(Ordering::Relaxed);
    report.windows = metrics.windows.load(Ordering::Relaxed);
    report.rows = metrics.rows.load(Ordering::Relaxed);
    report.files = metrics.files.load(Ordering::Relaxed);
    report.replayed = metrics.replayed.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What every worker of a job shares for its alarms and its pull agents.
struct WorkerExtras {
    alarm_setup: AlarmSetup,
    rules: Option<LiveRules>,
    dispatcher: Option<Arc<Dispatcher>>,
    pull_client: Option<Arc<PullClient>>,
}

/// What the workers need to evaluate alarm rules.
#[derive(Clone)]
struct AlarmSetup {
    /// Levels carried on from the last run.
    levels: Arc<Vec<RestoredLevel>>,
    /// The last window end the last run evaluated (`i64::MIN`: none).
    evaluated_until: i64,
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: &JobSpec,
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
    coordinator: Option<Arc<Coordinator>>,
    local_workers: usize,
    restored_agents: Arc<Vec<operators::model::AgentRow>>,
    extras: WorkerExtras,
) -> Result<(), String> {
    let WorkerExtras { alarm_setup, rules, dispatcher, pull_client } = extras;
    let index = worker.index();
    let peers = worker.peers();
    // The limit is the job's; each worker holds an even share of the series.
    let limit = spec.limits.max_series.map(|m| m.div_ceil(peers as u64) as usize);
    let table = Rc::new(RefCell::new(SeriesTable::with_limit(limit)));
    let config = ingest_config(spec);
    let window = config.window;
    let ingest = Ingest::new(table.clone(), config);
    let idle = match &spec.source {
        SourceSpec::Kafka(k) => k.idle_timeout,
        SourceSpec::File(_) | SourceSpec::Pull => Duration::from_secs(30),
    };
    let mut watermarks = Watermarks::new(window.lateness, idle);
    let resume = coordinator.as_ref().and_then(|c| c.restored().cloned()).map(Arc::new);
    if let Some(r) = &resume {
        // Windows before the checkpoint's frontier are written: they are closed from the start.
        watermarks.raise_combined(r.frontier.saturating_sub(1));
    }

    let mut writers = Vec::new();
    let mut flush_interval = Duration::from_secs(10);
    for s in &spec.sinks {
        match s {
            SinkSpec::Parquet(p) => {
                flush_interval = flush_interval.min(p.flush_interval);
                let cfg = LakeConfig {
                    path: p.path.clone(),
                    flush_interval: p.flush_interval,
                    workers: peers,
                    job: spec.source_id(),
                    counters: spec.counters(),
                    ..LakeConfig::default()
                };
                writers.push(Writer::Lake(Box::new(LakeWriter::new(cfg, index).map_err(|e| e.to_string())?)));
            }
            SinkSpec::InfluxDb(i) => {
                flush_interval = flush_interval.min(i.flush_interval);
                let cfg = InfluxConfig {
                    url: i.url.clone(),
                    database: i.database.clone(),
                    retention_policy: i.retention_policy.clone(),
                    retention: i.retention.clone(),
                    username: i.username.clone(),
                    password: i.password.clone(),
                    batch_lines: i.batch_lines,
                    gzip: i.gzip,
                    timeout: i.timeout,
                    max_in_flight: 4,
                    retry_for: i.retry_for,
                    flush_interval: i.flush_interval,
                    counters: spec.counters(),
                };
                writers.push(Writer::Influx(Box::new(InfluxWriter::new(cfg, index).map_err(|e| e.to_string())?)));
            }
        }
    }

    let outcome: SinkOutcome = Rc::new(RefCell::new(None));
    let mut file_reader = None;
    let mut kafka_reader = None;
    match &spec.source {
        SourceSpec::File(f) => {
            let reader = FileReader::open(&f.path, index, peers).map_err(|e| format!("{}: {e}", f.path.display()))?;
            file_reader = Some(reader.with_control(control.clone()));
        }
        SourceSpec::Kafka(k) => {
            let reader =
                KafkaReader::new(k.clone(), index, peers, control.clone(), resume).map_err(|e| e.to_string())?;
            kafka_reader = Some(reader);
        }
        SourceSpec::Pull => {}
    }
    let pull_reader = match pull_client {
        Some(client) => {
            let registry = crate::source::pull::PullRegistry {
                file: spec.registry.file.clone(),
                topic: match (&spec.registry.topic, &spec.source) {
                    (Some(topic), SourceSpec::Kafka(k)) => Some((k.clone(), topic.clone())),
                    _ => None,
                },
            };
            let reader = PullReader::new(client, &registry, index, peers, control.clone());
            Some(reader.map_err(|e| format!("pull: {e}"))?)
        }
        None => None,
    };

    let groups = spec.groups_config();
    let registry_inputs = match (&groups, index) {
        (Some(_), 0) if spec.registry.file.is_some() || spec.registry.topic.is_some() => {
            let mut initial = Vec::new();
            let topic = match (&spec.registry.topic, &spec.source) {
                (Some(topic), SourceSpec::Kafka(k)) => {
                    let mut reader = crate::source::registry::RegistryTopic::new(k, topic)?;
                    for u in reader.catch_up(Duration::from_secs(10)) {
                        match u {
                            Ok(u) => initial.push(u),
                            Err(e) => eprintln!("dragonflow: {e}"),
                        }
                    }
                    Some(reader)
                }
                _ => None,
            };
            Some(RegistryInputs {
                initial,
                file: spec.registry.file.as_ref().map(operators::registry::RegistryFile::new),
                topic,
                reload_interval: spec.registry.reload_interval,
            })
        }
        _ => None,
    };

    let size = window.size;
    let sink_outcome = outcome.clone();
    let sink_metrics = metrics.clone();
    let probe = ProbeHandle::new();
    let barriers = coordinator.is_some();
    let final_coordinator = coordinator.clone();
    let checkpoints = coordinator.map(|coordinator| SourceCheckpoints {
        coordinator,
        probe: probe.clone(),
        local_index: index % local_workers,
    });
    worker.dataflow::<Time, _, _>(move |scope| {
        // The job's file or Kafka partitions and its pull agents, whichever it has, as one reader
        // (checkpoints come only with a Kafka source).
        let name = match (&file_reader, &kafka_reader) {
            (Some(_), _) => "FileSource",
            (_, Some(_)) => "KafkaSource",
            _ => "PullSource",
        };
        let reader = Both { first: Both { first: file_reader, second: kafka_reader }, second: pull_reader };
        let (observations, side) = ingest_source(scope, name, reader, ingest, watermarks, metrics.clone(), checkpoints);
        let window_metrics = metrics.clone();
        let windows = observations
            .window_aggregate(table, size)
            .inspect(move |w| window_metrics.window_closed(w.window_end, w.rows.len()));
        let (windows, mut alarm_inputs) = match &rules {
            None => (windows, None),
            Some(rules) => {
                let (windows, inputs) = with_field_inputs(windows, rules.clone());
                (windows, Some(inputs))
            }
        };
        let mut items = match groups {
            None => windows.map(SinkItem::Aggregates).concat(side),
            Some(config) => {
                let (windows, parts) = operators::groups::dataflow::with_vm_parts(windows, &config);
                let closed = ProbeHandle::new();
                let parts = parts.probe_with(&closed);
                let (updates, registry_rejects) = registry_updates(scope, registry_inputs, closed, metrics.clone());
                let closed_by_data = metrics.data_watermark();
                let fleet = operators::groups::fleet_metrics(parts, updates, config, closed_by_data, restored_agents);
                let fleet = match (alarm_inputs.take(), &rules) {
                    (Some(field_inputs), Some(rules)) => {
                        let (fleet, group_inputs) = with_group_inputs(fleet, rules.clone());
                        alarm_inputs = Some(field_inputs.concat(group_inputs));
                        fleet
                    }
                    _ => fleet,
                };
                windows.map(SinkItem::Aggregates).concat(side).concat(registry_rejects).concat(fleet)
            }
        };
        if let (Some(inputs), Some(rules)) = (alarm_inputs, rules) {
            let AlarmSetup { levels, evaluated_until } = alarm_setup;
            let alarm_metrics = metrics.clone();
            let closed_by_data = metrics.data_watermark();
            // A stopped job's windows are final only before the frontier its checkpoint will
            // record; until every worker has stopped reading, only the data's watermark is sure.
            let watermark = closed_by_data.clone();
            let evaluable_before: Arc<dyn Fn() -> i64 + Send + Sync> =
                Arc::new(move || match (&final_coordinator, control.stopping()) {
                    (Some(c), true) => c.final_frontier().unwrap_or_else(|| watermark().saturating_add(1)),
                    _ => i64::MAX,
                });
            let events = evaluate(inputs, rules, size, closed_by_data, evaluable_before, levels, evaluated_until)
                .inspect(move |e| {
                    alarm_metrics.alarm_events.fetch_add(1, Ordering::Relaxed);
                    crate::alarms::dispatch(&dispatcher, e);
                });
            // A window's events of this worker reach the sinks as one item.
            let alarm_items =
                events.unary::<CapacityContainerBuilder<Vec<SinkItem>>, _, _, _>(Pipeline, "AlarmItems", |_, _| {
                    move |input, output| {
                        input.for_each(|cap, events| {
                            if let Some(cap) = cap.retain_least(0) {
                                output.session(&cap).give(SinkItem::Alarms(std::mem::take(events)));
                            }
                        })
                    }
                });
            items = items.concat(alarm_items);
        }
        lake_sink(items, writers, flush_interval, sink_metrics, sink_outcome, barriers).probe_with(&probe);
    });

    while worker.step_or_park(Some(Duration::from_millis(100))) {}

    let result = outcome.borrow_mut().take();
    match result {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e),
        None => Err("sinks did not finish".into()),
    }
}

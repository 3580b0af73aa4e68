//! A job, wired top to bottom: source → window aggregate → sinks, on `workers` timely workers.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use operators::ingest::{Ingest, IngestConfig, InstanceTags};
use operators::intern::SeriesTable;
use operators::model::SinkItem;
use operators::time::{Watermarks, WindowSpec};
use operators::window::{Time, WindowAggregate};
use sinks::influx::{InfluxConfig, InfluxWriter};
use sinks::lake::{LakeConfig, LakeWriter};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Inspect};

use crate::control::JobControl;
use crate::metrics::JobMetrics;
use crate::sink::{lake_sink, SinkOutcome, Writer};
use crate::source::file::FileReader;
use crate::source::ingest_source;
use crate::source::kafka::KafkaReader;
use crate::spec::{JobSpec, SinkSpec, SourceSpec};

/// How a job runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workers: usize,
    /// Timely cluster: this process's index and every process's `host:port` (empty = one process).
    pub process: usize,
    pub hosts: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 2, process: 0, hosts: Vec::new() }
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

/// Per-worker result (what the sinks wrote is counted in [`JobMetrics`]).
struct WorkerEnd {
    committed: usize,
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
    if let SourceSpec::File(f) = &spec.source {
        // Fail before starting workers, with the path in the message.
        std::fs::metadata(&f.path).map_err(|e| JobError::Source(format!("{}: {e}", f.path.display())))?;
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
    let spec = Arc::new(spec.clone());
    let started = std::time::Instant::now();
    let worker_metrics = metrics.clone();
    let guards = timely::execute(config, move |worker| -> Result<WorkerEnd, String> {
        run_worker(worker, &spec, control.clone(), worker_metrics.clone())
    })
    .map_err(JobError::Worker)?;
    let mut report = JobReport::default();
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(end)) => report.committed_partitions += end.committed,
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(JobError::Sink(e));
    }
    report.messages = metrics.messages.load(Ordering::Relaxed);
    report.values = metrics.values.load(Ordering::Relaxed);
    report.rejects = metrics.rejects.load(Ordering::Relaxed);
    report.late = metrics.late.load(Ordering::Relaxed);
    report.windows = metrics.windows.load(Ordering::Relaxed);
    report.rows = metrics.rows.load(Ordering::Relaxed);
    report.files = metrics.files.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    Ok(report)
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: &JobSpec,
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
) -> Result<WorkerEnd, String> {
    let index = worker.index();
    let peers = worker.peers();
    let table = Rc::new(RefCell::new(SeriesTable::new()));
    let config = ingest_config(spec);
    let window = config.window;
    let ingest = Ingest::new(table.clone(), config);
    let idle = match &spec.source {
        SourceSpec::Kafka(k) => k.idle_timeout,
        SourceSpec::File(_) => Duration::from_secs(30),
    };
    let watermarks = Watermarks::new(window.lateness, idle);

    let mut writers = Vec::new();
    let mut flush_interval = Duration::from_secs(10);
    for s in &spec.sinks {
        match s {
            SinkSpec::Parquet(p) => {
                flush_interval = flush_interval.min(p.flush_interval);
                let cfg =
                    LakeConfig { path: p.path.clone(), flush_interval: p.flush_interval, ..LakeConfig::default() };
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
                };
                writers.push(Writer::Influx(Box::new(InfluxWriter::new(cfg, index).map_err(|e| e.to_string())?)));
            }
        }
    }

    let outcome: SinkOutcome = Rc::new(RefCell::new(None));
    let mut commit = None;
    let mut file_reader = None;
    let mut kafka_reader = None;
    match &spec.source {
        SourceSpec::File(f) => {
            file_reader =
                Some(FileReader::open(&f.path, index, peers).map_err(|e| format!("{}: {e}", f.path.display()))?);
        }
        SourceSpec::Kafka(k) => {
            let reader = KafkaReader::new(k.clone(), index, peers, control.clone()).map_err(|e| e.to_string())?;
            commit = Some(reader.commit_handle());
            kafka_reader = Some(reader);
        }
    }

    let size = window.size;
    let sink_outcome = outcome.clone();
    let sink_metrics = metrics.clone();
    worker.dataflow::<Time, _, _>(move |scope| {
        let (observations, side) = match (file_reader, kafka_reader) {
            (Some(r), _) => ingest_source(scope, "FileSource", r, ingest, watermarks, metrics.clone()),
            (_, Some(r)) => ingest_source(scope, "KafkaSource", r, ingest, watermarks, metrics.clone()),
            _ => unreachable!("one source is always built"),
        };
        let window_metrics = metrics.clone();
        let results = observations
            .window_aggregate(table, size)
            .inspect(move |w| window_metrics.window_closed(w.window_end, w.rows.len()))
            .map(SinkItem::Aggregates);
        lake_sink(results.concat(side), writers, flush_interval, sink_metrics, sink_outcome);
    });

    while worker.step_or_park(Some(Duration::from_millis(100))) {}

    match outcome.borrow_mut().take() {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(e),
        None => return Err("sinks did not finish".into()),
    }
    // Offsets are committed only now that every sink has written what it was given.
    let committed = match commit {
        Some(c) => c.commit().map_err(|e| format!("kafka commit: {e}"))?,
        None => 0,
    };
    Ok(WorkerEnd { committed })
}

//! `dragonflow demo`: everything in one process, nothing to install.
//!
//! librdkafka's mock cluster plays Kafka; the load generator publishes N agents into it in real
//! time while the pipeline consumes (a mock broker keeps up with live traffic but is slow to
//! catch up on a backlog), windows land in a Parquet lake, and a few SQL answers end the show.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use operators::alarm::Comparison;
use pipelines::spec::{
    AlarmAggregate, AlarmSpec, AlarmTarget, AlarmWatch, JobSpec, KafkaSource, KeysConfig, ParquetSink, SinkSpec,
    SourceSpec, StartAt, WindowConfig, DEFAULT_ALARM_MESSAGE,
};
use pipelines::{run_job, JobControl, JobMetrics, RunOptions};
use rdkafka::mocking::MockCluster;
use sinks::sql::OutputFormat;

use super::loadgen::{generate, LoadgenArgs, WireFormat};
use super::{duration, print_report, StatusPrinter};

#[derive(Args)]
pub struct DemoArgs {
    /// Virtual agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// How long the agents send.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,
    /// Where the Parquet lake goes.
    #[arg(long, default_value = "demo-lake")]
    pub lake: PathBuf,
    /// Timely workers.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// Kafka partitions of the demo topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

const TOPIC: &str = "metrics";

/// The demo's alarm rule: a VM whose idle CPU stays low. No handler: events go to the lake only.
fn demo_alarm() -> AlarmSpec {
    AlarmSpec {
        name: "cpu_busy".into(),
        watch: AlarmWatch::Field {
            measurement: "cpu".into(),
            field: "usage_idle".into(),
            aggregate: AlarmAggregate::Mean,
        },
        target: AlarmTarget::Vm,
        target_id: None,
        comparison: Comparison::Lt,
        warn: Some(40.0),
        crit: Some(20.0),
        warn_windows: 2,
        crit_windows: 2,
        warn_reset: Some(50.0),
        crit_reset: Some(25.0),
        handlers: Vec::new(),
        message: DEFAULT_ALARM_MESSAGE.into(),
        nodata_after: None,
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka (librdkafka mock cluster)")?;
    cluster.create_topic(TOPIC, args.partitions, 1).context("creating the demo topic")?;
    let brokers = cluster.bootstrap_servers();
    let run_start = pipelines::source::wall_ns();
    eprintln!(
        "demo: in-process Kafka at {brokers}, topic '{TOPIC}' ({} partitions); {} agents for {}; lake {}",
        args.partitions,
        args.agents,
        humantime::format_duration(args.duration),
        args.lake.display()
    );

    let spec = JobSpec {
        name: Some("demo".into()),
        source: SourceSpec::Kafka(KafkaSource {
            brokers: brokers.clone(),
            topics: vec![TOPIC.into()],
            topic_regex: None,
            group: "dragonflow-demo".into(),
            start: StartAt::Earliest,
            format: operators::decode::Format::Json,
            timestamp_unit: Default::default(),
            idle_timeout: Duration::from_secs(10),
            stop_at_end: false,
            options: Default::default(),
        }),
        window: WindowConfig::default(),
        keys: KeysConfig::default(),
        limits: Default::default(),
        checkpoint: Default::default(),
        groups: Default::default(),
        registry: Default::default(),
        counters: Default::default(),
        alarms: vec![demo_alarm()],
        handlers: Vec::new(),
        pull: None,
        sinks: vec![SinkSpec::Parquet(ParquetSink { path: args.lake.clone(), flush_interval: Duration::from_secs(5) })],
    };
    let control = Arc::new(JobControl::new());
    let metrics = Arc::new(JobMetrics::new(args.workers));
    let options = RunOptions { workers: args.workers, ..Default::default() };
    super::run::install_signal_handler(control.clone())?;

    // The pipeline runs beside the generator, consuming as messages arrive.
    let job = {
        let (control, metrics) = (control.clone(), metrics.clone());
        std::thread::spawn(move || run_job(&spec, &options, control, metrics))
    };

    let sent = Arc::new(Mutex::new(String::from("starting")));
    let status = {
        let (metrics, sent) = (metrics.clone(), sent.clone());
        StatusPrinter::start(Duration::from_secs(2), move || {
            format!(
                "loadgen: {} || pipeline: {}",
                sent.lock().map(|s| s.clone()).unwrap_or_default(),
                metrics.status_line()
            )
        })
    };
    let gen = LoadgenArgs {
        agents: args.agents,
        interval: Duration::from_secs(2),
        duration: args.duration,
        brokers: Some(brokers),
        topic: TOPIC.into(),
        partitions: None,
        out: None,
        format: WireFormat::Json,
        seed: 1,
        skew: Duration::ZERO,
        reorder: 0.0,
        churn: 0.0,
        start: None,
        fast: false,
        report: None,
        first_vm: 0,
        pull: None,
    };
    let stop = AtomicBool::new(false);
    let generated = {
        let sent = sent.clone();
        let agents = args.agents;
        let mut progress = move |s: &loadgen::Stats| {
            // The rate over the whole run: real-time agents send in bursts, one per interval.
            let line = loadgen::status_line(agents, s, None);
            if let Ok(mut l) = sent.lock() {
                *l = line;
            }
        };
        generate(&gen, &stop, &mut progress)?
    };
    if let Ok(mut line) = sent.lock() {
        *line = format!("done, {} messages sent", generated.messages);
    }
    eprintln!(
        "demo: load generator sent {} messages ({} errors); draining the pipeline",
        generated.messages, generated.errors
    );
    control.drain();
    let report = job.join().map_err(|_| anyhow!("pipeline thread panicked"))??;
    drop(status);
    print_report(&report, &metrics);
    if report.messages != generated.messages {
        eprintln!("demo: warning: sent {} but read {} messages", generated.messages, report.messages);
    }

    let since = format!("TIMESTAMP '{}'", pipelines::metrics::format_ts(run_start - 20_000_000_000));
    let queries = [
        (
            "Busiest VMs by CPU (this run)",
            format!(
                "SELECT vm_id, csp_type, round(100 - avg(mean), 2) AS cpu_util_pct, sum(count) AS samples \
                 FROM aggregates WHERE measurement = 'cpu' AND field = 'usage_idle' AND window_start >= {since} \
                 GROUP BY vm_id, csp_type ORDER BY cpu_util_pct DESC, vm_id LIMIT 5"
            ),
        ),
        (
            "Per CSP, from the group metrics (this run, mean over windows)",
            format!(
                "SELECT group_id AS csp, max(vm_count) AS vms, \
                 round(avg(CASE WHEN metric = 'cpu_util_mean' THEN value END), 2) AS cpu_util_pct, \
                 round(avg(CASE WHEN metric = 'mem_util_mean' THEN value END), 2) AS mem_util_pct, \
                 round(avg(CASE WHEN metric = 'net_bytes_in_per_s' THEN value END) / 1e6, 2) AS net_in_mb_s \
                 FROM groups WHERE level = 'csp' AND window_start >= {since} GROUP BY group_id ORDER BY cpu_util_pct DESC"
            ),
        ),
        (
            "Busiest MCIS by CPU in the last window (rankings)",
            "SELECT window_start, rank, group_id AS mcis, round(value, 2) AS cpu_util_pct FROM rankings \
             WHERE level = 'mcis' AND metric = 'cpu_util_mean' AND \"order\" = 'top' \
             AND window_start = (SELECT max(window_start) FROM rankings) ORDER BY rank LIMIT 3"
                .to_string(),
        ),
        (
            "Alarm events (this run; rule cpu_busy: idle CPU below 40% warns, below 20% is critical)",
            format!(
                "SELECT time, target, previous_level, level, round(value, 1) AS idle_pct FROM alarm_events \
                 WHERE time >= {since} ORDER BY time DESC, target LIMIT 8"
            ),
        ),
        (
            "Windows written (this run)",
            format!(
                "SELECT window_start, count(DISTINCT vm_id) AS vms, count(*) AS rows, sum(count) AS values \
                 FROM aggregates WHERE window_start >= {since} GROUP BY window_start ORDER BY window_start"
            ),
        ),
    ];
    for (title, sql) in queries {
        println!("\n{title}:");
        print!("{}", super::sql::run_query(&args.lake, &sql, OutputFormat::Table)?);
        println!();
    }
    println!(
        "\nQuery the lake yourself:  dragonflow sql --lake {} \"SELECT * FROM aggregates LIMIT 10\"",
        args.lake.display()
    );
    drop(cluster);
    Ok(())
}

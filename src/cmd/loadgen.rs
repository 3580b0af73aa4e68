//! `dragonflow loadgen`: N virtual agents into Kafka (real time) or a file (synthetic time).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use loadgen::{run_kafka, status_line, write_file, FleetConfig, KafkaTarget, Stats};

use super::duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WireFormat {
    Json,
    Influx,
}

impl From<WireFormat> for loadgen::Format {
    fn from(f: WireFormat) -> Self {
        match f {
            WireFormat::Json => loadgen::Format::Json,
            WireFormat::Influx => loadgen::Format::Influx,
        }
    }
}

#[derive(Args, Clone)]
pub struct LoadgenArgs {
    /// Number of virtual agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Collection interval of every agent.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub interval: Duration,
    /// How long to run (Kafka) or how much event time to generate (file).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub duration: Duration,
    /// Kafka brokers (host:port,…); with --topic.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, default_value = "metrics")]
    pub topic: String,
    /// Create the topic with this many partitions when it does not exist.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Write to this file instead of Kafka (JSON lines or line protocol; .gz compresses).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: WireFormat,
    /// Seed of the generator: the same seed gives the same metrics.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Largest clock offset of an agent, e.g. "2s".
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub skew: Duration,
    /// Share of messages delayed by one interval (reordering), 0.0–1.0.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Share of agents replaced by new VMs every minute of event time, 0.0–1.0 (agents come and go).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub churn: f64,
    /// Event time of the first tick, unix seconds (default: now for Kafka, 1700000000 for files).
    #[arg(long)]
    pub start: Option<i64>,
    /// Publish to Kafka as fast as possible with a synthetic clock instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Write what was sent (messages per measurement) as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.reorder) {
        bail!("--reorder must be between 0 and 1");
    }
    if !(0.0..=1.0).contains(&args.churn) {
        bail!("--churn must be between 0 and 1");
    }
    if args.interval.is_zero() {
        bail!("--interval must be positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let agents = args.agents;
    let mut progress = move |s: &Stats| {
        // The rate over the whole run: real-time agents send in bursts, one per interval.
        let line = status_line(agents, s, None);
        eprintln!("{line}");
    };
    let stats = generate(&args, &stop, &mut progress)?;
    eprintln!("{}", status_line(args.agents, &stats, None));
    println!("{}", serde_json::to_string_pretty(&stats.to_json())?);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&stats.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the generator as the arguments say, calling `progress` about once a second.
pub fn generate(args: &LoadgenArgs, stop: &AtomicBool, progress: &mut dyn FnMut(&Stats)) -> anyhow::Result<Stats> {
    let cfg = FleetConfig {
        agents: args.agents,
        seed: args.seed,
        format: args.format.into(),
        skew_ns: args.skew.as_nanos() as i64,
        reorder: args.reorder,
        churn: args.churn,
    };
    let ticks = (args.duration.as_nanos() / args.interval.as_nanos()).max(1) as u64;
    match (&args.out, &args.brokers) {
        (Some(path), _) => {
            let start = args.start.unwrap_or(1_700_000_000) * 1_000_000_000;
            Ok(write_file(cfg, path, start, args.interval, ticks, progress)?)
        }
        (None, Some(brokers)) => {
            let target = KafkaTarget {
                brokers: brokers.clone(),
                topic: args.topic.clone(),
                partitions: args.partitions,
                config: Vec::new(),
            };
            let start = args.start.map(|s| s * 1_000_000_000).unwrap_or_else(pipelines::source::wall_ns);
            Ok(run_kafka(cfg, &target, start, args.interval, args.duration, !args.fast, stop, progress)?)
        }
        (None, None) => bail!("give --brokers (Kafka) or --out FILE"),
    }
}

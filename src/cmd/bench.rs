//! `dragonflow bench`: a generated file through decode → windows → Parquet, timed.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use pipelines::spec::{FileSource, JobSpec, KeysConfig, ParquetSink, SinkSpec, SourceSpec, WindowConfig};
use pipelines::{run_job, JobControl, JobMetrics, RunOptions};

use super::loadgen::{generate, LoadgenArgs, WireFormat};

#[derive(Args)]
pub struct BenchArgs {
    /// Virtual agents in the generated file.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Collection ticks per agent (2 s apart); each tick is 6 messages per agent.
    #[arg(long, default_value_t = 100)]
    pub ticks: u64,
    /// Timely workers.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    #[arg(long, value_enum, default_value = "json")]
    pub format: WireFormat,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Use this input file instead of generating one.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("dragonflow bench: this is a debug build; build with --release for meaningful figures");
    }
    let dir = tempfile::tempdir()?;
    let input = match &args.file {
        Some(f) => f.clone(),
        None => {
            let ext = match args.format {
                WireFormat::Json => "jsonl",
                WireFormat::Influx => "lp",
            };
            let path = dir.path().join(format!("bench.{ext}"));
            let gen = LoadgenArgs {
                agents: args.agents,
                interval: std::time::Duration::from_secs(2),
                duration: std::time::Duration::from_secs(2 * args.ticks),
                brokers: None,
                topic: String::new(),
                partitions: None,
                out: Some(path.clone()),
                format: args.format,
                seed: 1,
                skew: std::time::Duration::ZERO,
                reorder: 0.0,
                start: None,
                fast: true,
                report: None,
            };
            let t = Instant::now();
            let stats = generate(&gen, &AtomicBool::new(false), &mut |_| {})?;
            eprintln!(
                "generated {} messages ({:.1} MB) in {:.2} s",
                stats.messages,
                stats.bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            path
        }
    };
    let format = match args.format {
        WireFormat::Json => operators::decode::Format::Json,
        WireFormat::Influx => operators::decode::Format::Influx,
    };
    let mut results = Vec::new();
    for run in 0..args.runs.max(1) {
        let lake = dir.path().join(format!("lake-{run}"));
        let spec = JobSpec {
            name: Some("bench".into()),
            source: SourceSpec::File(FileSource { path: input.clone(), format, timestamp_unit: Default::default() }),
            window: WindowConfig::default(),
            keys: KeysConfig::default(),
            sinks: vec![SinkSpec::Parquet(ParquetSink {
                path: lake,
                flush_interval: std::time::Duration::from_secs(10),
            })],
        };
        let metrics = Arc::new(JobMetrics::new(args.workers));
        let options = RunOptions { workers: args.workers, ..Default::default() };
        let report = run_job(&spec, &options, Arc::new(JobControl::new()), metrics)?;
        println!(
            "run {}: {} messages, {} values, {} rows in {:.3} s = {:.0} messages/s, {:.0} values/s",
            run + 1,
            report.messages,
            report.values,
            report.rows,
            report.elapsed.as_secs_f64(),
            report.messages_per_sec(),
            report.values as f64 / report.elapsed.as_secs_f64()
        );
        results.push(report);
    }
    results.sort_by_key(|r| r.elapsed);
    let median = &results[results.len() / 2];
    println!(
        "median: {:.0} messages/s, {:.0} field values/s ({} workers, {:.3} s for {} messages)",
        median.messages_per_sec(),
        median.values as f64 / median.elapsed.as_secs_f64(),
        args.workers,
        median.elapsed.as_secs_f64(),
        median.messages
    );
    if let Some(peak) = super::peak_rss() {
        println!("peak memory: {:.1} MiB (resident, whole process)", peak as f64 / (1 << 20) as f64);
    }
    Ok(())
}

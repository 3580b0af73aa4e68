//! `dragonflow bench`: a generated file through decode → windows → Parquet, timed.
//!
//! With `--churn` (or `--minutes`) it reports memory under churn instead: agents come and go
//! for M minutes of event time, the job runs once with `series_ttl = "10m"`, and the resident
//! memory is sampled against the job's watermark, so that bounded series state shows as an
//! end/early ratio near 1 rather than one that grows with the number of agents ever seen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions};

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
    /// Memory under churn: share of agents replaced every minute of event time (0.0–1.0).
    /// Generates `--minutes` of event time and runs the job once, sampling memory.
    #[arg(long, value_name = "FRACTION", conflicts_with = "file")]
    pub churn: Option<f64>,
    /// Event time to generate for the memory report, minutes (default 10; implies the report,
    /// with no churn unless `--churn` is given).
    #[arg(long, value_name = "M", conflicts_with = "file")]
    pub minutes: Option<u64>,
    /// Run without the fleet metrics (groups, rankings, registry, health), to measure their cost.
    #[arg(long)]
    pub without_groups: bool,
    /// Add alarm rules (a per-VM CPU rule and an MCIS group-metric rule, as in the README), to
    /// measure the cost of evaluating them.
    #[arg(long, conflicts_with = "without_groups")]
    pub with_alarms: bool,
    /// Pull collection at scale instead: serve --agents pull agents from a `dragonflow loadgen
    /// --mode pull` process, poll them with a pull-only job for --duration, and report whether
    /// every agent was polled at its slot each --pull-interval, with CPU and memory.
    #[arg(long, conflicts_with_all = ["file", "churn", "minutes", "with_alarms", "without_groups"])]
    pub pull: bool,
    /// With --pull: how often each agent is polled.
    #[arg(long, default_value = "10s", value_parser = super::duration, requires = "pull")]
    pub pull_interval: Duration,
    /// With --pull: how long to poll (the first --pull-interval is the warm-up).
    #[arg(long, default_value = "60s", value_parser = super::duration, requires = "pull")]
    pub duration: Duration,
    /// With --pull: the measurements asked of every agent, one request each.
    #[arg(long, value_delimiter = ',', default_value = "cpu,cpufreq,mem,disk,diskio,net", requires = "pull")]
    pub measurements: Vec<String>,
}

/// The rules `--with-alarms` adds: one per VM on a field, one per MCIS on a group metric.
const BENCH_ALARMS: &str = r#"
[[alarm]]
name = "cpu_busy"
measurement = "cpu"
field = "usage_idle"
aggregate = "mean"
target = "vm"
comparison = "<"
warn = 40
crit = 20
warn_windows = 2
warn_reset = 50
crit_reset = 25

[[alarm]]
name = "mcis_cpu"
level = "mcis"
metric = "cpu_util_mean"
comparison = ">="
warn = 60
crit = 80
"#;

/// Event time of the first generated tick (the loadgen default for files), ns.
const START_NS: i64 = 1_700_000_000_000_000_000;
/// Collection interval of the generated agents.
const INTERVAL: Duration = Duration::from_secs(2);
/// How often the memory report samples the resident memory and the watermark.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The state bound the memory report runs with.
const SERIES_TTL: &str = "10m";

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("dragonflow bench: this is a debug build; build with --release for meaningful figures");
    }
    if args.pull {
        return super::bench_pull::run(&args);
    }
    if args.churn.is_some() || args.minutes.is_some() {
        return churn_report(&args);
    }
    let dir = tempfile::tempdir()?;
    let input = match &args.file {
        Some(f) => f.clone(),
        None => {
            let path = dir.path().join(format!("bench.{}", extension(args.format)));
            generate_input(&args, &path, 2 * args.ticks, 0.0)?;
            path
        }
    };
    let mut results = Vec::new();
    for run in 0..args.runs.max(1) {
        let lake = dir.path().join(format!("lake-{run}"));
        let mut text = spec_text(&input, args.format, &lake, None)?;
        if args.with_alarms {
            text.push_str(BENCH_ALARMS);
        }
        let mut spec = JobSpec::parse(&text)?;
        spec.groups.enabled = !args.without_groups;
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
        println!("peak memory: {:.1} MiB (resident, whole process)", mib(peak));
    }
    Ok(())
}

fn extension(format: WireFormat) -> &'static str {
    match format {
        WireFormat::Json => "jsonl",
        WireFormat::Influx => "lp",
    }
}

/// Generates `seconds` of event time from `args.agents` agents into `path` (seed 1, 2 s ticks).
fn generate_input(args: &BenchArgs, path: &Path, seconds: u64, churn: f64) -> anyhow::Result<loadgen::Stats> {
    let gen = LoadgenArgs {
        agents: args.agents,
        interval: INTERVAL,
        duration: Duration::from_secs(seconds),
        brokers: None,
        topic: String::new(),
        partitions: None,
        out: Some(path.to_path_buf()),
        format: args.format,
        seed: 1,
        skew: Duration::ZERO,
        reorder: 0.0,
        churn,
        start: Some(START_NS / 1_000_000_000),
        fast: true,
        report: None,
        first_vm: 0,
        pull: None,
    };
    let t = Instant::now();
    let stats = generate(&gen, &AtomicBool::new(false), &mut |_| {})?;
    eprintln!(
        "generated {} messages ({:.1} MB) in {:.2} s",
        stats.messages,
        stats.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(stats)
}

/// The bench job as TOML: the file source, default windows, a Parquet lake, and a `[limits]`
/// table when `series_ttl` is given.
fn spec_text(input: &Path, format: WireFormat, lake: &Path, series_ttl: Option<&str>) -> anyhow::Result<String> {
    // A JSON string is a valid TOML basic string: it escapes quotes, backslashes and controls.
    let quote = |p: &Path| -> anyhow::Result<String> {
        let text = p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))?;
        Ok(serde_json::to_string(text)?)
    };
    let format = match format {
        WireFormat::Json => "json",
        WireFormat::Influx => "influx",
    };
    let mut text =
        format!("name = \"bench\"\n\n[source]\nkind = \"file\"\npath = {}\nformat = \"{format}\"\n\n", quote(input)?);
    if let Some(ttl) = series_ttl {
        text.push_str(&format!("[limits]\nseries_ttl = \"{ttl}\"\n\n"));
    }
    text.push_str(&format!("[[sink]]\nkind = \"parquet\"\npath = {}\nflush_interval = \"10s\"\n", quote(lake)?));
    Ok(text)
}

/// One look at the process while the job runs.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss: u64,
    /// The job's watermark (minimum over workers), ns.
    watermark: Option<i64>,
    series: u64,
}

/// Resident memory of this process now (VmRSS), in bytes, where /proc tells.
fn current_rss() -> Option<u64> {
    super::process_memory("self", "VmRSS:")
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The first sample whose watermark reached `mark`.
fn at_watermark(samples: &[Sample], mark: i64) -> Option<&Sample> {
    samples.iter().find(|s| s.watermark.is_some_and(|w| w >= mark))
}

/// `dragonflow bench --churn F --minutes M`: memory while agents come and go.
fn churn_report(args: &BenchArgs) -> anyhow::Result<()> {
    let churn = args.churn.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&churn) {
        bail!("--churn must be between 0 and 1");
    }
    let minutes = args.minutes.unwrap_or(10);
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    if current_rss().is_none() {
        bail!("the memory report reads /proc/self/status, which this system does not have");
    }
    let dir = tempfile::tempdir()?;
    let input = dir.path().join(format!("churn.{}.gz", extension(args.format)));
    let span_ns = minutes as i64 * 60_000_000_000;
    let generated = generate_input(args, &input, minutes * 60, churn)?;
    // One replacement round per minute mark after the first tick (by construction of the fleet).
    let agents_ever = args.agents + (churn * args.agents as f64).round() as usize * (minutes as usize - 1);

    let mut text = spec_text(&input, args.format, &dir.path().join("lake"), Some(SERIES_TTL))?;
    if args.with_alarms {
        text.push_str(BENCH_ALARMS);
    }
    let mut spec = JobSpec::parse(&text)?;
    spec.groups.enabled = !args.without_groups;
    let metrics = Arc::new(JobMetrics::new(args.workers));
    let options = RunOptions { workers: args.workers, ..Default::default() };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = current_rss() {
                    samples.push(Sample { rss, watermark: metrics.watermark(), series: metrics.snapshot().series });
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        })
    };
    let report = run_job(&spec, &options, Arc::new(JobControl::new()), metrics.clone());
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
    let report = report?;

    println!(
        "memory under churn: {} agents, churn {churn:.2}/min, {minutes} min of event time ({} agents ever), \
         series_ttl {SERIES_TTL}, {} workers",
        args.agents, agents_ever, args.workers
    );
    println!(
        "job: {} messages of {} generated, {} values, {} rejects, {} rows in {:.3} s ({} memory samples)",
        report.messages,
        generated.messages,
        report.values,
        report.rejects,
        report.rows,
        report.elapsed.as_secs_f64(),
        samples.len()
    );
    // Early: 2 minutes in, or a fifth of the span when that is shorter.
    let early_ns = (2 * 60_000_000_000).min(span_ns / 5);
    let early = at_watermark(&samples, START_NS + early_ns);
    let half = at_watermark(&samples, START_NS + span_ns / 2);
    let end = samples.iter().rev().find(|s| s.watermark.is_some());
    let line = |label: &str, s: Option<&Sample>| match s {
        Some(s) => println!("  rss {label:<26} {:>8.1} MiB  ({} series live)", mib(s.rss), s.series),
        None => println!("  rss {label:<26}      n/a  (the run was over before the watermark got there)"),
    };
    line(&format!("at watermark start+{}s:", early_ns / 1_000_000_000), early);
    line(&format!("at watermark start+{}s:", span_ns / 2 / 1_000_000_000), half);
    line("at the end:", end);
    let ratio = |a: Option<&Sample>, b: Option<&Sample>| match (a, b) {
        (Some(a), Some(b)) if b.rss > 0 => format!("{:.2}", a.rss as f64 / b.rss as f64),
        _ => "n/a".into(),
    };
    println!("  end / early: {}   end / half: {}", ratio(end, early), ratio(end, half));
    if let Some(peak) = super::peak_rss() {
        println!("  peak memory: {:.1} MiB (resident, whole process)", mib(peak));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_text_parses_with_limits_and_without() {
        let dir = Path::new("/tmp/a \"quoted\" dir");
        let plain = spec_text(&dir.join("in.jsonl"), WireFormat::Influx, &dir.join("lake"), None).unwrap();
        let spec = JobSpec::parse(&plain).unwrap();
        assert_eq!(spec.source.format(), operators::decode::Format::Influx);
        assert!(!plain.contains("[limits]"));
        let churn = spec_text(&dir.join("in.jsonl"), WireFormat::Json, &dir.join("lake"), Some("10m")).unwrap();
        assert!(churn.contains("[limits]\nseries_ttl = \"10m\"\n"), "{churn}");
        let spec = JobSpec::parse(&churn).unwrap();
        assert_eq!(spec.limits.series_ttl, Duration::from_secs(600));
    }

    #[test]
    fn samples_are_found_by_watermark() {
        let s = |rss, watermark| Sample { rss, watermark, series: 0 };
        let samples = [s(1, None), s(2, Some(10)), s(3, Some(20)), s(4, Some(30))];
        assert_eq!(at_watermark(&samples, 15).map(|s| s.rss), Some(3));
        assert_eq!(at_watermark(&samples, 20).map(|s| s.rss), Some(3));
        assert!(at_watermark(&samples, 31).is_none());
    }
}

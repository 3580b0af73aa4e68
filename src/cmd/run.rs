//! `dragonflow run JOB.toml`

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions};

use super::{print_report, StatusPrinter};

#[derive(Args)]
pub struct RunArgs {
    /// The job spec (TOML, or JSON).
    pub spec: PathBuf,
    /// Timely worker threads in this process.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: usize,
    /// This process's index in a multi-process timely cluster (with --hosts).
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// Every process's host:port, comma separated, for a multi-process cluster.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Seconds between status lines on stderr (0 = none).
    #[arg(long, default_value_t = 5)]
    pub status_every: u64,
    /// Status lines as text for people, or one JSON object per line for log collectors.
    #[arg(long, value_enum, default_value = "text")]
    pub status_format: StatusFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    let options = RunOptions { workers: args.workers.max(1), process: args.process, hosts: args.hosts, alarms: None };
    let control = Arc::new(JobControl::new());
    let metrics = Arc::new(JobMetrics::new(options.workers));
    install_signal_handler(control.clone())?;
    let _status = (args.status_every > 0).then(|| {
        let m = metrics.clone();
        let format = args.status_format;
        StatusPrinter::start(Duration::from_secs(args.status_every), move || match format {
            StatusFormat::Text => m.status_line(),
            StatusFormat::Json => {
                m.record(std::time::Instant::now());
                serde_json::to_string(&m.snapshot()).unwrap_or_default()
            }
        })
    });
    let report = run_job(&spec, &options, control, metrics.clone()).context("job failed")?;
    drop(_status);
    print_report(&report, &metrics);
    Ok(())
}

/// First SIGINT/SIGTERM: stop reading, close and write what is open, commit, exit 0.
/// Second: exit at once (files are only ever renamed into place, so the lake stays whole).
pub fn install_signal_handler(control: Arc<JobControl>) -> anyhow::Result<()> {
    let count = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("dragonflow: stopping: closing windows and flushing sinks (signal again to exit at once)");
            control.stop();
        } else {
            eprintln!("dragonflow: exiting now");
            std::process::exit(130);
        }
    })
    .context("installing the signal handler")
}

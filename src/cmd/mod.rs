//! The subcommands: local ones (`run`, `sql --lake`, `loadgen`, `demo`, `bench`, `alarms test|list`),
//! the job server (`serve`) and its client (`client`: `submit`, `jobs`, `agents`, …).

pub mod alarms;
pub mod bench;
pub mod bench_pull;
pub mod client;
pub mod demo;
pub mod loadgen;
pub mod ondemand;
pub mod run;
pub mod serve;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use pipelines::JobMetrics;

/// Parses "10s", "500ms", "2m".
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration like \"10s\" or \"2m\": {e}"))
}

/// Prints `line()` to stderr every `every` until the returned guard is dropped.
pub struct StatusPrinter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl StatusPrinter {
    pub fn start(every: Duration, mut line: impl FnMut() -> String + Send + 'static) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let step = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(step);
                waited += step;
                if waited >= every {
                    waited = Duration::ZERO;
                    eprintln!("{}", line());
                }
            }
        });
        StatusPrinter { stop, handle: Some(handle) }
    }
}

impl Drop for StatusPrinter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The job summary printed at the end of `run`, `demo` and `bench`.
pub fn print_report(report: &pipelines::JobReport, metrics: &JobMetrics) {
    println!("records in:  {} messages ({} values)", report.messages, report.values);
    println!("rejects:     {}", report.rejects);
    println!("late:        {}", report.late);
    if report.replayed > 0 {
        println!("replayed:    {} values read again after a restart, already written", report.replayed);
    }
    println!("windows out: {} ({} aggregate rows, {} files)", report.windows, report.rows, report.files);
    let alarms = metrics.alarm_events.load(std::sync::atomic::Ordering::Relaxed);
    if alarms > 0 {
        let delivered = metrics.alarm_deliveries.load(std::sync::atomic::Ordering::Relaxed);
        let failed = metrics.alarm_delivery_failures.load(std::sync::atomic::Ordering::Relaxed);
        println!("alarms:      {alarms} events ({delivered} delivered, {failed} not delivered)");
    }
    if let Some(c) = &report.checkpoint {
        println!(
            "checkpoint:  epoch {}, windows before {} written, {} partitions committed",
            c.epoch,
            pipelines::metrics::format_ts(c.frontier),
            report.committed_partitions
        );
    }
    println!("elapsed:     {:.3} s", report.elapsed.as_secs_f64());
    println!("throughput:  {:.0} messages/s", report.messages_per_sec());
    if let Ok(Some(e)) = metrics.last_error.lock().map(|e| e.clone()) {
        println!("last error:  {e}");
    }
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc tells.
pub fn peak_rss() -> Option<u64> {
    process_memory("self", "VmHWM:")
}

/// A memory line of `/proc/{pid}/status` (`pid` may be `self`), e.g. `VmRSS:` now or `VmHWM:` at
/// the peak, in bytes.
pub fn process_memory(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

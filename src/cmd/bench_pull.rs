//! `dragonflow bench --pull`: can one process poll N pull agents every interval?
//!
//! The agents are served by a `dragonflow loadgen --mode pull` child process (another process,
//! as remote agents would be, though on the same cores). A pull-only job (`[source] kind =
//! "pull"`) polls them into windows and a Parquet lake for `--duration`. After the first interval
//! (every agent's first slot), the job must answer each agent's slot once per interval: the report
//! compares the polls made with those due, counts skipped rounds, gives the delay from a slot to
//! the end of its round, and the CPU and memory of the job's process and of the agents' process.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pipelines::source::pull::PullStats;
use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions};

use super::bench::BenchArgs;
use super::process_memory;

/// How often the progress line is printed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The agents' process, killed when dropped.
struct Agents(Child);

impl Drop for Agents {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of a process, from `/proc/{pid}/stat`, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name, in clock
    // ticks of USER_HZ, which Linux fixes at 100 for user space.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.0} MiB", super::bench::mib(b)))
}

fn quantile(stats: &PullStats, q: f64) -> String {
    match stats.round_delay_quantile_ms(q) {
        None => "-".into(),
        Some(u64::MAX) => "> 30 s".into(),
        Some(ms) => format!("≤ {ms} ms"),
    }
}

/// Starts the agents' process and waits until it serves and its registry file is written.
fn start_agents(args: &BenchArgs, registry: &Path) -> anyhow::Result<(Agents, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe().context("finding the dragonflow executable")?;
    let registry_arg = registry.to_str().context("the temporary directory is not UTF-8")?;
    let child = Command::new(exe)
        .args(["loadgen", "--mode", "pull", "--agents", &args.agents.to_string(), "--duration", "0s"])
        .args(["--interval", &humantime::format_duration(args.pull_interval).to_string()])
        .args(["--listen", &listen, "--registry-out", registry_arg, "--status-every", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `dragonflow loadgen --mode pull`")?;
    let mut agents = Agents(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !registry.exists() || std::net::TcpStream::connect(&listen).is_err() {
        if let Some(status) = agents.0.try_wait()? {
            bail!("the agents' process ended: {status}");
        }
        if Instant::now() > deadline {
            bail!("the agents did not start serving within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = agents.0.id().to_string();
    Ok((agents, pid))
}

fn spec_text(args: &BenchArgs, registry: &Path, lake: &Path) -> anyhow::Result<String> {
    let quote = |p: &Path| -> anyhow::Result<String> {
        Ok(serde_json::to_string(p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))?)?)
    };
    let measurements: Vec<String> = args.measurements.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    let interval = humantime::format_duration(args.pull_interval);
    Ok(format!(
        "name = \"bench-pull\"\n\n[source]\nkind = \"pull\"\n\n[window]\nsize = \"{interval}\"\nlateness = \"5s\"\n\n\
         [registry]\nfile = {}\n\n[pull]\nmeasurements = [{}]\ninterval = \"{interval}\"\ntimeout = \"5s\"\n\n\
         [[sink]]\nkind = \"parquet\"\npath = {}\nflush_interval = \"10s\"\n",
        quote(registry)?,
        measurements.join(", "),
        quote(lake)?
    ))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.measurements.is_empty() {
        bail!("--pull needs at least one agent and one measurement");
    }
    let interval = args.pull_interval;
    if interval.is_zero() || args.duration <= interval {
        bail!("--duration must be longer than --pull-interval (the first interval is the warm-up)");
    }
    let dir = tempfile::tempdir()?;
    let registry = dir.path().join("agents.json");
    let lake = dir.path().join("lake");
    let started = Instant::now();
    let (agents, agents_pid) = start_agents(args, &registry)?;
    eprintln!(
        "{} pull agents serving after {:.1} s; polling {} measurement(s) each every {} for {} ({} workers)",
        args.agents,
        started.elapsed().as_secs_f64(),
        args.measurements.len(),
        humantime::format_duration(interval),
        humantime::format_duration(args.duration),
        args.workers
    );
    let spec = JobSpec::parse(&spec_text(args, &registry, &lake)?)?;
    let control = Arc::new(JobControl::new());
    let metrics = Arc::new(JobMetrics::new(args.workers));
    let job = {
        let (control, metrics) = (control.clone(), metrics.clone());
        let options = RunOptions { workers: args.workers, ..Default::default() };
        std::thread::spawn(move || run_job(&spec, &options, control, metrics))
    };

    // Warm-up: one interval, in which every agent gets its first slot.
    let begin = Instant::now();
    let sample = || (Instant::now(), metrics.pull().unwrap_or_default(), cpu_seconds("self"), cpu_seconds(&agents_pid));
    let mut next_status = begin + STATUS_EVERY;
    let mut warm = None;
    let mut last = sample();
    while begin.elapsed() < args.duration {
        std::thread::sleep(Duration::from_millis(100));
        if job.is_finished() {
            break;
        }
        if warm.is_none() && begin.elapsed() >= interval {
            warm = Some(sample());
        }
        if Instant::now() >= next_status {
            next_status += STATUS_EVERY;
            let now = sample();
            let secs = now.0.duration_since(last.0).as_secs_f64();
            let (p, q) = (&now.1, &last.1);
            let cores = match (now.2, last.2) {
                (Some(a), Some(b)) => format!("{:.2}", (a - b) / secs),
                _ => "?".into(),
            };
            let status = metrics.snapshot();
            eprintln!(
                "{:>4.0} s | {} agents, {} unhealthy | polls {:.0}/s ok, {} failed, {} skipped | round delay p50 {} p99 {} | \
                 job {cores} cores, {} | windows {} | watermark lag {}",
                begin.elapsed().as_secs_f64(),
                p.agents,
                p.unhealthy_agents,
                (p.polls_ok - q.polls_ok) as f64 / secs,
                p.polls_failed,
                p.skipped,
                quantile(p, 0.5),
                quantile(p, 0.99),
                mib(process_memory("self", "VmRSS:")),
                status.windows,
                status.watermark_lag_s.map_or("-".into(), |l| format!("{l:.1} s")),
            );
            last = now;
        }
    }
    let end = sample();
    let status = metrics.snapshot();
    control.drain();
    let report = job.join().map_err(|_| anyhow::anyhow!("the job panicked"))??;
    drop(agents);

    let Some(warm) = warm else { bail!("the job ended during the warm-up: {:?}", metrics.last_error.lock().ok()) };
    let secs = end.0.duration_since(warm.0).as_secs_f64();
    let (p, w) = (&end.1, &warm.1);
    let due = args.agents as f64 * args.measurements.len() as f64 * secs / interval.as_secs_f64();
    let done = (p.polls_ok + p.polls_failed - w.polls_ok - w.polls_failed) as f64;
    let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2} cores", (a - b) / secs),
        _ => "?".into(),
    };
    let mut steady = PullStats { round_delay: vec![0; p.round_delay.len()], ..PullStats::default() };
    for (i, n) in p.round_delay.iter().enumerate() {
        steady.round_delay[i] = n - w.round_delay.get(i).copied().unwrap_or(0);
    }
    println!(
        "pull: {} agents × {} measurements every {} = {:.0} requests/s due; {} workers; {:.0} s measured after a {} warm-up",
        args.agents,
        args.measurements.len(),
        humantime::format_duration(interval),
        args.agents as f64 * args.measurements.len() as f64 / interval.as_secs_f64(),
        args.workers,
        secs,
        humantime::format_duration(interval)
    );
    println!(
        "polled:       {:.0} requests/s ({:.1} % of those due), {} failed, {} rounds skipped (agent still busy)",
        done / secs,
        100.0 * done / due,
        p.polls_failed - w.polls_failed,
        p.skipped - w.skipped
    );
    println!(
        "round delay:  from an agent's slot to the end of its round: p50 {}, p99 {}, max {}",
        quantile(&steady, 0.5),
        quantile(&steady, 0.99),
        quantile(&steady, 1.0)
    );
    println!(
        "job process:  {} (user + system), resident {} now, peak {}",
        cores(end.2, warm.2),
        mib(process_memory("self", "VmRSS:")),
        mib(process_memory("self", "VmHWM:"))
    );
    println!("agents:       {} (the loadgen process serving them)", cores(end.3, warm.3));
    println!(
        "job:          {} records in, {} values, {} windows, {} rejects, {} late; watermark lag at the end {}",
        report.messages,
        report.values,
        report.windows,
        report.rejects,
        report.late,
        status.watermark_lag_s.map_or("-".into(), |l| format!("{l:.1} s"))
    );
    let kept_up = p.skipped == w.skipped
        && done >= 0.99 * due
        && steady.round_delay_quantile_ms(0.99) < Some(interval.as_millis() as u64);
    println!(
        "verdict:      {}",
        if kept_up {
            "kept up: every agent polled at its slot each interval, 99 % of rounds done well within it"
        } else {
            "fell behind: rounds were skipped, or fewer polls than due, or rounds took longer than the interval"
        }
    );
    Ok(())
}

//! `dragonflow loadgen`: N virtual agents. Push mode (the default): into Kafka (real time) or a
//! file (synthetic time). Pull mode: served over HTTP for a pulling pipeline, in real time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use loadgen::{
    listener_status_line, run_kafka, run_listener, status_line, write_file, Behaviour, FleetConfig, KafkaTarget,
    ListenerConfig, ListenerStats, Stats,
};

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

/// What a load-generator run needs. The command line fills it from [`LoadgenFlags`] (the help
/// of each flag is there); `demo` and `bench` build it directly.
#[derive(Clone)]
pub struct LoadgenArgs {
    pub agents: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub brokers: Option<String>,
    pub topic: String,
    pub partitions: Option<i32>,
    pub out: Option<PathBuf>,
    pub format: WireFormat,
    pub seed: u64,
    pub skew: Duration,
    pub reorder: f64,
    pub churn: f64,
    pub start: Option<i64>,
    pub fast: bool,
    pub report: Option<PathBuf>,
    pub first_vm: usize,
    /// The pull-mode flags of the command line (`None`: push, as `demo` and `bench` run it).
    pub pull: Option<PullFlags>,
}

/// Push: publish to Kafka or write a file. Pull: serve the agents over HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    #[default]
    Push,
    Pull,
}

/// The flags of `dragonflow loadgen`.
#[derive(Args, Clone)]
struct LoadgenFlags {
    /// Number of virtual agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Collection interval of every agent [default: 2s; 10s in pull mode].
    #[arg(long, value_parser = duration)]
    interval: Option<Duration>,
    /// How long to run (Kafka; pull mode, where 0s runs until Ctrl-C) or how much event time to generate (file).
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Kafka brokers (host:port,…); with --topic.
    #[arg(long)]
    brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, default_value = "metrics")]
    topic: String,
    /// Create the topic with this many partitions when it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    /// Write to this file instead of Kafka (JSON lines or line protocol; .gz compresses).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Wire format (pull mode serves json only).
    #[arg(long, value_enum, default_value = "json")]
    format: WireFormat,
    /// Seed of the generator: the same seed gives the same metrics (and the same misbehaving agents in pull mode).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest clock offset of an agent, e.g. "2s".
    #[arg(long, default_value = "0s", value_parser = duration)]
    skew: Duration,
    /// Share of messages delayed by one interval (reordering), 0.0–1.0 (push mode).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Share of agents replaced by new VMs every minute of event time, 0.0–1.0 (agents come and go).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    churn: f64,
    /// Event time of the first tick, unix seconds (default: now for Kafka, 1700000000 for files).
    #[arg(long)]
    start: Option<i64>,
    /// Publish to Kafka as fast as possible with a synthetic clock instead of in real time.
    #[arg(long)]
    fast: bool,
    /// Write what was sent (push) or served (pull) as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Number the agents from vm-N: two generators with the same --seed and --agents, one with
    /// --first-vm N, make one fleet in the same namespaces and MCIS (say, half pushing to Kafka and
    /// half pulled). With --churn, new VMs continue the numbers past N + agents.
    #[arg(long, default_value_t = 0, value_name = "N")]
    first_vm: usize,
    #[command(flatten)]
    pull: PullFlags,
}

/// The flags of pull mode.
#[derive(Args, Clone, Debug)]
pub struct PullFlags {
    /// push: publish to Kafka (--brokers) or a file (--out). pull: serve the agents over HTTP (--listen):
    /// GET /agents/{vmId}/metric/{measurement} (Telegraf JSON) and GET /agents/{vmId}/healthcheck (204).
    #[arg(long, value_enum, default_value = "push")]
    pub mode: Mode,
    /// Pull mode: the address to serve on [default: 127.0.0.1:0, any free port, printed at start].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Pull mode: share of agents (chosen from --seed) that answer only after --slow-delay.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub slow_share: f64,
    /// Pull mode: how long a slow agent takes to answer.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub slow_delay: Duration,
    /// Pull mode: share of agents (chosen from --seed) that answer 500.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub fail_share: f64,
    /// Pull mode: share of agents (chosen from --seed) that never answer: a request is held without a
    /// response until the client gives up, or --unreachable-hold passes and the connection is closed.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub unreachable_share: f64,
    /// Pull mode: how long an unreachable agent holds a request before it closes the connection without
    /// an answer (0s: at once).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub unreachable_hold: Duration,
    /// Pull mode: flapping agents (--flap-share) switch between healthy and failing this often.
    #[arg(long, value_parser = duration)]
    pub flap_every: Option<Duration>,
    /// Pull mode: share of agents (chosen from --seed, none of the slow, failing or unreachable ones) that flap.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub flap_share: f64,
    /// Pull mode: write a registry file (JSON array) listing every agent with mechanism "pull" and its
    /// pull_url; written again when churn changes the agents, always replaced atomically.
    #[arg(long, value_name = "FILE")]
    pub registry_out: Option<PathBuf>,
    /// Pull mode: write every value served as a JSON line {"vm_id","key","measurement","timestamp","fields"}.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Pull mode: how often to print a status line (requests per second, by status).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub status_every: Duration,
}

impl LoadgenFlags {
    fn into_args(self) -> LoadgenArgs {
        let default_interval = match self.pull.mode {
            Mode::Push => Duration::from_secs(2),
            Mode::Pull => Duration::from_secs(10),
        };
        LoadgenArgs {
            agents: self.agents,
            interval: self.interval.unwrap_or(default_interval),
            duration: self.duration,
            brokers: self.brokers,
            topic: self.topic,
            partitions: self.partitions,
            out: self.out,
            format: self.format,
            seed: self.seed,
            skew: self.skew,
            reorder: self.reorder,
            churn: self.churn,
            start: self.start,
            fast: self.fast,
            report: self.report,
            first_vm: self.first_vm,
            pull: Some(self.pull),
        }
    }
}

impl clap::FromArgMatches for LoadgenArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(LoadgenFlags::from_arg_matches(matches)?.into_args())
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for LoadgenArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        LoadgenFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        LoadgenFlags::augment_args_for_update(cmd)
    }
}

impl PullFlags {
    /// The pull-mode flags set away from their defaults.
    fn given(&self) -> Vec<&'static str> {
        let set = [
            ("--listen", self.listen.is_some()),
            ("--slow-share", self.slow_share != 0.0),
            ("--fail-share", self.fail_share != 0.0),
            ("--unreachable-share", self.unreachable_share != 0.0),
            ("--flap-every", self.flap_every.is_some()),
            ("--flap-share", self.flap_share != 0.0),
            ("--registry-out", self.registry_out.is_some()),
            ("--log", self.log.is_some()),
        ];
        set.into_iter().filter(|s| s.1).map(|s| s.0).collect()
    }
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.pull.clone() {
        Some(pull) if pull.mode == Mode::Pull => run_pull(&args, &pull),
        Some(pull) if !pull.given().is_empty() => bail!("{} only with --mode pull", flag_list(&pull.given())),
        _ => run_push(args),
    }
}

fn run_push(args: LoadgenArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.reorder) {
        bail!("--reorder must be between 0 and 1");
    }
    if !(0.0..=1.0).contains(&args.churn) {
        bail!("--churn must be between 0 and 1");
    }
    if args.interval.is_zero() {
        bail!("--interval must be positive");
    }
    let stop = stop_on_ctrl_c();
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

/// `--a applies` / `--a, --b apply`.
fn flag_list(flags: &[&str]) -> String {
    format!("{} {}", flags.join(", "), if flags.len() == 1 { "applies" } else { "apply" })
}

/// A flag that Ctrl-C (or SIGTERM) sets.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    stop
}

fn fleet_config(args: &LoadgenArgs) -> FleetConfig {
    FleetConfig {
        agents: args.agents,
        seed: args.seed,
        format: args.format.into(),
        skew_ns: args.skew.as_nanos() as i64,
        reorder: args.reorder,
        churn: args.churn,
        first_vm: args.first_vm,
    }
}

/// Pull mode: serves the agents until --duration has passed or Ctrl-C.
fn run_pull(args: &LoadgenArgs, pull: &PullFlags) -> anyhow::Result<()> {
    let push_only = [
        ("--brokers", args.brokers.is_some()),
        ("--out", args.out.is_some()),
        ("--partitions", args.partitions.is_some()),
        ("--start", args.start.is_some()),
        ("--fast", args.fast),
        ("--reorder", args.reorder != 0.0),
        ("--format influx", matches!(args.format, WireFormat::Influx)),
    ];
    let given: Vec<&str> = push_only.into_iter().filter(|f| f.1).map(|f| f.0).collect();
    if !given.is_empty() {
        bail!("{} only with --mode push: pull mode serves Telegraf JSON over HTTP (--listen)", flag_list(&given));
    }
    if !(0.0..=1.0).contains(&args.churn) {
        bail!("--churn must be between 0 and 1");
    }
    let cfg = ListenerConfig {
        listen: pull.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        interval: args.interval,
        slow_share: pull.slow_share,
        slow_delay: pull.slow_delay,
        fail_share: pull.fail_share,
        unreachable_share: pull.unreachable_share,
        unreachable_hold: pull.unreachable_hold,
        flap_every: pull.flap_every,
        flap_share: pull.flap_share,
        registry_out: pull.registry_out.clone(),
        log: pull.log.clone(),
    };
    let stop = stop_on_ctrl_c();
    let duration = (!args.duration.is_zero()).then_some(args.duration);
    let ready = |listener: &loadgen::AgentListener| {
        let agents = listener.agents();
        let count = |b: Behaviour| agents.iter().filter(|a| a.configured == b).count();
        let flapping = agents.iter().filter(|a| a.flaps).count();
        eprintln!(
            "serving {} agents at {}/agents/{{vmId}}/metric/{{measurement}}, ticking every {} \
             ({} slow, {} failing, {} unreachable, {flapping} flapping){}",
            agents.len(),
            listener.base_url(),
            humantime::format_duration(args.interval),
            count(Behaviour::Slow),
            count(Behaviour::Fail),
            count(Behaviour::Down),
            pull.registry_out.as_ref().map(|p| format!("; registry in {}", p.display())).unwrap_or_default(),
        );
    };
    let mut last: Option<(ListenerStats, Instant)> = None;
    let progress = |s: &ListenerStats| {
        eprintln!("{}", listener_status_line(s, last.as_ref().map(|(prev, at)| (prev, at.elapsed()))));
        last = Some((s.clone(), Instant::now()));
    };
    let stats = run_listener(fleet_config(args), cfg, duration, &stop, pull.status_every, ready, progress)?;
    eprintln!("{}", listener_status_line(&stats, None));
    println!("{}", serde_json::to_string_pretty(&stats.to_json())?);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&stats.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the generator as the arguments say (push mode), calling `progress` about once a second.
pub fn generate(args: &LoadgenArgs, stop: &AtomicBool, progress: &mut dyn FnMut(&Stats)) -> anyhow::Result<Stats> {
    let cfg = fleet_config(args);
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

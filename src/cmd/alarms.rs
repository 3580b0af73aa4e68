//! `dragonflow alarms test JOB.toml RULE`, `dragonflow alarms list JOB.toml`

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipelines::JobSpec;

#[derive(Args)]
pub struct AlarmsArgs {
    #[command(subcommand)]
    pub command: AlarmsCommand,
}

#[derive(Subcommand)]
pub enum AlarmsCommand {
    /// Send a sample event of RULE through its handlers, to check their wiring; exits non-zero if one fails.
    Test(TestArgs),
    /// List a job's rules and handlers (secrets left out).
    List(ListArgs),
}

#[derive(Args)]
pub struct TestArgs {
    /// The job spec (TOML, or JSON).
    pub spec: PathBuf,
    /// The rule's `name`.
    pub rule: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// The job spec (TOML, or JSON).
    pub spec: PathBuf,
}

pub fn run(args: AlarmsArgs) -> anyhow::Result<()> {
    match args.command {
        AlarmsCommand::Test(a) => test(a),
        AlarmsCommand::List(a) => list(a),
    }
}

fn test(args: TestArgs) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    let rules = pipelines::alarms::rules(&spec);
    let Some(rule) = rules.iter().find(|r| r.name == args.rule) else {
        let names: Vec<_> = rules.iter().map(|r| r.name.as_str()).collect();
        bail!("no [[alarm]] is named {:?}; the rules are: {}", args.rule, names.join(", "));
    };
    if rule.handlers.is_empty() {
        bail!("rule {:?} has no handlers: its events are only logged", rule.name);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("clock")?.as_nanos() as i64;
    let event = pipelines::alarms::sample_event(rule, now);
    let handlers: Vec<_> = spec.handlers.iter().filter(|h| rule.handlers.contains(&h.name)).cloned().collect();
    println!(
        "sending a sample {} event of {:?} to {} handler(s): {}",
        event.level,
        rule.name,
        handlers.len(),
        event.message
    );
    let mut failed = 0;
    for (name, outcome) in sinks::notify::deliver_blocking(&handlers, &event) {
        match outcome {
            Ok(()) => println!("  {name}: delivered"),
            Err(e) => {
                failed += 1;
                println!("  {name}: FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} handler(s) failed", handlers.len());
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    for a in &spec.alarms {
        let watched = match &a.watch {
            pipelines::spec::AlarmWatch::Field { measurement, field, aggregate } => {
                format!("{aggregate:?}({measurement}.{field})").to_lowercase()
            }
            pipelines::spec::AlarmWatch::Group { level, metric } => format!("{level} {metric}"),
        };
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "rule {:?}: {watched} {} warn {} crit {} on {:?}{}; handlers: {}",
            a.name,
            a.comparison,
            show(a.warn),
            show(a.crit),
            a.target,
            a.target_id.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
            if a.handlers.is_empty() { "none".to_string() } else { a.handlers.join(", ") }
        );
    }
    for h in &spec.handlers {
        // The Debug form of a handler hides its secrets (passwords, header values, URL paths).
        println!("handler {:?}: {:?}", h.name, h.kind);
    }
    Ok(())
}

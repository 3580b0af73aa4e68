//! `dragonflow`: one command line over the engine — run jobs, query the lake, generate load,
//! run the demo and the benchmark.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "dragonflow",
    version,
    about = "Event-time stream processing for multi-cloud infrastructure monitoring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job (TOML or JSON spec) to its end: end of file, `stop_at_end`, or Ctrl-C.
    Run(cmd::run::RunArgs),
    /// Run read-only SQL over a Parquet lake (aggregates, late, rejects, groups, rankings, agents, agent_health, agents_history, alarm_events, alarm_log).
    Sql(cmd::sql::SqlArgs),
    /// Check a job's alarm rules and handlers: send a sample event, list them.
    Alarms(cmd::alarms::AlarmsArgs),
    /// Generate metrics of N virtual agents into Kafka or a file.
    Loadgen(cmd::loadgen::LoadgenArgs),
    /// The whole pipeline in one process, nothing to install: in-process Kafka, load, windows, lake, SQL.
    Demo(cmd::demo::DemoArgs),
    /// Measure throughput and memory of decode → windows → Parquet on a generated file.
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Sql(a) => cmd::sql::run(a),
        Command::Alarms(a) => cmd::alarms::run(a),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dragonflow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

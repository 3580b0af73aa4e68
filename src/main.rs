//! `dragonflow`: one command line over the engine — run jobs, query the lake, generate load,
//! run the demo and the benchmark; serve jobs over a REST API, and be that server's client.

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
    /// Run read-only SQL over a Parquet lake, here (--lake) or on the job server (--server) (aggregates, late, rejects, groups, rankings, agents, agent_health, agents_history, alarm_events, alarm_log).
    Sql(cmd::sql::SqlArgs),
    /// Alarms: a local job spec's rules (test, list), or the job server's rules, handlers and events.
    Alarms(cmd::alarms::AlarmsArgs),
    /// Call a pull agent now ("what is this VM doing now?"): its values and each call's latency, written nowhere.
    Ondemand(cmd::ondemand::OndemandArgs),
    /// Generate metrics of N virtual agents into Kafka or a file, or serve them over HTTP (--mode pull).
    Loadgen(cmd::loadgen::LoadgenArgs),
    /// The whole pipeline in one process, nothing to install: in-process Kafka, load, windows, lake, SQL.
    Demo(cmd::demo::DemoArgs),
    /// Measure throughput and memory of decode → windows → Parquet on a generated file.
    Bench(cmd::bench::BenchArgs),
    /// Run the job server: pipeline jobs as a service, with a REST API (docs/server.md).
    Serve(cmd::serve::ServeArgs),
    /// Submit a job (TOML or JSON spec) to the job server; prints its id.
    Submit(cmd::client::jobs::SubmitArgs),
    /// List the job server's jobs.
    Jobs(cmd::client::jobs::JobsArgs),
    /// Show one job of the job server: state, times and status (with --json, its spec too).
    Job(cmd::client::jobs::JobArgs),
    /// Stop a job of the job server gracefully (close windows, flush, checkpoint, commit); waits until done.
    Stop(cmd::client::jobs::StopArgs),
    /// The job server's agent registry: list (with filters), get, put, delete.
    Agents(cmd::client::agents::AgentsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Sql(a) => cmd::sql::run(a),
        Command::Alarms(a) => cmd::alarms::run(a),
        Command::Loadgen(a) => cmd::loadgen::run(a),
        Command::Ondemand(a) => cmd::ondemand::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Submit(a) => cmd::client::jobs::submit(a),
        Command::Jobs(a) => cmd::client::jobs::jobs(a),
        Command::Job(a) => cmd::client::jobs::job(a),
        Command::Stop(a) => cmd::client::jobs::stop(a),
        Command::Agents(a) => cmd::client::agents::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dragonflow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

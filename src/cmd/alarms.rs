//! `dragonflow alarms test JOB.toml RULE`, `dragonflow alarms list JOB.toml` on a local job spec;
//! `dragonflow alarms rules|handlers|events` on the job server's rules, handlers and event log.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hyper::Method;
use pipelines::JobSpec;

use super::client::http::JSON;
use super::client::{items, print_json, print_list, print_record, url, ServerArgs, DEFAULT_TIMEOUT};

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
    /// The server's alarm rules: list (default), get NAME, put FILE.toml ([[alarm]] tables), delete NAME.
    Rules(ItemsArgs),
    /// The server's alarm handlers: list (default), get NAME, put FILE.toml ([[handler]] tables), delete NAME.
    Handlers(ItemsArgs),
    /// The server's alarm event log (`alarm_events`), newest first.
    Events(EventsArgs),
}

#[derive(Args)]
pub struct ItemsArgs {
    #[command(subcommand)]
    pub command: Option<ItemsCommand>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum ItemsCommand {
    /// List them (the default).
    List,
    /// Show one by name (handlers' secrets are never returned).
    Get {
        /// Its `name`.
        name: String,
    },
    /// Create or replace each table of a file: `[[alarm]]` for rules, `[[handler]]` for handlers (a
    /// whole job spec works); rules apply to running jobs without a restart.
    Put {
        /// TOML (or .json) with one or more tables, each with a `name`.
        file: PathBuf,
    },
    /// Remove one by name.
    Delete {
        /// Its `name`.
        name: String,
    },
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only events of this level: OK, WARNING, CRITICAL or NODATA.
    #[arg(long)]
    pub level: Option<String>,
    /// Only events at or after this time: RFC 3339, or a duration back from now ("1h").
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time: RFC 3339, or a duration back from now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only events of this target (an agent key, `ns/mcis`, …).
    #[arg(long)]
    pub target: Option<String>,
    /// At most this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What differs between rules and handlers on the server.
struct Kind {
    /// The route of the collection.
    route: &'static str,
    /// The table of a file they are read from.
    table: &'static str,
    /// The word in messages.
    noun: &'static str,
    /// The columns of the list.
    columns: &'static [&'static str],
}

const RULES: Kind = Kind {
    route: "/alarms/rules",
    table: "alarm",
    noun: "rule",
    columns: &[
        "name",
        "measurement",
        "field",
        "aggregate",
        "level",
        "metric",
        "target",
        "target_id",
        "comparison",
        "warn",
        "crit",
        "handlers",
    ],
};

const HANDLERS: Kind = Kind {
    route: "/alarms/handlers",
    table: "handler",
    noun: "handler",
    columns: &["name", "kind", "url", "channel", "host", "port", "from", "to", "tls", "timeout", "retries"],
};

const EVENT_COLUMNS: &[&str] =
    &["time", "rule", "target", "previous_level", "level", "value", "threshold", "delivered", "delivery_error"];

impl EventsArgs {
    /// `/alarms/events?…` with the filters given.
    fn path(&self) -> String {
        url::Query::new()
            .opt("level", self.level.as_deref())
            .opt("since", self.since.as_deref())
            .opt("until", self.until.as_deref())
            .opt("rule", self.rule.as_deref())
            .opt("target", self.target.as_deref())
            .opt("limit", self.limit)
            .on("/alarms/events")
    }
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
        AlarmsCommand::Rules(a) => server_items(&RULES, a),
        AlarmsCommand::Handlers(a) => server_items(&HANDLERS, a),
        AlarmsCommand::Events(a) => {
            let bytes = a.server.connect(DEFAULT_TIMEOUT)?.get(&a.path())?;
            print_list(&a.server, &bytes, EVENT_COLUMNS, "no events")
        }
    }
}

fn server_items(kind: &Kind, args: ItemsArgs) -> anyhow::Result<()> {
    let client = args.server.connect(DEFAULT_TIMEOUT)?;
    match args.command.unwrap_or(ItemsCommand::List) {
        ItemsCommand::List => {
            let bytes = client.get(kind.route)?;
            print_list(&args.server, &bytes, kind.columns, &format!("no {}s", kind.noun))
        }
        ItemsCommand::Get { name } => print_record(&args.server, &client.get(&url::path(kind.route, &name))?, &[]),
        ItemsCommand::Delete { name } => {
            let bytes = client.call(Method::DELETE, &url::path(kind.route, &name), None, JSON)?;
            if args.server.json {
                print_json(&bytes);
            } else {
                println!("{} {name:?} deleted", kind.noun);
            }
            Ok(())
        }
        ItemsCommand::Put { file } => {
            let found = items::read(&file, kind.table)?;
            let mut refused = 0;
            let mut answers = Vec::new();
            for item in &found {
                let path = url::path(kind.route, &item.name);
                let body = serde_json::to_vec(&item.body)?;
                // A refused item does not stop the others; an unreachable server does.
                let (status, bytes) = client.request(Method::PUT, &path, Some((body, JSON)), JSON)?;
                if !status.is_success() {
                    refused += 1;
                    let why = super::client::http::refusal(&Method::PUT, &path, status, &bytes);
                    eprintln!("{} {:?}: REFUSED: {why}", kind.noun, item.name);
                } else if args.server.json {
                    answers.push(if bytes.is_empty() {
                        "null".to_string()
                    } else {
                        String::from_utf8_lossy(&bytes).into_owned()
                    });
                } else {
                    let done = if status == hyper::StatusCode::CREATED { "created" } else { "replaced" };
                    println!("{} {:?}: {done}", kind.noun, item.name);
                }
            }
            if args.server.json {
                print_json(format!("[{}]", answers.join(",")).as_bytes());
            }
            if refused > 0 {
                bail!("{refused} of {} {}(s) refused", found.len(), kind.noun);
            }
            Ok(())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_path_holds_the_filters_given() {
        let a = EventsArgs {
            level: Some("CRITICAL".into()),
            since: Some("1h".into()),
            until: None,
            rule: Some("cpu high".into()),
            target: Some("ns1/m1/vm1/aws".into()),
            limit: Some(20),
            server: ServerArgs {
                server: "http://127.0.0.1:9090".into(),
                token: None,
                token_file: None,
                timeout: None,
                json: false,
            },
        };
        assert_eq!(
            a.path(),
            "/alarms/events?level=CRITICAL&since=1h&rule=cpu%20high&target=ns1%2Fm1%2Fvm1%2Faws&limit=20"
        );
        let none = EventsArgs { level: None, since: None, until: None, rule: None, target: None, limit: None, ..a };
        assert_eq!(none.path(), "/alarms/events");
    }
}

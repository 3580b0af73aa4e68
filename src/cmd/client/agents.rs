//! `dragonflow agents [--ns --mcis --csp --health --mechanism]`, `agents get|put|delete KEY`: the
//! server's agent registry. A key is `ns/mcis/vm/csp`, sent as one URL-encoded path segment.

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Map, Value};

use super::http::JSON;
use super::render::Json;
use super::{print_list, print_record, url, ServerArgs, DEFAULT_TIMEOUT};

/// The columns of `dragonflow agents`; `ns_id … csp_type` stand in for `key` when rows have none.
const AGENT_COLUMNS: &[&str] =
    &["key", "os_type", "mechanism", "public_ip", "state", "vcpu", "memory_gib", "health", "last_seen"];
const KEY_PARTS: &[&str] = &["ns_id", "mcis_id", "vm_id", "csp_type"];

#[derive(Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    pub command: Option<AgentsCommand>,
    #[command(flatten)]
    pub filter: AgentFilter,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Which agents `dragonflow agents` lists; every filter given must match.
#[derive(Args)]
pub struct AgentFilter {
    /// Only this namespace (`ns_id`).
    #[arg(long)]
    pub ns: Option<String>,
    /// Only this MCIS (`mcis_id`).
    #[arg(long)]
    pub mcis: Option<String>,
    /// Only this CSP type (`csp_type`: aws, azure, gcp, …).
    #[arg(long)]
    pub csp: Option<String>,
    /// Only agents in this health: healthy, unhealthy or unknown.
    #[arg(long)]
    pub health: Option<String>,
    /// Only this collection mechanism (push, pull).
    #[arg(long)]
    pub mechanism: Option<String>,
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Show one agent: its registry record and what the lake knows (health, first and last seen).
    Get(KeyArgs),
    /// Create or replace an agent's registry record (fields not given are left empty); running jobs follow at once.
    Put(PutArgs),
    /// Remove an agent's registry record (a tombstone for running jobs).
    Delete(KeyArgs),
}

#[derive(Args)]
pub struct KeyArgs {
    /// The agent's key, `ns/mcis/vm/csp`.
    pub key: String,
}

/// The fields of a registry record, which replaces the agent's: those not given are left empty
/// (`ns_id`, `mcis_id`, `vm_id` and `csp_type` come from the key).
#[derive(Args)]
pub struct PutArgs {
    /// The agent's key, `ns/mcis/vm/csp`.
    pub key: String,
    /// How its metrics are collected (push, pull).
    #[arg(long)]
    pub mechanism: Option<String>,
    /// Its public IP address.
    #[arg(long)]
    pub public_ip: Option<String>,
    /// Its state: enable or disable (a disabled agent raises no health changes).
    #[arg(long)]
    pub state: Option<String>,
    /// Its operating system type.
    #[arg(long)]
    pub os_type: Option<String>,
    /// Its virtual CPUs.
    #[arg(long)]
    pub vcpu: Option<u32>,
    /// Its memory in GiB.
    #[arg(long)]
    pub memory_gib: Option<f64>,
    /// What it costs per hour.
    #[arg(long)]
    pub cost_per_hour: Option<f64>,
    /// Where to pull its metrics from (pull mechanism).
    #[arg(long)]
    pub pull_url: Option<String>,
}

impl AgentFilter {
    fn is_empty(&self) -> bool {
        [&self.ns, &self.mcis, &self.csp, &self.health, &self.mechanism].iter().all(|f| f.is_none())
    }

    /// `/agents?…` with the filters given.
    pub fn path(&self) -> String {
        url::Query::new()
            .opt("ns", self.ns.as_deref())
            .opt("mcis", self.mcis.as_deref())
            .opt("csp", self.csp.as_deref())
            .opt("health", self.health.as_deref())
            .opt("mechanism", self.mechanism.as_deref())
            .on("/agents")
    }
}

impl PutArgs {
    /// The record's JSON: only the fields given.
    pub fn body(&self) -> anyhow::Result<Value> {
        let mut m = Map::new();
        let mut text = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), Value::String(v.clone()));
            }
        };
        text("mechanism", &self.mechanism);
        text("public_ip", &self.public_ip);
        text("state", &self.state);
        text("os_type", &self.os_type);
        text("pull_url", &self.pull_url);
        if let Some(v) = self.vcpu {
            m.insert("vcpu".into(), v.into());
        }
        for (k, v) in [("memory_gib", self.memory_gib), ("cost_per_hour", self.cost_per_hour)] {
            if let Some(v) = v {
                let n = serde_json::Number::from_f64(v)
                    .ok_or_else(|| anyhow::anyhow!("--{}: expected a finite number", k.replace('_', "-")))?;
                m.insert(k.into(), Value::Number(n));
            }
        }
        Ok(Value::Object(m))
    }
}

pub fn run(args: AgentsArgs) -> anyhow::Result<()> {
    // Not clap's `args_conflicts_with_subcommands`: it would refuse the global --server, --token, --json too.
    if args.command.is_some() && !args.filter.is_empty() {
        anyhow::bail!(
            "--ns, --mcis, --csp, --health and --mechanism filter the list: give them without get, put or delete"
        );
    }
    let client = args.server.connect(DEFAULT_TIMEOUT)?;
    match args.command {
        None => {
            let bytes = client.get(&args.filter.path())?;
            if args.server.json {
                return print_list(&args.server, &bytes, &[], "");
            }
            let columns = match super::http::json(&bytes)? {
                Json::Array(rows) if !rows.is_empty() && rows.iter().all(|r| r.get("key").is_none()) => {
                    KEY_PARTS.iter().chain(AGENT_COLUMNS).copied().collect()
                }
                _ => AGENT_COLUMNS.to_vec(),
            };
            print_list(&args.server, &bytes, &columns, "no agents")
        }
        Some(AgentsCommand::Get(a)) => {
            let bytes = client.get(&url::path("/agents", &a.key))?;
            print_record(&args.server, &bytes, &[])
        }
        Some(AgentsCommand::Put(a)) => {
            let body = serde_json::to_vec(&a.body()?)?;
            let bytes = client.call(Method::PUT, &url::path("/agents", &a.key), Some((body, JSON)), JSON)?;
            if bytes.is_empty() {
                println!("agent {} saved", a.key);
                return Ok(());
            }
            print_record(&args.server, &bytes, &[])
        }
        Some(AgentsCommand::Delete(a)) => {
            let bytes = client.call(Method::DELETE, &url::path("/agents", &a.key), None, JSON)?;
            if args.server.json {
                super::print_json(&bytes);
            } else {
                println!("agent {} deleted", a.key);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_path_encodes_and_leaves_out_absent_filters() {
        let none = AgentFilter { ns: None, mcis: None, csp: None, health: None, mechanism: None };
        assert_eq!(none.path(), "/agents");
        let f = AgentFilter {
            ns: Some("ns 1".into()),
            mcis: None,
            csp: Some("aws".into()),
            health: Some("unhealthy".into()),
            mechanism: None,
        };
        assert_eq!(f.path(), "/agents?ns=ns%201&csp=aws&health=unhealthy");
    }

    #[test]
    fn put_body_has_only_the_fields_given() {
        let a = PutArgs {
            key: "ns1/m1/vm1/aws".into(),
            mechanism: Some("push".into()),
            public_ip: None,
            state: Some("enabled".into()),
            os_type: None,
            vcpu: Some(4),
            memory_gib: Some(15.5),
            cost_per_hour: None,
            pull_url: None,
        };
        assert_eq!(
            a.body().unwrap(),
            serde_json::json!({"mechanism": "push", "state": "enabled", "vcpu": 4, "memory_gib": 15.5})
        );
        let bad = PutArgs { cost_per_hour: Some(f64::NAN), ..a };
        assert!(bad.body().unwrap_err().to_string().contains("--cost-per-hour"));
    }
}

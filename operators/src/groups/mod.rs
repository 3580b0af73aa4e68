//! Fleet metrics: the agent registry, agent health, group metrics and rankings (see
//! `docs/groups.md` for their exact definitions).

pub mod reference;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::aggregate::Counters;

/// A group level: which field of an agent's registry record names its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ns,
    Mcis,
    Csp,
    Os,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Ns, Level::Mcis, Level::Csp, Level::Os];

    pub fn name(self) -> &'static str {
        match self {
            Level::Ns => "ns",
            Level::Mcis => "mcis",
            Level::Csp => "csp",
            Level::Os => "os",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown group level {s:?} (expected ns, mcis, csp or os)"))
    }
}

/// How one VM's series of a field are reduced to one value per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerVm {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    Last,
    Rate,
}

/// How the VMs' values of a group are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverVms {
    Sum,
    Mean,
    Max,
    Min,
}

/// A group metric named in the job spec (`[[groups.metric]]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CustomMetric {
    pub name: String,
    pub measurement: String,
    pub field: String,
    pub aggregate: PerVm,
    pub over_vms: OverVms,
}

/// Everything the fleet-metrics stage needs to know.
#[derive(Clone, Debug)]
pub struct GroupsConfig {
    pub levels: Vec<Level>,
    /// Top-k and bottom-k of the rankings.
    pub k: usize,
    pub metrics: Vec<CustomMetric>,
    /// Silent windows before an agent is unhealthy.
    pub unhealthy_after: u32,
    /// Event time (ns) between two full snapshots of the registry in `agents`.
    pub snapshot_every: i64,
    /// Window size (ns).
    pub window: i64,
    pub counters: Counters,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            levels: Level::ALL.to_vec(),
            k: 5,
            metrics: Vec::new(),
            unhealthy_after: 3,
            snapshot_every: 60 * crate::time::NANOS,
            window: 10 * crate::time::NANOS,
            counters: Counters::default(),
        }
    }
}

pub mod agents;
pub mod dataflow;
pub mod vm;

pub use dataflow::fleet_metrics;

#[cfg(test)]
mod tests;

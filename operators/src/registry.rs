//! The agent registry's records: what Dragonflow knows about each agent besides its metrics.
//!
//! A record is keyed by the agent's identity as it reports, `{nsId}/{mcisId}/{vmId}/{cspType}`
//! (its tags). Its `ns_id`, `mcis_id`, `csp_type` and `os_type` say which groups it counts in,
//! so moving a VM to another MCIS is an update of its record's `mcis_id`.

use serde::{Deserialize, Serialize};

use crate::model::AgentTags;

/// How the agent's metrics reach Dragonflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    #[default]
    Push,
    Pull,
}

/// Whether the agent is monitored. A disabled agent's data is still aggregated, but it raises
/// no health changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    #[default]
    Enable,
    Disable,
}

/// One agent's registry record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// `{nsId}/{mcisId}/{vmId}/{cspType}` of the agent's tags.
    pub key: String,
    pub ns_id: String,
    pub mcis_id: String,
    pub vm_id: String,
    pub csp_type: String,
    pub os_type: String,
    pub mechanism: Mechanism,
    pub public_ip: String,
    pub state: AgentState,
    pub vcpu: Option<f64>,
    pub memory_gib: Option<f64>,
    pub cost_per_hour: Option<f64>,
    /// Where a pull agent answers (`mechanism = "pull"`).
    pub pull_url: Option<String>,
}

impl AgentRecord {
    /// The record of an agent first seen in the data: its tags, nothing else known.
    pub fn from_tags(tags: &AgentTags) -> Self {
        AgentRecord {
            key: tags.key(),
            ns_id: tags.ns_id.to_string(),
            mcis_id: tags.mcis_id.to_string(),
            vm_id: tags.vm_id.to_string(),
            csp_type: tags.csp_type.to_string(),
            os_type: tags.os_type.to_string(),
            ..AgentRecord::default()
        }
    }
}

/// A change of the registry: a new version of a key's record, or its removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryUpdate {
    pub key: String,
    /// Event time (ns) from which the change holds; `None`: from the first window not yet closed.
    pub time: Option<i64>,
    /// `None` removes the key.
    pub record: Option<AgentRecord>,
}

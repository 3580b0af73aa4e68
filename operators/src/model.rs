//! The metric model shared by every crate: what an agent is, what a series is, and the
//! records that flow between operators and into the sinks.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::aggregate::Agg;

/// The identity of the agent that sent a metric: its tags `nsId, mcisId, vmId, cspType, osType`.
/// A missing tag is the empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentTags {
    pub ns_id: Box<str>,
    pub mcis_id: Box<str>,
    pub vm_id: Box<str>,
    pub csp_type: Box<str>,
    pub os_type: Box<str>,
}

impl AgentTags {
    /// The agent's registry key, `{nsId}/{mcisId}/{vmId}/{cspType}`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}/{}", self.ns_id, self.mcis_id, self.vm_id, self.csp_type)
    }
}

/// One aggregated series: an agent, a measurement, the measurement's instance (disk path,
/// network interface, …; empty when it has none) and a field.
///
/// Strings are shared (`Arc`), and the key carries a stable hash computed once when the series
/// is first interned, so exchanging and merging keys costs a pointer copy and an integer compare.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeriesKey {
    pub agent: Arc<AgentTags>,
    pub measurement: Arc<str>,
    pub instance: Arc<str>,
    pub field: Arc<str>,
    hash: u64,
}

impl SeriesKey {
    pub fn new(agent: Arc<AgentTags>, measurement: Arc<str>, instance: Arc<str>, field: Arc<str>) -> Self {
        let hash = stable_hash(&[
            &agent.ns_id,
            &agent.mcis_id,
            &agent.vm_id,
            &agent.csp_type,
            &agent.os_type,
            &measurement,
            &instance,
            &field,
        ]);
        SeriesKey { agent, measurement, instance, field, hash }
    }

    /// A hash that is the same in every process and every run (used to route series to workers).
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }

    /// Sort key: agent, measurement, instance, field.
    pub fn sort_tuple(&self) -> (&AgentTags, &str, &str, &str) {
        (&self.agent, &self.measurement, &self.instance, &self.field)
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.agent, &other.agent) || self.agent == other.agent)
            && self.measurement == other.measurement
            && self.instance == other.instance
            && self.field == other.field
    }
}
impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// FNV-1a over the parts, with a separator so that ("ab","c") and ("a","bc") differ.
/// Deterministic across processes and Rust versions, unlike `DefaultHasher`.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Finalise (splitmix64) so that the low bits used for routing are well mixed.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where a message came from: the source's name (a file path or `topic`), its partition, and the
/// position in that partition (Kafka offset, or line number in a file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub source: Arc<str>,
    pub partition: i32,
    pub position: i64,
}

/// One numeric field value of one metric, with its series already interned on this worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Worker-local series id (see [`crate::intern::SeriesTable`]).
    pub series: u32,
    /// Event time, nanoseconds since the epoch.
    pub ts: i64,
    /// Arrival order: `(partition, position)` packed so that a later arrival compares greater.
    pub order: u64,
    pub value: f64,
}

/// Observations that all belong to the window ending at `window_end` (ns).
#[derive(Clone, Debug, Default)]
pub struct ObservationBatch {
    pub window_end: i64,
    pub observations: Vec<Observation>,
}

/// All the aggregates of one closed window `[window_start, window_end)` that one worker owns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WindowBatch {
    pub window_start: i64,
    pub window_end: i64,
    pub rows: Vec<(SeriesKey, Agg)>,
}

/// A value that arrived after its window had closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateRow {
    pub agent: Arc<AgentTags>,
    pub measurement: Arc<str>,
    pub instance: Arc<str>,
    pub field: Arc<str>,
    /// Event time of the value, ns.
    pub timestamp: i64,
    pub value: f64,
    /// The partition's watermark when the value arrived, ns.
    pub watermark: i64,
    pub origin: Origin,
}

/// Largest payload kept with a reject, in bytes.
pub const REJECT_PAYLOAD_LIMIT: usize = 4096;

/// A message (or one metric or line of it) that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RejectRow {
    pub origin: Origin,
    pub reason: String,
    /// The offending input as text (lossy UTF-8), truncated at [`REJECT_PAYLOAD_LIMIT`] bytes.
    pub payload: String,
    /// Wall-clock time the reject was produced, ns.
    pub received_at: i64,
}

impl RejectRow {
    pub fn new(origin: Origin, reason: impl Into<String>, payload: &[u8], received_at: i64) -> Self {
        RejectRow { origin, reason: reason.into(), payload: truncate_payload(payload), received_at }
    }
}

/// Lossy UTF-8 of at most [`REJECT_PAYLOAD_LIMIT`] bytes, cut on a character boundary.
pub fn truncate_payload(payload: &[u8]) -> String {
    let cut = payload.len().min(REJECT_PAYLOAD_LIMIT);
    let mut text = String::from_utf8_lossy(&payload[..cut]).into_owned();
    while text.len() > REJECT_PAYLOAD_LIMIT {
        text.pop();
    }
    text
}

/// One row of the `agents` table: an agent's registry record as of `time`, written when the
/// record changes (first sighting, registry file or topic update, removal, health change) and in
/// a periodic snapshot that refreshes `last_seen`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    /// Event time (ns) from which this version of the record holds.
    pub time: i64,
    pub record: crate::registry::AgentRecord,
    /// Start of the first and of the last window with data from the agent (ns), if any.
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: String,
    /// The record was removed (a tombstone); the row keeps its last values.
    pub deleted: bool,
}

/// One row of the `agent_health` table: a change of an agent's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthRow {
    /// Event time (ns) of the change: the start of the window whose data made the agent healthy,
    /// or the end of its last silent window.
    pub time: i64,
    pub ns_id: String,
    pub mcis_id: String,
    pub vm_id: String,
    pub csp_type: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// One row of the `groups` table: a metric of one group of VMs in one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub window_start: i64,
    pub window_end: i64,
    /// `ns`, `mcis`, `csp`, `os`.
    pub level: String,
    pub group_id: String,
    pub metric: String,
    pub value: f64,
    /// VMs of the group with data in the window.
    pub vm_count: u64,
}

/// One row of the `rankings` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankRow {
    pub window_start: i64,
    pub window_end: i64,
    pub level: String,
    pub metric: String,
    /// `top` (largest first) or `bottom` (smallest first).
    pub order: String,
    /// 1-based.
    pub rank: u32,
    pub group_id: String,
    pub value: f64,
}

/// A change of level of one (rule, target): a row of the `alarm_events` table and what the
/// handlers deliver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// 16 hex digits hashing rule, target, time, previous level and level: the same on a replay.
    pub id: String,
    /// End of the window whose value (or silence) changed the level, ns.
    pub time: i64,
    pub rule: String,
    pub target: String,
    /// `OK`, `WARNING`, `CRITICAL` or `NODATA`.
    pub level: String,
    pub previous_level: String,
    /// The window's value; `None` for NODATA.
    pub value: Option<f64>,
    /// The threshold crossed; `None` for NODATA and for NODATA → OK.
    pub threshold: Option<f64>,
    /// The rule's message template, filled in.
    pub message: String,
    /// Names of the rule's handlers.
    pub handlers: Vec<String>,
}

/// The outcome of delivering an event to every handler of its rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmDelivery {
    pub event: AlarmEvent,
    /// Every handler accepted the event.
    pub delivered: bool,
    /// What failed, per handler (`name: error; name: error`); `None` when delivered.
    pub error: Option<String>,
}

/// Everything a sink receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SinkItem {
    Aggregates(WindowBatch),
    Late(Vec<LateRow>),
    Rejects(Vec<RejectRow>),
    Agents(Vec<AgentRow>),
    Health(Vec<HealthRow>),
    Groups(Vec<GroupRow>),
    Rankings(Vec<RankRow>),
    Alarms(Vec<AlarmEvent>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_parts() {
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        assert_eq!(stable_hash(&["x", "y"]), stable_hash(&["x", "y"]));
    }

    #[test]
    fn payload_truncation_respects_char_boundaries() {
        let text = "é".repeat(3000); // 6000 bytes
        let cut = truncate_payload(text.as_bytes());
        assert!(cut.len() <= REJECT_PAYLOAD_LIMIT);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}

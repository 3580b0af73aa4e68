//! The registry and health of the agents one worker owns (by the stable hash of their key).
//!
//! Each agent has a *timeline* of registry records keyed by timely time (the end of the first
//! window a record applies to). The registry collection that group metrics join against is
//! derived from the timelines: setting a record at time `T` retracts the member valid at `T` and
//! inserts the new one, and corrects the next entry's change, so the collection at any time holds
//! exactly the record of the latest entry at or before it — whatever order updates arrive in.
//!
//! Sightings (an agent reported in a window) are processed in time order once the input frontier
//! has passed their window, so health changes are deterministic. Silence timers fire when the
//! frontier passes them while the input still runs: an input that ends closes its last windows
//! with an empty frontier, and that fires nothing.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use timely::progress::frontier::MutableAntichain;

use super::vm::{Member, VmPartial};
use super::GroupsConfig;
use crate::model::{AgentRow, AgentTags, HealthRow, SinkItem};
use crate::registry::{AgentRecord, AgentState, RegistryUpdate};
use crate::window::Time;

/// A change of the registry collection: `((key, member), time, diff)`.
pub type MemberUpdate = ((String, Member), Time, isize);

/// A VM's whole window for the group metrics: `((key, (window_start, partial)), time, diff)`.
pub type PartUpdate = ((String, (i64, VmPartial)), Time, isize);

/// What the operator emits.
#[derive(Clone, Debug)]
pub enum AgentsOut {
    Member(MemberUpdate),
    Part(PartUpdate),
    Item(SinkItem),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    record: Option<AgentRecord>,
    /// The event time the change holds from (an untimed one: the start of its first window).
    /// Two changes in one window: the later `since` wins, then the later arrival.
    since: i64,
}

#[derive(Debug)]
struct Agent {
    timeline: BTreeMap<Time, Entry>,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    health: Health,
    /// The pending silence timer (timely time of the window whose close makes it fire).
    timer: Option<Time>,
    /// The last record the agent had, for the row of its removal.
    last_known: Option<AgentRecord>,
}

impl Agent {
    fn new() -> Self {
        Agent {
            timeline: BTreeMap::new(),
            first_seen: None,
            last_seen: None,
            health: Health::Unknown,
            timer: None,
            last_known: None,
        }
    }

    fn record_at(&self, t: Time) -> Option<&AgentRecord> {
        self.timeline.range(..=t).next_back().and_then(|(_, e)| e.record.as_ref())
    }

    /// Drops entries no time at or after `frontier` can see.
    fn compact(&mut self, frontier: Time) {
        let keep = self.timeline.range(..=frontier).next_back().map(|(t, _)| *t);
        if let Some(keep) = keep {
            self.timeline = self.timeline.split_off(&keep);
        }
    }
}

/// Registry and health state of one worker.
pub struct Agents {
    config: GroupsConfig,
    agents: FxHashMap<String, Agent>,
    timers: BTreeMap<Time, Vec<String>>,
    /// Sightings waiting for their window's time to pass, with the VM's partials of the window
    /// from every worker merged: key → `(tags, window_start, partial)`.
    sightings: BTreeMap<Time, FxHashMap<String, (AgentTags, i64, VmPartial)>>,
    /// Agents whose row in `agents` is due at a time (a change of record or health), written
    /// once that time has passed, with the agent's state then.
    rows: BTreeMap<Time, Vec<String>>,
    next_snapshot: Option<i64>,
}

impl Agents {
    pub fn new(config: GroupsConfig) -> Self {
        Agents {
            config,
            agents: FxHashMap::default(),
            timers: BTreeMap::new(),
            sightings: BTreeMap::new(),
            rows: BTreeMap::new(),
            next_snapshot: None,
        }
    }

    /// Starts from what a previous run recorded (a job resuming from a checkpoint): each agent's
    /// last row before the checkpoint. Its record holds from the beginning; its first and last
    /// sighting and its health carry on, and a healthy agent's silence timer runs from its last
    /// sighting, so a restart neither repeats `first data` nor forgets an agent that fell silent.
    pub fn restore(&mut self, rows: Vec<AgentRow>, out: &mut Vec<AgentsOut>) {
        let n = self.config.unhealthy_after as i64;
        let size = self.size();
        for row in rows {
            let key = row.record.key.clone();
            let mut agent = Agent::new();
            agent.first_seen = row.first_seen;
            agent.last_seen = row.last_seen;
            agent.health = match row.health.as_str() {
                "healthy" => Health::Healthy,
                "unhealthy" => Health::Unhealthy,
                _ => Health::Unknown,
            };
            if !row.deleted {
                out.push(AgentsOut::Member(((key.clone(), Member::of(&row.record)), 0, 1)));
                agent.timeline.insert(0, Entry { record: Some(row.record.clone()), since: i64::MIN });
            }
            agent.last_known = Some(row.record);
            if let (Health::Healthy, Some(last)) = (agent.health, agent.last_seen) {
                let fire = (last + (n + 1) * size).max(0) as Time;
                agent.timer = Some(fire);
                self.timers.entry(fire).or_default().push(key.clone());
            }
            self.agents.insert(key, agent);
        }
    }

    fn size(&self) -> i64 {
        self.config.window
    }

    /// Timely time of the first window starting at or after event time `t`.
    fn time_from(&self, t: i64) -> Time {
        let size = self.size();
        let start = t.div_euclid(size) * size + if t.rem_euclid(size) == 0 { 0 } else { size };
        (start.saturating_add(size)).max(0) as Time
    }

    /// Sets `key`'s record from timely time `at` on.
    fn set(&mut self, key: &str, at: Time, since: i64, record: Option<AgentRecord>, out: &mut Vec<AgentsOut>) {
        let agent = self.agents.entry(key.to_string()).or_insert_with(Agent::new);
        if agent.timeline.get(&at).is_some_and(|e| e.since > since) {
            return; // superseded within its window by a change that holds from later
        }
        let current = agent.record_at(at).map(Member::of);
        let next = agent.timeline.range(at + 1..).next().map(|(t, _)| *t);
        let new = record.as_ref().map(Member::of);
        if current != new {
            let mut emit = |m: &Option<Member>, t: Time, d: isize| {
                if let Some(m) = m {
                    out.push(AgentsOut::Member(((key.to_string(), m.clone()), t, d)));
                }
            };
            emit(&current, at, -1);
            emit(&new, at, 1);
            if let Some(next) = next {
                emit(&current, next, 1);
                emit(&new, next, -1);
            }
        }
        if let Some(r) = &record {
            agent.last_known = Some(r.clone());
        }
        let changed = agent.record_at(at) != record.as_ref();
        agent.timeline.insert(at, Entry { record, since });
        if changed {
            self.rows.entry(at).or_default().push(key.to_string());
        }
    }

    /// A registry update that arrived at timely time `now` (the first window not yet closed).
    pub fn update(&mut self, update: RegistryUpdate, now: Time, out: &mut Vec<AgentsOut>) {
        let (at, since) = match update.time {
            Some(t) if self.time_from(t) >= now => (self.time_from(t), t),
            // Untimed, or its windows are closed: from the first window not yet closed.
            _ => (now, now as i64 - self.size()),
        };
        let record = update.record.map(|mut r| {
            r.key = update.key.clone();
            r
        });
        self.set(&update.key, at, since, record, out);
    }

    /// An agent reported in the window `[window_start, window_start + size)`.
    pub fn sighting(&mut self, key: String, tags: AgentTags, window_start: i64, partial: VmPartial) {
        let t = (window_start + self.size()) as Time;
        match self.sightings.entry(t).or_default().entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().2.merge(&partial),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((tags, window_start, partial));
            }
        }
    }

    /// Processes sightings and timers the frontier has passed (`ended`: the windows' input ended,
    /// and everything left is processed). Only timers of windows the data's watermark closed
    /// (`closed_by_data`, ns) fire: windows that a graceful stop or the end of the input closed
    /// are not silence.
    pub fn advance(
        &mut self,
        frontier: &MutableAntichain<Time>,
        ended: bool,
        closed_by_data: i64,
        out: &mut Vec<AgentsOut>,
    ) {
        let low = frontier.frontier().iter().min().copied();
        loop {
            // At one time: sightings, then timers, then the rows of what changed.
            let next = [
                self.sightings.first_key_value().map(|(t, _)| (*t, 0)),
                self.timers.first_key_value().map(|(t, _)| (*t, 1)),
                self.rows.first_key_value().map(|(t, _)| (*t, 2)),
            ];
            let Some((t, kind)) = next.into_iter().flatten().min() else { break };
            if !ended && frontier.less_equal(&t) {
                break;
            }
            match kind {
                0 => {
                    let mut seen: Vec<_> = self.sightings.remove(&t).unwrap_or_default().into_iter().collect();
                    seen.sort_by(|a, b| a.0.cmp(&b.0));
                    for (key, (tags, start, partial)) in seen {
                        self.seen(key.clone(), &tags, start, t, out);
                        // The VM's window lives in the group metrics' collection at its time only.
                        let part = (key, (start, partial));
                        out.push(AgentsOut::Part((part.clone(), t, 1)));
                        out.push(AgentsOut::Part((part, t + 1, -1)));
                    }
                }
                1 => {
                    let keys = self.timers.remove(&t).unwrap_or_default();
                    // Only windows the data's watermark closed count as silence: not those a
                    // stop or the end of the input closed.
                    if t as i64 <= closed_by_data {
                        for key in keys {
                            self.silent(&key, t, out);
                        }
                    }
                }
                _ => {
                    let keys = self.rows.remove(&t).unwrap_or_default();
                    self.write_rows(keys, t, low, out);
                }
            }
        }
        match low {
            Some(low) if !ended => self.snapshot(low, out),
            _ => {}
        }
    }

    /// The `agents` rows of `keys` as of time `t`. A record that holds from before the first
    /// window not yet closed (`low`) — an untimed record loaded at the start — is dated by that window.
    fn write_rows(&mut self, mut keys: Vec<String>, t: Time, low: Option<Time>, out: &mut Vec<AgentsOut>) {
        keys.sort();
        keys.dedup();
        let size = self.size();
        let mut time = t as i64 - size;
        if let (true, Some(low)) = (time < 0, low) {
            time = (low as i64 - 1).div_euclid(size) * size;
        }
        let time = time.max(0);
        let mut rows = Vec::new();
        for key in keys {
            let Some(agent) = self.agents.get(&key) else { continue };
            let (record, deleted) = match agent.record_at(t) {
                Some(r) => (r.clone(), false),
                None => match &agent.last_known {
                    Some(r) => (r.clone(), true),
                    None => continue,
                },
            };
            rows.push(AgentRow {
                time,
                record,
                first_seen: agent.first_seen,
                last_seen: agent.last_seen,
                health: agent.health.name().to_string(),
                deleted,
            });
        }
        if !rows.is_empty() {
            out.push(AgentsOut::Item(SinkItem::Agents(rows)));
        }
    }

    fn seen(&mut self, key: String, tags: &AgentTags, start: i64, t: Time, out: &mut Vec<AgentsOut>) {
        let agent = self.agents.entry(key.clone()).or_insert_with(Agent::new);
        agent.first_seen = Some(agent.first_seen.map_or(start, |f| f.min(start)));
        let fresh = agent.last_seen.is_none_or(|l| l < start);
        if fresh {
            agent.last_seen = Some(start);
        }
        if agent.record_at(t).is_none() {
            self.set(&key, t, start, Some(AgentRecord::from_tags(tags)), out);
        }
        if !fresh {
            return;
        }
        let fire = (start + (self.config.unhealthy_after as i64 + 1) * self.size()) as Time;
        self.timers.entry(fire).or_default().push(key.clone());
        let agent = self.agents.get_mut(&key).expect("registered above");
        agent.timer = Some(fire);
        let enabled = agent.record_at(t).is_some_and(|r| r.state == AgentState::Enable);
        if enabled && agent.health != Health::Healthy {
            let reason = if agent.health == Health::Unknown { "first data" } else { "data again" };
            let from = agent.health;
            agent.health = Health::Healthy;
            self.transition(&key, start, t, from, reason, out);
        }
    }

    fn silent(&mut self, key: &str, t: Time, out: &mut Vec<AgentsOut>) {
        let size = self.size() as Time;
        let Some(agent) = self.agents.get_mut(key) else { return };
        if agent.timer != Some(t) {
            return; // data came since
        }
        agent.timer = None;
        let enabled = agent.record_at(t + size).is_some_and(|r| r.state == AgentState::Enable);
        if enabled && agent.health == Health::Healthy {
            agent.health = Health::Unhealthy;
            let n = self.config.unhealthy_after;
            self.transition(key, t as i64, t, Health::Healthy, &format!("no data for {n} windows"), out);
        }
    }

    fn transition(&mut self, key: &str, time: i64, t: Time, from: Health, reason: &str, out: &mut Vec<AgentsOut>) {
        let agent = &self.agents[key];
        let to = agent.health;
        // The agent as it reports (its key), whichever group its record places it in.
        let mut parts = key.splitn(4, '/').map(str::to_string);
        let mut next = || parts.next().unwrap_or_default();
        let (ns_id, mcis_id, vm_id, csp_type) = (next(), next(), next(), next());
        out.push(AgentsOut::Item(SinkItem::Health(vec![HealthRow {
            time,
            ns_id,
            mcis_id,
            vm_id,
            csp_type,
            from: from.name().to_string(),
            to: to.name().to_string(),
            reason: reason.to_string(),
        }])));
        // The row in `agents` is dated like the change: the window of the data, or U itself.
        let row_at = if to == Health::Unhealthy { t + self.size() as Time } else { t };
        self.rows.entry(row_at).or_default().push(key.to_string());
    }

    /// Every `snapshot_every` of event time, a row per registered agent; and compaction.
    fn snapshot(&mut self, low: Time, out: &mut Vec<AgentsOut>) {
        let every = self.config.snapshot_every.max(1);
        if low == 0 {
            return; // no window yet
        }
        let closed = low as i64 - self.size(); // windows starting before this are closed
        let next = *self.next_snapshot.get_or_insert_with(|| (closed.div_euclid(every) + 1) * every);
        if closed < next {
            return;
        }
        let mut rows = Vec::new();
        for agent in self.agents.values_mut() {
            if let Some(record) = agent.record_at(low).cloned() {
                rows.push(AgentRow {
                    time: next,
                    record,
                    first_seen: agent.first_seen,
                    last_seen: agent.last_seen,
                    health: agent.health.name().to_string(),
                    deleted: false,
                });
            }
            agent.compact(low);
        }
        if !rows.is_empty() {
            out.push(AgentsOut::Item(SinkItem::Agents(rows)));
        }
        self.next_snapshot = Some((closed.div_euclid(every) + 1) * every);
    }
}

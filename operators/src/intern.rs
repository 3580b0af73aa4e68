//! Per-worker interning of agents and series, with bounded state.
//!
//! The hot path never allocates for a known series: the tags of a metric are written into a
//! reusable byte buffer, looked up once per metric to find its *group* (agent, measurement,
//! instance), and each field is then found by a short scan of the group's fields. Series ids
//! are dense `u32`s local to the worker; [`SeriesTable::key`] turns one back into a [`SeriesKey`].
//!
//! State is bounded two ways. A group that has not reported for a while (event time, see
//! [`SeriesTable::seen`]) is released by [`SeriesTable::evict_idle`] with its series, and the
//! agent and name strings nobody uses any more go with it, so agents coming and going leave
//! memory flat. And [`SeriesTable::with_limit`] caps the number of *live* series: beyond it a new
//! series is refused with a reason while known series keep flowing.
//!
//! Released ids are reused, but a series id only after a quarantine of one more `ttl` of
//! watermark: an open window may still hold the id of a series released under it, and must find
//! the old key (not a newcomer's) when it closes. Until then the old key stays readable through
//! [`SeriesTable::key`]; its index entries are gone at once, so a returning agent gets a new id.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::{AgentTags, SeriesKey};

/// Tags of one metric, borrowed from the decoded message.
#[derive(Clone, Copy, Debug, Default)]
pub struct TagRefs<'a> {
    pub ns_id: &'a str,
    pub mcis_id: &'a str,
    pub vm_id: &'a str,
    pub csp_type: &'a str,
    pub os_type: &'a str,
}

struct Group {
    agent: Arc<AgentTags>,
    measurement: Arc<str>,
    instance: Arc<str>,
    fields: Vec<(Arc<str>, u32)>,
    /// The largest event time the group reported (ns).
    last_seen: i64,
}

/// The series ids released by one [`SeriesTable::evict_idle`] call: their keys stay readable, and
/// the ids are not handed out again, until the watermark reaches `reusable_at`.
struct Quarantine {
    reusable_at: i64,
    ids: Vec<u32>,
}

/// Why a new series was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternError {
    #[error("series cardinality limit of {0} reached on this worker")]
    CardinalityLimit(usize),
}

pub struct SeriesTable {
    group_index: FxHashMap<Box<[u8]>, u32>,
    /// Groups by id; `None` for a released id (on `free_groups`).
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    agents: FxHashMap<Box<[u8]>, Arc<AgentTags>>,
    names: FxHashSet<Arc<str>>,
    /// Keys by series id: `Some` for live and quarantined series, `None` for free ids.
    series: Vec<Option<SeriesKey>>,
    free_series: Vec<u32>,
    /// Oldest release first.
    quarantine: VecDeque<Quarantine>,
    live: usize,
    /// The largest watermark given to `evict_idle`: a group never passed to `seen` counts as
    /// seen then, so it lives at least one `ttl`.
    evicted_at: i64,
    /// How far the watermark must move past a release before the ids are reused (default: the ttl).
    reuse_delay: Option<i64>,
    buf: Vec<u8>,
    limit: Option<usize>,
}

impl Default for SeriesTable {
    fn default() -> Self {
        SeriesTable {
            group_index: FxHashMap::default(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            agents: FxHashMap::default(),
            names: FxHashSet::default(),
            series: Vec::new(),
            free_series: Vec::new(),
            quarantine: VecDeque::new(),
            live: 0,
            evicted_at: i64::MIN,
            reuse_delay: None,
            buf: Vec::new(),
            limit: None,
        }
    }
}

/// Writes the index key of (agent tags, measurement, instance) into `buf`, each part followed by
/// a 0 byte; returns the length of the agent's prefix.
#[inline]
fn index_key(buf: &mut Vec<u8>, agent: [&str; 5], measurement: &str, instance: &str) -> usize {
    buf.clear();
    for part in agent {
        buf.extend_from_slice(part.as_bytes());
        buf.push(0);
    }
    let agent_len = buf.len();
    buf.extend_from_slice(measurement.as_bytes());
    buf.push(0);
    buf.extend_from_slice(instance.as_bytes());
    agent_len
}

#[cold]
#[inline(never)]
fn not_live(series: u32) -> ! {
    panic!(
        "series id {series} is not known to this table: never handed out, or released by evict_idle \
         longer than one ttl ago"
    )
}

/// Gives capacity back once a collection uses less than a quarter of it (with room to grow).
fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to(v.len() * 2);
    }
}

fn shrink_map<K: Eq + std::hash::Hash, V>(m: &mut FxHashMap<K, V>) {
    if m.capacity() > 64 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}

fn shrink_set<T: Eq + std::hash::Hash>(s: &mut FxHashSet<T>) {
    if s.capacity() > 64 && s.len() < s.capacity() / 4 {
        s.shrink_to(s.len() * 2);
    }
}

impl SeriesTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse new series beyond `limit` live series (per worker).
    pub fn with_limit(limit: Option<usize>) -> Self {
        SeriesTable { limit, ..Self::default() }
    }

    /// Changes the limit on live series; series already live beyond a lowered limit stay.
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Series that are live: handed out and not released by [`SeriesTable::evict_idle`].
    pub fn live_series(&self) -> usize {
        self.live
    }

    /// The number of live series (as [`SeriesTable::live_series`]).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(s);
        self.names.insert(n.clone());
        n
    }

    /// The group id of (agent, measurement, instance). Valid until the next
    /// [`SeriesTable::evict_idle`], which may release it and hand the id to another group.
    pub fn group(&mut self, tags: &TagRefs<'_>, measurement: &str, instance: &str) -> u32 {
        let parts = [tags.ns_id, tags.mcis_id, tags.vm_id, tags.csp_type, tags.os_type];
        let agent_len = index_key(&mut self.buf, parts, measurement, instance);
        if let Some(&g) = self.group_index.get(self.buf.as_slice()) {
            return g;
        }
        let agent = match self.agents.get(&self.buf[..agent_len]) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(AgentTags {
                    ns_id: tags.ns_id.into(),
                    mcis_id: tags.mcis_id.into(),
                    vm_id: tags.vm_id.into(),
                    csp_type: tags.csp_type.into(),
                    os_type: tags.os_type.into(),
                });
                self.agents.insert(self.buf[..agent_len].into(), a.clone());
                a
            }
        };
        let key: Box<[u8]> = self.buf.as_slice().into();
        let measurement = self.name(measurement);
        let instance = self.name(instance);
        let group = Group { agent, measurement, instance, fields: Vec::new(), last_seen: self.evicted_at };
        let id = take_slot(&mut self.groups, &mut self.free_groups, group);
        self.group_index.insert(key, id);
        id
    }

    /// Records that `group` reported at event time `ts` (ns); the group stays while its largest
    /// such time is within `ttl` of the watermark given to [`SeriesTable::evict_idle`].
    #[inline]
    pub fn seen(&mut self, group: u32, ts: i64) {
        if let Some(Some(g)) = self.groups.get_mut(group as usize) {
            g.last_seen = g.last_seen.max(ts);
        }
    }

    /// The series id of a field of a group.
    ///
    /// Panics if `group` was not returned by [`SeriesTable::group`] since the last eviction.
    #[inline]
    pub fn series(&mut self, group: u32, field: &str) -> Result<u32, InternError> {
        let g = self.groups[group as usize].as_ref().expect("a group id from SeriesTable::group");
        if let Some((_, id)) = g.fields.iter().find(|(f, _)| &**f == field) {
            return Ok(*id);
        }
        if let Some(limit) = self.limit {
            if self.live >= limit {
                return Err(InternError::CardinalityLimit(limit));
            }
        }
        let field = self.name(field);
        let g = self.groups[group as usize].as_mut().expect("a group id from SeriesTable::group");
        let key = SeriesKey::new(g.agent.clone(), g.measurement.clone(), g.instance.clone(), field.clone());
        let id = take_slot(&mut self.series, &mut self.free_series, key);
        g.fields.push((field, id));
        self.live += 1;
        Ok(id)
    }

    /// The key of a series id handed out by this table.
    ///
    /// The key of a released series stays readable until the watermark given to
    /// [`SeriesTable::evict_idle`] reaches its release watermark + ttl (windows still open on it
    /// close before then); after that its id is free or belongs to another series and must not
    /// be used. Panics on an id that is neither live nor in that quarantine.
    #[inline]
    pub fn key(&self, series: u32) -> &SeriesKey {
        match self.series.get(series as usize) {
            Some(Some(key)) => key,
            _ => not_live(series),
        }
    }

    /// The key of a series id, or `None` if the id is neither live nor in quarantine.
    #[inline]
    pub fn get(&self, series: u32) -> Option<&SeriesKey> {
        self.series.get(series as usize).and_then(Option::as_ref)
    }

    /// The agent, measurement and instance of a group.
    pub fn group_parts(&self, group: u32) -> (&Arc<AgentTags>, &Arc<str>, &Arc<str>) {
        let g = self.groups[group as usize].as_ref().expect("a group id from SeriesTable::group");
        (&g.agent, &g.measurement, &g.instance)
    }

    /// A shared copy of a field name.
    pub fn field_name(&mut self, field: &str) -> Arc<str> {
        self.name(field)
    }

    /// Released series ids (and their keys) are kept until the watermark passes the release by
    /// `delay` instead of a whole ttl: enough for every window open at the release to close.
    pub fn set_reuse_delay(&mut self, delay: i64) {
        self.reuse_delay = Some(delay.max(0));
    }

    /// Releases every group whose last report ([`SeriesTable::seen`]) is before
    /// `watermark - ttl`, with its series; returns the number of series released.
    ///
    /// Group ids are reused at once. Series ids go into quarantine: their keys stay readable
    /// and the ids are not handed out again until a later call's `watermark` reaches this
    /// `watermark` + the reuse delay ([`SeriesTable::set_reuse_delay`], default `ttl`); then the
    /// keys are dropped and the ids freed. Agent and name strings
    /// that nothing uses any more are dropped as well. A watermark that goes backwards releases
    /// less and only delays reuse. Costs O(groups); meant to be called every few seconds.
    pub fn evict_idle(&mut self, watermark: i64, ttl: i64) -> usize {
        let ttl = ttl.max(0);
        self.evicted_at = self.evicted_at.max(watermark);
        let mut changed = false;
        while self.quarantine.front().is_some_and(|q| q.reusable_at <= watermark) {
            let Some(q) = self.quarantine.pop_front() else { break };
            for &id in &q.ids {
                self.series[id as usize] = None;
            }
            self.free_series.extend(q.ids);
            changed = true;
        }
        let cutoff = watermark.saturating_sub(ttl);
        let mut released = Vec::new();
        for id in 0..self.groups.len() {
            if !matches!(&self.groups[id], Some(g) if g.last_seen < cutoff) {
                continue;
            }
            let Some(g) = self.groups[id].take() else { continue };
            let a = &g.agent;
            index_key(
                &mut self.buf,
                [&a.ns_id, &a.mcis_id, &a.vm_id, &a.csp_type, &a.os_type],
                &g.measurement,
                &g.instance,
            );
            self.group_index.remove(self.buf.as_slice());
            released.extend(g.fields.iter().map(|&(_, s)| s));
            self.free_groups.push(id as u32);
            changed = true;
        }
        let count = released.len();
        if count > 0 {
            self.live -= count;
            let delay = self.reuse_delay.unwrap_or(ttl);
            self.quarantine.push_back(Quarantine { reusable_at: watermark.saturating_add(delay), ids: released });
        }
        if changed {
            // Held only by the index now: no group, live or quarantined key refers to them.
            self.agents.retain(|_, a| Arc::strong_count(a) > 1);
            self.trim();
        }
        // Every call: names given out for late values (`field_name`) are not tied to a group.
        self.names.retain(|n| Arc::strong_count(n) > 1);
        shrink_set(&mut self.names);
        count
    }

    /// Drops free slots at the end of the id spaces and gives unused capacity back, so that a
    /// table that shrank for good holds no more than it needs.
    fn trim(&mut self) {
        let groups = self.groups.len();
        while matches!(self.groups.last(), Some(None)) {
            self.groups.pop();
        }
        if self.groups.len() < groups {
            let n = self.groups.len();
            self.free_groups.retain(|&g| (g as usize) < n);
        }
        let series = self.series.len();
        while matches!(self.series.last(), Some(None)) {
            self.series.pop();
        }
        if self.series.len() < series {
            let n = self.series.len();
            self.free_series.retain(|&s| (s as usize) < n);
        }
        shrink_vec(&mut self.groups);
        shrink_vec(&mut self.free_groups);
        shrink_vec(&mut self.series);
        shrink_vec(&mut self.free_series);
        shrink_map(&mut self.group_index);
        shrink_map(&mut self.agents);
    }

    /// Sizes of everything that holds memory, for tests.
    #[cfg(test)]
    fn footprint(&self) -> Footprint {
        Footprint {
            group_index: self.group_index.len(),
            group_slots: self.groups.len(),
            agents: self.agents.len(),
            names: self.names.len(),
            series_slots: self.series.len(),
            quarantined: self.quarantine.iter().map(|q| q.ids.len()).sum(),
        }
    }
}

#[cfg(test)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    group_index: usize,
    group_slots: usize,
    agents: usize,
    names: usize,
    series_slots: usize,
    quarantined: usize,
}

/// Puts `value` in a free slot of `slots` (or a new one at the end) and returns its id.
fn take_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(id) => {
            slots[id as usize] = Some(value);
            id
        }
        None => {
            slots.push(Some(value));
            (slots.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const MIN: i64 = 60_000_000_000;

    fn vm(name: &str) -> TagRefs<'_> {
        TagRefs { ns_id: "ns", mcis_id: "m", vm_id: name, csp_type: "aws", os_type: "linux" }
    }

    /// Reports `fields` of `cpu` of every agent in `vms` at `ts`; returns the series ids.
    fn report(t: &mut SeriesTable, vms: impl IntoIterator<Item = usize>, fields: &[&str], ts: i64) -> Vec<u32> {
        let mut ids = Vec::new();
        for v in vms {
            let name = format!("vm-{v}");
            let g = t.group(&vm(&name), "cpu", "cpu-total");
            t.seen(g, ts);
            for f in fields {
                ids.push(t.series(g, f).unwrap());
            }
        }
        ids
    }

    #[test]
    fn same_series_same_id() {
        let mut t = SeriesTable::new();
        let tags = vm("vm-1");
        let g = t.group(&tags, "cpu", "cpu-total");
        let a = t.series(g, "usage_idle").unwrap();
        let b = t.series(g, "usage_user").unwrap();
        assert_ne!(a, b);
        let g2 = t.group(&tags, "cpu", "cpu-total");
        assert_eq!(g, g2);
        assert_eq!(t.series(g2, "usage_idle").unwrap(), a);
        assert_eq!(&*t.key(a).field, "usage_idle");
        assert_eq!(&*t.key(a).agent.vm_id, "vm-1");
        // Tags that differ only in where a separator falls are different agents.
        let other = TagRefs { ns_id: "n", mcis_id: "sm", ..tags };
        assert_ne!(t.group(&other, "cpu", "cpu-total"), g);
        assert_eq!(t.live_series(), 2);
    }

    #[test]
    fn limit_refuses_new_series_only() {
        let mut t = SeriesTable::with_limit(Some(1));
        let tags = TagRefs::default();
        let g = t.group(&tags, "cpu", "");
        let a = t.series(g, "x").unwrap();
        assert_eq!(t.series(g, "y"), Err(InternError::CardinalityLimit(1)));
        assert_eq!(t.series(g, "x").unwrap(), a);
    }

    #[test]
    fn limit_counts_live_series_not_ever_created_ones() {
        let mut t = SeriesTable::with_limit(Some(2));
        report(&mut t, [0], &["x", "y"], 0);
        let g = t.group(&vm("vm-1"), "cpu", "cpu-total");
        assert!(t.series(g, "x").is_err());
        assert_eq!(t.evict_idle(MIN + 1, MIN), 2);
        assert_eq!(t.live_series(), 0);
        let ids = report(&mut t, [1], &["x", "y"], MIN + 1);
        assert_eq!(ids.len(), 2);
        let g = t.group(&vm("vm-2"), "cpu", "cpu-total");
        assert!(t.series(g, "x").is_err());
        t.set_limit(None);
        assert!(t.series(g, "x").is_ok());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn seen_keeps_a_group_and_its_series() {
        let mut t = SeriesTable::new();
        let old = report(&mut t, [0], &["x"], 0);
        let kept = report(&mut t, [1], &["x"], 0);
        report(&mut t, [1], &["x"], 5 * MIN);
        // vm-0 last reported at 0, vm-1 at 5 min: with a ttl of 10 min only vm-0 goes.
        assert_eq!(t.evict_idle(10 * MIN, 10 * MIN), 0);
        assert_eq!(t.evict_idle(12 * MIN, 10 * MIN), 1);
        assert_eq!(t.live_series(), 1);
        assert_eq!(report(&mut t, [1], &["x"], 12 * MIN), kept);
        // vm-0 comes back: a new series id, since the old one is in quarantine.
        let back = report(&mut t, [0], &["x"], 12 * MIN);
        assert_ne!(back, old);
        assert_eq!(&*t.key(back[0]).agent.vm_id, "vm-0");
    }

    #[test]
    fn released_series_ids_wait_out_a_ttl_and_keep_their_keys_meanwhile() {
        let mut t = SeriesTable::new();
        let ttl = 10 * MIN;
        let a = report(&mut t, [0], &["x"], 0)[0];
        let wm = ttl + 1;
        assert_eq!(t.evict_idle(wm, ttl), 1);
        // A window still open on `a` closes and finds its key.
        assert_eq!(&*t.key(a).agent.vm_id, "vm-0");
        // Group ids are reused at once, series ids are not.
        let b = report(&mut t, [1], &["x"], wm)[0];
        assert_ne!(b, a);
        assert_eq!(t.group(&vm("vm-1"), "cpu", "cpu-total"), 0, "the released group id is reused");
        t.evict_idle(wm + ttl - 1, ttl);
        assert_ne!(report(&mut t, [2], &["x"], wm + ttl - 1)[0], a);
        assert_eq!(&*t.key(a).agent.vm_id, "vm-0");
        t.evict_idle(wm + ttl, ttl);
        assert!(t.get(a).is_none(), "the quarantine is over: the key is gone");
        let c = report(&mut t, [3], &["x"], wm + ttl)[0];
        assert_eq!(c, a, "and the id is reused");
        assert_eq!(&*t.key(c).agent.vm_id, "vm-3");
    }

    #[test]
    #[should_panic(expected = "series id 7 is not known")]
    fn key_of_an_unknown_id_panics_with_a_reason() {
        let t = SeriesTable::new();
        t.key(7);
    }

    #[test]
    fn evicting_everything_gives_the_memory_back() {
        let mut t = SeriesTable::new();
        let ttl = 10 * MIN;
        let fields = ["usage_idle", "usage_user", "usage_system"];
        report(&mut t, 0..1000, &fields, 0);
        // A late value leaves a name behind that no group holds.
        drop(t.field_name("late_only"));
        let agent = Arc::downgrade(&t.key(0).agent);
        let before = t.footprint();
        assert_eq!((before.agents, before.names, before.series_slots), (1000, 6, 3000));
        assert_eq!(t.evict_idle(ttl + 1, ttl), 3000);
        let quarantined = t.footprint();
        assert_eq!(quarantined.group_index, 0);
        assert_eq!(quarantined.group_slots, 0);
        assert_eq!(quarantined.quarantined, 3000);
        assert_eq!(t.live_series(), 0);
        t.evict_idle(2 * ttl + 1, ttl);
        assert_eq!(t.footprint(), Footprint::default());
        assert!(agent.upgrade().is_none(), "the agent's tags are freed");
        assert!(t.series.capacity() <= 64 && t.groups.capacity() <= 64);
        assert!(t.agents.capacity() <= 64 && t.group_index.capacity() <= 64);
    }

    #[test]
    fn agents_coming_and_going_for_an_hour_leave_memory_flat() {
        let mut t = SeriesTable::new();
        let (ttl, agents, churn) = (10 * MIN, 100, 20);
        let fields = ["usage_idle", "usage_user"];
        let mut first = 0; // agents first..first + 100 are alive
        let mut at = HashMap::new();
        for tick in 0..(60 * 6) {
            let ts = tick * 10_000_000_000;
            if tick > 0 && tick % 6 == 0 {
                first += churn;
            }
            report(&mut t, first..first + agents, &fields, ts);
            t.evict_idle(ts, ttl);
            if tick % 60 == 0 {
                at.insert(tick / 6, t.footprint());
            }
        }
        // Live: 100 agents plus those idle for less than ttl; quarantined: one more ttl's worth.
        let late = at[&50];
        assert_eq!(t.live_series(), (agents + 10 * churn) * 2);
        assert_eq!(late.quarantined, 10 * churn * 2);
        assert_eq!(late.agents, agents + 20 * churn);
        for minute in [30, 40] {
            assert_eq!(at[&minute].series_slots, late.series_slots, "series slots at minute {minute}");
            assert_eq!(at[&minute].agents, late.agents);
            assert_eq!(at[&minute].group_slots, late.group_slots);
        }
        assert!(late.series_slots <= (agents + 20 * churn + churn) * 2, "{late:?}");
    }

    /// One step of the proptest: a report of (agent, measurement, field) at `ts` relative to the
    /// latest watermark, or an eviction after the watermark advanced by `advance`.
    #[derive(Clone, Debug)]
    enum Op {
        Report { agent: u8, measurement: u8, field: u8, ts: i64 },
        Evict { advance: i64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u8..3, 0u8..3, -20i64..20)
                .prop_map(|(agent, measurement, field, ts)| Op::Report { agent, measurement, field, ts }),
            1 => (0i64..15).prop_map(|advance| Op::Evict { advance }),
        ]
    }

    type Series = (u8, u8, u8);

    fn names(s: Series) -> (String, String, String, String) {
        let instance = if s.1 == 0 { "" } else { "i" };
        (format!("vm-{}", s.0), format!("m{}", s.1), instance.to_string(), format!("f{}", s.2))
    }

    fn key_is(key: &SeriesKey, s: Series) -> bool {
        let (vm, m, i, f) = names(s);
        *key.agent.vm_id == vm && *key.measurement == m && *key.instance == i && *key.field == f
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_brute_force(ops in prop::collection::vec(op(), 0..300), ttl in 0i64..30, limit in prop::option::of(1usize..20)) {
            let mut t = SeriesTable::with_limit(limit);
            // The model: last report per group, live series, and released ids with the
            // watermark from which they may be reused (and their old series).
            let mut groups: HashMap<(u8, u8), i64> = HashMap::new();
            let mut live: HashMap<Series, u32> = HashMap::new();
            let mut released: HashMap<u32, (i64, Series)> = HashMap::new();
            let mut wm = 0i64;
            let mut evicted_at = i64::MIN;
            for op in ops {
                match op {
                    Op::Report { agent, measurement, field, ts } => {
                        let ts = wm + ts;
                        let s = (agent, measurement, field);
                        let (vm, m, i, f) = names(s);
                        let g = t.group(&TagRefs { vm_id: &vm, ..TagRefs::default() }, &m, &i);
                        t.seen(g, ts);
                        let last = groups.entry((agent, measurement)).or_insert(evicted_at);
                        *last = (*last).max(ts);
                        let got = t.series(g, &f);
                        if let Some(&id) = live.get(&s) {
                            prop_assert_eq!(got, Ok(id));
                        } else if limit.is_some_and(|l| live.len() >= l) {
                            prop_assert!(got.is_err());
                        } else {
                            let id = got.expect("below the limit");
                            prop_assert!(!live.values().any(|&l| l == id), "id {} is live already", id);
                            if let Some((reusable_at, _)) = released.remove(&id) {
                                prop_assert!(reusable_at <= evicted_at, "id {} reused before {}", id, reusable_at);
                            }
                            live.insert(s, id);
                        }
                    }
                    Op::Evict { advance } => {
                        wm += advance;
                        let n = t.evict_idle(wm, ttl);
                        evicted_at = evicted_at.max(wm);
                        let cutoff = wm - ttl;
                        let idle: Vec<(u8, u8)> = groups.iter().filter(|(_, &l)| l < cutoff).map(|(g, _)| *g).collect();
                        let mut count = 0;
                        for g in idle {
                            groups.remove(&g);
                            let gone: Vec<Series> = live.keys().filter(|s| (s.0, s.1) == g).copied().collect();
                            for s in gone {
                                let id = live.remove(&s).expect("listed");
                                released.insert(id, (wm + ttl, s));
                                count += 1;
                            }
                        }
                        prop_assert_eq!(n, count);
                    }
                }
                prop_assert_eq!(t.live_series(), live.len());
                for (&s, &id) in &live {
                    prop_assert!(key_is(t.key(id), s), "key of live id {}", id);
                }
                for (&id, &(reusable_at, s)) in &released {
                    if reusable_at > evicted_at {
                        prop_assert!(t.get(id).is_some_and(|k| key_is(k, s)), "key of quarantined id {}", id);
                    }
                }
            }
        }
    }
}

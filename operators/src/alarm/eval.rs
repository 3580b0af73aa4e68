//! Alarm rules evaluated on window results: which value of which target each rule watches, the
//! state of every (rule, target), and the timely operators that feed and run it.
//!
//! A rule watches either one field's window aggregate (per VM, or merged per MCIS, namespace or
//! CSP from the data's tags) or one group metric (the `groups` rows of one level). For each
//! closed window, each target with a value steps its [`AlarmState`]; each target without one, in
//! a window the *data's* watermark closed, steps it with silence (`None`). Windows that only a
//! stop or the end of the input closed are not silence. Every change of level becomes an
//! [`AlarmEvent`].
//!
//! Targets are named as follows:
//! - a VM: its agent key `ns/mcis/vm/csp`, followed by `[instance]` for a measurement with
//!   instances (a disk path, a network interface): `ns-01/mcis-01/vm-007/aws[/data]`;
//! - an MCIS: `ns/mcis`; a namespace: its id; a CSP: its type (as in the `groups` table);
//! - a group of a group-metric rule: the `group_id` of its `groups` rows.
//!
//! Evaluation is deterministic: states advance window by window in event time, targets in name
//! order, and partial values merge exactly (sums as double-doubles), so replaying the same input
//! gives the same events, with the same ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::{AlarmState, Level, RuleLevels, Transition};
use crate::aggregate::Agg;
use crate::groups::Level as GroupLevel;
use crate::model::{stable_hash, AlarmEvent, GroupRow, SeriesKey, SinkItem, WindowBatch};
use crate::window::Time;

/// How a field rule reduces a target's series to one value per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAggregate {
    /// Mean of every value of the target's series in the window.
    Mean,
    Min,
    Max,
    /// The latest value (by event time, then arrival).
    Last,
    /// Number of values.
    Count,
    /// Per-second rate of a counter, summed over the target's series. A series needs two samples
    /// in the window to have a rate.
    Rate,
}

/// Whose value a rule watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleTarget {
    Vm,
    Mcis,
    Ns,
    Csp,
    /// Every target of the watched value: every VM for a field rule, every group of its level
    /// for a group-metric rule.
    #[default]
    All,
}

impl RuleTarget {
    /// The group level of a group target; `None` for `vm` and `all`.
    pub fn level(self) -> Option<GroupLevel> {
        match self {
            RuleTarget::Mcis => Some(GroupLevel::Mcis),
            RuleTarget::Ns => Some(GroupLevel::Ns),
            RuleTarget::Csp => Some(GroupLevel::Csp),
            RuleTarget::Vm | RuleTarget::All => None,
        }
    }
}

/// The value a rule watches.
#[derive(Clone, Debug, PartialEq)]
pub enum Watch {
    Field { measurement: String, field: String, aggregate: RuleAggregate },
    Group { level: GroupLevel, metric: String },
}

/// One alarm rule, as the evaluator runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Identifies the rule in a [`RuleSet`] (assigned by [`LiveRules`]); a changed rule gets a
    /// new id, so its targets start afresh.
    pub id: u32,
    pub name: String,
    pub watch: Watch,
    pub target: RuleTarget,
    /// Only this VM (its `vm_id` or agent key) or group (its id; an MCIS also by its `mcis_id`).
    pub target_id: Option<String>,
    pub levels: RuleLevels,
    /// A template over `{rule}`, `{level}`, `{value}`, `{threshold}`, `{target}`, `{window_end}`.
    pub message: String,
    pub handlers: Vec<String>,
}

impl Rule {
    /// The target a series' aggregate counts toward, if the rule watches the series.
    pub fn field_target(&self, key: &SeriesKey) -> Option<String> {
        let agent = &key.agent;
        let wanted = |ids: &[&str]| self.target_id.as_ref().is_none_or(|want| ids.contains(&want.as_str()));
        match self.target {
            RuleTarget::Vm | RuleTarget::All => {
                let vm = agent.key();
                let target = if key.instance.is_empty() { vm.clone() } else { format!("{vm}[{}]", key.instance) };
                wanted(&[&agent.vm_id, &vm, &target]).then_some(target)
            }
            RuleTarget::Mcis => {
                if agent.mcis_id.is_empty() {
                    return None;
                }
                let id = format!("{}/{}", agent.ns_id, agent.mcis_id);
                wanted(&[&id, &agent.mcis_id]).then_some(id)
            }
            RuleTarget::Ns => (!agent.ns_id.is_empty() && wanted(&[&agent.ns_id])).then(|| agent.ns_id.to_string()),
            RuleTarget::Csp => {
                (!agent.csp_type.is_empty() && wanted(&[&agent.csp_type])).then(|| agent.csp_type.to_string())
            }
        }
    }

    /// The target of a `groups` row, if the rule watches it.
    pub fn group_target(&self, row: &GroupRow) -> Option<String> {
        let Watch::Group { level, metric } = &self.watch else { return None };
        if row.level != level.name() || row.metric != *metric {
            return None;
        }
        let wanted = match &self.target_id {
            None => true,
            Some(want) => {
                *want == row.group_id
                    || (*level == GroupLevel::Mcis && row.group_id.split_once('/').is_some_and(|(_, m)| m == want))
            }
        };
        wanted.then(|| row.group_id.clone())
    }

    fn aggregate(&self) -> Option<RuleAggregate> {
        match &self.watch {
            Watch::Field { aggregate, .. } => Some(*aggregate),
            Watch::Group { .. } => None,
        }
    }
}

/// The rules in force at one time.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Increases with every change.
    pub version: u64,
    pub rules: Vec<Rule>,
    /// The next id to give: ids are never reused, so a value still in flight for a removed rule
    /// is never taken for another.
    next_id: u32,
}

impl RuleSet {
    pub fn get(&self, id: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// The rules of a running dataflow, which may be replaced while it runs: the operators pick the
/// new set up at their next activation.
#[derive(Clone, Debug, Default)]
pub struct LiveRules {
    inner: Arc<std::sync::RwLock<Arc<RuleSet>>>,
}

impl LiveRules {
    /// The rules, numbered in order.
    pub fn new(mut rules: Vec<Rule>) -> Self {
        for (i, r) in rules.iter_mut().enumerate() {
            r.id = i as u32;
        }
        let next_id = rules.len() as u32;
        LiveRules { inner: Arc::new(std::sync::RwLock::new(Arc::new(RuleSet { version: 0, rules, next_id }))) }
    }

    pub fn current(&self) -> Arc<RuleSet> {
        self.inner.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces the rules. A rule that watches the same value of the same targets with the same
    /// thresholds as one in force keeps its id, and its targets their states (a new message or
    /// new handlers apply from the next event); a new or otherwise changed rule gets a new id and
    /// its targets start afresh.
    pub fn replace(&self, rules: Vec<Rule>) {
        let Ok(mut set) = self.inner.write() else { return };
        let mut next_id = set.next_id;
        let rules = rules
            .into_iter()
            .map(|mut r| {
                let same = set.rules.iter().find(|old| {
                    (&old.name, &old.watch, old.target, &old.target_id, old.levels)
                        == (&r.name, &r.watch, r.target, &r.target_id, r.levels)
                });
                r.id = match same {
                    Some(old) => old.id,
                    None => {
                        next_id += 1;
                        next_id - 1
                    }
                };
                r
            })
            .collect();
        *set = Arc::new(RuleSet { version: set.version + 1, rules, next_id });
    }
}

/// A sum kept as a double-double, so that partial sums merge to the same bits in any order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExactSum {
    hi: f64,
    lo: f64,
}

impl ExactSum {
    fn of(value: f64) -> Self {
        ExactSum { hi: value, lo: 0.0 }
    }

    fn add(&mut self, other: ExactSum) {
        let (s, e) = two_sum(self.hi, other.hi);
        let e = e + self.lo + other.lo;
        let (hi, lo) = two_sum(s, e);
        *self = ExactSum { hi, lo };
    }

    fn value(&self) -> f64 {
        self.hi + self.lo
    }
}

fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// Part of one target's value in one window, mergeable in any order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Partial {
    Mean {
        sum: ExactSum,
        count: u64,
    },
    Min(f64),
    Max(f64),
    Last {
        ts: i64,
        order: u64,
        value: f64,
    },
    Count(u64),
    /// The summed rates of the series that have one; `None` while none has.
    Rate(Option<ExactSum>),
    /// A group metric: already one value per group and window.
    Value(f64),
}

impl Partial {
    /// The part of one series' window aggregate.
    pub fn of_agg(aggregate: RuleAggregate, agg: &Agg) -> Self {
        match aggregate {
            RuleAggregate::Mean => {
                let (hi, lo) = agg.sum_parts();
                Partial::Mean { sum: ExactSum { hi, lo }, count: agg.count }
            }
            RuleAggregate::Min => Partial::Min(agg.min),
            RuleAggregate::Max => Partial::Max(agg.max),
            RuleAggregate::Last => Partial::Last { ts: agg.last_ts, order: agg.last_order, value: agg.last },
            RuleAggregate::Count => Partial::Count(agg.count),
            RuleAggregate::Rate => Partial::Rate(agg.rate().map(ExactSum::of)),
        }
    }

    /// Merges another part of the same target and window.
    pub fn merge(&mut self, other: &Partial) {
        match (self, other) {
            (Partial::Mean { sum, count }, Partial::Mean { sum: s, count: c }) => {
                sum.add(*s);
                *count += c;
            }
            (Partial::Min(a), Partial::Min(b)) => *a = a.min(*b),
            (Partial::Max(a), Partial::Max(b)) => *a = a.max(*b),
            (Partial::Last { ts, order, value }, Partial::Last { ts: t, order: o, value: v }) => {
                let newer = (*t, *o).cmp(&(*ts, *order)).then_with(|| v.total_cmp(value)).is_gt();
                if newer {
                    (*ts, *order, *value) = (*t, *o, *v);
                }
            }
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (Partial::Rate(a), Partial::Rate(b)) => match (a.as_mut(), b) {
                (Some(a), Some(b)) => a.add(*b),
                (None, Some(b)) => *a = Some(*b),
                _ => {}
            },
            // Two rows of one group and window: the rows are unique, so this does not happen;
            // keep the larger value to stay independent of arrival order.
            (Partial::Value(a), Partial::Value(b)) => *a = a.max(*b),
            _ => {}
        }
    }

    /// The target's value in the window; `None` when it has none (a rate without two samples).
    pub fn value(&self) -> Option<f64> {
        match *self {
            Partial::Mean { sum, count } => (count > 0).then(|| sum.value() / count as f64),
            Partial::Min(v) | Partial::Max(v) | Partial::Value(v) => Some(v),
            Partial::Last { value, .. } => Some(value),
            Partial::Count(n) => Some(n as f64),
            Partial::Rate(sum) => sum.map(|s| s.value()),
        }
    }
}

/// The value of one target of one rule in one window (or part of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmInput {
    /// Index of the rule.
    pub rule: u32,
    pub target: String,
    pub window_end: i64,
    pub partial: Partial,
}

/// The worker-routing hash of a (rule, target).
pub fn route(rule: u32, target: &str) -> u64 {
    stable_hash(&[target]) ^ (rule as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A level carried over from an earlier run.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredLevel {
    pub rule: String,
    pub target: String,
    pub level: Level,
}

struct Tracked {
    state: AlarmState,
    /// End of the last window this state has taken into account (value or silence), ns.
    last_end: i64,
}

/// The alarm states of the (rule, target)s one worker owns.
pub struct Evaluator {
    rules: Arc<RuleSet>,
    size: i64,
    /// Values of windows not closed yet, by window end.
    pending: BTreeMap<i64, HashMap<(u32, String), Partial>>,
    /// States that differ from a new one (others are dropped: a new state behaves the same).
    states: HashMap<(u32, String), Tracked>,
}

impl Evaluator {
    pub fn new(rules: Arc<RuleSet>, window_size: i64) -> Self {
        Evaluator { rules, size: window_size.max(1), pending: BTreeMap::new(), states: HashMap::new() }
    }

    /// Takes a new rule set: values and states of rules no longer in it are dropped.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        if rules.version == self.rules.version {
            return;
        }
        self.rules = rules;
        let rules = &self.rules;
        self.states.retain(|(id, _), _| rules.get(*id).is_some());
        for window in self.pending.values_mut() {
            window.retain(|(id, _), _| rules.get(*id).is_some());
        }
    }

    /// Carries on a level from an earlier run whose windows ending at or before `last_end` were
    /// evaluated. Levels of rules that no longer exist, and OK levels, are ignored.
    pub fn restore(&mut self, restored: &RestoredLevel, last_end: i64) {
        let Some(rule) = self.rules.rules.iter().find(|r| r.name == restored.rule) else { return };
        if restored.level == Level::Ok {
            return;
        }
        let tracked = Tracked { state: AlarmState::restored(restored.level), last_end };
        self.states.insert((rule.id, restored.target.clone()), tracked);
    }

    /// Adds (part of) a target's value in a window.
    pub fn add(&mut self, input: AlarmInput) {
        if self.rules.get(input.rule).is_none() {
            return;
        }
        let window = self.pending.entry(input.window_end).or_default();
        match window.entry((input.rule, input.target)) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(&input.partial),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(input.partial);
            }
        }
    }

    /// Forgets the values of windows not evaluated yet.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// (rule, target)s with a state that differs from a new one.
    pub fn tracked(&self) -> usize {
        self.states.len()
    }

    /// Evaluates the windows ending before `closed_before` (all of them at `i64::MAX`), then
    /// counts silence up to the last window that is both closed and closed by the data's
    /// watermark (window ends `<= closed_by_data`). Windows between two values of a target are
    /// silent whatever closed them; trailing windows without a value are silence only once the
    /// data's watermark closes them, so the end of the input or a stop raises no NODATA. Events
    /// are appended to `out`.
    pub fn advance(&mut self, closed_before: i64, closed_by_data: i64, out: &mut Vec<AlarmEvent>) {
        let size = self.size;
        let rules = self.rules.clone();
        while let Some(entry) = self.pending.first_entry() {
            let end = *entry.key();
            if end >= closed_before {
                break;
            }
            let mut inputs: Vec<_> = entry.remove().into_iter().collect();
            inputs.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, partial) in inputs {
                let Some(rule) = rules.get(key.0) else { continue };
                // Most targets are OK without a streak: they hold no state between windows.
                let mut fresh = Tracked { state: AlarmState::new(), last_end: end - size };
                let tracked = self.states.get_mut(&key).unwrap_or(&mut fresh);
                // The windows between its last one and this one were silent: they are closed, and
                // the target's next value is known.
                silence(rule, &key.1, tracked, end - size, size, out);
                if let Some(value) = partial.value() {
                    if let Some(t) = tracked.state.step(&rule.levels, Some(value)) {
                        out.push(event(rule, &key.1, end, t));
                    }
                }
                tracked.last_end = tracked.last_end.max(end);
                let keep = !tracked.state.is_fresh();
                match (keep, self.states.contains_key(&key)) {
                    (true, false) => {
                        self.states.insert(key, fresh);
                    }
                    (false, true) => {
                        self.states.remove(&key);
                    }
                    _ => {}
                }
            }
        }
        let upto = closed_by_data.min(closed_before.saturating_sub(1));
        // Only states that silence can still change: settled ones (NODATA, or OK) just wait.
        let mut keys: Vec<_> = self
            .states
            .iter()
            .filter(|(k, t)| {
                t.last_end.saturating_add(size) <= upto
                    && rules.get(k.0).is_some_and(|r| !t.state.silence_settled(&r.levels))
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for key in keys {
            let Some(rule) = rules.get(key.0) else { continue };
            if let Some(tracked) = self.states.get_mut(&key) {
                silence(rule, &key.1, tracked, upto, size, out);
            }
        }
    }
}

/// Steps `tracked` with silence for each window after its last one ending at or before `upto`.
fn silence(rule: &Rule, target: &str, tracked: &mut Tracked, upto: i64, size: i64, out: &mut Vec<AlarmEvent>) {
    while tracked.last_end.saturating_add(size) <= upto {
        if tracked.state.silence_settled(&rule.levels) {
            tracked.last_end += (upto - tracked.last_end) / size * size;
            break;
        }
        tracked.last_end += size;
        if let Some(t) = tracked.state.step(&rule.levels, None) {
            out.push(event(rule, target, tracked.last_end, t));
        }
    }
}

/// The event of a transition of `rule` on `target` at `time` (a window end).
pub fn event(rule: &Rule, target: &str, time: i64, t: Transition) -> AlarmEvent {
    let id = stable_hash(&[&rule.name, target, &time.to_string(), t.previous.as_str(), t.level.as_str()]);
    AlarmEvent {
        id: format!("{id:016x}"),
        time,
        rule: rule.name.clone(),
        target: target.to_string(),
        level: t.level.as_str().to_string(),
        previous_level: t.previous.as_str().to_string(),
        value: t.value,
        threshold: t.threshold,
        message: render_message(&rule.message, &rule.name, t.level, t.value, t.threshold, target, time),
        handlers: rule.handlers.clone(),
    }
}

/// A value as messages show it: 12 significant digits at most (binary noise hidden: 0.1 + 0.2
/// is `0.3`), no trailing zeros, exponent form below 1e-6 and from 1e15; `-` when absent.
pub fn format_value(value: Option<f64>) -> String {
    let Some(v) = value else { return "-".into() };
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let rounded: f64 = format!("{v:.11e}").parse().unwrap_or(v);
    if rounded.abs() >= 1e15 || rounded.abs() < 1e-6 {
        format!("{rounded:e}")
    } else {
        rounded.to_string()
    }
}

/// A window end as messages show it: RFC 3339, UTC.
pub fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Fills in a rule's message template.
pub fn render_message(
    template: &str,
    rule: &str,
    level: Level,
    value: Option<f64>,
    threshold: Option<f64>,
    target: &str,
    window_end: i64,
) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        match &after[..close] {
            "rule" => out.push_str(rule),
            "level" => out.push_str(level.as_str()),
            "value" => out.push_str(&format_value(value)),
            "threshold" => out.push_str(&format_value(threshold)),
            "target" => out.push_str(target),
            "window_end" => out.push_str(&format_time(window_end)),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Passes window batches on (moved, not copied) and, beside them, the inputs of the field rules:
/// each batch's series the rules watch, merged per (rule, target).
pub fn with_field_inputs<'scope>(
    windows: Stream<'scope, Time, Vec<WindowBatch>>,
    live: LiveRules,
) -> (Stream<'scope, Time, Vec<WindowBatch>>, Stream<'scope, Time, Vec<AlarmInput>>) {
    // measurement → field → rules watching it, of the rule set in force.
    let index = |rules: &RuleSet| {
        let mut watched: HashMap<String, HashMap<String, Vec<u32>>> = HashMap::new();
        for rule in &rules.rules {
            if let Watch::Field { measurement, field, .. } = &rule.watch {
                watched.entry(measurement.clone()).or_default().entry(field.clone()).or_default().push(rule.id);
            }
        }
        watched
    };
    let mut rules = live.current();
    let mut watched = index(&rules);
    let mut builder = OperatorBuilder::new("AlarmFieldInputs".to_owned(), windows.scope());
    let mut input = builder.new_input(windows, Pipeline);
    let (batches_out, batches) = builder.new_output::<Vec<WindowBatch>>();
    let (inputs_out, inputs) = builder.new_output::<Vec<AlarmInput>>();
    let mut batches_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<WindowBatch>>>::from(batches_out);
    let mut inputs_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<AlarmInput>>>::from(inputs_out);
    builder.build(move |_caps| {
        move |_frontiers| {
            let current = live.current();
            if current.version != rules.version {
                watched = index(&current);
                rules = current;
            }
            let mut batches_out = batches_out.activate();
            let mut inputs_out = inputs_out.activate();
            input.for_each(|cap, data| {
                let time = *cap.least().expect("a time");
                let inputs_cap = cap.delayed(&time, 1);
                let mut session = inputs_out.session(&inputs_cap);
                for batch in data.iter().filter(|_| !watched.is_empty()) {
                    let mut merged: HashMap<(u32, String), Partial> = HashMap::new();
                    for (key, agg) in &batch.rows {
                        let Some(by_field) = watched.get(&*key.measurement) else { continue };
                        let Some(ids) = by_field.get(&*key.field) else { continue };
                        for &i in ids {
                            let Some(rule) = rules.get(i) else { continue };
                            let (Some(target), Some(aggregate)) = (rule.field_target(key), rule.aggregate()) else {
                                continue;
                            };
                            let partial = Partial::of_agg(aggregate, agg);
                            match merged.entry((i, target)) {
                                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(&partial),
                                std::collections::hash_map::Entry::Vacant(e) => {
                                    e.insert(partial);
                                }
                            }
                        }
                    }
                    let window_end = batch.window_end;
                    session.give_iterator(merged.into_iter().map(|((rule, target), partial)| AlarmInput {
                        rule,
                        target,
                        window_end,
                        partial,
                    }));
                }
                drop(session);
                let batch_cap = cap.delayed(&time, 0);
                batches_out.session(&batch_cap).give_container(data);
            });
        }
    });
    (batches, inputs)
}

/// Passes sink items on and, beside them, the inputs of the group-metric rules: the `groups`
/// rows they watch.
pub fn with_group_inputs<'scope>(
    items: Stream<'scope, Time, Vec<SinkItem>>,
    live: LiveRules,
) -> (Stream<'scope, Time, Vec<SinkItem>>, Stream<'scope, Time, Vec<AlarmInput>>) {
    let mut builder = OperatorBuilder::new("AlarmGroupInputs".to_owned(), items.scope());
    let mut input = builder.new_input(items, Pipeline);
    let (items_out, items) = builder.new_output::<Vec<SinkItem>>();
    let (inputs_out, inputs) = builder.new_output::<Vec<AlarmInput>>();
    let mut items_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SinkItem>>>::from(items_out);
    let mut inputs_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<AlarmInput>>>::from(inputs_out);
    builder.build(move |_caps| {
        move |_frontiers| {
            let rules = live.current();
            let mut items_out = items_out.activate();
            let mut inputs_out = inputs_out.activate();
            input.for_each(|cap, data| {
                let time = *cap.least().expect("a time");
                let inputs_cap = cap.delayed(&time, 1);
                let mut session = inputs_out.session(&inputs_cap);
                for item in data.iter() {
                    let SinkItem::Groups(rows) = item else { continue };
                    for row in rows {
                        for rule in &rules.rules {
                            if let Some(target) = rule.group_target(row) {
                                let partial = Partial::Value(row.value);
                                session.give(AlarmInput { rule: rule.id, target, window_end: row.window_end, partial });
                            }
                        }
                    }
                }
                drop(session);
                let items_cap = cap.delayed(&time, 0);
                items_out.session(&items_cap).give_container(data);
            });
        }
    });
    (items, inputs)
}

/// Evaluates the rules: each (rule, target) on the worker its [`route`] picks. `closed_by_data`
/// tells the watermark the data has reached (ns); only windows it closed count as silence.
/// Only windows ending before `evaluable_before()` are evaluated: a job being stopped closes its
/// open windows with part of their data, and those the job that resumes reads again are left to
/// it (they are dropped when the input ends). `restored` levels (from an earlier run whose windows ending at or before
/// `restored_end` were evaluated) are carried on.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<'scope>(
    inputs: Stream<'scope, Time, Vec<AlarmInput>>,
    live: LiveRules,
    window_size: i64,
    closed_by_data: Arc<dyn Fn() -> i64 + Send + Sync>,
    evaluable_before: Arc<dyn Fn() -> i64 + Send + Sync>,
    restored: Arc<Vec<RestoredLevel>>,
    restored_end: i64,
) -> Stream<'scope, Time, Vec<AlarmEvent>> {
    let scope = inputs.scope();
    let (index, peers) = (scope.index(), scope.peers() as u64);
    let pact = Exchange::new(|i: &AlarmInput| route(i.rule, &i.target));
    inputs.unary_frontier::<CapacityContainerBuilder<Vec<AlarmEvent>>, _, _, _>(pact, "Alarms", move |cap, _| {
        let rules = live.current();
        let mut evaluator = Evaluator::new(rules.clone(), window_size);
        for r in restored.iter() {
            let Some(rule) = rules.rules.iter().find(|x| x.name == r.rule) else { continue };
            if route(rule.id, &r.target) % peers == index as u64 {
                evaluator.restore(r, restored_end);
            }
        }
        let mut held: Option<Capability<Time>> = Some(cap);
        let mut out = Vec::new();
        move |(input, frontier), output| {
            evaluator.set_rules(live.current());
            input.for_each(|_cap, data| {
                for i in data.drain(..) {
                    evaluator.add(i);
                }
            });
            let low = frontier.frontier().iter().min().copied();
            let closed_before = low.map_or(i64::MAX, |t| t.min(i64::MAX as u64) as i64);
            evaluator.advance(closed_before.min(evaluable_before()), closed_by_data(), &mut out);
            if low.is_none() {
                evaluator.discard_pending();
            }
            if let Some(cap) = &held {
                if !out.is_empty() {
                    output.session(cap).give_iterator(out.drain(..));
                }
            }
            match low {
                Some(low) => {
                    if let Some(cap) = held.as_mut() {
                        if *cap.time() < low {
                            cap.downgrade(&low);
                        }
                    }
                }
                None => held = None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Comparison;
    use crate::model::AgentTags;
    use proptest::prelude::*;

    const S: i64 = 10_000_000_000;

    fn levels() -> RuleLevels {
        RuleLevels {
            comparison: Comparison::Gt,
            warn: Some(80.0),
            crit: Some(95.0),
            warn_windows: 2,
            crit_windows: 1,
            warn_reset: Some(70.0),
            crit_reset: Some(90.0),
            nodata_after: 3,
        }
    }

    fn rule(target: RuleTarget, aggregate: RuleAggregate) -> Rule {
        Rule {
            id: 0,
            name: "cpu_high".into(),
            watch: Watch::Field { measurement: "cpu".into(), field: "usage_user".into(), aggregate },
            target,
            target_id: None,
            levels: levels(),
            message: "{rule} {level} on {target}: {value} (threshold {threshold}) at {window_end}".into(),
            handlers: vec!["ops".into()],
        }
    }

    fn set(rules: Vec<Rule>) -> Arc<RuleSet> {
        LiveRules::new(rules).current()
    }

    fn input(target: &str, end: i64, value: f64) -> AlarmInput {
        AlarmInput { rule: 0, target: target.into(), window_end: end, partial: Partial::Value(value) }
    }

    fn summary(events: &[AlarmEvent]) -> Vec<(i64, String, String, String)> {
        events.iter().map(|e| (e.time / S, e.target.clone(), e.previous_level.clone(), e.level.clone())).collect()
    }

    fn s(t: i64, target: &str, from: &str, to: &str) -> (i64, String, String, String) {
        (t, target.into(), from.into(), to.into())
    }

    #[test]
    fn windows_in_order_then_silence_closed_by_data_gives_nodata() {
        let mut ev = Evaluator::new(set(vec![rule(RuleTarget::Vm, RuleAggregate::Mean)]), S);
        let mut out = Vec::new();
        // Arrival order does not matter: windows are evaluated by end.
        for (w, v) in [(3, 85.0), (1, 50.0), (2, 85.0), (4, 97.0)] {
            ev.add(input("vm-a", w * S, v));
        }
        ev.advance(5 * S, 4 * S, &mut out);
        assert_eq!(summary(&out), vec![s(3, "vm-a", "OK", "WARNING"), s(4, "vm-a", "WARNING", "CRITICAL")]);
        let crit = &out[1];
        assert_eq!((crit.value, crit.threshold), (Some(97.0), Some(95.0)));
        assert_eq!(crit.message, "cpu_high CRITICAL on vm-a: 97 (threshold 95) at 1970-01-01T00:00:40Z");
        assert_eq!(crit.handlers, vec!["ops".to_string()]);
        out.clear();
        // Windows 5..=9 are closed, but the data's watermark reached only window 6: no NODATA yet.
        ev.advance(10 * S, 6 * S, &mut out);
        assert!(out.is_empty());
        // Once the data closes window 7 (the third silent one), NODATA, dated by that window.
        ev.advance(10 * S, 9 * S, &mut out);
        assert_eq!(summary(&out), vec![s(7, "vm-a", "CRITICAL", "NODATA")]);
        assert_eq!(out[0].value, None);
        out.clear();
        ev.add(input("vm-a", 12 * S, 60.0));
        ev.advance(13 * S, 12 * S, &mut out);
        assert_eq!(summary(&out), vec![s(12, "vm-a", "NODATA", "OK")]);
        assert_eq!(ev.tracked(), 0, "an OK target without streaks holds no state");
    }

    #[test]
    fn same_input_gives_same_ids_and_different_transitions_differ() {
        let run = || {
            let mut ev = Evaluator::new(set(vec![rule(RuleTarget::Vm, RuleAggregate::Mean)]), S);
            let mut out = Vec::new();
            for (w, v) in [(1, 99.0), (2, 50.0), (3, 99.0)] {
                ev.add(input("vm-a", w * S, v));
            }
            ev.advance(i64::MAX, 3 * S, &mut out);
            out
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let mut ids: Vec<_> = a.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), 3);
        ids.dedup();
        assert_eq!(ids.len(), 3);
        assert!(a.iter().all(|e| e.id.len() == 16));
    }

    #[test]
    fn replaced_rules_keep_the_states_of_unchanged_ones_only() {
        let live = LiveRules::new(vec![rule(RuleTarget::Vm, RuleAggregate::Mean)]);
        let mut ev = Evaluator::new(live.current(), S);
        let mut out = Vec::new();
        ev.add(input("vm-a", S, 99.0));
        ev.advance(2 * S, S, &mut out);
        assert_eq!(summary(&out), vec![s(1, "vm-a", "OK", "CRITICAL")]);
        // The same rule again, and a new one: the state stays, the new rule gets a new id.
        let other = Rule { name: "other".into(), ..rule(RuleTarget::Vm, RuleAggregate::Mean) };
        live.replace(vec![rule(RuleTarget::Vm, RuleAggregate::Mean), other]);
        let ids: Vec<_> = live.current().rules.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![0, 1]);
        ev.set_rules(live.current());
        assert_eq!(ev.tracked(), 1);
        // A new message or new handlers keep the rule and its states.
        let mut reworded = rule(RuleTarget::Vm, RuleAggregate::Mean);
        reworded.message = "{target} is {level}".into();
        reworded.handlers.clear();
        live.replace(vec![reworded]);
        assert_eq!(live.current().rules[0].id, 0);
        ev.set_rules(live.current());
        assert_eq!(ev.tracked(), 1);
        // A changed threshold is a new rule: its targets start afresh.
        let mut changed = rule(RuleTarget::Vm, RuleAggregate::Mean);
        changed.levels.crit = Some(99.5);
        live.replace(vec![changed]);
        assert_eq!(live.current().rules[0].id, 2);
        ev.set_rules(live.current());
        assert_eq!(ev.tracked(), 0);
        out.clear();
        ev.add(AlarmInput { rule: 0, ..input("vm-a", 2 * S, 99.9) }); // the old id: ignored
        ev.add(AlarmInput { rule: 2, ..input("vm-a", 2 * S, 99.9) });
        ev.advance(3 * S, 2 * S, &mut out);
        assert_eq!(summary(&out), vec![s(2, "vm-a", "OK", "CRITICAL")]);
    }

    #[test]
    fn restored_level_is_carried_on_without_a_new_event() {
        let mut ev = Evaluator::new(set(vec![rule(RuleTarget::Vm, RuleAggregate::Mean)]), S);
        let restored = RestoredLevel { rule: "cpu_high".into(), target: "vm-a".into(), level: Level::Critical };
        ev.restore(&restored, 5 * S);
        let mut out = Vec::new();
        ev.add(input("vm-a", 6 * S, 92.0)); // inside the hysteresis band: stays CRITICAL
        ev.add(input("vm-a", 7 * S, 60.0));
        ev.advance(8 * S, 7 * S, &mut out);
        assert_eq!(summary(&out), vec![s(7, "vm-a", "CRITICAL", "OK")]);
        assert_eq!(out[0].threshold, Some(90.0));
    }

    fn agent(ns: &str, mcis: &str, vm: &str) -> Arc<AgentTags> {
        Arc::new(AgentTags {
            ns_id: ns.into(),
            mcis_id: mcis.into(),
            vm_id: vm.into(),
            csp_type: "aws".into(),
            os_type: "ubuntu".into(),
        })
    }

    fn key(agent: &Arc<AgentTags>, instance: &str) -> SeriesKey {
        SeriesKey::new(agent.clone(), "cpu".into(), instance.into(), "usage_user".into())
    }

    #[test]
    fn targets_are_named_and_filtered() {
        let a = agent("ns-1", "mcis-1", "vm-1");
        let mut r = rule(RuleTarget::Vm, RuleAggregate::Mean);
        assert_eq!(r.field_target(&key(&a, "")).as_deref(), Some("ns-1/mcis-1/vm-1/aws"));
        assert_eq!(r.field_target(&key(&a, "cpu0")).as_deref(), Some("ns-1/mcis-1/vm-1/aws[cpu0]"));
        r.target_id = Some("vm-1".into());
        assert!(r.field_target(&key(&a, "")).is_some());
        r.target_id = Some("vm-2".into());
        assert!(r.field_target(&key(&a, "")).is_none());
        let mut m = rule(RuleTarget::Mcis, RuleAggregate::Mean);
        assert_eq!(m.field_target(&key(&a, "")).as_deref(), Some("ns-1/mcis-1"));
        m.target_id = Some("mcis-1".into());
        assert_eq!(m.field_target(&key(&a, "")).as_deref(), Some("ns-1/mcis-1"));
        let c = rule(RuleTarget::Csp, RuleAggregate::Mean);
        assert_eq!(c.field_target(&key(&a, "")).as_deref(), Some("aws"));
        let g = Rule {
            watch: Watch::Group { level: GroupLevel::Mcis, metric: "cpu_util_mean".into() },
            target_id: Some("mcis-1".into()),
            ..rule(RuleTarget::Mcis, RuleAggregate::Mean)
        };
        let row = |group: &str, metric: &str| GroupRow {
            window_start: 0,
            window_end: S,
            level: "mcis".into(),
            group_id: group.into(),
            metric: metric.into(),
            value: 1.0,
            vm_count: 1,
        };
        assert_eq!(g.group_target(&row("ns-1/mcis-1", "cpu_util_mean")).as_deref(), Some("ns-1/mcis-1"));
        assert_eq!(g.group_target(&row("ns-1/mcis-2", "cpu_util_mean")), None);
        assert_eq!(g.group_target(&row("ns-1/mcis-1", "mem_util_mean")), None);
    }

    #[test]
    fn partials_merge_to_the_aggregate_of_all_values() {
        let a = Agg::of(1, 1, 10.0);
        let mut b = Agg::of(2, 2, 30.0);
        b.add(3, 3, 50.0);
        for (aggregate, want) in [
            (RuleAggregate::Mean, Some(30.0)),
            (RuleAggregate::Min, Some(10.0)),
            (RuleAggregate::Max, Some(50.0)),
            (RuleAggregate::Last, Some(50.0)),
            (RuleAggregate::Count, Some(3.0)),
        ] {
            let mut p = Partial::of_agg(aggregate, &a);
            p.merge(&Partial::of_agg(aggregate, &b));
            assert_eq!(p.value(), want, "{aggregate:?}");
        }
        // A counter: the rate needs two samples in a series; rates of series add up.
        let mut c = Agg::of(0, 1, 100.0);
        c.add(10_000_000_000, 2, 200.0);
        let mut p = Partial::of_agg(RuleAggregate::Rate, &a);
        assert_eq!(p.value(), None);
        p.merge(&Partial::of_agg(RuleAggregate::Rate, &c));
        p.merge(&Partial::of_agg(RuleAggregate::Rate, &c));
        assert_eq!(p.value(), Some(20.0));
    }

    #[test]
    fn messages_fill_placeholders_and_keep_unknown_braces() {
        let text = render_message(
            "{rule}/{level}/{value}/{threshold}/{target}/{x}/{",
            "r",
            Level::Ok,
            Some(1.25),
            None,
            "t",
            0,
        );
        assert_eq!(text, "r/OK/1.25/-/t/{x}/{");
        assert_eq!(format_value(Some(83.333333)), "83.333333");
        assert_eq!(format_value(Some(0.1 + 0.2)), "0.3");
        assert_eq!(format_value(Some(90.0)), "90");
    }

    /// Per target, the window values with `None` for silent windows, from its first value to the
    /// last window, stepped through a plain [`AlarmState`].
    fn reference(rules: &[Rule], values: &BTreeMap<(u32, String), BTreeMap<i64, f64>>, last: i64) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        for ((rule, target), windows) in values {
            let r = &rules[*rule as usize];
            let mut state = AlarmState::new();
            let first = *windows.keys().next().expect("a window");
            let mut end = first;
            while end <= last {
                if let Some(t) = state.step(&r.levels, windows.get(&end).copied()) {
                    out.push(event(r, target, end, t));
                }
                end += S;
            }
        }
        out
    }

    fn sorted(mut events: Vec<AlarmEvent>) -> Vec<AlarmEvent> {
        events.sort_by(|a, b| (a.time, &a.rule, &a.target).cmp(&(b.time, &b.rule, &b.target)));
        events
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// However the values are split into partials, delivered and closed, the events equal
        /// those of each target's full window sequence stepped through the state machine.
        #[test]
        fn evaluator_matches_per_target_reference(
            warn in 0u8..6, crit_extra in 0u8..4, warn_windows in 1u32..3, crit_windows in 1u32..3,
            nodata_after in 1u32..4,
            cells in prop::collection::vec((0u32..2, 0u8..4, 1i64..25, 0u8..10, 0u8..3), 0..120),
            steps in prop::collection::vec((1i64..6, 0i64..4), 1..12),
        ) {
            let mk = |name: &str| Rule {
                name: name.into(),
                levels: RuleLevels {
                    comparison: Comparison::Ge,
                    warn: Some(warn as f64),
                    crit: Some((warn + crit_extra) as f64),
                    warn_windows,
                    crit_windows,
                    warn_reset: Some(warn as f64 - 1.5),
                    crit_reset: None,
                    nodata_after,
                },
                ..rule(RuleTarget::Vm, RuleAggregate::Max)
            };
            let rules = set(vec![mk("a"), mk("b")]);
            // Each cell is a part of a target's window: values merge by max.
            let mut values: BTreeMap<(u32, String), BTreeMap<i64, f64>> = BTreeMap::new();
            let mut inputs = Vec::new();
            for (rule, target, window, value, _) in &cells {
                let (target, end, value) = (format!("t{target}"), window * S, *value as f64);
                let v = values.entry((*rule, target.clone())).or_default().entry(end).or_insert(value);
                *v = v.max(value);
                inputs.push(AlarmInput { rule: *rule, target, window_end: end, partial: Partial::Max(value) });
            }
            let last = cells.iter().map(|c| c.2).max().unwrap_or(0) * S;
            let want = sorted(reference(&rules.rules, &values, last));

            // Deliver windows in order of their end, closing in random steps, the data's
            // watermark lagging by a random number of windows; finally everything is closed.
            inputs.sort_by_key(|i| i.window_end);
            let mut ev = Evaluator::new(rules.clone(), S);
            let mut got = Vec::new();
            let mut next = 0;
            let mut closed = 0i64;
            for (step, lag) in &steps {
                closed += step * S;
                while next < inputs.len() && inputs[next].window_end < closed + 3 * S {
                    ev.add(inputs[next].clone());
                    next += 1;
                }
                ev.advance(closed, closed.min(last) - lag * S, &mut got);
            }
            for i in inputs.drain(next..) {
                ev.add(i);
            }
            ev.advance(i64::MAX, last, &mut got);
            prop_assert_eq!(sorted(got), want);
        }
    }
}

//! A brute-force reference for group metrics, rankings and agent health, as defined in
//! `docs/groups.md`, for tests: the unit tests here and the end-to-end tests compare the engine
//! with it. It is written to be obviously right, not fast: every window is computed from all of
//! its raw points with plain loops and ordered maps, and every registry lookup scans the whole
//! update list.
//!
//! Choices where the document leaves room, and what the reference assumes of its input:
//!
//! - Points are raw values (not window aggregates); a point belongs to the window
//!   `[k·size, (k+1)·size)` holding its timestamp. Timestamps are unique within a series, so
//!   "first" and "last" are the values with the smallest and largest timestamp.
//! - The registry record of an agent key as of event time `t` is its latest update with
//!   `time ≤ t` (`time: None` counts as the very beginning; of two updates with the same time the
//!   later in the slice wins). When that update is a removal, or there is none, the record is built
//!   from the agent's tags ([`AgentRecord::from_tags`]), enabled. The key of an update is its
//!   `key` field, never the record's fields. A VM is placed in a window by its record as of the
//!   window's start.
//! - The tags of a VM (key `tags.key()`) in a window are the least (`Ord`) tags among its points
//!   of that window; agents are expected to report one `os_type` per key.
//! - Level `mcis` needs a non-empty `mcis_id` and names the group `ns_id/mcis_id`; the other
//!   levels need their own field non-empty.
//! - `cpu_util_*`: the `cpu.usage_idle` series of instance `cpu-total`, else the one without
//!   instance; per VM `100 − sum/count`. `mem_util_*`: every `mem.used_percent` record of the VM,
//!   pooled over instances. Group means are `sum over VMs / number of VMs with a value`.
//! - `rtt_ms_mean` (level `mcis` only): a ping series of a VM (measurement `ping`, field
//!   `average_response_ms`, instance = its `url` tag) counts when its instance equals the non-empty
//!   `public_ip` or `vm_id` of the record of *another VM reporting in the same window* whose record
//!   names the same MCIS group. Per VM the mean is pooled over the records of all such series.
//! - `[[groups.metric]]` with aggregate `rate`: per instance [`counter_rate`] of its first and
//!   last values (whether or not the field is listed in `[counters]`), summed over the instances
//!   that have one. `count`, `sum` and `last` are summed over instances, `min`/`max` the least and
//!   greatest, `mean` pooled.
//! - Rankings order, per window and level, the groups with a row of the metric (`f64::total_cmp`,
//!   ties by group id).
//! - Health is judged per agent key. An agent turns healthy with a window that has its data when
//!   its record as of that window's start is enabled: `unknown → healthy` ("first data") or
//!   `unhealthy → healthy` ("data again"), at the window's start. Only a healthy agent turns
//!   unhealthy: with last data in the window starting at `s` and no data in the windows before
//!   `U = s + (n+1)·size`, at `U`, when `U ≤ closed_until` and its record as of `U` is enabled,
//!   reason `no data for {n} windows`. A disabled agent's data still moves `s`. An agent silent
//!   at `U` while disabled is not judged again until its next data. An agent is not watched at
//!   `U` when the latest update of its key with time ≤ `U` is a removal with time > `s` (removed
//!   after its last data, not registered again); data after a removal registers it again, and a
//!   removal leaves its health state as it was. The row names the agent by its key's parts
//!   (`nsId, mcisId, vmId, cspType` of its tags), not by its record.
//! - Groups, rankings and "data" health changes are computed for every window with data (the end
//!   of a finite input closes all of them); `closed_until` limits only the silence timers.

#![doc(hidden)]

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::counter_rate;
use crate::groups::{GroupsConfig, Level, OverVms, PerVm};
use crate::model::{AgentTags, GroupRow, HealthRow, RankRow};
use crate::registry::{AgentRecord, AgentState, RegistryUpdate};

/// One raw value of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct RawPoint {
    pub tags: AgentTags,
    pub measurement: String,
    pub instance: String,
    pub field: String,
    /// Event time, ns since the epoch.
    pub ts: i64,
    pub value: f64,
}

/// The rows the engine is expected to write to `groups`, `rankings` and `agent_health`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    /// Sorted by window start, level, group id, metric.
    pub groups: Vec<GroupRow>,
    /// Sorted by window start, level, metric, order, rank.
    pub rankings: Vec<RankRow>,
    /// Sorted by time and agent; the changes of one agent at one time in the order they happen.
    pub health: Vec<HealthRow>,
}

/// The `groups`, `rankings` and `agent_health` rows for `points` and the registry history
/// `registry`, with silence timers `U ≤ closed_until` (ns) fired.
pub fn expected(
    points: &[RawPoint],
    registry: &[RegistryUpdate],
    config: &GroupsConfig,
    closed_until: i64,
) -> Expected {
    assert!(config.window > 0, "window size must be positive");
    let windows = collect_windows(points, registry, config.window);
    let groups = group_rows(&windows, config);
    let rankings = rank_rows(&groups, config);
    let health = health_rows(&windows, registry, config, closed_until);
    Expected { groups, rankings, health }
}

/// (measurement, instance, field)
type SeriesId = (String, String, String);

/// (timestamp, value), sorted by timestamp.
type Samples = Vec<(i64, f64)>;

/// One VM's data in one window, with its record as of the window's start.
struct VmWindow {
    tags: AgentTags,
    record: AgentRecord,
    series: BTreeMap<SeriesId, Samples>,
}

/// Window start → agent key → the VM's data in that window.
type Windows = BTreeMap<i64, BTreeMap<String, VmWindow>>;

fn window_start(ts: i64, size: i64) -> i64 {
    ts.div_euclid(size) * size
}

/// The latest update of `key` with `time ≤ t`, if any.
fn latest_update<'a>(registry: &'a [RegistryUpdate], key: &str, t: i64) -> Option<&'a RegistryUpdate> {
    let mut latest: Option<(i64, &RegistryUpdate)> = None;
    for update in registry {
        if update.key != key {
            continue;
        }
        let from = update.time.unwrap_or(i64::MIN);
        if from > t {
            continue;
        }
        let later = match latest {
            None => true,
            Some((best, _)) => from >= best,
        };
        if later {
            latest = Some((from, update));
        }
    }
    latest.map(|(_, update)| update)
}

/// The registry's own record of `key` as of event time `t`: `None` when the key has no update
/// with `time ≤ t` or the latest such update removes it.
fn registry_record<'a>(registry: &'a [RegistryUpdate], key: &str, t: i64) -> Option<&'a AgentRecord> {
    latest_update(registry, key, t).and_then(|update| update.record.as_ref())
}

/// The record an agent counts with as of event time `t`: the registry's, else one built from
/// its tags.
fn record_as_of(registry: &[RegistryUpdate], tags: &AgentTags, t: i64) -> AgentRecord {
    match registry_record(registry, &tags.key(), t) {
        Some(record) => record.clone(),
        None => AgentRecord::from_tags(tags),
    }
}

fn collect_windows(points: &[RawPoint], registry: &[RegistryUpdate], size: i64) -> Windows {
    let mut windows: Windows = BTreeMap::new();
    for p in points {
        let start = window_start(p.ts, size);
        let vms = windows.entry(start).or_default();
        let vm = vms.entry(p.tags.key()).or_insert_with(|| VmWindow {
            tags: p.tags.clone(),
            record: AgentRecord::default(),
            series: BTreeMap::new(),
        });
        if p.tags < vm.tags {
            vm.tags = p.tags.clone();
        }
        let id = (p.measurement.clone(), p.instance.clone(), p.field.clone());
        vm.series.entry(id).or_default().push((p.ts, p.value));
    }
    for (start, vms) in windows.iter_mut() {
        for vm in vms.values_mut() {
            vm.record = record_as_of(registry, &vm.tags, *start);
            for samples in vm.series.values_mut() {
                samples.sort_by_key(|s| s.0);
            }
        }
    }
    windows
}

/// The group a record names at a level, if any.
fn group_of(record: &AgentRecord, level: Level) -> Option<String> {
    let id = match level {
        Level::Ns => record.ns_id.clone(),
        Level::Mcis => {
            if record.mcis_id.is_empty() {
                return None;
            }
            format!("{}/{}", record.ns_id, record.mcis_id)
        }
        Level::Csp => record.csp_type.clone(),
        Level::Os => record.os_type.clone(),
    };
    if id.is_empty() {
        None
    } else {
        Some(id)
    }
}

fn sum_of(samples: &Samples) -> f64 {
    let mut sum = 0.0;
    for s in samples {
        sum += s.1;
    }
    sum
}

fn first_of(samples: &Samples) -> (i64, f64) {
    samples[0]
}

fn last_of(samples: &Samples) -> (i64, f64) {
    samples[samples.len() - 1]
}

fn rate_of(samples: &Samples) -> Option<f64> {
    let (first_ts, first) = first_of(samples);
    let (last_ts, last) = last_of(samples);
    counter_rate(first_ts, first, last_ts, last)
}

/// The series of `measurement.field` of one VM, every instance.
fn series_of<'a>(
    vm: &'a VmWindow,
    measurement: &'a str,
    field: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Samples)> {
    vm.series
        .iter()
        .filter(move |((m, _, f), _)| m == measurement && f == field)
        .map(|((_, instance, _), samples)| (instance.as_str(), samples))
}

/// Sum over instances of the last value of `measurement.field`.
fn sum_of_lasts(vm: &VmWindow, measurement: &str, field: &str) -> Option<f64> {
    let mut total = None;
    for (_, samples) in series_of(vm, measurement, field) {
        *total.get_or_insert(0.0) += last_of(samples).1;
    }
    total
}

/// Sum over instances of the rate of `measurement.field`; instances without a rate add nothing.
fn sum_of_rates(vm: &VmWindow, measurement: &str, field: &str) -> Option<f64> {
    let mut total = None;
    for (_, samples) in series_of(vm, measurement, field) {
        if let Some(rate) = rate_of(samples) {
            *total.get_or_insert(0.0) += rate;
        }
    }
    total
}

/// Mean over every record of `measurement.field`, all instances pooled.
fn pooled_mean(vm: &VmWindow, measurement: &str, field: &str) -> Option<f64> {
    let (mut sum, mut count) = (0.0, 0usize);
    for (_, samples) in series_of(vm, measurement, field) {
        sum += sum_of(samples);
        count += samples.len();
    }
    if count == 0 {
        None
    } else {
        Some(sum / count as f64)
    }
}

fn cpu_util(vm: &VmWindow) -> Option<f64> {
    let total = ("cpu".to_string(), "cpu-total".to_string(), "usage_idle".to_string());
    let plain = ("cpu".to_string(), String::new(), "usage_idle".to_string());
    let samples = vm.series.get(&total).or_else(|| vm.series.get(&plain))?;
    Some(100.0 - sum_of(samples) / samples.len() as f64)
}

/// Whether a ping target names another VM reporting in the window in the MCIS group `mcis`.
fn is_peer(target: &str, own_key: &str, mcis: &str, vms: &BTreeMap<String, VmWindow>) -> bool {
    if target.is_empty() {
        return false;
    }
    for (key, other) in vms {
        if key == own_key {
            continue;
        }
        if group_of(&other.record, Level::Mcis).as_deref() != Some(mcis) {
            continue;
        }
        let by_ip = !other.record.public_ip.is_empty() && other.record.public_ip == target;
        let by_id = !other.record.vm_id.is_empty() && other.record.vm_id == target;
        if by_ip || by_id {
            return true;
        }
    }
    false
}

fn rtt(key: &str, vm: &VmWindow, vms: &BTreeMap<String, VmWindow>) -> Option<f64> {
    let mcis = group_of(&vm.record, Level::Mcis)?;
    let (mut sum, mut count) = (0.0, 0usize);
    for (target, samples) in series_of(vm, "ping", "average_response_ms") {
        if is_peer(target, key, &mcis, vms) {
            sum += sum_of(samples);
            count += samples.len();
        }
    }
    if count == 0 {
        None
    } else {
        Some(sum / count as f64)
    }
}

fn custom_value(vm: &VmWindow, measurement: &str, field: &str, aggregate: PerVm) -> Option<f64> {
    let mut value: Option<f64> = None;
    let (mut pooled_sum, mut pooled_count) = (0.0, 0usize);
    for (_, samples) in series_of(vm, measurement, field) {
        let per_instance = match aggregate {
            PerVm::Count => Some(samples.len() as f64),
            PerVm::Sum => Some(sum_of(samples)),
            PerVm::Min => Some(samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min)),
            PerVm::Max => Some(samples.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max)),
            PerVm::Last => Some(last_of(samples).1),
            PerVm::Rate => rate_of(samples),
            PerVm::Mean => {
                pooled_sum += sum_of(samples);
                pooled_count += samples.len();
                None
            }
        };
        let Some(x) = per_instance else { continue };
        value = Some(match (value, aggregate) {
            (None, _) => x,
            (Some(v), PerVm::Min) => v.min(x),
            (Some(v), PerVm::Max) => v.max(x),
            (Some(v), _) => v + x,
        });
    }
    if aggregate == PerVm::Mean && pooled_count > 0 {
        value = Some(pooled_sum / pooled_count as f64);
    }
    value
}

/// A VM's value of one metric in one window, from its key, its data and every VM of the window.
type PerVmValue<'a> = Box<dyn Fn(&str, &VmWindow, &BTreeMap<String, VmWindow>) -> Option<f64> + 'a>;

/// One group metric: its name, how the VMs' values combine, whether it exists only at level
/// `mcis`, and the per-VM value.
struct MetricDef<'a> {
    name: String,
    over_vms: OverVms,
    mcis_only: bool,
    per_vm: PerVmValue<'a>,
}

fn metric_defs(config: &GroupsConfig) -> Vec<MetricDef<'_>> {
    fn def<'a>(
        name: &str,
        over_vms: OverVms,
        per_vm: impl Fn(&str, &VmWindow, &BTreeMap<String, VmWindow>) -> Option<f64> + 'a,
    ) -> MetricDef<'a> {
        MetricDef { name: name.to_string(), over_vms, mcis_only: false, per_vm: Box::new(per_vm) }
    }
    let mut defs = vec![
        def("cpu_util_mean", OverVms::Mean, |_, vm, _| cpu_util(vm)),
        def("cpu_util_max", OverVms::Max, |_, vm, _| cpu_util(vm)),
        def("mem_util_mean", OverVms::Mean, |_, vm, _| pooled_mean(vm, "mem", "used_percent")),
        def("mem_util_max", OverVms::Max, |_, vm, _| pooled_mean(vm, "mem", "used_percent")),
        def("disk_used_bytes", OverVms::Sum, |_, vm, _| sum_of_lasts(vm, "disk", "used")),
        def("disk_total_bytes", OverVms::Sum, |_, vm, _| sum_of_lasts(vm, "disk", "total")),
        def("net_bytes_in_per_s", OverVms::Sum, |_, vm, _| sum_of_rates(vm, "net", "bytes_recv")),
        def("net_bytes_out_per_s", OverVms::Sum, |_, vm, _| sum_of_rates(vm, "net", "bytes_sent")),
        def("net_packets_in_per_s", OverVms::Sum, |_, vm, _| sum_of_rates(vm, "net", "packets_recv")),
        def("net_packets_out_per_s", OverVms::Sum, |_, vm, _| sum_of_rates(vm, "net", "packets_sent")),
        def("processes", OverVms::Sum, |_, vm, _| sum_of_lasts(vm, "processes", "total")),
        def("vcpu_total", OverVms::Sum, |_, vm, _| vm.record.vcpu),
        def("vcpu_mean", OverVms::Mean, |_, vm, _| vm.record.vcpu),
        def("memory_gib_total", OverVms::Sum, |_, vm, _| vm.record.memory_gib),
        def("memory_gib_mean", OverVms::Mean, |_, vm, _| vm.record.memory_gib),
        def("cost_per_hour_total", OverVms::Sum, |_, vm, _| vm.record.cost_per_hour),
    ];
    let mut rtt_def = def("rtt_ms_mean", OverVms::Mean, rtt);
    rtt_def.mcis_only = true;
    defs.push(rtt_def);
    for custom in &config.metrics {
        defs.push(def(&custom.name, custom.over_vms, move |_, vm, _| {
            custom_value(vm, &custom.measurement, &custom.field, custom.aggregate)
        }));
    }
    defs
}

fn combine(values: &[f64], over_vms: OverVms) -> f64 {
    let mut acc = values[0];
    for &v in &values[1..] {
        acc = match over_vms {
            OverVms::Sum | OverVms::Mean => acc + v,
            OverVms::Max => acc.max(v),
            OverVms::Min => acc.min(v),
        };
    }
    if over_vms == OverVms::Mean {
        acc / values.len() as f64
    } else {
        acc
    }
}

fn group_rows(windows: &Windows, config: &GroupsConfig) -> Vec<GroupRow> {
    let defs = metric_defs(config);
    let mut rows = Vec::new();
    for (&start, vms) in windows {
        for &level in &config.levels {
            // Group id → keys of the VMs placed in it.
            let mut members: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for (key, vm) in vms {
                if let Some(group) = group_of(&vm.record, level) {
                    members.entry(group).or_default().push(key);
                }
            }
            for (group, keys) in &members {
                for def in &defs {
                    if def.mcis_only && level != Level::Mcis {
                        continue;
                    }
                    let mut values = Vec::new();
                    for key in keys {
                        if let Some(v) = (def.per_vm)(key, &vms[*key], vms) {
                            values.push(v);
                        }
                    }
                    if values.is_empty() {
                        continue;
                    }
                    rows.push(GroupRow {
                        window_start: start,
                        window_end: start + config.window,
                        level: level.name().to_string(),
                        group_id: group.clone(),
                        metric: def.name.clone(),
                        value: combine(&values, def.over_vms),
                        vm_count: keys.len() as u64,
                    });
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.window_start, &a.level, &a.group_id, &a.metric).cmp(&(b.window_start, &b.level, &b.group_id, &b.metric))
    });
    rows
}

/// The metrics ranked per window and level.
const RANKED: [&str; 2] = ["cpu_util_mean", "mem_util_mean"];

fn rank_rows(groups: &[GroupRow], config: &GroupsConfig) -> Vec<RankRow> {
    // (window start, level, metric) → (group id, value) of every group with that metric.
    let mut candidates: BTreeMap<(i64, String, String), Vec<(String, f64)>> = BTreeMap::new();
    for row in groups {
        if RANKED.contains(&row.metric.as_str()) {
            let slot = (row.window_start, row.level.clone(), row.metric.clone());
            candidates.entry(slot).or_default().push((row.group_id.clone(), row.value));
        }
    }
    let mut rows = Vec::new();
    for ((start, level, metric), groups) in candidates {
        let mut top = groups.clone();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut bottom = groups;
        bottom.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        for (order, ranked) in [("top", top), ("bottom", bottom)] {
            for (i, (group_id, value)) in ranked.into_iter().take(config.k).enumerate() {
                rows.push(RankRow {
                    window_start: start,
                    window_end: start + config.window,
                    level: level.clone(),
                    metric: metric.clone(),
                    order: order.to_string(),
                    rank: i as u32 + 1,
                    group_id,
                    value,
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.window_start, &a.level, &a.metric, &a.order, a.rank).cmp(&(
            b.window_start,
            &b.level,
            &b.metric,
            &b.order,
            b.rank,
        ))
    });
    rows
}

fn health_rows(
    windows: &Windows,
    registry: &[RegistryUpdate],
    config: &GroupsConfig,
    closed_until: i64,
) -> Vec<HealthRow> {
    // Agent key → its tags and the starts of the windows with its data.
    let mut agents: BTreeMap<String, (AgentTags, BTreeSet<i64>)> = BTreeMap::new();
    for (&start, vms) in windows {
        for (key, vm) in vms {
            let entry = agents.entry(key.clone()).or_insert_with(|| (vm.tags.clone(), BTreeSet::new()));
            if vm.tags < entry.0 {
                entry.0 = vm.tags.clone();
            }
            entry.1.insert(start);
        }
    }
    let n = config.unhealthy_after as i64;
    let reason = format!("no data for {} windows", config.unhealthy_after);
    let mut rows = Vec::new();
    for (tags, starts) in agents.values() {
        let enabled = |t: i64| record_as_of(registry, tags, t).state == AgentState::Enable;
        // Removed after the start of its last window with data `s` and not registered again by
        // an update by `u`: not watched.
        let watched = |s: i64, u: i64| match latest_update(registry, &tags.key(), u) {
            Some(update) => update.record.is_some() || update.time.unwrap_or(i64::MIN) <= s,
            None => true,
        };
        let row = |time: i64, from: &str, to: &str, reason: &str| HealthRow {
            time,
            ns_id: tags.ns_id.to_string(),
            mcis_id: tags.mcis_id.to_string(),
            vm_id: tags.vm_id.to_string(),
            csp_type: tags.csp_type.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
        };
        let mut health = "unknown";
        let mut last: Option<i64> = None;
        // Each window with data, then the end (`None`), preceded by the silence since the last.
        let mut next_windows: Vec<Option<i64>> = starts.iter().map(|&s| Some(s)).collect();
        next_windows.push(None);
        for next in next_windows {
            if let Some(s) = last {
                let u = s + (n + 1) * config.window;
                let silent_until_u = match next {
                    Some(w) => w >= u,
                    None => true,
                };
                if silent_until_u && u <= closed_until && health == "healthy" && enabled(u) && watched(s, u) {
                    rows.push(row(u, "healthy", "unhealthy", &reason));
                    health = "unhealthy";
                }
            }
            let Some(w) = next else { break };
            if enabled(w) {
                match health {
                    "unknown" => rows.push(row(w, "unknown", "healthy", "first data")),
                    "unhealthy" => rows.push(row(w, "unhealthy", "healthy", "data again")),
                    _ => {}
                }
                health = "healthy";
            }
            last = Some(w);
        }
    }
    // Stable: the changes of one agent at one time keep the order in which they happen.
    rows.sort_by(|a, b| {
        (a.time, &a.ns_id, &a.mcis_id, &a.vm_id, &a.csp_type).cmp(&(
            b.time,
            &b.ns_id,
            &b.mcis_id,
            &b.vm_id,
            &b.csp_type,
        ))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::CustomMetric;
    use crate::time::NANOS;

    const S: i64 = NANOS;

    fn tags(ns: &str, mcis: &str, vm: &str) -> AgentTags {
        AgentTags {
            ns_id: ns.into(),
            mcis_id: mcis.into(),
            vm_id: vm.into(),
            csp_type: "aws".into(),
            os_type: "ubuntu".into(),
        }
    }

    fn point(t: &AgentTags, measurement: &str, instance: &str, field: &str, secs: i64, value: f64) -> RawPoint {
        RawPoint {
            tags: t.clone(),
            measurement: measurement.into(),
            instance: instance.into(),
            field: field.into(),
            ts: secs * S,
            value,
        }
    }

    fn idle(t: &AgentTags, secs: i64, value: f64) -> RawPoint {
        point(t, "cpu", "cpu-total", "usage_idle", secs, value)
    }

    fn update(t: &AgentTags, time: Option<i64>, edit: impl FnOnce(&mut AgentRecord)) -> RegistryUpdate {
        let mut record = AgentRecord::from_tags(t);
        edit(&mut record);
        RegistryUpdate { key: t.key(), time, record: Some(record) }
    }

    fn config() -> GroupsConfig {
        GroupsConfig { window: 10 * S, unhealthy_after: 3, ..GroupsConfig::default() }
    }

    fn value(e: &Expected, start_s: i64, level: &str, group: &str, metric: &str) -> Option<(f64, u64)> {
        e.groups
            .iter()
            .find(|r| r.window_start == start_s * S && r.level == level && r.group_id == group && r.metric == metric)
            .map(|r| (r.value, r.vm_count))
    }

    fn health(e: &Expected, vm: &str) -> Vec<(i64, String, String, String)> {
        e.health
            .iter()
            .filter(|r| r.vm_id == vm)
            .map(|r| (r.time / S, r.from.clone(), r.to.clone(), r.reason.clone()))
            .collect()
    }

    fn h(t: i64, from: &str, to: &str, reason: &str) -> (i64, String, String, String) {
        (t, from.into(), to.into(), reason.into())
    }

    #[test]
    fn moved_vm_counts_in_old_then_new_mcis_never_twice() {
        let a = tags("ns-1", "m1", "vm-a");
        let b = tags("ns-1", "m1", "vm-b");
        let c = tags("ns-1", "m2", "vm-c");
        let registry = vec![
            update(&a, None, |r| r.vcpu = Some(2.0)),
            update(&b, None, |r| r.vcpu = Some(4.0)),
            update(&c, None, |r| r.vcpu = Some(8.0)),
            // Holds from the window starting at 30 s: not window-aligned.
            update(&a, Some(25 * S), |r| {
                r.mcis_id = "m2".into();
                r.vcpu = Some(2.0);
            }),
        ];
        let mut points = Vec::new();
        for secs in (0..60).step_by(2) {
            for t in [&a, &b, &c] {
                points.push(idle(t, secs, 50.0));
            }
        }
        let e = expected(&points, &registry, &config(), 60 * S);
        for start in (0..60).step_by(10) {
            let m1 = value(&e, start, "mcis", "ns-1/m1", "vcpu_total").unwrap();
            let m2 = value(&e, start, "mcis", "ns-1/m2", "vcpu_total").unwrap();
            if start < 30 {
                assert_eq!((m1, m2), ((6.0, 2), (8.0, 1)), "window {start}");
            } else {
                assert_eq!((m1, m2), ((4.0, 1), (10.0, 2)), "window {start}");
            }
            assert_eq!(value(&e, start, "ns", "ns-1", "vcpu_total"), Some((14.0, 3)));
            let counted: u64 = e
                .groups
                .iter()
                .filter(|r| r.window_start == start * S && r.level == "mcis" && r.metric == "cpu_util_mean")
                .map(|r| r.vm_count)
                .sum();
            assert_eq!(counted, 3, "window {start}");
        }
        // The key stays: one agent, healthy once; its timer (U = 90 s) is past `closed_until`.
        assert_eq!(health(&e, "vm-a"), vec![h(0, "unknown", "healthy", "first data")]);
    }

    #[test]
    fn silence_of_n_windows_turns_unhealthy_at_u_and_healthy_with_next_data() {
        let steady = tags("ns", "m", "steady");
        let exact = tags("ns", "m", "exact");
        let longer = tags("ns", "m", "longer");
        let short = tags("ns", "m", "short");
        let ends = tags("ns", "m", "ends");
        let mut points = Vec::new();
        for secs in (0..200).step_by(5) {
            points.push(idle(&steady, secs, 1.0));
            // Last data in the window at 20 s, silent 30..60 (3 windows), back at 60.
            if !(30..60).contains(&secs) {
                points.push(idle(&exact, secs, 1.0));
            }
            // Silent 30..80: unhealthy at 60, back at 80.
            if !(30..80).contains(&secs) {
                points.push(idle(&longer, secs, 1.0));
            }
            // Silent 30..50 (2 windows): nothing.
            if !(30..50).contains(&secs) {
                points.push(idle(&short, secs, 1.0));
            }
            // Stops after the window at 100: U = 140.
            if secs < 110 {
                points.push(idle(&ends, secs, 1.0));
            }
        }
        let e = expected(&points, &[], &config(), 150 * S);
        let reason = "no data for 3 windows";
        let first = h(0, "unknown", "healthy", "first data");
        assert_eq!(health(&e, "steady"), vec![first.clone()]);
        assert_eq!(
            health(&e, "exact"),
            vec![first.clone(), h(60, "healthy", "unhealthy", reason), h(60, "unhealthy", "healthy", "data again")]
        );
        assert_eq!(
            health(&e, "longer"),
            vec![first.clone(), h(60, "healthy", "unhealthy", reason), h(80, "unhealthy", "healthy", "data again")]
        );
        assert_eq!(health(&e, "short"), vec![first.clone()]);
        assert_eq!(health(&e, "ends"), vec![first.clone(), h(140, "healthy", "unhealthy", reason)]);
        // A timer after `closed_until` does not fire (the end of the input is not silence).
        let e = expected(&points, &[], &config(), 139 * S);
        assert_eq!(health(&e, "ends"), vec![first.clone()]);
        assert_eq!(health(&e, "exact").len(), 3);
    }

    #[test]
    fn disabled_agent_raises_nothing_but_its_data_counts_as_seen() {
        let a = tags("ns", "m", "a");
        let off = tags("ns", "m", "off");
        let registry = vec![
            // Disabled from 20 s, enabled again from 55 s.
            update(&a, Some(20 * S), |r| r.state = AgentState::Disable),
            update(&a, Some(55 * S), |r| r.state = AgentState::Enable),
            update(&off, None, |r| r.state = AgentState::Disable),
        ];
        let mut points = Vec::new();
        for secs in (0..30).step_by(5) {
            points.push(idle(&a, secs, 1.0));
            points.push(idle(&off, secs, 1.0));
        }
        let e = expected(&points, &registry, &config(), i64::MAX);
        // Data in the window at 20 (while disabled) moves U from 50 to 60, enabled by then.
        assert_eq!(
            health(&e, "a"),
            vec![h(0, "unknown", "healthy", "first data"), h(60, "healthy", "unhealthy", "no data for 3 windows")]
        );
        assert_eq!(health(&e, "off"), vec![]);
        // Disabled agents still count in their groups.
        assert_eq!(value(&e, 20, "ns", "ns", "cpu_util_mean"), Some((99.0, 2)));
        // Disabled at U: no change.
        let registry = vec![update(&a, Some(20 * S), |r| r.state = AgentState::Disable)];
        let e = expected(&points, &registry, &config(), i64::MAX);
        assert_eq!(health(&e, "a"), vec![h(0, "unknown", "healthy", "first data")]);
    }

    #[test]
    fn removed_agent_is_not_watched_until_registered_again() {
        let gone = tags("ns", "m", "gone");
        let mid_window = tags("ns", "m", "mid-window");
        let before_data = tags("ns", "m", "before-data");
        let again = tags("ns", "m", "again");
        let removal = |t: &AgentTags, secs: i64| RegistryUpdate { key: t.key(), time: Some(secs * S), record: None };
        let registry = vec![
            // After the last window with data (20): not watched at U = 60.
            removal(&gone, 35),
            // Inside the last window, after its start: applies from the window at 30, not watched.
            removal(&mid_window, 25),
            // Before the last window's data: the data registers it again, watched.
            removal(&before_data, 15),
            // Registered again by an update before U: watched.
            removal(&again, 35),
            update(&again, Some(50 * S), |_| {}),
        ];
        let mut points = Vec::new();
        for secs in (0..30).step_by(5) {
            for t in [&gone, &mid_window, &before_data, &again] {
                points.push(idle(t, secs, 1.0));
            }
        }
        let e = expected(&points, &registry, &config(), i64::MAX);
        let first = h(0, "unknown", "healthy", "first data");
        let unhealthy = h(60, "healthy", "unhealthy", "no data for 3 windows");
        assert_eq!(health(&e, "gone"), vec![first.clone()]);
        assert_eq!(health(&e, "mid-window"), vec![first.clone()]);
        assert_eq!(health(&e, "before-data"), vec![first.clone(), unhealthy.clone()]);
        assert_eq!(health(&e, "again"), vec![first.clone(), unhealthy.clone()]);
    }

    #[test]
    fn counter_reset_counts_from_zero() {
        let a = tags("ns", "m", "a");
        let b = tags("ns", "m", "b");
        let points = vec![
            point(&a, "net", "eth0", "bytes_recv", 0, 100.0),
            point(&a, "net", "eth0", "bytes_recv", 2, 300.0),
            // Reset: the increase is counted from zero, 40 over 4 s.
            point(&a, "net", "eth0", "bytes_recv", 4, 40.0),
            point(&a, "net", "eth1", "bytes_recv", 0, 0.0),
            point(&a, "net", "eth1", "bytes_recv", 5, 50.0),
            // One timestamp: no rate, contributes nothing.
            point(&a, "net", "eth2", "bytes_recv", 5, 1e9),
            point(&b, "net", "eth0", "bytes_recv", 1, 10.0),
            point(&b, "net", "eth0", "bytes_recv", 9, 90.0),
            // Only one timestamp in the window: b has no packets rate, a has none either.
            point(&b, "net", "eth0", "packets_recv", 9, 90.0),
        ];
        let e = expected(&points, &[], &config(), i64::MAX);
        assert_eq!(value(&e, 0, "ns", "ns", "net_bytes_in_per_s"), Some((10.0 + 10.0 + 10.0, 2)));
        assert_eq!(value(&e, 0, "ns", "ns", "net_packets_in_per_s"), None);
        // A window with no metric values still counts the VMs, but writes no rows.
        assert!(e.groups.iter().all(|r| r.metric == "net_bytes_in_per_s"));
    }

    #[test]
    fn builtin_metrics_of_one_window() {
        let a = tags("ns", "m", "a");
        let b = tags("ns", "m", "b");
        let mut b_other = tags("ns2", "m", "b");
        b_other.os_type = "".into();
        let registry = vec![
            update(&a, None, |r| {
                r.vcpu = Some(2.0);
                r.memory_gib = Some(4.0);
                r.cost_per_hour = Some(0.5);
            }),
            update(&b, None, |r| {
                r.vcpu = Some(6.0);
                r.cost_per_hour = Some(1.5);
                r.os_type = String::new();
            }),
        ];
        let points = vec![
            idle(&a, 1, 90.0),
            idle(&a, 2, 80.0),
            // Per-CPU instances are ignored.
            point(&a, "cpu", "cpu0", "usage_idle", 1, 0.0),
            // Without a cpu-total instance, the series without instance.
            point(&b, "cpu", "", "usage_idle", 1, 40.0),
            point(&a, "mem", "", "used_percent", 1, 10.0),
            point(&a, "mem", "", "used_percent", 2, 20.0),
            point(&b, "mem", "", "used_percent", 3, 60.0),
            point(&a, "disk", "/", "used", 1, 5.0),
            point(&a, "disk", "/", "used", 2, 7.0),
            point(&a, "disk", "/data", "used", 2, 100.0),
            point(&b, "disk", "/", "total", 2, 1000.0),
            point(&a, "processes", "", "total", 1, 30.0),
            point(&a, "processes", "", "total", 3, 33.0),
        ];
        let e = expected(&points, &registry, &config(), i64::MAX);
        let ns = |metric| value(&e, 0, "ns", "ns", metric);
        assert_eq!(ns("cpu_util_mean"), Some(((15.0 + 60.0) / 2.0, 2)));
        assert_eq!(ns("cpu_util_max"), Some((60.0, 2)));
        assert_eq!(ns("mem_util_mean"), Some(((15.0 + 60.0) / 2.0, 2)));
        assert_eq!(ns("mem_util_max"), Some((60.0, 2)));
        assert_eq!(ns("disk_used_bytes"), Some((107.0, 2)));
        assert_eq!(ns("disk_total_bytes"), Some((1000.0, 2)));
        assert_eq!(ns("processes"), Some((33.0, 2)));
        assert_eq!(ns("vcpu_total"), Some((8.0, 2)));
        assert_eq!(ns("vcpu_mean"), Some((4.0, 2)));
        assert_eq!(ns("memory_gib_total"), Some((4.0, 2)));
        assert_eq!(ns("memory_gib_mean"), Some((4.0, 2)));
        assert_eq!(ns("cost_per_hour_total"), Some((2.0, 2)));
        assert_eq!(ns("rtt_ms_mean"), None);
        // b's record has no os_type: it is not counted at level os.
        assert_eq!(value(&e, 0, "os", "ubuntu", "vcpu_total"), Some((2.0, 1)));
        assert_eq!(value(&e, 0, "csp", "aws", "vcpu_total"), Some((8.0, 2)));
        assert_eq!(value(&e, 0, "mcis", "ns/m", "vcpu_total"), Some((8.0, 2)));
        // Group metrics follow the record, not the tags: b_other has no record, its tags count.
        let e = expected(&[idle(&b_other, 1, 0.0)], &registry, &config(), i64::MAX);
        assert_eq!(value(&e, 0, "ns", "ns2", "cpu_util_mean"), Some((100.0, 1)));
        assert!(e.groups.iter().all(|r| r.level != "os"));
    }

    #[test]
    fn rtt_counts_pings_to_peers_reporting_in_the_same_mcis() {
        let a = tags("ns", "m", "a");
        let b = tags("ns", "m", "b");
        let c = tags("ns", "other", "c");
        let silent = tags("ns", "m", "silent");
        let registry = vec![
            update(&a, None, |r| r.public_ip = "10.0.0.1".into()),
            update(&b, None, |r| r.public_ip = "10.0.0.2".into()),
            update(&c, None, |r| r.public_ip = "10.0.0.3".into()),
            update(&silent, None, |r| r.public_ip = "10.0.0.4".into()),
        ];
        let ping =
            |t: &AgentTags, url: &str, secs: i64, ms: f64| point(t, "ping", url, "average_response_ms", secs, ms);
        let points = vec![
            ping(&a, "10.0.0.2", 1, 2.0),
            ping(&a, "10.0.0.2", 3, 4.0),
            // By vm_id.
            ping(&a, "b", 5, 6.0),
            // Another MCIS, itself, a VM not reporting, an unknown address: not counted.
            ping(&a, "10.0.0.3", 1, 100.0),
            ping(&a, "10.0.0.1", 1, 100.0),
            ping(&a, "10.0.0.4", 1, 100.0),
            ping(&a, "10.9.9.9", 1, 100.0),
            ping(&b, "10.0.0.1", 1, 10.0),
            ping(&c, "10.0.0.1", 1, 100.0),
        ];
        let e = expected(&points, &registry, &config(), i64::MAX);
        assert_eq!(value(&e, 0, "mcis", "ns/m", "rtt_ms_mean"), Some(((4.0 + 10.0) / 2.0, 2)));
        assert_eq!(value(&e, 0, "mcis", "ns/other", "rtt_ms_mean"), None);
        assert!(e.groups.iter().all(|r| r.metric != "rtt_ms_mean" || r.level == "mcis"));
    }

    #[test]
    fn custom_metric_per_instance_then_over_vms() {
        let a = tags("ns", "m", "a");
        let b = tags("ns", "m", "b");
        let points = vec![
            point(&a, "nginx", "80", "requests", 0, 100.0),
            point(&a, "nginx", "80", "requests", 4, 140.0),
            point(&a, "nginx", "443", "requests", 2, 10.0),
            point(&a, "nginx", "443", "requests", 6, 5.0),
            point(&b, "nginx", "80", "requests", 0, 0.0),
            point(&b, "nginx", "80", "requests", 8, 80.0),
        ];
        let metric = |name: &str, aggregate, over_vms| CustomMetric {
            name: name.into(),
            measurement: "nginx".into(),
            field: "requests".into(),
            aggregate,
            over_vms,
        };
        let config = GroupsConfig {
            metrics: vec![
                metric("tps", PerVm::Rate, OverVms::Sum),
                metric("tps_max", PerVm::Rate, OverVms::Max),
                metric("n", PerVm::Count, OverVms::Sum),
                metric("mean", PerVm::Mean, OverVms::Min),
                metric("low", PerVm::Min, OverVms::Mean),
                metric("last", PerVm::Last, OverVms::Sum),
            ],
            ..config()
        };
        let e = expected(&points, &[], &config, i64::MAX);
        let ns = |m| value(&e, 0, "ns", "ns", m).map(|v| v.0);
        // a: 40/4 + 5/4 (reset) = 11.25; b: 80/8 = 10.
        assert_eq!(ns("tps"), Some(21.25));
        assert_eq!(ns("tps_max"), Some(11.25));
        assert_eq!(ns("n"), Some(6.0));
        assert_eq!(ns("mean"), Some(40.0));
        assert_eq!(ns("low"), Some(2.5));
        assert_eq!(ns("last"), Some(225.0));
    }

    #[test]
    fn rankings_top_and_bottom_k_with_ties_by_group_id() {
        let mut points = Vec::new();
        for (i, (csp, used)) in [("a", 50.0), ("b", 70.0), ("c", 50.0), ("d", 10.0)].into_iter().enumerate() {
            let mut t = tags("ns", "m", &format!("vm{i}"));
            t.csp_type = csp.into();
            points.push(point(&t, "mem", "", "used_percent", 1, used));
        }
        let config = GroupsConfig { k: 3, levels: vec![Level::Csp, Level::Ns], ..config() };
        let e = expected(&points, &[], &config, i64::MAX);
        let ranks = |level: &str, order: &str| -> Vec<(u32, String, f64)> {
            e.rankings
                .iter()
                .filter(|r| r.level == level && r.order == order && r.metric == "mem_util_mean")
                .map(|r| (r.rank, r.group_id.clone(), r.value))
                .collect()
        };
        assert_eq!(ranks("csp", "top"), vec![(1, "b".into(), 70.0), (2, "a".into(), 50.0), (3, "c".into(), 50.0)]);
        assert_eq!(ranks("csp", "bottom"), vec![(1, "d".into(), 10.0), (2, "a".into(), 50.0), (3, "c".into(), 50.0)]);
        assert_eq!(ranks("ns", "top"), vec![(1, "ns".into(), 45.0)]);
        assert_eq!(ranks("ns", "bottom"), vec![(1, "ns".into(), 45.0)]);
        // No cpu data, no cpu rankings; levels not configured are absent.
        assert!(e.rankings.iter().all(|r| r.metric == "mem_util_mean" && r.level != "mcis"));
        assert!(e.groups.iter().all(|r| r.level == "csp" || r.level == "ns"));
        assert!(e.rankings.iter().all(|r| r.window_end == r.window_start + 10 * S));
    }

    #[test]
    fn removed_record_falls_back_to_tags() {
        let a = tags("ns", "m", "a");
        let registry = vec![
            update(&a, None, |r| {
                r.mcis_id = "moved".into();
                r.vcpu = Some(2.0);
            }),
            RegistryUpdate { key: a.key(), time: Some(20 * S), record: None },
        ];
        let points: Vec<_> = (0..40).step_by(5).map(|s| idle(&a, s, 0.0)).collect();
        let e = expected(&points, &registry, &config(), i64::MAX);
        assert_eq!(value(&e, 10, "mcis", "ns/moved", "vcpu_total"), Some((2.0, 1)));
        assert_eq!(value(&e, 20, "mcis", "ns/moved", "cpu_util_mean"), None);
        assert_eq!(value(&e, 20, "mcis", "ns/m", "cpu_util_mean"), Some((100.0, 1)));
        assert_eq!(value(&e, 20, "mcis", "ns/m", "vcpu_total"), None);
    }
}

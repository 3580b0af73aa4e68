//! Per-VM window values and the group metrics and rankings computed from them: plain functions,
//! used by the differential operators in [`super::dataflow`].

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::{GroupsConfig, Level, OverVms, PerVm};
use crate::aggregate::Agg;
use crate::model::SeriesKey;
use crate::registry::AgentRecord;

/// An `f64` with a total order (`f64::total_cmp`), so that it can live in differential collections.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// A sum and a count, for pooled means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pool {
    pub sum: F64,
    pub count: u64,
}

impl Pool {
    fn add(&mut self, sum: f64, count: u64) {
        self.sum.0 += sum;
        self.count += count;
    }

    fn merge(&mut self, other: &Pool) {
        self.add(other.sum.0, other.count)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum.0 / self.count as f64)
    }
}

fn add_opt(slot: &mut Option<F64>, value: Option<f64>) {
    if let Some(v) = value {
        slot.get_or_insert(F64(0.0)).0 += v;
    }
}

/// A `[[groups.metric]]` field of one VM, over its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FieldPart {
    pub count: u64,
    pub sum: F64,
    pub min: F64,
    pub max: F64,
    /// Sum over instances of their last value.
    pub last: F64,
    /// Sum over instances of their rate, when any has one.
    pub rate: Option<F64>,
}

impl FieldPart {
    fn of(agg: &Agg) -> Self {
        FieldPart {
            count: agg.count,
            sum: F64(agg.sum()),
            min: F64(agg.min),
            max: F64(agg.max),
            last: F64(agg.last),
            rate: agg.rate().map(F64),
        }
    }

    fn merge(&mut self, o: &FieldPart) {
        self.count += o.count;
        self.sum.0 += o.sum.0;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.last.0 += o.last.0;
        add_opt(&mut self.rate, o.rate.map(|r| r.0));
    }

    fn value(&self, aggregate: PerVm) -> Option<f64> {
        match aggregate {
            PerVm::Count => Some(self.count as f64),
            PerVm::Sum => Some(self.sum.0),
            PerVm::Min => Some(self.min.0),
            PerVm::Max => Some(self.max.0),
            PerVm::Mean => (self.count > 0).then(|| self.sum.0 / self.count as f64),
            PerVm::Last => Some(self.last.0),
            PerVm::Rate => self.rate.map(|r| r.0),
        }
    }
}

/// The net fields summed as rates, in the order of [`NET_METRICS`].
const NET_FIELDS: [&str; 4] = ["bytes_recv", "bytes_sent", "packets_recv", "packets_sent"];
const NET_METRICS: [&str; 4] =
    ["net_bytes_in_per_s", "net_bytes_out_per_s", "net_packets_in_per_s", "net_packets_out_per_s"];

/// The built-in group metrics, in the order they are written.
pub const BUILTIN_METRICS: &[&str] = &[
    "cpu_util_mean",
    "cpu_util_max",
    "mem_util_mean",
    "mem_util_max",
    "disk_used_bytes",
    "disk_total_bytes",
    "net_bytes_in_per_s",
    "net_bytes_out_per_s",
    "net_packets_in_per_s",
    "net_packets_out_per_s",
    "processes",
    "vcpu_total",
    "vcpu_mean",
    "memory_gib_total",
    "memory_gib_mean",
    "cost_per_hour_total",
    "rtt_ms_mean",
];

/// The metrics ranked per level.
pub const RANKED_METRICS: [&str; 2] = ["cpu_util_mean", "mem_util_mean"];

/// What one VM's series contribute to its group metrics in one window. Partial values from
/// several workers merge into the VM's whole window.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmPartial {
    /// `cpu.usage_idle` of the `cpu-total` instance, and of the series without instance.
    pub cpu_total: Pool,
    pub cpu_plain: Pool,
    pub mem: Pool,
    pub disk_used: Option<F64>,
    pub disk_total: Option<F64>,
    pub net: [Option<F64>; 4],
    pub processes: Option<F64>,
    /// `ping.average_response_ms` by target (`url`), sorted by target.
    pub pings: Vec<(String, Pool)>,
    /// One slot per `[[groups.metric]]`.
    pub custom: Vec<Option<FieldPart>>,
}

impl VmPartial {
    pub fn new(config: &GroupsConfig) -> Self {
        VmPartial { custom: vec![None; config.metrics.len()], ..VmPartial::default() }
    }

    /// Adds one series' window aggregate.
    pub fn add(&mut self, key: &SeriesKey, agg: &Agg, config: &GroupsConfig) {
        let (m, f) = (&*key.measurement, &*key.field);
        match (m, f) {
            ("cpu", "usage_idle") => match &*key.instance {
                "cpu-total" => self.cpu_total.add(agg.sum(), agg.count),
                "" => self.cpu_plain.add(agg.sum(), agg.count),
                _ => {}
            },
            ("mem", "used_percent") => self.mem.add(agg.sum(), agg.count),
            ("disk", "used") => add_opt(&mut self.disk_used, Some(agg.last)),
            ("disk", "total") => add_opt(&mut self.disk_total, Some(agg.last)),
            ("net", _) => {
                if let Some(i) = NET_FIELDS.iter().position(|n| *n == f) {
                    add_opt(&mut self.net[i], agg.rate());
                }
            }
            ("processes", "total") => add_opt(&mut self.processes, Some(agg.last)),
            ("ping", "average_response_ms") => {
                let pool = Pool { sum: F64(agg.sum()), count: agg.count };
                self.add_ping(&key.instance, &pool);
            }
            _ => {}
        }
        for (i, metric) in config.metrics.iter().enumerate() {
            if metric.measurement == m && metric.field == f {
                let part = FieldPart::of(agg);
                match &mut self.custom[i] {
                    Some(p) => p.merge(&part),
                    slot => *slot = Some(part),
                }
            }
        }
    }

    fn add_ping(&mut self, target: &str, pool: &Pool) {
        match self.pings.binary_search_by(|(t, _)| t.as_str().cmp(target)) {
            Ok(i) => self.pings[i].1.merge(pool),
            Err(i) => self.pings.insert(i, (target.to_string(), *pool)),
        }
    }

    pub fn merge(&mut self, o: &VmPartial) {
        self.cpu_total.merge(&o.cpu_total);
        self.cpu_plain.merge(&o.cpu_plain);
        self.mem.merge(&o.mem);
        add_opt(&mut self.disk_used, o.disk_used.map(|v| v.0));
        add_opt(&mut self.disk_total, o.disk_total.map(|v| v.0));
        for i in 0..4 {
            add_opt(&mut self.net[i], o.net[i].map(|v| v.0));
        }
        add_opt(&mut self.processes, o.processes.map(|v| v.0));
        for (t, p) in &o.pings {
            self.add_ping(t, p);
        }
        if self.custom.len() < o.custom.len() {
            self.custom.resize(o.custom.len(), None);
        }
        for (mine, theirs) in self.custom.iter_mut().zip(&o.custom) {
            match (mine, theirs) {
                (Some(a), Some(b)) => a.merge(b),
                (slot @ None, Some(b)) => *slot = Some(*b),
                _ => {}
            }
        }
    }

    /// CPU utilisation: 100 − mean idle, from `cpu-total` when it arrives.
    pub fn cpu_util(&self) -> Option<f64> {
        let pool = if self.cpu_total.count > 0 { &self.cpu_total } else { &self.cpu_plain };
        pool.mean().map(|idle| 100.0 - idle)
    }
}

/// The part of a registry record that group metrics use (a change elsewhere, such as the
/// agent's state, changes no group result and so moves nothing through the join).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub ns_id: String,
    pub mcis_id: String,
    pub csp_type: String,
    pub os_type: String,
    pub vm_id: String,
    pub public_ip: String,
    pub vcpu: Option<F64>,
    pub memory_gib: Option<F64>,
    pub cost_per_hour: Option<F64>,
}

impl Member {
    pub fn of(r: &AgentRecord) -> Self {
        Member {
            ns_id: r.ns_id.clone(),
            mcis_id: r.mcis_id.clone(),
            csp_type: r.csp_type.clone(),
            os_type: r.os_type.clone(),
            vm_id: r.vm_id.clone(),
            public_ip: r.public_ip.clone(),
            vcpu: r.vcpu.map(F64),
            memory_gib: r.memory_gib.map(F64),
            cost_per_hour: r.cost_per_hour.map(F64),
        }
    }

    /// The member's group at `level`; `None` when the record leaves it empty.
    pub fn group(&self, level: Level) -> Option<String> {
        let id = match level {
            Level::Ns => self.ns_id.clone(),
            Level::Mcis if self.mcis_id.is_empty() => return None,
            Level::Mcis => format!("{}/{}", self.ns_id, self.mcis_id),
            Level::Csp => self.csp_type.clone(),
            Level::Os => self.os_type.clone(),
        };
        (!id.is_empty()).then_some(id)
    }
}

/// Values over a group's VMs.
#[derive(Default)]
struct Over {
    values: Vec<f64>,
}

impl Over {
    fn push(&mut self, v: Option<f64>) {
        if let Some(v) = v {
            self.values.push(v);
        }
    }

    fn get(&self, how: OverVms) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let sum = || self.values.iter().sum::<f64>();
        Some(match how {
            OverVms::Sum => sum(),
            OverVms::Mean => sum() / self.values.len() as f64,
            OverVms::Max => self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            OverVms::Min => self.values.iter().copied().fold(f64::INFINITY, f64::min),
        })
    }
}

/// One VM's values in one window, as its group at one level needs them: small, so that the
/// group reduce moves and sorts little.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmValues {
    pub cpu: Option<F64>,
    pub mem: Option<F64>,
    pub disk_used: Option<F64>,
    pub disk_total: Option<F64>,
    pub net: [Option<F64>; 4],
    pub processes: Option<F64>,
    pub vcpu: Option<F64>,
    pub memory_gib: Option<F64>,
    pub cost_per_hour: Option<F64>,
    /// One per `[[groups.metric]]`.
    pub custom: Vec<Option<F64>>,
    /// At level `mcis` only: the VM's `vm_id` and `public_ip`, and its pings by target.
    pub ids: Option<(String, String)>,
    pub pings: Vec<(String, Pool)>,
}

impl VmValues {
    pub fn of(vm: &VmPartial, member: &Member, level: Level, config: &GroupsConfig) -> Self {
        let mcis = level == Level::Mcis;
        VmValues {
            cpu: vm.cpu_util().map(F64),
            mem: vm.mem.mean().map(F64),
            disk_used: vm.disk_used,
            disk_total: vm.disk_total,
            net: vm.net,
            processes: vm.processes,
            vcpu: member.vcpu,
            memory_gib: member.memory_gib,
            cost_per_hour: member.cost_per_hour,
            custom: vm
                .custom
                .iter()
                .zip(&config.metrics)
                .map(|(slot, metric)| slot.as_ref().and_then(|p| p.value(metric.aggregate)).map(F64))
                .collect(),
            ids: mcis.then(|| (member.vm_id.clone(), member.public_ip.clone())),
            pings: if mcis { vm.pings.clone() } else { Vec::new() },
        }
    }

    fn is_target(&self, target: &str) -> bool {
        self.ids
            .as_ref()
            .is_some_and(|(vm_id, ip)| (!ip.is_empty() && ip == target) || (!vm_id.is_empty() && vm_id == target))
    }
}

/// The metrics of one group in one window from its reporting VMs (each VM once, whole window),
/// in [`BUILTIN_METRICS`] order, then the spec's metrics. Only metrics with a value are returned.
pub fn group_metrics(level: Level, vms: &[&VmValues], config: &GroupsConfig) -> Vec<(String, f64)> {
    let v = |f: fn(&VmValues) -> Option<F64>| {
        let mut o = Over::default();
        vms.iter().for_each(|vm| o.push(f(vm).map(|x| x.0)));
        o
    };
    let (cpu, mem) = (v(|m| m.cpu), v(|m| m.mem));
    let (disk_used, disk_total, processes) = (v(|m| m.disk_used), v(|m| m.disk_total), v(|m| m.processes));
    let net = [v(|m| m.net[0]), v(|m| m.net[1]), v(|m| m.net[2]), v(|m| m.net[3])];
    let (vcpu, memory, cost) = (v(|m| m.vcpu), v(|m| m.memory_gib), v(|m| m.cost_per_hour));
    let mut rtt = Over::default();
    if level == Level::Mcis {
        for (i, vm) in vms.iter().enumerate() {
            let mut pool = Pool::default();
            for (target, p) in &vm.pings {
                if vms.iter().enumerate().any(|(j, other)| j != i && other.is_target(target)) {
                    pool.merge(p);
                }
            }
            rtt.push(pool.mean());
        }
    }
    let mut out = Vec::new();
    let mut put = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            out.push((name.to_string(), v));
        }
    };
    put("cpu_util_mean", cpu.get(OverVms::Mean));
    put("cpu_util_max", cpu.get(OverVms::Max));
    put("mem_util_mean", mem.get(OverVms::Mean));
    put("mem_util_max", mem.get(OverVms::Max));
    put("disk_used_bytes", disk_used.get(OverVms::Sum));
    put("disk_total_bytes", disk_total.get(OverVms::Sum));
    for (name, n) in NET_METRICS.iter().zip(&net) {
        put(name, n.get(OverVms::Sum));
    }
    put("processes", processes.get(OverVms::Sum));
    put("vcpu_total", vcpu.get(OverVms::Sum));
    put("vcpu_mean", vcpu.get(OverVms::Mean));
    put("memory_gib_total", memory.get(OverVms::Sum));
    put("memory_gib_mean", memory.get(OverVms::Mean));
    put("cost_per_hour_total", cost.get(OverVms::Sum));
    put("rtt_ms_mean", rtt.get(OverVms::Mean));
    for (i, metric) in config.metrics.iter().enumerate() {
        let mut o = Over::default();
        vms.iter().for_each(|vm| o.push(vm.custom.get(i).copied().flatten().map(|x| x.0)));
        put(&metric.name, o.get(metric.over_vms));
    }
    out
}

/// Top-k (largest first) and bottom-k (smallest first) of `(group_id, value)`, ties by group id:
/// `(order, rank, group_id, value)` with ranks from 1.
pub fn rank(values: &[(String, f64)], k: usize) -> Vec<(&'static str, u32, String, f64)> {
    let mut sorted: Vec<&(String, f64)> = values.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<_> =
        sorted.iter().take(k).enumerate().map(|(i, (g, v))| ("top", i as u32 + 1, g.clone(), *v)).collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    out.extend(sorted.iter().take(k).enumerate().map(|(i, (g, v))| ("bottom", i as u32 + 1, g.clone(), *v)));
    out
}

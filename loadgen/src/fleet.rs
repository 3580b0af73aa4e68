//! A fleet of virtual monitoring agents: who they are (namespaces, MCIS, clouds, VM sizes) and
//! the messages they send at each collection tick.
//!
//! A [`Fleet`] is a pure function of its [`FleetConfig`] and the event times it is ticked at: it
//! reads no clock and draws all randomness from seeded ChaCha streams, so the same seed and
//! ticks give the same bytes. Clock skew, reordering and churn are part of that determinism too.
//!
//! With churn, a share of the agents is retired every minute of event time and replaced by new
//! VMs (`vm-{n}` continuing the count), so the fleet stays N agents while the number of agents
//! ever seen grows, as in a cloud where VMs come and go.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::agent::{AgentState, Step};
use crate::encode::{AgentTagValues, Encoder};
use crate::Format;

/// The measurements every agent sends at each tick, in this order.
pub const MEASUREMENTS: [&str; 6] = ["cpu", "cpufreq", "mem", "disk", "diskio", "net"];

/// The fixed instance tags of each measurement of [`MEASUREMENTS`] (their values need no escaping).
const INSTANCE_TAGS: [&[(&str, &str)]; 6] =
    [&[("cpu", "cpu-total")], &[], &[], &[("path", "/")], &[("name", "sda")], &[("interface", "eth0")]];

/// The cloud service providers, with the weight of each in a fleet.
const CSPS: [(&str, u32); 8] = [
    ("aws", 25),
    ("azure", 20),
    ("gcp", 18),
    ("alibaba", 10),
    ("openstack", 10),
    ("cloudit", 6),
    ("cloudtwin", 5),
    ("docker", 6),
];

/// vCPU counts of VM sizes, with their weights.
const VCPUS: [(u32, u32); 6] = [(1, 10), (2, 30), (4, 30), (8, 18), (16, 9), (32, 3)];

/// How to build a fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    /// Number of virtual agents (VMs).
    pub agents: usize,
    /// Seed of every random choice: the same seed gives the same agents and metrics.
    pub seed: u64,
    /// Wire format of the messages.
    pub format: Format,
    /// Largest clock offset of an agent (each agent gets a fixed offset in [-skew, +skew]), ns. 0 = none.
    pub skew_ns: i64,
    /// Probability that a message is held back and sent one tick later (reordering within lateness). 0.0 = none.
    pub reorder: f64,
    /// Share of the agents replaced by new ones every minute of event time (counted from the
    /// first tick), 0.0–1.0: `round(churn × agents)` agents are retired and as many new VMs
    /// take their places. 0.0 = the same agents throughout.
    pub churn: f64,
    /// Number of the first VM: the agents are `vm-{first_vm}`, `vm-{first_vm + 1}`, … and the
    /// namespaces and MCIS are those of any fleet of the same size and seed, so two generators
    /// with the same seed and size, one numbered after the other, make one fleet (for instance
    /// one half pushing to Kafka and the other half pulled).
    pub first_vm: usize,
}

impl Default for FleetConfig {
    /// 100 agents, seed 1, Telegraf JSON, no skew, no reordering, no churn.
    fn default() -> Self {
        FleetConfig { agents: 100, seed: 1, format: Format::Json, skew_ns: 0, reorder: 0.0, churn: 0.0, first_vm: 0 }
    }
}

/// Who an agent is: the tags it puts on every metric and its VM's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// Namespace, `ns-{k}`.
    pub ns_id: String,
    /// MCIS within the namespace, `mcis-{k}-{j}`.
    pub mcis_id: String,
    /// VM, `vm-{i}`; unique in the fleet, and also the `host` tag.
    pub vm_id: String,
    /// Cloud service provider: aws, azure, gcp, alibaba, openstack, cloudit, cloudtwin or docker.
    pub csp_type: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// Virtual CPUs of the VM.
    pub vcpu: u32,
    /// Memory of the VM, GiB (the `mem` total).
    pub memory_gib: u32,
}

impl AgentInfo {
    /// The agent's identity `{nsId}/{mcisId}/{vmId}/{cspType}`, used as the Kafka key.
    pub fn key(&self) -> String {
        format!("{}/{}/{}/{}", self.ns_id, self.mcis_id, self.vm_id, self.csp_type)
    }
}

/// One metric as an agent sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The agent's identity `{nsId}/{mcisId}/{vmId}/{cspType}`, used as the Kafka key.
    pub key: String,
    /// The measurement: one of [`MEASUREMENTS`].
    pub measurement: &'static str,
    /// Event time as the payload carries it, ns: the agent's skewed clock, truncated to whole
    /// seconds for JSON (Telegraf's default timestamp unit), exact for line protocol.
    pub timestamp_ns: i64,
    /// One Telegraf JSON metric, or one line of line protocol (no trailing newline).
    pub payload: Vec<u8>,
}

/// N virtual agents and their state.
pub struct Fleet {
    cfg: FleetConfig,
    agents: Vec<AgentInfo>,
    keys: Vec<String>,
    tags: Vec<AgentTagValues>,
    /// Each agent's clock offset, ns.
    offsets: Vec<i64>,
    states: Vec<AgentState>,
    encoder: Encoder,
    /// Metric dynamics.
    rng: ChaCha8Rng,
    /// Reordering decisions, on a stream of their own so that they do not change the metrics.
    reorder_rng: ChaCha8Rng,
    /// Who is retired and who replaces them, on a stream of its own.
    churn_rng: ChaCha8Rng,
    /// MCIS per namespace, for new agents.
    mcis_per_ns: Vec<usize>,
    /// Agents created so far: the next new VM is `vm-{first_vm + created}`.
    created: usize,
    /// Event time of the first tick, and the minutes after it whose churn has been applied.
    first_ts: Option<i64>,
    churned_minutes: i64,
    last_ts: Option<i64>,
    /// Messages held back at the last tick, sent at the next.
    held: Vec<Message>,
    buf: Vec<u8>,
}

/// Independent random streams of one seed.
const STREAM_TOPOLOGY: u64 = 0;
const STREAM_DYNAMICS: u64 = 1;
const STREAM_REORDER: u64 = 2;
const STREAM_CHURN: u64 = 3;
/// Which agents of a pull-mode listener misbehave (see `listener`).
pub(crate) const STREAM_BEHAVIOUR: u64 = 4;

/// One minute of event time, ns.
const MINUTE_NS: i64 = 60_000_000_000;
/// Most minutes of churn applied at one tick (a longer jump replaces the fleet many times over).
const MAX_CHURN_ROUNDS: i64 = 60;

/// A random stream of `seed`.
pub(crate) fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Picks one of `choices` by weight.
fn weighted<T: Copy>(rng: &mut ChaCha8Rng, choices: &[(T, u32)]) -> T {
    let total: u32 = choices.iter().map(|c| c.1).sum();
    let mut x = rng.random_range(0..total);
    for &(v, w) in choices {
        if x < w {
            return v;
        }
        x -= w;
    }
    choices[choices.len() - 1].0
}

/// The agents of a fleet of `n`: `max(1, n/100)` namespaces (at least 2 from 10 agents on) of
/// 2–5 MCIS each, every CSP present once there are 8 agents, about 80 % Linux. Also returns the
/// number of MCIS of each namespace.
fn topology(n: usize, first_vm: usize, rng: &mut ChaCha8Rng) -> (Vec<AgentInfo>, Vec<usize>) {
    let namespaces = if n >= 10 { (n / 100).max(2) } else { 1 };
    let mcis_per_ns: Vec<usize> = (0..namespaces).map(|_| rng.random_range(2..=5)).collect();
    let mut seen_in_ns = vec![0usize; namespaces];
    let agents = (0..n)
        .map(|i| {
            let ns = i % namespaces;
            let m = mcis_per_ns[ns];
            // The first agents of a namespace fill each of its MCIS once; the rest land anywhere.
            let mcis = if seen_in_ns[ns] < m { seen_in_ns[ns] } else { rng.random_range(0..m) };
            seen_in_ns[ns] += 1;
            let csp = if i < CSPS.len() { CSPS[i].0 } else { weighted(rng, &CSPS) };
            vm(first_vm + i, ns, mcis, csp, rng)
        })
        .collect();
    (agents, mcis_per_ns)
}

/// Agent `vm-{i}` in MCIS `mcis` of namespace `ns` on `csp`, with a random OS and VM size.
fn vm(i: usize, ns: usize, mcis: usize, csp: &str, rng: &mut ChaCha8Rng) -> AgentInfo {
    let os = if rng.random_bool(0.8) { "linux" } else { "windows" };
    let vcpu = weighted(rng, &VCPUS);
    let memory_gib = vcpu * [2, 4, 8][rng.random_range(0..3)];
    AgentInfo {
        ns_id: format!("ns-{ns}"),
        mcis_id: format!("mcis-{ns}-{mcis}"),
        vm_id: format!("vm-{i}"),
        csp_type: csp.to_string(),
        os_type: os.to_string(),
        vcpu,
        memory_gib,
    }
}

impl Fleet {
    /// Builds the fleet's agents and their initial state. A `reorder` or `churn` outside `[0, 1]`
    /// is clamped, a negative `skew_ns` counts as its absolute value.
    pub fn new(cfg: FleetConfig) -> Fleet {
        let mut cfg = cfg;
        let share = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        cfg.reorder = share(cfg.reorder);
        cfg.churn = share(cfg.churn);
        cfg.skew_ns = cfg.skew_ns.saturating_abs();
        let mut topo = stream(cfg.seed, STREAM_TOPOLOGY);
        let (agents, mcis_per_ns) = topology(cfg.agents, cfg.first_vm, &mut topo);
        let offsets = agents
            .iter()
            .map(|_| if cfg.skew_ns > 0 { topo.random_range(-cfg.skew_ns..=cfg.skew_ns) } else { 0 })
            .collect();
        let mut rng = stream(cfg.seed, STREAM_DYNAMICS);
        let states = agents.iter().map(|a| AgentState::new(a.os_type == "windows", a.memory_gib, &mut rng)).collect();
        let keys = agents.iter().map(AgentInfo::key).collect();
        let tags = agents
            .iter()
            .map(|a| AgentTagValues::new(cfg.format, &a.ns_id, &a.mcis_id, &a.vm_id, &a.csp_type, &a.os_type))
            .collect();
        Fleet {
            encoder: Encoder::new(cfg.format, &INSTANCE_TAGS),
            reorder_rng: stream(cfg.seed, STREAM_REORDER),
            churn_rng: stream(cfg.seed, STREAM_CHURN),
            mcis_per_ns,
            created: agents.len(),
            first_ts: None,
            churned_minutes: 0,
            cfg,
            agents,
            keys,
            tags,
            offsets,
            states,
            rng,
            last_ts: None,
            held: Vec::new(),
            buf: Vec::with_capacity(1024),
        }
    }

    /// The configuration (with `reorder`, `churn` and `skew_ns` as applied).
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// The agents live now, in the order their messages are emitted (a new agent takes the place
    /// of the one it replaced).
    pub fn agents(&self) -> &[AgentInfo] {
        &self.agents
    }

    /// Agents that have existed so far, live or retired (the fleet size without churn).
    pub fn agents_ever(&self) -> usize {
        self.created
    }

    /// Each agent's fixed clock offset, ns, in the order of [`Fleet::agents`].
    pub fn clock_offsets(&self) -> &[i64] {
        &self.offsets
    }

    /// Number of messages held back for the next tick.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// All messages of one collection tick at event time `ts_ns` (each agent applies its own skew).
    /// Exactly 6 messages per agent per tick (cpu, cpufreq, mem, disk, diskio, net), minus those held
    /// back for reordering plus those released from the previous tick (appended after this tick's).
    ///
    /// The metrics move by the time since the previous tick (none at the first tick, and none
    /// when `ts_ns` does not advance; at most an hour at once). With churn, each whole minute
    /// since the first tick that `ts_ns` reaches first replaces agents (at most 60 minutes' worth
    /// at once); the new agents send from this tick on.
    pub fn tick(&mut self, ts_ns: i64, out: &mut Vec<Message>) {
        self.churn(ts_ns);
        let dt = match self.last_ts {
            Some(last) => (ts_ns.saturating_sub(last) as f64 / 1e9).clamp(0.0, 3600.0),
            None => 0.0,
        };
        self.last_ts = Some(ts_ns);
        let step = Step::new(dt);
        let released = std::mem::take(&mut self.held);
        out.reserve(self.agents.len() * MEASUREMENTS.len() + released.len());
        for i in 0..self.agents.len() {
            self.states[i].step(&step, &mut self.rng);
            let ts = ts_ns.saturating_add(self.offsets[i]);
            for (m, name) in MEASUREMENTS.iter().enumerate() {
                let state = &self.states[i];
                self.encoder.encode(&mut self.buf, m, name, &self.tags[i], ts, |f| match m {
                    0 => state.write_cpu(f),
                    1 => state.write_cpufreq(f),
                    2 => state.write_mem(f),
                    3 => state.write_disk(f),
                    4 => state.write_diskio(f),
                    _ => state.write_net(f),
                });
                let msg = Message {
                    key: self.keys[i].clone(),
                    measurement: name,
                    timestamp_ns: self.encoder.wire_timestamp(ts),
                    payload: self.buf.as_slice().to_vec(),
                };
                if self.cfg.reorder > 0.0 && self.reorder_rng.random::<f64>() < self.cfg.reorder {
                    self.held.push(msg);
                } else {
                    out.push(msg);
                }
            }
        }
        out.extend(released);
    }

    /// Applies the churn of the minutes up to `ts_ns`.
    fn churn(&mut self, ts_ns: i64) {
        let first = *self.first_ts.get_or_insert(ts_ns);
        let replaced = (self.cfg.churn * self.agents.len() as f64).round() as usize;
        if replaced == 0 {
            return;
        }
        let minute = ts_ns.saturating_sub(first).div_euclid(MINUTE_NS);
        let rounds = (minute - self.churned_minutes).clamp(0, MAX_CHURN_ROUNDS);
        self.churned_minutes = self.churned_minutes.max(minute);
        for _ in 0..rounds {
            let mut slots = rand::seq::index::sample(&mut self.churn_rng, self.agents.len(), replaced).into_vec();
            slots.sort_unstable();
            for slot in slots {
                self.replace(slot);
            }
        }
    }

    /// Retires the agent at `slot` and puts a new VM in its place: the next `vm-{n}`, in a
    /// namespace, MCIS and cloud drawn as for the initial fleet.
    fn replace(&mut self, slot: usize) {
        let rng = &mut self.churn_rng;
        let i = self.created;
        self.created += 1;
        let ns = i % self.mcis_per_ns.len();
        let mcis = rng.random_range(0..self.mcis_per_ns[ns]);
        let csp = weighted(rng, &CSPS);
        let a = vm(self.cfg.first_vm + i, ns, mcis, csp, rng);
        self.offsets[slot] =
            if self.cfg.skew_ns > 0 { rng.random_range(-self.cfg.skew_ns..=self.cfg.skew_ns) } else { 0 };
        self.states[slot] = AgentState::new(a.os_type == "windows", a.memory_gib, rng);
        self.keys[slot] = a.key();
        self.tags[slot] = AgentTagValues::new(self.cfg.format, &a.ns_id, &a.mcis_id, &a.vm_id, &a.csp_type, &a.os_type);
        self.agents[slot] = a;
    }

    /// Messages still held back (reordering) — call at the end so nothing is lost.
    pub fn drain_held(&mut self, out: &mut Vec<Message>) {
        out.append(&mut self.held);
    }

    /// The wire format of the messages.
    pub fn format(&self) -> Format {
        self.encoder.format()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use operators::decode::{decode, Collected, FieldValue, Metric, TimestampUnit};

    use super::*;

    const T0: i64 = 1_700_000_000_000_000_000;
    const TICK: i64 = 2_000_000_000;

    fn decode_one(format: Format, msg: &Message) -> Metric<'static> {
        let mut c = Collected::default();
        decode(format, &msg.payload, TimestampUnit::Auto, 0, &mut c);
        assert!(c.rejects.is_empty(), "{:?}: {}", c.rejects, String::from_utf8_lossy(&msg.payload));
        assert_eq!(c.metrics.len(), 1);
        c.metrics.pop().unwrap()
    }

    fn field(m: &Metric<'_>, name: &str) -> FieldValue {
        m.fields.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{} has no {name}", m.name)).1
    }

    fn float(m: &Metric<'_>, name: &str) -> f64 {
        match field(m, name) {
            FieldValue::Float(v) => v,
            other => panic!("{}.{name} is not a float: {other:?}", m.name),
        }
    }

    fn int(m: &Metric<'_>, name: &str) -> u64 {
        match field(m, name) {
            FieldValue::Int(v) => u64::try_from(v).unwrap(),
            FieldValue::UInt(v) => v,
            other => panic!("{}.{name} is not an integer: {other:?}", m.name),
        }
    }

    const FIELDS: [&[&str]; 6] = [
        &[
            "usage_guest",
            "usage_guest_nice",
            "usage_idle",
            "usage_iowait",
            "usage_irq",
            "usage_nice",
            "usage_softirq",
            "usage_steal",
            "usage_system",
            "usage_user",
            "usage_utilization",
        ],
        &["cur_freq"],
        &["buffered", "cached", "free", "shared", "total", "used", "used_percent"],
        &["free", "total", "used", "used_percent"],
        &["iops_read", "iops_write", "read_bytes", "read_time", "write_bytes", "write_time"],
        &["bytes_recv", "bytes_sent", "drop_in", "drop_out", "err_in", "err_out", "packets_recv", "packets_sent"],
    ];

    /// Checks every invariant of one decoded metric; returns its counters (name, value).
    fn check_metric(m: &Metric<'_>, info: &AgentInfo) -> Vec<(String, u64)> {
        let idx = MEASUREMENTS.iter().position(|n| *n == m.name).unwrap();
        let names: Vec<&str> = m.fields.iter().map(|(k, _)| &**k).collect();
        assert_eq!(names, FIELDS[idx], "fields of {} in key order", m.name);
        for (k, v) in [
            ("nsId", &info.ns_id),
            ("mcisId", &info.mcis_id),
            ("vmId", &info.vm_id),
            ("host", &info.vm_id),
            ("cspType", &info.csp_type),
            ("osType", &info.os_type),
        ] {
            assert_eq!(m.tag(k), Some(v.as_str()), "tag {k} of {}", m.name);
        }
        let tag_keys: Vec<&str> = m.tags.iter().map(|(k, _)| &**k).collect();
        let mut sorted = tag_keys.clone();
        sorted.sort_unstable();
        assert_eq!(tag_keys, sorted, "tags in key order");
        match &*m.name {
            "cpu" => {
                assert_eq!(m.tag("cpu"), Some("cpu-total"));
                let parts: Vec<f64> = FIELDS[0][..10].iter().map(|f| float(m, f)).collect();
                assert!(parts.iter().all(|&v| v >= 0.0), "{parts:?}");
                let sum: f64 = parts.iter().sum();
                assert!((sum - 100.0).abs() <= 1e-6, "cpu sums to {sum}");
                let util = float(m, "usage_utilization");
                assert!((util - (100.0 - float(m, "usage_idle"))).abs() <= 1e-9);
                assert!((0.0..=100.0).contains(&util));
                if info.os_type == "windows" {
                    assert_eq!(float(m, "usage_iowait"), 0.0);
                }
                vec![]
            }
            "cpufreq" => {
                let f = float(m, "cur_freq");
                assert!((2000.0..=3500.0).contains(&f), "cur_freq {f}");
                vec![]
            }
            "mem" => {
                let total = int(m, "total");
                assert_eq!(total, u64::from(info.memory_gib) << 30);
                let (used, free) = (int(m, "used"), int(m, "free"));
                assert_eq!(used + free + int(m, "buffered") + int(m, "cached"), total);
                assert!(int(m, "shared") <= used);
                let pct = float(m, "used_percent");
                assert!((pct - used as f64 / total as f64 * 100.0).abs() <= 1e-6, "{pct}");
                vec![]
            }
            "disk" => {
                assert_eq!(m.tag("path"), Some("/"));
                let (total, used, free) = (int(m, "total"), int(m, "used"), int(m, "free"));
                assert_eq!(used + free, total);
                let pct = float(m, "used_percent");
                assert!((pct - used as f64 / total as f64 * 100.0).abs() <= 1e-6, "{pct}");
                vec![]
            }
            "diskio" | "net" => {
                let instance = if m.name == "net" { ("interface", "eth0") } else { ("name", "sda") };
                assert_eq!(m.tag(instance.0), Some(instance.1));
                FIELDS[idx].iter().map(|f| (format!("{}.{f}", m.name), int(m, f))).collect()
            }
            other => panic!("unexpected measurement {other}"),
        }
    }

    fn cfg(agents: usize, seed: u64, format: Format) -> FleetConfig {
        FleetConfig { agents, seed, format, ..FleetConfig::default() }
    }

    #[test]
    fn a_fleet_numbered_after_another_shares_its_namespaces_and_mcis() {
        for (n, seed) in [(7, 1), (40, 2), (250, 3)] {
            let first = Fleet::new(cfg(n, seed, Format::Json));
            let second = Fleet::new(FleetConfig { first_vm: n, ..cfg(n, seed, Format::Json) });
            for (i, (a, b)) in first.agents().iter().zip(second.agents()).enumerate() {
                assert_eq!((a.vm_id.as_str(), b.vm_id.clone()), (format!("vm-{i}").as_str(), format!("vm-{}", n + i)));
                assert_eq!((&a.ns_id, &a.mcis_id, &a.csp_type), (&b.ns_id, &b.mcis_id, &b.csp_type));
            }
            let keys: BTreeSet<String> = first.agents().iter().chain(second.agents()).map(AgentInfo::key).collect();
            assert_eq!(keys.len(), 2 * n, "no agent twice");
        }
    }

    #[test]
    fn every_message_decodes_and_holds_its_invariants() {
        for format in [Format::Json, Format::Influx] {
            for seed in [1, 2, 99] {
                let mut fleet = Fleet::new(cfg(60, seed, format));
                let agents: HashMap<String, AgentInfo> = fleet.agents().iter().map(|a| (a.key(), a.clone())).collect();
                let mut counters: HashMap<(String, String), u64> = HashMap::new();
                let mut out = Vec::new();
                // Ticks of 2 s, then a long gap, then ticks again.
                for (t, ts) in
                    (0..40).map(|t| T0 + t * TICK).chain((0..5).map(|t| T0 + 4000 * TICK + t * TICK)).enumerate()
                {
                    out.clear();
                    fleet.tick(ts, &mut out);
                    assert_eq!(out.len(), 60 * 6);
                    for msg in &out {
                        let m = decode_one(format, msg);
                        assert_eq!(m.name, msg.measurement);
                        assert_eq!(m.timestamp, msg.timestamp_ns, "timestamps round-trip");
                        let want_ts = if format == Format::Json { ts / 1_000_000_000 * 1_000_000_000 } else { ts };
                        assert_eq!(m.timestamp, want_ts);
                        let info = &agents[&msg.key];
                        for (name, v) in check_metric(&m, info) {
                            let prev = counters.insert((msg.key.clone(), name.clone()), v);
                            assert!(
                                prev.is_none_or(|p| p <= v),
                                "{name} of {} went {prev:?} -> {v} at tick {t}",
                                msg.key
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn counters_move_and_gauges_vary() {
        let mut fleet = Fleet::new(cfg(20, 4, Format::Json));
        let (mut first, mut last) = (Vec::new(), Vec::new());
        fleet.tick(T0, &mut first);
        for t in 1..=30 {
            last.clear();
            fleet.tick(T0 + t * TICK, &mut last);
        }
        let by_kind = |msgs: &[Message], name: &str, field_name: &str| -> Vec<f64> {
            msgs.iter()
                .filter(|m| m.measurement == name)
                .map(|m| field(&decode_one(Format::Json, m), field_name).numeric().unwrap())
                .collect()
        };
        let (b0, b1) = (by_kind(&first, "net", "bytes_recv"), by_kind(&last, "net", "bytes_recv"));
        assert!(b0.iter().zip(&b1).all(|(a, b)| b > a), "every agent receives bytes in a minute");
        let (i0, i1) = (by_kind(&first, "cpu", "usage_idle"), by_kind(&last, "cpu", "usage_idle"));
        assert!(i0.iter().zip(&i1).filter(|(a, b)| a != b).count() >= 18);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        for format in [Format::Json, Format::Influx] {
            let run = |seed: u64| {
                let mut fleet = Fleet::new(FleetConfig { skew_ns: 500_000_000, reorder: 0.1, ..cfg(30, seed, format) });
                let mut out = Vec::new();
                for t in 0..10 {
                    fleet.tick(T0 + t * TICK, &mut out);
                }
                fleet.drain_held(&mut out);
                out
            };
            assert_eq!(run(7), run(7));
            assert_ne!(run(7), run(8));
        }
    }

    #[test]
    fn reordering_neither_loses_nor_duplicates_nor_changes_values() {
        let collect = |reorder: f64| {
            let mut fleet = Fleet::new(FleetConfig { reorder, ..cfg(25, 3, Format::Influx) });
            let mut out = Vec::new();
            let mut late = 0;
            for t in 0..20 {
                let from = out.len();
                fleet.tick(T0 + t * TICK, &mut out);
                let now = T0 + t * TICK;
                late += out[from..].iter().filter(|m: &&Message| m.timestamp_ns < now).count();
            }
            fleet.drain_held(&mut out);
            assert_eq!(fleet.held(), 0);
            (out, late)
        };
        let (plain, none_late) = collect(0.0);
        let (shuffled, late) = collect(0.2);
        assert_eq!(none_late, 0);
        assert!(late > 25 * 6 * 20 / 10, "about a fifth of the messages come a tick late: {late}");
        assert_ne!(plain, shuffled);
        let ids = |msgs: &[Message]| -> BTreeMap<(String, &'static str, i64), Vec<u8>> {
            let mut map = BTreeMap::new();
            for m in msgs {
                let dup = map.insert((m.key.clone(), m.measurement, m.timestamp_ns), m.payload.clone());
                assert!(dup.is_none(), "duplicate {} {} {}", m.key, m.measurement, m.timestamp_ns);
            }
            map
        };
        assert_eq!(shuffled.len(), 25 * 6 * 20);
        assert_eq!(ids(&plain), ids(&shuffled), "the same messages, only later");
    }

    #[test]
    fn skew_is_fixed_per_agent_and_bounded() {
        let skew = 3_000_000_000;
        let mut fleet = Fleet::new(FleetConfig { skew_ns: skew, ..cfg(50, 1, Format::Influx) });
        assert!(fleet.clock_offsets().iter().all(|o| o.abs() <= skew));
        assert!(fleet.clock_offsets().iter().collect::<BTreeSet<_>>().len() > 40);
        let mut out = Vec::new();
        for t in 0..3 {
            out.clear();
            fleet.tick(T0 + t * TICK, &mut out);
            for (i, chunk) in out.chunks(6).enumerate() {
                assert!(chunk.iter().all(|m| m.timestamp_ns == T0 + t * TICK + fleet.clock_offsets()[i]));
            }
        }
    }

    #[test]
    fn tags_spread_over_namespaces_mcis_clouds_and_systems() {
        let fleet = Fleet::new(cfg(1000, 1, Format::Json));
        let agents = fleet.agents();
        let set = |f: fn(&AgentInfo) -> &str| agents.iter().map(f).collect::<BTreeSet<_>>();
        assert_eq!(set(|a| &a.ns_id).len(), 10);
        assert_eq!(set(|a| &a.vm_id).len(), 1000);
        assert_eq!(set(|a| &a.csp_type).len(), 8);
        let mcis = set(|a| &a.mcis_id);
        assert!((20..=50).contains(&mcis.len()), "{} MCIS", mcis.len());
        let windows = agents.iter().filter(|a| a.os_type == "windows").count();
        assert!((120..=280).contains(&windows), "{windows} windows agents");
        assert!(agents.iter().all(|a| a.memory_gib >= a.vcpu * 2));

        assert_eq!(
            Fleet::new(cfg(10, 1, Format::Json)).agents().iter().map(|a| &a.ns_id).collect::<BTreeSet<_>>().len(),
            2
        );
        let small = Fleet::new(cfg(3, 1, Format::Json));
        assert!(small.agents().iter().all(|a| a.ns_id == "ns-0"));
        assert!(Fleet::new(cfg(0, 1, Format::Json)).agents().is_empty());
    }

    /// The vm id in an agent key `ns/mcis/vm/csp`.
    fn vm_of(key: &str) -> &str {
        key.split('/').nth(2).unwrap()
    }

    #[test]
    fn churn_replaces_a_share_of_the_agents_every_minute() {
        let n = 100;
        let run = |seed: u64| {
            let mut fleet = Fleet::new(FleetConfig { churn: 0.2, ..cfg(n, seed, Format::Json) });
            let (mut all, mut out) = (Vec::new(), Vec::new());
            let mut vms = BTreeSet::new();
            // 10 minutes of 2 s ticks, both ends: ten minute marks after the first tick.
            for t in 0..=300 {
                out.clear();
                fleet.tick(T0 + t * TICK, &mut out);
                assert_eq!(out.len(), n * 6, "messages at tick {t}");
                let live: BTreeSet<&str> = out.iter().map(|m| vm_of(&m.key)).collect();
                assert_eq!(live.len(), n, "live agents at tick {t}");
                let want: BTreeSet<&str> = fleet.agents().iter().map(|a| a.vm_id.as_str()).collect();
                assert_eq!(live, want);
                vms.extend(live.into_iter().map(String::from));
                all.append(&mut out);
            }
            assert_eq!(fleet.agents_ever(), n * (1 + 2));
            (vms, all)
        };
        let (vms, all) = run(5);
        assert_eq!(vms.len(), n * (1 + 2), "N × (1 + 0.2 × 10) distinct vm ids");
        let want: BTreeSet<String> = (0..n * 3).map(|i| format!("vm-{i}")).collect();
        assert_eq!(vms, want, "new agents continue the vm count");
        assert_eq!(run(5).1, all, "same seed, same bytes");
        assert_ne!(run(6).1, all);
    }

    #[test]
    fn churn_waits_for_the_minute_and_zero_churn_changes_nothing() {
        let ids = |churn: f64, ticks: i64| {
            let mut fleet = Fleet::new(FleetConfig { churn, ..cfg(50, 2, Format::Influx) });
            let mut out = Vec::new();
            for t in 0..ticks {
                fleet.tick(T0 + t * TICK, &mut out);
            }
            (out, fleet.agents_ever())
        };
        // 29 ticks span 56 s: no minute mark yet, so churn has not changed a byte.
        assert_eq!(ids(0.5, 29), ids(0.0, 29));
        let (with, ever) = ids(0.5, 31);
        assert_eq!(ever, 75);
        assert_ne!(with, ids(0.0, 31).0);
        assert_eq!(ids(0.0, 31).1, 50);
        // A leap of hours applies at most an hour of churn.
        let mut fleet = Fleet::new(FleetConfig { churn: 0.1, ..cfg(50, 2, Format::Influx) });
        let mut out = Vec::new();
        fleet.tick(T0, &mut out);
        fleet.tick(T0 + 10 * 3600 * 1_000_000_000, &mut out);
        assert_eq!(fleet.agents_ever(), 50 + 60 * 5);
    }

    #[test]
    fn new_agents_are_drawn_like_the_first_ones() {
        let mut fleet = Fleet::new(FleetConfig { churn: 0.5, skew_ns: 1_000_000_000, ..cfg(1000, 3, Format::Json) });
        let mut out = Vec::new();
        for t in 0..=150 {
            out.clear();
            fleet.tick(T0 + t * TICK, &mut out);
        }
        let agents = fleet.agents();
        let newcomers: Vec<&AgentInfo> =
            agents.iter().filter(|a| a.vm_id[3..].parse::<usize>().unwrap() >= 1000).collect();
        assert!(newcomers.len() > 900, "{} of 1000 agents replaced in 5 minutes", newcomers.len());
        let set = |f: fn(&AgentInfo) -> &str| newcomers.iter().map(|a| f(a)).collect::<BTreeSet<_>>();
        assert_eq!(set(|a| &a.ns_id).len(), 10);
        assert_eq!(set(|a| &a.csp_type).len(), 8);
        assert!(set(|a| &a.mcis_id).len() >= 20);
        let windows = newcomers.iter().filter(|a| a.os_type == "windows").count() as f64 / newcomers.len() as f64;
        assert!((0.12..=0.28).contains(&windows), "{windows} windows");
        assert!(fleet.clock_offsets().iter().all(|o| o.abs() <= 1_000_000_000));
        let by_key: HashMap<String, &AgentInfo> = agents.iter().map(|a| (a.key(), a)).collect();
        for msg in &out {
            check_metric(&decode_one(Format::Json, msg), by_key[&msg.key]);
        }
    }

    #[test]
    fn a_tenth_of_a_large_fleet_is_busy() {
        let mut fleet = Fleet::new(cfg(2000, 9, Format::Json));
        let mut out = Vec::new();
        for t in 0..30 {
            out.clear();
            fleet.tick(T0 + t * TICK, &mut out);
        }
        let busy = out
            .iter()
            .filter(|m| m.measurement == "cpu")
            .filter(|m| float(&decode_one(Format::Json, m), "usage_utilization") > 60.0)
            .count();
        assert!((100..=350).contains(&busy), "{busy} of 2000 agents above 60 % cpu");
    }
}

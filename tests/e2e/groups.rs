//! Group metrics, rankings and agent health through `dragonflow run`, compared row by row with the
//! brute-force reference (`operators::groups::reference`) computed from the same generated points
//! and registry history.
//!
//! The generated input is Telegraf JSON, one metric per line, timestamps in whole seconds. Health
//! timers are placed so that none falls in the last minute of data: there the engine's watermark
//! closes windows only up to the end of the input, so the reference is given
//! `closed_until = max_ts − 60 s`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};

use operators::groups::reference::{self, RawPoint};
use operators::groups::{CustomMetric, GroupsConfig, Level, OverVms, PerVm};
use operators::model::{AgentTags, GroupRow, HealthRow, RankRow};
use operators::registry::{AgentRecord, AgentState, Mechanism, RegistryUpdate};

use crate::common::{dragonflow_ok, rel, sql_rows};

/// Nanoseconds per second.
const S: i64 = 1_000_000_000;
/// Start of the generated data, in seconds (a multiple of the window).
const T0: i64 = 1_700_000_000;
const WINDOW_S: i64 = 10;
const UNHEALTHY_AFTER: u32 = 3;
/// Measurement → the tag naming its instance, as the job spec's `[keys.instance_tags]` says.
const INSTANCE_TAGS: [(&str, &str); 5] =
    [("cpu", "cpu"), ("disk", "path"), ("net", "interface"), ("ping", "url"), ("nginx", "port")];

/// splitmix64: a tiny seeded generator, so that every run generates the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug)]
enum Num {
    F(f64),
    U(u64),
}

impl Num {
    fn value(self) -> f64 {
        match self {
            Num::F(x) => x,
            Num::U(x) => x as f64,
        }
    }

    fn json(self) -> serde_json::Value {
        match self {
            Num::F(x) => x.into(),
            Num::U(x) => x.into(),
        }
    }
}

/// One line of the input: a Telegraf JSON metric.
struct Line {
    name: &'static str,
    tags: Vec<(&'static str, String)>,
    fields: Vec<(&'static str, Num)>,
    /// Seconds since the epoch.
    ts: i64,
}

/// The generated input and registry history.
#[derive(Default)]
struct Fixture {
    lines: Vec<Line>,
    registry: Vec<RegistryUpdate>,
}

fn agent_tags(ns: &str, mcis: &str, vm: &str, csp: &str, os: &str) -> AgentTags {
    AgentTags { ns_id: ns.into(), mcis_id: mcis.into(), vm_id: vm.into(), csp_type: csp.into(), os_type: os.into() }
}

fn tag_list(tags: &AgentTags) -> Vec<(&'static str, String)> {
    vec![
        ("nsId", tags.ns_id.to_string()),
        ("mcisId", tags.mcis_id.to_string()),
        ("vmId", tags.vm_id.to_string()),
        ("cspType", tags.csp_type.to_string()),
        ("osType", tags.os_type.to_string()),
    ]
}

/// A registry record of an agent as its tags name it, with the given extras.
fn record_of(
    tags: &AgentTags,
    public_ip: &str,
    vcpu: Option<f64>,
    memory_gib: Option<f64>,
    cost: Option<f64>,
) -> AgentRecord {
    AgentRecord {
        mechanism: Mechanism::Push,
        public_ip: public_ip.to_string(),
        state: AgentState::Enable,
        vcpu,
        memory_gib,
        cost_per_hour: cost,
        ..AgentRecord::from_tags(tags)
    }
}

fn update(key: &str, time_ns: i64, record: Option<AgentRecord>) -> RegistryUpdate {
    RegistryUpdate { key: key.to_string(), time: Some(time_ns), record }
}

impl Fixture {
    /// Adds one metric of `tags` at `ts` (seconds), with its instance tag when given.
    fn metric(
        &mut self,
        tags: &AgentTags,
        name: &'static str,
        instance: Option<&str>,
        fields: &[(&'static str, Num)],
        ts: i64,
    ) {
        let mut list = tag_list(tags);
        if let Some(instance) = instance {
            let tag = INSTANCE_TAGS.iter().find(|(m, _)| *m == name).expect("a measurement with an instance tag").1;
            list.push((tag, instance.to_string()));
        }
        self.lines.push(Line { name, tags: list, fields: fields.to_vec(), ts });
    }

    fn max_ts(&self) -> i64 {
        self.lines.iter().map(|l| l.ts).max().expect("some data") * S
    }

    /// The points as the engine should see them: agent tags, the instance from the measurement's
    /// instance tag, every field.
    fn points(&self) -> Vec<RawPoint> {
        let mut points = Vec::new();
        for line in &self.lines {
            let tag = |name: &str| line.tags.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()).unwrap_or("");
            let tags = agent_tags(tag("nsId"), tag("mcisId"), tag("vmId"), tag("cspType"), tag("osType"));
            let instance = match INSTANCE_TAGS.iter().find(|(m, _)| *m == line.name) {
                Some((_, t)) => tag(t).to_string(),
                None => String::new(),
            };
            for (field, value) in &line.fields {
                points.push(RawPoint {
                    tags: tags.clone(),
                    measurement: line.name.to_string(),
                    instance: instance.clone(),
                    field: field.to_string(),
                    ts: line.ts * S,
                    value: value.value(),
                });
            }
        }
        points
    }

    fn write_input(&self, path: &Path) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for line in &self.lines {
            let tags: serde_json::Map<String, serde_json::Value> =
                line.tags.iter().map(|(k, v)| (k.to_string(), v.clone().into())).collect();
            let fields: serde_json::Map<String, serde_json::Value> =
                line.fields.iter().map(|(k, v)| (k.to_string(), v.json())).collect();
            let metric = serde_json::json!({"name": line.name, "tags": tags, "fields": fields, "timestamp": line.ts});
            writeln!(out, "{metric}").unwrap();
        }
        out.flush().unwrap();
    }

    /// The registry file: a JSON array of records with `key` and `time` (ns); removals as
    /// `"deleted": true`.
    fn write_registry(&self, path: &Path) {
        let mut records = Vec::new();
        for u in &self.registry {
            let mut o = serde_json::Map::new();
            o.insert("key".into(), u.key.clone().into());
            if let Some(t) = u.time {
                o.insert("time".into(), t.into());
            }
            match &u.record {
                None => {
                    o.insert("deleted".into(), true.into());
                }
                Some(r) => {
                    o.insert("ns_id".into(), r.ns_id.clone().into());
                    o.insert("mcis_id".into(), r.mcis_id.clone().into());
                    o.insert("vm_id".into(), r.vm_id.clone().into());
                    o.insert("csp_type".into(), r.csp_type.clone().into());
                    o.insert("os_type".into(), r.os_type.clone().into());
                    o.insert("mechanism".into(), "push".into());
                    if !r.public_ip.is_empty() {
                        o.insert("public_ip".into(), r.public_ip.clone().into());
                    }
                    let state = if r.state == AgentState::Disable { "disable" } else { "enable" };
                    o.insert("state".into(), state.into());
                    for (name, v) in
                        [("vcpu", r.vcpu), ("memory_gib", r.memory_gib), ("cost_per_hour", r.cost_per_hour)]
                    {
                        if let Some(v) = v {
                            o.insert(name.into(), v.into());
                        }
                    }
                }
            }
            records.push(serde_json::Value::Object(o));
        }
        std::fs::write(path, serde_json::to_string_pretty(&records).unwrap()).unwrap();
    }
}

/// The reference's configuration for the jobs written by [`write_spec`].
fn groups_config(custom_tps: bool) -> GroupsConfig {
    let metrics = if custom_tps {
        vec![CustomMetric {
            name: "tps".into(),
            measurement: "nginx".into(),
            field: "requests".into(),
            aggregate: PerVm::Rate,
            over_vms: OverVms::Sum,
        }]
    } else {
        Vec::new()
    };
    GroupsConfig {
        levels: Level::ALL.to_vec(),
        k: 3,
        metrics,
        unhealthy_after: UNHEALTHY_AFTER,
        window: WINDOW_S * S,
        ..GroupsConfig::default()
    }
}

/// A job spec: the file source, 10 s windows with 5 s lateness, instance tags for `ping` (`url`)
/// and `nginx` (`port`), k = 3, the custom metric `tps` when asked, the registry file when
/// given, a Parquet lake.
fn write_spec(dir: &Path, input: &Path, registry: Option<&Path>, lake: &Path, custom_tps: bool) -> PathBuf {
    let mut spec = format!(
        "[source]\nkind = \"file\"\npath = {:?}\nformat = \"json\"\n\n\
         [window]\nsize = \"{WINDOW_S}s\"\nlateness = \"5s\"\n\n\
         [keys.instance_tags]\nping = \"url\"\nnginx = \"port\"\n\n\
         [counters]\nfields = [\"diskio\", \"net\", \"nginx.requests\"]\n\n\
         [groups]\nk = 3\n\n",
        input.display().to_string()
    );
    if custom_tps {
        spec.push_str(
            "[[groups.metric]]\nname = \"tps\"\nmeasurement = \"nginx\"\nfield = \"requests\"\n\
             aggregate = \"rate\"\nover_vms = \"sum\"\n\n",
        );
    }
    spec.push_str("[registry]\n");
    if let Some(registry) = registry {
        spec.push_str(&format!("file = {:?}\n", registry.display().to_string()));
    }
    spec.push_str(&format!("unhealthy_after = {UNHEALTHY_AFTER}\n\n"));
    spec.push_str(&format!("[[sink]]\nkind = \"parquet\"\npath = {:?}\n", lake.display().to_string()));
    let path = dir.join("job.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

fn run(spec: &Path) {
    dragonflow_ok(&["run", spec.to_str().unwrap(), "--workers", "2", "--status-every", "0"]);
}

fn lake_groups(lake: &Path) -> Vec<GroupRow> {
    let rows = sql_rows(
        lake,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, CAST(to_unixtime(window_end) AS BIGINT) AS we, \
         level, group_id, metric, value, vm_count FROM groups",
    );
    rows.iter()
        .map(|r| GroupRow {
            window_start: r["ws"].parse::<i64>().unwrap() * S,
            window_end: r["we"].parse::<i64>().unwrap() * S,
            level: r["level"].clone(),
            group_id: r["group_id"].clone(),
            metric: r["metric"].clone(),
            value: r["value"].parse().unwrap(),
            vm_count: r["vm_count"].parse().unwrap(),
        })
        .collect()
}

fn lake_rankings(lake: &Path) -> Vec<RankRow> {
    let rows = sql_rows(
        lake,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, CAST(to_unixtime(window_end) AS BIGINT) AS we, \
         level, metric, \"order\", rank, group_id, value FROM rankings",
    );
    rows.iter()
        .map(|r| RankRow {
            window_start: r["ws"].parse::<i64>().unwrap() * S,
            window_end: r["we"].parse::<i64>().unwrap() * S,
            level: r["level"].clone(),
            metric: r["metric"].clone(),
            order: r["order"].clone(),
            rank: r["rank"].parse().unwrap(),
            group_id: r["group_id"].clone(),
            value: r["value"].parse().unwrap(),
        })
        .collect()
}

fn lake_health(lake: &Path) -> Vec<HealthRow> {
    let rows = sql_rows(
        lake,
        "SELECT CAST(to_unixtime(\"time\") AS BIGINT) AS t, ns_id, mcis_id, vm_id, csp_type, \"from\", \"to\", reason \
         FROM agent_health",
    );
    rows.iter()
        .map(|r| HealthRow {
            time: r["t"].parse::<i64>().unwrap() * S,
            ns_id: r["ns_id"].clone(),
            mcis_id: r["mcis_id"].clone(),
            vm_id: r["vm_id"].clone(),
            csp_type: r["csp_type"].clone(),
            from: r["from"].clone(),
            to: r["to"].clone(),
            reason: r["reason"].clone(),
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    rel(a, b) <= 1e-9 || (a - b).abs() <= 1e-9
}

/// Compares rows as sets: the same keys, and values equal within a relative 1e-9.
fn compare_keyed<K: Ord + Debug + Clone>(what: &str, want: &[(K, f64)], got: &[(K, f64)]) {
    let mut want_map = BTreeMap::new();
    for (k, v) in want {
        assert!(want_map.insert(k.clone(), *v).is_none(), "{what}: the reference has a duplicate row {k:?}");
    }
    let mut got_map = BTreeMap::new();
    for (k, v) in got {
        assert!(got_map.insert(k.clone(), *v).is_none(), "{what}: duplicate row {k:?}");
    }
    let missing: Vec<_> = want_map.iter().filter(|(k, _)| !got_map.contains_key(*k)).take(10).collect();
    let extra: Vec<_> = got_map.iter().filter(|(k, _)| !want_map.contains_key(*k)).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} rows expected, {} written\nmissing (first 10): {missing:#?}\nunexpected (first 10): {extra:#?}",
        want_map.len(),
        got_map.len()
    );
    let wrong: Vec<_> =
        want_map.iter().filter(|(k, v)| !close(**v, got_map[*k])).map(|(k, v)| (k, *v, got_map[k])).take(10).collect();
    assert!(wrong.is_empty(), "{what}: values differ (key, expected, written; first 10): {wrong:#?}");
}

type GroupKey = (i64, i64, String, String, String, u64);
type RankKey = (i64, i64, String, String, String, u32, String);

fn group_keyed(rows: &[GroupRow]) -> Vec<(GroupKey, f64)> {
    rows.iter()
        .map(|r| {
            let key = (r.window_start, r.window_end, r.level.clone(), r.group_id.clone(), r.metric.clone(), r.vm_count);
            (key, r.value)
        })
        .collect()
}

fn rank_keyed(rows: &[RankRow]) -> Vec<(RankKey, f64)> {
    rows.iter()
        .map(|r| {
            let key = (
                r.window_start,
                r.window_end,
                r.level.clone(),
                r.metric.clone(),
                r.order.clone(),
                r.rank,
                r.group_id.clone(),
            );
            (key, r.value)
        })
        .collect()
}

/// time, ns_id, mcis_id, vm_id, csp_type, from, to, reason
type HealthKey = (i64, String, String, String, String, String, String, String);

fn health_sorted(rows: &[HealthRow]) -> Vec<HealthKey> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.time,
                r.ns_id.clone(),
                r.mcis_id.clone(),
                r.vm_id.clone(),
                r.csp_type.clone(),
                r.from.clone(),
                r.to.clone(),
                r.reason.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every row of `groups`, `rankings` and `agent_health` in the lake against the reference.
fn assert_lake_matches(lake: &Path, want: &reference::Expected) {
    compare_keyed("groups", &group_keyed(&want.groups), &group_keyed(&lake_groups(lake)));
    compare_keyed("rankings", &rank_keyed(&want.rankings), &rank_keyed(&lake_rankings(lake)));
    assert_eq!(health_sorted(&lake_health(lake)), health_sorted(&want.health), "agent_health");
}

/// When an agent sends, in seconds after T0: before `until`, outside the `[a, b)` gaps.
#[derive(Clone, Debug)]
struct Plan {
    until: i64,
    gaps: Vec<(i64, i64)>,
}

impl Plan {
    fn sends(&self, rel_s: i64) -> bool {
        rel_s < self.until && !self.gaps.iter().any(|&(a, b)| (a..b).contains(&rel_s))
    }
}

/// What one agent sends, besides its plan.
struct Agent {
    tags: AgentTags,
    ip: String,
    plan: Plan,
    ping_urls: Vec<String>,
    nginx: bool,
    per_cpu: bool,
    cpu_without_instance: bool,
    net: [[u64; 4]; 2],
    requests: [u64; 2],
    disk_used: [u64; 2],
}

const TICKS: i64 = 150;
const TICK_S: i64 = 2;
const NET_FIELDS: [&str; 4] = ["bytes_recv", "bytes_sent", "packets_recv", "packets_sent"];

/// The random fleet: 40 agents over 3 namespaces with 2 MCIS each (6 MCIS), 3 CSPs, 2 OSes,
/// 2 s ticks for 5 minutes, and a registry history with moves, a disabled agent, a removal, a
/// record arriving later, a record that never reports.
fn random_fleet(seed: u64) -> Fixture {
    let mut rng = Rng(seed);
    let csps = ["aws", "gcp", "azure"];
    let oses = ["ubuntu", "centos"];
    let agents_n = 40usize;
    let before = (T0 - 3600) * S;
    let mut agents = Vec::new();
    for i in 0..agents_n {
        let ns = format!("ns-{}", i % 3 + 1);
        let mcis = format!("mcis-{}", (i / 3) % 2 + 1);
        let tags = agent_tags(&ns, &mcis, &format!("vm-{i:02}"), rng.pick(&csps), rng.pick(&oses));
        // Silences start by 178 s, so their timers (U ≤ 210 s) come more than a minute before the
        // last data (298 s). Agent 0 is silent for exactly `UNHEALTHY_AFTER` windows, agent 5
        // (disabled) for long. Agent 4 reports throughout and is removed at 120.7 s; agent 6
        // stops at 140 s and is removed at 150.3 s, before its timer (170 s): it raises nothing.
        let mut plan = Plan { until: i64::MAX, gaps: Vec::new() };
        let roll = rng.unit();
        match i {
            0 => plan.gaps.push((110, 140)),
            4 => {}
            5 => plan.gaps.push((60, 140)),
            6 => plan.until = 140,
            _ if roll < 0.25 => {
                let from = 2 * (10 + rng.below(80) as i64);
                let len = 2 * (2 + rng.below(39) as i64);
                plan.gaps.push((from, from + len));
            }
            _ if roll < 0.35 => plan.until = 2 * (20 + rng.below(70) as i64),
            _ => {}
        }
        agents.push(Agent {
            tags,
            ip: format!("10.0.0.{}", i + 1),
            plan,
            ping_urls: Vec::new(),
            nginx: rng.chance(0.5),
            per_cpu: i % 5 == 0,
            cpu_without_instance: i == 10,
            net: [[0; 4]; 2],
            requests: [rng.below(1000), rng.below(1000)],
            disk_used: [rng.below(1 << 40), rng.below(1 << 40)],
        });
    }
    let ghost = agent_tags("ns-1", "mcis-1", "vm-ghost", "aws", "ubuntu");
    for i in 0..agents_n {
        let targets = 1 + rng.below(2);
        for _ in 0..targets {
            let same: Vec<usize> = (0..agents_n)
                .filter(|&j| {
                    j != i
                        && agents[j].tags.ns_id == agents[i].tags.ns_id
                        && agents[j].tags.mcis_id == agents[i].tags.mcis_id
                })
                .collect();
            let any: Vec<usize> = (0..agents_n).filter(|&j| j != i).collect();
            let roll = rng.unit();
            let url = if roll < 0.6 {
                agents[rng.pick(&same)].ip.clone()
            } else if roll < 0.75 {
                agents[rng.pick(&same)].tags.vm_id.to_string()
            } else if roll < 0.9 {
                agents[rng.pick(&any)].ip.clone()
            } else {
                "10.0.0.250".to_string()
            };
            if !agents[i].ping_urls.contains(&url) {
                agents[i].ping_urls.push(url);
            }
        }
    }

    let mut fx = Fixture::default();
    // The registry: most agents have a record from before the data; every 8th has none.
    for (i, a) in agents.iter().enumerate() {
        if i % 8 == 7 {
            continue;
        }
        let vcpu = rng.pick(&[1.0, 2.0, 4.0, 8.0, 16.0]);
        let memory = vcpu * rng.pick(&[2.0, 4.0]);
        let cost = (1 + rng.below(300)) as f64 / 100.0;
        let mut record = record_of(&a.tags, &a.ip, Some(vcpu), Some(memory), Some(cost));
        if i == 5 {
            record.state = AgentState::Disable;
        }
        if i == 9 {
            // The record, not the tags, names the groups.
            record.os_type = if &*a.tags.os_type == "ubuntu" { "centos".into() } else { "ubuntu".into() };
        }
        fx.registry.push(update(&a.tags.key(), before, Some(record)));
    }
    fx.registry.push(update(&ghost.key(), before, Some(record_of(&ghost, "10.0.0.250", Some(4.0), None, None))));
    // Moves to the other MCIS of the namespace (the key stays), at times off the window grid;
    // agent 3 moves there and back.
    let other_mcis = |m: &str| if m == "mcis-1" { "mcis-2" } else { "mcis-1" };
    for &i in &[1usize, 2, 3, 13, 20] {
        let a = &agents[i];
        let base = fx.registry.iter().rev().find(|u| u.key == a.tags.key()).unwrap().record.clone().unwrap();
        let t = (T0 + 30 + rng.below(200) as i64) * S + rng.below(S as u64) as i64;
        let mut moved = base.clone();
        moved.mcis_id = other_mcis(&base.mcis_id).to_string();
        fx.registry.push(update(&a.tags.key(), t, Some(moved)));
        if i == 3 {
            fx.registry.push(update(&a.tags.key(), t + 40 * S, Some(base)));
        }
    }
    // Removed: counted from its tags afterwards (no vcpu, no public IP).
    fx.registry.push(update(&agents[4].tags.key(), (T0 + 120) * S + 700_000_000, None));
    fx.registry.push(update(&agents[6].tags.key(), (T0 + 150) * S + 300_000_000, None));
    // No record at first (7 % 8 == 7), one from the middle on.
    let late = &agents[7];
    fx.registry.push(update(
        &late.tags.key(),
        (T0 + 100) * S,
        Some(record_of(&late.tags, &late.ip, Some(2.0), Some(8.0), None)),
    ));

    for tick in 0..TICKS {
        let rel_s = tick * TICK_S;
        let ts = T0 + rel_s;
        for a in agents.iter_mut() {
            if !a.plan.sends(rel_s) {
                continue;
            }
            let idle = Num::F(rng.range(2.0, 99.0));
            if a.cpu_without_instance {
                fx.metric(&a.tags, "cpu", None, &[("usage_idle", idle)], ts);
            } else {
                fx.metric(&a.tags, "cpu", Some("cpu-total"), &[("usage_idle", idle)], ts);
            }
            if a.per_cpu {
                fx.metric(&a.tags, "cpu", Some("cpu0"), &[("usage_idle", Num::F(rng.range(0.0, 100.0)))], ts);
            }
            fx.metric(&a.tags, "mem", None, &[("used_percent", Num::F(rng.range(5.0, 95.0)))], ts);
            for (d, path) in ["/", "/data"].into_iter().enumerate() {
                a.disk_used[d] = a.disk_used[d].saturating_add(rng.below(1 << 20)).saturating_sub(rng.below(1 << 19));
                let total = Num::U(1 << (41 + d));
                fx.metric(&a.tags, "disk", Some(path), &[("used", Num::U(a.disk_used[d])), ("total", total)], ts);
            }
            for (n, interface) in ["eth0", "eth1"].into_iter().enumerate() {
                for c in a.net[n].iter_mut() {
                    *c = if rng.chance(0.01) { rng.below(1000) } else { *c + 1 + rng.below(1 << 24) };
                }
                let fields: Vec<(&'static str, Num)> =
                    NET_FIELDS.iter().zip(a.net[n]).map(|(f, v)| (*f, Num::U(v))).collect();
                fx.metric(&a.tags, "net", Some(interface), &fields, ts);
            }
            fx.metric(&a.tags, "processes", None, &[("total", Num::U(100 + rng.below(200)))], ts);
            for url in a.ping_urls.clone() {
                fx.metric(&a.tags, "ping", Some(&url), &[("average_response_ms", Num::F(rng.range(0.2, 40.0)))], ts);
            }
            if a.nginx {
                for (p, port) in ["80", "443"].into_iter().enumerate() {
                    let r = &mut a.requests[p];
                    *r = if rng.chance(0.02) { rng.below(50) } else { *r + rng.below(5000) };
                    fx.metric(&a.tags, "nginx", Some(port), &[("requests", Num::U(*r))], ts);
                }
            }
        }
    }
    fx
}

#[test]
fn groups_rankings_and_health_match_the_reference() {
    let fx = random_fleet(0x5eed_0001);
    let config = groups_config(true);
    let closed_until = fx.max_ts() - 60 * S;
    let want = reference::expected(&fx.points(), &fx.registry, &config, closed_until);

    // The fleet exercises what it is meant to.
    let has = |metric: &str, level: &str| want.groups.iter().any(|r| r.metric == metric && r.level == level);
    assert!(has("rtt_ms_mean", "mcis") && has("tps", "csp") && has("net_bytes_in_per_s", "os"));
    let reasons = |reason: &str| want.health.iter().filter(|r| r.reason == reason).count();
    assert!(reasons("no data for 3 windows") >= 3, "{:#?}", want.health);
    assert!(reasons("data again") >= 2, "{:#?}", want.health);
    assert!(want.health.iter().all(|r| r.vm_id != "vm-05"), "the disabled agent raises nothing");
    assert!(want.health.iter().all(|r| r.vm_id != "vm-06" || r.to != "unhealthy"), "removed while silent");
    let last_u = want.health.iter().filter(|r| r.to == "unhealthy").map(|r| r.time).max().unwrap();
    assert!(last_u <= closed_until);
    assert_eq!(want.rankings.iter().map(|r| r.rank).max(), Some(3));

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.jsonl");
    let registry = dir.path().join("agents.json");
    let lake = dir.path().join("lake");
    fx.write_input(&input);
    fx.write_registry(&registry);
    let spec = write_spec(dir.path(), &input, Some(&registry), &lake, true);
    run(&spec);
    assert_lake_matches(&lake, &want);
}

/// Four VMs in two MCIS of one namespace, every 2 s for 100 s; vm-a moves from m1 to m2 at
/// 35.5 s, so from the window starting at 40 s.
fn moving_fleet() -> (Fixture, [AgentTags; 4]) {
    let vms = [
        agent_tags("ns-1", "m1", "vm-a", "aws", "ubuntu"),
        agent_tags("ns-1", "m1", "vm-b", "aws", "ubuntu"),
        agent_tags("ns-1", "m2", "vm-c", "gcp", "ubuntu"),
        agent_tags("ns-1", "m2", "vm-d", "gcp", "centos"),
    ];
    let mut fx = Fixture::default();
    for (i, tags) in vms.iter().enumerate() {
        // vcpu 1, 2, 4, 8: a sum of vcpu names its members.
        let record = record_of(tags, &format!("10.1.0.{i}"), Some((1 << i) as f64), None, None);
        fx.registry.push(update(&tags.key(), (T0 - 60) * S, Some(record)));
    }
    let mut moved = fx.registry[0].record.clone().unwrap();
    moved.mcis_id = "m2".into();
    fx.registry.push(update(&vms[0].key(), (T0 + 35) * S + 500_000_000, Some(moved)));
    for rel_s in (0..100).step_by(2) {
        for (i, tags) in vms.iter().enumerate() {
            let idle = Num::F(10.0 * (i + 1) as f64 + rel_s as f64 / 10.0);
            fx.metric(tags, "cpu", Some("cpu-total"), &[("usage_idle", idle)], T0 + rel_s);
        }
    }
    (fx, vms)
}

#[test]
fn groups_moved_vm_counts_in_old_then_new_mcis_never_twice() {
    let (fx, _) = moving_fleet();
    let config = groups_config(false);
    let want = reference::expected(&fx.points(), &fx.registry, &config, fx.max_ts() - 60 * S);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.jsonl");
    let registry = dir.path().join("agents.json");
    let lake = dir.path().join("lake");
    fx.write_input(&input);
    fx.write_registry(&registry);
    run(&write_spec(dir.path(), &input, Some(&registry), &lake, false));

    let got = lake_groups(&lake);
    let vcpu = |start: i64, group: &str| -> Option<(f64, u64)> {
        got.iter()
            .find(|r| {
                r.window_start == (T0 + start) * S
                    && r.level == "mcis"
                    && r.group_id == group
                    && r.metric == "vcpu_total"
            })
            .map(|r| (r.value, r.vm_count))
    };
    for start in (0..100).step_by(10) {
        if start < 40 {
            assert_eq!(vcpu(start, "ns-1/m1"), Some((3.0, 2)), "window +{start}s");
            assert_eq!(vcpu(start, "ns-1/m2"), Some((12.0, 2)), "window +{start}s");
        } else {
            assert_eq!(vcpu(start, "ns-1/m1"), Some((2.0, 1)), "window +{start}s");
            assert_eq!(vcpu(start, "ns-1/m2"), Some((13.0, 3)), "window +{start}s");
        }
        for level in ["ns", "mcis", "csp", "os"] {
            let counted: u64 = got
                .iter()
                .filter(|r| r.window_start == (T0 + start) * S && r.level == level && r.metric == "cpu_util_mean")
                .map(|r| r.vm_count)
                .sum();
            assert_eq!(counted, 4, "VMs counted at level {level} in window +{start}s");
        }
    }
    assert_lake_matches(&lake, &want);
}

/// Every 2 s for 150 s: `steady` throughout; `exact` silent in [30 s, 60 s) (exactly 3 windows);
/// `long` silent in [30 s, 90 s); `short` silent in [30 s, 50 s); `ends` stops at 130 s.
fn silent_fleet() -> Fixture {
    let mut fx = Fixture::default();
    let plans: [(&str, Plan); 5] = [
        ("steady", Plan { until: i64::MAX, gaps: vec![] }),
        ("exact", Plan { until: i64::MAX, gaps: vec![(30, 60)] }),
        ("long", Plan { until: i64::MAX, gaps: vec![(30, 90)] }),
        ("short", Plan { until: i64::MAX, gaps: vec![(30, 50)] }),
        ("ends", Plan { until: 130, gaps: vec![] }),
    ];
    for rel_s in (0..150).step_by(2) {
        for (vm, plan) in &plans {
            if plan.sends(rel_s) {
                let tags = agent_tags("ns-1", "m1", vm, "aws", "ubuntu");
                fx.metric(&tags, "mem", None, &[("used_percent", Num::F(50.0))], T0 + rel_s);
            }
        }
    }
    fx
}

#[test]
fn groups_agent_health_after_n_silent_windows_and_not_at_the_end_of_input() {
    let fx = silent_fleet();
    let config = groups_config(false);
    let want = reference::expected(&fx.points(), &fx.registry, &config, fx.max_ts() - 60 * S);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.jsonl");
    let lake = dir.path().join("lake");
    fx.write_input(&input);
    run(&write_spec(dir.path(), &input, None, &lake, false));

    let got = lake_health(&lake);
    let of = |vm: &str| -> Vec<(i64, String, String, String)> {
        let mut rows: Vec<_> = got
            .iter()
            .filter(|r| r.vm_id == vm)
            .map(|r| (r.time / S - T0, r.from.clone(), r.to.clone(), r.reason.clone()))
            .collect();
        // Two changes at one time: unhealthy first, then healthy again.
        rows.sort_by_key(|r| (r.0, r.2 != "unhealthy"));
        rows
    };
    let h = |t: i64, from: &str, to: &str, reason: &str| (t, from.to_string(), to.to_string(), reason.to_string());
    let first = h(0, "unknown", "healthy", "first data");
    let silent = "no data for 3 windows";
    assert_eq!(of("steady"), vec![first.clone()]);
    // Last data in the window at 20 s: unhealthy at U = 20 + 4·10 = 60, healthy with the data at 60.
    assert_eq!(
        of("exact"),
        vec![first.clone(), h(60, "healthy", "unhealthy", silent), h(60, "unhealthy", "healthy", "data again")]
    );
    assert_eq!(
        of("long"),
        vec![first.clone(), h(60, "healthy", "unhealthy", silent), h(90, "unhealthy", "healthy", "data again")]
    );
    assert_eq!(of("short"), vec![first.clone()]);
    // Its timer (U = 160 s) is after the end of the input: the end is not silence.
    assert_eq!(of("ends"), vec![first.clone()]);
    assert!(got.iter().all(|r| r.ns_id == "ns-1" && r.mcis_id == "m1" && r.csp_type == "aws"), "{got:#?}");
    assert_lake_matches(&lake, &want);
}

/// The fixtures themselves, against the reference alone (no binary): quick to run, and they keep
/// the end-to-end expectations above honest.
#[test]
fn groups_fixtures_agree_with_the_reference() {
    let (fx, _) = moving_fleet();
    let want = reference::expected(&fx.points(), &fx.registry, &groups_config(false), fx.max_ts() - 60 * S);
    let vcpu: Vec<_> = want
        .groups
        .iter()
        .filter(|r| r.level == "mcis" && r.metric == "vcpu_total")
        .map(|r| ((r.window_start / S - T0), r.group_id.as_str(), r.value, r.vm_count))
        .collect();
    assert_eq!(vcpu.len(), 20);
    for (start, group, value, count) in vcpu {
        let want = match (start < 40, group) {
            (true, "ns-1/m1") => (3.0, 2),
            (true, _) => (12.0, 2),
            (false, "ns-1/m1") => (2.0, 1),
            (false, _) => (13.0, 3),
        };
        assert_eq!((value, count), want, "window +{start}s {group}");
    }

    let fx = silent_fleet();
    let want = reference::expected(&fx.points(), &fx.registry, &groups_config(false), fx.max_ts() - 60 * S);
    let changes: Vec<_> =
        want.health.iter().filter(|r| r.from != "unknown").map(|r| (r.time / S - T0, r.vm_id.as_str())).collect();
    assert_eq!(changes, vec![(60, "exact"), (60, "exact"), (60, "long"), (90, "long")]);

    let fx = random_fleet(0x5eed_0001);
    let points = fx.points();
    assert!(points.iter().all(|p| p.ts % S == 0));
    // Timestamps are unique per series (the reference's first and last rely on it).
    let mut seen = std::collections::BTreeSet::new();
    for p in &points {
        assert!(seen.insert((p.tags.key(), &p.measurement, &p.instance, &p.field, p.ts)), "{p:?}");
    }
    // No health timer in the last minute of data.
    let max_ts = fx.max_ts();
    let want = reference::expected(&points, &fx.registry, &groups_config(true), max_ts);
    assert!(want.health.iter().all(|r| r.to != "unhealthy" || r.time <= max_ts - 60 * S));
}

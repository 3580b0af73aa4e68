//! The fleet dataflow against the brute-force reference, on random fleets and registry histories.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect, Probe};

use super::dataflow::with_vm_parts;
use super::reference::{expected, RawPoint};
use super::{fleet_metrics, CustomMetric, GroupsConfig, OverVms, PerVm};
use crate::aggregate::Agg;
use crate::model::{AgentTags, GroupRow, HealthRow, RankRow, SeriesKey, SinkItem, WindowBatch};
use crate::registry::{AgentRecord, AgentState, RegistryUpdate};

const SIZE: i64 = 10_000_000_000;

fn config() -> GroupsConfig {
    GroupsConfig {
        k: 2,
        unhealthy_after: 2,
        window: SIZE,
        metrics: vec![CustomMetric {
            name: "tps".into(),
            measurement: "nginx".into(),
            field: "requests".into(),
            aggregate: PerVm::Rate,
            over_vms: OverVms::Sum,
        }],
        ..GroupsConfig::default()
    }
}

/// Window batches of the points, one per window and worker (series split by hash), in window order.
fn batches(points: &[RawPoint], peers: usize, index: usize) -> Vec<WindowBatch> {
    let mut agents: BTreeMap<AgentTags, Arc<AgentTags>> = BTreeMap::new();
    type Series = (AgentTags, String, String, String);
    let mut windows: BTreeMap<i64, BTreeMap<Series, Agg>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        let start = p.ts.div_euclid(SIZE) * SIZE;
        let key = (p.tags.clone(), p.measurement.clone(), p.instance.clone(), p.field.clone());
        windows
            .entry(start)
            .or_default()
            .entry(key)
            .and_modify(|a| a.add(p.ts, i as u64, p.value))
            .or_insert_with(|| Agg::of(p.ts, i as u64, p.value));
    }
    windows
        .into_iter()
        .map(|(start, series)| {
            let rows = series
                .into_iter()
                .map(|((tags, m, inst, f), agg)| {
                    let agent = agents.entry(tags.clone()).or_insert_with(|| Arc::new(tags)).clone();
                    (SeriesKey::new(agent, m.into(), inst.into(), f.into()), agg)
                })
                .filter(|(k, _)| k.stable_hash() as usize % peers == index)
                .collect();
            WindowBatch { window_start: start, window_end: start + SIZE, rows }
        })
        .collect()
}

/// Runs the dataflow on two workers; windows up to `closed_until` close while the input runs.
fn run(points: Vec<RawPoint>, registry: Vec<RegistryUpdate>, closed_until: i64) -> Vec<SinkItem> {
    run_restored(points, registry, closed_until, Vec::new())
}

/// As [`run`], starting from the agents' state of a previous run.
fn run_restored(
    points: Vec<RawPoint>,
    registry: Vec<RegistryUpdate>,
    closed_until: i64,
    restored: Vec<crate::model::AgentRow>,
) -> Vec<SinkItem> {
    let restored = Arc::new(restored);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let out = out.clone();
        let restored = restored.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        let (mut windows, mut updates) = worker.dataflow::<u64, _, _>(|scope| {
            let (windows, w) = scope.new_input::<Vec<WindowBatch>>();
            let (updates, u) = scope.new_input::<Vec<RegistryUpdate>>();
            let (_, parts) = with_vm_parts(w, &config());
            fleet_metrics(parts, u, config(), Arc::new(move || closed_until), restored)
                .inspect(move |item| out.lock().unwrap().push(item.clone()))
                .probe_with(&probe);
            (windows, updates)
        });
        if index == 0 {
            for u in &registry {
                updates.send(u.clone());
            }
        }
        // Windows after `closed_until` close only when the input ends: they are sent at its time.
        let end = (closed_until + 1).max(0) as u64;
        for batch in batches(&points, peers, index) {
            let t = (batch.window_end as u64).min(end);
            windows.advance_to(t);
            updates.advance_to(t);
            windows.send(batch);
        }
        windows.advance_to(end);
        updates.advance_to(end);
        while probe.less_than(windows.time()) {
            worker.step();
        }
    })
    .unwrap();
    let items = seen.lock().unwrap().clone();
    items
}

fn sorted_groups(mut rows: Vec<GroupRow>) -> Vec<GroupRow> {
    rows.sort_by(|a, b| {
        (a.window_start, &a.level, &a.group_id, &a.metric).cmp(&(b.window_start, &b.level, &b.group_id, &b.metric))
    });
    rows
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn check(items: Vec<SinkItem>, points: &[RawPoint], registry: &[RegistryUpdate], closed_until: i64) {
    let want = expected(points, registry, &config(), closed_until);
    let (mut groups, mut ranks, mut health) = (Vec::<GroupRow>::new(), Vec::<RankRow>::new(), Vec::<HealthRow>::new());
    for item in items {
        match item {
            SinkItem::Groups(r) => groups.extend(r),
            SinkItem::Rankings(r) => ranks.extend(r),
            SinkItem::Health(r) => health.extend(r),
            _ => {}
        }
    }
    let (groups, want_groups) = (sorted_groups(groups), sorted_groups(want.groups));
    assert_eq!(groups.len(), want_groups.len(), "groups:\n{groups:#?}\nwant:\n{want_groups:#?}");
    for (g, w) in groups.iter().zip(&want_groups) {
        let same = (g.window_start, &g.level, &g.group_id, &g.metric, g.vm_count)
            == (w.window_start, &w.level, &w.group_id, &w.metric, w.vm_count);
        assert!(same && close(g.value, w.value), "group row {g:?} != {w:?}");
    }
    let key = |r: &RankRow| (r.window_start, r.level.clone(), r.metric.clone(), r.order.clone(), r.rank);
    ranks.sort_by_key(key);
    let mut want_ranks = want.rankings;
    want_ranks.sort_by_key(key);
    assert_eq!(ranks.len(), want_ranks.len(), "rankings {ranks:#?} want {want_ranks:#?}");
    for (r, w) in ranks.iter().zip(&want_ranks) {
        // Values within rounding may order equal groups differently: compare the value at each rank.
        assert!(key(r) == key(w) && close(r.value, w.value), "rank row {r:?} != {w:?}");
    }
    let hkey = |h: &HealthRow| (h.time, h.vm_id.clone(), h.to.clone());
    health.sort_by_key(hkey);
    let mut want_health = want.health;
    want_health.sort_by_key(hkey);
    assert_eq!(health, want_health);
}

fn tags(i: usize) -> AgentTags {
    AgentTags {
        ns_id: format!("ns{}", i % 2).into(),
        mcis_id: format!("m{}", i % 3).into(),
        vm_id: format!("vm{i}").into(),
        csp_type: ["aws", "gcp"][i % 2].into(),
        os_type: ["ubuntu", "centos"][i / 2 % 2].into(),
    }
}

fn point(agent: usize, m: &str, inst: &str, f: &str, ts: i64, value: f64) -> RawPoint {
    RawPoint { tags: tags(agent), measurement: m.into(), instance: inst.into(), field: f.into(), ts, value }
}

/// An agent's points in one window: two samples of each measurement, 3 s apart.
fn window_points(agent: usize, start: i64, v: &[f64; 6], agents: usize) -> Vec<RawPoint> {
    let mut p = Vec::new();
    for (j, off) in [1_000_000_000i64, 4_000_000_000].into_iter().enumerate() {
        let ts = start + off + agent as i64; // unique per series
        let s = j as f64;
        p.push(point(agent, "cpu", "cpu-total", "usage_idle", ts, v[0] + s));
        p.push(point(agent, "mem", "", "used_percent", ts, v[1] - s));
        p.push(point(agent, "disk", "/", "used", ts, v[2] + s));
        p.push(point(agent, "disk", "/data", "total", ts, v[3]));
        p.push(point(agent, "net", "eth0", "bytes_recv", ts, v[4] * (1.0 + s)));
        p.push(point(agent, "nginx", "", "requests", ts, v[5] * (1.0 + s)));
        p.push(point(agent, "processes", "", "total", ts, v[2].round()));
        let target = format!("vm{}", (agent + 3) % agents);
        p.push(point(agent, "ping", &target, "average_response_ms", ts, v[3] / 10.0));
    }
    p
}

fn record(agent: usize, mcis: usize, state: AgentState, vcpu: f64) -> AgentRecord {
    let t = tags(agent);
    AgentRecord {
        key: t.key(),
        ns_id: t.ns_id.to_string(),
        mcis_id: format!("m{mcis}"),
        vm_id: t.vm_id.to_string(),
        csp_type: t.csp_type.to_string(),
        os_type: t.os_type.to_string(),
        state,
        vcpu: Some(vcpu),
        memory_gib: Some(vcpu * 4.0),
        cost_per_hour: Some(vcpu / 10.0),
        public_ip: format!("10.0.0.{agent}"),
        ..AgentRecord::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fleet_dataflow_matches_reference(
        agents in 2usize..7,
        windows in 4i64..10,
        presence in prop::collection::vec(any::<bool>(), 70),
        values in prop::collection::vec((0.0f64..100.0, 0.0f64..100.0, 1e3f64..1e6, 1e6f64..1e7, 1e3f64..1e5, 1.0f64..1e3), 70),
        changes in prop::collection::vec((0usize..7, 0i64..10, 0usize..4, any::<bool>(), 1u32..9, 0u8..8), 0..8),
        tail in 0i64..3,
    ) {
        let mut points = Vec::new();
        for a in 0..agents {
            for w in 0..windows {
                let i = (a * 10 + w as usize) % 70;
                if presence[i] || w == 0 {
                    let v = &values[i];
                    points.extend(window_points(a, w * SIZE, &[v.0, v.1, v.2, v.3, v.4, v.5], agents));
                }
            }
        }
        let mut registry = Vec::new();
        for (a, w, mcis, enabled, vcpu, kind) in changes {
            let a = a % agents;
            let key = tags(a).key();
            let time = (kind % 4 != 0).then_some(w * SIZE + (kind as i64 % 2) * SIZE / 2);
            let record = (kind != 7).then(|| {
                let state = if enabled || kind < 5 { AgentState::Enable } else { AgentState::Disable };
                record(a, mcis, state, vcpu as f64)
            });
            registry.push(RegistryUpdate { key, time, record });
        }
        // Registry entries given at one instant keep their order per key and time.
        registry.sort_by_key(|u| u.time.is_some());
        let closed_until = (windows - tail) * SIZE;
        let items = run(points.clone(), registry.clone(), closed_until);
        check(items, &points, &registry, closed_until);
    }
}

#[test]
fn a_moved_vm_counts_in_one_mcis_per_window() {
    let mut points = Vec::new();
    for w in 0..6 {
        for a in 0..3 {
            points.extend(window_points(a, w * SIZE, &[50.0, 40.0, 1e4, 1e6, 1e4, 10.0], 3));
        }
    }
    let key = tags(0).key();
    let registry = vec![
        RegistryUpdate { key: key.clone(), time: None, record: Some(record(0, 0, AgentState::Enable, 2.0)) },
        RegistryUpdate { key, time: Some(3 * SIZE), record: Some(record(0, 1, AgentState::Enable, 2.0)) },
    ];
    let items = run(points.clone(), registry.clone(), 6 * SIZE);
    check(items.clone(), &points, &registry, 6 * SIZE);
    let mut counts: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for item in items {
        if let SinkItem::Groups(rows) = item {
            for r in rows.into_iter().filter(|r| r.level == "mcis" && r.metric == "cpu_util_mean") {
                counts.insert((r.window_start, r.group_id), r.vm_count);
            }
        }
    }
    for w in 0..6 {
        let total: u64 = counts.iter().filter(|((s, _), _)| *s == w * SIZE).map(|(_, c)| c).sum();
        assert_eq!(total, 3, "window {w}: every VM once");
        let in_m1 = counts.get(&(w * SIZE, "ns0/m1".to_string())).copied().unwrap_or(0);
        // vm0 (ns0) moves from m0 to m1 at window 3; vm1 is ns1/m1, vm2 ns0/m2.
        assert_eq!(in_m1, if w >= 3 { 1 } else { 0 }, "window {w}");
    }
}

#[test]
fn a_removal_superseded_within_its_window_does_not_stop_health() {
    let points: Vec<RawPoint> =
        (0..3).flat_map(|a| window_points(a, 0, &[50.0, 40.0, 1e4, 1e6, 1e4, 10.0], 3)).collect();
    let key = tags(2).key();
    let registry = vec![
        RegistryUpdate { key: key.clone(), time: Some(2 * SIZE), record: Some(record(2, 0, AgentState::Enable, 4.0)) },
        RegistryUpdate { key, time: Some(SIZE + SIZE / 2), record: None },
    ];
    check(run(points.clone(), registry.clone(), 3 * SIZE), &points, &registry, 3 * SIZE);
}

#[test]
fn a_restored_agent_that_reports_on_stays_healthy() {
    // A previous run saw every agent up to the window at 30 s; this run recomputes from 40 s.
    let mut points = Vec::new();
    for w in 4..12 {
        for a in 0..4 {
            points.extend(window_points(a, w * SIZE, &[50.0, 40.0, 1e4, 1e6, 1e4, 10.0], 4));
        }
    }
    let restored = (0..4)
        .map(|a| crate::model::AgentRow {
            time: 3 * SIZE,
            record: AgentRecord::from_tags(&tags(a)),
            first_seen: Some(0),
            last_seen: Some(3 * SIZE),
            health: "healthy".into(),
            deleted: false,
        })
        .collect();
    let items = run_restored(points, Vec::new(), 12 * SIZE, restored);
    let health: Vec<HealthRow> = items
        .into_iter()
        .filter_map(|i| match i {
            SinkItem::Health(h) => Some(h),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(health.is_empty(), "no change of health: {health:?}");
}

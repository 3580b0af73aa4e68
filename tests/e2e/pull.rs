//! Pull collection from outside: `dragonflow loadgen --mode pull` serves agents over HTTP (and
//! logs every value it serves), `dragonflow run` polls them.
//!
//! - 2 000 pull agents, a pull-only job: every (agent, window) of `aggregates` holds exactly the
//!   values the agents served, group metrics equal a brute-force computation over those windows,
//!   alarm events equal a reference state machine stepped through them. 5 % of the agents fail
//!   for a while: they turn unhealthy after the configured number of failed polls and recover when
//!   they answer again, and meanwhile the other agents' windows go on closing, complete.
//! - A mixed fleet, half pushing to tansu and half pulled (listed in a registry topic on tansu),
//!   in the same namespaces and MCIS: one set of group metrics over both halves; a pulled agent
//!   removed from the topic is no longer polled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, kafka, rel, sql_rows, unique, PullAgents};

/// `dragonflow run SPEC` in the background.
fn start_job(spec: &Path) -> Child {
    Command::new(bin())
        .args(["run", spec.to_str().unwrap(), "--status-every", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a job as Ctrl-C would (flushing its windows) and insists that it ends well.
fn stop_job(job: Child) -> Output {
    let pid = job.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = job.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the job failed:\n{stdout}\n{stderr}");
    out
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

/// A series' window as `aggregates` has it.
#[derive(Clone, Debug)]
struct Window {
    ns: String,
    mcis: String,
    vm: String,
    csp: String,
    os: String,
    measurement: String,
    instance: String,
    field: String,
    /// Window start, s.
    ws: i64,
    count: u64,
    mean: f64,
}

/// The windows of the fields the checks use: CPU idle and memory used (every VM that reports
/// in a window has one of them there: agents send both at every tick, and both are pulled).
fn lake_windows(lake: &Path) -> Vec<Window> {
    sql_rows(
        lake,
        "SELECT ns_id, mcis_id, vm_id, csp_type, os_type, measurement, instance, field, \
         CAST(to_unixtime(window_start) AS BIGINT) AS ws, count, mean FROM aggregates \
         WHERE (measurement = 'cpu' AND field = 'usage_idle') OR (measurement = 'mem' AND field = 'used_percent')",
    )
    .into_iter()
    .map(|r| Window {
        ns: r["ns_id"].clone(),
        mcis: r["mcis_id"].clone(),
        vm: r["vm_id"].clone(),
        csp: r["csp_type"].clone(),
        os: r["os_type"].clone(),
        measurement: r["measurement"].clone(),
        instance: r["instance"].clone(),
        field: r["field"].clone(),
        ws: r["ws"].parse().unwrap(),
        count: r["count"].parse().unwrap(),
        mean: r["mean"].parse().unwrap(),
    })
    .collect()
}

/// The values of those fields the agents served, per (vm, measurement, field, window start),
/// from the generator's log.
fn served(log: &Path, size: i64) -> BTreeMap<(String, String, String, i64), Vec<f64>> {
    let mut out: BTreeMap<_, Vec<f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let ws = v["timestamp"].as_i64().unwrap().div_euclid(size) * size;
        let measurement = v["measurement"].as_str().unwrap();
        let field = match measurement {
            "cpu" => "usage_idle",
            "mem" => "used_percent",
            _ => continue,
        };
        let value = v["fields"][field].as_f64().unwrap();
        out.entry((v["vm_id"].as_str().unwrap().to_string(), measurement.to_string(), field.to_string(), ws))
            .or_default()
            .push(value);
    }
    out
}

/// `groups` rows of the metrics checked: (window start, level, group) → metric → (value, vm_count).
type Groups = BTreeMap<(i64, String, String), BTreeMap<String, (f64, u64)>>;

const GROUP_METRICS: &str = "'cpu_util_mean', 'cpu_util_max', 'mem_util_mean', 'mem_util_max'";

fn lake_groups(lake: &Path) -> Groups {
    let mut out: Groups = BTreeMap::new();
    let query = format!(
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, level, group_id, metric, value, vm_count \
         FROM groups WHERE level IN ('ns', 'mcis', 'csp', 'os') AND metric IN ({GROUP_METRICS})"
    );
    for r in sql_rows(lake, &query) {
        out.entry((r["ws"].parse().unwrap(), r["level"].clone(), r["group_id"].clone()))
            .or_default()
            .insert(r["metric"].clone(), (r["value"].parse().unwrap(), r["vm_count"].parse().unwrap()));
    }
    out
}

/// The group metrics computed by brute force from the per-series windows (docs/groups.md): per
/// VM, CPU use is 100 − the mean idle of `cpu-total`, memory the mean `used_percent`; per group,
/// their mean and max over the VMs that have them, and the count of VMs with any data.
fn reference_groups(windows: &[Window]) -> Groups {
    // Per window and VM: its groups, CPU and memory use.
    #[derive(Default)]
    struct Vm {
        groups: Vec<(&'static str, String)>,
        cpu: Option<f64>,
        mem: Option<f64>,
    }
    let mut vms: BTreeMap<(i64, String), Vm> = BTreeMap::new();
    for w in windows {
        let vm = vms.entry((w.ws, w.vm.clone())).or_default();
        vm.groups = vec![
            ("ns", w.ns.clone()),
            ("mcis", format!("{}/{}", w.ns, w.mcis)),
            ("csp", w.csp.clone()),
            ("os", w.os.clone()),
        ];
        match (w.measurement.as_str(), w.instance.as_str(), w.field.as_str()) {
            ("cpu", "cpu-total", "usage_idle") => vm.cpu = Some(100.0 - w.mean),
            ("mem", _, "used_percent") => vm.mem = Some(w.mean),
            _ => {}
        }
    }
    let mut members: BTreeMap<(i64, String, String), Vec<&Vm>> = BTreeMap::new();
    for ((ws, _), vm) in &vms {
        for (level, group) in &vm.groups {
            members.entry((*ws, level.to_string(), group.clone())).or_default().push(vm);
        }
    }
    let mut out: Groups = BTreeMap::new();
    for (key, vms) in members {
        let count = vms.len() as u64;
        let metrics = out.entry(key).or_default();
        for (name, values) in [
            ("cpu", vms.iter().filter_map(|v| v.cpu).collect::<Vec<f64>>()),
            ("mem", vms.iter().filter_map(|v| v.mem).collect::<Vec<f64>>()),
        ] {
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            metrics.insert(format!("{name}_util_mean"), (mean, count));
            metrics.insert(format!("{name}_util_max"), (max, count));
        }
    }
    out
}

/// The lake's groups equal the reference in every window before `cut` (windows from `cut` on
/// were closed by the stop: compared where present). Returns the number of values compared.
fn assert_groups_match(got: &Groups, want: &Groups, cut: i64) -> usize {
    let before = |g: &Groups| g.keys().filter(|k| k.0 < cut).cloned().collect::<BTreeSet<_>>();
    let (got_keys, want_keys) = (before(got), before(want));
    assert_eq!(
        got_keys.symmetric_difference(&want_keys).take(5).collect::<Vec<_>>(),
        Vec::<&(i64, String, String)>::new(),
        "the same groups in the same windows"
    );
    let mut compared = 0;
    for (key, metrics) in got {
        let Some(expected) = want.get(key) else {
            assert!(key.0 >= cut, "{key:?} is not in the reference");
            continue;
        };
        assert_eq!(metrics.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{key:?}");
        for (metric, (value, count)) in metrics {
            let (want_value, want_count) = expected[metric];
            assert_eq!(*count, want_count, "vm_count of {key:?} {metric}");
            assert!(rel(*value, want_value) < 1e-9, "{key:?} {metric}: {value} vs {want_value}");
            compared += 1;
        }
    }
    compared
}

/// The rule of the scale test: the mean idle CPU of each VM, WARNING under 50, CRITICAL under 25.
const CPU_RULE: &str = "[[alarm]]\nname = \"cpu_busy\"\nmeasurement = \"cpu\"\nfield = \"usage_idle\"\n\
    aggregate = \"mean\"\ntarget = \"vm\"\ncomparison = \"<\"\nwarn = 50\ncrit = 25\nnodata_after = 1000\n";

/// The events of [`CPU_RULE`] stepped through each VM's windows in order: a change of level is
/// an event at the window's end, starting from OK.
fn reference_events(windows: &[Window], size: i64) -> BTreeSet<(String, i64, String, String)> {
    let mut per_target: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for w in windows.iter().filter(|w| w.measurement == "cpu" && w.field == "usage_idle") {
        let target = format!("{}/{}/{}/{}[{}]", w.ns, w.mcis, w.vm, w.csp, w.instance);
        per_target.entry(target).or_default().insert(w.ws, w.mean);
    }
    let mut events = BTreeSet::new();
    for (target, means) in per_target {
        let mut level = "OK";
        for (ws, mean) in means {
            let now = if mean < 25.0 {
                "CRITICAL"
            } else if mean < 50.0 {
                "WARNING"
            } else {
                "OK"
            };
            if now != level {
                events.insert((target.clone(), ws + size, level.to_string(), now.to_string()));
                level = now;
            }
        }
    }
    events
}

fn lake_events(lake: &Path, rule: &str) -> BTreeSet<(String, i64, String, String)> {
    sql_rows(
        lake,
        &format!(
            "SELECT target, CAST(to_unixtime(time) AS BIGINT) AS t, previous_level, level FROM alarm_events \
             WHERE rule = '{rule}'"
        ),
    )
    .into_iter()
    .map(|r| (r["target"].clone(), r["t"].parse().unwrap(), r["previous_level"].clone(), r["level"].clone()))
    .collect()
}

fn wall_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn two_thousand_pulled_agents_fill_windows_groups_and_alarms_and_failing_ones_recover() {
    const AGENTS: usize = 2000;
    const SIZE: i64 = 6;
    const FAIL_FOR: Duration = Duration::from_secs(40);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("served.jsonl");
    let agents =
        PullAgents::start(dir.path(), AGENTS, &["--interval", "3s", "--seed", "5", "--log", log.to_str().unwrap()]);
    assert_eq!(agents.registry.len(), AGENTS);
    assert!(agents.registry.iter().all(|r| r["mechanism"] == "pull" && r["pull_url"].is_string()));
    let lake = dir.path().join("lake");
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\nkind = \"pull\"\n\n[window]\nsize = \"{SIZE}s\"\nlateness = \"4s\"\n\n\
             [registry]\nfile = {}\nunhealthy_after = 1000\n\n\
             [pull]\nmeasurements = [\"cpu\", \"mem\"]\ninterval = \"3s\"\ntimeout = \"3s\"\n\
             failures_unhealthy = 2\nhealthcheck_interval = \"3s\"\n\n\
             [[sink]]\nkind = \"parquet\"\npath = {}\nflush_interval = \"1s\"\n\n{CPU_RULE}",
            quoted(&agents.registry_path),
            quoted(&lake)
        ),
    )
    .unwrap();
    let job = start_job(&spec);

    // After a few windows, 5 % of the agents fail (500) for a while, then answer again.
    std::thread::sleep(Duration::from_secs(12));
    let failing: Vec<String> =
        agents.registry.iter().step_by(20).map(|r| r["vm_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(failing.len(), AGENTS / 20);
    let failed_at = wall_s();
    let recover_at = Instant::now() + FAIL_FOR;
    for vm in &failing {
        agents.set(vm, "fail");
    }
    // Meanwhile, windows that began after the failure are written, each with every other agent:
    // the failing agents hold nothing back. (Read again 3 s after the first appears, when every
    // worker has flushed it: the sink flushes every second.)
    let windows_since_failure = || {
        sql_rows(
            &lake,
            &format!(
                "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, count(DISTINCT vm_id) AS vms FROM aggregates \
                 WHERE measurement = 'cpu' AND CAST(to_unixtime(window_start) AS BIGINT) >= {} \
                 GROUP BY window_start ORDER BY ws",
                failed_at + 3
            ),
        )
    };
    let first_seen = loop {
        std::thread::sleep(Duration::from_secs(2));
        let seen = windows_since_failure();
        if !seen.is_empty() || Instant::now() + Duration::from_secs(6) >= recover_at {
            break seen;
        }
    };
    assert!(!first_seen.is_empty(), "no window closed while 5 % of the agents failed");
    std::thread::sleep(Duration::from_secs(3));
    let healthy_windows: Vec<_> =
        windows_since_failure().into_iter().filter(|w| first_seen.iter().any(|f| f["ws"] == w["ws"])).collect();
    assert_eq!(healthy_windows.len(), first_seen.len());
    for w in &healthy_windows {
        assert_eq!(w["vms"], (AGENTS - failing.len()).to_string(), "every answering agent in the window {w:?}");
    }
    std::thread::sleep(recover_at.saturating_duration_since(Instant::now()));
    let recovered_at = wall_s();
    for vm in &failing {
        agents.set(vm, "ok");
    }
    std::thread::sleep(Duration::from_secs(15));
    let out = stop_job(job);
    drop(agents);
    let stdout = String::from_utf8_lossy(&out.stdout);

    // Every (agent, series, window) written holds exactly the values served in it, and every
    // value served is written, but in the last windows, which the stop cut through.
    let windows = lake_windows(&lake);
    let served = served(&log, SIZE);
    let last = windows.iter().map(|w| w.ws).max().unwrap();
    let cut = last - SIZE;
    let mut compared = 0;
    for w in windows.iter().filter(|w| w.ws < cut) {
        let values = served
            .get(&(w.vm.clone(), w.measurement.clone(), w.field.clone(), w.ws))
            .unwrap_or_else(|| panic!("{w:?} was not served"));
        assert_eq!(w.count, values.len() as u64, "{w:?} vs {values:?}");
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(rel(w.mean, mean) < 1e-9, "{w:?} vs {values:?}");
        compared += 1;
    }
    let written: BTreeSet<_> =
        windows.iter().map(|w| (w.vm.clone(), w.measurement.clone(), w.field.clone(), w.ws)).collect();
    let first = windows.iter().map(|w| w.ws).min().unwrap();
    let missing: Vec<_> =
        served.keys().filter(|k| k.3 >= first && k.3 < cut && !written.contains(*k)).take(5).collect();
    assert!(missing.is_empty(), "served but not written: {missing:?}");
    let vms: BTreeSet<&str> = windows.iter().map(|w| w.vm.as_str()).collect();
    assert_eq!(vms.len(), AGENTS, "every agent has windows");
    assert!(compared > AGENTS * 5, "{compared} series windows compared");
    let rejects = sql_rows(&lake, "SELECT count(*) AS n FROM rejects");
    assert_eq!(rejects[0]["n"], "0", "{stdout}");

    // Each failing agent turned unhealthy after more than 2 failed polls, and healthy again;
    // no other agent changed.
    let health = sql_rows(
        &lake,
        "SELECT vm_id, \"from\" AS f, \"to\" AS t, reason FROM agent_health WHERE reason LIKE 'pull:%' ORDER BY time",
    );
    let mut moves: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for r in &health {
        moves.entry(r["vm_id"].as_str()).or_default().push((r["f"].as_str(), r["t"].as_str()));
        if r["t"] == "unhealthy" {
            assert!(r["reason"].contains("3 failed polls in a row"), "{r:?}");
            assert!(r["reason"].contains("500"), "{r:?}");
        }
    }
    let failing_set: BTreeSet<&str> = failing.iter().map(String::as_str).collect();
    assert_eq!(moves.keys().copied().collect::<BTreeSet<_>>(), failing_set, "only the failing agents changed health");
    for (vm, m) in &moves {
        assert_eq!(m, &vec![("healthy", "unhealthy"), ("unhealthy", "healthy")], "{vm}");
    }
    // And they report again after recovering.
    let recovered = sql_rows(
        &lake,
        &format!(
            "SELECT count(DISTINCT vm_id) AS n FROM aggregates WHERE window_start >= to_timestamp({}) \
             AND vm_id IN ({})",
            recovered_at + 6,
            failing.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ")
        ),
    );
    assert_eq!(recovered[0]["n"], failing.len().to_string());

    // Group metrics and alarms see the pulled data as they would pushed data.
    let compared = assert_groups_match(&lake_groups(&lake), &reference_groups(&windows), cut);
    assert!(compared > 100, "{compared} group values compared");
    let events = lake_events(&lake, "cpu_busy");
    let want = reference_events(&windows, SIZE);
    assert!(want.len() > 20, "the rule fires: {} events", want.len());
    assert_eq!(
        events.symmetric_difference(&want).take(5).collect::<Vec<_>>(),
        Vec::<&(String, i64, String, String)>::new(),
        "{} events, {} expected",
        events.len(),
        want.len()
    );
}

#[test]
fn a_mixed_fleet_pushing_to_tansu_and_pulled_gives_one_set_of_group_metrics() {
    const HALF: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    // The same seed and size: the pulled half (vm-100 …) lands in the namespaces and MCIS of
    // the pushing half (vm-0 …).
    let agents =
        PullAgents::start(dir.path(), HALF, &["--interval", "2s", "--seed", "11", "--first-vm", &HALF.to_string()]);
    let topic = unique("mixed");
    // The pulled half is listed in a registry topic, each record keyed by its agent.
    let agents_topic = format!("{topic}_agents");
    crate::registry_topic::create_topics(&kafka(), &[(agents_topic.as_str(), 1)]);
    let key = |r: &Value| {
        let part = |f: &str| r[f].as_str().unwrap().to_string();
        format!("{}/{}/{}/{}", part("ns_id"), part("mcis_id"), part("vm_id"), part("csp_type"))
    };
    let records: Vec<crate::registry_topic::Msg> = agents
        .registry
        .iter()
        .map(|r| crate::registry_topic::Msg { key: key(r), value: Some(r.to_string().into_bytes()), partition: None })
        .collect();
    crate::registry_topic::produce(&kafka(), &agents_topic, &records);
    let lake = dir.path().join("lake");
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup = \"{}\"\nstart = \"earliest\"\n\
             idle_timeout = \"3s\"\n\n\
             [window]\nsize = \"4s\"\nlateness = \"3s\"\n\n[registry]\ntopic = \"{agents_topic}\"\nunhealthy_after = 1000\n\n\
             [pull]\nmeasurements = [\"cpu\", \"mem\", \"disk\"]\ninterval = \"2s\"\ntimeout = \"2s\"\n\n\
             [[sink]]\nkind = \"parquet\"\npath = {}\nflush_interval = \"1s\"\n",
            kafka(),
            unique("mixed_group"),
            quoted(&lake)
        ),
    )
    .unwrap();
    // The pushing half, in real time, for 30 s.
    let push = Command::new(bin())
        .args(["loadgen", "--agents", &HALF.to_string(), "--interval", "2s", "--seed", "11", "--duration", "30s"])
        .args(["--brokers", &kafka(), "--topic", &topic, "--partitions", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The job starts once the topic exists.
    std::thread::sleep(Duration::from_secs(2));
    let job = start_job(&spec);
    // Midway, the first pulled agent is removed from the registry: a tombstone.
    std::thread::sleep(Duration::from_secs(14));
    let removed = agents.registry[0]["vm_id"].as_str().unwrap().to_string();
    let removed_at = wall_s();
    let tombstone = crate::registry_topic::Msg { key: key(&agents.registry[0]), value: None, partition: None };
    crate::registry_topic::produce(&kafka(), &agents_topic, &[tombstone]);
    let pushed = push.wait_with_output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    std::thread::sleep(Duration::from_secs(8));
    stop_job(job);
    drop(agents);

    let windows = lake_windows(&lake);
    let vm_number = |vm: &str| vm.trim_start_matches("vm-").parse::<usize>().unwrap();
    let vms: BTreeSet<usize> = windows.iter().map(|w| vm_number(&w.vm)).collect();
    assert_eq!(vms, (0..2 * HALF).collect::<BTreeSet<_>>(), "both halves have windows");
    // Pulled agents sent only what was asked of them; pushed ones everything.
    let measurements = sql_rows(
        &lake,
        &format!(
            "SELECT DISTINCT CAST(substr(vm_id, 4) AS BIGINT) >= {HALF} AS pulled, measurement FROM aggregates \
             ORDER BY pulled, measurement"
        ),
    );
    let of = |half: &str| {
        measurements.iter().filter(|r| r["pulled"] == half).map(|r| r["measurement"].as_str()).collect::<Vec<_>>()
    };
    assert_eq!(of("false"), ["cpu", "cpufreq", "disk", "diskio", "mem", "net"]);
    assert_eq!(of("true"), ["cpu", "disk", "mem"]);
    // Each MCIS has VMs of both halves in one window at least.
    let mut halves: BTreeMap<(i64, String, String), BTreeSet<bool>> = BTreeMap::new();
    for w in &windows {
        halves.entry((w.ws, w.ns.clone(), w.mcis.clone())).or_default().insert(vm_number(&w.vm) >= HALF);
    }
    let mixed: BTreeSet<(String, String)> =
        halves.iter().filter(|(_, h)| h.len() == 2).map(|(k, _)| (k.1.clone(), k.2.clone())).collect();
    let all_mcis: BTreeSet<(String, String)> = windows.iter().map(|w| (w.ns.clone(), w.mcis.clone())).collect();
    assert_eq!(mixed, all_mcis, "every MCIS mixes pushing and pulled VMs");
    // The removed agent was polled until its removal, and not after it.
    let last_of = |vm: &str| windows.iter().filter(|w| w.vm == vm).map(|w| w.ws).max().unwrap();
    assert!(last_of(&removed) < removed_at + 4, "{removed} polled after its removal");
    assert!(last_of(&removed) >= removed_at - 12, "{removed} was polled until then");
    // The registry knows which is which. (The removed agent is left out: its last values, in
    // windows still open at its removal, register it again from its data, as docs/groups.md says.)
    let agents_table: Vec<_> =
        sql_rows(&lake, "SELECT vm_id, mechanism FROM agents").into_iter().filter(|r| r["vm_id"] != removed).collect();
    assert_eq!(agents_table.len(), 2 * HALF - 1);
    for r in &agents_table {
        let want = if vm_number(&r["vm_id"]) >= HALF { "pull" } else { "push" };
        assert_eq!(r["mechanism"], want, "{r:?}");
    }

    // One set of group metrics over both halves, equal to the brute-force computation.
    let last = windows.iter().map(|w| w.ws).max().unwrap();
    let compared = assert_groups_match(&lake_groups(&lake), &reference_groups(&windows), last - 4);
    assert!(compared > 50, "{compared} group values compared");
}

#[test]
fn the_pull_benchmark_polls_every_agent_at_its_slots_and_reports() {
    let out = crate::common::dragonflow_ok(&[
        "bench",
        "--pull",
        "--agents",
        "50",
        "--pull-interval",
        "1s",
        "--duration",
        "4s",
        "--measurements",
        "cpu,mem",
    ]);
    let line = |label: &str| out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label}\n{out}"));
    assert!(line("pull:").contains("50 agents × 2 measurements every 1s = 100 requests/s due"), "{out}");
    // Whether it kept up depends on the machine (a loaded one may skip a round); what it polled
    // must all have been answered and read.
    assert!(line("polled:").contains(" 0 failed,"), "{out}");
    assert!(line("job:").contains("0 rejects, 0 late"), "{out}");
    assert!(line("round delay:").contains("p99"), "{out}");
    assert!(line("verdict:").contains("kept up") || line("verdict:").contains("fell behind"), "{out}");
}

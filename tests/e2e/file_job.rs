//! A generated Telegraf JSON file through `dragonflow run`, checked against an independent
//! computation of every window, then the same file with malformed and late lines added.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::{dragonflow, dragonflow_ok, file_spec, rel, sql_rows};

#[derive(Debug, Default, Clone)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_key: (i64, usize),
}

type Key = (String, String, String, i64); // vm, measurement, field, window_start (s)

/// Aggregates a JSON-lines file with serde_json::Value, independently of the engine's decoder.
fn reference(path: &Path, size: i64, skip_lines: &[usize]) -> BTreeMap<Key, Expected> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if skip_lines.contains(&(i + 1)) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = v["timestamp"].as_i64().unwrap();
        let start = ts.div_euclid(size) * size;
        let vm = v["tags"]["vmId"].as_str().unwrap().to_string();
        let name = v["name"].as_str().unwrap().to_string();
        for (field, value) in v["fields"].as_object().unwrap() {
            let Some(x) = value.as_f64() else { continue };
            let e = out.entry((vm.clone(), name.clone(), field.clone(), start)).or_insert(Expected {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                last_key: (i64::MIN, 0),
                ..Default::default()
            });
            e.count += 1;
            e.sum += x;
            e.min = e.min.min(x);
            e.max = e.max.max(x);
            if (ts, i) >= e.last_key {
                e.last_key = (ts, i);
                e.last = x;
            }
        }
    }
    out
}

fn lake_aggregates(lake: &Path) -> BTreeMap<Key, (u64, f64, f64, f64, f64)> {
    let rows = sql_rows(
        lake,
        "SELECT vm_id, measurement, field, CAST(to_unixtime(window_start) AS BIGINT) AS ws, \
         count, min, max, mean, last FROM aggregates",
    );
    let mut out = BTreeMap::new();
    for r in rows {
        let key = (r["vm_id"].clone(), r["measurement"].clone(), r["field"].clone(), r["ws"].parse().unwrap());
        let val = (
            r["count"].parse().unwrap(),
            r["min"].parse().unwrap(),
            r["max"].parse().unwrap(),
            r["mean"].parse().unwrap(),
            r["last"].parse().unwrap(),
        );
        assert!(out.insert(key.clone(), val).is_none(), "duplicate aggregate row {key:?}");
    }
    out
}

fn generate(path: &Path, agents: usize, minutes: u64) {
    let cfg = loadgen::FleetConfig {
        agents,
        seed: 7,
        format: loadgen::Format::Json,
        skew_ns: 0,
        // Some messages arrive one tick (2 s) late: out of order, but within the 5 s lateness.
        reorder: 0.05,
        churn: 0.0,
        first_vm: 0,
    };
    let ticks = minutes * 30;
    loadgen::write_file(cfg, path, 1_700_000_000_000_000_000, Duration::from_secs(2), ticks, |_| {}).unwrap();
}

fn assert_matches(want: &BTreeMap<Key, Expected>, got: &BTreeMap<Key, (u64, f64, f64, f64, f64)>) {
    assert_eq!(got.len(), want.len(), "number of (vm, measurement, field, window) rows");
    for (k, e) in want {
        let g = got.get(k).unwrap_or_else(|| panic!("missing row {k:?}"));
        assert_eq!(g.0, e.count, "count of {k:?}");
        assert_eq!(g.1, e.min, "min of {k:?}");
        assert_eq!(g.2, e.max, "max of {k:?}");
        let mean = e.sum / e.count as f64;
        assert!(rel(g.3, mean) <= 1e-9, "mean of {k:?}: {} vs {mean}", g.3);
        assert_eq!(g.4, e.last, "last of {k:?}");
    }
}

#[test]
fn file_job_matches_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.jsonl");
    generate(&input, 300, 3);
    let lake = dir.path().join("lake");
    let spec = file_spec(dir.path(), &input, &lake, "json");
    let out = dragonflow_ok(&["run", spec.to_str().unwrap(), "--workers", "2", "--status-every", "0"]);
    assert!(out.contains("records in:"), "{out}");
    assert!(out.contains("throughput:"), "{out}");

    let want = reference(&input, 10, &[]);
    let got = lake_aggregates(&lake);
    assert_matches(&want, &got);
    let rejects = sql_rows(&lake, "SELECT count(*) AS n FROM rejects");
    assert_eq!(rejects[0]["n"], "0");
    let late = sql_rows(&lake, "SELECT count(*) AS n FROM late");
    assert_eq!(late[0]["n"], "0", "reordering within the lateness is not late");

    // The same file, with malformed lines and values far behind the watermark mixed in.
    let dirty = dir.path().join("dirty.jsonl");
    let clean = std::fs::read_to_string(&input).unwrap();
    let mut lines: Vec<String> = clean.lines().map(String::from).collect();
    let n = lines.len();
    let malformed = [
        "{not json".to_string(),
        r#"{"name":"cpu","fields":{"usage_idle":"x"},"tags":{"vmId":"vm-0"}}"#.to_string(),
        r#"{"name":"cpu","fields":{},"tags":{"vmId":"vm-0"},"timestamp":1700000100}"#.to_string(),
        "\u{1}\u{2}garbage".to_string(),
    ];
    // Far behind: event time at the very start, inserted two thirds of the way in.
    let late_lines = [
        r#"{"name":"mem","fields":{"used_percent":12.5,"free":1},"tags":{"vmId":"vm-late","nsId":"ns-x"},"timestamp":1700000001}"#
            .to_string(),
        r#"{"name":"cpu","fields":{"usage_idle":50.0},"tags":{"vmId":"vm-late2"},"timestamp":1700000003}"#
            .to_string(),
    ];
    let mut inserted = Vec::new();
    for (i, m) in malformed.iter().enumerate() {
        let at = n / 5 * (i + 1);
        lines.insert(at, m.clone());
        inserted.push(m.clone());
    }
    let late_at = lines.len() * 2 / 3;
    for (i, l) in late_lines.iter().enumerate() {
        lines.insert(late_at + i, l.clone());
    }
    let mut f = std::fs::File::create(&dirty).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let lake2 = dir.path().join("lake2");
    let spec2 = file_spec(dir.path(), &dirty, &lake2, "json");
    dragonflow_ok(&["run", spec2.to_str().unwrap(), "--workers", "2", "--status-every", "0"]);

    // Aggregates are unchanged.
    assert_matches(&want, &lake_aggregates(&lake2));
    // Rejects hold exactly the malformed lines, at their line numbers, with reasons.
    let rejects = sql_rows(&lake2, "SELECT position, reason, payload FROM rejects ORDER BY position");
    assert_eq!(rejects.len(), malformed.len(), "{rejects:?}");
    let mut positions: HashMap<String, usize> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        positions.insert(l.clone(), i + 1);
    }
    for (r, m) in rejects.iter().zip(&inserted) {
        assert_eq!(r["payload"], *m);
        assert_eq!(r["position"], positions[m].to_string());
        assert!(!r["reason"].is_empty());
    }
    // Late holds exactly the late values (two fields of the mem line, one of the cpu line).
    let late = sql_rows(&lake2, "SELECT vm_id, measurement, field, value, position FROM late ORDER BY vm_id, field");
    let got: Vec<(String, String, f64)> =
        late.iter().map(|r| (r["vm_id"].clone(), r["field"].clone(), r["value"].parse().unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("vm-late".into(), "free".into(), 1.0),
            ("vm-late".into(), "used_percent".into(), 12.5),
            ("vm-late2".into(), "usage_idle".into(), 50.0),
        ]
    );
    let summary = dragonflow(&["run", spec2.to_str().unwrap(), "--status-every", "0"]);
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(text.contains("rejects:     4"), "{text}");
    assert!(text.contains("late:        3"), "{text}");
}

#[test]
fn line_protocol_file_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.lp.gz");
    let cfg = loadgen::FleetConfig {
        agents: 20,
        seed: 3,
        format: loadgen::Format::Influx,
        skew_ns: 0,
        reorder: 0.0,
        churn: 0.0,
        first_vm: 0,
    };
    let stats =
        loadgen::write_file(cfg, &input, 1_700_000_000_000_000_000, Duration::from_secs(2), 15, |_| {}).unwrap();
    let lake = dir.path().join("lake");
    let spec = file_spec(dir.path(), &input, &lake, "influx");
    dragonflow_ok(&["run", spec.to_str().unwrap(), "--status-every", "0"]);
    let rows = sql_rows(&lake, "SELECT measurement, sum(count) AS n FROM aggregates WHERE field IN ('usage_idle', 'cur_freq', 'used_percent', 'read_bytes', 'bytes_recv') GROUP BY measurement ORDER BY measurement");
    let total: u64 = rows.iter().map(|r| r["n"].parse::<u64>().unwrap()).sum();
    // cpu, cpufreq, mem, disk (used_percent too), diskio, net: one value per message.
    assert_eq!(total, stats.messages, "{rows:?}");
    let parts = sql_rows(&lake, "SELECT DISTINCT date, hour FROM aggregates");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["date"], "2023-11-14");
    assert_eq!(parts[0]["hour"], "22");
}

#[test]
fn cardinality_limit_rejects_new_series_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.jsonl");
    generate(&input, 20, 1);
    let lake = dir.path().join("lake");
    let spec = file_spec(dir.path(), &input, &lake, "json");
    let mut text = std::fs::read_to_string(&spec).unwrap();
    // Two workers, 100 series each: far fewer than 20 agents send.
    text.push_str("\n[limits]\nmax_series = 200\n");
    std::fs::write(&spec, text).unwrap();
    dragonflow_ok(&["run", "--workers", "2", spec.to_str().unwrap()]);
    let live =
        sql_rows(&lake, "SELECT count(DISTINCT concat(vm_id, measurement, instance, field)) AS n FROM aggregates");
    let n: u64 = live[0]["n"].parse().unwrap();
    assert!(n > 0 && n <= 200, "{n} series were aggregated with a limit of 200");
    let rejects = sql_rows(&lake, "SELECT count(*) AS n, min(reason) AS reason FROM rejects");
    let refused: u64 = rejects[0]["n"].parse().unwrap();
    assert!(refused > 0, "metrics of series beyond the limit are rejects");
    assert!(rejects[0]["reason"].contains("cardinality limit"), "{}", rejects[0]["reason"]);
    // Every value is either aggregated or in a refused metric: the known series keep flowing.
    let counted = sql_rows(&lake, "SELECT sum(count) AS c FROM aggregates");
    assert!(counted[0]["c"].parse::<u64>().unwrap() > 0);
}

//! Helpers shared by the end-to-end tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `dragonflow` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dragonflow"))
}

/// Runs `dragonflow ARGS`, returning its output (never panics on a non-zero exit).
pub fn dragonflow(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("dragonflow runs")
}

/// Runs `dragonflow ARGS` and insists that it succeeds.
pub fn dragonflow_ok(args: &[&str]) -> String {
    let out = dragonflow(args);
    assert!(
        out.status.success(),
        "dragonflow {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a query with `dragonflow sql --format csv` and returns rows as header → value maps.
pub fn sql_rows(lake: &Path, query: &str) -> Vec<HashMap<String, String>> {
    let text = dragonflow_ok(&["sql", "--lake", lake.to_str().unwrap(), "--format", "csv", query]);
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let Some(header) = lines.next() else { return Vec::new() };
    let names: Vec<String> = split_csv(header);
    lines.map(|l| names.iter().cloned().zip(split_csv(l)).collect()).collect()
}

/// Splits one CSV line (quotes as RFC 4180).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Writes a job spec for a file source and a Parquet lake.
pub fn file_spec(dir: &Path, input: &Path, lake: &Path, format: &str) -> PathBuf {
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\nkind = \"file\"\npath = {:?}\nformat = \"{format}\"\n\n[window]\nsize = \"10s\"\nlateness = \"5s\"\n\n[[sink]]\nkind = \"parquet\"\npath = {:?}\n",
            input.display().to_string(),
            lake.display().to_string()
        ),
    )
    .unwrap();
    spec
}

/// Relative difference, for comparing means.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-300)
}

/// Publishes `agents` JSON agents for `seconds` of event time (2 s ticks, as fast as possible)
/// from `start_ns`, creating the topic with `partitions` when given; no send may fail.
pub fn publish(
    brokers: &str,
    topic: &str,
    partitions: Option<i32>,
    agents: usize,
    seed: u64,
    start_ns: i64,
    seconds: u64,
) -> loadgen::Stats {
    let target = loadgen::KafkaTarget { brokers: brokers.into(), topic: topic.into(), partitions, config: vec![] };
    let cfg = loadgen::FleetConfig {
        agents,
        seed,
        format: loadgen::Format::Json,
        skew_ns: 0,
        reorder: 0.0,
        churn: 0.0,
        first_vm: 0,
    };
    let sent = loadgen::run_kafka(
        cfg,
        &target,
        start_ns,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(seconds),
        false,
        &std::sync::atomic::AtomicBool::new(false),
        |_| {},
    )
    .expect("loadgen publishes");
    assert_eq!(sent.errors, 0, "{:?}", sent.last_error);
    sent
}

/// The Kafka-compatible broker started by `tests/run-all.sh`.
pub fn kafka() -> String {
    std::env::var("DRAGONFLOW_TEST_KAFKA").expect("DRAGONFLOW_TEST_KAFKA: run the suite with tests/run-all.sh")
}

/// The InfluxDB started by `tests/run-all.sh`.
pub fn influx() -> String {
    std::env::var("DRAGONFLOW_TEST_INFLUX").expect("DRAGONFLOW_TEST_INFLUX: run the suite with tests/run-all.sh")
}

/// A name unique to this test process and call (topics, groups, databases).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

/// Runs InfluxQL through InfluxDB's HTTP query API, timestamps in epoch seconds.
pub fn influxql(db: &str, q: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sf", "-G", &format!("{}/query", influx()), "--data-urlencode", &format!("db={db}")])
        .args(["--data-urlencode", &format!("q={q}"), "--data-urlencode", "epoch=s"])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "influx query {q} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("influx answers JSON")
}

//! Helpers shared by the end-to-end tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// A `dragonflow loadgen --mode pull` process: N agents served over HTTP, and its registry file.
pub struct PullAgents {
    child: Child,
    /// The registry file's records, as written at the start.
    pub registry: Vec<Value>,
    pub registry_path: PathBuf,
    pub port: u16,
}

impl PullAgents {
    /// Serves `agents` agents with `extra` loadgen flags; the registry goes to a file in `dir`.
    pub fn start(dir: &Path, agents: usize, extra: &[&str]) -> PullAgents {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let registry_path = dir.join(format!("pull-agents-{port}.json"));
        let child = Command::new(bin())
            .args(["loadgen", "--mode", "pull", "--agents", &agents.to_string(), "--duration", "0s"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--registry-out", registry_path.to_str().unwrap()])
            .args(["--status-every", "1h"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !registry_path.exists() || TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pull agents did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let registry: Value = serde_json::from_slice(&std::fs::read(&registry_path).unwrap()).unwrap();
        PullAgents { child, registry: registry.as_array().unwrap().clone(), registry_path, port }
    }

    /// Switches one agent's behaviour (`ok`, `fail`, `slow`, `down`) through the listener's
    /// control endpoint.
    pub fn set(&self, vm_id: &str, state: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let req = format!(
            "POST /control/agents/{vm_id}?state={state} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

impl Drop for PullAgents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Crash recovery against real services (tansu and InfluxDB, as in `services`; these tests fail,
//! rather than skip, when `tests/run-all.sh` has not started them).
//!
//! The promise under test: kill a checkpointing Kafka job at any moment, restart it, and the lake
//! and the InfluxDB points end up exactly as those of a run that was never interrupted — no window
//! lost, none written twice. Each test publishes a fixed input to a topic of its own, runs it once
//! without interruption (A) and once with interruptions (B) under another consumer group, into
//! another lake and database, and compares A and B row for row and point for point.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, dragonflow_ok, influx, influxql, kafka, publish, rel, split_csv, unique};

/// The measurements the load generator sends, each one InfluxDB measurement.
const MEASUREMENTS: [&str; 6] = ["cpu", "mem", "disk", "diskio", "net", "cpufreq"];
/// One field present in every message of each measurement (`used_percent`: mem and disk), so the
/// sum of their counts is the number of messages.
const ONE_FIELD_PER_MESSAGE: [&str; 5] = ["usage_idle", "cur_freq", "used_percent", "read_bytes", "bytes_recv"];
/// The key of an `aggregates` row, in the order rows are compared.
const KEY: [&str; 9] =
    ["window_start", "ns_id", "mcis_id", "vm_id", "csp_type", "os_type", "measurement", "instance", "field"];
/// How long a run that should finish may take before the test gives up on it.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// SplitMix64: the kill delays must be reproducible from a printed seed, and the test crate has
/// no `rand` of its own.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo).mul_f64(unit)
    }
}

/// One job of a test: a Kafka source on the test's topic, 10 s windows, a Parquet lake and an
/// InfluxDB database of its own.
struct Job {
    topic: String,
    group: String,
    lake: PathBuf,
    db: String,
    /// `start = "committed"` and a `[checkpoint]` every second (B), or `start = "earliest"` (A).
    checkpointed: bool,
}

impl Job {
    fn new(dir: &Path, topic: &str, name: &str, checkpointed: bool) -> Job {
        Job {
            topic: topic.into(),
            group: unique(&format!("g{name}")),
            lake: dir.join(format!("lake_{name}")),
            db: unique(&format!("db{name}")),
            checkpointed,
        }
    }

    /// Writes the spec to `path`; `stop_at_end` makes the run finish once the topic is read.
    fn spec(&self, path: &Path, stop_at_end: bool) -> PathBuf {
        let start = if self.checkpointed { "committed" } else { "earliest" };
        let mut text = format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{}\"]\ngroup = \"{}\"\nstart = \"{start}\"\nformat = \"json\"\nstop_at_end = {stop_at_end}\n\n[window]\nsize = \"10s\"\nlateness = \"5s\"\n",
            kafka(),
            self.topic,
            self.group
        );
        if self.checkpointed {
            text.push_str("\n[checkpoint]\ninterval = \"1s\"\n");
        }
        // Sinks flush every second in both jobs, so a killed run has written something to replace.
        text.push_str(&format!(
            "\n[[sink]]\nkind = \"parquet\"\npath = {:?}\nflush_interval = \"1s\"\n\n[[sink]]\nkind = \"influxdb\"\nurl = \"{}\"\ndatabase = \"{}\"\nflush_interval = \"1s\"\n",
            self.lake.display().to_string(),
            influx(),
            self.db
        ));
        text.push_str(ALARMS);
        std::fs::write(path, text).unwrap();
        path.to_path_buf()
    }

    /// How far the job has got: Parquet files of `aggregates`, files under its checkpoint directory.
    fn progress(&self) -> String {
        let files = count_files(&self.lake.join("aggregates"), "parquet");
        let checkpoint = count_files(&self.lake.join("_checkpoints").join(&self.group), "");
        format!("{files} aggregates files, {checkpoint} checkpoint files")
    }
}

fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                usize::from(ext.is_empty() || p.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}

/// A `dragonflow run` in the background, its output in files; killed (SIGKILL) when dropped, so
/// a failing test leaves no job behind.
struct Running {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    fn spawn(spec: &Path, dir: &Path, name: &str) -> Running {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(bin())
            .args(["run", spec.to_str().unwrap(), "--workers", "2", "--status-every", "1"])
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("dragonflow runs");
        Running { child, name: name.into(), stdout, stderr, started: Instant::now() }
    }

    /// Its output so far, with only the last three status lines.
    fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let statuses = err.lines().filter(|l| l.starts_with("in ")).count();
        let mut status = 0;
        let err: Vec<&str> = err
            .lines()
            .filter(|l| {
                status += usize::from(l.starts_with("in "));
                !l.starts_with("in ") || status + 3 > statuses
            })
            .collect();
        format!("--- {} stdout\n{out}--- {} stderr\n{}", self.name, self.name, err.join("\n"))
    }

    /// The latest status line (`in N msgs … | windows W | rows R | watermark …`).
    fn last_status(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        err.lines().rev().find(|l| l.starts_with("in ")).unwrap_or("(no status line yet)").to_string()
    }

    /// Fails the test when the job has already ended: a job without `stop_at_end` never ends alone.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} ended by itself ({status}) after {:?}\n{}", self.name, self.started.elapsed(), self.output());
        }
    }

    /// SIGKILL: no graceful shutdown of any kind.
    fn kill(mut self) {
        self.assert_alive();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGINT (a graceful stop) and waits at most `limit` for the exit.
    fn interrupt(mut self, limit: Duration) -> ExitStatus {
        self.assert_alive();
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let status = self.wait(limit);
        eprintln!("{} stopped gracefully: {status}\n{}", self.name, self.output());
        status
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running after {limit:?}\n{}", self.name, self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a run that ends by itself (`stop_at_end`) and insists that it succeeds; returns
    /// its summary (stdout).
    fn finish(mut self) -> String {
        let status = self.wait(RUN_DEADLINE);
        assert!(status.success(), "{} failed: {status}\n{}", self.name, self.output());
        std::fs::read_to_string(&self.stdout).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `job` to completion once, with `stop_at_end`; returns the run's summary and duration.
fn run_to_end(job: &Job, dir: &Path, name: &str) -> (String, Duration) {
    let spec = job.spec(&dir.join(format!("{name}.toml")), true);
    let running = Running::spawn(&spec, dir, name);
    let started = running.started;
    let out = running.finish();
    (out, started.elapsed())
}

/// Event time that InfluxDB's 4-week retention keeps: 20 minutes ago, on a minute.
fn recent_start_ns() -> i64 {
    (pipelines::source::wall_ns() / 60_000_000_000 - 20) * 60_000_000_000
}

/// One row of `aggregates`, past its key.
#[derive(Debug)]
struct AggRow {
    window_end: String,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    last: f64,
}

impl AggRow {
    /// Where `self` (A) and `other` (B) differ, if anywhere: counts, extremes and last exactly;
    /// sums and means to a relative 1e-9.
    fn difference(&self, other: &AggRow) -> Option<String> {
        let exact = self.window_end == other.window_end
            && self.count == other.count
            && self.min == other.min
            && self.max == other.max
            && self.last == other.last;
        let close = rel(self.sum, other.sum) <= 1e-9 && rel(self.mean, other.mean) <= 1e-9;
        (!exact || !close).then(|| format!("A {self:?}\n   B {other:?}"))
    }
}

/// Everything a job wrote, gathered for comparison.
struct Written {
    /// `aggregates` by key (the key columns joined by ` | `).
    rows: BTreeMap<String, AggRow>,
    /// Keys that occur more than once in `aggregates`.
    duplicates: Vec<String>,
    /// The sum of the counts of one field present in every message: the messages in the lake.
    messages: u64,
    late: u64,
    rejects: u64,
    /// Distinct (window, agent, measurement, instance) in the lake: the points InfluxDB should hold.
    series_windows: u64,
    /// Every InfluxDB point by `measurement | tags | time`: column → value.
    points: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

impl Written {
    fn of(job: &Job) -> Written {
        let (rows, duplicates) = aggregates(&job.lake);
        // The field is the key's last column; before it, the window and the InfluxDB series.
        let mut messages = 0;
        let mut series_windows = std::collections::BTreeSet::new();
        for (key, row) in &rows {
            let (series_window, field) = key.rsplit_once(" | ").unwrap();
            if ONE_FIELD_PER_MESSAGE.contains(&field) {
                messages += row.count;
            }
            series_windows.insert(series_window);
        }
        let q = "SELECT (SELECT count(*) FROM late) AS late, (SELECT count(*) FROM rejects) AS rejects";
        let counts = &crate::common::sql_rows(&job.lake, q)[0];
        let mut points = BTreeMap::new();
        for m in MEASUREMENTS {
            let before = points.len();
            influx_points(&job.db, m, &mut points);
            assert!(points.len() > before, "no {m} points in {}", job.db);
        }
        Written {
            series_windows: series_windows.len() as u64,
            rows,
            duplicates,
            messages,
            late: counts["late"].parse().unwrap(),
            rejects: counts["rejects"].parse().unwrap(),
            points,
        }
    }
}

/// The whole `aggregates` table of a lake by key, and the keys that occur more than once.
fn aggregates(lake: &Path) -> (BTreeMap<String, AggRow>, Vec<String>) {
    // No ORDER BY: sorting 10^6 rows in a debug build takes longer than keying them here.
    let query = format!("SELECT {}, window_end, count, sum, min, max, mean, last FROM aggregates", KEY.join(", "));
    let text = dragonflow_ok(&["sql", "--lake", lake.to_str().unwrap(), "--format", "csv", &query]);
    let split = |line: &str| -> Vec<String> {
        if line.contains('"') {
            split_csv(line)
        } else {
            line.split(',').map(str::to_string).collect()
        }
    };
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let mut rows = BTreeMap::new();
    let mut duplicates = Vec::new();
    let Some(header) = lines.next() else { return (rows, duplicates) };
    let header = split_csv(header);
    let at = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    let key_at = KEY.map(at);
    let [end, count, sum, min, max, mean, last] = ["window_end", "count", "sum", "min", "max", "mean", "last"].map(at);
    let num = |cells: &[String], i: usize| -> f64 {
        cells[i].parse().unwrap_or_else(|_| panic!("column {} is not a number: {cells:?}", header[i]))
    };
    for line in lines {
        let cells = split(line);
        let key = key_at.iter().map(|&i| cells[i].as_str()).collect::<Vec<_>>().join(" | ");
        let row = AggRow {
            window_end: cells[end].clone(),
            count: cells[count].parse().unwrap_or_else(|_| panic!("count is not an integer: {cells:?}")),
            sum: num(&cells, sum),
            min: num(&cells, min),
            max: num(&cells, max),
            mean: num(&cells, mean),
            last: num(&cells, last),
        };
        if rows.insert(key.clone(), row).is_some() {
            duplicates.push(key);
        }
    }
    (rows, duplicates)
}

/// Adds every point of a measurement in a database to `points`, by `measurement | tags | time`.
fn influx_points(db: &str, measurement: &str, points: &mut BTreeMap<String, BTreeMap<String, serde_json::Value>>) {
    let v = influxql(db, &format!("SELECT * FROM \"{measurement}\" GROUP BY *"));
    let result = &v["results"][0];
    assert!(result.get("error").is_none() && result.get("partial").is_none(), "{db}.{measurement}: {result}");
    for series in result["series"].as_array().cloned().unwrap_or_default() {
        let tags: BTreeMap<String, String> = series["tags"]
            .as_object()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let tags = tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let cols: Vec<String> =
            series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        for row in series["values"].as_array().unwrap() {
            let row: BTreeMap<String, serde_json::Value> =
                cols.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect();
            let key = format!("{measurement} | {tags} | {}", row["time"]);
            assert!(points.insert(key.clone(), row).is_none(), "{db}: two points at {key}");
        }
    }
}

/// Where two InfluxDB points differ, if anywhere: `count` and the `_min`, `_max` and `_last`
/// fields exactly, means to a relative 1e-9; a field missing on one side is a difference.
fn point_difference(
    a: &BTreeMap<String, serde_json::Value>,
    b: &BTreeMap<String, serde_json::Value>,
) -> Option<String> {
    let exact = |col: &str| {
        col == "time" || col == "count" || col.ends_with("_min") || col.ends_with("_max") || col.ends_with("_last")
    };
    let null = serde_json::Value::Null;
    let cols: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differing: Vec<String> = cols
        .into_iter()
        .filter(|col| {
            let (va, vb) = (a.get(*col).unwrap_or(&null), b.get(*col).unwrap_or(&null));
            match (va.as_f64(), vb.as_f64()) {
                (Some(x), Some(y)) if !exact(col) => rel(x, y) > 1e-9,
                _ => va != vb,
            }
        })
        .map(|col| format!("{col}: A {}, B {}", a.get(col).unwrap_or(&null), b.get(col).unwrap_or(&null)))
        .collect();
    (!differing.is_empty()).then(|| differing.join("; "))
}

/// How two keyed collections differ: keys only in A, keys only in B, values that differ.
fn differences<V>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
    differ: impl Fn(&V, &V) -> Option<String>,
) -> [Vec<String>; 3] {
    let only_a = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let only_b = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let differing =
        a.iter().filter_map(|(k, va)| b.get(k).and_then(|vb| differ(va, vb)).map(|d| format!("{k}\n   {d}"))).collect();
    [only_a, only_b, differing]
}

/// Asserts that there are no differences, showing a few of each kind.
fn assert_no_differences(what: &str, [only_a, only_b, differing]: [Vec<String>; 3]) {
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        only_a.is_empty() && only_b.is_empty() && differing.is_empty(),
        "{what}: {} only in the uninterrupted run, e.g.\n{}\n{} only in the interrupted run, e.g.\n{}\n{} differ, e.g.\n{}",
        only_a.len(),
        first(&only_a),
        only_b.len(),
        first(&only_b),
        differing.len(),
        first(&differing)
    );
}

/// Asserts that run A's lake and InfluxDB points equal run B's; `messages` is what was published.
/// Alarm rules that fire on the generated load (about a tenth of the agents are busy at a time,
/// idle CPU 5-35%), with one-window state counts so that a level carried over a restart is the
/// whole of a target's state.
const ALARMS: &str = r#"
[[alarm]]
name = "cpu_idle_low"
measurement = "cpu"
field = "usage_idle"
aggregate = "mean"
target = "vm"
comparison = "<"
warn = 50
crit = 30
warn_reset = 55
crit_reset = 35

[[alarm]]
name = "mcis_cpu"
level = "mcis"
metric = "cpu_util_max"
comparison = ">="
warn = 60
warn_reset = 50
"#;

/// Every `alarm_events` row as text, by time; and the number of `dragonflow_alarms` points.
fn alarm_rows(job: &Job) -> (Vec<String>, usize) {
    let q = "SELECT id, CAST(time AS VARCHAR) AS t, rule, target, previous_level, level, value, threshold \
             FROM alarm_events ORDER BY t, rule, target, id";
    let rows: Vec<String> = crate::common::sql_rows(&job.lake, q)
        .into_iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}->{} {} {}",
                r["t"], r["id"], r["rule"], r["target"], r["previous_level"], r["level"], r["value"], r["threshold"]
            )
        })
        .collect();
    let mut points = BTreeMap::new();
    influx_points(&job.db, "dragonflow_alarms", &mut points);
    (rows, points.len())
}

/// The `groups` rows by `window | level | group | metric` (value, vm_count), and every
/// `agent_health` row as text; a key written twice fails.
fn fleet_rows(lake: &Path) -> (BTreeMap<String, (f64, u64)>, Vec<String>) {
    let mut groups = BTreeMap::new();
    let q = "SELECT CAST(window_start AS VARCHAR) AS ws, level, group_id, metric, value, vm_count FROM groups";
    for r in crate::common::sql_rows(lake, q) {
        let key = format!("{} | {} | {} | {}", r["ws"], r["level"], r["group_id"], r["metric"]);
        let value = (r["value"].parse().unwrap(), r["vm_count"].parse().unwrap());
        assert!(groups.insert(key.clone(), value).is_none(), "groups row written twice: {key}");
    }
    let q = "SELECT CAST(time AS VARCHAR) AS t, ns_id, mcis_id, vm_id, csp_type, \"from\" AS f, \"to\" AS t2 \
             FROM agent_health ORDER BY t, ns_id, mcis_id, vm_id, csp_type, f";
    let health = crate::common::sql_rows(lake, q)
        .into_iter()
        .map(|r| {
            format!(
                "{} {}/{}/{}/{} {}->{}",
                r["t"], r["ns_id"], r["mcis_id"], r["vm_id"], r["csp_type"], r["f"], r["t2"]
            )
        })
        .collect();
    (groups, health)
}

fn group_difference(a: &(f64, u64), b: &(f64, u64)) -> Option<String> {
    let same = a.1 == b.1 && crate::common::rel(a.0, b.0) <= 1e-9;
    (!same).then(|| format!("{a:?} vs {b:?}"))
}

fn assert_same_results(a: &Job, b: &Job, messages: u64) {
    let started = Instant::now();
    let (wa, wb) = std::thread::scope(|s| {
        let wb = s.spawn(|| Written::of(b));
        (Written::of(a), wb.join().unwrap())
    });
    for (name, w) in [("uninterrupted", &wa), ("interrupted", &wb)] {
        let values: u64 = w.rows.values().map(|r| r.count).sum();
        eprintln!(
            "{name} run: {} aggregates rows ({} duplicate keys, {values} values, {} messages), {} late, {} rejects, \
             {} InfluxDB points",
            w.rows.len(),
            w.duplicates.len(),
            w.messages,
            w.late,
            w.rejects,
            w.points.len()
        );
        let dups = w.duplicates.iter().take(5).cloned().collect::<Vec<_>>().join("\n");
        assert!(w.duplicates.is_empty(), "{name} run: duplicate keys in aggregates, e.g.\n{dups}");
    }
    assert_no_differences("aggregates rows", differences(&wa.rows, &wb.rows, AggRow::difference));
    assert_eq!(wa.messages, messages, "every message counted once");
    assert_eq!((wa.late, wa.rejects), (wb.late, wb.rejects), "late and rejects rows");
    assert_eq!(wa.points.len() as u64, wa.series_windows, "one InfluxDB point per window, agent and instance");
    assert_no_differences("InfluxDB points", differences(&wa.points, &wb.points, point_difference));
    let (ga, ha) = fleet_rows(&a.lake);
    let (gb, hb) = fleet_rows(&b.lake);
    assert!(!ga.is_empty(), "the uninterrupted run wrote group metrics");
    assert_no_differences("groups rows", differences(&ga, &gb, group_difference));
    // Agent health carries over restarts: no agent is seen for the "first" time twice, and a
    // stop or crash makes no agent unhealthy.
    assert_eq!(ha, hb, "agent_health rows");
    eprintln!("equal: {} groups rows and {} agent_health rows", ga.len(), ha.len());
    // Alarm levels carry over restarts: the same events, with the same ids, once each.
    let (ea, pa) = alarm_rows(a);
    let (eb, pb) = alarm_rows(b);
    assert!(!ea.is_empty(), "the uninterrupted run raised alarms");
    assert_eq!(ea, eb, "alarm_events rows");
    assert_eq!((pa, pb), (ea.len(), ea.len()), "one dragonflow_alarms point per event");
    eprintln!("equal: {} alarm events", ea.len());
    eprintln!(
        "equal: {} aggregates rows and {} InfluxDB points (compared in {:?})",
        wa.rows.len(),
        wa.points.len(),
        started.elapsed()
    );
}

/// A scratch directory for the jobs' specs, logs and lakes; kept, and named, when the test fails.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn new() -> Scratch {
        Scratch(Some(tempfile::tempdir().unwrap()))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), self.0.take()) {
            eprintln!("kept {} (job specs, logs, lakes)", dir.keep().display());
        }
    }
}

/// Runs the uninterrupted job A to its end and checks that it read every message once; returns
/// how long it took.
fn run_uninterrupted(a: &Job, dir: &Path, messages: u64) -> Duration {
    let (out, took) = run_to_end(a, dir, "a");
    eprintln!("uninterrupted run: {took:?}\n{out}");
    assert!(
        out.contains(&format!("records in:  {messages} messages")) && out.contains("late:        0\n"),
        "the uninterrupted run did not read the {messages} messages once, all in time:\n{out}"
    );
    took
}

/// SIGKILL five times at random moments, then let the job finish: the lake and InfluxDB hold
/// exactly what an uninterrupted run writes.
#[test]
fn sigkill_five_times_equals_uninterrupted_run() {
    let seed = std::env::var("DRAGONFLOW_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_240_611u64);
    let mut rng = SplitMix64(seed);
    let dir = Scratch::new();
    let topic = unique("metrics");
    let t = Instant::now();
    let sent = publish(&kafka(), &topic, Some(4), 300, 17, recent_start_ns(), 600);
    eprintln!("published {} messages to {topic} (4 partitions) in {:?}", sent.messages, t.elapsed());

    let a = Job::new(dir.path(), &topic, "a", false);
    let took = run_uninterrupted(&a, dir.path(), sent.messages);

    // Kills land anywhere from start-up to well into the work left, however fast this build is.
    let latest = (took * 3 / 5).clamp(Duration::from_secs(2), Duration::from_secs(30));
    eprintln!("kill delays from seed {seed} (set DRAGONFLOW_CRASH_SEED to change it), 0.5 s to {latest:?}");
    let b = Job::new(dir.path(), &topic, "b", true);
    let spec = b.spec(&dir.path().join("b.toml"), false);
    for i in 0..5 {
        let running = Running::spawn(&spec, dir.path(), &format!("b{i}"));
        let delay = rng.duration(Duration::from_millis(500), latest);
        std::thread::sleep(delay);
        let status = running.last_status();
        running.kill();
        eprintln!("kill {i} after {delay:?}: {status}; lake B: {}", b.progress());
    }
    let (out, took) = run_to_end(&b, dir.path(), "b_final");
    eprintln!("final run: {took:?}\n{out}");

    assert_same_results(&a, &b, sent.messages);
}

/// A graceful stop (SIGINT) in the middle of a checkpointed run exits 0, and a restart finishes
/// with exactly what an uninterrupted run writes.
#[test]
fn checkpoint_survives_graceful_stop() {
    let dir = Scratch::new();
    let topic = unique("graceful");
    let sent = publish(&kafka(), &topic, Some(4), 200, 23, recent_start_ns(), 300);
    eprintln!("published {} messages to {topic} (4 partitions)", sent.messages);

    let a = Job::new(dir.path(), &topic, "a", false);
    let took = run_uninterrupted(&a, dir.path(), sent.messages);

    let b = Job::new(dir.path(), &topic, "b", true);
    let running = Running::spawn(&b.spec(&dir.path().join("b.toml"), false), dir.path(), "b");
    std::thread::sleep((took * 2 / 5).max(Duration::from_secs(1)));
    eprintln!("stopping at: {}", running.last_status());
    let status = running.interrupt(Duration::from_secs(30));
    assert!(status.success(), "a graceful stop exits 0, not {status}");
    eprintln!("after the stop, lake B: {}", b.progress());
    let (out, took) = run_to_end(&b, dir.path(), "b_final");
    eprintln!("restart: {took:?}\n{out}");

    assert_same_results(&a, &b, sent.messages);
}

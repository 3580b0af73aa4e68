//! End to end against real services, started by `tests/run-all.sh`: the Kafka-compatible broker
//! tansu (`DRAGONFLOW_TEST_KAFKA`) and InfluxDB 1.x (`DRAGONFLOW_TEST_INFLUX`). These tests fail,
//! rather than skip, when the services are not there.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::common::{dragonflow_ok, influx, influxql, kafka, publish, rel, sql_rows, unique};

/// The rows of the first series of the first statement: column name → value.
fn influx_series(v: &serde_json::Value) -> Vec<(BTreeMap<String, String>, BTreeMap<String, serde_json::Value>)> {
    let mut out = Vec::new();
    for series in v["results"][0]["series"].as_array().cloned().unwrap_or_default() {
        let tags: BTreeMap<String, String> = series["tags"]
            .as_object()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let cols: Vec<String> =
            series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        for row in series["values"].as_array().unwrap() {
            let map = cols.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect();
            out.push((tags.clone(), map));
        }
    }
    out
}

fn write_spec(dir: &Path, topic: &str, format: &str, lake: &Path, db: Option<&str>) -> std::path::PathBuf {
    let mut text = format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup = \"{}\"\nstart = \"earliest\"\nformat = \"{format}\"\nstop_at_end = true\n\n[[sink]]\nkind = \"parquet\"\npath = {:?}\n",
        kafka(),
        unique("g"),
        lake.display().to_string()
    );
    if let Some(db) = db {
        text.push_str(&format!(
            "\n[[sink]]\nkind = \"influxdb\"\nurl = \"{}\"\ndatabase = \"{db}\"\nbatch_lines = 700\n",
            influx()
        ));
    }
    let path = dir.join(format!("{}.toml", unique("job")));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tansu_to_lake_and_influxdb_with_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("metrics");
    // Recent event time, so InfluxDB's 4-week retention keeps the points.
    let start = (pipelines::source::wall_ns() / 60_000_000_000 - 10) * 60_000_000_000;
    let sent = publish(&kafka(), &topic, Some(4), 100, 5, start, 60);
    let sent_cpu = sent.by_measurement["cpu"];

    let lake = dir.path().join("lake");
    let db = unique("cbmon");
    let spec = write_spec(dir.path(), &topic, "json", &lake, Some(&db));
    let out = dragonflow_ok(&["run", spec.to_str().unwrap(), "--workers", "2", "--status-every", "0"]);
    assert!(out.contains(&format!("records in:  {} messages", sent.messages)), "{out}");

    // Every message exactly once in the lake...
    let lake_cpu =
        sql_rows(&lake, "SELECT sum(count) AS n FROM aggregates WHERE measurement = 'cpu' AND field = 'usage_idle'");
    assert_eq!(lake_cpu[0]["n"], sent_cpu.to_string());
    let all = sql_rows(&lake, "SELECT measurement, sum(count) AS n FROM aggregates WHERE field IN ('usage_idle','cur_freq','used_percent','read_bytes','bytes_recv') GROUP BY measurement");
    let total: u64 = all.iter().map(|r| r["n"].parse::<u64>().unwrap()).sum();
    assert_eq!(total, sent.messages);
    // ... and in InfluxDB.
    let v = influxql(&db, "SELECT sum(\"count\") FROM \"cpu\"");
    assert_eq!(v["results"][0]["series"][0]["values"][0][1].as_u64(), Some(sent_cpu), "{v}");

    // Per series and window: InfluxDB's count, mean and max equal the lake's.
    let lake_rows = sql_rows(
        &lake,
        "SELECT vm_id, CAST(to_unixtime(window_start) AS BIGINT) AS ws, count, mean, max FROM aggregates \
         WHERE measurement = 'mem' AND field = 'used_percent'",
    );
    let mut want = BTreeMap::new();
    for r in &lake_rows {
        want.insert(
            (r["vm_id"].clone(), r["ws"].parse::<i64>().unwrap()),
            (r["count"].parse::<i64>().unwrap(), r["mean"].parse::<f64>().unwrap(), r["max"].parse::<f64>().unwrap()),
        );
    }
    let got = influx_series(&influxql(
        &db,
        "SELECT \"count\", \"used_percent\", \"used_percent_max\" FROM \"mem\" GROUP BY \"vmId\"",
    ));
    assert_eq!(got.len(), want.len(), "one point per agent and window");
    for (tags, row) in got {
        let key = (tags["vmId"].clone(), row["time"].as_i64().unwrap());
        let (count, mean, max) = want.get(&key).unwrap_or_else(|| panic!("no lake row for {key:?}"));
        assert_eq!(row["count"].as_i64().unwrap(), *count, "{key:?}");
        assert!(rel(row["used_percent"].as_f64().unwrap(), *mean) <= 1e-9, "{key:?}");
        assert!(rel(row["used_percent_max"].as_f64().unwrap(), *max) <= 1e-9, "{key:?}");
    }

    // Group metrics: InfluxDB's points equal the lake's rows.
    let lake_groups = sql_rows(
        &lake,
        "SELECT group_id, CAST(to_unixtime(window_start) AS BIGINT) AS ws, value, vm_count FROM groups \
         WHERE level = 'csp' AND metric = 'cpu_util_mean'",
    );
    assert!(!lake_groups.is_empty(), "groups in the lake");
    let got = influx_series(&influxql(
        &db,
        "SELECT \"value\", \"vm_count\" FROM \"dragonflow_groups\" WHERE \"level\" = 'csp' \
         AND \"metric\" = 'cpu_util_mean' GROUP BY \"group_id\"",
    ));
    assert_eq!(got.len(), lake_groups.len(), "one point per group and window");
    for r in &lake_groups {
        let (group, ws) = (&r["group_id"], r["ws"].parse::<i64>().unwrap());
        let (_, point) = got
            .iter()
            .find(|(tags, p)| &tags["group_id"] == group && p["time"].as_i64() == Some(ws))
            .unwrap_or_else(|| panic!("no InfluxDB point for {group} at {ws}"));
        assert!(rel(point["value"].as_f64().unwrap(), r["value"].parse().unwrap()) <= 1e-9, "{group} {ws}");
        assert_eq!(point["vm_count"].as_i64().unwrap().to_string(), r["vm_count"], "{group} {ws}");
    }
}

/// Telegraf's formats, produced by Python's confluent-kafka (a client we did not write).
#[test]
fn telegraf_formats_from_an_outside_client() {
    let dir = tempfile::tempdir().unwrap();
    let json_topic = unique("telegraf_json");
    let lp_topic = unique("telegraf_lp");
    let script = r#"
import json, sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
brokers, json_topic, lp_topic = sys.argv[1:4]
admin = AdminClient({"bootstrap.servers": brokers})
for f in admin.create_topics([NewTopic(json_topic, 2, 1), NewTopic(lp_topic, 1, 1)]).values():
    f.result(30)
p = Producer({"bootstrap.servers": brokers})
tags = {"nsId": "ns-py", "mcisId": "mcis-py", "vmId": "vm-py", "cspType": "gcp", "osType": "linux", "host": "vm-py"}
p.produce(json_topic, json.dumps({"fields": {"usage_idle": 90.5, "usage_user": 4.5}, "name": "cpu",
          "tags": dict(tags, cpu="cpu-total"), "timestamp": 1700000001}))
p.produce(json_topic, json.dumps({"metrics": [
    {"fields": {"usage_idle": 80.5, "usage_user": 9.5}, "name": "cpu", "tags": dict(tags, cpu="cpu-total"), "timestamp": 1700000003},
    {"fields": {"used_percent": 41.0, "total": 8589934592}, "name": "mem", "tags": tags, "timestamp": 1700000003}]}))
p.produce(lp_topic, "cpu,nsId=ns-py,mcisId=mcis-py,vmId=vm-py,cspType=gcp,osType=linux,cpu=cpu-total usage_idle=70.5,usage_user=1i 1700000001000000000\n"
                    "net,nsId=ns-py,vmId=vm-py,cspType=gcp,interface=eth0 bytes_recv=1000u,up=true,name=\"x y\" 1700000002000000000")
assert p.flush(30) == 0, "undelivered messages"
"#;
    let py = dir.path().join("produce.py");
    std::fs::write(&py, script).unwrap();
    let status = Command::new("python3").arg(&py).args([&kafka(), &json_topic, &lp_topic]).status().unwrap();
    assert!(status.success(), "the Python producer failed");

    let lake = dir.path().join("lake");
    dragonflow_ok(&[
        "run",
        write_spec(dir.path(), &json_topic, "json", &lake, None).to_str().unwrap(),
        "--status-every",
        "0",
    ]);
    dragonflow_ok(&[
        "run",
        write_spec(dir.path(), &lp_topic, "influx", &lake, None).to_str().unwrap(),
        "--status-every",
        "0",
    ]);
    let rows = sql_rows(
        &lake,
        "SELECT measurement, instance, field, count, min, max, last, ns_id, csp_type FROM aggregates ORDER BY measurement, field, count",
    );
    let find = |m: &str, f: &str, n: &str| {
        rows.iter()
            .find(|r| r["measurement"] == m && r["field"] == f && r["count"] == n)
            .unwrap_or_else(|| panic!("{m}.{f} n={n}: {rows:?}"))
            .clone()
    };
    let num = |r: &std::collections::HashMap<String, String>, c: &str| r[c].parse::<f64>().unwrap();
    let json_idle = find("cpu", "usage_idle", "2");
    assert_eq!((num(&json_idle, "min"), num(&json_idle, "max"), num(&json_idle, "last")), (80.5, 90.5, 80.5));
    assert_eq!(json_idle["instance"], "cpu-total");
    assert_eq!(json_idle["ns_id"], "ns-py");
    assert_eq!(num(&find("mem", "used_percent", "1"), "last"), 41.0);
    assert_eq!(num(&find("mem", "total", "1"), "last"), 8589934592.0);
    assert_eq!(num(&find("cpu", "usage_idle", "1"), "last"), 70.5);
    assert_eq!(num(&find("cpu", "usage_user", "1"), "last"), 1.0);
    let net = find("net", "bytes_recv", "1");
    assert_eq!((num(&net, "last"), net["instance"].as_str()), (1000.0, "eth0"));
    assert!(
        !rows.iter().any(|r| r["field"] == "up" || r["field"] == "name"),
        "bool and string fields are not aggregated"
    );
    assert_eq!(sql_rows(&lake, "SELECT count(*) AS n FROM rejects")[0]["n"], "0");
}

/// An InfluxDB of the test's own, to stop and start again.
struct OwnInflux {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl OwnInflux {
    fn start() -> OwnInflux {
        let dir = tempfile::tempdir().unwrap();
        let (port, rpc) = (free_port(), free_port());
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("influxdb.conf"),
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n"
            ),
        )
        .unwrap();
        let mut own = OwnInflux { dir, port, child: None };
        own.up();
        own
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("influxd")
            .arg("-config")
            .arg(self.dir.path().join("influxdb.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("influxd (Debian's influxdb package) runs");
        self.child = Some(child);
        for _ in 0..300 {
            let ok = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/ping", self.url())])
                .output()
                .map(|o| o.stdout == b"204")
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("influxd did not answer");
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sf", "-G", &format!("{}/query", self.url()), "--data-urlencode", &format!("db={db}")])
            .args(["--data-urlencode", &format!("q={q}")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn cpu_count(&self, db: &str) -> u64 {
        self.query(db, "SELECT sum(\"count\") FROM \"cpu\"")["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for OwnInflux {
    fn drop(&mut self) {
        self.down();
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// InfluxDB goes away for 20 s in the middle of a live run and comes back: afterwards it holds
/// every window the lake holds, and the job's memory stayed bounded meanwhile.
#[test]
fn influxdb_outage_in_the_middle_of_a_run() {
    let mut own = OwnInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("outage");
    let db = unique("outage_db");
    let lake = dir.path().join("lake");
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup = \"{}\"\nstart = \"earliest\"\n\n[window]\nsize = \"5s\"\nlateness = \"1s\"\n\n[[sink]]\nkind = \"parquet\"\npath = {:?}\nflush_interval = \"1s\"\n\n[[sink]]\nkind = \"influxdb\"\nurl = \"{}\"\ndatabase = \"{db}\"\nbatch_lines = 200\ntimeout = \"1s\"\nflush_interval = \"1s\"\n",
            kafka(),
            unique("g"),
            lake.display().to_string(),
            own.url()
        ),
    )
    .unwrap();
    let target = loadgen::KafkaTarget { brokers: kafka(), topic: topic.clone(), partitions: Some(2), config: vec![] };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let cfg = loadgen::FleetConfig {
                agents: 40,
                seed: 9,
                format: loadgen::Format::Json,
                skew_ns: 0,
                reorder: 0.0,
                churn: 0.0,
                first_vm: 0,
            };
            loadgen::run_kafka(cfg, &target, 0, Duration::from_secs(1), Duration::from_secs(35), true, &stop, |_| {})
        });
        // Let the generator create the topic before the job looks for it.
        std::thread::sleep(Duration::from_secs(2));
        let job = Command::new(crate::common::bin())
            .args(["run", spec.to_str().unwrap(), "--workers", "2", "--status-every", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = job.id();
        let mut waited = 0;
        while own.cpu_count(&db) == 0 {
            waited += 1;
            assert!(waited < 200, "no point reached InfluxDB");
            std::thread::sleep(Duration::from_millis(100));
        }
        own.down();
        let mut peak = 0;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(500));
            peak = peak.max(rss_bytes(pid).unwrap_or(0));
        }
        own.up();
        let sent = producer.join().unwrap().unwrap();
        // Give the job time to catch up after the outage, then stop it gracefully.
        std::thread::sleep(Duration::from_secs(10));
        let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
        let out = job.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(peak < 512 << 20, "resident memory during the outage peaked at {peak} bytes");

        let lake_cpu: u64 = sql_rows(
            &lake,
            "SELECT sum(count) AS n FROM aggregates WHERE measurement = 'cpu' AND field = 'usage_idle'",
        )[0]["n"]
            .parse()
            .unwrap();
        assert_eq!(lake_cpu, sent.by_measurement["cpu"], "every message sent is in the lake");
        assert_eq!(own.cpu_count(&db), lake_cpu, "InfluxDB holds every window the lake holds");
    });
}

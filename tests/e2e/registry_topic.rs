//! The registry topic on the real broker started by `tests/run-all.sh` (tansu,
//! `DRAGONFLOW_TEST_KAFKA`): a record that moves a VM to another MCIS from an event time in the
//! middle of the data, and a tombstone that removes an agent. Like `services`, this test fails,
//! rather than skips, when the broker is not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{dragonflow, kafka, sql_rows, unique};

/// Nanoseconds per second.
const S: i64 = 1_000_000_000;
/// Start of the data, in seconds (a multiple of the window).
const T0: i64 = 1_700_000_000;
/// Event time covered by the data, in seconds.
const SPAN: i64 = 180;
const TICK: i64 = 2;
const WINDOW: i64 = 10;
/// When the moved VM's new record holds, in seconds: a window boundary in the middle of the data.
const CHANGE: i64 = T0 + SPAN / 2;
const NS: &str = "ns-reg";
const CSP: &str = "aws";
const OLD: &str = "mcis-a";
const NEW: &str = "mcis-b";

/// An agent as it reports: its MCIS and VM id.
struct Agent {
    mcis: &'static str,
    vm: String,
}

impl Agent {
    fn key(&self) -> String {
        format!("{NS}/{}/{}/{CSP}", self.mcis, self.vm)
    }
}

/// Six agents, three in each MCIS.
fn fleet() -> Vec<Agent> {
    (1..=6).map(|i| Agent { mcis: if i <= 3 { OLD } else { NEW }, vm: format!("vm-{i}") }).collect()
}

/// Creates `topics` (name, partitions) on `brokers`; a topic that exists already is fine.
pub(crate) fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("an admin client");
    let new: Vec<NewTopic> =
        topics.iter().map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(-1))).collect();
    let timeout = Some(Duration::from_secs(30));
    let opts = AdminOptions::new().request_timeout(timeout).operation_timeout(timeout);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime.block_on(admin.create_topics(&new, &opts)).expect("create_topics answers");
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("creating topic {topic}: {code}"),
        }
    }
}

/// A message to publish.
pub(crate) struct Msg {
    pub key: String,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// `None`: the producer's partitioner decides.
    pub partition: Option<i32>,
}

/// Publishes `messages` to `topic` in order, and waits until the broker has every one of them.
pub(crate) fn produce(brokers: &str, topic: &str, messages: &[Msg]) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("a producer");
    for m in messages {
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(m.key.as_str());
        if let Some(value) = &m.value {
            record = record.payload(value.as_slice());
        }
        if let Some(partition) = m.partition {
            record = record.partition(partition);
        }
        producer.send(record).map_err(|(e, _)| e).expect("the producer takes the message");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("every message delivered");
}

/// Telegraf JSON metrics of every agent: `cpu.usage_idle` (instance `cpu-total`) and
/// `mem.used_percent` every `TICK` seconds from `T0` for `SPAN` seconds, keyed by agent, on
/// partitions 0 and 1 (an agent on one of them).
fn metrics(agents: &[Agent]) -> Vec<Msg> {
    let mut out = Vec::new();
    for t in (T0..T0 + SPAN).step_by(TICK as usize) {
        for (i, a) in agents.iter().enumerate() {
            let tags = serde_json::json!({
                "nsId": NS, "mcisId": a.mcis, "vmId": a.vm, "cspType": CSP, "osType": "ubuntu", "host": a.vm,
            });
            let mut cpu_tags = tags.clone();
            cpu_tags["cpu"] = "cpu-total".into();
            let cpu = serde_json::json!({
                "name": "cpu", "tags": cpu_tags, "fields": {"usage_idle": 90.0 - 5.0 * i as f64}, "timestamp": t,
            });
            let mem = serde_json::json!({
                "name": "mem", "tags": tags, "fields": {"used_percent": 40.0 + i as f64}, "timestamp": t,
            });
            for m in [cpu, mem] {
                out.push(Msg {
                    key: a.key(),
                    value: Some(serde_json::to_vec(&m).unwrap()),
                    partition: Some(i as i32 % 2),
                });
            }
        }
    }
    out
}

fn write_spec(dir: &Path, metrics: &str, registry: &str, lake: &Path) -> PathBuf {
    let text = format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{metrics}\"]\ngroup = \"{}\"\nstart = \"earliest\"\n\
         format = \"json\"\nstop_at_end = true\n\n[source.options]\n\"fetch.wait.max.ms\" = \"5\"\n\n\
         [window]\nsize = \"{WINDOW}s\"\nlateness = \"5s\"\n\n[[sink]]\nkind = \"parquet\"\npath = {:?}\n\n\
         [registry]\ntopic = \"{registry}\"\n",
        kafka(),
        unique("g"),
        lake.display().to_string()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn registry_topic_moves_a_vm_and_removes_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = kafka();
    let metrics_topic = unique("reg_metrics");
    let registry_topic = unique("reg_agents");
    // Partition 2 of the metrics topic stays empty. A partition that has delivered nothing holds
    // the watermark back, so no window closes before the input ends: the job has read the registry
    // topic by then, whatever the order in which it reads the two topics.
    create_topics(&brokers, &[(&metrics_topic, 3), (&registry_topic, 1)]);

    let agents = fleet();
    let moved = &agents[0];
    let removed = &agents[5];
    let record = serde_json::json!({
        "ns_id": NS, "mcis_id": NEW, "vm_id": moved.vm, "csp_type": CSP, "os_type": "ubuntu",
        "mechanism": "push", "public_ip": "10.0.0.1", "state": "enable", "vcpu": 2, "memory_gib": 4.0,
        "cost_per_hour": 0.1, "time": CHANGE * S,
    });
    // A record of the removed agent before its tombstone: a tombstone read before the agent's
    // first window closes would otherwise find nothing to remove.
    let removed_record = serde_json::json!({
        "ns_id": NS, "mcis_id": removed.mcis, "vm_id": removed.vm, "csp_type": CSP, "os_type": "ubuntu", "vcpu": 8,
    });
    let update = |a: &Agent, value: Option<&serde_json::Value>| Msg {
        key: a.key(),
        value: value.map(|v| serde_json::to_vec(v).unwrap()),
        partition: None,
    };
    // The registry before the metrics.
    produce(
        &brokers,
        &registry_topic,
        &[
            update(removed, Some(&removed_record)),
            update(moved, Some(&record)),
            update(removed, None),
            // Not a registry update: kept in `rejects` with the reason, the rest goes on.
            Msg { key: "ns-x/mcis-x/vm-x/aws".into(), value: Some(b"{\"vcpu\": ".to_vec()), partition: None },
        ],
    );
    produce(&brokers, &metrics_topic, &metrics(&agents));

    let lake = dir.path().join("lake");
    let spec = write_spec(dir.path(), &metrics_topic, &registry_topic, &lake);
    let out = dragonflow(&["run", spec.to_str().unwrap(), "--status-every", "0"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "dragonflow run failed:\n{stdout}\n{stderr}");

    // Window start (s) → MCIS → VMs reporting in it.
    let rows = sql_rows(
        &lake,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, group_id, vm_count FROM groups \
         WHERE level = 'mcis' AND metric = 'cpu_util_mean' ORDER BY ws, group_id",
    );
    let mut counts: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &rows {
        counts
            .entry(r["ws"].parse().unwrap())
            .or_default()
            .insert(r["group_id"].clone(), r["vm_count"].parse().unwrap());
    }
    let starts: Vec<i64> = counts.keys().copied().collect();
    assert_eq!(starts, (T0..T0 + SPAN).step_by(WINDOW as usize).collect::<Vec<_>>(), "windows: {rows:?}");
    let (old, new) = (format!("{NS}/{OLD}"), format!("{NS}/{NEW}"));
    for (ws, groups) in &counts {
        assert_eq!(groups.values().sum::<u64>(), 6, "window {ws}: {groups:?}");
        let want = if ws + WINDOW <= CHANGE { (3, 3) } else { (2, 4) };
        let got = (groups.get(&old).copied().unwrap_or(0), groups.get(&new).copied().unwrap_or(0));
        assert_eq!(got, want, "window {ws} ({}s after the change): {groups:?}; every window: {counts:?}", ws - CHANGE);
    }

    // The moved VM's record from the topic, kept under the key it reports with.
    let history = sql_rows(
        &lake,
        "SELECT CAST(to_unixtime(time) AS BIGINT) AS t, \"key\", mcis_id, vcpu, deleted FROM agents_history \
         ORDER BY t, \"key\"",
    );
    assert!(
        history.iter().any(|r| r["key"] == moved.key()
            && r["t"] == CHANGE.to_string()
            && r["mcis_id"] == NEW
            && r["vcpu"] == "2.0"),
        "no row of the moved VM's new record: {history:?}"
    );
    let rejects = sql_rows(&lake, "SELECT source, reason, payload FROM rejects");
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0]["source"], registry_topic);
    assert!(rejects[0]["reason"].starts_with("registry update:") && rejects[0]["payload"] == "{\"vcpu\": ");

    // The tombstone removed the agent; it reports on, so it is registered again, but the removal
    // is in the history.
    assert!(
        history.iter().any(|r| r["key"] == removed.key() && r["deleted"] == "true"),
        "no deleted row of {}: {:?}",
        removed.key(),
        history.iter().filter(|r| r["key"] == removed.key()).collect::<Vec<_>>()
    );
}

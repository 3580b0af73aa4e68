//! Kafka end to end on librdkafka's in-process mock cluster: the load generator publishes,
//! a two-worker job reads every partition to its end, and the lake holds every message once.

use std::sync::Arc;
use std::time::Duration;

use pipelines::spec::{JobSpec, KafkaSource, KeysConfig, ParquetSink, SinkSpec, SourceSpec, StartAt, WindowConfig};
use pipelines::{run_job, JobControl, JobMetrics, RunOptions};
use rdkafka::mocking::MockCluster;

use crate::common::{publish, sql_rows};

#[test]
fn kafka_to_lake_counts_every_message_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("metrics", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = publish(&brokers, "metrics", None, 40, 11, 1_700_000_000_000_000_000, 40);
    assert_eq!(sent.messages, 40 * 6 * 20);

    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let spec = JobSpec {
        name: None,
        source: SourceSpec::Kafka(KafkaSource {
            brokers,
            topics: vec!["metrics".into()],
            topic_regex: None,
            group: "e2e".into(),
            start: StartAt::Earliest,
            format: operators::decode::Format::Json,
            timestamp_unit: Default::default(),
            idle_timeout: Duration::from_secs(30),
            stop_at_end: true,
            options: Default::default(),
        }),
        window: WindowConfig::default(),
        keys: KeysConfig::default(),
        limits: Default::default(),
        checkpoint: Default::default(),
        groups: Default::default(),
        registry: Default::default(),
        counters: Default::default(),
        alarms: Vec::new(),
        handlers: Vec::new(),
        pull: None,
        sinks: vec![SinkSpec::Parquet(ParquetSink { path: lake.clone(), flush_interval: Duration::from_secs(10) })],
    };
    let metrics = Arc::new(JobMetrics::new(2));
    let report = run_job(&spec, &RunOptions { workers: 2, ..Default::default() }, Arc::new(JobControl::new()), metrics)
        .expect("job runs");
    assert_eq!(report.messages, sent.messages);
    assert_eq!(report.rejects, 0);
    assert_eq!(report.late, 0);
    assert_eq!(report.committed_partitions, 4, "every partition's offset is committed after the sinks wrote");

    let by_measurement =
        sql_rows(&lake, "SELECT measurement, sum(count) AS n, count(DISTINCT vm_id) AS vms FROM aggregates WHERE field IN ('usage_idle','cur_freq','used_percent','read_bytes','bytes_recv') GROUP BY measurement ORDER BY measurement");
    let total: u64 = by_measurement.iter().map(|r| r["n"].parse::<u64>().unwrap()).sum();
    assert_eq!(total, sent.messages, "{by_measurement:?}");
    for r in &by_measurement {
        assert_eq!(r["vms"], "40");
    }
    // 40 s of event time from an aligned start: exactly 4 windows.
    let windows = sql_rows(&lake, "SELECT count(DISTINCT window_start) AS n FROM aggregates");
    assert_eq!(windows[0]["n"], "4");
}

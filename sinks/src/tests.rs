//! Lake round trips: rows written by [`LakeWriter`]s come back, exactly, through [`query`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{
    Float64Type, Int32Type, Int64Type, TimestampMillisecondType, TimestampNanosecondType, UInt32Type, UInt64Type,
};
use chrono::Utc;
use operators::aggregate::{Agg, Counters};
use operators::model::{
    AgentRow, AgentTags, AlarmDelivery, AlarmEvent, GroupRow, HealthRow, LateRow, Origin, RankRow, RejectRow,
    SeriesKey, SinkItem, WindowBatch,
};
use operators::registry::{AgentRecord, AgentState, Mechanism};

use crate::lake::{LakeConfig, LakeWriter};
use crate::sql::{format_batches, lake_context, query, OutputFormat};
use crate::SinkError;

const SEC: i64 = 1_000_000_000;
/// 2024-03-10T23:59:50Z: the first window is the last of hour 23, the next one opens 2024-03-11.
const T0: i64 = 1_710_115_190 * SEC;
/// 2024-03-10T22:30:00Z.
const T_LATE: i64 = 1_710_109_800 * SEC;

fn agent(vm: &str) -> Arc<AgentTags> {
    Arc::new(AgentTags {
        ns_id: "ns-1".into(),
        mcis_id: "mcis-1".into(),
        vm_id: vm.into(),
        csp_type: "aws".into(),
        os_type: "linux".into(),
    })
}

fn key(vm: &str, measurement: &str, instance: &str, field: &str) -> SeriesKey {
    SeriesKey::new(agent(vm), measurement.into(), instance.into(), field.into())
}

/// The aggregate of `values`, one every 2 s from `start`.
fn agg(start: i64, values: &[f64]) -> Agg {
    let mut agg = Agg::of(start, 0, values[0]);
    for (i, v) in values.iter().enumerate().skip(1) {
        agg.add(start + 2 * SEC * i as i64, i as u64, *v);
    }
    agg
}

fn window(start: i64, rows: Vec<(SeriesKey, Agg)>) -> SinkItem {
    SinkItem::Aggregates(WindowBatch { window_start: start, window_end: start + 10 * SEC, rows })
}

fn origin(partition: i32, position: i64) -> Origin {
    Origin { source: "metrics".into(), partition, position }
}

fn late(vm: &str, timestamp: i64, value: f64, position: i64) -> LateRow {
    LateRow {
        agent: agent(vm),
        measurement: "cpu".into(),
        instance: "cpu-total".into(),
        field: "usage_idle".into(),
        timestamp,
        value,
        watermark: T0,
        origin: origin(1, position),
    }
}

async fn rows(lake: &Path, sql: &str) -> Vec<RecordBatch> {
    let ctx = lake_context(lake).await.expect("lake context");
    query(&ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn num_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Two workers write two windows (either side of midnight), late rows and rejects into one lake.
fn write_two_workers(lake: &Path) -> (crate::LakeStats, crate::LakeStats) {
    let mut w0 = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer 0");
    let mut w1 = LakeWriter::new(LakeConfig::new(lake), 1).expect("writer 1");
    let t1 = T0 + 10 * SEC;

    w0.push(window(
        T0,
        vec![
            (key("vm-1", "cpu", "cpu-total", "usage_idle"), agg(T0, &[90.0, 80.0, 70.0])),
            (key("vm-1", "mem", "", "used_percent"), agg(T0, &[40.0, 42.0])),
        ],
    ))
    .expect("push");
    w1.push(window(T0, vec![(key("vm-2", "cpu", "cpu-total", "usage_idle"), agg(T0, &[10.0, 30.0]))])).expect("push");
    w0.push(SinkItem::Late(vec![late("vm-1", T_LATE, 55.5, 7), late("vm-1", T_LATE + SEC, 56.5, 8)])).expect("push");
    // Flush between windows: the second window goes to a second file of the same worker.
    w0.flush().expect("flush");
    w0.push(window(
        t1,
        vec![(key("vm-1", "cpu", "cpu-total", "usage_idle"), agg(t1, &[60.0, 50.0, 40.0, 30.0, 20.0]))],
    ))
    .expect("push");
    w1.push(window(
        t1,
        vec![
            (key("vm-2", "cpu", "cpu-total", "usage_idle"), agg(t1, &[5.0])),
            (key("vm-2", "disk", "/data", "used"), agg(t1, &[1e12, 1.5e12])),
        ],
    ))
    .expect("push");
    w1.push(SinkItem::Late(vec![late("vm-2", T_LATE + 2 * SEC, -1.0, 9)])).expect("push");
    w1.push(SinkItem::Rejects(vec![
        RejectRow::new(origin(0, 41), "invalid JSON: expected value", b"{not json", T0 + 3 * SEC),
        RejectRow::new(origin(2, 42), "missing tag vmId", b"cpu,nsId=a usage=1 \"quoted\", comma", T0 + 4 * SEC),
    ]))
    .expect("push");
    // Worker 1 is not flushed by hand: finish writes what is buffered, splitting the hours.
    (w0.finish().expect("finish 0"), w1.finish().expect("finish 1"))
}

#[tokio::test]
async fn two_workers_round_trip_through_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let (s0, s1) = write_two_workers(lake);
    assert_eq!((s0.rows, s1.rows), (5, 6), "{s0:?} {s1:?}");
    // w0: aggregates 23h, late, aggregates 00h; w1: aggregates 23h + 00h, late, rejects.
    assert_eq!((s0.files, s1.files), (3, 4));
    assert!(s0.bytes > 0 && s0.last_error.is_none());

    // Files: only `*.parquet`, in `date=/hour=` directories; a window's file is named after the
    // window and the worker, other files after the worker and the flush.
    let files = files_under(lake);
    assert_eq!(files.len() as u64, s0.files + s1.files);
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("file name");
        let window_file = name.starts_with("part-17")
            && (name.ends_with("-w000of001.parquet") || name.ends_with("-w001of001.parquet"));
        let flush_file = name.starts_with("part-w00") && name.ends_with(".parquet");
        assert!(window_file || flush_file, "unexpected file {}", file.display());
        let hour = file.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).expect("hour dir");
        assert!(hour.starts_with("hour="), "{}", file.display());
    }
    let rel = |p: &PathBuf| p.strip_prefix(lake).expect("in lake").parent().expect("dir").display().to_string();
    let mut dirs: Vec<String> = files.iter().map(rel).collect();
    dirs.dedup();
    assert_eq!(
        dirs,
        [
            "aggregates/date=2024-03-10/hour=23",
            "aggregates/date=2024-03-11/hour=00",
            "late/date=2024-03-10/hour=22",
            "rejects/date=2024-03-10/hour=23",
        ]
    );

    // Aggregates: per partition counts, and the partition columns.
    let batches = rows(
        lake,
        "SELECT date, hour, count(*) AS n, sum(count) AS c FROM aggregates GROUP BY date, hour ORDER BY date",
    )
    .await;
    let b = &batches[0];
    assert_eq!(num_rows(&batches), 2);
    assert_eq!(b.column(0).as_string::<i32>().value(0), "2024-03-10");
    assert_eq!(b.column(1).as_string::<i32>().value(0), "23");
    assert_eq!(b.column(0).as_string::<i32>().value(1), "2024-03-11");
    assert_eq!(b.column(1).as_string::<i32>().value(1), "00");
    assert_eq!(b.column(2).as_primitive::<Int64Type>().values(), &[3, 3]);
    assert_eq!(b.column(3).as_primitive::<UInt64Type>().values(), &[3 + 2 + 2, 5 + 1 + 2]);

    // One row's values and timestamps, exactly.
    let batches = rows(
        lake,
        "SELECT window_start, window_end, count, sum, min, max, mean, last, ns_id, os_type, instance \
         FROM aggregates WHERE vm_id = 'vm-1' AND field = 'usage_idle' AND window_start = '2024-03-11T00:00:00Z'",
    )
    .await;
    assert_eq!(num_rows(&batches), 1);
    let b = &batches[0];
    let ms = (T0 + 10 * SEC) / 1_000_000;
    assert_eq!(b.column(0).as_primitive::<TimestampMillisecondType>().value(0), ms);
    assert_eq!(b.column(1).as_primitive::<TimestampMillisecondType>().value(0), ms + 10_000);
    assert_eq!(b.column(2).as_primitive::<UInt64Type>().value(0), 5);
    let f = |i: usize| b.column(i).as_primitive::<Float64Type>().value(0);
    assert_eq!((f(3), f(4), f(5), f(6), f(7)), (200.0, 20.0, 60.0, 40.0, 20.0));
    assert_eq!(b.column(8).as_string::<i32>().value(0), "ns-1");
    assert_eq!(b.column(9).as_string::<i32>().value(0), "linux");
    assert_eq!(b.column(10).as_string::<i32>().value(0), "cpu-total");

    let batches =
        rows(lake, "SELECT sum(sum), max(max) FROM aggregates WHERE vm_id = 'vm-2' AND measurement = 'disk'").await;
    assert_eq!(batches[0].column(0).as_primitive::<Float64Type>().value(0), 2.5e12);

    // Late rows: nanosecond timestamps, watermark and origin survive.
    let batches = rows(
        lake,
        "SELECT timestamp, value, watermark, source, partition, position, date, hour, vm_id FROM late ORDER BY position",
    )
    .await;
    assert_eq!(num_rows(&batches), 3);
    let b = &batches[0];
    assert_eq!(
        b.column(0).as_primitive::<TimestampNanosecondType>().values(),
        &[T_LATE, T_LATE + SEC, T_LATE + 2 * SEC]
    );
    assert_eq!(b.column(1).as_primitive::<Float64Type>().values(), &[55.5, 56.5, -1.0]);
    assert_eq!(b.column(2).as_primitive::<TimestampNanosecondType>().value(2), T0);
    assert_eq!(b.column(3).as_string::<i32>().value(0), "metrics");
    assert_eq!(b.column(4).as_primitive::<Int32Type>().value(0), 1);
    assert_eq!(b.column(5).as_primitive::<Int64Type>().values(), &[7, 8, 9]);
    assert_eq!(
        (b.column(6).as_string::<i32>().value(0), b.column(7).as_string::<i32>().value(0)),
        ("2024-03-10", "22")
    );
    assert_eq!(b.column(8).as_string::<i32>().value(2), "vm-2");

    // Rejects: the payload comes back byte for byte.
    let batches =
        rows(lake, "SELECT received_at, partition, position, reason, payload FROM rejects ORDER BY position").await;
    assert_eq!(num_rows(&batches), 2);
    let b = &batches[0];
    assert_eq!(b.column(0).as_primitive::<TimestampNanosecondType>().value(1), T0 + 4 * SEC);
    assert_eq!(b.column(1).as_primitive::<Int32Type>().values(), &[0, 2]);
    assert_eq!(b.column(3).as_string::<i32>().value(0), "invalid JSON: expected value");
    assert_eq!(b.column(4).as_string::<i32>().value(1), "cpu,nsId=a usage=1 \"quoted\", comma");

    // Timestamps compare as UTC instants in SQL.
    let batches = rows(lake, "SELECT count(*) FROM late WHERE timestamp < TIMESTAMP '2024-03-10T22:30:01Z'").await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 1);
}

#[tokio::test]
async fn files_are_snappy_with_statistics() {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().expect("tempdir");
    write_two_workers(dir.path());
    let file = files_under(&dir.path().join("aggregates")).into_iter().next().expect("a file");
    let reader = SerializedFileReader::new(fs::File::open(&file).expect("open")).expect("parquet");
    let column = reader.metadata().row_group(0).column(2); // ns_id
    assert_eq!(column.compression(), parquet::basic::Compression::SNAPPY);
    assert!(column.statistics().is_some());
    assert!(column.dictionary_page_offset().is_some(), "strings are dictionary-encoded");
}

#[tokio::test]
async fn empty_tables_are_queryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No lake at all: every table is registered empty, with its partition columns, and every
    // view reads from those.
    let missing = dir.path().join("no-lake-yet");
    for table in crate::TABLES.iter().chain(crate::VIEWS) {
        let batches = rows(&missing, &format!("SELECT * FROM {table}")).await;
        assert_eq!(num_rows(&batches), 0, "{table}");
    }
    let batches = rows(&missing, "SELECT count(*), max(hour) FROM aggregates").await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 0);

    // A lake whose writer has started but not written anything yet.
    let lake = dir.path().join("lake");
    let stats = LakeWriter::new(LakeConfig::new(&lake), 0).expect("writer").finish().expect("finish");
    assert_eq!(stats.files, 0);
    for table in crate::TABLES {
        let batches = rows(&lake, &format!("SELECT * FROM {table} WHERE date = '2024-01-01'")).await;
        assert_eq!(num_rows(&batches), 0, "{table}");
    }
    for view in crate::VIEWS {
        assert_eq!(num_rows(&rows(&lake, &format!("SELECT * FROM {view}")).await), 0, "{view}");
    }
}

#[tokio::test]
async fn writes_and_session_changes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = lake_context(dir.path()).await.expect("context");
    let target = dir.path().join("copy-target");
    let refused = [
        ("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'".to_string(), "CREATE EXTERNAL TABLE"),
        (format!("COPY (SELECT 1) TO '{}' STORED AS PARQUET", target.display()), "COPY"),
        (format!("EXPLAIN COPY (SELECT 1) TO '{}'", target.display()), "COPY"),
        ("INSERT INTO rejects SELECT * FROM rejects".to_string(), "INSERT INTO"),
        ("DROP TABLE aggregates".to_string(), "DROP TABLE"),
        ("CREATE TABLE t AS SELECT 1".to_string(), "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1".to_string(), "CREATE VIEW"),
        ("SET datafusion.execution.batch_size = 1".to_string(), "SET"),
        ("DELETE FROM late".to_string(), "DELETE"),
    ];
    for (sql, kind) in refused {
        let err = query(&ctx, &sql).await.expect_err(&sql);
        assert!(matches!(err, SinkError::ReadOnly { .. }), "{sql}: {err}");
        let message = err.to_string();
        assert!(message.contains("read-only") && message.contains(kind), "{sql}: {message}");
    }
    assert!(!target.exists(), "COPY must not write");
    // Nothing was dropped, and reads still work.
    let batches = query(&ctx, "SELECT count(*) AS n FROM aggregates").await.expect("select");
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    query(&ctx, "SHOW TABLES").await.expect("show tables");
    query(&ctx, "EXPLAIN SELECT * FROM late").await.expect("explain");
    query(&ctx, "DESCRIBE rejects").await.expect("describe");
    // Errors that are not about writing stay query errors.
    let err = query(&ctx, "SELECT * FROM nope").await.expect_err("unknown table");
    assert!(matches!(err, SinkError::Query { .. }), "{err}");
}

#[tokio::test]
async fn formats_csv_json_and_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_two_workers(dir.path());
    let batches = rows(
        dir.path(),
        "SELECT window_start, vm_id, field, count, mean FROM aggregates ORDER BY window_start, vm_id, field",
    )
    .await;

    let csv = format_batches(&batches, OutputFormat::Csv).expect("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("window_start,vm_id,field,count,mean"));
    assert_eq!(lines.next(), Some("2024-03-10T23:59:50+00:00,vm-1,usage_idle,3,80.0"));
    assert_eq!(csv.lines().count(), 1 + 6);

    let json = format_batches(&batches, OutputFormat::Json).expect("json");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    let array = value.as_array().expect("an array");
    assert_eq!(array.len(), 6);
    assert_eq!(array[0]["vm_id"], "vm-1");
    assert_eq!(array[0]["count"], 3);

    let table = format_batches(&batches, OutputFormat::Table).expect("table");
    assert!(table.contains("| window_start") && table.contains("vm-2"), "{table}");

    let empty = format_batches(&[], OutputFormat::Json).expect("empty json");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&empty).expect("json"), serde_json::json!([]));
    assert_eq!("CSV".parse::<OutputFormat>().ok(), Some(OutputFormat::Csv));
    assert!("xml".parse::<OutputFormat>().is_err());
}

fn reject(position: i64) -> RejectRow {
    RejectRow::new(origin(0, position), "bad", b"x", T0)
}

#[test]
fn poll_flushes_after_the_interval_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LakeConfig { flush_interval: Duration::from_secs(60), ..LakeConfig::new(dir.path()) };
    let start = Instant::now();
    let mut writer = LakeWriter::new(cfg, 0).expect("writer");
    writer.push(SinkItem::Rejects(vec![reject(1), reject(2)])).expect("push");
    writer.poll(start + Duration::from_secs(30)).expect("poll");
    assert_eq!(writer.buffered_rows(), 2, "flushed before the interval");
    writer.poll(start + Duration::from_secs(61)).expect("poll");
    assert_eq!(writer.buffered_rows(), 0, "not flushed after the interval");
    // The interval restarts at the flush.
    writer.push(SinkItem::Rejects(vec![reject(3)])).expect("push");
    writer.poll(start + Duration::from_secs(100)).expect("poll");
    assert_eq!(writer.buffered_rows(), 1);
    writer.poll(start + Duration::from_secs(121)).expect("poll");
    assert_eq!(writer.buffered_rows(), 0);
    let stats = writer.finish().expect("finish");
    assert_eq!((stats.files, stats.rows), (2, 3));
}

#[test]
fn a_full_table_is_flushed_on_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LakeConfig { max_buffered_rows: 3, ..LakeConfig::new(dir.path()) };
    let mut writer = LakeWriter::new(cfg, 7).expect("writer");
    writer.push(SinkItem::Rejects(vec![reject(1), reject(2)])).expect("push");
    writer.push(SinkItem::Late(vec![late("vm-1", T_LATE, 1.0, 1)])).expect("push");
    assert_eq!(writer.buffered_rows(), 3, "tables fill separately");
    writer.push(SinkItem::Rejects(vec![reject(3)])).expect("push");
    assert_eq!(writer.buffered_rows(), 1, "rejects flushed, late still buffered");
    let stats = writer.finish().expect("finish");
    assert_eq!((stats.files, stats.rows), (2, 4));
    let names: Vec<String> = files_under(dir.path())
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    assert!(names.iter().all(|n| n.starts_with("part-w007-") && n.ends_with(".parquet")), "{names:?}");
    let mut seqs: Vec<&str> = names.iter().filter_map(|n| n.rsplit('-').next()).collect();
    seqs.sort();
    assert_eq!(seqs, ["000000.parquet", "000001.parquet"]);
}

#[test]
fn dropping_a_writer_still_writes_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = LakeWriter::new(LakeConfig::new(dir.path()), 0).expect("writer");
    writer.push(SinkItem::Rejects(vec![reject(1)])).expect("push");
    drop(writer);
    assert_eq!(files_under(dir.path()).len(), 1);
}

#[test]
fn write_errors_name_the_path_and_stop_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let mut writer = LakeWriter::new(LakeConfig::new(&lake), 0).expect("writer");
    // Make the partition directory impossible to create.
    let rejects = lake.join("rejects");
    fs::remove_dir(&rejects).expect("remove");
    fs::write(&rejects, b"not a directory").expect("write");
    writer.push(SinkItem::Rejects(vec![reject(1)])).expect("push");
    writer.flush().expect("flush only queues");
    let err = writer.finish().expect_err("the write fails");
    let message = err.to_string();
    assert!(message.contains("create directory") && message.contains("rejects"), "{message}");
    assert_eq!(files_under(&lake).len(), 1, "only the blocking file, no temp files");

    // A file where the lake should be.
    let err = LakeWriter::new(LakeConfig::new(lake.join("rejects").join("x")), 0).err().expect("not a directory");
    assert!(err.to_string().contains("cannot create directory"), "{err}");
}

#[test]
fn pushing_after_the_writer_stopped_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let cfg = LakeConfig { max_buffered_rows: 1, ..LakeConfig::new(&lake) };
    let mut writer = LakeWriter::new(cfg, 0).expect("writer");
    let rejects = lake.join("rejects");
    fs::remove_dir(&rejects).expect("remove");
    fs::write(&rejects, b"not a directory").expect("write");
    // Each push flushes; once the thread has failed (at the latest when the queue is full),
    // pushes report it.
    let mut result = Ok(());
    for i in 0..100 {
        result = writer.push(SinkItem::Rejects(vec![reject(i)]));
        if result.is_err() {
            break;
        }
    }
    let err = result.expect_err("the writer stops");
    assert!(matches!(err, SinkError::WriterStopped { .. }), "{err}");
    assert!(err.to_string().contains("create directory"), "{err}");
    assert!(writer.stats().last_error.is_some());
    assert!(writer.finish().is_err());
}

#[tokio::test]
async fn a_window_written_again_replaces_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let k = key("vm-1", "cpu", "cpu-total", "usage_idle");
    // A first run with two workers wrote a partial window, then died.
    let two = LakeConfig { workers: 2, ..LakeConfig::new(lake) };
    let mut w = LakeWriter::new(two.clone(), 0).expect("writer");
    w.push(window(T0, vec![(k.clone(), agg(T0, &[1.0]))])).expect("push");
    w.finish().expect("finish");
    let mut w = LakeWriter::new(two, 1).expect("writer");
    w.push(window(T0, vec![(key("vm-2", "cpu", "cpu-total", "usage_idle"), agg(T0, &[2.0]))])).expect("push");
    w.finish().expect("finish");
    // The same window computed again, by one worker: it replaces both files.
    let one = LakeConfig::new(lake);
    for _ in 0..2 {
        let mut w = LakeWriter::new(one.clone(), 0).expect("writer");
        let n = w.barrier().expect("barrier");
        w.push(window(T0, vec![(k.clone(), agg(T0, &[1.0, 3.0]))])).expect("push");
        w.push(window(T0, vec![(key("vm-2", "cpu", "cpu-total", "usage_idle"), agg(T0, &[2.0]))])).expect("push");
        let m = w.barrier().expect("barrier");
        assert!(m > n);
        let stats = w.finish().expect("finish");
        assert_eq!(stats.files, 2);
    }
    let files = files_under(lake);
    assert_eq!(files.len(), 1, "{files:?}");
    let batches = rows(lake, "SELECT vm_id, count FROM aggregates ORDER BY vm_id").await;
    assert_eq!(num_rows(&batches), 1, "the last write of the window holds only vm-2");
}

#[tokio::test]
async fn late_and_rejects_are_read_once_per_source_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    for _ in 0..2 {
        let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
        w.push(SinkItem::Late(vec![late("vm-1", T_LATE, 55.5, 7), late("vm-1", T_LATE + SEC, 56.5, 8)])).expect("push");
        w.push(SinkItem::Rejects(vec![RejectRow::new(origin(0, 41), "bad", b"{x", T0)])).expect("push");
        w.finish().expect("finish");
    }
    assert_eq!(num_rows(&rows(lake, "SELECT * FROM late").await), 2);
    assert_eq!(num_rows(&rows(lake, "SELECT * FROM rejects").await), 1);
}

// ---------------------------------------------------------------------------------------------
// The registry, health, group and ranking tables, and counter rates.

fn record(vm: &str, mcis: &str) -> AgentRecord {
    AgentRecord {
        key: format!("ns-1/mcis-1/{vm}/aws"),
        ns_id: "ns-1".into(),
        mcis_id: mcis.into(),
        vm_id: vm.into(),
        csp_type: "aws".into(),
        os_type: "linux".into(),
        ..AgentRecord::default()
    }
}

fn agent_row(time: i64, record: AgentRecord, health: &str, deleted: bool) -> AgentRow {
    AgentRow { time, record, first_seen: Some(T0), last_seen: Some(time), health: health.into(), deleted }
}

fn health_row(vm: &str, time: i64, from: &str, to: &str, reason: &str) -> HealthRow {
    HealthRow {
        time,
        ns_id: "ns-1".into(),
        mcis_id: "mcis-1".into(),
        vm_id: vm.into(),
        csp_type: "aws".into(),
        from: from.into(),
        to: to.into(),
        reason: reason.into(),
    }
}

fn group_row(start: i64, level: &str, group_id: &str, metric: &str, value: f64, vm_count: u64) -> GroupRow {
    GroupRow {
        window_start: start,
        window_end: start + 10 * SEC,
        level: level.into(),
        group_id: group_id.into(),
        metric: metric.into(),
        value,
        vm_count,
    }
}

fn rank_row(start: i64, order: &str, rank: u32, group_id: &str, value: f64) -> RankRow {
    RankRow {
        window_start: start,
        window_end: start + 10 * SEC,
        level: "mcis".into(),
        metric: "cpu_util_mean".into(),
        order: order.into(),
        rank,
        group_id: group_id.into(),
        value,
    }
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.column(column).as_string::<i32>().iter().map(|v| v.unwrap_or("NULL").to_string()))
        .collect()
}

fn floats(batches: &[RecordBatch], column: usize) -> Vec<Option<f64>> {
    batches.iter().flat_map(|b| b.column(column).as_primitive::<Float64Type>().iter().collect::<Vec<_>>()).collect()
}

fn nanos(batches: &[RecordBatch], column: usize) -> Vec<Option<i64>> {
    batches
        .iter()
        .flat_map(|b| b.column(column).as_primitive::<TimestampNanosecondType>().iter().collect::<Vec<_>>())
        .collect()
}

fn table_files(lake: &Path, table: &str) -> Vec<String> {
    let dir = lake.join(table);
    files_under(&dir).iter().map(|p| p.strip_prefix(&dir).expect("in table").display().to_string()).collect()
}

#[tokio::test]
async fn agents_health_groups_and_rankings_round_trip_through_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let mut w = LakeWriter::new(LakeConfig { job: "j".into(), ..LakeConfig::new(lake) }, 0).expect("writer");
    let full = AgentRecord {
        mechanism: Mechanism::Pull,
        public_ip: "10.0.0.1".into(),
        state: AgentState::Disable,
        vcpu: Some(4.0),
        memory_gib: Some(15.5),
        cost_per_hour: Some(0.192),
        pull_url: Some("http://10.0.0.1:8888/metrics".into()),
        ..record("vm-1", "mcis-1")
    };
    let bare =
        AgentRow { first_seen: None, last_seen: None, ..agent_row(T_LATE, record("vm-2", "mcis-1"), "unknown", false) };
    w.push(SinkItem::Agents(vec![agent_row(T0, full, "healthy", false), bare])).expect("push");
    w.push(SinkItem::Health(vec![
        health_row("vm-1", T0, "unknown", "healthy", "first data"),
        health_row("vm-2", T0 + 40 * SEC, "healthy", "unhealthy", "no data for 3 windows"),
    ]))
    .expect("push");
    w.push(SinkItem::Groups(vec![
        group_row(T0, "mcis", "ns-1/mcis-1", "cpu_util_mean", 42.5, 2),
        group_row(T0, "csp", "aws", "vcpu_total", 8.0, 2),
    ]))
    .expect("push");
    w.push(SinkItem::Rankings(vec![
        rank_row(T0, "top", 1, "ns-1/mcis-2", 90.0),
        rank_row(T0, "bottom", 1, "ns-1/mcis-1", 42.5),
    ]))
    .expect("push");
    assert_eq!(w.buffered_rows(), 4, "agents and health rows wait for a flush; windows are written at once");
    let barrier = w.barrier().expect("barrier");
    assert_eq!(w.buffered_rows(), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.durable() < barrier {
        assert!(Instant::now() < deadline, "barrier {barrier} never became durable");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = w.finish().expect("finish");
    // agents (hours 22 and 23), health (23 and the next day's 00), groups, rankings
    assert_eq!((stats.files, stats.rows), (6, 8), "{stats:?}");

    let ms = T0 / 1_000_000;
    let window_file = format!("date=2024-03-10/hour=23/part-{ms}-j-w000of001.parquet");
    assert_eq!(table_files(lake, "groups"), table_files(lake, "rankings"));
    assert_eq!(table_files(lake, "rankings"), [window_file]);
    let agents = table_files(lake, "agents_history");
    assert_eq!(agents.len(), 2);
    assert!(
        agents[0].starts_with("date=2024-03-10/hour=22/part-w000-") && agents[1].contains("hour=23/"),
        "{agents:?}"
    );
    let health = table_files(lake, "agent_health");
    assert_eq!(health.len(), 2, "{health:?}");
    assert!(health[0].starts_with("date=2024-03-10/hour=23/part-w000-"), "{health:?}");
    assert!(health[1].starts_with("date=2024-03-11/hour=00/part-w000-"), "{health:?}");

    // agents_history: every column, nulls included.
    let b = rows(
        lake,
        "SELECT time, key, ns_id, mcis_id, vm_id, csp_type, os_type, mechanism, public_ip, state, vcpu, memory_gib, \
         cost_per_hour, pull_url, first_seen, last_seen, health, deleted, date, hour \
         FROM agents_history ORDER BY time DESC",
    )
    .await;
    assert_eq!(num_rows(&b), 2);
    assert_eq!(nanos(&b, 0), [Some(T0), Some(T_LATE)]);
    assert_eq!(strings(&b, 1), ["ns-1/mcis-1/vm-1/aws", "ns-1/mcis-1/vm-2/aws"]);
    assert_eq!(strings(&b, 4), ["vm-1", "vm-2"]);
    assert_eq!(strings(&b, 6), ["linux", "linux"]);
    assert_eq!(strings(&b, 7), ["pull", "push"]);
    assert_eq!(strings(&b, 8), ["10.0.0.1", ""]);
    assert_eq!(strings(&b, 9), ["disable", "enable"]);
    assert_eq!(floats(&b, 10), [Some(4.0), None]);
    assert_eq!(floats(&b, 11), [Some(15.5), None]);
    assert_eq!(floats(&b, 12), [Some(0.192), None]);
    assert_eq!(strings(&b, 13), ["http://10.0.0.1:8888/metrics", "NULL"]);
    assert_eq!(nanos(&b, 14), [Some(T0), None]);
    assert_eq!(nanos(&b, 15), [Some(T0), None]);
    assert_eq!(strings(&b, 16), ["healthy", "unknown"]);
    assert_eq!(b[0].column(17).as_boolean().iter().collect::<Vec<_>>(), [Some(false), Some(false)]);
    assert_eq!((strings(&b, 18), strings(&b, 19)), (vec!["2024-03-10".to_string(); 2], vec!["23".into(), "22".into()]));

    // agent_health
    let b = rows(
        lake,
        "SELECT time, ns_id, mcis_id, vm_id, csp_type, \"from\", \"to\", reason FROM agent_health ORDER BY time",
    )
    .await;
    assert_eq!(num_rows(&b), 2);
    assert_eq!(nanos(&b, 0), [Some(T0), Some(T0 + 40 * SEC)]);
    assert_eq!(strings(&b, 3), ["vm-1", "vm-2"]);
    assert_eq!(strings(&b, 4), ["aws", "aws"]);
    assert_eq!(strings(&b, 5), ["unknown", "healthy"]);
    assert_eq!(strings(&b, 6), ["healthy", "unhealthy"]);
    assert_eq!(strings(&b, 7), ["first data", "no data for 3 windows"]);

    // groups: window bounds in ms, like aggregates, so the two join on window_start.
    let b = rows(
        lake,
        "SELECT g.window_start, g.window_end, level, group_id, metric, value, vm_count, g.date, g.hour \
         FROM groups g ORDER BY metric",
    )
    .await;
    assert_eq!(num_rows(&b), 2);
    assert_eq!(b[0].column(0).as_primitive::<TimestampMillisecondType>().value(0), ms);
    assert_eq!(b[0].column(1).as_primitive::<TimestampMillisecondType>().value(0), ms + 10_000);
    assert_eq!(strings(&b, 2), ["mcis", "csp"]);
    assert_eq!(strings(&b, 3), ["ns-1/mcis-1", "aws"]);
    assert_eq!(strings(&b, 4), ["cpu_util_mean", "vcpu_total"]);
    assert_eq!(floats(&b, 5), [Some(42.5), Some(8.0)]);
    assert_eq!(b[0].column(6).as_primitive::<UInt64Type>().values(), &[2, 2]);
    assert_eq!((strings(&b, 7)[0].as_str(), strings(&b, 8)[0].as_str()), ("2024-03-10", "23"));
    let b = rows(lake, "SELECT count(*) FROM groups WHERE window_start = TIMESTAMP '2024-03-10T23:59:50Z'").await;
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 2);

    // rankings
    let b = rows(
        lake,
        "SELECT window_start, window_end, level, metric, \"order\", rank, group_id, value \
         FROM rankings ORDER BY \"order\" DESC",
    )
    .await;
    assert_eq!(num_rows(&b), 2);
    assert_eq!(b[0].column(0).as_primitive::<TimestampMillisecondType>().value(1), ms);
    assert_eq!(strings(&b, 2), ["mcis", "mcis"]);
    assert_eq!(strings(&b, 3), ["cpu_util_mean", "cpu_util_mean"]);
    assert_eq!(strings(&b, 4), ["top", "bottom"]);
    assert_eq!(b[0].column(5).as_primitive::<UInt32Type>().values(), &[1, 1]);
    assert_eq!(strings(&b, 6), ["ns-1/mcis-2", "ns-1/mcis-1"]);
    assert_eq!(floats(&b, 7), [Some(90.0), Some(42.5)]);

    // Every table and view is listed.
    let b = rows(
        lake,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await;
    let mut expected: Vec<&str> = crate::TABLES.iter().chain(crate::VIEWS).copied().collect();
    expected.sort();
    assert_eq!(strings(&b, 0), expected);
}

#[tokio::test]
async fn agents_and_health_are_read_once_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let t1 = T0 + 60 * SEC;
    let t2 = T0 + 120 * SEC;
    let moved = record("vm-1", "mcis-2");
    // The same rows written by two runs (a job resumed from a checkpoint writes them again).
    for _ in 0..2 {
        let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
        w.push(SinkItem::Agents(vec![
            agent_row(T0, record("vm-1", "mcis-1"), "unknown", false),
            agent_row(T0, record("vm-1", "mcis-1"), "healthy", false),
            agent_row(t1, moved.clone(), "healthy", false),
            agent_row(T0, record("vm-2", "mcis-1"), "healthy", false),
            // vm-2 is removed at t1; vm-3 is removed and recorded at the same time: the removal wins.
            agent_row(t1, record("vm-2", "mcis-1"), "healthy", true),
            agent_row(t2, record("vm-3", "mcis-1"), "healthy", false),
            agent_row(t2, record("vm-3", "mcis-1"), "healthy", true),
        ]))
        .expect("push");
        w.push(SinkItem::Health(vec![
            health_row("vm-1", T0, "unknown", "healthy", "first data"),
            health_row("vm-1", t1, "healthy", "unhealthy", "no data for 3 windows"),
        ]))
        .expect("push");
        w.finish().expect("finish");
    }
    assert_eq!(num_rows(&rows(lake, "SELECT * FROM agents_history").await), 7);
    assert_eq!(num_rows(&rows(lake, "SELECT * FROM agent_health").await), 2);

    let b = rows(lake, "SELECT key, mcis_id, time, health, deleted, date, hour FROM agents ORDER BY key").await;
    assert_eq!(strings(&b, 0), ["ns-1/mcis-1/vm-1/aws"], "deleted keys are hidden");
    assert_eq!(strings(&b, 1), ["mcis-2"], "the latest version");
    assert_eq!(nanos(&b, 2), [Some(t1)]);
    assert_eq!(strings(&b, 3), ["healthy"]);

    // A key registered again after its removal is back.
    let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
    w.push(SinkItem::Agents(vec![agent_row(t2, record("vm-2", "mcis-1"), "unknown", false)])).expect("push");
    w.finish().expect("finish");
    let b = rows(lake, "SELECT key, health FROM agents ORDER BY key").await;
    assert_eq!(strings(&b, 0), ["ns-1/mcis-1/vm-1/aws", "ns-1/mcis-1/vm-2/aws"]);
    assert_eq!(strings(&b, 1), ["healthy", "unknown"]);
}

#[tokio::test]
async fn aggregates_have_a_rate_for_counters_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let cfg = LakeConfig { counters: Counters::new(["net", "nginx.requests"]), ..LakeConfig::new(lake) };
    let mut w = LakeWriter::new(cfg, 0).expect("writer");
    w.push(window(
        T0,
        vec![
            // 100 → 300 over 4 s.
            (key("vm-1", "net", "eth0", "bytes_recv"), agg(T0, &[100.0, 200.0, 300.0])),
            // Reset: counted from zero, 50 over 2 s.
            (key("vm-1", "net", "eth1", "bytes_recv"), agg(T0, &[1000.0, 50.0])),
            // One timestamp: no rate.
            (key("vm-1", "net", "eth2", "bytes_recv"), agg(T0, &[7.0])),
            (key("vm-1", "nginx", "", "requests"), agg(T0, &[10.0, 16.0])),
            (key("vm-1", "nginx", "", "active"), agg(T0, &[10.0, 16.0])),
            (key("vm-1", "cpu", "cpu-total", "usage_idle"), agg(T0, &[90.0, 80.0])),
        ],
    ))
    .expect("push");
    w.finish().expect("finish");
    let b =
        rows(lake, "SELECT measurement, instance, field, rate FROM aggregates ORDER BY measurement, instance, field")
            .await;
    assert_eq!(strings(&b, 0), ["cpu", "net", "net", "net", "nginx", "nginx"]);
    assert_eq!(strings(&b, 2), ["usage_idle", "bytes_recv", "bytes_recv", "bytes_recv", "active", "requests"]);
    assert_eq!(floats(&b, 3), [None, Some(50.0), Some(25.0), None, None, Some(3.0)]);
    let b = rows(lake, "SELECT count(rate), count(*) FROM aggregates").await;
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 3);
}

#[tokio::test]
async fn aggregate_files_without_a_rate_column_read_as_null() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
    w.push(window(T0, vec![(key("vm-1", "net", "eth0", "bytes_recv"), agg(T0, &[1.0, 3.0]))])).expect("push");
    w.finish().expect("finish");
    // Rewrite the file as written before `rate` existed.
    let file = files_under(&lake.join("aggregates")).pop().expect("a file");
    let batch = {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&file).expect("open"))
            .expect("parquet")
            .build()
            .expect("reader");
        let batch = reader.map(|b| b.expect("batch")).next().expect("a batch");
        let without_rate: Vec<usize> = (0..batch.num_columns() - 1).collect();
        batch.project(&without_rate).expect("project")
    };
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(fs::File::create(&file).expect("create"), batch.schema(), None)
            .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    let b = rows(lake, "SELECT sum, rate FROM aggregates").await;
    assert_eq!(floats(&b, 0), [Some(4.0)]);
    assert_eq!(floats(&b, 1), [None]);
}

#[tokio::test]
async fn a_groups_window_written_again_replaces_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let t1 = T0 + 10 * SEC;
    // A first run with two workers wrote two windows, then died.
    let two = LakeConfig { workers: 2, ..LakeConfig::new(lake) };
    for worker in 0..2 {
        let mut w = LakeWriter::new(two.clone(), worker).expect("writer");
        let group = format!("mcis-{worker}");
        w.push(SinkItem::Groups(vec![group_row(T0, "mcis", &group, "cpu_util_mean", 1.0, 1)])).expect("push");
        w.push(SinkItem::Rankings(vec![rank_row(T0, "top", 1, &group, 1.0)])).expect("push");
        w.push(SinkItem::Groups(vec![group_row(t1, "mcis", &group, "cpu_util_mean", 2.0, 1)])).expect("push");
        w.finish().expect("finish");
    }
    assert_eq!(table_files(lake, "groups").len(), 4);
    // Window T0 computed again by one worker, twice: it replaces both workers' files of T0, and
    // within the run, its second version replaces the first.
    for _ in 0..2 {
        let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
        w.push(SinkItem::Groups(vec![group_row(T0, "mcis", "mcis-0", "cpu_util_mean", 5.0, 3)])).expect("push");
        w.push(SinkItem::Groups(vec![
            group_row(T0, "mcis", "mcis-0", "cpu_util_mean", 10.0, 3),
            group_row(T0, "mcis", "mcis-1", "cpu_util_mean", 20.0, 1),
        ]))
        .expect("push");
        w.push(SinkItem::Rankings(vec![
            rank_row(T0, "top", 1, "mcis-1", 20.0),
            rank_row(T0, "top", 2, "mcis-0", 10.0),
        ]))
        .expect("push");
        let stats = w.finish().expect("finish");
        assert_eq!(stats.files, 3);
    }
    let ms = T0 / 1_000_000;
    let groups = table_files(lake, "groups");
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert!(groups.contains(&format!("date=2024-03-10/hour=23/part-{ms}-job-w000of001.parquet")), "{groups:?}");
    assert_eq!(table_files(lake, "rankings"), [format!("date=2024-03-10/hour=23/part-{ms}-job-w000of001.parquet")]);
    let b = rows(
        lake,
        "SELECT group_id, value, vm_count FROM groups \
         WHERE window_start = TIMESTAMP '2024-03-10T23:59:50Z' ORDER BY group_id",
    )
    .await;
    assert_eq!(strings(&b, 0), ["mcis-0", "mcis-1"]);
    assert_eq!(floats(&b, 1), [Some(10.0), Some(20.0)]);
    assert_eq!(b[0].column(2).as_primitive::<UInt64Type>().values(), &[3, 1]);
    // The other window keeps the first run's files.
    let b = rows(lake, "SELECT count(*) FROM groups WHERE window_start > TIMESTAMP '2024-03-10T23:59:50Z'").await;
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 2);
    let b = rows(lake, "SELECT rank, group_id FROM rankings ORDER BY rank").await;
    assert_eq!(strings(&b, 1), ["mcis-1", "mcis-0"]);
}

#[tokio::test]
async fn one_groups_item_with_two_windows_writes_two_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let t1 = T0 + 10 * SEC;
    let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
    w.push(SinkItem::Groups(vec![
        group_row(T0, "ns", "ns-1", "processes", 1.0, 1),
        group_row(t1, "ns", "ns-1", "processes", 2.0, 1),
        group_row(T0, "os", "linux", "processes", 3.0, 1),
    ]))
    .expect("push");
    let stats = w.finish().expect("finish");
    assert_eq!((stats.files, stats.rows), (2, 3));
    let files = table_files(lake, "groups");
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("date=2024-03-10/hour=23/") && files[1].starts_with("date=2024-03-11/hour=00/"));
    let b = rows(lake, "SELECT value FROM groups ORDER BY value").await;
    assert_eq!(floats(&b, 0), [Some(1.0), Some(2.0), Some(3.0)]);
}

#[test]
fn a_resuming_job_reads_each_agents_last_row_and_last_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
    w.push(SinkItem::Agents(vec![
        agent_row(T0, record("vm-1", "mcis-1"), "healthy", false),
        agent_row(T0 + 60 * SEC, record("vm-1", "mcis-2"), "unhealthy", false),
        agent_row(T0, record("vm-2", "mcis-1"), "healthy", false),
        agent_row(T0 + 30 * SEC, record("vm-2", "mcis-1"), "healthy", true),
    ]))
    .expect("push");
    // vm-1 reports after its last row before the cut: its last window comes from `aggregates`.
    for k in 1..6 {
        let start = T0 + k * 10 * SEC;
        w.push(window(start, vec![(key("vm-1", "cpu", "cpu-total", "usage_idle"), agg(start, &[1.0]))])).expect("push");
    }
    w.finish().expect("finish");

    let rows = crate::sql::agents_before(lake, T0 + 40 * SEC, 600 * SEC).expect("read");
    assert_eq!(rows.len(), 2);
    let vm1 = rows.iter().find(|r| r.record.vm_id == "vm-1").expect("vm-1");
    assert_eq!((vm1.time, vm1.record.mcis_id.as_str(), vm1.health.as_str()), (T0, "mcis-1", "healthy"));
    assert_eq!((vm1.first_seen, vm1.last_seen), (Some(T0), Some(T0 + 30 * SEC)));
    let vm2 = rows.iter().find(|r| r.record.vm_id == "vm-2").expect("vm-2");
    assert!(vm2.deleted && vm2.time == T0 + 30 * SEC);
}

// ---------------------------------------------------------------------------------------------
// The alarm log: events as raised, their delivery outcomes, and the view `alarm_events`.

fn alarm(id: &str, time: i64, rule: &str, target: &str, previous: &str, level: &str, value: Option<f64>) -> AlarmEvent {
    AlarmEvent {
        id: id.into(),
        time,
        rule: rule.into(),
        target: target.into(),
        level: level.into(),
        previous_level: previous.into(),
        value,
        threshold: value.map(|_| 90.0),
        message: format!("{rule} on {target}: {level}"),
        handlers: vec!["ops-slack".into(), "pager".into()],
    }
}

fn delivery(event: &AlarmEvent, error: Option<&str>) -> AlarmDelivery {
    AlarmDelivery { event: event.clone(), delivered: error.is_none(), error: error.map(str::to_string) }
}

fn bools(batches: &[RecordBatch], column: usize) -> Vec<Option<bool>> {
    batches.iter().flat_map(|b| b.column(column).as_boolean().iter().collect::<Vec<_>>()).collect()
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// Writes `events` through a LakeWriter of its own (one run of a job).
fn write_alarms(lake: &Path, events: &[AlarmEvent]) {
    let mut w = LakeWriter::new(LakeConfig::new(lake), 0).expect("writer");
    w.push(SinkItem::Alarms(events.to_vec())).expect("push");
    assert_eq!(w.buffered_rows(), events.len(), "alarm events wait for a flush");
    let stats = w.finish().expect("finish");
    assert_eq!(stats.rows, events.len() as u64);
}

#[tokio::test]
async fn alarm_events_round_trip_through_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let started = Utc::now().timestamp_nanos_opt().expect("now");
    let events = [
        alarm("a1", T0, "cpu high", "ns-1/mcis-1/vm-1", "OK", "WARNING", Some(91.5)),
        // The next day: a file in another partition.
        AlarmEvent { handlers: Vec::new(), ..alarm("a2", T0 + 20 * SEC, "cpu high", "vm, 2", "OK", "NODATA", None) },
    ];
    write_alarms(lake, &events);
    let files = table_files(lake, "alarm_log");
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("date=2024-03-10/hour=23/part-w000-"), "{files:?}");
    assert!(files[1].starts_with("date=2024-03-11/hour=00/part-w000-"), "{files:?}");

    // Every column of the raw table, exactly; delivery is pending.
    let b = rows(
        lake,
        "SELECT id, time, rule, target, level, previous_level, value, threshold, message, handlers, delivered, \
         delivery_error, recorded_at, date, hour, job FROM alarm_log ORDER BY time",
    )
    .await;
    assert_eq!(num_rows(&b), 2);
    assert_eq!(strings(&b, 0), ["a1", "a2"]);
    assert_eq!(nanos(&b, 1), [Some(T0), Some(T0 + 20 * SEC)]);
    assert_eq!(strings(&b, 2), ["cpu high", "cpu high"]);
    assert_eq!(strings(&b, 3), ["ns-1/mcis-1/vm-1", "vm, 2"]);
    assert_eq!(strings(&b, 4), ["WARNING", "NODATA"]);
    assert_eq!(strings(&b, 5), ["OK", "OK"]);
    assert_eq!(floats(&b, 6), [Some(91.5), None]);
    assert_eq!(floats(&b, 7), [Some(90.0), None]);
    assert_eq!(strings(&b, 8), ["cpu high on ns-1/mcis-1/vm-1: WARNING", "cpu high on vm, 2: NODATA"]);
    assert_eq!(strings(&b, 9), ["ops-slack,pager", ""]);
    assert_eq!(bools(&b, 10), [None, None]);
    assert_eq!(strings(&b, 11), ["NULL", "NULL"]);
    let recorded = nanos(&b, 12);
    let finished = Utc::now().timestamp_nanos_opt().expect("now");
    assert!(recorded.iter().all(|t| t.is_some_and(|t| (started..=finished).contains(&t))), "{recorded:?}");
    assert_eq!(
        (strings(&b, 13), strings(&b, 14)),
        (vec!["2024-03-10".into(), "2024-03-11".into()], vec!["23".into(), "00".into()])
    );
    assert_eq!(strings(&b, 15), ["job", "job"], "the writer's job");

    // The view's columns, in order, and its rows.
    let b = rows(lake, "SELECT * FROM alarm_events ORDER BY id").await;
    let names: Vec<String> = b[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(
        names.join(","),
        "id,time,rule,target,level,previous_level,value,threshold,message,delivered,delivery_error,handlers,recorded_at,job"
    );
    assert_eq!(strings(&b, 0), ["a1", "a2"]);
    assert_eq!(nanos(&b, 1), [Some(T0), Some(T0 + 20 * SEC)]);
    assert_eq!(floats(&b, 6), [Some(91.5), None]);
    assert_eq!(bools(&b, 9), [None, None]);
}

#[tokio::test]
async fn a_delivery_outcome_supersedes_the_pending_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let a1 = alarm("a1", T0, "cpu high", "vm-1", "OK", "CRITICAL", Some(97.0));
    let a2 = alarm("a2", T0 + 20 * SEC, "cpu high", "vm-2", "OK", "WARNING", Some(91.0));
    let a3 = alarm("a3", T0 + 30 * SEC, "cpu high", "vm-3", "OK", "WARNING", Some(92.0));
    // a3's outcome is recorded before its pending row is written: the outcome still wins.
    crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a3, None)]).expect("append");
    write_alarms(lake, &[a1.clone(), a2.clone(), a3.clone()]);
    // One call with events of two hours: a file in each partition.
    crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a1, Some("pager: HTTP 503")), delivery(&a2, None)])
        .expect("append");
    // a1 delivered on a later try.
    crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a1, None)]).expect("append");
    crate::lake::append_alarm_deliveries(lake, "job", &[]).expect("nothing to append");

    let files = table_files(lake, "alarm_log");
    let deliveries: Vec<&String> = files.iter().filter(|f| f.contains("/part-delivery-")).collect();
    assert_eq!((files.len(), deliveries.len()), (6, 4), "{files:?}");
    let pid = format!("/part-delivery-p{}-", std::process::id());
    assert!(deliveries.iter().all(|f| f.contains(&pid) && f.ends_with(".parquet")), "{files:?}");
    assert!(files.iter().all(|f| !f.contains("/.")), "no temporary files left: {files:?}");
    assert!(deliveries[0].starts_with("date=2024-03-10/hour=23/"), "{files:?}");

    // The raw table keeps every row: pending, failed and delivered.
    let b = rows(
        lake,
        "SELECT id, delivered, delivery_error FROM alarm_log \
         ORDER BY id, delivered IS NULL DESC, recorded_at",
    )
    .await;
    assert_eq!(strings(&b, 0), ["a1", "a1", "a1", "a2", "a2", "a3", "a3"]);
    assert_eq!(bools(&b, 1), [None, Some(false), Some(true), None, Some(true), None, Some(true)]);
    assert_eq!(strings(&b, 2), ["NULL", "pager: HTTP 503", "NULL", "NULL", "NULL", "NULL", "NULL"]);

    // The view: one row per event, with its last outcome.
    let b = rows(lake, "SELECT id, level, delivered, delivery_error, handlers FROM alarm_events ORDER BY id").await;
    assert_eq!(strings(&b, 0), ["a1", "a2", "a3"]);
    assert_eq!(strings(&b, 1), ["CRITICAL", "WARNING", "WARNING"]);
    assert_eq!(bools(&b, 2), [Some(true), Some(true), Some(true)]);
    assert_eq!(strings(&b, 3), ["NULL", "NULL", "NULL"]);
    assert_eq!(strings(&b, 4), ["ops-slack,pager"; 3]);

    // Undelivered events are one query away.
    let b = rows(lake, "SELECT count(*) FROM alarm_events WHERE delivered IS NOT TRUE").await;
    assert_eq!(count(&b), 0);
}

#[tokio::test]
async fn replayed_alarm_events_collapse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let a1 = alarm("a1", T0, "cpu high", "vm-1", "OK", "CRITICAL", Some(97.0));
    let a2 = alarm("a2", T0 + 5 * SEC, "mem high", "vm-1", "OK", "WARNING", Some(91.0));
    // A job resumed from a checkpoint raises the same events again; a2 was delivered in between.
    write_alarms(lake, &[a1.clone(), a2.clone()]);
    crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a2, Some("ops-slack: timed out"))]).expect("append");
    write_alarms(lake, &[a1.clone(), a2.clone()]);
    // The replayed pending row, recorded last, does not hide a2's outcome.
    let view = "SELECT id, delivered, delivery_error FROM alarm_events ORDER BY id";
    for appended in [5, 6] {
        assert_eq!(count(&rows(lake, "SELECT count(*) FROM alarm_log").await), appended);
        let b = rows(lake, view).await;
        assert_eq!(strings(&b, 0), ["a1", "a2"]);
        assert_eq!(bools(&b, 1), [None, Some(false)]);
        assert_eq!(strings(&b, 2), ["NULL", "ops-slack: timed out"]);
        // Then a2 is delivered again, and fails again the same way.
        crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a2, Some("ops-slack: timed out"))])
            .expect("append");
    }
    assert_eq!(count(&rows(lake, "SELECT count(DISTINCT id) FROM alarm_log").await), 2);
}

#[tokio::test]
async fn alarm_events_are_listed_by_level_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    let events = [
        alarm("a1", T0 - 60 * SEC, "cpu high", "vm-1", "WARNING", "CRITICAL", Some(97.0)),
        alarm("a2", T0, "cpu high", "vm-2", "WARNING", "CRITICAL", Some(98.0)),
        alarm("a3", T0 + 10 * SEC, "cpu high", "vm-2", "CRITICAL", "OK", Some(40.0)),
        alarm("a4", T0 + 20 * SEC, "cpu high", "vm-3", "WARNING", "CRITICAL", Some(99.0)),
        alarm("a5", T0 + 40 * SEC, "cpu high", "vm-3", "CRITICAL", "WARNING", Some(92.0)),
    ];
    write_alarms(lake, &events);
    // Written twice: the listing does not repeat them.
    write_alarms(lake, &events[1..3]);
    let b = rows(
        lake,
        "SELECT id, target, value FROM alarm_events \
         WHERE level = 'CRITICAL' AND time >= TIMESTAMP '2024-03-10T23:59:50Z' \
         AND time < TIMESTAMP '2024-03-11T00:00:30Z' ORDER BY time",
    )
    .await;
    assert_eq!(strings(&b, 0), ["a2", "a4"]);
    assert_eq!(strings(&b, 1), ["vm-2", "vm-3"]);
    assert_eq!(floats(&b, 2), [Some(98.0), Some(99.0)]);
    // The partition columns prune the raw table by date.
    let b = rows(lake, "SELECT count(*) FROM alarm_log WHERE date = '2024-03-11' AND level = 'CRITICAL'").await;
    assert_eq!(count(&b), 1);
    let b = rows(lake, "SELECT level, count(*) AS n FROM alarm_events GROUP BY level ORDER BY level").await;
    assert_eq!(strings(&b, 0), ["CRITICAL", "OK", "WARNING"]);
    assert_eq!(b[0].column(1).as_primitive::<Int64Type>().values(), &[3, 1, 1]);
}

#[test]
fn a_resuming_job_reads_each_alarms_last_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    assert!(crate::sql::alarm_levels_before(&lake.join("no-lake-yet"), "job", T0).expect("read").is_empty());
    // A started lake without alarms.
    LakeWriter::new(LakeConfig::new(lake), 0).expect("writer").finish().expect("finish");
    assert!(crate::sql::alarm_levels_before(lake, "job", T0).expect("read").is_empty());

    write_alarms(
        lake,
        &[
            alarm("a1", T0 - 20 * SEC, "cpu high", "vm-1", "OK", "WARNING", Some(91.0)),
            alarm("a2", T0 - 10 * SEC, "cpu high", "vm-1", "WARNING", "CRITICAL", Some(97.0)),
            // At the cut: not before it.
            alarm("a3", T0, "cpu high", "vm-1", "CRITICAL", "OK", Some(10.0)),
            alarm("a4", T0 - 30 * SEC, "cpu high", "vm-2", "OK", "NODATA", None),
            alarm("a5", T0 - 30 * SEC, "mem high", "vm-1", "OK", "WARNING", Some(91.0)),
            alarm("a6", T0 + 10 * SEC, "mem high", "vm-2", "OK", "WARNING", Some(91.0)),
        ],
    );
    // Two events of one alarm at the same time (a rule changed between runs): the later recorded.
    write_alarms(lake, &[alarm("a7", T0 - 30 * SEC, "mem high", "vm-1", "OK", "CRITICAL", Some(99.0))]);
    // Delivery rows do not change levels.
    let a4 = alarm("a4", T0 - 30 * SEC, "cpu high", "vm-2", "OK", "NODATA", None);
    crate::lake::append_alarm_deliveries(lake, "job", &[delivery(&a4, None)]).expect("append");

    let levels = crate::sql::alarm_levels_before(lake, "job", T0).expect("read");
    let expected = [
        ("cpu high", "vm-1", "CRITICAL", T0 - 10 * SEC),
        ("cpu high", "vm-2", "NODATA", T0 - 30 * SEC),
        ("mem high", "vm-1", "CRITICAL", T0 - 30 * SEC),
    ]
    .map(|(rule, target, level, time)| (rule.to_string(), target.to_string(), level.to_string(), time));
    assert_eq!(levels, expected);
    let later = crate::sql::alarm_levels_before(lake, "job", T0 + 11 * SEC).expect("read");
    assert_eq!(later.len(), 4);
    assert_eq!(later[0], ("cpu high".to_string(), "vm-1".to_string(), "OK".to_string(), T0));

    // Another job sharing the lake, with the same rule and target: each job reads its own levels.
    let other = LakeConfig { job: "other".into(), ..LakeConfig::new(lake) };
    let mut w = LakeWriter::new(other, 0).expect("writer");
    let theirs = alarm("b1", T0 - 5 * SEC, "cpu high", "vm-1", "CRITICAL", "WARNING", Some(93.0));
    w.push(SinkItem::Alarms(vec![theirs.clone()])).expect("push");
    w.finish().expect("finish");
    crate::lake::append_alarm_deliveries(lake, "other", &[delivery(&theirs, None)]).expect("append");
    assert_eq!(crate::sql::alarm_levels_before(lake, "job", T0).expect("read"), expected, "not another job's");
    let theirs = crate::sql::alarm_levels_before(lake, "other", T0).expect("read");
    assert_eq!(theirs, [("cpu high".to_string(), "vm-1".to_string(), "WARNING".to_string(), T0 - 5 * SEC)]);
}

#[test]
fn alarm_log_files_from_before_the_job_column_count_for_every_job() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path();
    write_alarms(lake, &[alarm("a1", T0 - 20 * SEC, "cpu high", "vm-1", "OK", "WARNING", Some(91.0))]);
    // Rewrite the file as an older version wrote it: without the last column, `job`.
    let files = table_files(lake, "alarm_log");
    assert_eq!(files.len(), 1);
    let path = lake.join("alarm_log").join(&files[0]);
    let batch = {
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).expect("open"))
            .expect("parquet")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.schema().fields().last().map(|f| f.name().as_str()), Some("job"));
        b.project(&(0..b.num_columns() - 1).collect::<Vec<_>>()).expect("project")
    };
    let mut writer = ArrowWriter::try_new(fs::File::create(&path).expect("create"), batch.schema(), None).expect("w");
    writer.write(&batch).expect("write");
    writer.close().expect("close");

    // Its rows read with a null job, and restore the level of any job.
    for job in ["job", "another"] {
        let levels = crate::sql::alarm_levels_before(lake, job, T0).expect("read");
        assert_eq!(levels, [("cpu high".to_string(), "vm-1".to_string(), "WARNING".to_string(), T0 - 20 * SEC)]);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let b = runtime.block_on(rows(lake, "SELECT id, job FROM alarm_events"));
    assert_eq!((strings(&b, 0), strings(&b, 1)), (vec!["a1".to_string()], vec!["NULL".to_string()]));
}

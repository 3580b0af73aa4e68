//! Lake round trips: rows written by [`LakeWriter`]s come back, exactly, through [`query`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{
    Float64Type, Int32Type, Int64Type, TimestampMillisecondType, TimestampNanosecondType, UInt64Type,
};
use operators::aggregate::Agg;
use operators::model::{AgentTags, LateRow, Origin, RejectRow, SeriesKey, SinkItem, WindowBatch};

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
    // No lake at all: every table is registered empty, with its partition columns.
    let missing = dir.path().join("no-lake-yet");
    for table in crate::TABLES {
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

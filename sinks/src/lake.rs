//! The Parquet lake: window aggregates, late values and rejects as Hive-partitioned Parquet files.
//!
//! Each timely worker owns one [`LakeWriter`]. [`LakeWriter::push`] appends a [`SinkItem`]'s rows
//! to per-table Arrow column builders (no per-row allocation beyond the builders). A flush — when a
//! table reaches [`LakeConfig::max_buffered_rows`], when [`LakeWriter::poll`] sees that
//! [`LakeConfig::flush_interval`] has passed, or on [`LakeWriter::flush`] — turns the builders into
//! a record batch and hands it to the writer's own thread through a bounded channel: a slow disk
//! blocks the worker instead of growing memory without limit.
//!
//! Window aggregates are written at once, one file per window and worker, under a name that
//! depends only on the window and the worker, so a window computed again (after a restart) replaces
//! its file instead of adding a second one:
//!
//! ```text
//! <lake>/aggregates/date=YYYY-MM-DD/hour=HH/part-{window_start_ms}-{job}-w{worker:03}of{workers:03}.parquet
//! ```
//!
//! (`job` tells apart jobs that share a lake: see [`LakeConfig::job`].)
//!
//! Late values and rejects are buffered and split by partition hour, one file per flush:
//!
//! ```text
//! <lake>/<table>/date=YYYY-MM-DD/hour=HH/part-w{worker:03}-{run}-{first_ms}-{seq:06}.parquet
//! ```
//!
//! where `run` is the writer's start time (ms) and `first_ms` the earliest partition time in the
//! file, so names never collide between workers, flushes or runs (SQL reads these two tables
//! without repeats of one source record, see [`crate::sql`]). A file is written under a hidden
//! temporary name that does not end in `.parquet` (`.<name>.tmp`), synced, then renamed: a reader
//! listing `*.parquet` never sees half a file.
//!
//! Files are synced in groups: [`LakeWriter::barrier`] flushes everything and returns a sequence
//! number; once [`LakeWriter::durable`] reaches it, every file written before it is synced, with
//! its directory. [`LakeWriter::finish`] syncs what remains.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    TimestampNanosecondBuilder, UInt32Array, UInt64Builder,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use operators::aggregate::Agg;
use operators::model::{AgentTags, LateRow, Origin, RejectRow, SeriesKey, SinkItem, WindowBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::SinkError;
use crate::tables::Table;

/// Default of [`LakeConfig::flush_interval`].
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Default of [`LakeConfig::max_buffered_rows`].
pub const DEFAULT_MAX_BUFFERED_ROWS: usize = 500_000;
/// How many flushed batches may wait for the writer thread before [`LakeWriter`] blocks.
const CHANNEL_CAPACITY: usize = 4;

const NANOS_PER_MILLI: i64 = 1_000_000;
const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

/// Where and how often a [`LakeWriter`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LakeConfig {
    /// The lake's root directory; each table is a directory below it.
    pub path: PathBuf,
    /// Flush everything buffered at least this often (checked by [`LakeWriter::poll`]). Default 10 s.
    pub flush_interval: Duration,
    /// Flush a table as soon as this many of its rows are buffered. Default 500 000.
    pub max_buffered_rows: usize,
    /// How many workers write window files (part of their names). Default 1.
    pub workers: usize,
    /// Names the job in window files, so that jobs sharing a lake keep their own files while a
    /// job run again replaces its own. Default `job`.
    pub job: String,
}

impl LakeConfig {
    /// A lake at `path` with the default flush interval and buffer size.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LakeConfig {
            path: path.into(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_buffered_rows: DEFAULT_MAX_BUFFERED_ROWS,
            workers: 1,
            job: "job".to_string(),
        }
    }
}

impl Default for LakeConfig {
    /// A lake in `./lake` with the default flush interval and buffer size.
    fn default() -> Self {
        LakeConfig::new("lake")
    }
}

/// What a [`LakeWriter`] has written so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LakeStats {
    /// Parquet files written (renamed into place).
    pub files: u64,
    /// Rows in those files.
    pub rows: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// The error that stopped the writer thread, if any.
    pub last_error: Option<String>,
}

/// Counters shared between a [`LakeWriter`] and its thread.
#[derive(Default)]
struct Shared {
    files: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    /// The last barrier the writer thread passed.
    durable: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn stats(&self) -> LakeStats {
        LakeStats {
            files: self.files.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or_else(|p| p.into_inner().clone()),
        }
    }

    fn set_error(&self, error: &SinkError) {
        let mut slot = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(error.to_string());
    }
}

/// One worker's writer into the Parquet lake (see the [module docs](self)).
///
/// Call [`LakeWriter::finish`] at the end to write what is buffered and learn whether every write
/// succeeded; dropping the writer without it still writes the buffered rows but loses errors.
pub struct LakeWriter {
    cfg: LakeConfig,
    aggregates: AggregatesEncoder,
    late: LateEncoder,
    rejects: RejectsEncoder,
    last_flush: Instant,
    tx: Option<SyncSender<ToWriter>>,
    thread: Option<JoinHandle<Result<(), SinkError>>>,
    shared: Arc<Shared>,
    barriers: u64,
}

impl LakeWriter {
    /// Creates the lake's table directories and starts the writer thread of worker `worker`.
    pub fn new(cfg: LakeConfig, worker: usize) -> Result<Self, SinkError> {
        for table in Table::ALL {
            let dir = cfg.path.join(table.name());
            fs::create_dir_all(&dir).map_err(|e| SinkError::io("create directory", dir, e))?;
        }
        let run_ms = Utc::now().timestamp_millis();
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let files = FileWriter {
            lake: cfg.path.clone(),
            worker,
            workers: cfg.workers.max(1),
            job: cfg.job.clone(),
            run_ms,
            seq: 0,
            props: writer_properties(),
            known_dirs: HashSet::new(),
            shared: Arc::clone(&shared),
            unsynced: Vec::new(),
            dirty_dirs: HashSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("dragonflow-lake-w{worker}"))
            .spawn(move || files.run(rx))
            .map_err(|e| SinkError::SpawnWriter { path: cfg.path.clone(), source: e })?;
        Ok(LakeWriter {
            cfg,
            aggregates: AggregatesEncoder::default(),
            late: LateEncoder::default(),
            rejects: RejectsEncoder::default(),
            last_flush: Instant::now(),
            tx: Some(tx),
            thread: Some(thread),
            shared,
            barriers: 0,
        })
    }

    /// Appends an item's rows to its table's buffer, flushing the table when it is full.
    pub fn push(&mut self, item: SinkItem) -> Result<(), SinkError> {
        let (table, buffered) = match &item {
            SinkItem::Aggregates(batch) => {
                // A window is one file of its own, written at once.
                self.aggregates.push(batch);
                return self.send_window(batch.window_start);
            }
            SinkItem::Late(rows) => {
                rows.iter().for_each(|row| self.late.push(row));
                (Table::Late, self.late.len())
            }
            SinkItem::Rejects(rows) => {
                rows.iter().for_each(|row| self.rejects.push(row));
                (Table::Rejects, self.rejects.len())
            }
            _ => return Ok(()),
        };
        if buffered >= self.cfg.max_buffered_rows {
            self.flush_table(table)?;
        }
        Ok(())
    }

    /// Flushes everything if [`LakeConfig::flush_interval`] has passed since the last such flush.
    pub fn poll(&mut self, now: Instant) -> Result<(), SinkError> {
        if now.saturating_duration_since(self.last_flush) >= self.cfg.flush_interval {
            self.last_flush = now;
            self.flush()?;
        }
        Ok(())
    }

    /// Hands every buffered row to the writer thread (blocking while its queue is full).
    pub fn flush(&mut self) -> Result<(), SinkError> {
        for table in Table::ALL {
            self.flush_table(table)?;
        }
        Ok(())
    }

    /// Flushes everything and returns a barrier number; see [`LakeWriter::durable`].
    pub fn barrier(&mut self) -> Result<u64, SinkError> {
        self.flush()?;
        self.barriers += 1;
        let Some(tx) = &self.tx else { return Err(self.stopped()) };
        tx.send(ToWriter::Barrier(self.barriers)).map_err(|_| self.stopped())?;
        Ok(self.barriers)
    }

    /// The last barrier whose rows are all on disk.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Rows buffered and not yet handed to the writer thread.
    pub fn buffered_rows(&self) -> usize {
        self.aggregates.len() + self.late.len() + self.rejects.len()
    }

    /// What has been written so far.
    pub fn stats(&self) -> LakeStats {
        self.shared.stats()
    }

    /// Flushes, waits until the writer thread has written everything, and returns the totals —
    /// or the first error the writer thread met.
    pub fn finish(mut self) -> Result<LakeStats, SinkError> {
        let flushed = self.flush();
        let joined = self.close();
        joined?;
        flushed?;
        Ok(self.shared.stats())
    }

    fn flush_table(&mut self, table: Table) -> Result<(), SinkError> {
        let chunk = match table {
            Table::Aggregates => self.aggregates.finish()?,
            Table::Late => self.late.finish()?,
            Table::Rejects => self.rejects.finish()?,
        };
        let Some(chunk) = chunk else { return Ok(()) };
        let Some(tx) = &self.tx else { return Err(self.stopped()) };
        tx.send(ToWriter::Chunk(chunk)).map_err(|_| self.stopped())
    }

    /// Sends the window just encoded as its own file.
    fn send_window(&mut self, window_start: i64) -> Result<(), SinkError> {
        let Some(mut chunk) = self.aggregates.finish()? else { return Ok(()) };
        chunk.window = Some(window_start);
        let Some(tx) = &self.tx else { return Err(self.stopped()) };
        tx.send(ToWriter::Chunk(chunk)).map_err(|_| self.stopped())
    }

    /// Closes the channel and joins the thread, returning the thread's result.
    fn close(&mut self) -> Result<(), SinkError> {
        self.tx = None;
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| SinkError::WriterPanicked { path: self.cfg.path.clone() })?,
            None => Ok(()),
        }
    }

    fn stopped(&self) -> SinkError {
        let reason = self.shared.stats().last_error.unwrap_or_else(|| "its thread has exited".to_string());
        SinkError::WriterStopped { path: self.cfg.path.clone(), reason }
    }
}

impl Drop for LakeWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not finished: write what is buffered; errors are kept in `stats().last_error` only.
            let _ = self.flush();
            let _ = self.close();
        }
    }
}

/// Snappy, dictionary-encoded strings, page statistics (so SQL can skip pages by time).
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("dragonflow {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A flushed batch of one table, with the partition time (ns) of each row.
struct Chunk {
    table: Table,
    batch: RecordBatch,
    part_ns: Vec<i64>,
    /// The window start (ns) of a window's aggregates: the file is named after it.
    window: Option<i64>,
}

/// What the writer thread is asked to do.
enum ToWriter {
    Chunk(Chunk),
    /// Everything sent before is written: record this barrier as durable.
    Barrier(u64),
}

// ---------------------------------------------------------------------------------------------
// Encoders: one per table, appending rows column by column.

/// The agent tag columns `ns_id, mcis_id, vm_id, csp_type, os_type`.
#[derive(Default)]
struct AgentColumns([StringBuilder; 5]);

impl AgentColumns {
    fn push(&mut self, agent: &AgentTags) {
        let [ns, mcis, vm, csp, os] = &mut self.0;
        ns.append_value(&agent.ns_id);
        mcis.append_value(&agent.mcis_id);
        vm.append_value(&agent.vm_id);
        csp.append_value(&agent.csp_type);
        os.append_value(&agent.os_type);
    }

    fn finish(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.extend(self.0.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    }
}

/// The series columns `measurement, instance, field`.
#[derive(Default)]
struct SeriesColumns([StringBuilder; 3]);

impl SeriesColumns {
    fn push(&mut self, measurement: &str, instance: &str, field: &str) {
        let [m, i, f] = &mut self.0;
        m.append_value(measurement);
        i.append_value(instance);
        f.append_value(field);
    }

    fn finish(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.extend(self.0.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    }
}

/// The origin columns `source, partition, position`.
#[derive(Default)]
struct OriginColumns {
    source: StringBuilder,
    partition: Int32Builder,
    position: Int64Builder,
}

impl OriginColumns {
    fn push(&mut self, origin: &Origin) {
        self.source.append_value(&origin.source);
        self.partition.append_value(origin.partition);
        self.position.append_value(origin.position);
    }

    fn finish(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.push(Arc::new(self.source.finish()));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.position.finish()));
    }
}

fn ts_ms() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

fn ts_ns() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::new().with_timezone("UTC")
}

/// Builds the chunk of `table` from its columns (in schema order), or `None` when it has no rows.
fn chunk(table: Table, columns: Vec<ArrayRef>, part_ns: &mut Vec<i64>) -> Result<Option<Chunk>, SinkError> {
    if part_ns.is_empty() {
        return Ok(None);
    }
    let schema: SchemaRef = table.schema();
    let batch =
        RecordBatch::try_new(schema, columns).map_err(|e| SinkError::Encode { table: table.name(), source: e })?;
    Ok(Some(Chunk { table, batch, part_ns: std::mem::take(part_ns), window: None }))
}

struct AggregatesEncoder {
    window_start: TimestampMillisecondBuilder,
    window_end: TimestampMillisecondBuilder,
    agent: AgentColumns,
    series: SeriesColumns,
    count: UInt64Builder,
    /// sum, min, max, mean, last
    values: [Float64Builder; 5],
    part_ns: Vec<i64>,
}

impl Default for AggregatesEncoder {
    fn default() -> Self {
        AggregatesEncoder {
            window_start: ts_ms(),
            window_end: ts_ms(),
            agent: AgentColumns::default(),
            series: SeriesColumns::default(),
            count: UInt64Builder::new(),
            values: Default::default(),
            part_ns: Vec::new(),
        }
    }
}

impl AggregatesEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, batch: &WindowBatch) {
        let start_ms = batch.window_start.div_euclid(NANOS_PER_MILLI);
        let end_ms = batch.window_end.div_euclid(NANOS_PER_MILLI);
        for (key, agg) in &batch.rows {
            self.push_row(start_ms, end_ms, key, agg);
        }
        self.part_ns.resize(self.part_ns.len() + batch.rows.len(), batch.window_start);
    }

    fn push_row(&mut self, start_ms: i64, end_ms: i64, key: &SeriesKey, agg: &Agg) {
        self.window_start.append_value(start_ms);
        self.window_end.append_value(end_ms);
        self.agent.push(&key.agent);
        self.series.push(&key.measurement, &key.instance, &key.field);
        self.count.append_value(agg.count);
        let [sum, min, max, mean, last] = &mut self.values;
        sum.append_value(agg.sum());
        min.append_value(agg.min);
        max.append_value(agg.max);
        mean.append_value(agg.mean());
        last.append_value(agg.last);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.window_start.finish()), Arc::new(self.window_end.finish())];
        self.agent.finish(&mut columns);
        self.series.finish(&mut columns);
        columns.push(Arc::new(self.count.finish()));
        columns.extend(self.values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        chunk(Table::Aggregates, columns, &mut self.part_ns)
    }
}

struct LateEncoder {
    agent: AgentColumns,
    series: SeriesColumns,
    timestamp: TimestampNanosecondBuilder,
    value: Float64Builder,
    watermark: TimestampNanosecondBuilder,
    origin: OriginColumns,
    part_ns: Vec<i64>,
}

impl Default for LateEncoder {
    fn default() -> Self {
        LateEncoder {
            agent: AgentColumns::default(),
            series: SeriesColumns::default(),
            timestamp: ts_ns(),
            value: Float64Builder::new(),
            watermark: ts_ns(),
            origin: OriginColumns::default(),
            part_ns: Vec::new(),
        }
    }
}

impl LateEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &LateRow) {
        self.agent.push(&row.agent);
        self.series.push(&row.measurement, &row.instance, &row.field);
        self.timestamp.append_value(row.timestamp);
        self.value.append_value(row.value);
        self.watermark.append_value(row.watermark);
        self.origin.push(&row.origin);
        self.part_ns.push(row.timestamp);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(14);
        self.agent.finish(&mut columns);
        self.series.finish(&mut columns);
        columns.push(Arc::new(self.timestamp.finish()));
        columns.push(Arc::new(self.value.finish()));
        columns.push(Arc::new(self.watermark.finish()));
        self.origin.finish(&mut columns);
        chunk(Table::Late, columns, &mut self.part_ns)
    }
}

struct RejectsEncoder {
    received_at: TimestampNanosecondBuilder,
    origin: OriginColumns,
    reason: StringBuilder,
    payload: StringBuilder,
    part_ns: Vec<i64>,
}

impl Default for RejectsEncoder {
    fn default() -> Self {
        RejectsEncoder {
            received_at: ts_ns(),
            origin: OriginColumns::default(),
            reason: StringBuilder::new(),
            payload: StringBuilder::new(),
            part_ns: Vec::new(),
        }
    }
}

impl RejectsEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &RejectRow) {
        self.received_at.append_value(row.received_at);
        self.origin.push(&row.origin);
        self.reason.append_value(&row.reason);
        self.payload.append_value(&row.payload);
        self.part_ns.push(row.received_at);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.received_at.finish())];
        self.origin.finish(&mut columns);
        columns.push(Arc::new(self.reason.finish()));
        columns.push(Arc::new(self.payload.finish()));
        chunk(Table::Rejects, columns, &mut self.part_ns)
    }
}

// ---------------------------------------------------------------------------------------------
// The writer thread.

/// Runs on the writer thread: splits chunks by partition and writes one file per partition.
struct FileWriter {
    lake: PathBuf,
    worker: usize,
    workers: usize,
    job: String,
    run_ms: i64,
    seq: u64,
    props: WriterProperties,
    known_dirs: HashSet<PathBuf>,
    shared: Arc<Shared>,
    /// Files renamed into place and directories changed since the last sync.
    unsynced: Vec<PathBuf>,
    dirty_dirs: HashSet<PathBuf>,
}

impl FileWriter {
    /// Counts a file renamed into place, to be synced at the next barrier.
    fn placed(&mut self, path: PathBuf, dir: PathBuf, rows: usize, bytes: u64) {
        self.unsynced.push(path);
        self.dirty_dirs.insert(dir);
        self.shared.files.fetch_add(1, Ordering::Relaxed);
        self.shared.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Makes every file written so far, and its directory entry, durable. Syncing at barriers
    /// (and at the end) rather than file by file keeps the disk from stalling the pipeline.
    fn sync(&mut self) -> Result<(), SinkError> {
        for path in self.unsynced.drain(..) {
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| SinkError::io("sync file", &path, e))?;
        }
        for dir in self.dirty_dirs.drain() {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Writes chunks until the channel closes; stops at the first error, which closes the channel
    /// for the sender too.
    fn run(mut self, rx: Receiver<ToWriter>) -> Result<(), SinkError> {
        for msg in rx {
            let written = match msg {
                ToWriter::Chunk(chunk) => self.write_chunk(chunk),
                ToWriter::Barrier(n) => self.sync().map(|()| self.shared.durable.store(n, Ordering::Release)),
            };
            if let Err(error) = written {
                self.shared.set_error(&error);
                return Err(error);
            }
        }
        let synced = self.sync();
        if let Err(error) = &synced {
            self.shared.set_error(error);
        }
        synced
    }

    fn write_chunk(&mut self, chunk: Chunk) -> Result<(), SinkError> {
        let Chunk { table, batch, part_ns, window } = chunk;
        if let Some(start) = window {
            return self.write_window(table, start, &batch);
        }
        let hour = |ns: &i64| ns.div_euclid(NANOS_PER_HOUR);
        let first_hour = part_ns.first().map(hour).unwrap_or_default();
        if part_ns.iter().all(|ns| hour(ns) == first_hour) {
            let first_ns = part_ns.iter().copied().min().unwrap_or_default();
            return self.write_file(table, first_hour, first_ns, &batch);
        }
        // Rows of several hours: one file per hour, rows in arrival order within each.
        let mut by_hour: BTreeMap<i64, (i64, Vec<u32>)> = BTreeMap::new();
        for (row, ns) in part_ns.iter().enumerate() {
            let (first_ns, rows) = by_hour.entry(hour(ns)).or_insert((*ns, Vec::new()));
            *first_ns = (*first_ns).min(*ns);
            rows.push(row as u32);
        }
        for (hour, (first_ns, rows)) in by_hour {
            let part = take_record_batch(&batch, &UInt32Array::from(rows))
                .map_err(|e| SinkError::Encode { table: table.name(), source: e })?;
            self.write_file(table, hour, first_ns, &part)?;
        }
        Ok(())
    }

    fn write_file(&mut self, table: Table, hour: i64, first_ns: i64, batch: &RecordBatch) -> Result<(), SinkError> {
        let dir = self.partition_dir(table, hour)?;
        let first_ms = first_ns.div_euclid(NANOS_PER_MILLI);
        let (name, path) = loop {
            let name = format!("part-w{:03}-{}-{}-{:06}.parquet", self.worker, self.run_ms, first_ms, self.seq);
            self.seq += 1;
            let path = dir.join(&name);
            // Only another writer with the same worker id started in the same millisecond could
            // have taken this name; never overwrite its file.
            if !path.exists() {
                break (name, path);
            }
        };
        let tmp = dir.join(format!(".{name}.tmp"));
        let bytes = write_in_place(&tmp, &path, batch, self.props.clone())?;
        self.placed(path, dir, batch.num_rows(), bytes);
        Ok(())
    }

    /// Writes one window's rows of this worker under its fixed name, replacing an earlier
    /// version, and removes versions written by a different number of workers.
    fn write_window(&mut self, table: Table, start_ns: i64, batch: &RecordBatch) -> Result<(), SinkError> {
        let dir = self.partition_dir(table, start_ns.div_euclid(NANOS_PER_HOUR))?;
        let prefix = format!("part-{}-{}-w", start_ns.div_euclid(NANOS_PER_MILLI), self.job);
        let suffix = format!("of{:03}.parquet", self.workers);
        let name = format!("{prefix}{:03}{suffix}", self.worker);
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp-{}", self.run_ms));
        let bytes = write_in_place(&tmp, &path, batch, self.props.clone())?;
        let entries = fs::read_dir(&dir).map_err(|e| SinkError::io("list", &dir, e))?;
        for entry in entries.flatten() {
            let other = entry.file_name();
            let other = other.to_string_lossy();
            if other.starts_with(&prefix) && other.ends_with(".parquet") && !other.ends_with(&suffix) {
                // Another worker of this run may have removed it first.
                if let Err(e) = fs::remove_file(entry.path()) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(SinkError::io("remove the stale window file", entry.path(), e));
                    }
                }
            }
        }
        self.placed(path, dir, batch.num_rows(), bytes);
        Ok(())
    }

    /// `<lake>/<table>/date=YYYY-MM-DD/hour=HH`, created if needed.
    fn partition_dir(&mut self, table: Table, hour: i64) -> Result<PathBuf, SinkError> {
        let time: DateTime<Utc> = hour.checked_mul(3_600).and_then(|secs| DateTime::from_timestamp(secs, 0)).ok_or(
            SinkError::TimestampOutOfRange { table: table.name(), nanos: hour.saturating_mul(NANOS_PER_HOUR) },
        )?;
        let dir = self
            .lake
            .join(table.name())
            .join(time.format("date=%Y-%m-%d").to_string())
            .join(time.format("hour=%H").to_string());
        if !self.known_dirs.contains(&dir) {
            fs::create_dir_all(&dir).map_err(|e| SinkError::io("create directory", &dir, e))?;
            self.known_dirs.insert(dir.clone());
        }
        Ok(dir)
    }
}

/// Writes `batch` under the temporary name `tmp` and renames it to `path`, replacing what was
/// there; returns its size in bytes. On failure no temporary file is left behind.
fn write_in_place(tmp: &Path, path: &Path, batch: &RecordBatch, props: WriterProperties) -> Result<u64, SinkError> {
    let written = write_parquet(tmp, batch, props).and_then(|bytes| {
        fs::rename(tmp, path).map_err(|e| SinkError::io("rename into place", tmp, e))?;
        Ok(bytes)
    });
    if written.is_err() {
        // Best effort: the write error is what matters.
        let _ = fs::remove_file(tmp);
    }
    written
}

/// Writes `batch` as one Parquet file at `path`; returns its size in bytes. The file is synced
/// later, with the others of its barrier.
fn write_parquet(path: &Path, batch: &RecordBatch, props: WriterProperties) -> Result<u64, SinkError> {
    let file = File::create(path).map_err(|e| SinkError::io("create file", path, e))?;
    let parquet_err = |e| SinkError::Parquet { path: path.to_path_buf(), source: e };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet_err)?;
    writer.write(batch).map_err(parquet_err)?;
    let file = writer.into_inner().map_err(parquet_err)?;
    let meta = file.metadata().map_err(|e| SinkError::io("read metadata of", path, e))?;
    Ok(meta.len())
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SinkError::io("sync directory", dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), SinkError> {
    Ok(())
}

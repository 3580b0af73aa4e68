//! The Parquet lake: window aggregates, group metrics and rankings, late values, rejects, agent
//! records, agent health changes and alarm events as Hive-partitioned Parquet files.
//!
//! Each timely worker owns one [`LakeWriter`]. [`LakeWriter::push`] appends a [`SinkItem`]'s rows
//! to per-table Arrow column builders (no per-row allocation beyond the builders). A flush — when a
//! table reaches [`LakeConfig::max_buffered_rows`], when [`LakeWriter::poll`] sees that
//! [`LakeConfig::flush_interval`] has passed, or on [`LakeWriter::flush`] — turns the builders into
//! a record batch and hands it to the writer's own thread through a bounded channel: a slow disk
//! blocks the worker instead of growing memory without limit.
//!
//! Window tables — `aggregates`, `groups` and `rankings` — are written at once, one file per table,
//! window and worker, under a name that depends only on the window and the worker, so a window
//! computed again (after a restart) replaces its file instead of adding a second one:
//!
//! ```text
//! <lake>/<table>/date=YYYY-MM-DD/hour=HH/part-{window_start_ms}-{job}-w{worker:03}of{workers:03}.parquet
//! ```
//!
//! (`job` tells apart jobs that share a lake: see [`LakeConfig::job`].) Each [`SinkItem`] of a
//! window table must therefore hold all of the worker's rows of its window: a second item of the
//! same window replaces the first. (Rows of several windows in one item are split by window.)
//!
//! Late values, rejects, agent records (`agents_history`), health changes (`agent_health`) and
//! alarm events (`alarm_log`) are buffered and split by partition hour, one file per flush:
//!
//! ```text
//! <lake>/<table>/date=YYYY-MM-DD/hour=HH/part-w{worker:03}-{run}-{first_ms}-{seq:06}.parquet
//! ```
//!
//! where `run` is the writer's start time (ms) and `first_ms` the earliest partition time in the
//! file, so names never collide between workers, flushes or runs (SQL reads these tables without
//! the repeats a resumed job may write, see [`crate::sql`]). A file is written under a hidden
//! temporary name that does not end in `.parquet` (`.<name>.tmp`), synced, then renamed: a reader
//! listing `*.parquet` never sees half a file.
//!
//! Files are synced in groups: [`LakeWriter::barrier`] flushes everything and returns a sequence
//! number; once [`LakeWriter::durable`] reaches it, every file written before it is synced, with
//! its directory. [`LakeWriter::finish`] syncs what remains.
//!
//! `alarm_log` has a second writer outside the dataflow: the events a [`LakeWriter`] writes are
//! pending delivery (`delivered` is null), and [`append_alarm_deliveries`] adds, from whatever
//! thread delivers them, one row per event with its outcome, in files of their own:
//!
//! ```text
//! <lake>/alarm_log/date=YYYY-MM-DD/hour=HH/part-delivery-p{pid}-{now_ns}-{seq:06}.parquet
//! ```
//!
//! Both kinds of rows carry `recorded_at`, the wall clock when they were written; SQL's view
//! `alarm_events` lets an outcome supersede the pending row (see [`crate::sql`]).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringArray, StringBuilder,
    TimestampMillisecondBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder, UInt32Array, UInt32Builder,
    UInt64Builder,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use operators::aggregate::{Agg, Counters};
use operators::model::{
    AgentRow, AgentTags, AlarmDelivery, AlarmEvent, GroupRow, HealthRow, LateRow, Origin, RankRow, RejectRow,
    SeriesKey, SinkItem, WindowBatch,
};
use operators::registry::{AgentState, Mechanism};
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
    /// Which `(measurement, field)` series are cumulative counters: their aggregates get a `rate`.
    /// Default [`Counters::default`] (every field of `diskio` and `net`).
    pub counters: Counters,
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
            counters: Counters::default(),
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
    groups: GroupsEncoder,
    rankings: RankingsEncoder,
    late: LateEncoder,
    rejects: RejectsEncoder,
    agents: AgentsEncoder,
    health: HealthEncoder,
    alarms: AlarmEncoder,
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
            aggregates: AggregatesEncoder::new(cfg.counters.clone()),
            alarms: AlarmEncoder::new(&cfg.job),
            cfg,
            groups: GroupsEncoder::default(),
            rankings: RankingsEncoder::default(),
            late: LateEncoder::default(),
            rejects: RejectsEncoder::default(),
            agents: AgentsEncoder::default(),
            health: HealthEncoder::default(),
            last_flush: Instant::now(),
            tx: Some(tx),
            thread: Some(thread),
            shared,
            barriers: 0,
        })
    }

    /// Appends an item's rows to its table's buffer, flushing the table when it is full.
    ///
    /// An item of a window table (aggregates, groups, rankings) is written at once as the file of
    /// its window and this worker, replacing an earlier version of it.
    pub fn push(&mut self, item: SinkItem) -> Result<(), SinkError> {
        let (table, buffered) = match &item {
            SinkItem::Aggregates(batch) => {
                self.aggregates.push(batch);
                return self.send_window(Table::Aggregates, batch.window_start);
            }
            SinkItem::Groups(rows) => {
                for start in window_starts(rows, |row| row.window_start) {
                    rows.iter().filter(|row| row.window_start == start).for_each(|row| self.groups.push(row));
                    self.send_window(Table::Groups, start)?;
                }
                return Ok(());
            }
            SinkItem::Rankings(rows) => {
                for start in window_starts(rows, |row| row.window_start) {
                    rows.iter().filter(|row| row.window_start == start).for_each(|row| self.rankings.push(row));
                    self.send_window(Table::Rankings, start)?;
                }
                return Ok(());
            }
            SinkItem::Late(rows) => {
                rows.iter().for_each(|row| self.late.push(row));
                (Table::Late, self.late.len())
            }
            SinkItem::Rejects(rows) => {
                rows.iter().for_each(|row| self.rejects.push(row));
                (Table::Rejects, self.rejects.len())
            }
            SinkItem::Agents(rows) => {
                rows.iter().for_each(|row| self.agents.push(row));
                (Table::AgentsHistory, self.agents.len())
            }
            SinkItem::Health(rows) => {
                rows.iter().for_each(|row| self.health.push(row));
                (Table::AgentHealth, self.health.len())
            }
            SinkItem::Alarms(events) => {
                // Delivery is pending: its outcome comes later, from `append_alarm_deliveries`.
                events.iter().for_each(|event| self.alarms.push(event, None, None));
                (Table::AlarmLog, self.alarms.len())
            }
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
        self.aggregates.len()
            + self.groups.len()
            + self.rankings.len()
            + self.late.len()
            + self.rejects.len()
            + self.agents.len()
            + self.health.len()
            + self.alarms.len()
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

    /// Turns the rows buffered for `table` into a chunk, or `None` when there are none. (Window
    /// tables hold rows only between encoding a window and [`LakeWriter::send_window`].)
    fn finish_table(&mut self, table: Table) -> Result<Option<Chunk>, SinkError> {
        match table {
            Table::Aggregates => self.aggregates.finish(),
            Table::Groups => self.groups.finish(),
            Table::Rankings => self.rankings.finish(),
            Table::Late => self.late.finish(),
            Table::Rejects => self.rejects.finish(),
            Table::AgentsHistory => self.agents.finish(),
            Table::AgentHealth => self.health.finish(),
            Table::AlarmLog => self.alarms.finish(),
        }
    }

    fn flush_table(&mut self, table: Table) -> Result<(), SinkError> {
        let Some(chunk) = self.finish_table(table)? else { return Ok(()) };
        self.send(chunk)
    }

    /// Sends the window of `table` just encoded as its own file.
    fn send_window(&mut self, table: Table, window_start: i64) -> Result<(), SinkError> {
        let Some(mut chunk) = self.finish_table(table)? else { return Ok(()) };
        chunk.window = Some(window_start);
        self.send(chunk)
    }

    fn send(&mut self, chunk: Chunk) -> Result<(), SinkError> {
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

/// The distinct window starts of `rows`, in order of first appearance.
fn window_starts<T>(rows: &[T], start: impl Fn(&T) -> i64) -> Vec<i64> {
    let mut starts: Vec<i64> = Vec::with_capacity(1);
    for row in rows {
        let s = start(row);
        if !starts.contains(&s) {
            starts.push(s);
        }
    }
    starts
}

/// A flushed batch of one table, with the partition time (ns) of each row.
struct Chunk {
    table: Table,
    batch: RecordBatch,
    part_ns: Vec<i64>,
    /// The window start (ns) of a window table's rows: the file is named after it.
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
    /// Per-second rate of counter series; null for the others.
    rate: Float64Builder,
    counters: Counters,
    part_ns: Vec<i64>,
}

impl AggregatesEncoder {
    fn new(counters: Counters) -> Self {
        AggregatesEncoder {
            window_start: ts_ms(),
            window_end: ts_ms(),
            agent: AgentColumns::default(),
            series: SeriesColumns::default(),
            count: UInt64Builder::new(),
            values: Default::default(),
            rate: Float64Builder::new(),
            counters,
            part_ns: Vec::new(),
        }
    }

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
        let rate = if self.counters.is_counter(&key.measurement, &key.field) { agg.rate() } else { None };
        self.rate.append_option(rate);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.window_start.finish()), Arc::new(self.window_end.finish())];
        self.agent.finish(&mut columns);
        self.series.finish(&mut columns);
        columns.push(Arc::new(self.count.finish()));
        columns.extend(self.values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.rate.finish()));
        chunk(Table::Aggregates, columns, &mut self.part_ns)
    }
}

struct GroupsEncoder {
    window_start: TimestampMillisecondBuilder,
    window_end: TimestampMillisecondBuilder,
    /// level, group_id, metric
    names: [StringBuilder; 3],
    value: Float64Builder,
    vm_count: UInt64Builder,
    part_ns: Vec<i64>,
}

impl Default for GroupsEncoder {
    fn default() -> Self {
        GroupsEncoder {
            window_start: ts_ms(),
            window_end: ts_ms(),
            names: Default::default(),
            value: Float64Builder::new(),
            vm_count: UInt64Builder::new(),
            part_ns: Vec::new(),
        }
    }
}

impl GroupsEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &GroupRow) {
        self.window_start.append_value(row.window_start.div_euclid(NANOS_PER_MILLI));
        self.window_end.append_value(row.window_end.div_euclid(NANOS_PER_MILLI));
        let [level, group_id, metric] = &mut self.names;
        level.append_value(&row.level);
        group_id.append_value(&row.group_id);
        metric.append_value(&row.metric);
        self.value.append_value(row.value);
        self.vm_count.append_value(row.vm_count);
        self.part_ns.push(row.window_start);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.window_start.finish()), Arc::new(self.window_end.finish())];
        columns.extend(self.names.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.value.finish()));
        columns.push(Arc::new(self.vm_count.finish()));
        chunk(Table::Groups, columns, &mut self.part_ns)
    }
}

struct RankingsEncoder {
    window_start: TimestampMillisecondBuilder,
    window_end: TimestampMillisecondBuilder,
    /// level, metric, order
    names: [StringBuilder; 3],
    rank: UInt32Builder,
    group_id: StringBuilder,
    value: Float64Builder,
    part_ns: Vec<i64>,
}

impl Default for RankingsEncoder {
    fn default() -> Self {
        RankingsEncoder {
            window_start: ts_ms(),
            window_end: ts_ms(),
            names: Default::default(),
            rank: UInt32Builder::new(),
            group_id: StringBuilder::new(),
            value: Float64Builder::new(),
            part_ns: Vec::new(),
        }
    }
}

impl RankingsEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &RankRow) {
        self.window_start.append_value(row.window_start.div_euclid(NANOS_PER_MILLI));
        self.window_end.append_value(row.window_end.div_euclid(NANOS_PER_MILLI));
        let [level, metric, order] = &mut self.names;
        level.append_value(&row.level);
        metric.append_value(&row.metric);
        order.append_value(&row.order);
        self.rank.append_value(row.rank);
        self.group_id.append_value(&row.group_id);
        self.value.append_value(row.value);
        self.part_ns.push(row.window_start);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.window_start.finish()), Arc::new(self.window_end.finish())];
        columns.extend(self.names.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.rank.finish()));
        columns.push(Arc::new(self.group_id.finish()));
        columns.push(Arc::new(self.value.finish()));
        chunk(Table::Rankings, columns, &mut self.part_ns)
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

struct AgentsEncoder {
    time: TimestampNanosecondBuilder,
    /// key, ns_id, mcis_id, vm_id, csp_type, os_type, mechanism, public_ip, state
    names: [StringBuilder; 9],
    /// vcpu, memory_gib, cost_per_hour
    spec: [Float64Builder; 3],
    pull_url: StringBuilder,
    first_seen: TimestampNanosecondBuilder,
    last_seen: TimestampNanosecondBuilder,
    health: StringBuilder,
    deleted: BooleanBuilder,
    part_ns: Vec<i64>,
}

impl Default for AgentsEncoder {
    fn default() -> Self {
        AgentsEncoder {
            time: ts_ns(),
            names: Default::default(),
            spec: Default::default(),
            pull_url: StringBuilder::new(),
            first_seen: ts_ns(),
            last_seen: ts_ns(),
            health: StringBuilder::new(),
            deleted: BooleanBuilder::new(),
            part_ns: Vec::new(),
        }
    }
}

impl AgentsEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &AgentRow) {
        let r = &row.record;
        self.time.append_value(row.time);
        let [key, ns, mcis, vm, csp, os, mechanism, public_ip, state] = &mut self.names;
        key.append_value(&r.key);
        ns.append_value(&r.ns_id);
        mcis.append_value(&r.mcis_id);
        vm.append_value(&r.vm_id);
        csp.append_value(&r.csp_type);
        os.append_value(&r.os_type);
        mechanism.append_value(mechanism_name(r.mechanism));
        public_ip.append_value(&r.public_ip);
        state.append_value(state_name(r.state));
        let [vcpu, memory_gib, cost_per_hour] = &mut self.spec;
        vcpu.append_option(r.vcpu);
        memory_gib.append_option(r.memory_gib);
        cost_per_hour.append_option(r.cost_per_hour);
        self.pull_url.append_option(r.pull_url.as_deref());
        self.first_seen.append_option(row.first_seen);
        self.last_seen.append_option(row.last_seen);
        self.health.append_value(&row.health);
        self.deleted.append_value(row.deleted);
        self.part_ns.push(row.time);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(18);
        columns.push(Arc::new(self.time.finish()));
        columns.extend(self.names.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(self.spec.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.pull_url.finish()));
        columns.push(Arc::new(self.first_seen.finish()));
        columns.push(Arc::new(self.last_seen.finish()));
        columns.push(Arc::new(self.health.finish()));
        columns.push(Arc::new(self.deleted.finish()));
        chunk(Table::AgentsHistory, columns, &mut self.part_ns)
    }
}

/// The name of a mechanism in the lake, as in the registry's JSON.
fn mechanism_name(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::Push => "push",
        Mechanism::Pull => "pull",
    }
}

/// The name of a state in the lake, as in the registry's JSON.
fn state_name(state: AgentState) -> &'static str {
    match state {
        AgentState::Enable => "enable",
        AgentState::Disable => "disable",
    }
}

struct HealthEncoder {
    time: TimestampNanosecondBuilder,
    /// ns_id, mcis_id, vm_id, csp_type, from, to, reason
    names: [StringBuilder; 7],
    part_ns: Vec<i64>,
}

impl Default for HealthEncoder {
    fn default() -> Self {
        HealthEncoder { time: ts_ns(), names: Default::default(), part_ns: Vec::new() }
    }
}

impl HealthEncoder {
    fn len(&self) -> usize {
        self.part_ns.len()
    }

    fn push(&mut self, row: &HealthRow) {
        self.time.append_value(row.time);
        let values = [&row.ns_id, &row.mcis_id, &row.vm_id, &row.csp_type, &row.from, &row.to, &row.reason];
        for (builder, value) in self.names.iter_mut().zip(values) {
            builder.append_value(value);
        }
        self.part_ns.push(row.time);
    }

    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.time.finish())];
        columns.extend(self.names.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        chunk(Table::AgentHealth, columns, &mut self.part_ns)
    }
}

/// Rows of `alarm_log`, pending ([`LakeWriter::push`]) or with their delivery outcome
/// ([`append_alarm_deliveries`]), of one job.
struct AlarmEncoder {
    job: String,
    id: StringBuilder,
    time: TimestampNanosecondBuilder,
    /// rule, target, level, previous_level
    names: [StringBuilder; 4],
    /// value, threshold
    values: [Float64Builder; 2],
    message: StringBuilder,
    handlers: StringBuilder,
    delivered: BooleanBuilder,
    delivery_error: StringBuilder,
    part_ns: Vec<i64>,
}

impl AlarmEncoder {
    fn new(job: &str) -> Self {
        AlarmEncoder {
            job: job.to_string(),
            id: StringBuilder::new(),
            time: ts_ns(),
            names: Default::default(),
            values: Default::default(),
            message: StringBuilder::new(),
            handlers: StringBuilder::new(),
            delivered: BooleanBuilder::new(),
            delivery_error: StringBuilder::new(),
            part_ns: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.part_ns.len()
    }

    /// `delivered` is `None` while delivery is pending.
    fn push(&mut self, event: &AlarmEvent, delivered: Option<bool>, delivery_error: Option<&str>) {
        self.id.append_value(&event.id);
        self.time.append_value(event.time);
        let values = [&event.rule, &event.target, &event.level, &event.previous_level];
        for (builder, value) in self.names.iter_mut().zip(values) {
            builder.append_value(value);
        }
        let [value, threshold] = &mut self.values;
        value.append_option(event.value);
        threshold.append_option(event.threshold);
        self.message.append_value(&event.message);
        self.handlers.append_value(event.handlers.join(","));
        self.delivered.append_option(delivered);
        self.delivery_error.append_option(delivery_error);
        self.part_ns.push(event.time);
    }

    /// The chunk of the buffered rows, all recorded now.
    fn finish(&mut self) -> Result<Option<Chunk>, SinkError> {
        let recorded_at = TimestampNanosecondArray::from(vec![now_ns(); self.len()]).with_timezone("UTC");
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.id.finish()), Arc::new(self.time.finish())];
        columns.extend(self.names.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(self.values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.message.finish()));
        columns.push(Arc::new(self.handlers.finish()));
        columns.push(Arc::new(self.delivered.finish()));
        columns.push(Arc::new(self.delivery_error.finish()));
        columns.push(Arc::new(recorded_at));
        columns.push(Arc::new(StringArray::from(vec![Some(self.job.as_str()); self.len()])));
        chunk(Table::AlarmLog, columns, &mut self.part_ns)
    }
}

use operators::time::wall_ns as now_ns;

// ---------------------------------------------------------------------------------------------
// Delivery outcomes, written outside the dataflow.

/// Appends the outcomes of alarm deliveries of the job `job` (its [`LakeConfig::job`]) to
/// `alarm_log` of the lake at `lake`: one row per delivery, with `delivered` and `delivery_error`
/// set, written synchronously as one new file per partition hour of the events (one file unless
/// the events span hours).
///
/// For the thread that delivers alarms, outside timely: it needs no [`LakeWriter`], and its files
/// never collide with a writer's, another call's or another process's (their names hold
/// `delivery`, the process id, the wall clock and a counter). Each file is written under a hidden
/// temporary name, synced, renamed into place and its directory synced before this returns: a
/// reader sees all of a file or none of it, and an outcome reported written survives a crash.
pub fn append_alarm_deliveries(lake: &Path, job: &str, rows: &[AlarmDelivery]) -> Result<(), SinkError> {
    /// Tells apart the files of calls within one process in the same nanosecond.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut encoder = AlarmEncoder::new(job);
    for row in rows {
        encoder.push(&row.event, Some(row.delivered), row.error.as_deref());
    }
    let Some(Chunk { table, batch, part_ns, .. }) = encoder.finish()? else { return Ok(()) };
    let props = writer_properties();
    for (hour, (_, indices)) in rows_by_hour(&part_ns) {
        let part = if indices.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(&batch, &UInt32Array::from(indices))
                .map_err(|e| SinkError::Encode { table: table.name(), source: e })?
        };
        let dir = partition_path(lake, table, hour)?;
        fs::create_dir_all(&dir).map_err(|e| SinkError::io("create directory", &dir, e))?;
        let pid = std::process::id();
        let (name, path) = loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("part-delivery-p{pid}-{}-{seq:06}.parquet", now_ns());
            let path = dir.join(&name);
            if !path.exists() {
                break (name, path);
            }
        };
        let tmp = dir.join(format!(".{name}.tmp"));
        write_in_place(&tmp, &path, &part, props.clone(), FileSync::Now)?;
        sync_dir(&dir)?;
    }
    Ok(())
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
        for (hour, (first_ns, rows)) in rows_by_hour(&part_ns) {
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
        let bytes = write_in_place(&tmp, &path, batch, self.props.clone(), FileSync::Later)?;
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
        let bytes = write_in_place(&tmp, &path, batch, self.props.clone(), FileSync::Later)?;
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
        let dir = partition_path(&self.lake, table, hour)?;
        if !self.known_dirs.contains(&dir) {
            fs::create_dir_all(&dir).map_err(|e| SinkError::io("create directory", &dir, e))?;
            self.known_dirs.insert(dir.clone());
        }
        Ok(dir)
    }
}

/// The directory `<lake>/<table>/date=YYYY-MM-DD/hour=HH` of the UTC hour `hour` (hours since
/// the Unix epoch).
fn partition_path(lake: &Path, table: Table, hour: i64) -> Result<PathBuf, SinkError> {
    let time: DateTime<Utc> = hour
        .checked_mul(3_600)
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or(SinkError::TimestampOutOfRange { table: table.name(), nanos: hour.saturating_mul(NANOS_PER_HOUR) })?;
    Ok(lake.join(table.name()).join(time.format("date=%Y-%m-%d").to_string()).join(time.format("hour=%H").to_string()))
}

/// The rows of each partition hour (hours since the Unix epoch), in arrival order, with the
/// hour's earliest partition time (ns).
fn rows_by_hour(part_ns: &[i64]) -> BTreeMap<i64, (i64, Vec<u32>)> {
    let mut by_hour: BTreeMap<i64, (i64, Vec<u32>)> = BTreeMap::new();
    for (row, ns) in part_ns.iter().enumerate() {
        let (first_ns, rows) = by_hour.entry(ns.div_euclid(NANOS_PER_HOUR)).or_insert((*ns, Vec::new()));
        *first_ns = (*first_ns).min(*ns);
        rows.push(row as u32);
    }
    by_hour
}

/// When a file written by [`write_in_place`] is synced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileSync {
    /// By the caller, later (the writer thread syncs a barrier's files together).
    Later,
    /// Before it is renamed into place (its directory is still the caller's to sync).
    Now,
}

/// Writes `batch` under the temporary name `tmp` and renames it to `path`, replacing what was
/// there; returns its size in bytes. On failure no temporary file is left behind.
fn write_in_place(
    tmp: &Path,
    path: &Path,
    batch: &RecordBatch,
    props: WriterProperties,
    sync: FileSync,
) -> Result<u64, SinkError> {
    let written = write_parquet(tmp, batch, props).and_then(|bytes| {
        if sync == FileSync::Now {
            File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| SinkError::io("sync file", tmp, e))?;
        }
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

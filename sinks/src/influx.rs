//! The InfluxDB 1.x sink: one point per (agent, measurement, instance, window), the schema the
//! reference framework's Grafana dashboards query.
//!
//! Points are encoded as line protocol on the worker and handed, in batches of at most
//! `batch_lines` lines, to the writer's own thread through a bounded channel — the channel is the
//! backpressure: while InfluxDB is unreachable the worker blocks on it (and so stops reading
//! Kafka) instead of buffering without limit. The thread sends batches over hyper, gzip-compressed,
//! with at most `max_in_flight` requests at once. 5xx answers, timeouts and refused connections
//! are retried with exponential backoff and jitter for up to `retry_for`; a 4xx answer for a batch
//! is bisected until only the offending lines remain, and those become rejects. Points are
//! idempotent (same series and timestamp), so a replayed window overwrites itself.
//!
//! Measurements besides the aggregates' own: `dragonflow_groups` (one point per window, level,
//! group and metric), `dragonflow_rankings` (one per window, level, metric, order and rank) —
//! both at the window start, in seconds, like the aggregates — and `dragonflow_agent_health`,
//! `dragonflow_late`, `dragonflow_rejects` and `dragonflow_alarms` (one point per alarm event)
//! at their event time in nanoseconds. The agent
//! registry's rows (`agents_history` in the lake) are not written to InfluxDB: they are versions of
//! records rather than measurements, and their health changes arrive as `dragonflow_agent_health`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use influxdb_line_protocol::builder::LineProtocolBuilder;
use operators::aggregate::{Agg, Counters};
use operators::model::{
    AlarmEvent, GroupRow, HealthRow, LateRow, Origin, RankRow, RejectRow, SeriesKey, SinkItem, WindowBatch,
};

use crate::error::SinkError;

/// Where and how an [`InfluxWriter`] writes.
#[derive(Clone, Debug)]
pub struct InfluxConfig {
    /// `http://host:port` of InfluxDB's HTTP API.
    pub url: String,
    pub database: String,
    /// Created if missing, as the database's default policy.
    pub retention_policy: String,
    /// Duration of the retention policy in InfluxQL syntax (`4w`, `30d`, `INF`).
    pub retention: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub batch_lines: usize,
    pub gzip: bool,
    /// Timeout of one request.
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// How long a batch is retried before the sink fails (the job then stops, without committing).
    pub retry_for: Duration,
    /// Flush buffered lines at least this often.
    pub flush_interval: Duration,
    /// Which `(measurement, field)` series are cumulative counters: their points get a
    /// `<field>_rate` field. Default [`Counters::default`] (every field of `diskio` and `net`).
    pub counters: Counters,
}

impl InfluxConfig {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        InfluxConfig {
            url: url.into(),
            database: database.into(),
            retention_policy: "df_rp".into(),
            retention: "4w".into(),
            username: None,
            password: None,
            batch_lines: 5000,
            gzip: true,
            timeout: Duration::from_secs(10),
            max_in_flight: 4,
            retry_for: Duration::from_secs(600),
            flush_interval: Duration::from_secs(10),
            counters: Counters::default(),
        }
    }
}

/// What an [`InfluxWriter`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfluxStats {
    pub lines: u64,
    pub requests: u64,
    pub retries: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    lines: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    rejected: AtomicU64,
    /// The last barrier whose writes have all finished.
    durable: AtomicU64,
    /// Lines handed to the writer thread and not yet written (the queue depth).
    queued: AtomicU64,
    last_error: Mutex<Option<String>>,
    fatal: Mutex<Option<String>>,
    rejects: Mutex<Vec<RejectRow>>,
}

impl Shared {
    fn note(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Precision {
    Seconds,
    Nanos,
}

impl Precision {
    fn param(self) -> &'static str {
        match self {
            Precision::Seconds => "s",
            Precision::Nanos => "ns",
        }
    }
}

struct Batch {
    precision: Precision,
    lines: Vec<Vec<u8>>,
    /// A barrier: every batch sent before it must finish before it is recorded as durable.
    barrier: Option<u64>,
}

/// One per worker: encodes points, and writes them through its own thread.
pub struct InfluxWriter {
    cfg: InfluxConfig,
    seconds: Vec<Vec<u8>>,
    nanos: Vec<Vec<u8>>,
    tx: Option<tokio::sync::mpsc::Sender<Batch>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    last_flush: Instant,
    barriers: u64,
}

impl InfluxWriter {
    /// Starts the writer thread; the database and retention policy are created by it (retried
    /// like writes while InfluxDB is unreachable).
    pub fn new(cfg: InfluxConfig, worker: usize) -> Result<Self, SinkError> {
        let uri: hyper::Uri = cfg.url.parse().map_err(|e| SinkError::Influx {
            what: format!("invalid url {}", crate::notify::Origin(&cfg.url)),
            reason: format!("{e}"),
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(SinkError::Influx {
                what: format!("invalid url {}", crate::notify::Origin(&cfg.url)),
                reason: "expected http://host:port".into(),
            });
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(cfg.max_in_flight.max(1));
        let thread_cfg = cfg.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("influx-w{worker}"))
            .spawn(move || writer_thread(thread_cfg, rx, thread_shared, worker == 0))
            .map_err(|e| SinkError::Influx { what: "starting the writer thread".into(), reason: e.to_string() })?;
        Ok(InfluxWriter {
            cfg,
            seconds: Vec::new(),
            nanos: Vec::new(),
            tx: Some(tx),
            thread: Some(thread),
            shared,
            last_flush: Instant::now(),
            barriers: 0,
        })
    }

    fn check(&self) -> Result<(), SinkError> {
        match self.shared.fatal.lock().ok().and_then(|f| f.clone()) {
            Some(reason) => {
                Err(SinkError::Influx { what: format!("writing to {}", crate::notify::Origin(&self.cfg.url)), reason })
            }
            None => Ok(()),
        }
    }

    /// Encodes an item's points; sends a batch whenever `batch_lines` are buffered.
    pub fn push(&mut self, item: SinkItem) -> Result<(), SinkError> {
        self.check()?;
        match item {
            SinkItem::Aggregates(batch) => encode_window(&batch, &self.cfg.counters, &mut self.seconds),
            SinkItem::Groups(rows) => rows.iter().for_each(|r| self.seconds.push(encode_group(r))),
            SinkItem::Rankings(rows) => rows.iter().for_each(|r| self.seconds.push(encode_rank(r))),
            SinkItem::Health(rows) => rows.iter().for_each(|r| self.nanos.push(encode_health(r))),
            SinkItem::Late(rows) => rows.iter().for_each(|r| self.nanos.push(encode_late(r))),
            SinkItem::Rejects(rows) => rows.iter().for_each(|r| self.nanos.push(encode_reject(r))),
            SinkItem::Alarms(events) => events.iter().for_each(|e| self.nanos.push(encode_alarm(e))),
            // Registry records are not written to InfluxDB (see the module docs).
            SinkItem::Agents(_) => {}
        }
        while self.seconds.len() >= self.cfg.batch_lines {
            let rest = self.seconds.split_off(self.cfg.batch_lines);
            let lines = std::mem::replace(&mut self.seconds, rest);
            self.send(Precision::Seconds, lines)?;
        }
        while self.nanos.len() >= self.cfg.batch_lines {
            let rest = self.nanos.split_off(self.cfg.batch_lines);
            let lines = std::mem::replace(&mut self.nanos, rest);
            self.send(Precision::Nanos, lines)?;
        }
        Ok(())
    }

    fn send(&mut self, precision: Precision, lines: Vec<Vec<u8>>) -> Result<(), SinkError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.shared.queued.fetch_add(lines.len() as u64, Ordering::Relaxed);
        self.hand_over(Batch { precision, lines, barrier: None })
    }

    /// Gives a batch to the writer thread. Blocks while the writer is busy retrying:
    /// backpressure, not unbounded buffering.
    fn hand_over(&self, batch: Batch) -> Result<(), SinkError> {
        let tx =
            self.tx.as_ref().ok_or_else(|| SinkError::Influx { what: "send".into(), reason: "finished".into() })?;
        tx.blocking_send(batch).map_err(|_| SinkError::Influx {
            what: format!("writing to {}", crate::notify::Origin(&self.cfg.url)),
            reason: self.shared.fatal.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "writer stopped".into()),
        })
    }

    /// Sends everything buffered if `flush_interval` has passed.
    pub fn poll(&mut self, now: Instant) -> Result<(), SinkError> {
        self.check()?;
        if now.duration_since(self.last_flush) >= self.cfg.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.last_flush = Instant::now();
        let s = std::mem::take(&mut self.seconds);
        self.send(Precision::Seconds, s)?;
        let n = std::mem::take(&mut self.nanos);
        self.send(Precision::Nanos, n)
    }

    /// Sends everything buffered and returns a barrier number; see [`InfluxWriter::durable`].
    pub fn barrier(&mut self) -> Result<u64, SinkError> {
        self.flush()?;
        self.barriers += 1;
        self.hand_over(Batch { precision: Precision::Seconds, lines: Vec::new(), barrier: Some(self.barriers) })?;
        Ok(self.barriers)
    }

    /// The last barrier whose points InfluxDB has all accepted (or refused, into rejects).
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Lines handed to the writer thread and not yet written.
    pub fn queued_lines(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Lines InfluxDB refused (each with InfluxDB's reason), for the other sinks' `rejects`.
    pub fn take_rejects(&mut self) -> Vec<RejectRow> {
        self.shared.rejects.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    pub fn stats(&self) -> InfluxStats {
        InfluxStats {
            lines: self.shared.lines.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            last_error: self.shared.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Flushes, waits for every request to finish, and reports (with the lines InfluxDB refused).
    pub fn finish(mut self) -> Result<(InfluxStats, Vec<RejectRow>), SinkError> {
        let flushed = self.flush();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| SinkError::Influx { what: "writer thread".into(), reason: "panicked".into() })?;
        }
        flushed?;
        self.check()?;
        Ok((self.stats(), self.take_rejects()))
    }
}

impl Drop for InfluxWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn put_agent<B>(
    mut b: LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement>,
    key: &SeriesKey,
) -> LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement>
where
    B: bytes::BufMut,
{
    let a = &key.agent;
    for (k, v) in [
        ("cspType", &*a.csp_type),
        ("instance", &*key.instance),
        ("mcisId", &*a.mcis_id),
        ("nsId", &*a.ns_id),
        ("osType", &*a.os_type),
        ("vmId", &*a.vm_id),
    ] {
        // InfluxDB refuses empty tag values: an absent tag is simply left out.
        if !v.is_empty() {
            b = b.tag(k, v);
        }
    }
    b
}

/// ns, mcis, vm, csp, os, measurement, instance: what makes one point.
type PointKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

/// One point per (agent, measurement, instance) of the window: `<field>` = mean, `<field>_min`,
/// `<field>_max`, `<field>_last`, for counters `<field>_rate` (when the window has a rate), and
/// `count`; timestamp = window start in seconds.
fn encode_window(batch: &WindowBatch, counters: &Counters, out: &mut Vec<Vec<u8>>) {
    let mut groups: BTreeMap<PointKey<'_>, Vec<(&SeriesKey, &Agg)>> = BTreeMap::new();
    for (k, a) in &batch.rows {
        let ag = &k.agent;
        groups
            .entry((&ag.ns_id, &ag.mcis_id, &ag.vm_id, &ag.csp_type, &ag.os_type, &k.measurement, &k.instance))
            .or_default()
            .push((k, a));
    }
    let ts = batch.window_start.div_euclid(1_000_000_000);
    for rows in groups.values() {
        let (first, _) = rows[0];
        let b = put_agent(LineProtocolBuilder::new_with(Vec::new()).measurement(&first.measurement), first);
        // InfluxDB 1.x has no unsigned fields: count is an integer.
        let count = rows.iter().map(|(_, a)| a.count).max().unwrap_or(0).min(i64::MAX as u64) as i64;
        let mut fields = b.field("count", count);
        for (k, a) in rows {
            let f = &*k.field;
            fields = fields
                .field(f, a.mean())
                .field(&format!("{f}_min"), a.min)
                .field(&format!("{f}_max"), a.max)
                .field(&format!("{f}_last"), a.last);
            if let Some(rate) = a.rate().filter(|_| counters.is_counter(&k.measurement, f)) {
                fields = fields.field(&format!("{f}_rate"), rate);
            }
        }
        out.push(trim_newline(fields.timestamp(ts).close_line().build()));
    }
}

/// Adds the tags in the order given (sorted by key, as InfluxDB prefers), leaving out empty values,
/// which InfluxDB refuses.
fn put_tags<B: bytes::BufMut>(
    mut b: LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement>,
    tags: &[(&str, &str)],
) -> LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement> {
    for (k, v) in tags {
        if !v.is_empty() {
            b = b.tag(k, v);
        }
    }
    b
}

/// `dragonflow_groups,group_id=…,level=…,metric=… value=…,vm_count=…i <window start, s>`.
fn encode_group(r: &GroupRow) -> Vec<u8> {
    let b = LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_groups");
    let b = put_tags(b, &[("group_id", &r.group_id), ("level", &r.level), ("metric", &r.metric)]);
    let vm_count = r.vm_count.min(i64::MAX as u64) as i64;
    let line = b.field("value", r.value).field("vm_count", vm_count);
    trim_newline(line.timestamp(r.window_start.div_euclid(1_000_000_000)).close_line().build())
}

/// `dragonflow_rankings,level=…,metric=…,order=…,rank=… group_id="…",value=… <window start, s>`.
fn encode_rank(r: &RankRow) -> Vec<u8> {
    let b = LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_rankings");
    let rank = r.rank.to_string();
    let b = put_tags(b, &[("level", &r.level), ("metric", &r.metric), ("order", &r.order), ("rank", &rank)]);
    let line = b.field("group_id", r.group_id.as_str()).field("value", r.value);
    trim_newline(line.timestamp(r.window_start.div_euclid(1_000_000_000)).close_line().build())
}

/// `dragonflow_agent_health,cspType=…,mcisId=…,nsId=…,vmId=… from="…",to="…",reason="…" <time, ns>`,
/// with the agent tags named as on every other point.
fn encode_health(r: &HealthRow) -> Vec<u8> {
    let b = LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_agent_health");
    let b = put_tags(b, &[("cspType", &r.csp_type), ("mcisId", &r.mcis_id), ("nsId", &r.ns_id), ("vmId", &r.vm_id)]);
    let line = b.field("from", r.from.as_str()).field("to", r.to.as_str()).field("reason", r.reason.as_str());
    trim_newline(line.timestamp(r.time).close_line().build())
}

/// `dragonflow_alarms,level=…,previous_level=…,rule=…,target=… id="…",message="…",value=…,threshold=…
/// <time, ns>`: one point per event, so a replayed event overwrites itself. `value` and
/// `threshold` are left out when absent (NODATA) — and when not finite, which InfluxDB refuses.
fn encode_alarm(e: &AlarmEvent) -> Vec<u8> {
    let b = LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_alarms");
    let b = put_tags(
        b,
        &[("level", &e.level), ("previous_level", &e.previous_level), ("rule", &e.rule), ("target", &e.target)],
    );
    let mut line = b.field("id", e.id.as_str()).field("message", e.message.as_str());
    for (name, value) in [("value", e.value), ("threshold", e.threshold)] {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            line = line.field(name, v);
        }
    }
    trim_newline(line.timestamp(e.time).close_line().build())
}

fn trim_newline(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

fn origin_tags<B: bytes::BufMut>(
    b: LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement>,
    o: &Origin,
) -> LineProtocolBuilder<B, influxdb_line_protocol::builder::AfterMeasurement> {
    let b = if o.source.is_empty() { b } else { b.tag("source", &o.source) };
    b.tag("partition", &o.partition.to_string())
}

fn encode_late(r: &LateRow) -> Vec<u8> {
    let key = SeriesKey::new(r.agent.clone(), r.measurement.clone(), r.instance.clone(), r.field.clone());
    let mut b = put_agent(LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_late"), &key);
    b = b.tag("field", &r.field).tag("measurement", &r.measurement);
    let b = origin_tags(b, &r.origin);
    let line = b.field("value", r.value).field("watermark", r.watermark).field("position", r.origin.position);
    trim_newline(line.timestamp(r.timestamp).close_line().build())
}

fn encode_reject(r: &RejectRow) -> Vec<u8> {
    let b = origin_tags(LineProtocolBuilder::new_with(Vec::new()).measurement("dragonflow_rejects"), &r.origin);
    let line =
        b.field("reason", r.reason.as_str()).field("payload", r.payload.as_str()).field("position", r.origin.position);
    trim_newline(line.timestamp(r.received_at).close_line().build())
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn writer_thread(cfg: InfluxConfig, mut rx: tokio::sync::mpsc::Receiver<Batch>, shared: Arc<Shared>, create: bool) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            if let Ok(mut f) = shared.fatal.lock() {
                *f = Some(format!("starting the runtime: {e}"));
            }
            return;
        }
    };
    runtime.block_on(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let ctx = Arc::new(Ctx { cfg, client, shared });
        if create {
            if let Err(e) = ctx.create_database().await {
                ctx.fail(e);
            }
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(ctx.cfg.max_in_flight.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(batch) = rx.recv().await {
            if let Some(n) = batch.barrier {
                while tasks.join_next().await.is_some() {}
                if ctx.shared.fatal.lock().map(|f| f.is_none()).unwrap_or(false) {
                    ctx.shared.durable.store(n, Ordering::Release);
                }
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let n = batch.lines.len() as u64;
                if let Err(e) = ctx.write(batch.precision, batch.lines).await {
                    ctx.fail(e);
                }
                ctx.shared.queued.fetch_sub(n, Ordering::Relaxed);
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
}

struct Ctx {
    cfg: InfluxConfig,
    client: HttpClient,
    shared: Arc<Shared>,
}

enum Outcome {
    Ok,
    Retry(String),
    Refused(String),
}

impl Ctx {
    fn fail(&self, e: String) {
        self.shared.note(&e);
        if let Ok(mut f) = self.shared.fatal.lock() {
            f.get_or_insert(e);
        }
    }

    /// `url?k=v&…` with credentials as query parameters; never logged.
    fn uri(&self, path: &str, params: &[(&str, &str)]) -> String {
        let mut q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        if let Some(u) = &self.cfg.username {
            q.push(format!("u={}", encode(u)));
        }
        if let Some(p) = &self.cfg.password {
            q.push(format!("p={}", encode(p)));
        }
        format!("{}{path}?{}", self.cfg.url.trim_end_matches('/'), q.join("&"))
    }

    async fn request(&self, uri: String, body: Bytes, gzip: bool) -> Outcome {
        let mut req = Request::builder().method(Method::POST).uri(uri);
        if gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        let req = match req.header("Content-Type", "text/plain; charset=utf-8").body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(format!("building the request: {e}")),
        };
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(self.cfg.timeout, async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await;
        match answer {
            Err(_) => Outcome::Retry(format!("timed out after {:?}", self.cfg.timeout)),
            Ok(Err(e)) => Outcome::Retry(format!("connection failed: {e}")),
            Ok(Ok((status, body))) if status.is_success() => {
                let _ = body;
                Outcome::Ok
            }
            Ok(Ok((status, body))) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                Outcome::Retry(format!("HTTP {status}: {}", body.trim()))
            }
            Ok(Ok((status, body))) => Outcome::Refused(format!("HTTP {status}: {}", body.trim())),
        }
    }

    /// Sends with retries (exponential backoff with jitter) for up to `retry_for`.
    async fn send_retrying(&self, uri: &str, body: Bytes, gzip: bool) -> Result<Option<String>, String> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.request(uri.to_string(), body.clone(), gzip).await {
                Outcome::Ok => return Ok(None),
                Outcome::Refused(reason) => return Ok(Some(reason)),
                Outcome::Retry(reason) => {
                    self.shared.note(&reason);
                    if started.elapsed() >= self.cfg.retry_for {
                        return Err(format!(
                            "InfluxDB at {} still failing after {:?}: {reason}",
                            crate::notify::Origin(&self.cfg.url),
                            self.cfg.retry_for
                        ));
                    }
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    let jitter = rand::random_range(0.5..1.5);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn create_database(&self) -> Result<(), String> {
        let db = quote_ident(&self.cfg.database);
        let rp = quote_ident(&self.cfg.retention_policy);
        let d = &self.cfg.retention;
        let statements = [
            format!("CREATE DATABASE {db}"),
            format!("CREATE RETENTION POLICY {rp} ON {db} DURATION {d} REPLICATION 1 DEFAULT"),
        ];
        for q in statements {
            let uri = self.uri("/query", &[("q", &q)]);
            if let Some(reason) = self.send_retrying(&uri, Bytes::new(), false).await? {
                return Err(format!("{q}: {reason}"));
            }
        }
        // An existing policy keeps its settings unless altered: make it match the spec.
        let q = format!("ALTER RETENTION POLICY {rp} ON {db} DURATION {d} DEFAULT");
        let uri = self.uri("/query", &[("q", &q)]);
        if let Some(reason) = self.send_retrying(&uri, Bytes::new(), false).await? {
            return Err(format!("{q}: {reason}"));
        }
        Ok(())
    }

    /// Writes lines; a refused batch is split in two until the refused lines are found.
    async fn write(&self, precision: Precision, lines: Vec<Vec<u8>>) -> Result<(), String> {
        let mut stack = vec![lines];
        while let Some(lines) = stack.pop() {
            let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for l in &lines {
                body.extend_from_slice(l);
                body.push(b'\n');
            }
            let body = if self.cfg.gzip {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&body).and_then(|_| enc.finish()).map_err(|e| format!("gzip: {e}"))?
            } else {
                body
            };
            let uri = self.uri(
                "/write",
                &[("db", &self.cfg.database), ("rp", &self.cfg.retention_policy), ("precision", precision.param())],
            );
            match self.send_retrying(&uri, Bytes::from(body), self.cfg.gzip).await? {
                None => {
                    self.shared.lines.fetch_add(lines.len() as u64, Ordering::Relaxed);
                }
                Some(reason) if lines.len() == 1 => {
                    self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    self.shared.note(&reason);
                    let row = RejectRow::new(
                        Origin { source: "influxdb".into(), partition: 0, position: 0 },
                        format!("InfluxDB refused the point: {reason}"),
                        &lines[0],
                        now_ns(),
                    );
                    if let Ok(mut r) = self.shared.rejects.lock() {
                        r.push(row);
                    }
                }
                Some(_) => {
                    let mut lines = lines;
                    let second = lines.split_off(lines.len() / 2);
                    stack.push(second);
                    stack.push(lines);
                }
            }
        }
        Ok(())
    }
}

use operators::time::wall_ns as now_ns;

/// InfluxQL identifier in double quotes.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Percent-encoding for query parameters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use operators::model::AgentTags;

    fn key(vm: &str, m: &str, inst: &str, f: &str) -> SeriesKey {
        let agent = Arc::new(AgentTags {
            ns_id: "ns 1".into(),
            mcis_id: "m,1".into(),
            vm_id: vm.into(),
            csp_type: "aws".into(),
            os_type: "".into(),
        });
        SeriesKey::new(agent, m.into(), inst.into(), f.into())
    }

    #[test]
    fn one_point_per_agent_measurement_instance() {
        let mut a = Agg::of(1, 0, 2.0);
        a.add(2, 1, 4.0);
        let batch = WindowBatch {
            window_start: 1_700_000_000_000_000_000,
            window_end: 1_700_000_010_000_000_000,
            rows: vec![
                (key("vm-1", "cpu", "cpu-total", "usage_idle"), a),
                (key("vm-1", "cpu", "cpu-total", "usage_user"), Agg::of(1, 0, 1.5)),
                (key("vm-2", "cpu", "", "usage_idle"), Agg::of(1, 0, 9.0)),
            ],
        };
        let mut out = Vec::new();
        encode_window(&batch, &Counters::default(), &mut out);
        let text: Vec<String> = out.iter().map(|l| String::from_utf8(l.clone()).unwrap()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert_eq!(
            text[0],
            "cpu,cspType=aws,instance=cpu-total,mcisId=m\\,1,nsId=ns\\ 1,vmId=vm-1 count=2i,usage_idle=3,usage_idle_min=2,usage_idle_max=4,usage_idle_last=4,usage_user=1.5,usage_user_min=1.5,usage_user_max=1.5,usage_user_last=1.5 1700000000"
        );
        // The lines parse back with InfluxDB's own parser.
        text.iter().for_each(|l| parses(l));
        assert!(text[1].starts_with("cpu,cspType=aws,mcisId=m\\,1,nsId=ns\\ 1,vmId=vm-2 "), "{}", text[1]);
    }

    #[test]
    fn late_and_rejects_encode() {
        let origin = Origin { source: "metrics".into(), partition: 3, position: 42 };
        let late = LateRow {
            agent: key("vm-1", "mem", "", "used").agent,
            measurement: "mem".into(),
            instance: "".into(),
            field: "used".into(),
            timestamp: 5,
            value: 1.0,
            watermark: 7,
            origin: origin.clone(),
        };
        let l = String::from_utf8(encode_late(&late)).unwrap();
        assert!(l.starts_with("dragonflow_late,"), "{l}");
        assert!(l.ends_with(" 5"), "{l}");
        let r = RejectRow::new(origin, "bad \"x\"", b"a b\nc", 9);
        let l = String::from_utf8(encode_reject(&r)).unwrap();
        assert!(influxdb_line_protocol::parse_lines(&l).all(|p| p.is_ok()), "{l}");
    }

    fn parses(line: &str) {
        let parsed: Vec<_> = influxdb_line_protocol::parse_lines(line).collect();
        assert!(parsed.len() == 1 && parsed[0].is_ok(), "{line}: {parsed:?}");
    }

    #[test]
    fn counter_points_get_a_rate() {
        let mut bytes = Agg::of(1_700_000_000_000_000_000, 0, 100.0);
        bytes.add(1_700_000_004_000_000_000, 1, 300.0);
        let batch = WindowBatch {
            window_start: 1_700_000_000_000_000_000,
            window_end: 1_700_000_010_000_000_000,
            rows: vec![
                (key("vm-1", "net", "eth0", "bytes_recv"), bytes),
                // One timestamp: no rate.
                (key("vm-1", "net", "eth0", "bytes_sent"), Agg::of(1_700_000_000_000_000_000, 0, 5.0)),
                (key("vm-1", "cpu", "", "usage_idle"), bytes),
            ],
        };
        let mut out = Vec::new();
        encode_window(&batch, &Counters::default(), &mut out);
        let text: Vec<String> = out.iter().map(|l| String::from_utf8(l.clone()).unwrap()).collect();
        assert_eq!(
            text,
            [
                "cpu,cspType=aws,mcisId=m\\,1,nsId=ns\\ 1,vmId=vm-1 count=2i,usage_idle=200,usage_idle_min=100,usage_idle_max=300,usage_idle_last=300 1700000000",
                "net,cspType=aws,instance=eth0,mcisId=m\\,1,nsId=ns\\ 1,vmId=vm-1 count=2i,bytes_recv=200,bytes_recv_min=100,bytes_recv_max=300,bytes_recv_last=300,bytes_recv_rate=50,bytes_sent=5,bytes_sent_min=5,bytes_sent_max=5,bytes_sent_last=5 1700000000",
            ]
        );
        text.iter().for_each(|l| parses(l));
        // Other counters: cpu.usage_idle gets a rate, net does not.
        let mut out = Vec::new();
        encode_window(&batch, &Counters::new(["cpu.usage_idle"]), &mut out);
        let text: Vec<String> = out.iter().map(|l| String::from_utf8(l.clone()).unwrap()).collect();
        assert!(text[0].contains(",usage_idle_rate=50 "), "{}", text[0]);
        assert!(!text[1].contains("_rate"), "{}", text[1]);
    }

    #[test]
    fn groups_rankings_and_health_encode() {
        let group = GroupRow {
            window_start: 1_700_000_000_000_000_000,
            window_end: 1_700_000_010_000_000_000,
            level: "mcis".into(),
            group_id: "ns 1/m,1".into(),
            metric: "cpu_util_mean".into(),
            value: 42.5,
            vm_count: 3,
        };
        let l = String::from_utf8(encode_group(&group)).unwrap();
        assert_eq!(
            l,
            "dragonflow_groups,group_id=ns\\ 1/m\\,1,level=mcis,metric=cpu_util_mean value=42.5,vm_count=3i 1700000000"
        );
        parses(&l);

        let rank = RankRow {
            window_start: 1_700_000_000_000_000_000,
            window_end: 1_700_000_010_000_000_000,
            level: "csp".into(),
            metric: "mem_util_mean".into(),
            order: "bottom".into(),
            rank: 2,
            group_id: "aws \"east\"".into(),
            value: 7.0,
        };
        let l = String::from_utf8(encode_rank(&rank)).unwrap();
        assert_eq!(
            l,
            "dragonflow_rankings,level=csp,metric=mem_util_mean,order=bottom,rank=2 group_id=\"aws \\\"east\\\"\",value=7 1700000000"
        );
        parses(&l);

        let health = HealthRow {
            time: 1_700_000_040_000_000_123,
            ns_id: "ns-1".into(),
            mcis_id: "".into(),
            vm_id: "vm-1".into(),
            csp_type: "aws".into(),
            from: "healthy".into(),
            to: "unhealthy".into(),
            reason: "no data for 3 windows".into(),
        };
        let l = String::from_utf8(encode_health(&health)).unwrap();
        assert_eq!(
            l,
            "dragonflow_agent_health,cspType=aws,nsId=ns-1,vmId=vm-1 from=\"healthy\",to=\"unhealthy\",reason=\"no data for 3 windows\" 1700000040000000123"
        );
        parses(&l);
    }

    /// Group and ranking points share the aggregates' precision (seconds), health points the late
    /// rows' (nanoseconds); registry rows are not written.
    #[test]
    fn items_go_to_their_precision() {
        let cfg = InfluxConfig { retry_for: Duration::ZERO, ..InfluxConfig::new("http://127.0.0.1:1", "db") };
        let mut w = InfluxWriter::new(cfg, 1).expect("writer");
        let group = GroupRow {
            window_start: 0,
            window_end: 10,
            level: "ns".into(),
            group_id: "ns-1".into(),
            metric: "processes".into(),
            value: 1.0,
            vm_count: 1,
        };
        let rank = RankRow {
            window_start: 0,
            window_end: 10,
            level: "ns".into(),
            metric: "cpu_util_mean".into(),
            order: "top".into(),
            rank: 1,
            group_id: "ns-1".into(),
            value: 1.0,
        };
        let health = HealthRow {
            time: 5,
            ns_id: "ns-1".into(),
            mcis_id: "m".into(),
            vm_id: "vm".into(),
            csp_type: "aws".into(),
            from: "unknown".into(),
            to: "healthy".into(),
            reason: "first data".into(),
        };
        let agent = operators::model::AgentRow {
            time: 0,
            record: operators::registry::AgentRecord::default(),
            first_seen: None,
            last_seen: None,
            health: "unknown".into(),
            deleted: false,
        };
        w.push(SinkItem::Groups(vec![group.clone(), group])).expect("push");
        w.push(SinkItem::Rankings(vec![rank])).expect("push");
        w.push(SinkItem::Health(vec![health])).expect("push");
        w.push(SinkItem::Agents(vec![agent])).expect("push");
        assert_eq!((w.seconds.len(), w.nanos.len()), (3, 1));
        assert!(w
            .seconds
            .iter()
            .all(|l| l.starts_with(b"dragonflow_groups,") || l.starts_with(b"dragonflow_rankings,")));
        assert!(w.nanos[0].starts_with(b"dragonflow_agent_health,"));
        w.seconds.clear();
        w.nanos.clear();
    }

    fn alarm(target: &str, value: Option<f64>, threshold: Option<f64>, message: &str) -> AlarmEvent {
        AlarmEvent {
            id: "0123456789abcdef".into(),
            time: 1_700_000_010_000_000_007,
            rule: "cpu high".into(),
            target: target.into(),
            level: "CRITICAL".into(),
            previous_level: "WARNING".into(),
            value,
            threshold,
            message: message.into(),
            handlers: vec!["slack".into()],
        }
    }

    #[test]
    fn alarms_encode_one_point_per_event() {
        let e = alarm("ns 1/m,1", Some(97.5), Some(90.0), "cpu at 97.5, \"over\" 90");
        let l = String::from_utf8(encode_alarm(&e)).unwrap();
        assert_eq!(
            l,
            "dragonflow_alarms,level=CRITICAL,previous_level=WARNING,rule=cpu\\ high,target=ns\\ 1/m\\,1 \
             id=\"0123456789abcdef\",message=\"cpu at 97.5, \\\"over\\\" 90\",value=97.5,threshold=90 1700000010000000007"
        );
        parses(&l);
        let parsed = influxdb_line_protocol::parse_lines(&l).next().unwrap().unwrap();
        assert_eq!(parsed.series.tag_set.as_ref().map(|t| t.len()), Some(4));
        assert_eq!(parsed.timestamp, Some(1_700_000_010_000_000_007));

        // NODATA: no value, no threshold; an empty tag is left out.
        let e = AlarmEvent { level: "NODATA".into(), previous_level: "".into(), ..alarm("vm-1", None, None, "") };
        let l = String::from_utf8(encode_alarm(&e)).unwrap();
        assert_eq!(
            l,
            "dragonflow_alarms,level=NODATA,rule=cpu\\ high,target=vm-1 id=\"0123456789abcdef\",message=\"\" \
             1700000010000000007"
        );
        parses(&l);
        let l = String::from_utf8(encode_alarm(&alarm("vm-1", Some(f64::NAN), Some(1.0), "m"))).unwrap();
        assert!(!l.contains("value=") && l.contains(",threshold=1 "), "{l}");
        parses(&l);
    }

    #[test]
    fn alarms_go_to_nanosecond_points() {
        let cfg = InfluxConfig { retry_for: Duration::ZERO, ..InfluxConfig::new("http://127.0.0.1:1", "db") };
        let mut w = InfluxWriter::new(cfg, 1).expect("writer");
        w.push(SinkItem::Alarms(vec![alarm("vm-1", Some(1.0), None, "a"), alarm("vm-2", None, None, "b")]))
            .expect("push");
        assert_eq!((w.seconds.len(), w.nanos.len()), (0, 2));
        assert!(w.nanos.iter().all(|l| l.starts_with(b"dragonflow_alarms,")));
        w.nanos.clear();
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode("a b&c=\"d\""), "a%20b%26c%3D%22d%22");
        assert_eq!(quote_ident("cb\"mon"), "\"cb\\\"mon\"");
    }
}

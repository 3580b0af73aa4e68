//! The sink operator: every worker hands the window results, late values and rejects it holds
//! to each configured sink. Writers run off the hot path (their own threads behind bounded
//! channels); this operator only buffers, asks them to flush on time, and finishes them when
//! its input is complete.
//!
//! It also tells the job what is durable. It holds a capability on an empty output stream and
//! sets barriers in its writers (after each window, or every flush interval); once every
//! writer has passed a barrier, the capability moves up to the input frontier of the moment the
//! barrier was set. The frontier of the output, seen through a probe, is therefore the
//! *durable frontier*: every window ending before it is written by every sink of every worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::model::SinkItem;
use operators::window::Time;
use sinks::influx::InfluxWriter;
use sinks::lake::LakeWriter;
use sinks::SinkError;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

use crate::metrics::{JobMetrics, SinkStatus};

/// One configured sink of one worker.
pub enum Writer {
    Lake(Box<LakeWriter>),
    Influx(Box<InfluxWriter>),
}

/// What one sink wrote.
#[derive(Clone, Debug, Default)]
pub struct SinkSummary {
    pub kind: &'static str,
    pub files: u64,
    pub rows: u64,
}

impl Writer {
    fn push(&mut self, item: SinkItem) -> Result<(), SinkError> {
        match self {
            Writer::Lake(w) => w.push(item),
            Writer::Influx(w) => w.push(item),
        }
    }

    fn poll(&mut self, now: Instant) -> Result<(), SinkError> {
        match self {
            Writer::Lake(w) => w.poll(now),
            Writer::Influx(w) => w.poll(now),
        }
    }

    /// Records the sink itself refused (InfluxDB's 4xx lines), for the other sinks' rejects.
    fn take_rejects(&mut self) -> Vec<operators::model::RejectRow> {
        match self {
            Writer::Lake(_) => Vec::new(),
            Writer::Influx(w) => w.take_rejects(),
        }
    }

    /// Finishes the sink; returns what it wrote and the records it refused at the last moment.
    fn finish(self) -> Result<(SinkSummary, Vec<operators::model::RejectRow>), SinkError> {
        match self {
            Writer::Lake(w) => {
                w.finish().map(|s| (SinkSummary { kind: "parquet", files: s.files, rows: s.rows }, Vec::new()))
            }
            Writer::Influx(w) => {
                w.finish().map(|(s, r)| (SinkSummary { kind: "influxdb", files: 0, rows: s.lines }, r))
            }
        }
    }

    fn is_lake(&self) -> bool {
        matches!(self, Writer::Lake(_))
    }

    fn barrier(&mut self) -> Result<u64, SinkError> {
        match self {
            Writer::Lake(w) => w.barrier(),
            Writer::Influx(w) => w.barrier(),
        }
    }

    fn durable(&self) -> u64 {
        match self {
            Writer::Lake(w) => w.durable(),
            Writer::Influx(w) => w.durable(),
        }
    }

    fn status(&self, worker: usize) -> SinkStatus {
        match self {
            Writer::Lake(w) => SinkStatus {
                kind: "parquet",
                worker,
                queued: w.buffered_rows() as u64,
                last_error: w.stats().last_error,
            },
            Writer::Influx(w) => {
                SinkStatus { kind: "influxdb", worker, queued: w.queued_lines(), last_error: w.stats().last_error }
            }
        }
    }
}

/// What the sinks of one worker ended with.
pub type SinkOutcome = Rc<RefCell<Option<Result<Vec<SinkSummary>, String>>>>;

/// How often the sink looks at its writers' progress at most.
const MAX_TICK: Duration = Duration::from_millis(200);

/// Attaches `writers` to `stream`. When the stream ends, the writers are finished and the
/// outcome stored in `outcome`. The returned stream carries nothing; with `barriers` its
/// frontier is the durable frontier (see the [module docs](self)), without it everything
/// becomes durable at the end.
pub fn lake_sink<'scope>(
    stream: Stream<'scope, Time, Vec<SinkItem>>,
    writers: Vec<Writer>,
    flush_interval: Duration,
    metrics: Arc<JobMetrics>,
    outcome: SinkOutcome,
    barriers: bool,
) -> Stream<'scope, Time, Vec<()>> {
    let scope = stream.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let mut input = builder.new_input(stream, Pipeline);
    let (_output, durable) = builder.new_output::<Vec<()>>();
    builder.build(move |mut caps| {
        let mut writers = Some(writers);
        let mut error: Option<String> = None;
        // When the next timer activation is due; one is always pending while the sink is open,
        // so buffered rows are flushed on time even when no more input arrives.
        let mut timer: Option<Instant> = None;
        // Held at the durable frontier of this worker's sinks.
        let mut held = caps.pop();
        // Barriers set and not yet passed by every writer: their numbers, and the input
        // frontier when they were set.
        let mut pending: VecDeque<(Vec<u64>, Time)> = VecDeque::new();
        let mut last_barrier = Instant::now();
        let mut barrier_frontier: Time = 0;
        let mut windows_since_barrier = false;
        let tick = (flush_interval / 2).clamp(Duration::from_millis(100), MAX_TICK);
        move |frontiers| {
            let Some(ws) = writers.as_mut() else {
                input.for_each(|_, data| data.clear());
                return;
            };
            input.for_each(|_cap, data| {
                for item in data.drain(..) {
                    if matches!(item, SinkItem::Aggregates(_)) {
                        windows_since_barrier = true;
                    }
                    let Some((last, others)) = ws.split_last_mut() else { continue };
                    for w in others {
                        if let Err(e) = w.push(item.clone()) {
                            error.get_or_insert(e.to_string());
                        }
                    }
                    if let Err(e) = last.push(item) {
                        error.get_or_insert(e.to_string());
                    }
                }
            });
            // Points a sink refused go to the other sinks' rejects, so nothing vanishes.
            for i in 0..ws.len() {
                let rejects = ws[i].take_rejects();
                if rejects.is_empty() {
                    continue;
                }
                metrics.rejects.fetch_add(rejects.len() as u64, Ordering::Relaxed);
                for (j, w) in ws.iter_mut().enumerate() {
                    if j != i {
                        if let Err(e) = w.push(SinkItem::Rejects(rejects.clone())) {
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
            }
            let now = Instant::now();
            for w in ws.iter_mut() {
                if let Err(e) = w.poll(now) {
                    error.get_or_insert(e.to_string());
                }
            }
            // A barrier after each window, or every flush interval while time moves.
            let frontier = frontiers[0].frontier().iter().min().copied();
            if let Some(f) = frontier.filter(|_| barriers) {
                let due = windows_since_barrier || now.duration_since(last_barrier) >= flush_interval;
                if error.is_none() && f > barrier_frontier && due {
                    let mut seqs = Vec::with_capacity(ws.len());
                    for w in ws.iter_mut() {
                        match w.barrier() {
                            Ok(n) => seqs.push(n),
                            Err(e) => {
                                error.get_or_insert(e.to_string());
                            }
                        }
                    }
                    if seqs.len() == ws.len() {
                        pending.push_back((seqs, f));
                    }
                    barrier_frontier = f;
                    last_barrier = now;
                    windows_since_barrier = false;
                }
            }
            while let Some((seqs, f)) = pending.front() {
                if !ws.iter().zip(seqs).all(|(w, n)| w.durable() >= *n) {
                    break;
                }
                if let Some(cap) = held.as_mut() {
                    if *f > *cap.time() {
                        cap.downgrade(f);
                    }
                }
                pending.pop_front();
            }
            if timer.is_none_or(|t| t <= now) {
                activator.activate_after(tick);
                timer = Some(now + tick);
                // The sinks' state for the job's status, once per tick rather than per batch.
                for (i, w) in ws.iter().enumerate() {
                    metrics.set_sink(worker, i, w.status(worker));
                }
            }
            if frontiers[0].is_empty() {
                let mut stats = Vec::new();
                // Remote sinks first: what they refuse while finishing still reaches the lake.
                let (lakes, others): (Vec<Writer>, Vec<Writer>) =
                    writers.take().into_iter().flatten().partition(|w| w.is_lake());
                let mut late_rejects = Vec::new();
                for w in others {
                    match w.finish() {
                        Ok((s, r)) => {
                            late_rejects.extend(r);
                            stats.push(s)
                        }
                        Err(e) => {
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
                metrics.rejects.fetch_add(late_rejects.len() as u64, Ordering::Relaxed);
                for mut w in lakes {
                    if !late_rejects.is_empty() {
                        if let Err(e) = w.push(SinkItem::Rejects(late_rejects.clone())) {
                            error.get_or_insert(e.to_string());
                        }
                    }
                    match w.finish() {
                        Ok((s, _)) => {
                            metrics.files.fetch_add(s.files, Ordering::Relaxed);
                            stats.push(s)
                        }
                        Err(e) => {
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
                let result = match error.take() {
                    Some(e) => {
                        metrics.error(e.clone());
                        Err(e)
                    }
                    None => Ok(stats),
                };
                *outcome.borrow_mut() = Some(result);
                held = None;
            }
        }
    });
    durable
}

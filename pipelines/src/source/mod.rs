//! Sources: where messages come from, and the timely operator that turns them into stamped
//! observation batches.
//!
//! A [`Reader`] reads messages from its partitions into an [`Ingest`]; the source operator
//! holds a capability at the worker's watermark + 1, emits each window's observations at the
//! time of the window's end, sends late values and rejects to the sinks, and downgrades its
//! capabilities as the watermark advances. Dropping the capabilities (end of input or stop)
//! is what closes the remaining windows downstream.

pub mod file;
pub mod kafka;
pub mod pull;
pub mod registry;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::checkpoint::PartitionCheckpoint;
use operators::ingest::Ingest;
use operators::model::{ObservationBatch, SinkItem};
use operators::time::Watermarks;
use operators::window::Time;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};

use crate::checkpoint::{Coordinator, FinalContribution, FinalPartition};
use crate::metrics::{JobMetrics, PartitionStatus};

/// What a call to [`Reader::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Read a full budget: call again at once.
    Busy,
    /// Nothing more right now: call again a little later.
    Idle,
    /// Every partition is finished (end of file, end offsets reached, or stop requested).
    Done,
}

/// Where a reader is in one of its partitions.
#[derive(Clone, Debug)]
pub struct PartitionPosition {
    pub source: Arc<str>,
    pub partition: i32,
    /// The partition's watermark slot.
    pub slot: usize,
    /// The offset after the last record read (or where reading resumes), if known.
    pub next: Option<i64>,
    /// Records the broker holds beyond `next` (consumer lag), when known.
    pub lag: Option<i64>,
}

/// Reads messages from a worker's share of a source.
pub trait Reader {
    /// Reads up to `budget` messages into `ingest`. Partitions register with `watermarks`.
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus;

    /// The partitions read so far (replayable sources only).
    fn positions(&self) -> Vec<PartitionPosition> {
        Vec::new()
    }

    /// Records a checkpoint's offsets where the source keeps them (a consumer group).
    fn commit(&mut self, _partitions: &[PartitionCheckpoint]) {}

    /// Changes of agents' health the source judged itself (pull agents that stop answering).
    fn take_health(&mut self) -> Vec<operators::model::HealthRow> {
        Vec::new()
    }

    /// How polling goes (pull sources only).
    fn pull_stats(&self) -> Option<pull::PullStats> {
        None
    }
}

/// A source a job may or may not have: none is done from the start.
impl<R: Reader> Reader for Option<R> {
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        match self {
            Some(r) => r.read(ingest, watermarks, budget, now),
            None => ReadStatus::Done,
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        self.as_ref().map(R::positions).unwrap_or_default()
    }

    fn commit(&mut self, partitions: &[PartitionCheckpoint]) {
        if let Some(r) = self {
            r.commit(partitions);
        }
    }

    fn take_health(&mut self) -> Vec<operators::model::HealthRow> {
        self.as_mut().map(R::take_health).unwrap_or_default()
    }

    fn pull_stats(&self) -> Option<pull::PullStats> {
        self.as_ref().and_then(R::pull_stats)
    }
}

/// Two sources read by one worker into the same windows and watermarks (Kafka or a file, and
/// the pull agents). Done when both are.
pub struct Both<A, B> {
    pub first: A,
    pub second: B,
}

impl<A: Reader, B: Reader> Reader for Both<A, B> {
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus {
        let a = self.first.read(ingest, watermarks, budget, now);
        let b = self.second.read(ingest, watermarks, budget, now);
        match (a, b) {
            (ReadStatus::Done, ReadStatus::Done) => ReadStatus::Done,
            (ReadStatus::Busy, _) | (_, ReadStatus::Busy) => ReadStatus::Busy,
            _ => ReadStatus::Idle,
        }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        let mut all = self.first.positions();
        all.extend(self.second.positions());
        all
    }

    fn commit(&mut self, partitions: &[PartitionCheckpoint]) {
        self.first.commit(partitions);
        self.second.commit(partitions);
    }

    fn pull_stats(&self) -> Option<pull::PullStats> {
        self.first.pull_stats().or_else(|| self.second.pull_stats())
    }

    fn take_health(&mut self) -> Vec<operators::model::HealthRow> {
        let mut all = self.first.take_health();
        all.extend(self.second.take_health());
        all
    }
}

/// What the source operator needs to take part in checkpoints.
pub struct SourceCheckpoints {
    pub coordinator: Arc<Coordinator>,
    /// The durable frontier: the sinks' output.
    pub probe: ProbeHandle<Time>,
    /// This worker's index within its process.
    pub local_index: usize,
}

/// How often the source publishes its partitions' state to the job's metrics.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How often the source looks at the durable frontier.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

struct CheckpointState {
    cp: SourceCheckpoints,
    next_check: Instant,
    contributed: u64,
    committed: u64,
}

impl CheckpointState {
    /// Takes part in checkpoints; returns the epoch and frontier of a checkpoint newly written.
    fn step<R: Reader>(
        &mut self,
        reader: &mut R,
        ingest: &mut Ingest,
        watermarks: &Watermarks,
        now: Instant,
    ) -> Option<(u64, i64)> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECKPOINT_POLL;
        let frontier = self.cp.probe.with_frontier(|f| f.iter().min().copied())?;
        let frontier = frontier.min(i64::MAX as u64) as i64;
        let coordinator = &self.cp.coordinator;
        if self.cp.local_index == 0 {
            coordinator.maybe_announce(frontier, now);
        }
        if let Some((epoch, at)) = coordinator.announced() {
            if epoch > self.contributed && frontier >= at {
                let parts = partition_checkpoints(reader, ingest, watermarks, at);
                if let Err(e) = coordinator.contribute(self.cp.local_index, epoch, parts) {
                    eprintln!("dragonflow: {e}");
                }
                self.contributed = epoch;
            }
        }
        let written = coordinator.written_epoch();
        if written > self.committed {
            self.committed = written;
            if let Some(c) = coordinator.written() {
                reader.commit(&c.partitions);
                return Some((c.epoch, c.frontier));
            }
        }
        None
    }

    fn finish<R: Reader>(&mut self, reader: &R, ingest: &mut Ingest, watermarks: &Watermarks) {
        let mut partitions = Vec::new();
        for p in reader.positions() {
            let (Some(next), Some(tracker)) = (p.next, ingest.tracker_snapshot(p.slot)) else { continue };
            partitions.push(FinalPartition {
                source: p.source.to_string(),
                partition: p.partition,
                next,
                max_ts: watermarks.max_event_time(p.slot),
                tracker,
            });
        }
        let closed_before = watermarks.lowest_partition_watermark().map(|w| w.saturating_add(1));
        self.cp.coordinator.finish(self.cp.local_index, FinalContribution { closed_before, partitions });
    }
}

fn partition_checkpoints<R: Reader>(
    reader: &R,
    ingest: &mut Ingest,
    watermarks: &Watermarks,
    frontier: i64,
) -> Vec<PartitionCheckpoint> {
    reader
        .positions()
        .into_iter()
        .filter_map(|p| {
            let next = p.next?;
            ingest.checkpoint(p.slot, &p.source, p.partition, frontier, next, watermarks.max_event_time(p.slot))
        })
        .collect()
}

/// Messages read per activation before yielding to other operators.
const BUDGET: usize = 4096;
/// How soon an idle source polls again.
const IDLE_POLL: Duration = Duration::from_millis(5);

pub use operators::time::wall_ns;

/// The source operator: observations (at their window's end) and sink items (late, rejects).
pub fn ingest_source<'scope, R: Reader + 'static>(
    scope: Scope<'scope, Time>,
    name: &str,
    mut reader: R,
    mut ingest: Ingest,
    mut watermarks: Watermarks,
    metrics: Arc<JobMetrics>,
    checkpoints: Option<SourceCheckpoints>,
) -> (Stream<'scope, Time, Vec<ObservationBatch>>, Stream<'scope, Time, Vec<SinkItem>>) {
    if checkpoints.is_some() {
        ingest.track();
    }
    let mut checkpoints =
        checkpoints.map(|cp| CheckpointState { cp, next_check: Instant::now(), contributed: 0, committed: 0 });
    let mut next_status = Instant::now();
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let worker = scope.index();
    let (obs_out, obs_stream) = builder.new_output::<Vec<ObservationBatch>>();
    let (side_out, side_stream) = builder.new_output::<Vec<SinkItem>>();
    let mut obs_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ObservationBatch>>>::from(obs_out);
    let mut side_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SinkItem>>>::from(side_out);

    builder.build(move |mut caps| {
        let side_cap = caps.pop().expect("two outputs");
        let obs_cap = caps.pop().expect("two outputs");
        let mut caps = Some((obs_cap, side_cap));
        activator.activate();
        move |_frontiers| {
            let Some((obs_cap, side_cap)) = caps.as_mut() else { return };
            let now = Instant::now();
            let status = reader.read(&mut ingest, &mut watermarks, BUDGET, now);
            let out = ingest.take_at(*side_cap.time());
            metrics.messages.fetch_add(out.messages, Ordering::Relaxed);
            metrics.values.fetch_add(out.values, Ordering::Relaxed);
            metrics.late.fetch_add(out.late.len() as u64, Ordering::Relaxed);
            metrics.replayed.fetch_add(out.replayed, Ordering::Relaxed);
            metrics.rejects.fetch_add(out.rejects.len() as u64, Ordering::Relaxed);
            {
                let mut obs = obs_out.activate();
                for (end, observations) in out.windows {
                    let time = end.max(0) as Time;

                    // Non-late observations end after the published watermark: this cannot fail.
                    let cap = obs_cap.delayed(&time.max(*obs_cap.time()));
                    obs.session(&cap).give(ObservationBatch { window_end: end, observations });
                }
            }
            let health = reader.take_health();
            if !out.late.is_empty() || !out.rejects.is_empty() || !health.is_empty() {
                let mut side = side_out.activate();
                let mut session = side.session(side_cap);
                if !out.late.is_empty() {
                    session.give(SinkItem::Late(out.late));
                }
                if !out.rejects.is_empty() {
                    session.give(SinkItem::Rejects(out.rejects));
                }
                if !health.is_empty() {
                    session.give(SinkItem::Health(health));
                }
            }
            let mut wm = watermarks.advance(now);
            // A worker with no partition, or only idle ones, follows the others rather than
            // holding every window of the job open.
            if watermarks.idle(now) {
                if let Some(others) = metrics.others_watermark(worker) {
                    watermarks.raise_combined(others);
                    wm = watermarks.combined();
                }
            }
            metrics.set_watermark(worker, wm);
            metrics.set_data_watermark(worker, wm);
            let next = (wm.saturating_add(1)).max(0) as Time;
            if next > *obs_cap.time() {
                obs_cap.downgrade(&next);
                side_cap.downgrade(&next);
            }
            if let Some(cp) = checkpoints.as_mut() {
                if let Some((epoch, frontier)) = cp.step(&mut reader, &mut ingest, &watermarks, now) {
                    metrics.set_checkpoint(epoch, frontier);
                }
                if status == ReadStatus::Done {
                    cp.finish(&reader, &mut ingest, &watermarks);
                }
            }
            if now >= next_status || status == ReadStatus::Done {
                next_status = now + STATUS_EVERY;
                // The job's watermark, not this worker's: windows close on the global frontier.
                if let Some(wm) = metrics.watermark() {
                    ingest.evict_idle(wm);
                }
                metrics.set_series(worker, ingest.live_series());
                if let Some(stats) = reader.pull_stats() {
                    metrics.set_pull(worker, stats);
                }
                metrics.set_partitions(reader.positions().into_iter().map(|p| PartitionStatus {
                    source: p.source.to_string(),
                    partition: p.partition,
                    next: p.next,
                    lag: p.lag,
                    watermark: watermarks.partition_watermark(p.slot),
                }));
            }
            match status {
                ReadStatus::Done => {
                    metrics.data_finished(worker);
                    metrics.set_watermark(worker, i64::MAX);
                    caps = None;
                }
                ReadStatus::Busy => activator.activate(),
                ReadStatus::Idle => activator.activate_after(IDLE_POLL),
            }
        }
    });
    (obs_stream, side_stream)
}

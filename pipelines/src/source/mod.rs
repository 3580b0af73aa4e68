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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::ingest::Ingest;
use operators::model::{ObservationBatch, SinkItem};
use operators::time::Watermarks;
use operators::window::Time;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{Scope, Stream};

use crate::metrics::JobMetrics;

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

/// Reads messages from a worker's share of a source.
pub trait Reader {
    /// Reads up to `budget` messages into `ingest`. Partitions register with `watermarks`.
    fn read(&mut self, ingest: &mut Ingest, watermarks: &mut Watermarks, budget: usize, now: Instant) -> ReadStatus;
}

/// Messages read per activation before yielding to other operators.
const BUDGET: usize = 4096;
/// How soon an idle source polls again.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Wall-clock time, ns since the epoch.
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The source operator: observations (at their window's end) and sink items (late, rejects).
pub fn ingest_source<'scope, R: Reader + 'static>(
    scope: Scope<'scope, Time>,
    name: &str,
    mut reader: R,
    mut ingest: Ingest,
    mut watermarks: Watermarks,
    metrics: Arc<JobMetrics>,
) -> (Stream<'scope, Time, Vec<ObservationBatch>>, Stream<'scope, Time, Vec<SinkItem>>) {
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
            let out = ingest.take();
            metrics.messages.fetch_add(out.messages, Ordering::Relaxed);
            metrics.values.fetch_add(out.values, Ordering::Relaxed);
            metrics.late.fetch_add(out.late.len() as u64, Ordering::Relaxed);
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
            if !out.late.is_empty() || !out.rejects.is_empty() {
                let mut side = side_out.activate();
                let mut session = side.session(side_cap);
                if !out.late.is_empty() {
                    session.give(SinkItem::Late(out.late));
                }
                if !out.rejects.is_empty() {
                    session.give(SinkItem::Rejects(out.rejects));
                }
            }
            let wm = watermarks.advance(now);
            metrics.set_watermark(worker, wm);
            let next = (wm.saturating_add(1)).max(0) as Time;
            if next > *obs_cap.time() {
                obs_cap.downgrade(&next);
                side_cap.downgrade(&next);
            }
            match status {
                ReadStatus::Done => {
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

//! The sink operator: every worker hands the window results, late values and rejects it holds
//! to each configured sink. Writers run off the hot path (their own threads behind bounded
//! channels); this operator only buffers, asks them to flush on time, and finishes them when
//! its input is complete.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::model::SinkItem;
use operators::window::Time;
use sinks::lake::{LakeStats, LakeWriter};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

use crate::metrics::JobMetrics;

/// What the sinks of one worker ended with.
pub type SinkOutcome = Rc<RefCell<Option<Result<Vec<LakeStats>, String>>>>;

/// Attaches `writers` to `stream`. When the stream ends, the writers are finished and the
/// outcome stored in `outcome`.
pub fn lake_sink<'scope>(
    stream: Stream<'scope, Time, Vec<SinkItem>>,
    writers: Vec<LakeWriter>,
    flush_interval: Duration,
    metrics: Arc<JobMetrics>,
    outcome: SinkOutcome,
) {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let mut input = builder.new_input(stream, Pipeline);
    builder.build(move |_caps| {
        let mut writers = Some(writers);
        let mut error: Option<String> = None;
        let mut timer_set = false;
        move |frontiers| {
            let Some(ws) = writers.as_mut() else {
                input.for_each(|_, data| data.clear());
                return;
            };
            let mut received = false;
            input.for_each(|_cap, data| {
                for item in data.drain(..) {
                    received = true;
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
            let now = Instant::now();
            for w in ws.iter_mut() {
                if let Err(e) = w.poll(now) {
                    error.get_or_insert(e.to_string());
                }
            }
            if received && !timer_set {
                activator.activate_after(flush_interval);
                timer_set = true;
            } else if !received {
                timer_set = false;
            }
            if frontiers[0].is_empty() {
                let mut stats = Vec::new();
                for w in writers.take().into_iter().flatten() {
                    match w.finish() {
                        Ok(s) => {
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
            }
        }
    });
}

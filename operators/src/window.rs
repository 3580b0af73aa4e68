//! The `WindowAggregate` operator: event-time tumbling windows over observation batches.
//!
//! Observations travel at the timely time of their window's *end*. Each worker first folds what
//! it read into partial aggregates per (window, series) — no record crosses a thread — and, when
//! its input frontier passes a window's end, ships one partial aggregate per series to the
//! worker that owns the series (by the key's stable hash), which merges them and emits the
//! window once. State for a window is freed the moment it is emitted. There are no clocks here:
//! a window closes exactly when timely's progress tracking says no more input can arrive for it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rustc_hash::FxHashMap;
use timely::communication::Pull;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::channels::Message;
use timely::dataflow::operators::generic::{InputHandleCore, Operator, OutputBuilderSession};
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::progress::frontier::MutableAntichain;

use crate::aggregate::Agg;
use crate::intern::SeriesTable;
use crate::model::{ObservationBatch, SeriesKey, WindowBatch};

/// Timely time of a window: the end of the window in ns since the epoch.
pub type Time = u64;

/// Aggregates observation batches into closed windows.
///
/// ```
/// use std::{cell::RefCell, rc::Rc, sync::{Arc, Mutex}};
/// use operators::intern::{SeriesTable, TagRefs};
/// use operators::model::{Observation, ObservationBatch};
/// use operators::window::WindowAggregate;
/// use timely::dataflow::operators::{Input, Inspect};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute(timely::Config::thread(), move |worker| {
///     let table = Rc::new(RefCell::new(SeriesTable::new()));
///     let series = {
///         let mut t = table.borrow_mut();
///         let g = t.group(&TagRefs { vm_id: "vm-1", ..Default::default() }, "cpu", "");
///         t.series(g, "usage_idle").unwrap()
///     };
///     let out = out.clone();
///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, stream) = scope.new_input::<Vec<ObservationBatch>>();
///         stream
///             .window_aggregate(table.clone(), 10)
///             .inspect(move |w| out.lock().unwrap().push((w.window_start, w.rows[0].1.mean())));
///         input
///     });
///     let obs = |ts, value| Observation { series, ts, order: 0, value };
///     // A batch travels at the timely time of its window's end.
///     input.advance_to(10);
///     input.send(ObservationBatch { window_end: 10, observations: vec![obs(1, 1.0), obs(2, 3.0)] });
///     input.advance_to(20);
/// })
/// .unwrap();
/// assert_eq!(*seen.lock().unwrap(), vec![(0, 2.0)]);
/// ```
pub trait WindowAggregate<'scope> {
    /// `size` is the window length in ns; `table` resolves this worker's series ids.
    fn window_aggregate(self, table: Rc<RefCell<SeriesTable>>, size: i64) -> Stream<'scope, Time, Vec<WindowBatch>>;
}

impl<'scope> WindowAggregate<'scope> for Stream<'scope, Time, Vec<ObservationBatch>> {
    fn window_aggregate(self, table: Rc<RefCell<SeriesTable>>, size: i64) -> Stream<'scope, Time, Vec<WindowBatch>> {
        let peers = self.scope().peers();
        let partials = self.unary_frontier::<CapacityContainerBuilder<Vec<(SeriesKey, Agg)>>, _, _, _>(
            Pipeline,
            "WindowPreAggregate",
            move |_cap, _info| {
                let mut open: BTreeMap<Time, (Capability<Time>, FxHashMap<u32, Agg>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(time) = cap.retain_least(output.output_index()) else {
                            return;
                        };
                        let entry = open.entry(*time.time()).or_insert_with(|| (time, FxHashMap::default()));
                        for container in data {
                            for batch in container.drain(..) {
                                fold(&mut entry.1, &batch);
                            }
                        }
                    });
                    while let Some((&end, _)) = open.first_key_value() {
                        if frontier.less_equal(&end) {
                            break;
                        }
                        let (cap, aggs) = open.pop_first().map(|(_, v)| v).expect("first key exists");
                        let table = table.borrow();
                        let mut session = output.session(&cap);
                        for (series, agg) in aggs {
                            session.give((table.key(series).clone(), agg));
                        }
                    }
                }
            },
        );
        // With one worker the partials are already final; otherwise merge them by series owner.
        let pact_route = move |(key, _): &(SeriesKey, Agg)| key.stable_hash();
        if peers == 1 {
            partials.unary_frontier::<CapacityContainerBuilder<Vec<WindowBatch>>, _, _, _>(
                Pipeline,
                "WindowEmit",
                move |_, _| {
                    let mut merger = Merger::new(size);
                    move |(input, frontier), output| merger.step(input, frontier, output)
                },
            )
        } else {
            partials.unary_frontier::<CapacityContainerBuilder<Vec<WindowBatch>>, _, _, _>(
                Exchange::new(pact_route),
                "WindowMerge",
                move |_, _| {
                    let mut merger = Merger::new(size);
                    move |(input, frontier), output| merger.step(input, frontier, output)
                },
            )
        }
    }
}

#[inline]
fn fold(aggs: &mut FxHashMap<u32, Agg>, batch: &ObservationBatch) {
    for o in &batch.observations {
        aggs.entry(o.series)
            .and_modify(|a| a.add(o.ts, o.order, o.value))
            .or_insert_with(|| Agg::of(o.ts, o.order, o.value));
    }
}

/// Merges partial aggregates per window and emits each window once its end has passed.
struct Merger {
    size: i64,
    open: BTreeMap<Time, (Capability<Time>, FxHashMap<SeriesKey, Agg>)>,
}

impl Merger {
    fn new(size: i64) -> Self {
        Merger { size, open: BTreeMap::new() }
    }

    fn step<P>(
        &mut self,
        input: &mut InputHandleCore<Time, Vec<(SeriesKey, Agg)>, P>,
        frontier: &MutableAntichain<Time>,
        output: &mut OutputBuilderSession<'_, Time, CapacityContainerBuilder<Vec<WindowBatch>>>,
    ) where
        P: Pull<Message<Time, Vec<(SeriesKey, Agg)>>>,
    {
        let open = &mut self.open;
        input.for_each_stamp(|cap, data| {
            let Some(time) = cap.retain_least(output.output_index()) else {
                return;
            };
            let entry = open.entry(*time.time()).or_insert_with(|| (time, FxHashMap::default()));
            for container in data {
                for (key, agg) in container.drain(..) {
                    match entry.1.get_mut(&key) {
                        Some(a) => a.merge(&agg),
                        None => {
                            entry.1.insert(key, agg);
                        }
                    }
                }
            }
        });
        while let Some((&end, _)) = open.first_key_value() {
            if frontier.less_equal(&end) {
                break;
            }
            let (cap, aggs) = open.pop_first().map(|(_, v)| v).expect("first key exists");
            let window_end = end as i64;
            let batch =
                WindowBatch { window_start: window_end - self.size, window_end, rows: aggs.into_iter().collect() };
            output.session(&cap).give(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intern::TagRefs;
    use crate::model::Observation;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::{Input, Inspect};

    /// (vm index, field index, ts, value) — ts in units, window size 10 units.
    type Raw = (u8, u8, u64, i32);
    /// (window start, vm, field) → (count, sum, min, max, last).
    type Windows = HashMap<(u64, String, String), (u64, f64, f64, f64, f64)>;

    fn reference(raw: &[Raw], size: u64) -> Windows {
        let mut out: HashMap<_, Vec<(u64, usize, f64)>> = HashMap::new();
        for (i, &(vm, f, ts, v)) in raw.iter().enumerate() {
            let start = ts / size * size;
            out.entry((start, format!("vm-{vm}"), format!("f{f}"))).or_default().push((ts, i, v as f64));
        }
        out.into_iter()
            .map(|(k, vs)| {
                let n = vs.len() as u64;
                let sum: f64 = vs.iter().map(|v| v.2).sum();
                let min = vs.iter().map(|v| v.2).fold(f64::INFINITY, f64::min);
                let max = vs.iter().map(|v| v.2).fold(f64::NEG_INFINITY, f64::max);
                let last = vs.iter().max_by_key(|v| (v.0, v.1)).unwrap().2;
                (k, (n, sum, min, max, last))
            })
            .collect()
    }

    /// Runs `raw` (in arrival order) through `workers` workers, dealing records round-robin,
    /// all windows open until the end of input.
    fn run(raw: Vec<Raw>, workers: usize, size: u64) -> Windows {
        let result = Arc::new(Mutex::new(HashMap::new()));
        let sink = result.clone();
        let raw = Arc::new(raw);
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let table = Rc::new(RefCell::new(SeriesTable::new()));
            let sink = sink.clone();
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<ObservationBatch>>();
                stream.window_aggregate(table.clone(), size as i64).inspect(move |w| {
                    let mut r = sink.lock().unwrap();
                    for (k, a) in &w.rows {
                        let prev = r.insert(
                            (w.window_start as u64, k.agent.vm_id.to_string(), k.field.to_string()),
                            (a.count, a.sum(), a.min, a.max, a.last),
                        );
                        assert!(prev.is_none(), "window emitted twice");
                    }
                });
                input
            });
            let mut by_window: BTreeMap<u64, Vec<Observation>> = BTreeMap::new();
            for (i, &(vm, f, ts, v)) in raw.iter().enumerate() {
                if i % peers != index {
                    continue;
                }
                let mut t = table.borrow_mut();
                let g = t.group(&TagRefs { vm_id: &format!("vm-{vm}"), ..Default::default() }, "m", "");
                let series = t.series(g, &format!("f{f}")).unwrap();
                by_window.entry(ts / size * size + size).or_default().push(Observation {
                    series,
                    ts: ts as i64,
                    order: i as u64,
                    value: v as f64,
                });
            }
            for (end, observations) in by_window {
                input.advance_to(end);
                input.send(ObservationBatch { window_end: end as i64, observations });
            }
        })
        .unwrap();
        let r = result.lock().unwrap().clone();
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_brute_force(raw in prop::collection::vec((0u8..6, 0u8..3, 0u64..80, -1000i32..1000), 0..300), workers in 1usize..4) {
            let want = reference(&raw, 10);
            let got = run(raw, workers, 10);
            prop_assert_eq!(got.len(), want.len());
            for (k, w) in &want {
                let g = got.get(k).expect("window row present");
                prop_assert_eq!(g.0, w.0);
                prop_assert!((g.1 - w.1).abs() < 1e-9);
                prop_assert_eq!((g.2, g.3, g.4), (w.2, w.3, w.4));
            }
        }
    }
}

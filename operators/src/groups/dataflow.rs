//! The fleet-metrics dataflow: window aggregates and registry updates in, rows of `agents`,
//! `agent_health`, `groups` and `rankings` out.
//!
//! ```text
//! windows ─► per-VM partials ─► Agents ─┬─► agents, agent_health rows
//!                                  ▲    ├─► members: key → record, over time ─────┐
//! registry updates ────────────────┘    └─► parts: key → (window, VM's whole window) ─join─► values per level
//!                                                                 ──reduce──► groups ──reduce──► rankings
//! ```
//!
//! Times are timely times of windows (their end, ns). The Agents operator merges a VM's partials
//! from every worker into its whole window. A VM's window lives in the collection only at its
//! window's time — inserted at `end`, retracted at `end + 1` — so each window is joined with
//! the registry *as of that window*, a registry change touches only windows at or after it, and
//! the arrangements hold nothing once a window has passed: state is proportional to agents, not
//! to windows seen.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat, Operator};
use timely::dataflow::Stream;
use timely::progress::Antichain;

use super::agents::{Agents, AgentsOut};
use super::vm::{group_metrics, rank, Member, VmPartial, VmValues, F64, RANKED_METRICS};
use super::{GroupsConfig, Level};
use crate::model::{stable_hash, AgentRow, AgentTags, GroupRow, RankRow, SinkItem, WindowBatch};
use crate::registry::RegistryUpdate;
use crate::window::Time;

/// One VM's partial in one window, from one worker: `(key, tags, window_start, partial)`.
pub type Part = (String, AgentTags, i64, VmPartial);

/// Group key: `(level, group_id, window_start)`.
type GroupKey = (Level, String, i64);

/// A ranking row: `(order, rank, group_id, value)`.
type RankValue = (String, u32, String, F64);

/// Passes window batches on (moved, not copied) and, beside them, each VM's partial of each
/// window: the input of [`fleet_metrics`].
pub fn with_vm_parts<'scope>(
    windows: Stream<'scope, Time, Vec<WindowBatch>>,
    config: &GroupsConfig,
) -> (Stream<'scope, Time, Vec<WindowBatch>>, Stream<'scope, Time, Vec<Part>>) {
    let config = config.clone();
    let mut builder = OperatorBuilder::new("VmParts".to_owned(), windows.scope());
    let mut input = builder.new_input(windows, Pipeline);
    let (batches_out, batches) = builder.new_output::<Vec<WindowBatch>>();
    let (parts_out, parts) = builder.new_output::<Vec<Part>>();
    let mut batches_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<WindowBatch>>>::from(batches_out);
    let mut parts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Part>>>::from(parts_out);
    builder.build(move |_caps| {
        move |_frontiers| {
            let mut batches_out = batches_out.activate();
            let mut parts_out = parts_out.activate();
            input.for_each(|cap, data| {
                let batch_cap = cap.delayed(cap.least().expect("a time"), 0);
                let parts_cap = cap.delayed(cap.least().expect("a time"), 1);
                let mut parts_session = parts_out.session(&parts_cap);
                for batch in data.iter() {
                    parts_session.give_iterator(vm_partials(batch, &config).into_iter());
                }
                batches_out.session(&batch_cap).give_container(data);
            });
        }
    });
    (batches, parts)
}

/// Builds the fleet metrics of VMs' window partials and registry updates. `closed_by_data` tells
/// the watermark the data has reached (ns): when the input ends, windows after it were closed by
/// the end, not by the watermark, and their silence makes no agent unhealthy. `restored` is the
/// agents' last state recorded by a previous run (see [`Agents::restore`]); each worker keeps the
/// agents it owns.
pub fn fleet_metrics<'scope>(
    parts: Stream<'scope, Time, Vec<Part>>,
    updates: Stream<'scope, Time, Vec<RegistryUpdate>>,
    config: GroupsConfig,
    closed_by_data: Arc<dyn Fn() -> i64 + Send + Sync>,
    restored: Arc<Vec<AgentRow>>,
) -> Stream<'scope, Time, Vec<SinkItem>> {
    let size = config.window;

    // Registry and health, each agent on the worker its key hashes to. The registry updates'
    // input is not connected to the output: its source never holds windows back.
    let agents_config = config.clone();
    let scope = parts.scope();
    let (index, peers) = (scope.index(), scope.peers() as u64);
    let mut builder = OperatorBuilder::new("Agents".to_owned(), scope);
    let mut parts_in = builder.new_input(parts, Exchange::new(|p: &Part| stable_hash(&[&p.0])));
    let mut updates_in = builder.new_input(updates, Exchange::new(|u: &RegistryUpdate| stable_hash(&[&u.key])));
    let (agents_output, agents_out) =
        builder.new_output_connection::<Vec<AgentsOut>, _>([(0, Antichain::from_elem(Default::default()))]);
    let mut agents_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<AgentsOut>>>::from(agents_output);
    builder.build(move |mut caps| {
        let mut agents = Agents::new(agents_config);
        let mut held: Option<Capability<Time>> = caps.pop();
        let mut out = Vec::new();
        let mine = restored.iter().filter(|r| (stable_hash(&[&r.record.key]) % peers) as usize == index);
        agents.restore(mine.cloned().collect(), &mut out);
        move |frontiers| {
            parts_in.for_each(|_cap, data| {
                for (key, tags, start, partial) in data.drain(..) {
                    agents.sighting(key, tags, start, partial);
                }
            });
            let open = held.is_some();
            updates_in.for_each(|cap, data| {
                let now = cap.least().copied().unwrap_or_default();
                for u in data.drain(..) {
                    // Once every window is closed, registry updates have nothing left to change.
                    if open {
                        agents.update(u, now, &mut out);
                    }
                }
            });
            // Sightings and timers wait for both inputs, so that they see every registry update
            // of their time; when the windows end, everything left is processed.
            let ended = frontiers[0].is_empty();
            let mut frontier = frontiers[0].clone();
            frontier.update_iter(frontiers[1].frontier().iter().map(|t| (*t, 1)));
            agents.advance(&frontier, ended, closed_by_data(), &mut out);
            if let Some(cap) = &held {
                if !out.is_empty() {
                    agents_output.activate().session(cap).give_iterator(out.drain(..));
                }
            }
            match (ended, frontier.frontier().iter().min()) {
                (false, Some(low)) => {
                    if let Some(cap) = held.as_mut() {
                        if cap.time() < low {
                            cap.downgrade(low);
                        }
                    }
                }
                _ => held = None,
            }
        }
    });
    let members: VecCollection<'scope, Time, (String, Member)> = agents_out
        .clone()
        .flat_map(|o| match o {
            AgentsOut::Member(m) => Some(m),
            _ => None,
        })
        .as_collection();
    let window_parts: VecCollection<'scope, Time, (String, (i64, VmPartial))> = agents_out
        .clone()
        .flat_map(|o| match o {
            AgentsOut::Part(p) => Some(p),
            _ => None,
        })
        .as_collection();
    let agent_items = agents_out.flat_map(|o| match o {
        AgentsOut::Item(i) => Some(i),
        _ => None,
    });

    // Each VM joins the registry as of its window, then counts in one group per level.
    let levels = config.levels.clone();
    let values_config = config.clone();
    let by_group = window_parts.join(members).flat_map(move |(key, ((start, partial), member))| {
        levels
            .iter()
            .filter_map(|&level| {
                let group = member.group(level)?;
                let values = VmValues::of(&partial, &member, level, &values_config);
                Some(((level, group, start), (key.clone(), values)))
            })
            .collect::<Vec<_>>()
    });

    let group_config = config.clone();
    let groups =
        by_group.reduce(move |(level, _, _): &GroupKey, input, output: &mut Vec<((String, F64, u64), isize)>| {
            let vms: Vec<&VmValues> =
                input.iter().filter(|(_, count)| *count > 0).map(|((_, values), _)| values).collect();
            let vm_count = vms.len() as u64;
            for (metric, value) in group_metrics(*level, &vms, &group_config) {
                output.push(((metric, F64(value), vm_count), 1));
            }
        });

    let k = config.k;
    let rankings = groups
        .clone()
        .flat_map(|((level, group, start), (metric, value, _))| {
            RANKED_METRICS.contains(&metric.as_str()).then_some(((start, level, metric), (value, group)))
        })
        .reduce(move |_key: &(i64, Level, String), input, output: &mut Vec<(RankValue, isize)>| {
            let values: Vec<(String, f64)> = input.iter().map(|((v, g), _)| (g.clone(), v.0)).collect();
            for (order, r, group, value) in rank(&values, k) {
                output.push(((order.to_string(), r, group, F64(value)), 1));
            }
        });

    let group_items = collect_per_window(
        groups.inner,
        "GroupRows",
        move |((level, group_id, start), (metric, value, vm_count))| GroupRow {
            window_start: start,
            window_end: start + size,
            level: level.name().to_string(),
            group_id,
            metric,
            value: value.0,
            vm_count,
        },
        SinkItem::Groups,
    );
    let rank_items = collect_per_window(
        rankings.inner,
        "RankRows",
        move |((start, level, metric), (order, r, group_id, value))| RankRow {
            window_start: start,
            window_end: start + size,
            level: level.name().to_string(),
            metric,
            order,
            rank: r,
            group_id,
            value: value.0,
        },
        SinkItem::Rankings,
    );
    agent_items.concat(group_items).concat(rank_items)
}

/// The per-VM partials of one worker's window batch.
fn vm_partials(batch: &WindowBatch, config: &GroupsConfig) -> Vec<Part> {
    let mut by_agent: FxHashMap<*const AgentTags, (usize, VmPartial)> = FxHashMap::default();
    let mut agents = Vec::new();
    for (key, agg) in &batch.rows {
        let ptr = std::sync::Arc::as_ptr(&key.agent);
        let entry = by_agent.entry(ptr).or_insert_with(|| {
            agents.push(key.agent.clone());
            (agents.len() - 1, VmPartial::new(config))
        });
        entry.1.add(key, agg, config);
    }
    let mut parts: Vec<Part> = by_agent
        .into_values()
        .map(|(i, partial)| {
            let tags = &agents[i];
            (tags.key(), (**tags).clone(), batch.window_start, partial)
        })
        .collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    parts
}

/// Gathers the positive rows of a differential output per time and emits them as one sink item
/// per window once the time has passed (retractions, at `end + 1`, are dropped).
fn collect_per_window<'scope, D: Clone + 'static, R: 'static>(
    stream: Stream<'scope, Time, Vec<(D, Time, isize)>>,
    name: &str,
    mut row: impl FnMut(D) -> R + 'static,
    item: impl Fn(Vec<R>) -> SinkItem + 'static,
) -> Stream<'scope, Time, Vec<SinkItem>> {
    stream.unary_frontier::<CapacityContainerBuilder<Vec<SinkItem>>, _, _, _>(Pipeline, name, move |_, _| {
        let mut open: BTreeMap<Time, (Capability<Time>, Vec<R>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for (d, t, r) in data.drain(..) {
                    if r <= 0 {
                        continue;
                    }
                    let entry = open.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                    for _ in 0..r {
                        entry.1.push(row(d.clone()));
                    }
                }
            });
            while let Some((&t, _)) = open.first_key_value() {
                if frontier.less_equal(&t) {
                    break;
                }
                let (cap, rows) = open.pop_first().map(|(_, v)| v).expect("first key exists");
                if !rows.is_empty() {
                    output.session(&cap).give(item(rows));
                }
            }
        }
    })
}

//! The registry-updates source of the fleet metrics: the registry file (reloaded when it
//! changes) and the registry topic, read by worker 0 and routed to the agents' owners by the
//! fleet dataflow.
//!
//! The source's time follows the window results' frontier (a probe): an update is stamped with
//! the first window not yet closed, so it applies from that window on (or from its own `time`,
//! if later), and the source never holds the windows back. When the windows' frontier is empty
//! the job is over and the source stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use operators::model::SinkItem;
use operators::registry::{RegistryFile, RegistryUpdate};
use operators::window::Time;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};

use crate::metrics::JobMetrics;
use crate::source::registry::RegistryTopic;

/// How often the source looks at the file, the topic and the windows' frontier.
const POLL: Duration = Duration::from_millis(50);

/// Where registry updates come from.
pub struct RegistryInputs {
    /// Updates read before the job started (the registry topic up to its end).
    pub initial: Vec<RegistryUpdate>,
    pub file: Option<RegistryFile>,
    pub topic: Option<RegistryTopic>,
    pub reload_interval: Duration,
}

/// The registry-updates stream, and the topic's messages that are not updates (for `rejects`).
/// Only the worker given `inputs` reads; the others' streams are empty.
pub fn registry_updates<'scope>(
    scope: Scope<'scope, Time>,
    inputs: Option<RegistryInputs>,
    windows: ProbeHandle<Time>,
    metrics: Arc<JobMetrics>,
) -> (Stream<'scope, Time, Vec<RegistryUpdate>>, Stream<'scope, Time, Vec<SinkItem>>) {
    let mut builder = OperatorBuilder::new("RegistryUpdates".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let (out, stream) = builder.new_output::<Vec<RegistryUpdate>>();
    let mut out = OutputBuilder::<_, CapacityContainerBuilder<Vec<RegistryUpdate>>>::from(out);
    let (rejects_out, rejects) = builder.new_output::<Vec<SinkItem>>();
    let mut rejects_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SinkItem>>>::from(rejects_out);
    builder.build(move |mut caps| {
        let mut reject_cap = caps.pop();
        let mut cap = caps.pop();
        let mut inputs = inputs;
        if inputs.is_none() {
            cap = None;
            reject_cap = None;
        }
        let mut last_reload: Option<Instant> = None;
        activator.activate();
        move |_frontiers| {
            let (Some(c), Some(inputs)) = (cap.as_mut(), inputs.as_mut()) else { return };
            let mut updates = std::mem::take(&mut inputs.initial);
            if let Some(file) = inputs.file.as_mut() {
                if last_reload.is_none_or(|t| t.elapsed() >= inputs.reload_interval) {
                    last_reload = Some(Instant::now());
                    match file.poll() {
                        Ok(Some(u)) => updates.extend(u),
                        Ok(None) => {}
                        Err(e) => eprintln!(
                            "dragonflow: registry file {}: {e} (keeping the last good version)",
                            file.path().display()
                        ),
                    }
                }
            }
            let mut rejected = Vec::new();
            if let Some(topic) = inputs.topic.as_mut() {
                for u in topic.poll() {
                    match u {
                        Ok(u) => updates.push(u),
                        Err(e) => eprintln!("dragonflow: registry topic: {e}"),
                    }
                }
                rejected = topic.take_rejects();
            }
            if let (false, Some(rc)) = (rejected.is_empty(), reject_cap.as_ref()) {
                metrics.rejects.fetch_add(rejected.len() as u64, std::sync::atomic::Ordering::Relaxed);
                rejects_out.activate().session(rc).give(SinkItem::Rejects(rejected));
            }
            if !updates.is_empty() {
                let mut handle = out.activate();
                handle.session(c).give_iterator(updates.into_iter());
            }
            match windows.with_frontier(|f| f.iter().min().copied()) {
                Some(low) => {
                    if *c.time() < low {
                        c.downgrade(&low);
                    }
                    if let Some(rc) = reject_cap.as_mut() {
                        if *rc.time() < low {
                            rc.downgrade(&low);
                        }
                    }
                    activator.activate_after(POLL);
                }
                None => {
                    cap = None;
                    reject_cap = None;
                }
            }
        }
    });
    (stream, rejects)
}

/// Reads the registry file once, for a job about to start: a file that cannot be read or parsed
/// is refused with the reason, before any data flows.
pub fn open_registry_file(path: &std::path::Path) -> Result<RegistryFile, String> {
    let mut file = RegistryFile::new(path);
    file.poll().map_err(|e| format!("registry.file {}: {e}", path.display()))?;
    // The first poll's records are handed out again by a fresh reader.
    Ok(RegistryFile::new(path))
}

//! A job's alarms: its `[[alarm]]` rules as the evaluator runs them, the delivery of their events
//! through the `[[handler]]`s, and the levels a resumed job carries on.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use operators::alarm::eval::RestoredLevel;
use operators::alarm::{Level, LiveRules, Rule, RuleLevels, Watch};
use operators::model::{AlarmDelivery, AlarmEvent};
use sinks::notify::Dispatcher;

use crate::metrics::JobMetrics;
use crate::spec::{AlarmSpec, AlarmWatch, JobSpec, SinkSpec};

/// The rules of a spec, in the order written.
pub fn rules(spec: &JobSpec) -> Vec<Rule> {
    spec.alarms.iter().map(|a| rule(a, spec)).collect()
}

/// One `[[alarm]]` as the evaluator runs it.
pub fn rule(a: &AlarmSpec, spec: &JobSpec) -> Rule {
    let watch = match &a.watch {
        AlarmWatch::Field { measurement, field, aggregate } => {
            Watch::Field { measurement: measurement.clone(), field: field.clone(), aggregate: *aggregate }
        }
        AlarmWatch::Group { level, metric } => Watch::Group { level: *level, metric: metric.clone() },
    };
    Rule {
        id: 0,
        name: a.name.clone(),
        watch,
        target: a.target,
        target_id: a.target_id.clone(),
        levels: RuleLevels {
            comparison: a.comparison,
            warn: a.warn,
            crit: a.crit,
            warn_windows: a.warn_windows,
            crit_windows: a.crit_windows,
            warn_reset: a.warn_reset,
            crit_reset: a.crit_reset,
            nodata_after: a.nodata_windows(&spec.registry),
        },
        message: a.message.clone(),
        handlers: a.handlers.clone(),
    }
}

/// The lake of a spec, if it has a Parquet sink.
pub fn lake_path(spec: &JobSpec) -> Option<PathBuf> {
    spec.sinks.iter().find_map(|s| match s {
        SinkSpec::Parquet(p) => Some(p.path.clone()),
        _ => None,
    })
}

/// Starts delivering events through the spec's handlers, if any rule names one or the job takes
/// rules that change while it runs (`live`). Outcomes are appended to the lake's alarm log (when
/// the job has a lake) and counted in `metrics`.
pub fn start_dispatcher(
    spec: &JobSpec,
    metrics: Arc<JobMetrics>,
    live: bool,
) -> std::io::Result<Option<Arc<Dispatcher>>> {
    if !live && !spec.alarms.iter().any(|a| !a.handlers.is_empty()) {
        return Ok(None);
    }
    let lake = lake_path(spec);
    let job = spec.source_id();
    let outcomes = Box::new(move |rows: Vec<AlarmDelivery>| {
        let failed = rows.iter().filter(|r| !r.delivered).count() as u64;
        metrics.alarm_deliveries.fetch_add(rows.len() as u64 - failed, Ordering::Relaxed);
        metrics.alarm_delivery_failures.fetch_add(failed, Ordering::Relaxed);
        for r in rows.iter().filter(|r| !r.delivered) {
            // Handler errors name the handler and never carry its secrets.
            let error = r.error.as_deref().unwrap_or("not delivered");
            eprintln!("dragonflow: alarm {} {} on {}: {error}", r.event.rule, r.event.level, r.event.target);
            metrics.error(format!("alarm delivery: {error}"));
        }
        if let Some(lake) = &lake {
            if let Err(e) = sinks::lake::append_alarm_deliveries(lake, &job, &rows) {
                eprintln!("dragonflow: cannot record alarm deliveries in the lake: {e}");
                metrics.error(format!("alarm log: {e}"));
            }
        }
    });
    Dispatcher::start(spec.handlers.clone(), outcomes).map(|d| Some(Arc::new(d)))
}

/// How long a job that ends waits for deliveries still in flight: one full retry policy of the
/// slowest handler (its own or the server's), at most a minute.
pub fn delivery_grace(own: &[sinks::notify::HandlerSpec], live: &[sinks::notify::HandlerSpec]) -> Duration {
    own.iter()
        .chain(live)
        .map(|h| h.timeout * (h.retries + 1) + Duration::from_secs(1))
        .max()
        .unwrap_or_default()
        .min(Duration::from_secs(60))
}

/// Sends an event to its handlers, if it has any.
pub fn dispatch(dispatcher: &Option<Arc<Dispatcher>>, event: &AlarmEvent) {
    if let (Some(d), false) = (dispatcher, event.handlers.is_empty()) {
        d.send(event.clone());
    }
}

/// The levels the job `job` ([`JobSpec::source_id`]) resuming at `frontier` carries on: the latest
/// of each (rule, target) in the lake's alarm log before it, of its own events.
pub fn restored_levels(lake: &Path, job: &str, frontier: i64) -> Result<Vec<RestoredLevel>, String> {
    let rows = sinks::sql::alarm_levels_before(lake, job, frontier).map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .filter_map(|(rule, target, level, _)| Some(RestoredLevel { rule, target, level: Level::parse(&level)? }))
        .collect())
}

/// A sample event of a rule, for checking its handlers: CRITICAL on its target (or a made-up
/// one), with the rule's threshold and message.
pub fn sample_event(rule: &Rule, now_ns: i64) -> AlarmEvent {
    let levels = &rule.levels;
    let (level, threshold) = match (levels.crit, levels.warn) {
        (Some(c), _) => (Level::Critical, c),
        (None, Some(w)) => (Level::Warning, w),
        (None, None) => (Level::Critical, 0.0),
    };
    let value = match levels.comparison {
        operators::alarm::Comparison::Gt | operators::alarm::Comparison::Ge => threshold + 1.0,
        operators::alarm::Comparison::Lt | operators::alarm::Comparison::Le => threshold - 1.0,
        operators::alarm::Comparison::Eq => threshold,
        operators::alarm::Comparison::Ne => threshold + 1.0,
    };
    let target = rule.target_id.clone().unwrap_or_else(|| "sample-target".to_string());
    let transition =
        operators::alarm::Transition { level, previous: Level::Ok, value: Some(value), threshold: Some(threshold) };
    let mut event = operators::alarm::eval::event(rule, &target, now_ns, transition);
    event.message = format!("[test] {}", event.message);
    event
}

/// Alarm rules and handlers that change while jobs run: the job server's. A job started with a
/// handle (see [`crate::RunOptions::alarms`]) evaluates these rules beside its own `[[alarm]]`s
/// and delivers through these handlers beside its own `[[handler]]`s; [`LiveAlarms::set`] applies
/// a new set to every such job from its next window on.
#[derive(Clone, Default)]
pub struct LiveAlarms {
    inner: Arc<std::sync::RwLock<LiveSet>>,
}

/// Called with the rules and handlers, at once and after every change.
type Subscriber = Box<dyn Fn(&[AlarmSpec], &[sinks::notify::HandlerSpec]) + Send + Sync>;

#[derive(Default)]
struct LiveSet {
    version: u64,
    rules: Vec<AlarmSpec>,
    handlers: Vec<sinks::notify::HandlerSpec>,
    subscribers: Vec<(u64, Subscriber)>,
    next_subscriber: u64,
}

impl std::fmt::Debug for LiveAlarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (version, rules, handlers) =
            self.inner.read().map(|s| (s.version, s.rules.len(), s.handlers.len())).unwrap_or_default();
        write!(f, "LiveAlarms {{ version: {version}, rules: {rules}, handlers: {handlers} }}")
    }
}

/// Keeps a job subscribed to [`LiveAlarms`]; dropping it unsubscribes.
pub struct Subscription {
    live: LiveAlarms,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut set) = self.live.inner.write() {
            set.subscribers.retain(|(id, _)| *id != self.id);
        }
    }
}

impl LiveAlarms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the rules and handlers (validated by the caller) and applies them to every
    /// subscribed job.
    pub fn set(&self, rules: Vec<AlarmSpec>, handlers: Vec<sinks::notify::HandlerSpec>) {
        if let Ok(mut set) = self.inner.write() {
            set.version += 1;
            set.rules = rules;
            set.handlers = handlers;
            for (_, apply) in &set.subscribers {
                apply(&set.rules, &set.handlers);
            }
        }
    }

    /// Calls `apply` with the rules and handlers now and after every change, until the
    /// subscription is dropped.
    pub fn subscribe(&self, apply: Subscriber) -> Subscription {
        let mut id = 0;
        if let Ok(mut set) = self.inner.write() {
            apply(&set.rules, &set.handlers);
            id = set.next_subscriber;
            set.next_subscriber += 1;
            set.subscribers.push((id, apply));
        }
        Subscription { live: self.clone(), id }
    }

    /// Applies the rules and handlers to one job: its own come first; a server rule or handler
    /// named like one of the job's own is left out for that job.
    pub fn attach(&self, spec: &JobSpec, rules: LiveRules, dispatcher: Option<Arc<Dispatcher>>) -> Subscription {
        let spec = spec.clone();
        self.subscribe(Box::new(move |live_rules, live_handlers| {
            let mut all = spec.alarms.clone();
            all.extend(live_rules.iter().filter(|r| !spec.alarms.iter().any(|o| o.name == r.name)).cloned());
            rules.replace(all.iter().map(|a| rule(a, &spec)).collect());
            if let Some(d) = &dispatcher {
                let mut handlers = spec.handlers.clone();
                handlers
                    .extend(live_handlers.iter().filter(|h| !spec.handlers.iter().any(|o| o.name == h.name)).cloned());
                d.set_handlers(handlers);
            }
        }))
    }

    pub fn rules(&self) -> Vec<AlarmSpec> {
        self.inner.read().map(|s| s.rules.clone()).unwrap_or_default()
    }

    pub fn handlers(&self) -> Vec<sinks::notify::HandlerSpec> {
        self.inner.read().map(|s| s.handlers.clone()).unwrap_or_default()
    }

    /// Increases with every [`LiveAlarms::set`].
    pub fn version(&self) -> u64 {
        self.inner.read().map(|s| s.version).unwrap_or_default()
    }
}

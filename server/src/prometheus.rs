//! `GET /metrics/prometheus`: the jobs' counters and gauges in the Prometheus text format
//! (version 0.0.4), labelled by `job` (the id) and `name` (the spec's name, empty without one).
//!
//! Counters are given for every job the server knows (a job that ended keeps its final values);
//! gauges that only mean something while a job runs (rates, lags, queues) only for running jobs.
//! `dragonflow_window_close_latency_seconds` is a histogram of the wall-clock time from a window's
//! end to its close (replays of old data land in the last buckets).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::jobs::{Job, JobState};
use crate::Server;

/// `GET /metrics/prometheus`
pub async fn get(State(server): State<Arc<Server>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&server)).into_response()
}

/// A sample's labels: name and value.
type Labels = Vec<(&'static str, String)>;

/// One metric family and its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// Suffix of the sample's name (`_bucket`, `_sum`, `_count` of a histogram), labels, value.
    samples: Vec<(&'static str, Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family { name, kind, help, samples: Vec::new() }
    }
}

/// A label value with `\`, `"` and line breaks escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Counters of a job's status: family name, status field, help.
const COUNTERS: &[(&str, &str, &str)] = &[
    ("dragonflow_records_in_total", "records_in", "Records read (Kafka messages or file lines)."),
    ("dragonflow_values_total", "values", "Numeric field values aggregated."),
    ("dragonflow_rejects_total", "rejects", "Input that could not be used (written to the rejects table)."),
    ("dragonflow_late_total", "late", "Values that arrived after their window had closed."),
    ("dragonflow_windows_total", "windows", "Windows closed."),
    ("dragonflow_rows_out_total", "rows_out", "Aggregate rows emitted."),
    ("dragonflow_files_total", "files", "Lake files written."),
    ("dragonflow_replayed_total", "replayed", "Values read again after a restart and skipped."),
    ("dragonflow_alarm_events_total", "alarm_events", "Alarm events raised."),
    ("dragonflow_alarm_deliveries_total", "alarm_deliveries", "Alarm events delivered through all their handlers."),
    ("dragonflow_alarm_delivery_failures_total", "alarm_delivery_failures", "Alarm events whose delivery failed."),
];

/// Gauges of a running job's status: family name, status field, help.
const GAUGES: &[(&str, &str, &str)] = &[
    ("dragonflow_records_per_second", "records_per_s", "Records read per second over the last minute."),
    ("dragonflow_watermark_lag_seconds", "watermark_lag_s", "How far the job's watermark is behind the wall clock."),
    ("dragonflow_consumer_lag", "consumer_lag", "Kafka records not yet read, summed over partitions."),
    ("dragonflow_series", "series", "Live series."),
    ("dragonflow_checkpoint_epoch", "checkpoint_epoch", "Epoch of the last checkpoint written."),
];

fn render(server: &Server) -> String {
    let jobs = server.jobs.list();
    let mut families = Vec::new();

    let mut state =
        Family::new("dragonflow_job_state", "gauge", "1 for the job's state (starting, running, failed, stopped).");
    let mut by_state = Family::new("dragonflow_jobs", "gauge", "Jobs per state.");
    for s in [JobState::Starting, JobState::Running, JobState::Failed, JobState::Stopped] {
        let n = jobs.iter().filter(|j| j.state() == s).count();
        by_state.samples.push(("", vec![("state", s.as_str().to_string())], n as f64));
    }
    let statuses: Vec<(&Arc<Job>, Value)> = jobs.iter().map(|j| (j, j.status())).collect();
    for (job, _) in &statuses {
        state.samples.push(("", job_labels(job, Some(("state", job.state().as_str()))), 1.0));
    }
    families.push(by_state);
    families.push(state);

    for (name, field, help) in COUNTERS {
        let mut f = Family::new(name, "counter", help);
        for (job, status) in &statuses {
            if let Some(v) = status.get(*field).and_then(Value::as_f64) {
                f.samples.push(("", job_labels(job, None), v));
            }
        }
        families.push(f);
    }
    let mut latency = Family::new(
        "dragonflow_window_close_latency_seconds",
        "histogram",
        "Wall-clock time from a window's end to its close.",
    );
    for (job, status) in &statuses {
        let Some(h) = status.get("window_close_latency") else { continue };
        for b in h.get("buckets").and_then(Value::as_array).into_iter().flatten() {
            let (Some(le), Some(n)) = (b.get("le").and_then(Value::as_str), b.get("count").and_then(Value::as_f64))
            else {
                continue;
            };
            let mut labels = job_labels(job, None);
            labels.push(("le", le.to_string()));
            latency.samples.push(("_bucket", labels, n));
        }
        latency.samples.push(("_sum", job_labels(job, None), h.get("sum_s").and_then(Value::as_f64).unwrap_or(0.0)));
        latency.samples.push(("_count", job_labels(job, None), h.get("count").and_then(Value::as_f64).unwrap_or(0.0)));
    }
    families.push(latency);
    let running: Vec<&(&Arc<Job>, Value)> = statuses.iter().filter(|(j, _)| j.is_running()).collect();
    for (name, field, help) in GAUGES {
        let mut f = Family::new(name, "gauge", help);
        for (job, status) in &running {
            if let Some(v) = status.get(*field).and_then(Value::as_f64) {
                f.samples.push(("", job_labels(job, None), v));
            }
        }
        families.push(f);
    }

    let mut partition_lag =
        Family::new("dragonflow_partition_consumer_lag", "gauge", "Kafka records not yet read, per partition.");
    let mut sink_queued =
        Family::new("dragonflow_sink_queued", "gauge", "Rows or lines waiting in a sink, per worker.");
    let mut sink_error = Family::new(
        "dragonflow_sink_error",
        "gauge",
        "1 while the sink reports a last error (its message is in GET /jobs/{id}), else 0.",
    );
    for (job, status) in &running {
        for p in status.get("partitions").and_then(Value::as_array).into_iter().flatten() {
            if let Some(lag) = p.get("lag").and_then(Value::as_f64) {
                let mut labels = job_labels(job, None);
                labels.push(("source", p.get("source").and_then(Value::as_str).unwrap_or_default().to_string()));
                labels.push(("partition", p.get("partition").map(|v| v.to_string()).unwrap_or_default()));
                partition_lag.samples.push(("", labels, lag));
            }
        }
        for s in status.get("sinks").and_then(Value::as_array).into_iter().flatten() {
            let mut labels = job_labels(job, None);
            labels.push(("sink", s.get("kind").and_then(Value::as_str).unwrap_or_default().to_string()));
            labels.push(("worker", s.get("worker").map(|v| v.to_string()).unwrap_or_default()));
            let queued = s.get("queued").and_then(Value::as_f64).unwrap_or(0.0);
            let failed = s.get("last_error").is_some_and(|e| !e.is_null());
            sink_queued.samples.push(("", labels.clone(), queued));
            sink_error.samples.push(("", labels, if failed { 1.0 } else { 0.0 }));
        }
    }
    families.extend([partition_lag, sink_queued, sink_error]);

    // The pull source, for jobs that poll agents.
    let mut pull_agents = Family::new("dragonflow_pull_agents", "gauge", "Pull agents polled, per health.");
    let mut polls =
        Family::new("dragonflow_pull_polls_total", "counter", "Metric requests to pull agents, per result.");
    let mut skipped = Family::new(
        "dragonflow_pull_skipped_rounds_total",
        "counter",
        "Polling rounds not started because the agent's previous round was still running.",
    );
    for (job, status) in &running {
        let Some(p) = status.get("pull").filter(|p| !p.is_null()) else { continue };
        let n = |field: &str| p.get(field).and_then(Value::as_f64).unwrap_or(0.0);
        let labelled = |name: &'static str, value: &str| job_labels(job, Some((name, value)));
        pull_agents.samples.push(("", labelled("health", "healthy"), n("agents") - n("unhealthy_agents")));
        pull_agents.samples.push(("", labelled("health", "unhealthy"), n("unhealthy_agents")));
        polls.samples.push(("", labelled("result", "ok"), n("polls_ok")));
        polls.samples.push(("", labelled("result", "failed"), n("polls_failed")));
        skipped.samples.push(("", job_labels(job, None), n("skipped")));
    }
    families.extend([pull_agents, polls, skipped]);

    let mut rules = Family::new("dragonflow_alarm_rules", "gauge", "Alarm rules kept by the server.");
    rules.samples.push(("", Vec::new(), server.alarms.rules().len() as f64));
    families.push(rules);

    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (suffix, labels, value) in f.samples {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{}{suffix} {}", f.name, number(value));
            } else {
                let _ = writeln!(out, "{}{suffix}{{{}}} {}", f.name, labels.join(","), number(value));
            }
        }
    }
    out
}

fn job_labels(job: &Job, extra: Option<(&'static str, &str)>) -> Labels {
    let mut labels = vec![("job", job.id.clone()), ("name", job.name().unwrap_or_default().to_string())];
    if let Some((k, v)) = extra {
        labels.push((k, v.to_string()));
    }
    labels
}

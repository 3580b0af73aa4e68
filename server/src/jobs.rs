//! The jobs the server runs, each on a thread of its own, and their persistence.
//!
//! A submitted spec is completed with the server's defaults before it is parsed: a Parquet sink
//! at the server's lake when it has none, and `registry.file` = the server's registry file when
//! it names none (so `PUT`/`DELETE /agents` reach it). Under `DATA_DIR/jobs/<id>/` the server
//! keeps the spec as given (`spec.toml` or `spec.json`, mode 0600: it may hold credentials) and
//! `state.json` (state, error, times, and the status when the job last ended). On start, every
//! job whose persisted state is `starting` or `running` is started again: a Kafka job resumes
//! from its checkpoint in the lake. A job stopped by the server's own shutdown keeps `running` in
//! `state.json` for that reason; a job stopped by `DELETE` is `stopped`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use pipelines::alarms::LiveAlarms;
use pipelines::spec::SourceSpec;
use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sinks::notify::{url_secrets, user_info};
use tokio::sync::watch;

use crate::api::{content_type, ApiError, ApiResult, Body, PathParam};
use crate::store::lock;
use crate::store::{self, now_rfc3339, ns_rfc3339};
use crate::Server;

/// Where a job's defaults point: the server's lake and registry file.
#[derive(Clone, Debug)]
pub struct SpecDefaults {
    pub lake: PathBuf,
    pub registry: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Starting,
    Running,
    Failed,
    Stopped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        }
    }
}

/// A job's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub state: JobState,
    #[serde(default)]
    pub error: Option<String>,
    pub submitted_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub stopped_at: Option<String>,
    /// The status (as `GET /jobs/{id}` shows it) when the job last ended.
    #[serde(default)]
    pub status: Option<Value>,
}

/// One job.
pub struct Job {
    pub id: String,
    /// The spec as run (with the server's defaults); `None` when a persisted spec no longer parses.
    spec: Option<JobSpec>,
    dir: PathBuf,
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
    record: Mutex<JobRecord>,
    /// `true` once the job's thread has finished (or when it never ran in this process).
    done: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The spec's secrets, masked wherever a message might repeat them (see [`secrets`]).
    secrets: Vec<String>,
}

impl Job {
    fn new(id: String, dir: PathBuf, spec: Option<JobSpec>, record: JobRecord, workers: usize, done: bool) -> Self {
        Job {
            id,
            dir,
            control: Arc::new(JobControl::new()),
            metrics: Arc::new(JobMetrics::new(workers)),
            record: Mutex::new(record),
            done: watch::channel(done).0,
            thread: Mutex::new(None),
            secrets: spec.as_ref().map(secrets).unwrap_or_default(),
            spec,
        }
    }

    pub fn record(&self) -> JobRecord {
        lock(&self.record).clone()
    }

    pub fn state(&self) -> JobState {
        lock(&self.record).state
    }

    pub fn name(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.name.as_deref())
    }

    /// Whether the job's thread is still running.
    pub fn is_running(&self) -> bool {
        !*self.done.borrow()
    }

    fn persist(&self, record: &JobRecord) {
        if let Err(e) = store::write_json(&self.dir.join("state.json"), record, false) {
            crate::log::event("error", "cannot persist job state", json!({"job": self.id, "error": e.to_string()}));
        }
    }

    /// The status: live while the job runs, else as it was when it ended (`null` if never known).
    pub fn status(&self) -> Value {
        if self.is_running() {
            let mut status = status_json(&self.metrics);
            scrub(&mut status, &self.secrets);
            status
        } else {
            lock(&self.record).status.clone().unwrap_or(Value::Null)
        }
    }

    /// A line of `GET /jobs`.
    pub fn summary(&self) -> Value {
        let record = self.record();
        let status = self.status();
        json!({
            "id": self.id,
            "name": self.name(),
            "state": record.state,
            "started_at": record.started_at,
            "records_in": status.get("records_in"),
            "records_per_s": status.get("records_per_s"),
            "watermark": status.get("watermark"),
        })
    }

    /// `GET /jobs/{id}`.
    pub fn detail(&self) -> Value {
        let record = self.record();
        json!({
            "id": self.id,
            "name": self.name(),
            "state": record.state,
            "error": record.error,
            "submitted_at": record.submitted_at,
            "started_at": record.started_at,
            "stopped_at": record.stopped_at,
            // How the job names itself in the lake (window files, `alarm_log.job`).
            "source_id": self.spec.as_ref().map(|s| s.source_id()),
            "spec": self.spec.as_ref().map(redacted_spec),
            "status": self.status(),
        })
    }
}

/// A job's [`pipelines::metrics::Status`] as the API shows it: times in RFC 3339 (`at`,
/// `watermark`, `checkpoint_frontier`, each partition's `watermark`), plus the window-close
/// latency histogram and the alarm counters.
pub fn status_json(metrics: &JobMetrics) -> Value {
    let status = metrics.snapshot();
    let mut v = serde_json::to_value(&status).unwrap_or(Value::Null);
    let Value::Object(map) = &mut v else { return v };
    if let Some(at) = map.remove("at_ms").and_then(|a| a.as_i64()) {
        map.insert("at".into(), json!(ns_rfc3339(at.saturating_mul(1_000_000))));
    }
    for key in ["watermark", "checkpoint_frontier"] {
        if let Some(ns) = map.get(key).and_then(Value::as_i64) {
            map.insert(key.into(), json!(ns_rfc3339(ns)));
        }
    }
    if let Some(Value::Array(parts)) = map.get_mut("partitions") {
        for p in parts {
            if let Some(ns) = p.get("watermark").and_then(Value::as_i64) {
                p["watermark"] = json!(ns_rfc3339(ns));
            }
        }
    }
    // Pull rounds: the count per bucket of delay after the slot, each with its upper bound (ms).
    if let Some(Value::Array(counts)) = map.get_mut("pull").and_then(|p| p.get_mut("round_delay")) {
        let bounds = pipelines::source::pull::ROUND_DELAY_BUCKETS_MS.map(|b| json!(b));
        *counts = counts
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"le_ms": bounds.get(i).cloned().unwrap_or(json!("+Inf")), "count": n}))
            .collect();
    }
    // Wall clock from a window's end to its close: cumulative counts per upper bound (seconds).
    let (buckets, count, sum_s) = metrics.window_close_latency();
    let buckets: Vec<Value> = buckets
        .iter()
        .map(|(le, n)| json!({"le": if le.is_infinite() { "+Inf".to_string() } else { le.to_string() }, "count": n}))
        .collect();
    map.insert("window_close_latency".into(), json!({"buckets": buckets, "count": count, "sum_s": sum_s}));
    map.insert("alarm_events".into(), json!(metrics.alarm_events.load(Ordering::Relaxed)));
    map.insert("alarm_deliveries".into(), json!(metrics.alarm_deliveries.load(Ordering::Relaxed)));
    map.insert("alarm_delivery_failures".into(), json!(metrics.alarm_delivery_failures.load(Ordering::Relaxed)));
    v
}

/// Every job of the server.
pub struct Jobs {
    dir: PathBuf,
    defaults: SpecDefaults,
    workers: usize,
    live: LiveAlarms,
    list: Mutex<Vec<Arc<Job>>>,
    shutting_down: Arc<AtomicBool>,
}

impl Jobs {
    /// Loads the jobs under `dir` and starts again those that were starting or running.
    pub fn open(dir: &Path, defaults: SpecDefaults, workers: usize, live: LiveAlarms) -> anyhow::Result<Jobs> {
        store::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let jobs = Jobs {
            dir: dir.to_path_buf(),
            defaults,
            workers,
            live,
            list: Mutex::new(Vec::new()),
            shutting_down: Arc::default(),
        };
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if !path.join("state.json").is_file() {
                continue;
            }
            match jobs.load(&id, &path) {
                Ok(job) => loaded.push(job),
                Err(e) => crate::log::event("error", "cannot load job", json!({"job": id, "error": format!("{e:#}")})),
            }
        }
        loaded.sort_by(|a, b| (&a.1.submitted_at, &a.0).cmp(&(&b.1.submitted_at, &b.0)));
        for (id, record, text) in loaded {
            let dir = jobs.dir.join(&id);
            let resume = matches!(record.state, JobState::Starting | JobState::Running);
            match (resume, prepare(&text, &jobs.defaults)) {
                (true, Ok(spec)) => {
                    let record = JobRecord { state: JobState::Starting, ..record };
                    let job = Arc::new(Job::new(id.clone(), dir, Some(spec), record, workers, false));
                    lock(&jobs.list).push(job.clone());
                    crate::log::event("info", "restarting job", json!({"job": id}));
                    if let Err(e) = jobs.start(&job) {
                        jobs.fail(&job, format!("cannot restart: {}", e.message));
                    }
                }
                (true, Err(e)) => {
                    let job = Arc::new(Job::new(id, dir, None, record, workers, true));
                    jobs.fail(&job, format!("cannot restart: {e}"));
                    lock(&jobs.list).push(job);
                }
                (false, spec) => {
                    let job = Arc::new(Job::new(id, dir, spec.ok(), record, workers, true));
                    lock(&jobs.list).push(job);
                }
            }
        }
        Ok(jobs)
    }

    fn load(&self, id: &str, dir: &Path) -> anyhow::Result<(String, JobRecord, String)> {
        let state = std::fs::read(dir.join("state.json")).context("cannot read state.json")?;
        let record: JobRecord = serde_json::from_slice(&state).context("cannot parse state.json")?;
        let spec = ["spec.toml", "spec.json"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .context("no spec.toml or spec.json")?;
        let text = std::fs::read_to_string(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
        Ok((id.to_string(), record, text))
    }

    fn fail(&self, job: &Job, error: String) {
        let mut record = lock(&job.record);
        record.state = JobState::Failed;
        record.error = Some(error);
        record.stopped_at = Some(now_rfc3339());
        job.persist(&record);
    }

    /// Every job, in the order submitted.
    pub fn list(&self) -> Vec<Arc<Job>> {
        lock(&self.list).clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.list).iter().find(|j| j.id == id).cloned()
    }

    /// Parses, completes and persists a spec, and starts the job.
    pub fn submit(&self, text: &str) -> ApiResult<Arc<Job>> {
        let spec = prepare(text, &self.defaults)?;
        if let SourceSpec::File(f) = &spec.source {
            if let Err(e) = std::fs::metadata(&f.path) {
                let message = format!("cannot read {}: {e}", f.path.display());
                return Err(SpecError { field: "source.path".into(), message }.into());
            }
        }
        let (id, dir) = loop {
            let id = format!("j-{:08x}", rand::random::<u32>());
            let dir = self.dir.join(&id);
            if !dir.exists() && self.get(&id).is_none() {
                break (id, dir);
            }
        };
        let io = |e: std::io::Error| ApiError::internal(format!("cannot persist job {id}: {e}"));
        store::create_private_dir(&dir).map_err(io)?;
        let file = if text.trim_start().starts_with('{') { "spec.json" } else { "spec.toml" };
        store::write_atomic(&dir.join(file), text.as_bytes(), true).map_err(io)?;
        let record = JobRecord {
            state: JobState::Starting,
            error: None,
            submitted_at: now_rfc3339(),
            started_at: None,
            stopped_at: None,
            status: None,
        };
        store::write_json(&dir.join("state.json"), &record, false).map_err(io)?;
        let job = Arc::new(Job::new(id, dir, Some(spec), record, self.workers, false));
        lock(&self.list).push(job.clone());
        if let Err(e) = self.start(&job) {
            self.fail(&job, e.message.clone());
            let _ = job.done.send_replace(true);
            return Err(e);
        }
        Ok(job)
    }

    /// Runs the job on a thread of its own.
    fn start(&self, job: &Arc<Job>) -> ApiResult<()> {
        let spec = job.spec.clone().ok_or_else(|| ApiError::internal("the job has no spec"))?;
        let options =
            RunOptions { workers: self.workers, process: 0, hosts: Vec::new(), alarms: Some(self.live.clone()) };
        let (runner, shutting_down) = (job.clone(), self.shutting_down.clone());
        let handle = std::thread::Builder::new()
            .name(format!("dragonflow-{}", job.id))
            .spawn(move || run(runner, spec, options, shutting_down))
            .map_err(|e| ApiError::internal(format!("cannot start a thread for the job: {e}")))?;
        *lock(&job.thread) = Some(handle);
        Ok(())
    }

    /// Stops a job gracefully and waits until it has stopped.
    pub async fn stop(&self, job: &Arc<Job>) {
        job.control.stop();
        let mut done = job.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Forgets a job that has ended: its directory goes (its output in the lake stays).
    pub fn remove(&self, job: &Arc<Job>) -> ApiResult<()> {
        if job.is_running() {
            return Err(ApiError::conflict(format!("job {} is running", job.id)));
        }
        match std::fs::remove_dir_all(&job.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::internal(format!("cannot remove job {}: {e}", job.id))),
        }
        lock(&self.list).retain(|j| !Arc::ptr_eq(j, job));
        Ok(())
    }

    /// Stops every job and waits for them; their persisted state stays as it was (see the module
    /// docs).
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let jobs = self.list();
        for job in &jobs {
            job.control.stop();
        }
        for job in &jobs {
            let handle = lock(&job.thread).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

/// The body of a job's thread.
fn run(job: Arc<Job>, spec: JobSpec, options: RunOptions, shutting_down: Arc<AtomicBool>) {
    {
        let mut record = lock(&job.record);
        record.state = JobState::Running;
        record.started_at = Some(now_rfc3339());
        record.stopped_at = None;
        record.error = None;
        record.status = None;
        job.persist(&record);
    }
    crate::log::event("info", "job started", json!({"job": job.id, "name": job.name()}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_job(&spec, &options, job.control.clone(), job.metrics.clone())
    }));
    let (state, error) = match result {
        Ok(Ok(_)) => (JobState::Stopped, None),
        Ok(Err(e)) => (JobState::Failed, Some(scrubbed(&e.to_string(), &job.secrets))),
        Err(_) => (JobState::Failed, Some("the job panicked".to_string())),
    };
    {
        let mut record = lock(&job.record);
        record.state = state;
        record.error = error.clone();
        record.stopped_at = Some(now_rfc3339());
        let mut status = status_json(&job.metrics);
        scrub(&mut status, &job.secrets);
        record.status = Some(status);
        if shutting_down.load(Ordering::SeqCst) && state == JobState::Stopped {
            // Stopped only because the server is: the next start resumes it.
            job.persist(&JobRecord { state: JobState::Running, stopped_at: None, ..record.clone() });
        } else {
            job.persist(&record);
        }
    }
    let level = if state == JobState::Failed { "error" } else { "info" };
    crate::log::event(level, "job ended", json!({"job": job.id, "state": state, "error": error}));
    let _ = job.done.send_replace(true);
}

/// Samples every running job's record count every few seconds, for its `records_per_s` over the
/// last minute. Ends with the server.
pub(crate) fn start_rate_sampler(server: Weak<Server>) {
    let _ = std::thread::Builder::new().name("dragonflow-rates".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(2));
        let Some(server) = server.upgrade() else { return };
        for job in server.jobs.list().iter().filter(|j| j.is_running()) {
            job.metrics.record(Instant::now());
        }
    });
}

/// Parses a spec as given, completed with the server's defaults (see the module docs). Errors
/// name the field as `JobSpec::parse` does; the fields added come after the given ones, so the
/// given `[[sink]]`s keep their positions.
pub fn prepare(text: &str, defaults: &SpecDefaults) -> Result<JobSpec, SpecError> {
    let lake = defaults.lake.to_string_lossy().into_owned();
    let registry = defaults.registry.to_string_lossy().into_owned();
    let completed = if text.trim_start().starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut spec)) => {
                let has_parquet = match spec.get("sink") {
                    Some(Value::Array(sinks)) => {
                        sinks.iter().any(|s| s.get("kind").and_then(Value::as_str) == Some("parquet"))
                    }
                    _ => false,
                };
                if !has_parquet {
                    if let Value::Array(sinks) = spec.entry("sink").or_insert_with(|| json!([])) {
                        sinks.push(json!({"kind": "parquet", "path": lake}));
                    }
                }
                if let Value::Object(r) = spec.entry("registry").or_insert_with(|| json!({})) {
                    r.entry("file").or_insert_with(|| json!(registry));
                }
                Some(Value::Object(spec).to_string())
            }
            _ => None,
        }
    } else {
        match toml::from_str::<toml::Table>(text) {
            Ok(mut spec) => {
                let has_parquet = match spec.get("sink") {
                    Some(toml::Value::Array(sinks)) => {
                        sinks.iter().any(|s| s.get("kind").and_then(toml::Value::as_str) == Some("parquet"))
                    }
                    _ => false,
                };
                if !has_parquet {
                    if let toml::Value::Array(sinks) =
                        spec.entry("sink").or_insert_with(|| toml::Value::Array(Vec::new()))
                    {
                        let mut sink = toml::Table::new();
                        sink.insert("kind".into(), "parquet".into());
                        sink.insert("path".into(), lake.into());
                        sinks.push(toml::Value::Table(sink));
                    }
                }
                if let toml::Value::Table(r) =
                    spec.entry("registry").or_insert_with(|| toml::Value::Table(toml::Table::new()))
                {
                    r.entry("file").or_insert_with(|| registry.into());
                }
                toml::to_string(&spec).ok()
            }
            Err(_) => None,
        }
    };
    JobSpec::parse(completed.as_deref().unwrap_or(text))
}

/// A spec as responses show it: serialised without the secrets serde leaves out (passwords,
/// header values), handler URLs reduced to their origin, user info removed from sink URLs, and
/// Kafka options that may hold credentials masked.
pub fn redacted_spec(spec: &JobSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(Value::Array(handlers)) = v.get_mut("handler") {
        for h in handlers {
            crate::alarms::redact_handler_json(h);
        }
    }
    if let Some(Value::Array(sinks)) = v.get_mut("sink") {
        for s in sinks {
            if let Some(Value::String(url)) = s.get_mut("url") {
                *url = without_user_info(url);
            }
        }
    }
    if let Some(Value::Object(options)) = v.pointer_mut("/source/options") {
        for (name, value) in options.iter_mut() {
            if secret_option(name) {
                *value = json!("<redacted>");
            }
        }
    }
    v
}

/// What in a spec is secret, as it could appear in a message of a sink, a handler or a library:
/// passwords, user info of URLs, handler URLs (the path is the token) and header values, and the
/// values of Kafka options that look like credentials. Strings shorter than 4 characters are left
/// alone (masking them would garble messages).
pub fn secrets(spec: &JobSpec) -> Vec<String> {
    let mut found = Vec::new();
    for sink in &spec.sinks {
        if let pipelines::spec::SinkSpec::InfluxDb(i) = sink {
            found.extend(i.password.clone());
            found.extend(user_info(&i.url).into_iter().map(String::from));
        }
    }
    for h in &spec.handlers {
        match &h.kind {
            pipelines::spec::HandlerKind::Slack(s) => found.extend(url_secrets(&s.url).into_iter().map(String::from)),
            pipelines::spec::HandlerKind::Smtp(m) => found.extend(m.password.clone()),
            pipelines::spec::HandlerKind::Webhook(w) => {
                found.extend(url_secrets(&w.url).into_iter().map(String::from));
                found.extend(w.headers.values().cloned());
            }
        }
    }
    if let SourceSpec::Kafka(k) = &spec.source {
        found.extend(k.options.iter().filter(|(name, _)| secret_option(name)).map(|(_, v)| v.clone()));
    }
    found.retain(|s| s.chars().count() >= 4);
    // Longest first, so a secret containing another is masked whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

fn secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "jaas"].iter().any(|s| name.contains(s))
}

/// `text` with every secret replaced by `<redacted>`.
fn scrubbed(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
}

/// Every string of a JSON value scrubbed.
fn scrub(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) if secrets.iter().any(|secret| s.contains(secret.as_str())) => *s = scrubbed(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, secrets)),
        _ => {}
    }
}

/// `http://user:pass@host/…` → `http://host/…`.
fn without_user_info(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

// Handlers.

/// `POST /jobs`
pub async fn submit(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let text = body.text()?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("expected a job spec (TOML or JSON) in the body"));
    }
    match content_type(&headers).as_deref() {
        // curl sends its form type by default: like no type, read by content.
        None
        | Some(
            "application/toml"
            | "application/x-toml"
            | "text/plain"
            | "text/x-toml"
            | "text/toml"
            | "application/x-www-form-urlencoded"
            | "application/octet-stream",
        ) => {}
        Some("application/json") if text.trim_start().starts_with('{') => {}
        Some("application/json") => return Err(ApiError::bad_request("expected a JSON object (the job spec)")),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {other}: expected application/toml, text/plain or application/json"),
            ))
        }
    }
    let jobs = server.clone();
    let text = text.to_string();
    // Parsing checks files (the source, the registry): off the async threads.
    let job = tokio::task::spawn_blocking(move || jobs.jobs.submit(&text))
        .await
        .map_err(|e| ApiError::internal(format!("job submission failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(json!({"id": job.id, "state": JobState::Starting}))))
}

/// `GET /jobs`
pub async fn list(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(Value::Array(server.jobs.list().iter().map(|j| j.summary()).collect()))
}

/// `GET /jobs/{id}`
pub async fn get(State(server): State<Arc<Server>>, PathParam(id): PathParam) -> ApiResult<Json<Value>> {
    let job = server.jobs.get(&id).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    Ok(Json(job.detail()))
}

/// `DELETE /jobs/{id}`: stops a running job and answers with its final state; removes a job that
/// had already ended.
pub async fn delete(State(server): State<Arc<Server>>, PathParam(id): PathParam) -> ApiResult<Json<Value>> {
    let job = server.jobs.get(&id).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    if job.is_running() {
        server.jobs.stop(&job).await;
        let mut detail = job.detail();
        detail["removed"] = json!(false);
        return Ok(Json(detail));
    }
    server.jobs.remove(&job)?;
    let mut detail = job.detail();
    detail["removed"] = json!(true);
    Ok(Json(detail))
}

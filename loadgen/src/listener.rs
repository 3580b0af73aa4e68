//! Pull mode: the fleet's agents answer over HTTP, like the reference framework's agent listener,
//! so that a pulling pipeline can poll them.
//!
//! Routes (the agent routes answer as the agent's [`Behaviour`] says):
//! - `GET /agents/{vmId}/metric/{measurement}`: 200 with the agent's metric of the latest tick, the
//!   very bytes push mode publishes: one Telegraf JSON metric `{"fields":…,"name":…,"tags":…,"timestamp":…}`
//!   (each measurement of [`MEASUREMENTS`] has one instance, so push mode never sends a batch).
//! - `GET /agents/{vmId}/healthcheck`: 204.
//! - `GET /control/agents`: every agent and how it answers now; `POST /control/agents/{vmId}?state=…`
//!   with `ok`, `fail`, `slow`, `down` switches one agent, `auto` returns it to its configured behaviour.
//! - an unknown agent, measurement or route: 404 with `{"error":"…"}`.
//!
//! The fleet ticks in real time on its interval (on a blocking thread); each tick replaces a
//! snapshot of every agent's payloads, so a request costs a map lookup and a reference count.
//! The metrics are those of push mode for the same seed: the first tick serves exactly the bytes
//! push mode's first tick publishes at that time.
//!
//! Misbehaving agents are chosen from the seed, `round(share × N)` of each kind, disjoint:
//! - *fail*: 500 on every agent route;
//! - *slow*: answers after `slow_delay`, with the values current when it answers;
//! - *down* (unreachable): never answers. The request is held without a response until the client
//!   gives up and closes the connection, or `unreachable_hold` passes and the connection is closed
//!   without an answer: a poller sees what a VM behind a firewall that drops packets gives, a timeout;
//! - *flapping*: healthy and failing in turns of `flap_every`, from the start (healthy first).
//!
//! Besides serving, it writes a registry file of the agents (`mechanism = "pull"` with each
//! `pull_url`; rewritten, atomically, when churn replaces agents) and a JSON-lines log of every
//! value served, to cross-check what a pulling pipeline aggregated.
//!
//! The accept loop is our own (hyper's HTTP/1 server under axum's router) because a handler
//! cannot close its connection without an answer through axum's `serve`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use operators::registry::{AgentRecord, AgentState, Mechanism};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tower::Service;

use crate::fleet::{stream, STREAM_BEHAVIOUR};
use crate::kafka::wall_ns;
use crate::{interval_ns, AgentInfo, Fleet, FleetConfig, Format, LoadgenError, Message, MEASUREMENTS};

/// Measurements per agent.
const M: usize = MEASUREMENTS.len();

/// How an agent answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// Answers at once.
    Ok,
    /// Answers 500.
    Fail,
    /// Answers after the listener's `slow_delay`.
    Slow,
    /// Never answers (unreachable).
    Down,
}

impl Behaviour {
    const ALL: [Behaviour; 4] = [Behaviour::Ok, Behaviour::Fail, Behaviour::Slow, Behaviour::Down];

    /// `ok`, `fail`, `slow` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Ok => "ok",
            Behaviour::Fail => "fail",
            Behaviour::Slow => "slow",
            Behaviour::Down => "down",
        }
    }

    /// The behaviour of that [`Behaviour::name`].
    pub fn parse(name: &str) -> Option<Behaviour> {
        Behaviour::ALL.into_iter().find(|b| b.name() == name)
    }

    /// A control override as stored: 0 is none.
    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Behaviour> {
        Behaviour::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// How the agents are served.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Where to listen; port 0 takes any free port ([`AgentListener::local_addr`] says which).
    pub listen: SocketAddr,
    /// How often the fleet ticks (real time).
    pub interval: Duration,
    /// Share of agents that answer after `slow_delay`, 0.0–1.0.
    pub slow_share: f64,
    /// How long a slow agent takes to answer.
    pub slow_delay: Duration,
    /// Share of agents that answer 500, 0.0–1.0.
    pub fail_share: f64,
    /// Share of agents that never answer, 0.0–1.0.
    pub unreachable_share: f64,
    /// How long an unreachable agent holds a request before it closes the connection without an
    /// answer (0: at once).
    pub unreachable_hold: Duration,
    /// Flapping agents switch between healthy and failing this often (needed with `flap_share`).
    pub flap_every: Option<Duration>,
    /// Share of agents that flap, 0.0–1.0 (they are neither slow, failing nor unreachable).
    pub flap_share: f64,
    /// Write a registry file here (JSON array of records, `mechanism = "pull"` with each `pull_url`),
    /// again whenever churn changes the agents; replaced atomically.
    pub registry_out: Option<PathBuf>,
    /// Write one JSON line per value served here: `{"vm_id","key","measurement","timestamp","fields"}`.
    pub log: Option<PathBuf>,
}

impl Default for ListenerConfig {
    /// Any free loopback port, 10 s ticks, every agent healthy, a 2 s slow delay, 60 s hold.
    fn default() -> Self {
        ListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            interval: Duration::from_secs(10),
            slow_share: 0.0,
            slow_delay: Duration::from_secs(2),
            fail_share: 0.0,
            unreachable_share: 0.0,
            unreachable_hold: Duration::from_secs(60),
            flap_every: None,
            flap_share: 0.0,
            registry_out: None,
            log: None,
        }
    }
}

impl ListenerConfig {
    /// Refuses settings that cannot be served, naming the setting.
    fn validate(&self, fleet: &FleetConfig) -> Result<(), LoadgenError> {
        let bad = |m: String| Err(LoadgenError::Config(m));
        interval_ns(self.interval)?;
        let shares = [
            ("slow_share", self.slow_share),
            ("fail_share", self.fail_share),
            ("unreachable_share", self.unreachable_share),
            ("flap_share", self.flap_share),
        ];
        for (name, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("`{name}` must be between 0 and 1, got {v}"));
            }
        }
        let total: f64 = shares.iter().map(|s| s.1).sum();
        if total > 1.0 + 1e-9 {
            return bad(format!(
                "the shares of slow, failing, unreachable and flapping agents add up to {total}, more than 1"
            ));
        }
        match self.flap_every {
            Some(every) if every.is_zero() => return bad("`flap_every` must be positive".into()),
            None if self.flap_share > 0.0 => return bad("`flap_share` needs `flap_every`".into()),
            _ => {}
        }
        if fleet.format != Format::Json {
            return bad("pull mode serves Telegraf JSON: the format must be json".into());
        }
        if fleet.reorder > 0.0 {
            return bad("`reorder` has no meaning in pull mode: an agent answers with its latest values".into());
        }
        Ok(())
    }
}

/// Each agent's configured behaviour and whether it flaps, by slot: `round(share × n)` agents of
/// each kind, drawn from `seed`'s own stream (changing a share does not change the metrics).
fn assign(n: usize, seed: u64, cfg: &ListenerConfig) -> (Vec<Behaviour>, Vec<bool>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut stream(seed, STREAM_BEHAVIOUR));
    let count = |share: f64| (share * n as f64).round() as usize;
    let mut behaviours = vec![Behaviour::Ok; n];
    let mut flaps = vec![false; n];
    let mut order = order.into_iter();
    for (b, share) in
        [(Behaviour::Fail, cfg.fail_share), (Behaviour::Slow, cfg.slow_share), (Behaviour::Down, cfg.unreachable_share)]
    {
        for slot in order.by_ref().take(count(share)) {
            behaviours[slot] = b;
        }
    }
    for slot in order.take(count(cfg.flap_share)) {
        flaps[slot] = true;
    }
    (behaviours, flaps)
}

/// The live agents as of a tick: they only change with churn.
struct Roster {
    /// [`Fleet::agents_ever`] when taken.
    ever: usize,
    agents: Vec<AgentInfo>,
    keys: Vec<String>,
    by_vm: HashMap<String, usize>,
}

impl Roster {
    fn of(fleet: &Fleet) -> Roster {
        let agents = fleet.agents().to_vec();
        Roster {
            ever: fleet.agents_ever(),
            keys: agents.iter().map(AgentInfo::key).collect(),
            by_vm: agents.iter().enumerate().map(|(i, a)| (a.vm_id.clone(), i)).collect(),
            agents,
        }
    }
}

/// What the agents answer until the next tick.
struct Snapshot {
    tick_ns: i64,
    roster: Arc<Roster>,
    /// Per slot, per measurement of [`MEASUREMENTS`]: the payload.
    bodies: Vec<[Bytes; M]>,
}

/// The fleet and the roster of its last tick.
struct Ticker {
    fleet: Fleet,
    roster: Arc<Roster>,
    out: Vec<Message>,
}

impl Ticker {
    fn new(fleet: Fleet) -> Ticker {
        Ticker { roster: Arc::new(Roster::of(&fleet)), fleet, out: Vec::new() }
    }

    /// Ticks the fleet at `ts_ns`: the new snapshot, and whether the agents changed (churn).
    fn tick(&mut self, ts_ns: i64) -> (Snapshot, bool) {
        self.out.clear();
        self.fleet.tick(ts_ns, &mut self.out);
        let changed = self.fleet.agents_ever() != self.roster.ever;
        if changed {
            self.roster = Arc::new(Roster::of(&self.fleet));
        }
        // Without reordering a tick is every agent's measurements, agent by agent, in order.
        let mut msgs = self.out.drain(..);
        let bodies = (0..self.roster.agents.len())
            .map(|slot| {
                std::array::from_fn(|m| match msgs.next() {
                    Some(msg) => {
                        debug_assert_eq!(
                            (msg.key.as_str(), msg.measurement),
                            (self.roster.keys[slot].as_str(), MEASUREMENTS[m])
                        );
                        Bytes::from(msg.payload)
                    }
                    None => Bytes::new(),
                })
            })
            .collect();
        (Snapshot { tick_ns: ts_ns, roster: self.roster.clone(), bodies }, changed)
    }
}

/// Request counts, shared by the handlers.
struct Counters {
    /// By status code (100–599).
    by_status: Box<[AtomicU64]>,
    unanswered: AtomicU64,
    /// Requests of unreachable agents held open now.
    held: AtomicU64,
    slow: AtomicU64,
    logged: AtomicU64,
    ticks: AtomicU64,
    tick_ns: AtomicI64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            unanswered: AtomicU64::new(0),
            held: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            tick_ns: AtomicI64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn answered(&self, status: StatusCode) {
        if let Some(c) = usize::from(status.as_u16()).checked_sub(100).and_then(|i| self.by_status.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }
}

/// Counts a held request for as long as it is held (the server drops it with its connection).
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes the request's connection without an answer when notified.
#[derive(Clone)]
struct ConnectionCut(Arc<Notify>);

/// What the handlers share.
struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    ticker: Mutex<Ticker>,
    configured: Vec<Behaviour>,
    flaps: Vec<bool>,
    /// Control overrides by slot ([`Behaviour::code`]; 0 = none).
    overrides: Vec<AtomicU8>,
    started: Instant,
    cfg: ListenerConfig,
    base_url: String,
    public_ip: String,
    counters: Counters,
    /// The served-values log; taken (closing it) at shutdown.
    log: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
}

impl Shared {
    fn current(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn slot_of(&self, vm_id: &str) -> Option<usize> {
        self.current().roster.by_vm.get(vm_id).copied()
    }

    /// How the agent in `slot` answers now: its control override, else failing in the odd turns
    /// of a flapping agent, else as configured.
    fn behaviour(&self, slot: usize) -> Behaviour {
        if let Some(b) = self.overrides.get(slot).and_then(|o| Behaviour::from_code(o.load(Ordering::Relaxed))) {
            return b;
        }
        if let (Some(true), Some(every)) = (self.flaps.get(slot), self.cfg.flap_every) {
            if (self.started.elapsed().as_nanos() / every.as_nanos().max(1)) % 2 == 1 {
                return Behaviour::Fail;
            }
        }
        self.configured.get(slot).copied().unwrap_or(Behaviour::Ok)
    }

    fn status_of(&self, snap: &Snapshot, slot: usize) -> AgentStatus {
        AgentStatus {
            vm_id: snap.roster.agents[slot].vm_id.clone(),
            key: snap.roster.keys[slot].clone(),
            state: self.behaviour(slot),
            configured: self.configured[slot],
            flaps: self.flaps[slot],
            overridden: self.overrides[slot].load(Ordering::Relaxed) != 0,
        }
    }

    /// Ticks the fleet at `ts_ns` and serves the result (blocking: it may write the registry).
    fn tick_at(&self, ts_ns: i64) {
        let (snap, changed) = match self.ticker.lock() {
            Ok(mut t) => t.tick(ts_ns),
            Err(poisoned) => poisoned.into_inner().tick(ts_ns),
        };
        if changed {
            let old = self.current();
            // A new VM in a slot starts as the slot is configured, not as its predecessor was switched.
            for (slot, (was, now)) in old.roster.agents.iter().zip(&snap.roster.agents).enumerate() {
                if was.vm_id != now.vm_id {
                    self.overrides[slot].store(0, Ordering::Relaxed);
                }
            }
            if let Some(path) = &self.cfg.registry_out {
                if let Err(e) = write_registry(path, &self.base_url, &self.public_ip, &snap.roster.agents) {
                    self.counters.error(e.to_string());
                }
            }
        }
        self.counters.ticks.fetch_add(1, Ordering::Relaxed);
        self.counters.tick_ns.store(snap.tick_ns, Ordering::Relaxed);
        let snap = Arc::new(snap);
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// Logs one value served, as its payload has it.
    fn log_served(&self, vm_id: &str, key: &str, measurement: &str, body: &[u8]) {
        #[derive(Deserialize)]
        struct Served<'a> {
            #[serde(borrow)]
            fields: &'a RawValue,
            timestamp: i64,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            vm_id: &'a str,
            key: &'a str,
            measurement: &'a str,
            timestamp: i64,
            fields: &'a RawValue,
        }
        let Some(tx) = self.log.lock().ok().and_then(|l| l.clone()) else { return };
        let line = serde_json::from_slice::<Served<'_>>(body).and_then(|s| {
            serde_json::to_vec(&Line { vm_id, key, measurement, timestamp: s.timestamp, fields: s.fields })
        });
        match line {
            Ok(mut line) => {
                line.push(b'\n');
                if tx.send(line).is_ok() {
                    self.counters.logged.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.error("the served-values log stopped (see its error at the end)".into());
                }
            }
            Err(e) => self.counters.error(format!("cannot log a value of {vm_id}: {e}")),
        }
    }
}

/// One agent as the control routes show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    /// The VM id, as in the URLs.
    pub vm_id: String,
    /// `{nsId}/{mcisId}/{vmId}/{cspType}`.
    pub key: String,
    /// How it answers now.
    pub state: Behaviour,
    /// How it was configured (from the seed and the shares).
    pub configured: Behaviour,
    /// Whether it flaps between healthy and failing.
    pub flaps: bool,
    /// Whether a control request switched it (`state` then says to what).
    pub overridden: bool,
}

/// The registry records of `agents`: pull agents at `base_url`/agents/{vmId}.
fn registry_records(base_url: &str, public_ip: &str, agents: &[AgentInfo]) -> Vec<AgentRecord> {
    agents
        .iter()
        .map(|a| AgentRecord {
            key: a.key(),
            ns_id: a.ns_id.clone(),
            mcis_id: a.mcis_id.clone(),
            vm_id: a.vm_id.clone(),
            csp_type: a.csp_type.clone(),
            os_type: a.os_type.clone(),
            mechanism: Mechanism::Pull,
            public_ip: public_ip.to_string(),
            state: AgentState::Enable,
            vcpu: Some(f64::from(a.vcpu)),
            memory_gib: Some(f64::from(a.memory_gib)),
            cost_per_hour: None,
            pull_url: Some(format!("{base_url}/agents/{}", a.vm_id)),
        })
        .collect()
}

/// Writes the registry file: a temporary file beside it, synced, then renamed over it, so that
/// a reader never sees half a file.
fn write_registry(path: &Path, base_url: &str, public_ip: &str, agents: &[AgentInfo]) -> Result<(), LoadgenError> {
    let io_err = |source| LoadgenError::Io { path: path.to_path_buf(), source };
    let json = serde_json::to_vec_pretty(&registry_records(base_url, public_ip, agents))
        .map_err(|e| io_err(std::io::Error::other(e)))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "registry".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&json)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(())
}

/// A JSON error answer.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn unknown_agent(vm_id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no agent {vm_id:?}"))
}

/// What an agent does before it answers: nothing, wait, fail, or never answer. `Some` is the
/// answer instead of the agent's own.
async fn misbehave(
    shared: &Shared,
    slot: usize,
    vm_id: &str,
    cut: Option<Extension<ConnectionCut>>,
) -> Option<Response> {
    match shared.behaviour(slot) {
        Behaviour::Ok => None,
        Behaviour::Fail => {
            Some(error(StatusCode::INTERNAL_SERVER_ERROR, format!("agent {vm_id} is failing (simulated)")))
        }
        Behaviour::Slow => {
            shared.counters.slow.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(shared.cfg.slow_delay).await;
            None
        }
        Behaviour::Down => {
            shared.counters.unanswered.fetch_add(1, Ordering::Relaxed);
            let _held = Held::new(&shared.counters.held);
            tokio::time::sleep(shared.cfg.unreachable_hold).await;
            if let Some(Extension(cut)) = cut {
                cut.0.notify_one();
            }
            // The connection task drops this request with its connection: no answer, ever.
            std::future::pending().await
        }
    }
}

async fn metric(
    State(shared): State<Arc<Shared>>,
    cut: Option<Extension<ConnectionCut>>,
    UrlPath((vm_id, measurement)): UrlPath<(String, String)>,
) -> Response {
    let Some(slot) = shared.slot_of(&vm_id) else { return unknown_agent(&vm_id) };
    if let Some(answer) = misbehave(&shared, slot, &vm_id, cut).await {
        return answer;
    }
    let Some(m) = MEASUREMENTS.iter().position(|x| *x == measurement) else {
        let known = MEASUREMENTS.join(", ");
        return error(
            StatusCode::NOT_FOUND,
            format!("agent {vm_id} has no measurement {measurement:?} (it has {known})"),
        );
    };
    // After a slow agent's delay: the values current when it answers (a retired VM is gone).
    let snap = shared.current();
    let Some(&slot) = snap.roster.by_vm.get(&vm_id) else { return unknown_agent(&vm_id) };
    let body = snap.bodies[slot][m].clone();
    shared.log_served(&vm_id, &snap.roster.keys[slot], &measurement, &body);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthcheck(
    State(shared): State<Arc<Shared>>,
    cut: Option<Extension<ConnectionCut>>,
    UrlPath(vm_id): UrlPath<String>,
) -> Response {
    let Some(slot) = shared.slot_of(&vm_id) else { return unknown_agent(&vm_id) };
    match misbehave(&shared, slot, &vm_id, cut).await {
        Some(answer) => answer,
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn list_agents(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.current();
    let all: Vec<AgentStatus> = (0..snap.roster.agents.len()).map(|slot| shared.status_of(&snap, slot)).collect();
    Json(all).into_response()
}

#[derive(Deserialize)]
struct ControlQuery {
    state: Option<String>,
}

async fn control(
    State(shared): State<Arc<Shared>>,
    UrlPath(vm_id): UrlPath<String>,
    Query(query): Query<ControlQuery>,
) -> Response {
    let snap = shared.current();
    let Some(&slot) = snap.roster.by_vm.get(&vm_id) else { return unknown_agent(&vm_id) };
    let state = query.state.as_deref().map(str::trim);
    let code = match state.map(|s| (s, Behaviour::parse(s))) {
        Some(("auto", _)) => 0,
        Some((_, Some(b))) => b.code(),
        _ => {
            let got = state.map_or_else(|| "nothing".to_string(), |s| format!("{s:?}"));
            return error(StatusCode::BAD_REQUEST, format!("`state` must be ok, fail, slow, down or auto, got {got}"));
        }
    };
    shared.overrides[slot].store(code, Ordering::Relaxed);
    Json(shared.status_of(&snap, slot)).into_response()
}

async fn no_route(uri: Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/agents/{vm_id}/metric/{measurement}", get(metric))
        .route("/agents/{vm_id}/healthcheck", get(healthcheck))
        .route("/control/agents", get(list_agents))
        .route("/control/agents/{vm_id}", post(control))
        .fallback(no_route)
        .with_state(shared)
}

/// Accepts connections until `stop`, then drops every connection (open requests get no answer).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let router = router(shared.clone());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: say so, let connections end, go on.
                        shared.counters.error(format!("accepting a connection: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let cut = ConnectionCut(Arc::new(Notify::new()));
                let (router, shared, request_cut) = (router.clone(), shared.clone(), cut.clone());
                let service = service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(request_cut.clone());
                    let (mut router, shared) = (router.clone(), shared.clone());
                    async move {
                        let response = router.call(request).await;
                        if let Ok(r) = &response {
                            shared.counters.answered(r.status());
                        }
                        response
                    }
                });
                connections.spawn(async move {
                    let connection =
                        http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        // Dropping the connection closes the socket.
                        _ = cut.0.notified() => {}
                    }
                });
            }
        }
    }
    connections.shutdown().await;
}

/// Ticks the fleet every `interval` of real time until `stop`; a late tick skips the moments it
/// missed rather than catching up in a burst.
async fn tick_loop(shared: Arc<Shared>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now();
    let mut k: u32 = 1;
    loop {
        let Some(offset) = interval.checked_mul(k) else { return };
        tokio::select! {
            _ = tokio::time::sleep_until(start + offset) => {}
            _ = stop.changed() => return,
        }
        let done = start.elapsed().as_nanos() / interval.as_nanos().max(1);
        k = u32::try_from(done + 1).unwrap_or(u32::MAX);
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.tick_at(wall_ns())).await;
    }
}

/// The thread writing the served-values log.
type LogWriter = std::thread::JoinHandle<std::io::Result<()>>;

/// Writes the served-values log on a thread of its own, flushing whenever it has caught up.
fn spawn_log_writer(path: &Path) -> Result<(mpsc::Sender<Vec<u8>>, LogWriter), LoadgenError> {
    let io_err = |source| LoadgenError::Io { path: path.to_path_buf(), source };
    let file = File::create(path).map_err(io_err)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let handle = std::thread::Builder::new()
        .name("loadgen-log".into())
        .spawn(move || {
            let mut w = BufWriter::with_capacity(1 << 16, file);
            while let Ok(line) = rx.recv() {
                w.write_all(&line)?;
                while let Ok(line) = rx.try_recv() {
                    w.write_all(&line)?;
                }
                w.flush()?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })
        .map_err(io_err)?;
    Ok((tx, handle))
}

/// What a listener has served so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerStats {
    /// Live agents.
    pub agents: usize,
    /// Answers by status code (200 metric, 204 healthcheck, 404, 500, …; control requests too).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests of unreachable agents, never answered.
    pub unanswered: u64,
    /// Of those, held open now.
    pub held: u64,
    /// Answers a slow agent delayed.
    pub slow: u64,
    /// Lines written to the served-values log.
    pub logged: u64,
    /// Fleet ticks so far (the first at start).
    pub ticks: u64,
    /// Event time of the latest tick, ns.
    pub tick_ns: i64,
    /// Errors (log, registry, accept); `last_error` says the latest.
    pub errors: u64,
    /// The most recent error.
    pub last_error: Option<String>,
    /// Time since the listener started.
    pub elapsed: Duration,
}

impl ListenerStats {
    /// Every request: answered and unanswered.
    pub fn requests(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.unanswered
    }

    /// Answers with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// The stats as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = self.elapsed.as_secs_f64();
        let mut v = serde_json::json!({
            "agents": self.agents,
            "requests": self.requests(),
            "by_status": self.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "unanswered": self.unanswered,
            "slow": self.slow,
            "logged": self.logged,
            "ticks": self.ticks,
            "errors": self.errors,
            "elapsed_secs": secs,
            "requests_per_sec": if secs > 0.0 { self.requests() as f64 / secs } else { 0.0 },
        });
        if let (Some(e), Some(obj)) = (&self.last_error, v.as_object_mut()) {
            obj.insert("last_error".into(), e.clone().into());
        }
        v
    }
}

/// A status line for people: `agents 2000 | ticks 12 | 1234 req/s | 200 1100/s | 204 10/s | 404 0/s
/// | 500 50/s | unanswered 20/s | held 15 | slow 10/s | errors 0`.
///
/// Rates are over the interval since `since_last` when given, over the whole run otherwise. 200,
/// 204, 404 and 500 are always shown, other statuses once they occur.
pub fn listener_status_line(s: &ListenerStats, since_last: Option<(&ListenerStats, Duration)>) -> String {
    let (prev, secs) = match since_last {
        Some((prev, dt)) => (prev.clone(), dt.as_secs_f64()),
        None => (ListenerStats::default(), s.elapsed.as_secs_f64()),
    };
    let rate = |now: u64, before: u64| if secs > 0.0 { now.saturating_sub(before) as f64 / secs } else { 0.0 };
    let mut line =
        format!("agents {} | ticks {} | {:.0} req/s", s.agents, s.ticks, rate(s.requests(), prev.requests()));
    let mut statuses: Vec<u16> = vec![200, 204, 404, 500];
    statuses.extend(s.by_status.keys().filter(|k| ![200, 204, 404, 500].contains(*k)));
    statuses.sort_unstable();
    for code in statuses {
        line.push_str(&format!(" | {code} {:.0}/s", rate(s.status(code), prev.status(code))));
    }
    line.push_str(&format!(
        " | unanswered {:.0}/s | held {} | slow {:.0}/s | errors {}",
        rate(s.unanswered, prev.unanswered),
        s.held,
        rate(s.slow, prev.slow),
        s.errors
    ));
    line
}

/// A running listener: N agents served over HTTP while the fleet ticks. Needs a tokio runtime
/// with IO and time enabled. Dropping it stops serving; [`AgentListener::shutdown`] also closes
/// the log and says what was served.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use loadgen::{AgentListener, Behaviour, FleetConfig, ListenerConfig};
///
/// let fleet = FleetConfig { agents: 20, ..FleetConfig::default() };
/// let listener = AgentListener::start(fleet, ListenerConfig { fail_share: 0.1, ..ListenerConfig::default() })
///     .await
///     .unwrap();
/// // GET {base_url}/agents/vm-0/metric/cpu answers with vm-0's latest cpu metric, unless vm-0 is
/// // one of the two failing agents.
/// assert!(listener.base_url().starts_with("http://127.0.0.1:"));
/// assert_eq!(listener.agents().iter().filter(|a| a.state == Behaviour::Fail).count(), 2);
/// let served = listener.shutdown().await.unwrap();
/// assert_eq!((served.ticks, served.requests()), (1, 0));
/// # }
/// ```
pub struct AgentListener {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    log_writer: Option<LogWriter>,
}

impl AgentListener {
    /// Binds, ticks the fleet once (so every agent has values at once), writes the registry file
    /// and starts serving and ticking.
    pub async fn start(fleet: FleetConfig, cfg: ListenerConfig) -> Result<AgentListener, LoadgenError> {
        cfg.validate(&fleet)?;
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| LoadgenError::Listen { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| LoadgenError::Listen { addr: cfg.listen, source })?;
        let seed = fleet.seed;
        let fleet = Fleet::new(fleet);
        let n = fleet.agents().len();
        let (configured, flaps) = assign(n, seed, &cfg);
        let mut ticker = Ticker::new(fleet);
        let (first, _) = ticker.tick(wall_ns());
        let base_url = format!("http://{addr}");
        let public_ip = addr.ip().to_string();
        if let Some(path) = &cfg.registry_out {
            write_registry(path, &base_url, &public_ip, &first.roster.agents)?;
        }
        let (log, log_writer) = match &cfg.log {
            Some(path) => {
                let (tx, handle) = spawn_log_writer(path)?;
                (Some(tx), Some(handle))
            }
            None => (None, None),
        };
        let counters = Counters::new();
        counters.ticks.store(1, Ordering::Relaxed);
        counters.tick_ns.store(first.tick_ns, Ordering::Relaxed);
        let interval = cfg.interval;
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(first)),
            ticker: Mutex::new(ticker),
            configured,
            flaps,
            overrides: (0..n).map(|_| AtomicU8::new(0)).collect(),
            started: Instant::now(),
            cfg,
            base_url,
            public_ip,
            counters,
            log: Mutex::new(log),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(accept_loop(listener, shared.clone(), stopped.clone())),
            tokio::spawn(tick_loop(shared.clone(), interval, stopped)),
        ];
        Ok(AgentListener { shared, addr, stop, tasks, log_writer })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`: an agent's pull URL is `{base_url}/agents/{vmId}`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// Every live agent and how it answers now.
    pub fn agents(&self) -> Vec<AgentStatus> {
        let snap = self.shared.current();
        (0..snap.roster.agents.len()).map(|slot| self.shared.status_of(&snap, slot)).collect()
    }

    /// Switches an agent (`None`: back to its configured behaviour); false if there is no such agent.
    pub fn set_behaviour(&self, vm_id: &str, behaviour: Option<Behaviour>) -> bool {
        let Some(slot) = self.shared.slot_of(vm_id) else { return false };
        self.shared.overrides[slot].store(behaviour.map_or(0, Behaviour::code), Ordering::Relaxed);
        true
    }

    /// What has been served so far.
    pub fn stats(&self) -> ListenerStats {
        let c = &self.shared.counters;
        let by_status = c
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (i as u16 + 100, n))
            })
            .collect();
        ListenerStats {
            agents: self.shared.current().roster.agents.len(),
            by_status,
            unanswered: c.unanswered.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            slow: c.slow.load(Ordering::Relaxed),
            logged: c.logged.load(Ordering::Relaxed),
            ticks: c.ticks.load(Ordering::Relaxed),
            tick_ns: c.tick_ns.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            last_error: c.last_error.lock().ok().and_then(|l| l.clone()),
            elapsed: self.shared.started.elapsed(),
        }
    }

    /// Ticks the fleet now at event time `ts_ns`, besides the real-time ticks (tests; tools).
    pub async fn tick_at(&self, ts_ns: i64) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.tick_at(ts_ns)).await;
    }

    /// Stops serving (open requests are dropped unanswered), stops ticking, closes the log and
    /// returns what was served.
    pub async fn shutdown(mut self) -> Result<ListenerStats, LoadgenError> {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Closing the channel ends the writer once it has written every line.
        drop(self.shared.log.lock().ok().and_then(|mut l| l.take()));
        if let Some(writer) = self.log_writer.take() {
            let joined = tokio::task::spawn_blocking(move || writer.join()).await;
            let path = self.shared.cfg.log.clone().unwrap_or_default();
            match joined {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(source))) => return Err(LoadgenError::Io { path, source }),
                _ => return Err(LoadgenError::Io { path, source: std::io::Error::other("the log writer panicked") }),
            }
        }
        Ok(self.stats())
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Serves the fleet over HTTP (see [`AgentListener`]) on a runtime of its own until `duration`
/// has passed (`None`: until `stop`) or `stop` becomes true. Calls `ready` once serving, and
/// `progress` every `status_every`.
pub fn run_listener(
    fleet: FleetConfig,
    cfg: ListenerConfig,
    duration: Option<Duration>,
    stop: &AtomicBool,
    status_every: Duration,
    ready: impl FnOnce(&AgentListener),
    mut progress: impl FnMut(&ListenerStats),
) -> Result<ListenerStats, LoadgenError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("loadgen-http")
        .enable_all()
        .build()
        .map_err(LoadgenError::Runtime)?;
    runtime.block_on(async {
        let listener = AgentListener::start(fleet, cfg).await?;
        ready(&listener);
        let begin = Instant::now();
        let mut last_status = begin;
        while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| begin.elapsed() < d) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !status_every.is_zero() && last_status.elapsed() >= status_every {
                last_status = Instant::now();
                progress(&listener.stats());
            }
        }
        listener.shutdown().await
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use operators::decode::{decode, Collected, FieldValue, Metric, TimestampUnit};
    use operators::registry::parse_registry_file;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    type HttpClient = Client<HttpConnector, Full<Bytes>>;

    fn client() -> HttpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// One request; the status, content type and body, or the client's error (no answer).
    async fn call(
        client: &HttpClient,
        method: &str,
        url: &str,
    ) -> Result<(StatusCode, Option<String>, Bytes), hyper_util::client::legacy::Error> {
        let request = Request::builder().method(method).uri(url).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok((status, content_type, body))
    }

    async fn get(client: &HttpClient, url: &str) -> (StatusCode, Bytes) {
        let (status, _, body) = call(client, "GET", url).await.unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        (status, body)
    }

    async fn post(client: &HttpClient, url: &str) -> (StatusCode, Value) {
        let (status, _, body) = call(client, "POST", url).await.unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// A fleet of `n` agents in Telegraf JSON.
    fn fleet(n: usize, seed: u64) -> FleetConfig {
        FleetConfig { agents: n, seed, ..FleetConfig::default() }
    }

    /// Ticks only at start (and when a test says so).
    fn quiet() -> ListenerConfig {
        ListenerConfig { interval: Duration::from_secs(3600), ..ListenerConfig::default() }
    }

    fn decode_one(body: &[u8]) -> Metric<'static> {
        let mut c = Collected::default();
        decode(Format::Json, body, TimestampUnit::Auto, 0, &mut c);
        assert!(c.rejects.is_empty(), "{:?}: {}", c.rejects, String::from_utf8_lossy(body));
        assert_eq!(c.metrics.len(), 1);
        c.metrics.pop().unwrap()
    }

    fn error_of(body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["error"].as_str().unwrap().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_push_modes_bytes_and_they_decode() {
        let cfg = FleetConfig { skew_ns: 2_000_000_000, ..fleet(12, 5) };
        let listener = AgentListener::start(cfg.clone(), quiet()).await.unwrap();
        let base = listener.base_url().to_string();
        // Push mode ticked at the same moment sends the same bytes: the first tick moves nothing.
        let mut push = Fleet::new(cfg);
        let infos: HashMap<String, AgentInfo> = push.agents().iter().map(|a| (a.key(), a.clone())).collect();
        let mut out = Vec::new();
        push.tick(listener.stats().tick_ns, &mut out);
        assert_eq!(out.len(), 12 * M);
        let client = client();
        for msg in &out {
            let info = &infos[&msg.key];
            let url = format!("{base}/agents/{}/metric/{}", info.vm_id, msg.measurement);
            let (status, content_type, body) = call(&client, "GET", &url).await.unwrap();
            assert_eq!(status, StatusCode::OK, "{url}");
            assert_eq!(content_type.as_deref(), Some("application/json"));
            assert_eq!(body, msg.payload, "{url}");
            let m = decode_one(&body);
            assert_eq!(m.name, msg.measurement);
            assert_eq!(m.timestamp, msg.timestamp_ns);
            for (tag, want) in [
                ("nsId", &info.ns_id),
                ("mcisId", &info.mcis_id),
                ("vmId", &info.vm_id),
                ("host", &info.vm_id),
                ("cspType", &info.csp_type),
                ("osType", &info.os_type),
            ] {
                assert_eq!(m.tag(tag), Some(want.as_str()), "{tag} of {url}");
            }
            assert!(!m.fields.is_empty());
        }
        let cpu = decode_one(&get(&client, &format!("{base}/agents/vm-3/metric/cpu")).await.1);
        assert_eq!(cpu.tag("cpu"), Some("cpu-total"));
        let total: f64 = cpu
            .fields
            .iter()
            .filter(|(k, _)| k != "usage_utilization")
            .map(|(_, v)| match v {
                FieldValue::Float(x) => *x,
                other => panic!("{other:?}"),
            })
            .sum();
        assert!((total - 100.0).abs() < 1e-6, "cpu shares sum to {total}");
        let stats = listener.shutdown().await.unwrap();
        assert_eq!(stats.status(200), 12 * M as u64 + 1);
        assert_eq!(stats.requests(), stats.status(200));
        assert_eq!((stats.ticks, stats.errors), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthcheck_answers_204_and_unknown_things_404() {
        let listener = AgentListener::start(fleet(4, 1), quiet()).await.unwrap();
        let base = listener.base_url().to_string();
        let client = client();
        let (status, body) = get(&client, &format!("{base}/agents/vm-2/healthcheck")).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        for (url, says) in [
            (format!("{base}/agents/vm-4/metric/cpu"), "no agent \"vm-4\""),
            (format!("{base}/agents/vm-4/healthcheck"), "no agent \"vm-4\""),
            (format!("{base}/agents/vm-1/metric/swap"), "no measurement \"swap\""),
            (format!("{base}/agents/vm-1/metrics/cpu"), "no route /agents/vm-1/metrics/cpu"),
            (format!("{base}/"), "no route /"),
        ] {
            let (status, content_type, body) = call(&client, "GET", &url).await.unwrap();
            assert_eq!(status, StatusCode::NOT_FOUND, "{url}");
            assert_eq!(content_type.as_deref(), Some("application/json"));
            assert!(error_of(&body).contains(says), "{url}: {}", error_of(&body));
        }
        let stats = listener.shutdown().await.unwrap();
        assert_eq!((stats.status(204), stats.status(404)), (1, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fail_share_answers_500_for_exactly_the_chosen_agents() {
        let cfg = ListenerConfig { fail_share: 0.25, ..quiet() };
        let listener = AgentListener::start(fleet(40, 5), cfg.clone()).await.unwrap();
        let base = listener.base_url().to_string();
        let agents = listener.agents();
        let failing: BTreeSet<String> =
            agents.iter().filter(|a| a.configured == Behaviour::Fail).map(|a| a.vm_id.clone()).collect();
        assert_eq!(failing.len(), 10);
        assert!(agents.iter().all(|a| a.state == a.configured && !a.flaps && !a.overridden));
        let client = client();
        for a in &agents {
            let fails = failing.contains(&a.vm_id);
            let (status, body) = get(&client, &format!("{base}/agents/{}/metric/mem", a.vm_id)).await;
            if fails {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert!(error_of(&body).contains("failing"), "{}", error_of(&body));
            } else {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(decode_one(&body).tag("vmId"), Some(a.vm_id.as_str()));
            }
            let (status, _) = get(&client, &format!("{base}/agents/{}/healthcheck", a.vm_id)).await;
            assert_eq!(status, if fails { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT });
        }
        let stats = listener.shutdown().await.unwrap();
        assert_eq!((stats.status(500), stats.status(200), stats.status(204)), (20, 30, 30));

        // The choice is the seed's: the same seed chooses the same agents, another seed others.
        let chosen = |seed| assign(40, seed, &cfg);
        assert_eq!(chosen(5), chosen(5));
        assert_ne!(chosen(5), chosen(6));
        // Every kind gets exactly its share, and no agent has two.
        let all = ListenerConfig {
            fail_share: 0.1,
            slow_share: 0.2,
            unreachable_share: 0.05,
            flap_share: 0.1,
            flap_every: Some(Duration::from_secs(1)),
            ..quiet()
        };
        let (behaviours, flaps) = assign(100, 3, &all);
        let count = |b| behaviours.iter().filter(|x| **x == b).count();
        assert_eq!((count(Behaviour::Fail), count(Behaviour::Slow), count(Behaviour::Down)), (10, 20, 5));
        assert_eq!(flaps.iter().filter(|f| **f).count(), 10);
        assert!(behaviours.iter().zip(&flaps).all(|(b, f)| !f || *b == Behaviour::Ok));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_switches_one_agent() {
        let cfg = ListenerConfig {
            slow_delay: Duration::from_millis(300),
            unreachable_hold: Duration::from_millis(200),
            ..quiet()
        };
        let listener = AgentListener::start(fleet(5, 2), cfg).await.unwrap();
        let base = listener.base_url().to_string();
        let client = client();
        let metric = format!("{base}/agents/vm-1/metric/cpu");
        let control = |state: &str| format!("{base}/control/agents/vm-1?state={state}");

        let (status, v) = post(&client, &control("fail")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (v["vm_id"].as_str(), v["state"].as_str(), v["overridden"].as_bool()),
            (Some("vm-1"), Some("fail"), Some(true))
        );
        assert_eq!(get(&client, &metric).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(get(&client, &format!("{base}/agents/vm-2/metric/cpu")).await.0, StatusCode::OK, "only vm-1");

        post(&client, &control("slow")).await;
        let t = Instant::now();
        assert_eq!(get(&client, &metric).await.0, StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(300), "a slow agent waits: {:?}", t.elapsed());

        // Down: no answer; after the hold the connection is closed without one.
        post(&client, &control("down")).await;
        let t = Instant::now();
        let answer = call(&client, "GET", &metric).await;
        assert!(answer.is_err(), "an unreachable agent answered: {answer:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(listener.stats().unanswered, 1);

        post(&client, &control("ok")).await;
        assert_eq!(get(&client, &metric).await.0, StatusCode::OK);
        let (status, v) = post(&client, &control("auto")).await;
        assert_eq!((status, v["overridden"].as_bool(), v["state"].as_str()), (StatusCode::OK, Some(false), Some("ok")));

        let (status, v) = post(&client, &control("sleepy")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(v["error"].as_str().unwrap().contains("\"sleepy\""), "{v}");
        assert_eq!(post(&client, &format!("{base}/control/agents/vm-1")).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(post(&client, &format!("{base}/control/agents/vm-9?state=ok")).await.0, StatusCode::NOT_FOUND);

        // The library's switch is the same switch.
        assert!(listener.set_behaviour("vm-4", Some(Behaviour::Fail)));
        assert!(!listener.set_behaviour("vm-9", Some(Behaviour::Fail)));
        let (status, _, body) = call(&client, "GET", &format!("{base}/control/agents")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let all: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(all.len(), 5);
        let states: Vec<&str> = all.iter().map(|a| a["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["ok", "ok", "ok", "ok", "fail"]);
        listener.shutdown().await.unwrap();
    }

    /// Sends a GET on a raw connection; what comes back within `wait` (empty: nothing).
    async fn raw_get(stream: &mut TcpStream, path: &str, wait: Duration) -> Vec<u8> {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: loadgen\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(read) => {
                buf.truncate(read.unwrap_or(0));
                buf
            }
            Err(_) => Vec::new(),
        }
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_agents_never_answer() {
        let cfg = ListenerConfig { unreachable_share: 0.1, ..quiet() };
        let listener = AgentListener::start(fleet(20, 4), cfg).await.unwrap();
        let down: Vec<String> =
            listener.agents().into_iter().filter(|a| a.configured == Behaviour::Down).map(|a| a.vm_id).collect();
        assert_eq!(down.len(), 2);
        let healthy = listener.agents().into_iter().find(|a| a.configured == Behaviour::Ok).unwrap().vm_id;

        let mut stream = TcpStream::connect(listener.local_addr()).await.unwrap();
        let got = raw_get(&mut stream, &format!("/agents/{}/metric/cpu", down[0]), Duration::from_millis(500)).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        eventually("the request is held", || listener.stats().held == 1).await;
        assert_eq!(listener.stats().unanswered, 1);
        // Others answer meanwhile.
        let client = client();
        let (status, _) = get(&client, &format!("{}/agents/{healthy}/healthcheck", listener.base_url())).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // The client gives up: the server lets go of the request.
        drop(stream);
        eventually("the held request is dropped", || listener.stats().held == 0).await;

        // At shutdown a held request's connection is closed, still without an answer.
        let mut stream = TcpStream::connect(listener.local_addr()).await.unwrap();
        let got = raw_get(&mut stream, &format!("/agents/{}/healthcheck", down[1]), Duration::from_millis(300)).await;
        assert!(got.is_empty());
        let stats = listener.shutdown().await.unwrap();
        assert_eq!((stats.unanswered, stats.held), (2, 0));
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}: {}", String::from_utf8_lossy(&rest));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zero_hold_closes_the_connection_at_once() {
        let cfg = ListenerConfig { unreachable_share: 1.0, unreachable_hold: Duration::ZERO, ..quiet() };
        let listener = AgentListener::start(fleet(3, 4), cfg).await.unwrap();
        let mut stream = TcpStream::connect(listener.local_addr()).await.unwrap();
        stream.write_all(b"GET /agents/vm-0/metric/net HTTP/1.1\r\nhost: loadgen\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}: {}", String::from_utf8_lossy(&rest));
        listener.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_agents_answer_late_with_current_values() {
        let cfg = ListenerConfig { slow_share: 0.5, slow_delay: Duration::from_millis(800), ..quiet() };
        let listener = AgentListener::start(fleet(4, 8), cfg).await.unwrap();
        let agents = listener.agents();
        let client = client();
        for a in &agents {
            let t = Instant::now();
            let (status, _) = get(&client, &format!("{}/agents/{}/metric/disk", listener.base_url(), a.vm_id)).await;
            assert_eq!(status, StatusCode::OK);
            let slow = t.elapsed() >= Duration::from_millis(800);
            assert_eq!(slow, a.configured == Behaviour::Slow, "{} took {:?}", a.vm_id, t.elapsed());
        }
        assert_eq!(listener.shutdown().await.unwrap().slow, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flapping_agents_fail_and_recover_in_turns() {
        let cfg = ListenerConfig { flap_share: 0.2, flap_every: Some(Duration::from_millis(300)), ..quiet() };
        let listener = AgentListener::start(fleet(10, 6), cfg).await.unwrap();
        let base = listener.base_url().to_string();
        let flapping: Vec<String> = listener.agents().into_iter().filter(|a| a.flaps).map(|a| a.vm_id).collect();
        assert_eq!(flapping.len(), 2);
        let client = client();
        // The flapping agent's answers change between 204 and 500 and back (a busy machine may
        // miss a turn, never see an answer other than these); the others stay healthy throughout.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < 3 && Instant::now() < deadline {
            let (status, _) = get(&client, &format!("{base}/agents/{}/healthcheck", flapping[0])).await;
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            for a in listener.agents().iter().filter(|a| !a.flaps) {
                let (status, _) = get(&client, &format!("{base}/agents/{}/healthcheck", a.vm_id)).await;
                assert_eq!(status, StatusCode::NO_CONTENT);
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().all(|s| [StatusCode::NO_CONTENT, StatusCode::INTERNAL_SERVER_ERROR].contains(s)),
            "{seen:?}"
        );
        listener.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fleet_ticks_in_real_time() {
        let cfg = ListenerConfig { interval: Duration::from_millis(200), ..ListenerConfig::default() };
        let listener = AgentListener::start(fleet(3, 2), cfg).await.unwrap();
        let url = format!("{}/agents/vm-0/metric/net", listener.base_url());
        let client = client();
        let bytes_recv = |m: &Metric<'_>| match m.fields.iter().find(|(k, _)| k == "bytes_recv").unwrap().1 {
            FieldValue::Int(v) => v as u64,
            FieldValue::UInt(v) => v,
            other => panic!("{other:?}"),
        };
        let first = decode_one(&get(&client, &url).await.1);
        eventually("three more ticks", || listener.stats().ticks >= 4).await;
        let later = decode_one(&get(&client, &url).await.1);
        assert!(bytes_recv(&later) > bytes_recv(&first), "the counter grows as time passes");
        assert!(later.timestamp >= first.timestamp);
        let stats = listener.shutdown().await.unwrap();
        assert!(stats.tick_ns >= first.timestamp);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_registry_file_lists_every_agent_as_pull() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.json");
        let cfg = ListenerConfig { registry_out: Some(path.clone()), ..quiet() };
        let listener = AgentListener::start(fleet(25, 3), cfg).await.unwrap();
        let base = listener.base_url().to_string();
        let updates = parse_registry_file(&std::fs::read(&path).unwrap(), &path).unwrap();
        let agents: HashMap<String, AgentStatus> = listener.agents().into_iter().map(|a| (a.key.clone(), a)).collect();
        assert_eq!(updates.len(), 25);
        let client = client();
        for update in &updates {
            let record = update.record.as_ref().unwrap();
            let agent = &agents[&update.key];
            assert_eq!(record.key, agent.key);
            assert_eq!(record.vm_id, agent.vm_id);
            assert_eq!(format!("{}/{}/{}/{}", record.ns_id, record.mcis_id, record.vm_id, record.csp_type), record.key);
            assert_eq!((record.mechanism, record.state), (Mechanism::Pull, AgentState::Enable));
            assert_eq!(record.public_ip, "127.0.0.1");
            assert!(!record.os_type.is_empty() && record.vcpu.is_some() && record.memory_gib.is_some());
            let pull_url = record.pull_url.as_deref().unwrap();
            assert_eq!(pull_url, format!("{base}/agents/{}", agent.vm_id));
            let (status, body) = get(&client, &format!("{pull_url}/metric/mem")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(decode_one(&body).tag("vmId"), Some(record.vm_id.as_str()));
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["agents.json"], "no temporary file left behind");
        listener.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn churn_replaces_agents_and_rewrites_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.json");
        let cfg = ListenerConfig { registry_out: Some(path.clone()), ..quiet() };
        let listener = AgentListener::start(FleetConfig { churn: 0.5, ..fleet(10, 3) }, cfg).await.unwrap();
        let base = listener.base_url().to_string();
        let vms = |l: &AgentListener| l.agents().into_iter().map(|a| a.vm_id).collect::<BTreeSet<_>>();
        let registry_vms = || -> BTreeSet<String> {
            let updates = parse_registry_file(&std::fs::read(&path).unwrap(), &path).unwrap();
            updates.into_iter().map(|u| u.record.unwrap().vm_id).collect()
        };
        let before = vms(&listener);
        assert_eq!(registry_vms(), before);
        for vm in &before {
            listener.set_behaviour(vm, Some(Behaviour::Fail));
        }
        // A minute of event time later, half the VMs are new ones.
        listener.tick_at(listener.stats().tick_ns + 61_000_000_000).await;
        let after = vms(&listener);
        let retired: Vec<&String> = before.difference(&after).collect();
        let new: Vec<&String> = after.difference(&before).collect();
        assert_eq!((retired.len(), new.len()), (5, 5));
        assert_eq!(registry_vms(), after);
        let client = client();
        assert_eq!(get(&client, &format!("{base}/agents/{}/metric/cpu", retired[0])).await.0, StatusCode::NOT_FOUND);
        // A new VM does not inherit its predecessor's switch.
        let (status, body) = get(&client, &format!("{base}/agents/{}/metric/cpu", new[0])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(decode_one(&body).tag("vmId"), Some(new[0].as_str()));
        listener.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_holds_every_value_served() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("served.jsonl");
        let cfg = ListenerConfig { log: Some(log.clone()), ..quiet() };
        let listener = AgentListener::start(fleet(6, 9), cfg).await.unwrap();
        let base = listener.base_url().to_string();
        let keys: HashMap<String, String> = listener.agents().into_iter().map(|a| (a.vm_id, a.key)).collect();
        listener.set_behaviour("vm-5", Some(Behaviour::Fail));
        let client = client();
        let mut served = Vec::new();
        for round in 0..2 {
            if round == 1 {
                listener.tick_at(listener.stats().tick_ns + 10_000_000_000).await;
            }
            for vm in 0..6 {
                for m in MEASUREMENTS {
                    let (status, body) = get(&client, &format!("{base}/agents/vm-{vm}/metric/{m}")).await;
                    if status == StatusCode::OK {
                        served.push((format!("vm-{vm}"), m, body));
                    }
                }
            }
            // Neither errors nor healthchecks are values.
            get(&client, &format!("{base}/agents/vm-0/metric/nope")).await;
            get(&client, &format!("{base}/agents/vm-0/healthcheck")).await;
        }
        assert_eq!(served.len(), 2 * 5 * M);
        let stats = listener.shutdown().await.unwrap();
        assert_eq!((stats.logged, stats.errors), (served.len() as u64, 0));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), served.len());
        for (line, (vm, measurement, body)) in lines.iter().zip(&served) {
            let payload: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(line["vm_id"], vm.as_str());
            assert_eq!(line["key"], keys[vm].as_str());
            assert_eq!(line["measurement"], *measurement);
            assert_eq!(line["timestamp"], payload["timestamp"]);
            assert_eq!(line["fields"], payload["fields"]);
            // And what the pipeline's decoder reads from the payload is what the log says.
            let m = decode_one(body);
            assert_eq!(m.timestamp / 1_000_000_000, line["timestamp"].as_i64().unwrap());
            for (k, v) in &m.fields {
                assert_eq!(v.numeric(), line["fields"][&**k].as_f64(), "{vm} {measurement}.{k}");
            }
        }
        let timestamps: BTreeSet<i64> = lines.iter().map(|l| l["timestamp"].as_i64().unwrap()).collect();
        assert_eq!(timestamps.len(), 2, "two ticks, ten seconds apart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unusable_settings_are_refused() {
        let refused = |fleet: FleetConfig, cfg: ListenerConfig| async move {
            match AgentListener::start(fleet, cfg).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted"),
            }
        };
        let e = refused(fleet(3, 1), ListenerConfig { fail_share: 0.7, slow_share: 0.5, ..quiet() }).await;
        assert!(e.contains("more than 1"), "{e}");
        let e = refused(fleet(3, 1), ListenerConfig { fail_share: 1.5, ..quiet() }).await;
        assert!(e.contains("`fail_share` must be between 0 and 1"), "{e}");
        let e = refused(fleet(3, 1), ListenerConfig { flap_share: 0.5, ..quiet() }).await;
        assert!(e.contains("`flap_share` needs `flap_every`"), "{e}");
        let e = refused(FleetConfig { format: Format::Influx, ..fleet(3, 1) }, quiet()).await;
        assert!(e.contains("Telegraf JSON"), "{e}");
        let e = refused(FleetConfig { reorder: 0.1, ..fleet(3, 1) }, quiet()).await;
        assert!(e.contains("`reorder`"), "{e}");
        let e = refused(fleet(3, 1), ListenerConfig { interval: Duration::ZERO, ..quiet() }).await;
        assert!(e.contains("interval"), "{e}");
        let taken = AgentListener::start(fleet(1, 1), quiet()).await.unwrap();
        let e = refused(fleet(1, 1), ListenerConfig { listen: taken.local_addr(), ..quiet() }).await;
        assert!(e.starts_with(&format!("cannot listen on {}", taken.local_addr())), "{e}");
    }

    #[test]
    fn status_line_and_json() {
        let prev = ListenerStats { agents: 10, ticks: 1, by_status: [(200, 100)].into(), ..Default::default() };
        let now = ListenerStats {
            agents: 10,
            ticks: 2,
            by_status: [(200, 150), (204, 10), (405, 2), (500, 20)].into(),
            unanswered: 4,
            held: 3,
            slow: 6,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(
            listener_status_line(&now, Some((&prev, Duration::from_secs(2)))),
            "agents 10 | ticks 2 | 43 req/s | 200 25/s | 204 5/s | 404 0/s | 405 1/s | 500 10/s | unanswered 2/s \
             | held 3 | slow 3/s | errors 0"
        );
        assert!(listener_status_line(&now, None).contains("| 93 req/s |"));
        let v = now.to_json();
        assert_eq!((v["requests"].as_u64(), v["by_status"]["500"].as_u64()), (Some(186), Some(20)));
        assert_eq!(v["requests_per_sec"], 93.0);
    }

    #[test]
    fn run_listener_serves_until_stopped() {
        let stop = AtomicBool::new(false);
        let mut statuses = 0;
        let stats = run_listener(
            fleet(2, 1),
            quiet(),
            Some(Duration::from_millis(600)),
            &stop,
            Duration::from_millis(200),
            |l| assert_eq!(l.agents().len(), 2),
            |s| {
                statuses += 1;
                assert_eq!(s.agents, 2);
            },
        )
        .unwrap();
        assert!((1..=3).contains(&statuses), "{statuses}");
        assert_eq!(stats.ticks, 1);
        stop.store(true, Ordering::Relaxed);
        let stats = run_listener(fleet(2, 1), quiet(), None, &stop, Duration::ZERO, |_| {}, |_| {}).unwrap();
        assert_eq!(stats.requests(), 0);
    }
}

//! The agent registry the server keeps: `DATA_DIR/registry.json`, a JSON array of records in the
//! registry file format (docs/groups.md), which every job the server runs without a
//! `registry.file` of its own reads and reloads when it changes.
//!
//! `PUT /agents/{key}` writes the key's record; `DELETE` replaces it with a tombstone
//! `{"key": …, "deleted": true}` rather than dropping it: a running job removes the key when the
//! file changes either way, but a job resuming from its checkpoint restores its agents from the
//! lake and only a tombstone in the file removes the key there too. The file is written whole,
//! atomically (temporary file and rename), one entry per key; the server owns it (an entry's
//! `time` or a key's history written by hand is not kept through a change).
//!
//! `GET /agents` merges these records with what the lake knows (the `agents` view: what the jobs
//! registered, with health and first and last sighting): a key of the file shows the file's record
//! with the lake's health, a key only in the lake shows the lake's row, and a tombstoned key is not
//! shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use operators::registry::{parse_registry_file, parse_registry_message, AgentRecord};
use serde_json::{json, Map, Value};

use crate::api::{ApiError, ApiResult, Body, Params, PathParam};
use crate::queries::{lake_rows, lit};
use crate::store;
use crate::store::lock;
use crate::Server;

/// Fields a `PUT /agents/{key}` body may carry (the camelCase names of the reference framework
/// are accepted too, as in registry files).
const FIELDS: &[&str] = &[
    "ns_id",
    "mcis_id",
    "vm_id",
    "csp_type",
    "os_type",
    "mechanism",
    "public_ip",
    "state",
    "vcpu",
    "memory_gib",
    "cost_per_hour",
    "pull_url",
    "nsId",
    "mcisId",
    "vmId",
    "cspType",
    "osType",
    "publicIp",
    "memoryGib",
    "costPerHour",
    "pullUrl",
];

/// The registry file and what it holds: per key, a record or a tombstone (`None`).
pub struct Registry {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Option<AgentRecord>>>,
}

impl Registry {
    /// Reads the file, or creates it empty.
    pub fn open(path: &Path) -> anyhow::Result<Registry> {
        let mut entries = BTreeMap::new();
        match std::fs::read(path) {
            Ok(text) => {
                for u in parse_registry_file(&text, path)? {
                    entries.insert(u.key, u.record);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                store::write_atomic(path, b"[]\n", false)
                    .with_context(|| format!("cannot create the registry file {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the registry file {}", path.display())),
        }
        Ok(Registry { path: path.to_path_buf(), entries: Mutex::new(entries) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records (tombstones as `None`).
    pub fn entries(&self) -> BTreeMap<String, Option<AgentRecord>> {
        lock(&self.entries).clone()
    }

    /// Sets a key's entry and rewrites the file; returns the entry it had.
    fn set(&self, key: &str, entry: Option<AgentRecord>) -> ApiResult<Option<Option<AgentRecord>>> {
        let mut entries = lock(&self.entries);
        let mut next = entries.clone();
        let previous = next.insert(key.to_string(), entry);
        let file: Vec<Value> = next
            .iter()
            .map(|(key, record)| match record {
                Some(r) => serde_json::to_value(r).unwrap_or(Value::Null),
                None => json!({"key": key, "deleted": true}),
            })
            .collect();
        store::write_json(&self.path, &file, false)
            .map_err(|e| ApiError::internal(format!("cannot write the registry file: {e}")))?;
        *entries = next;
        Ok(previous)
    }
}

/// `ns/mcis/vm/csp`, with a VM id.
fn check_key(key: &str) -> ApiResult<()> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() != 4 || parts[2].is_empty() {
        return Err(ApiError::bad_request(format!(
            "expected an agent key ns/mcis/vm/csp (URL-encoded, e.g. ns-1%2Fmcis-1%2Fvm-1%2Faws), got {key:?}"
        )));
    }
    Ok(())
}

/// An agent as the API shows it.
fn agent_json(record: &AgentRecord, lake: Option<&Map<String, Value>>, registered: bool) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    let seen = |name: &str| lake.and_then(|row| row.get(name)).cloned().unwrap_or(Value::Null);
    v["health"] = match seen("health") {
        Value::Null => json!("unknown"),
        h => h,
    };
    v["first_seen"] = seen("first_seen");
    v["last_seen"] = seen("last_seen");
    v["registered"] = json!(registered);
    v
}

/// A row of the lake's `agents` view as a record.
fn lake_record(row: &Map<String, Value>) -> AgentRecord {
    let text = |name: &str| row.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let number = |name: &str| row.get(name).and_then(Value::as_f64);
    let mut obj = Map::new();
    for name in
        ["key", "ns_id", "mcis_id", "vm_id", "csp_type", "os_type", "mechanism", "public_ip", "state", "pull_url"]
    {
        obj.insert(name.into(), json!(text(name)));
    }
    for name in ["vcpu", "memory_gib", "cost_per_hour"] {
        obj.insert(name.into(), json!(number(name)));
    }
    let payload = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    parse_registry_message(Some(text("key").as_bytes()), Some(&payload))
        .ok()
        .and_then(|u| u.record)
        .unwrap_or_else(|| AgentRecord { key: text("key"), ..AgentRecord::default() })
}

const LAKE_COLUMNS: &str = "key, ns_id, mcis_id, vm_id, csp_type, os_type, mechanism, public_ip, state, vcpu, \
                            memory_gib, cost_per_hour, pull_url, first_seen, last_seen, health";

/// Every agent, merged (see the module docs), by key.
async fn merged(server: &Server, key: Option<&str>) -> ApiResult<Vec<Value>> {
    let filter = key.map(|k| format!("WHERE key = {}", lit(k))).unwrap_or_default();
    let rows = lake_rows(&server.lake, &format!("SELECT {LAKE_COLUMNS} FROM agents {filter}")).await?;
    let mut lake: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for row in rows {
        if let Some(k) = row.get("key").and_then(Value::as_str) {
            lake.insert(k.to_string(), row.clone());
        }
    }
    let entries = server.agents.entries();
    let mut agents = BTreeMap::new();
    for (k, entry) in &entries {
        if key.is_some_and(|wanted| wanted != k) {
            continue;
        }
        if let Some(record) = entry {
            agents.insert(k.clone(), agent_json(record, lake.get(k), true));
        }
    }
    for (k, row) in &lake {
        if !entries.contains_key(k) {
            agents.insert(k.clone(), agent_json(&lake_record(row), Some(row), false));
        }
    }
    Ok(agents.into_values().collect())
}

/// `GET /agents?ns=&mcis=&csp=&health=&mechanism=`
pub async fn list(State(server): State<Arc<Server>>, params: Params) -> ApiResult<Json<Value>> {
    let filters =
        [("ns", "ns_id"), ("mcis", "mcis_id"), ("csp", "csp_type"), ("health", "health"), ("mechanism", "mechanism")];
    let agents = merged(&server, None).await?;
    let kept = agents
        .into_iter()
        .filter(|a| {
            filters.iter().all(|(param, field)| match params.get(param) {
                Some(wanted) => a.get(*field).and_then(Value::as_str) == Some(wanted),
                None => true,
            })
        })
        .collect();
    Ok(Json(Value::Array(kept)))
}

/// `GET /agents/{key}`
pub async fn get(State(server): State<Arc<Server>>, PathParam(key): PathParam) -> ApiResult<Json<Value>> {
    check_key(&key)?;
    let agent = merged(&server, Some(&key)).await?.into_iter().next();
    agent.map(Json).ok_or_else(|| ApiError::not_found(format!("no agent {key:?}")))
}

/// `PUT /agents/{key}`: the record, replacing the key's (its `ns_id`, `mcis_id`, `vm_id` and
/// `csp_type` default to the key's parts).
pub async fn put(
    State(server): State<Arc<Server>>,
    PathParam(key): PathParam,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_key(&key)?;
    let mut fields = body.object()?;
    match fields.remove("key") {
        None => {}
        Some(Value::String(k)) if k == key => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!("the body's key {other} differs from the path's {key:?}")))
        }
    }
    if let Some(name) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field `{name}`: expected {}",
            FIELDS.iter().filter(|f| !f.contains(char::is_uppercase)).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let payload = serde_json::to_vec(&Value::Object(fields)).unwrap_or_default();
    let update = parse_registry_message(Some(key.as_bytes()), Some(&payload))
        .map_err(|e| ApiError::invalid(e.field.clone().unwrap_or_default(), format!("invalid agent record: {e}")))?;
    let record = update.record.ok_or_else(|| ApiError::bad_request("expected a record (DELETE removes one)"))?;
    let previous = server.agents.set(&key, Some(record.clone()))?;
    let status = if matches!(previous, Some(Some(_))) { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(agent_json(&record, None, true))))
}

/// `DELETE /agents/{key}`: a tombstone in the registry file.
pub async fn delete(State(server): State<Arc<Server>>, PathParam(key): PathParam) -> ApiResult<Json<Value>> {
    check_key(&key)?;
    let known = match server.agents.entries().get(&key) {
        Some(Some(_)) => true,
        Some(None) => false,
        None => !merged(&server, Some(&key)).await?.is_empty(),
    };
    if !known {
        return Err(ApiError::not_found(format!("no agent {key:?}")));
    }
    server.agents.set(&key, None)?;
    Ok(Json(json!({"key": key, "deleted": true})))
}

/// `GET /agents/{key}/ondemand`: calls a pull agent now, for each measurement asked (default:
/// the pull source's), and answers its values with each call's latency. Nothing is written.
pub async fn ondemand(
    State(server): State<Arc<Server>>,
    PathParam(key): PathParam,
    params: Params,
) -> ApiResult<Json<Value>> {
    check_key(&key)?;
    let record = match server.agents.entries().get(&key) {
        Some(Some(record)) => record.clone(),
        _ => return Err(ApiError::not_found(format!("no agent {key:?} in the registry"))),
    };
    let Some(url) = record.pull_url.clone() else {
        return Err(ApiError::conflict(format!("agent {key:?} has no pull_url: on-demand calls need a pull agent")));
    };
    let measurements: Vec<String> = match params.get("measurement") {
        Some(list) => list.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect(),
        None => pipelines::source::pull::PullConfig::default().measurements,
    };
    let timeout = match params.get("timeout") {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("timeout: expected a duration like \"5s\": {e}")))?,
        None => std::time::Duration::from_secs(5),
    };
    let answers = pipelines::source::pull::fetch_now(&url, &measurements, timeout).await;
    Ok(Json(pipelines::source::pull::ondemand_json(&key, &url, answers)))
}

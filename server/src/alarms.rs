//! Alarm rules and handlers kept by the server and applied to every job it runs, without
//! restarting them (through one [`LiveAlarms`] handed to every job).
//!
//! They live in `DATA_DIR/alarms/rules.json` and `DATA_DIR/alarms/handlers.json` (mode 0600:
//! handlers hold secrets), written atomically before [`LiveAlarms::set`] applies a change. Both
//! are validated together, as a job spec's `[[alarm]]`s and `[[handler]]`s are
//! ([`pipelines::spec::validate_alarm_set`]), against the default `[groups]` (rules on a job's own
//! `[[groups.metric]]` are refused here) and `[registry]`.
//!
//! Secrets are write-only: responses leave out `password` and header values (serde does) and show
//! a webhook or Slack URL as its origin (`https://hooks.slack.com/…`). A handler is stored as the
//! JSON it was given, so its secrets survive; a `PUT` without a secret keeps the stored one (a
//! `url` equal to the origin shown counts as not given), so what a `GET` answered can be sent back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pipelines::alarms::LiveAlarms;
use pipelines::spec::{validate_alarm_set, AlarmSpec, GroupsSpec, HandlerKind, HandlerSpec};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use sinks::notify::Origin;

use crate::api::{ApiError, ApiResult, Body, PathParam};
use crate::store;
use crate::store::lock;
use crate::Server;

#[derive(Clone)]
struct StoredHandler {
    /// As given (secrets included).
    raw: Map<String, Value>,
    spec: HandlerSpec,
}

#[derive(Clone, Default)]
struct AlarmSet {
    rules: Vec<AlarmSpec>,
    handlers: Vec<StoredHandler>,
}

impl AlarmSet {
    fn handler_specs(&self) -> Vec<HandlerSpec> {
        self.handlers.iter().map(|h| h.spec.clone()).collect()
    }

    fn validate(&self) -> Result<(), pipelines::SpecError> {
        validate_alarm_set(&self.rules, &self.handler_specs(), &GroupsSpec::default())
    }
}

/// The server's rules and handlers.
pub struct AlarmStore {
    dir: PathBuf,
    pub(crate) live: LiveAlarms,
    set: Mutex<AlarmSet>,
}

impl AlarmStore {
    /// Loads the rules and handlers under `dir` and applies them to `live`.
    pub fn open(dir: &Path, live: LiveAlarms) -> anyhow::Result<AlarmStore> {
        store::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut set = AlarmSet::default();
        let rules_path = dir.join("rules.json");
        if rules_path.exists() {
            let text = std::fs::read(&rules_path).with_context(|| format!("cannot read {}", rules_path.display()))?;
            set.rules =
                serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", rules_path.display()))?;
        }
        let handlers_path = dir.join("handlers.json");
        if handlers_path.exists() {
            let text =
                std::fs::read(&handlers_path).with_context(|| format!("cannot read {}", handlers_path.display()))?;
            let raws: Vec<Map<String, Value>> =
                serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", handlers_path.display()))?;
            for (i, raw) in raws.into_iter().enumerate() {
                let spec = parse::<HandlerSpec>(Value::Object(raw.clone()), "handler")
                    .map_err(|e| anyhow::anyhow!("{}: handler[{i}]: {}", handlers_path.display(), e.message))?;
                set.handlers.push(StoredHandler { raw, spec });
            }
        }
        set.validate().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        live.set(set.rules.clone(), set.handler_specs());
        Ok(AlarmStore { dir: dir.to_path_buf(), live, set: Mutex::new(set) })
    }

    /// Applies `change` to a copy of the set; if the result is valid, persists it and applies it
    /// to the running jobs. `focus` names the element changed (`alarm[2]`), whose fields errors
    /// are then named relative to.
    fn change<T>(&self, what: &str, change: impl FnOnce(&mut AlarmSet) -> ApiResult<(T, String)>) -> ApiResult<T> {
        let mut current = lock(&self.set);
        let mut next = current.clone();
        let (out, focus) = change(&mut next)?;
        next.validate().map_err(|e| relative(e, &focus, what))?;
        let io = |e: std::io::Error| ApiError::internal(format!("cannot persist the alarm {what}s: {e}"));
        let raws: Vec<&Map<String, Value>> = next.handlers.iter().map(|h| &h.raw).collect();
        store::write_json(&self.dir.join("handlers.json"), &raws, true).map_err(io)?;
        store::write_json(&self.dir.join("rules.json"), &next.rules, true).map_err(io)?;
        self.live.set(next.rules.clone(), next.handler_specs());
        *current = next;
        Ok(out)
    }

    pub fn rules(&self) -> Vec<AlarmSpec> {
        lock(&self.set).rules.clone()
    }
}

/// A validation error of the whole set, named relative to the element `focus` (`alarm[2]`) when
/// it concerns it.
fn relative(e: pipelines::SpecError, focus: &str, what: &str) -> ApiError {
    match e.field.strip_prefix(focus).and_then(|f| f.strip_prefix('.')) {
        Some(field) => ApiError::invalid(field, format!("invalid alarm {what}: `{field}`: {}", e.message)),
        None => ApiError::invalid(e.field.clone(), format!("invalid alarm {what}s: `{}`: {}", e.field, e.message)),
    }
}

/// Deserialises a rule or handler, naming the field of an error (`comparison`, `url`).
fn parse<T: DeserializeOwned>(value: Value, what: &str) -> ApiResult<T> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let mut field = if path == "." { String::new() } else { path };
        let mut message = e.inner().to_string();
        // A conversion error names its sub-field as `@name@message` (see sinks::spec_util::at).
        if let Some(start) = message.find('@') {
            if let Some(len) = message[start + 1..].find('@') {
                let sub = message[start + 1..start + 1 + len].to_string();
                message = format!("{}{}", &message[..start], &message[start + len + 2..]);
                field = if field.is_empty() { sub } else { format!("{field}.{sub}") };
            }
        }
        if field.is_empty() {
            ApiError::invalid("", format!("invalid alarm {what}: {message}"))
        } else {
            ApiError::invalid(field.clone(), format!("invalid alarm {what}: `{field}`: {message}"))
        }
    })
}

/// A handler as responses show it: without `password` and header values (serde leaves them out),
/// its URL reduced to the origin.
pub fn redact_handler_json(h: &mut Value) {
    if let Some(Value::String(url)) = h.get_mut("url") {
        *url = Origin(url).to_string();
    }
}

fn handler_json(spec: &HandlerSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    redact_handler_json(&mut v);
    // What is stored but never shown.
    let write_only: Vec<String> = match &spec.kind {
        HandlerKind::Slack(_) => vec!["url".into()],
        HandlerKind::Smtp(m) => m.password.iter().map(|_| "password".to_string()).collect(),
        HandlerKind::Webhook(w) => {
            std::iter::once("url".to_string()).chain(w.headers.keys().map(|k| format!("headers.{k}"))).collect()
        }
    };
    v["write_only"] = json!(write_only);
    v
}

fn rule_json(rule: &AlarmSpec) -> Value {
    serde_json::to_value(rule).unwrap_or(Value::Null)
}

/// The name in a body of `PUT …/{name}`: the path's, which the body may repeat but not contradict.
fn named(mut body: Map<String, Value>, name: &str) -> ApiResult<Map<String, Value>> {
    match body.get("name") {
        None => {
            body.insert("name".into(), json!(name));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!("the body names {other}, the path {name:?}: they must agree")))
        }
    }
    Ok(body)
}

/// A `PUT` of a handler without its secrets keeps the stored ones (see the module docs).
fn keep_secrets(body: &mut Map<String, Value>, old: &StoredHandler) {
    if body.get("kind") != old.raw.get("kind") {
        return;
    }
    for secret in ["password", "headers"] {
        if !body.contains_key(secret) {
            if let Some(v) = old.raw.get(secret) {
                body.insert(secret.into(), v.clone());
            }
        }
    }
    if let HandlerKind::Slack(sinks::notify::SlackHandler { url, .. })
    | HandlerKind::Webhook(sinks::notify::WebhookHandler { url, .. }) = &old.spec.kind
    {
        let shown = Origin(url).to_string();
        match body.get("url") {
            None => {
                body.insert("url".into(), json!(url));
            }
            Some(Value::String(u)) if *u == shown => {
                body.insert("url".into(), json!(url));
            }
            _ => {}
        }
    }
}

// Handlers of the routes.

/// `GET /alarms/rules`
pub async fn list_rules(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(Value::Array(server.alarms.rules().iter().map(rule_json).collect()))
}

/// `GET /alarms/rules/{name}`
pub async fn get_rule(State(server): State<Arc<Server>>, PathParam(name): PathParam) -> ApiResult<Json<Value>> {
    let rules = server.alarms.rules();
    let rule = rules.iter().find(|r| r.name == name).ok_or_else(|| ApiError::not_found(format!("no rule {name:?}")))?;
    Ok(Json(rule_json(rule)))
}

/// `POST /alarms/rules`
pub async fn create_rule(State(server): State<Arc<Server>>, body: Body) -> ApiResult<(StatusCode, Json<Value>)> {
    let rule: AlarmSpec = parse(Value::Object(body.object()?), "rule")?;
    let created = server.alarms.change("rule", |set| {
        if set.rules.iter().any(|r| r.name == rule.name) {
            return Err(ApiError::conflict(format!("a rule named {:?} exists (PUT replaces it)", rule.name)));
        }
        set.rules.push(rule.clone());
        Ok((rule_json(&rule), format!("alarm[{}]", set.rules.len() - 1)))
    })?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `PUT /alarms/rules/{name}`
pub async fn put_rule(
    State(server): State<Arc<Server>>,
    PathParam(name): PathParam,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let rule: AlarmSpec = parse(Value::Object(named(body.object()?, &name)?), "rule")?;
    let (status, json) = server.alarms.change("rule", |set| {
        let (status, index) = match set.rules.iter().position(|r| r.name == name) {
            Some(i) => {
                set.rules[i] = rule.clone();
                (StatusCode::OK, i)
            }
            None => {
                set.rules.push(rule.clone());
                (StatusCode::CREATED, set.rules.len() - 1)
            }
        };
        Ok(((status, rule_json(&rule)), format!("alarm[{index}]")))
    })?;
    Ok((status, Json(json)))
}

/// `DELETE /alarms/rules/{name}`
pub async fn delete_rule(State(server): State<Arc<Server>>, PathParam(name): PathParam) -> ApiResult<Json<Value>> {
    server.alarms.change("rule", |set| {
        let i = set
            .rules
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no rule {name:?}")))?;
        set.rules.remove(i);
        Ok(((), String::new()))
    })?;
    Ok(Json(json!({"name": name, "deleted": true})))
}

/// `GET /alarms/handlers`
pub async fn list_handlers(State(server): State<Arc<Server>>) -> Json<Value> {
    let set = lock(&server.alarms.set);
    Json(Value::Array(set.handlers.iter().map(|h| handler_json(&h.spec)).collect()))
}

/// `GET /alarms/handlers/{name}`
pub async fn get_handler(State(server): State<Arc<Server>>, PathParam(name): PathParam) -> ApiResult<Json<Value>> {
    let set = lock(&server.alarms.set);
    let h = set
        .handlers
        .iter()
        .find(|h| h.spec.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no handler {name:?}")))?;
    Ok(Json(handler_json(&h.spec)))
}

/// `POST /alarms/handlers`
pub async fn create_handler(State(server): State<Arc<Server>>, body: Body) -> ApiResult<(StatusCode, Json<Value>)> {
    let raw = body.object()?;
    let spec: HandlerSpec = parse(Value::Object(raw.clone()), "handler")?;
    let created = server.alarms.change("handler", |set| {
        if set.handlers.iter().any(|h| h.spec.name == spec.name) {
            return Err(ApiError::conflict(format!("a handler named {:?} exists (PUT replaces it)", spec.name)));
        }
        set.handlers.push(StoredHandler { raw, spec: spec.clone() });
        Ok((handler_json(&spec), format!("handler[{}]", set.handlers.len() - 1)))
    })?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `PUT /alarms/handlers/{name}`
pub async fn put_handler(
    State(server): State<Arc<Server>>,
    PathParam(name): PathParam,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut raw = named(body.object()?, &name)?;
    // A GET answer sent back as is: its list of write-only fields is not part of a handler.
    raw.remove("write_only");
    let (status, json) = server.alarms.change("handler", |set| {
        let index = set.handlers.iter().position(|h| h.spec.name == name);
        if let Some(i) = index {
            keep_secrets(&mut raw, &set.handlers[i]);
        }
        let spec: HandlerSpec = parse(Value::Object(raw.clone()), "handler")?;
        let stored = StoredHandler { raw, spec: spec.clone() };
        let (status, index) = match index {
            Some(i) => {
                set.handlers[i] = stored;
                (StatusCode::OK, i)
            }
            None => {
                set.handlers.push(stored);
                (StatusCode::CREATED, set.handlers.len() - 1)
            }
        };
        Ok(((status, handler_json(&spec)), format!("handler[{index}]")))
    })?;
    Ok((status, Json(json)))
}

/// `DELETE /alarms/handlers/{name}`: refused (409) while a rule names the handler.
pub async fn delete_handler(State(server): State<Arc<Server>>, PathParam(name): PathParam) -> ApiResult<Json<Value>> {
    server.alarms.change("handler", |set| {
        let i = set
            .handlers
            .iter()
            .position(|h| h.spec.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no handler {name:?}")))?;
        let users: Vec<&str> =
            set.rules.iter().filter(|r| r.handlers.contains(&name)).map(|r| r.name.as_str()).collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!("handler {name:?} is used by rule(s) {}", users.join(", "))));
        }
        set.handlers.remove(i);
        Ok(((), String::new()))
    })?;
    Ok(Json(json!({"name": name, "deleted": true})))
}

//! The HTTP API of docs/server.md.
//!
//! [`routes`] is the one table of the API: method, path, summary, query parameters, body and
//! handler of every route. [`router`] is built from it, [`openapi`] is generated from it, and the
//! query parameters a route accepts are checked against it, so the three cannot drift apart.
//!
//! Every route but `GET /healthz` needs `Authorization: Bearer TOKEN` (compared in constant
//! time). Errors are JSON `{"error": "..."}` (with `"field"` for an invalid spec, rule or
//! handler). A body larger than `max_body` is refused with 413. Each request is logged as one
//! JSON line: method, path (without the query), status and duration; never a header.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::Server;

/// What a handler answers with.
pub type ApiResult<T = Response> = Result<T, ApiError>;

/// An error answered as `{"error": message}` (and `"field"` when one is named) with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The field of a spec, rule or handler that was refused.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into(), field: Some(field.into()) }
    }
    /// A failure of the server itself; logged, and answered without internals beyond the message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<pipelines::SpecError> for ApiError {
    fn from(e: pipelines::SpecError) -> Self {
        ApiError::invalid(e.field.clone(), e.to_string())
    }
}

impl From<sinks::SinkError> for ApiError {
    fn from(e: sinks::SinkError) -> Self {
        use sinks::SinkError::*;
        match e {
            ReadOnly { .. } | Query { .. } | UnknownTable(_) | UnknownFormat(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            crate::log::event(
                "error",
                "request failed",
                json!({"status": self.status.as_u16(), "error": self.message}),
            );
        }
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        (self.status, Json(body)).into_response()
    }
}

/// The request body, at most `max_body` bytes (413 beyond).
pub struct Body(pub Bytes);

impl FromRequest<Arc<Server>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<Server>) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} bytes", state.config.max_body),
            )),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

impl Body {
    /// The body as UTF-8 text.
    pub fn text(&self) -> ApiResult<&str> {
        std::str::from_utf8(&self.0).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))
    }

    /// The body as one JSON object.
    pub fn object(&self) -> ApiResult<serde_json::Map<String, Value>> {
        match serde_json::from_slice::<Value>(&self.0) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => Err(ApiError::bad_request("expected a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
        }
    }
}

/// The query parameters of a request, each at most once, and only those its route declares.
#[derive(Debug, Default)]
pub struct Params(pub BTreeMap<String, String>);

impl FromRequestParts<Arc<Server>> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Server>) -> Result<Self, ApiError> {
        // `check_query` has refused unknown and repeated parameters.
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        Ok(Params(pairs.into_iter().collect()))
    }
}

/// Refuses query parameters the matched route does not declare, and parameters given twice.
async fn check_query(matched: MatchedPath, req: Request, next: Next) -> Response {
    let allowed = query_params(req.method(), matched.as_str()).unwrap_or(&[]);
    let pairs = match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
        Ok(Query(pairs)) => pairs,
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    let mut seen = Vec::new();
    for (name, _) in pairs {
        if !allowed.iter().any(|(n, _)| *n == name) {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            return ApiError::bad_request(if names.is_empty() {
                format!("unknown query parameter `{name}`: this route takes none")
            } else {
                format!("unknown query parameter `{name}`: expected one of {}", names.join(", "))
            })
            .into_response();
        }
        if seen.contains(&name) {
            return ApiError::bad_request(format!("query parameter `{name}` is given twice")).into_response();
        }
        seen.push(name);
    }
    next.run(req).await
}

impl Params {
    /// A parameter's value; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// One path parameter, percent-decoded.
pub struct PathParam(pub String);

impl FromRequestParts<Arc<Server>> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Server>) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// One route of the API: what it is (for the router and the OpenAPI document) and its handler.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    /// With `{name}` for path parameters.
    pub path: &'static str,
    pub summary: &'static str,
    /// `false` only for `GET /healthz`.
    pub auth: bool,
    /// Query parameters: name and meaning.
    pub query: &'static [(&'static str, &'static str)],
    /// Content types of the request body; empty: no body.
    pub body: &'static [&'static str],
    /// The status of a successful answer.
    pub success: u16,
    /// Content type of a successful answer.
    pub produces: &'static [&'static str],
    handler: MethodRouter<Arc<Server>>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, summary: &'static str, handler: H) -> Route
    where
        H: axum::handler::Handler<T, Arc<Server>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        Route {
            method,
            path,
            summary,
            auth: true,
            query: &[],
            body: &[],
            success: 200,
            produces: &["application/json"],
            handler: on(filter, handler),
        }
    }
    fn public(mut self) -> Self {
        self.auth = false;
        self
    }
    fn query(mut self, params: &'static [(&'static str, &'static str)]) -> Self {
        self.query = params;
        self
    }
    fn body(mut self, types: &'static [&'static str]) -> Self {
        self.body = types;
        self
    }
    fn success(mut self, status: u16) -> Self {
        self.success = status;
        self
    }
    fn produces(mut self, types: &'static [&'static str]) -> Self {
        self.produces = types;
        self
    }
}

const JSON: &[&str] = &["application/json"];
const SINCE: (&str, &str) = ("since", "from this time: RFC 3339, or a duration back from now (`1h`)");
const UNTIL: (&str, &str) = ("until", "before this time: RFC 3339, or a duration back from now");

/// The API, route by route.
pub fn routes() -> Vec<Route> {
    use crate::{agents, alarms, jobs, queries};
    vec![
        Route::new(Method::GET, "/healthz", "liveness: {\"status\": \"ok\"}", healthz).public(),
        Route::new(Method::POST, "/jobs", "submit a job spec (TOML or JSON); it starts at once", jobs::submit)
            .body(&["application/toml", "text/plain", "application/json"])
            .success(201),
        Route::new(
            Method::GET,
            "/jobs",
            "every job: id, name, state, started_at, records_in, records_per_s, watermark",
            jobs::list,
        ),
        Route::new(Method::GET, "/jobs/{id}", "one job: state, times, spec (secrets left out) and status", jobs::get),
        Route::new(
            Method::DELETE,
            "/jobs/{id}",
            "stop a job gracefully and answer when it has stopped; a job that already ended is removed",
            jobs::delete,
        ),
        Route::new(Method::GET, "/agents", "registry records merged with what the lake knows", agents::list).query(&[
            ("ns", "namespace id"),
            ("mcis", "MCIS id"),
            ("csp", "CSP type"),
            ("health", "healthy | unhealthy | unknown"),
            ("mechanism", "push | pull"),
        ]),
        Route::new(Method::GET, "/agents/{key}", "one agent; key = ns/mcis/vm/csp, URL-encoded", agents::get),
        Route::new(
            Method::PUT,
            "/agents/{key}",
            "create or replace a registry record; applied to running jobs",
            agents::put,
        )
        .body(JSON),
        Route::new(
            Method::DELETE,
            "/agents/{key}",
            "remove a registry record (a tombstone for running jobs)",
            agents::delete,
        ),
        Route::new(
            Method::GET,
            "/agents/{key}/ondemand",
            "call a pull agent now: its values and each call's latency, written nowhere",
            agents::ondemand,
        )
        .query(&[
            ("measurement", "comma-separated measurements (default: cpu,cpufreq,mem,disk,diskio,net)"),
            ("timeout", "per call, e.g. 2s (default 5s)"),
        ]),
        Route::new(Method::GET, "/alarms/handlers", "alarm handlers, secrets left out", alarms::list_handlers),
        Route::new(Method::POST, "/alarms/handlers", "add a handler (as in [[handler]])", alarms::create_handler)
            .body(JSON)
            .success(201),
        Route::new(Method::GET, "/alarms/handlers/{name}", "one handler, secrets left out", alarms::get_handler),
        Route::new(
            Method::PUT,
            "/alarms/handlers/{name}",
            "create or replace a handler; secrets not given are kept",
            alarms::put_handler,
        )
        .body(JSON),
        Route::new(Method::DELETE, "/alarms/handlers/{name}", "remove a handler no rule uses", alarms::delete_handler),
        Route::new(Method::GET, "/alarms/rules", "alarm rules applied to every job", alarms::list_rules),
        Route::new(
            Method::POST,
            "/alarms/rules",
            "add a rule (as in [[alarm]]); applied without restart",
            alarms::create_rule,
        )
        .body(JSON)
        .success(201),
        Route::new(Method::GET, "/alarms/rules/{name}", "one rule", alarms::get_rule),
        Route::new(Method::PUT, "/alarms/rules/{name}", "create or replace a rule", alarms::put_rule).body(JSON),
        Route::new(Method::DELETE, "/alarms/rules/{name}", "remove a rule", alarms::delete_rule),
        Route::new(Method::GET, "/alarms/events", "the alarm event log (alarm_events), newest first", queries::events)
            .query(&[
                ("level", "OK | WARNING | CRITICAL | NODATA"),
                SINCE,
                UNTIL,
                ("rule", "rule name"),
                ("target", "target"),
                ("job", "the raising job's source_id (GET /jobs/{id})"),
                ("limit", "most events (default 1000, at most 100000)"),
            ]),
        Route::new(
            Method::GET,
            "/metrics/prometheus",
            "the server's and its jobs' counters and gauges",
            crate::prometheus::get,
        )
        .produces(&["text/plain; version=0.0.4"]),
        Route::new(
            Method::GET,
            "/metrics/latest",
            "the last closed window of each measurement and field of a VM",
            queries::latest,
        )
        .query(&[("vm", "VM id (required)")]),
        Route::new(
            Method::GET,
            "/metrics/{measurement}",
            "history: per bucket of `period` (and VM, field), the `stat` over the windows of the bucket",
            queries::history,
        )
        .query(&[
            ("field", "one field (default: every field, one series each)"),
            ("vm", "VM id"),
            ("mcis", "MCIS id"),
            ("ns", "namespace id"),
            ("instance", "one instance (cpu-total, /, eth0, …); default: every instance of the VM, pooled"),
            ("period", "bucket width: 1m | 1h | 1d (any duration of whole seconds; default 1m)"),
            ("stat", "min | max | mean | last (default mean)"),
            ("duration", "how far back from now (default 1h); or since/until"),
            SINCE,
            UNTIL,
        ]),
        Route::new(Method::GET, "/groups", "group metrics per window", queries::groups).query(&[
            ("level", "ns | mcis | csp | os"),
            ("metric", "group metric"),
            ("group", "group id"),
            ("duration", "how far back from now (default 1h); or since/until"),
            SINCE,
            UNTIL,
        ]),
        Route::new(Method::GET, "/rankings", "the latest window's rankings", queries::rankings)
            .query(&[("level", "ns | mcis | csp | os"), ("metric", "cpu_util_mean | mem_util_mean")]),
        Route::new(
            Method::POST,
            "/sql",
            "read-only SQL over the lake: JSON rows, or CSV with Accept: text/csv",
            queries::sql,
        )
        .body(JSON)
        .produces(&["application/json", "text/csv"]),
        Route::new(Method::GET, "/openapi.json", "this document", openapi_json),
    ]
}

/// The query parameters a route declares, by method and matched path.
fn query_params(method: &Method, path: &str) -> Option<&'static [(&'static str, &'static str)]> {
    type Table = HashMap<(Method, &'static str), &'static [(&'static str, &'static str)]>;
    static PARAMS: OnceLock<Table> = OnceLock::new();
    PARAMS
        .get_or_init(|| routes().into_iter().map(|r| ((r.method, r.path), r.query)).collect())
        .get(&(method.clone(), path))
        .copied()
}

/// The router of [`routes`], with authentication, the body limit, JSON errors and request logs.
pub fn router(server: Arc<Server>) -> Router {
    let public: Arc<Vec<&'static str>> = Arc::new(routes().iter().filter(|r| !r.auth).map(|r| r.path).collect());
    let mut router = Router::new();
    for route in routes() {
        router = router.route(route.path, route.handler);
    }
    let max_body = server.config.max_body;
    router
        .route_layer(middleware::from_fn(check_query))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state((server.clone(), public), authenticate))
        .layer(middleware::from_fn(log_request))
        .with_state(server)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

async fn openapi_json() -> Json<Value> {
    Json(openapi().clone())
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(
    State((server, public)): State<(Arc<Server>, Arc<Vec<&'static str>>)>,
    req: Request,
    next: Next,
) -> Response {
    if public.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), server.token.as_bytes()) => next.run(req).await,
        _ => {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status();
    let level = if status.is_server_error() { "error" } else { "info" };
    crate::log::event(
        level,
        "request",
        json!({
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
            "ms": (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
        }),
    );
    response
}

/// The content type of a request, lower case, without parameters.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The OpenAPI 3 document of [`routes`].
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build_openapi)
}

fn build_openapi() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let error_response =
        |what: &str| json!({"description": what, "content": {"application/json": {"schema": error.clone()}}});
    let mut paths = serde_json::Map::new();
    for route in routes() {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        let mut responses = serde_json::Map::new();
        let content: serde_json::Map<String, Value> =
            route.produces.iter().map(|t| (t.to_string(), json!({}))).collect();
        responses.insert(route.success.to_string(), json!({"description": "success", "content": content}));
        for (status, what) in [("400", "bad request"), ("404", "not found"), ("500", "server error")] {
            responses.insert(status.into(), error_response(what));
        }
        if route.auth {
            responses.insert("401".into(), error_response("missing or wrong bearer token"));
        }
        if !route.body.is_empty() {
            responses.insert("413".into(), error_response("request body too large"));
        }
        if matches!(route.method, Method::POST | Method::PUT | Method::DELETE) && route.path != "/sql" {
            responses.insert("409".into(), error_response("conflict"));
            responses
                .insert("422".into(), error_response("invalid spec, rule, handler or record, with the field named"));
        }
        let mut operation = json!({
            "summary": route.summary,
            "operationId": operation_id(&route),
            "parameters": parameters,
            "responses": responses,
        });
        if !route.auth {
            operation["security"] = json!([]);
        }
        if !route.body.is_empty() {
            let content: serde_json::Map<String, Value> =
                route.body.iter().map(|t| (t.to_string(), json!({}))).collect();
            operation["requestBody"] = json!({"required": true, "content": content});
        }
        let item = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Dragonflow job server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Pipeline jobs as a service; see docs/server.md.",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
            },
        },
        "paths": paths,
    })
}

/// `get_jobs_id` for `GET /jobs/{id}`.
fn operation_id(route: &Route) -> String {
    let mut id = route.method.as_str().to_ascii_lowercase();
    for seg in route.path.split('/').filter(|s| !s.is_empty()) {
        let word: String = seg.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        id.push('_');
        id.push_str(word.trim_matches('_'));
    }
    id
}

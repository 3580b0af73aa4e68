//! The server through its router, in process: authentication on every route of the table, the
//! OpenAPI document, errors, the body limit, secrets, jobs (a file job run to its end, a Kafka job
//! on librdkafka's mock cluster stopped by DELETE and resumed by a new server), persistence, the
//! lake routes against SQL written by hand, agents, and alarm rules and handlers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as HttpBody;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{router, routes, Server, ServerConfig};

const MAX_BODY: usize = 64 * 1024;

fn open(data: &Path) -> (Arc<Server>, Router) {
    let config =
        ServerConfig { data_dir: data.to_path_buf(), workers: 1, max_body: MAX_BODY, ..ServerConfig::default() };
    let server = Server::open(config).expect("server opens");
    let app = router(server.clone());
    (server, app)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(app: &Router, method: Method, path: &str, token: Option<&str>, body: Option<(&str, Vec<u8>)>) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            req = req.header(header::CONTENT_TYPE, content_type);
            HttpBody::from(bytes)
        }
        None => HttpBody::empty(),
    };
    let response = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
    Answer { status, headers, body }
}

/// A client with the server's token.
struct Client {
    app: Router,
    token: String,
}

impl Client {
    fn new(server: &Arc<Server>, app: &Router) -> Self {
        Client { app: app.clone(), token: server.token().to_string() }
    }
    async fn get(&self, path: &str) -> Answer {
        call(&self.app, Method::GET, path, Some(&self.token), None).await
    }
    async fn delete(&self, path: &str) -> Answer {
        call(&self.app, Method::DELETE, path, Some(&self.token), None).await
    }
    async fn send(&self, method: Method, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        call(&self.app, method, path, Some(&self.token), Some((content_type, body.into()))).await
    }
    async fn json(&self, method: Method, path: &str, body: Value) -> Answer {
        self.send(method, path, "application/json", serde_json::to_vec(&body).unwrap()).await
    }
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "j-00000000")
        .replace("{key}", "ns-1%2Fmcis-1%2Fvm-9%2Faws")
        .replace("{name}", "nothing")
        .replace("{measurement}", "cpu")
}

#[tokio::test]
async fn every_route_but_healthz_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, app) = open(&dir.path().join("data"));
    let table = routes();
    assert!(table.len() >= 25, "{} routes", table.len());
    for route in &table {
        let path = concrete(route.path);
        let body = (!route.body.is_empty()).then(|| ("application/json", b"{}".to_vec()));
        let anonymous = call(&app, route.method.clone(), &path, None, body.clone()).await;
        let wrong = call(&app, route.method.clone(), &path, Some("not-the-token"), body.clone()).await;
        if route.auth {
            for a in [&anonymous, &wrong] {
                assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{} {path}", route.method);
                assert!(a.json()["error"].is_string(), "{} {path}: {}", route.method, a.text());
                assert_eq!(a.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
            }
        } else {
            assert_eq!(anonymous.status, StatusCode::OK, "{} {path}", route.method);
        }
        // With the token, the route is reached: whatever it answers, it is not the fallback's.
        let known = call(&app, route.method.clone(), &path, Some(server.token()), body).await;
        assert!(
            !(known.status == StatusCode::NOT_FOUND && known.text().contains("no route"))
                && known.status != StatusCode::METHOD_NOT_ALLOWED
                && known.status != StatusCode::UNAUTHORIZED,
            "{} {path}: {} {}",
            route.method,
            known.status,
            known.text()
        );
    }
    assert_eq!(call(&app, Method::GET, "/healthz", None, None).await.json(), json!({"status": "ok"}));
    // Unknown routes and methods: JSON errors too (after authentication).
    let c = Client::new(&server, &app);
    let a = c.get("/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json()["error"].as_str().unwrap().contains("no route"));
    let a = c.send(Method::PATCH, "/jobs", "application/json", "{}").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.json()["error"].is_string());
    assert_eq!(call(&app, Method::GET, "/nope", None, None).await.status, StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive; other schemes are refused.
    let ok = app
        .clone()
        .oneshot(
            Request::get("/jobs")
                .header(header::AUTHORIZATION, format!("bearer {}", server.token()))
                .body(HttpBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let basic = app
        .clone()
        .oneshot(
            Request::get("/jobs")
                .header(header::AUTHORIZATION, format!("Basic {}", server.token()))
                .body(HttpBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_token_is_generated_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (first, _) = open(&data);
    assert!(first.token_generated());
    assert_eq!(first.token().len(), 64);
    assert!(first.token().chars().all(|c| c.is_ascii_hexdigit()));
    let token_file = data.join("token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (second, _) = open(&data);
    assert!(!second.token_generated());
    assert_eq!(second.token(), first.token());
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (server, app) = open(&dir.path().join("data"));
    let doc = Client::new(&server, &app).get("/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["summary"].is_string() && op["responses"].is_object(), "{method} {path}");
        }
    }
    let table: BTreeSet<(String, String)> =
        routes().iter().map(|r| (r.method.as_str().to_string(), r.path.to_string())).collect();
    assert_eq!(documented, table);
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
    let params: Vec<&str> = doc["paths"]["/metrics/{measurement}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"measurement") && params.contains(&"period") && params.contains(&"stat"), "{params:?}");
}

#[tokio::test]
async fn bad_requests_are_json_errors_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let (server, app) = open(&dir.path().join("data"));
    let c = Client::new(&server, &app);
    let toml = "application/toml";
    let file = dir.path().join("m.jsonl");
    std::fs::write(&file, "").unwrap();
    let cases: Vec<(Answer, StatusCode, &str)> = vec![
        (c.send(Method::POST, "/jobs", toml, "").await, StatusCode::BAD_REQUEST, "expected a job spec"),
        (
            c.send(Method::POST, "/jobs", toml, "[source\nkind=").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid job spec",
        ),
        (
            c.send(
                Method::POST,
                "/jobs",
                toml,
                format!(
                    "[source]\nkind = \"file\"\npath = {:?}\n[window]\nsize = \"1ms\"\n",
                    file.display().to_string()
                ),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`window.size`",
        ),
        (
            c.send(Method::POST, "/jobs", toml, "[source]\nkind = \"file\"\npath = \"/no/such/file.jsonl\"\n").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`source.path`",
        ),
        (c.send(Method::POST, "/jobs", "application/json", "[1]").await, StatusCode::BAD_REQUEST, "JSON object"),
        (
            c.send(Method::POST, "/jobs", "application/xml", "<job/>").await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type",
        ),
        (c.send(Method::POST, "/jobs", toml, vec![0xff, 0xfe]).await, StatusCode::BAD_REQUEST, "UTF-8"),
        (c.get("/jobs/j-12345678").await, StatusCode::NOT_FOUND, "no job"),
        (
            c.json(Method::POST, "/alarms/rules", json!({"name": "r"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid alarm rule",
        ),
        (c.send(Method::POST, "/alarms/rules", "application/json", "{").await, StatusCode::BAD_REQUEST, "invalid JSON"),
        (
            c.json(Method::POST, "/alarms/handlers", json!({"name": "h", "kind": "pager"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind",
        ),
        (c.json(Method::PUT, "/alarms/rules/a", json!({"name": "b"})).await, StatusCode::BAD_REQUEST, "must agree"),
        (c.get("/alarms/rules/none").await, StatusCode::NOT_FOUND, "no rule"),
        (c.delete("/alarms/handlers/none").await, StatusCode::NOT_FOUND, "no handler"),
        (c.send(Method::POST, "/sql", "application/json", "SELECT 1").await, StatusCode::BAD_REQUEST, "query"),
        (
            c.json(Method::POST, "/sql", json!({"query": "DROP TABLE aggregates"})).await,
            StatusCode::BAD_REQUEST,
            "read-only",
        ),
        (
            c.json(Method::POST, "/sql", json!({"query": "SELECT 1", "limit": 1_000_000})).await,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            c.json(Method::POST, "/sql", json!({"query": "SELECT 1", "rows": 5})).await,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            c.json(Method::POST, "/sql", json!({"query": "SELECT nope FROM nowhere"})).await,
            StatusCode::BAD_REQUEST,
            "nowhere",
        ),
        (c.json(Method::PUT, "/agents/vm-1", json!({})).await, StatusCode::BAD_REQUEST, "ns/mcis/vm/csp"),
        (
            c.json(Method::PUT, "/agents/n%2Fm%2Fv%2Fc", json!({"state": "on"})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "state",
        ),
        (
            c.json(Method::PUT, "/agents/n%2Fm%2Fv%2Fc", json!({"colour": "red"})).await,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (c.get("/agents/n%2Fm%2Fv%2Fc").await, StatusCode::NOT_FOUND, "no agent"),
        (c.get("/alarms/events?level=loud").await, StatusCode::BAD_REQUEST, "level"),
        (c.get("/alarms/events?limit=0").await, StatusCode::BAD_REQUEST, "limit"),
        (c.get("/alarms/events?since=yesterday").await, StatusCode::BAD_REQUEST, "since"),
        (c.get("/metrics/cpu?stat=median").await, StatusCode::BAD_REQUEST, "stat"),
        (c.get("/metrics/cpu?period=1ms").await, StatusCode::BAD_REQUEST, "period"),
        (c.get("/metrics/cpu?since=1h&duration=1h").await, StatusCode::BAD_REQUEST, "either"),
        (c.get("/metrics/cpu?vmid=vm-1").await, StatusCode::BAD_REQUEST, "unknown query parameter `vmid`"),
        (c.get("/metrics/latest").await, StatusCode::BAD_REQUEST, "`vm` is required"),
        (c.get("/groups?level=ns&level=os").await, StatusCode::BAD_REQUEST, "twice"),
        (c.get("/jobs?x=1").await, StatusCode::BAD_REQUEST, "takes none"),
    ];
    for (answer, status, needle) in cases {
        let body = answer.json();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}"));
        assert_eq!(answer.status, status, "{error}");
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    // An invalid spec names its field.
    let a = c
        .send(
            Method::POST,
            "/jobs",
            toml,
            format!("[source]\nkind = \"file\"\npath = {:?}\n[window]\nsize = \"1ms\"\n", file.display().to_string()),
        )
        .await;
    assert_eq!(a.json()["field"], "window.size");
    // A rule's error is named within the rule.
    c.json(Method::POST, "/alarms/handlers", json!({"name": "ops", "kind": "webhook", "url": "https://example.com/h"}))
        .await;
    let bad_rule = json!({"name": "hot", "measurement": "cpu", "field": "usage_user", "aggregate": "mean",
                          "comparison": ">", "warn": 80, "crit": 70, "handlers": ["ops"]});
    let a = c.json(Method::POST, "/alarms/rules", bad_rule).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.json()["field"], "crit", "{}", a.text());
    assert!(a.json()["error"].as_str().unwrap().contains("must be at least warn (80)"));
    let a = c
        .json(
            Method::POST,
            "/alarms/rules",
            json!({"name": "hot", "measurement": "cpu", "field": "f",
        "aggregate": "mean", "comparison": ">", "warn": 1, "handlers": ["pager"]}),
        )
        .await;
    assert_eq!(a.json()["field"], "handlers[0]", "{}", a.text());
    let a = c
        .json(Method::POST, "/alarms/rules", json!({"name": "hot", "measurement": "cpu", "comparison": ">", "warn": 1}))
        .await;
    assert_eq!(a.json()["field"], "field", "{}", a.text());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let (server, app) = open(&dir.path().join("data"));
    let c = Client::new(&server, &app);
    let big = format!("# {}\n", "x".repeat(MAX_BODY + 1));
    for (method, path) in [(Method::POST, "/jobs"), (Method::POST, "/sql"), (Method::PUT, "/alarms/rules/r")] {
        let a = c.send(method.clone(), path, "application/toml", big.clone()).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
        assert!(a.json()["error"].as_str().unwrap().contains(&MAX_BODY.to_string()), "{}", a.text());
    }
    // At the limit, the body is read (and here refused for what it says, not for its size).
    let a = c.send(Method::POST, "/jobs", "application/toml", format!("# {}\n", "x".repeat(MAX_BODY - 3))).await;
    assert_ne!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
}

const SLACK_SECRET: &str = "T000/B000/SLACKSECRET";
const SMTP_SECRET: &str = "hunter2-smtp";
const HEADER_SECRET: &str = "Bearer s3cret-header";
const HOOK_PATH_SECRET: &str = "hookpathsecret";
const INFLUX_SECRET: &str = "influx-pass-secret";

fn handlers_with_secrets() -> [Value; 3] {
    [
        json!({"name": "ops-slack", "kind": "slack", "url": format!("https://hooks.slack.com/services/{SLACK_SECRET}"),
               "channel": "#ops"}),
        json!({"name": "ops-mail", "kind": "smtp", "host": "smtp.example.com", "from": "alarms@example.com",
               "to": ["ops@example.com"], "username": "alarms", "password": SMTP_SECRET, "tls": "starttls"}),
        json!({"name": "hook", "kind": "webhook", "url": format!("https://hooks.example.com/{HOOK_PATH_SECRET}?t=1"),
               "headers": {"Authorization": HEADER_SECRET}}),
    ]
}

fn assert_no_secret(text: &str) {
    for secret in [SLACK_SECRET, "SLACKSECRET", SMTP_SECRET, "s3cret-header", HOOK_PATH_SECRET, INFLUX_SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_secrets_are_never_answered_and_kept_through_a_put() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, app) = open(&data);
    let c = Client::new(&server, &app);
    let mut answers = Vec::new();
    for h in handlers_with_secrets() {
        let a = c.json(Method::POST, "/alarms/handlers", h).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
        answers.push(a.text());
    }
    let listed = c.get("/alarms/handlers").await.json();
    assert_eq!(listed[0]["url"], "https://hooks.slack.com/…");
    assert_eq!(listed[1]["write_only"], json!(["password"]));
    assert_eq!(listed[2]["write_only"], json!(["url", "headers.Authorization"]));
    answers.push(listed.to_string());
    let rule = json!({"name": "cpu_high", "measurement": "cpu", "field": "usage_user", "aggregate": "mean",
                      "comparison": ">", "warn": 80, "handlers": ["ops-slack", "ops-mail", "hook"]});
    assert_eq!(c.json(Method::POST, "/alarms/rules", rule).await.status, StatusCode::CREATED);

    // What GET answered, sent back with a change: the secrets stay as they were.
    for name in ["ops-slack", "ops-mail", "hook"] {
        let mut shown = c.get(&format!("/alarms/handlers/{name}")).await.json();
        answers.push(shown.to_string());
        shown.as_object_mut().unwrap().remove("write_only");
        shown["retries"] = json!(5);
        let a = c.json(Method::PUT, &format!("/alarms/handlers/{name}"), shown).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        answers.push(a.text());
    }
    let live = server.alarms.live.handlers();
    let by_name: BTreeMap<&str, &pipelines::spec::HandlerSpec> = live.iter().map(|h| (h.name.as_str(), h)).collect();
    assert!(by_name.values().all(|h| h.retries == 5));
    match &by_name["ops-slack"].kind {
        pipelines::spec::HandlerKind::Slack(s) => assert!(s.url.ends_with(SLACK_SECRET)),
        other => panic!("{other:?}"),
    }
    match &by_name["ops-mail"].kind {
        pipelines::spec::HandlerKind::Smtp(m) => assert_eq!(m.password.as_deref(), Some(SMTP_SECRET)),
        other => panic!("{other:?}"),
    }
    match &by_name["hook"].kind {
        pipelines::spec::HandlerKind::Webhook(w) => {
            assert!(w.url.contains(HOOK_PATH_SECRET));
            assert_eq!(w.headers.get("Authorization").map(String::as_str), Some(HEADER_SECRET));
        }
        other => panic!("{other:?}"),
    }
    // A new URL replaces the stored one.
    let a = c
        .json(Method::PUT, "/alarms/handlers/hook", json!({"kind": "webhook", "url": "https://other.example.com/x"}))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    match &server.alarms.live.handlers().iter().find(|h| h.name == "hook").unwrap().kind {
        pipelines::spec::HandlerKind::Webhook(w) => {
            assert_eq!(w.url, "https://other.example.com/x");
            assert_eq!(w.headers.get("Authorization").map(String::as_str), Some(HEADER_SECRET));
        }
        other => panic!("{other:?}"),
    }

    // A job spec's own secrets are left out of GET /jobs/{id}.
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut spec = format!(
        "name = \"secretive\"\n[source]\nkind = \"file\"\npath = {:?}\n\n[[sink]]\nkind = \"influxdb\"\n\
         url = \"http://user:{INFLUX_SECRET}@127.0.0.1:1\"\nusername = \"u\"\npassword = \"{INFLUX_SECRET}\"\nretry_for = \"1s\"\n",
        input.display().to_string()
    );
    for h in handlers_with_secrets() {
        spec.push_str("\n[[handler]]\n");
        for (k, v) in h.as_object().unwrap() {
            match v {
                Value::Object(o) => {
                    let inner: Vec<String> = o.iter().map(|(k, v)| format!("{k:?} = {v}")).collect();
                    spec.push_str(&format!("{k} = {{ {} }}\n", inner.join(", ")));
                }
                v => spec.push_str(&format!("{k} = {v}\n")),
            }
        }
    }
    let a = c.send(Method::POST, "/jobs", "application/toml", spec).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let detail = c.get(&format!("/jobs/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    let spec_shown = &detail.json()["spec"];
    assert_eq!(spec_shown["handler"][0]["url"], "https://hooks.slack.com/…");
    assert_eq!(spec_shown["sink"][0]["url"], "http://127.0.0.1:1");
    answers.push(detail.text());
    answers.push(c.get("/jobs").await.text());
    wait_ended(&c, &id).await;
    answers.push(c.get(&format!("/jobs/{id}")).await.text());
    answers.push(c.get("/metrics/prometheus").await.text());
    answers.push(c.get("/openapi.json").await.text());
    for text in &answers {
        assert_no_secret(text);
    }
    // On disk, the handlers keep their secrets, readable by the owner only.
    let stored = std::fs::read_to_string(data.join("alarms/handlers.json")).unwrap();
    assert!(stored.contains(SMTP_SECRET) && stored.contains(HEADER_SECRET));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("alarms/handlers.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Polls a job until its thread has ended; returns its detail.
async fn wait_ended(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let detail = c.get(&format!("/jobs/{id}")).await.json();
        if matches!(detail["state"].as_str(), Some("stopped" | "failed")) {
            return detail;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(c: &Client, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let detail = c.get(&format!("/jobs/{id}")).await.json();
        if detail["state"] == state {
            return detail;
        }
        assert!(Instant::now() < deadline, "job {id} not {state}: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start of the test data (s): mid-minute, so buckets of a minute hold windows of two runs of data.
const T0: i64 = 1_700_000_030;
const TICKS: i64 = 90;
const STEP_S: i64 = 2;

/// Telegraf JSON: two VMs, `cpu` (instances cpu-total and cpu0) and `net` (a counter) every 2 s.
fn write_input(path: &Path) -> usize {
    let mut out = String::new();
    let mut lines = 0;
    for t in 0..TICKS {
        let ts = T0 + t * STEP_S;
        for (v, vm) in ["vm-1", "vm-2"].iter().enumerate() {
            let tags = |extra: &str| {
                format!(r#"{{"nsId":"ns-1","mcisId":"mcis-1","vmId":"{vm}","cspType":"aws","osType":"ubuntu"{extra}}}"#)
            };
            for (cpu, busy) in
                [("cpu-total", 20.0 + ((t * 7 + v as i64 * 13) % 50) as f64), ("cpu0", 5.0 + (t % 9) as f64)]
            {
                out.push_str(&format!(
                    "{{\"name\":\"cpu\",\"tags\":{},\"fields\":{{\"usage_user\":{busy},\"usage_idle\":{}}},\"timestamp\":{ts}}}\n",
                    tags(&format!(r#","cpu":"{cpu}""#)),
                    100.0 - busy
                ));
                lines += 1;
            }
            let received = (t * t * 100 + t * 7 * (v as i64 + 1)) as f64;
            out.push_str(&format!(
                "{{\"name\":\"net\",\"tags\":{},\"fields\":{{\"bytes_recv\":{received}}},\"timestamp\":{ts}}}\n",
                tags(r#","interface":"eth0""#)
            ));
            lines += 1;
        }
    }
    std::fs::write(path, out).unwrap();
    lines
}

/// Rows of the lake's `aggregates` read with plain SQL: (window_start ms, vm, field, instance,
/// count, sum, min, max, last, rate).
type AggRow = (i64, String, String, String, f64, f64, f64, f64, f64, Option<f64>);

async fn aggregates(c: &Client, measurement: &str) -> Vec<AggRow> {
    let sql = format!(
        "SELECT arrow_cast(window_start, 'Int64') AS ws, vm_id, field, instance, \"count\", \"sum\", \"min\", \"max\", \
         \"last\", rate FROM aggregates WHERE measurement = '{measurement}' ORDER BY ws, vm_id, field, instance"
    );
    let a = c.json(Method::POST, "/sql", json!({"query": sql, "limit": 100000})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let body = a.json();
    assert_eq!(body["truncated"], false);
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap();
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                r["ws"].as_i64().unwrap(),
                s("vm_id"),
                s("field"),
                s("instance"),
                f("count"),
                f("sum"),
                f("min"),
                f("max"),
                f("last"),
                r["rate"].as_f64(),
            )
        })
        .collect()
}

/// The history aggregation by hand: per bucket of `period_s`, VM and field.
fn reference_history(rows: &[AggRow], period_s: i64, stat: &str) -> BTreeMap<(i64, String, String), f64> {
    let mut groups: BTreeMap<(i64, String, String), Vec<&AggRow>> = BTreeMap::new();
    for r in rows {
        let bucket = r.0.div_euclid(period_s * 1000) * period_s * 1000;
        groups.entry((bucket, r.1.clone(), r.2.clone())).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(key, rows)| {
            let counter = rows.iter().any(|r| r.9.is_some());
            let rates: Vec<f64> = rows.iter().filter_map(|r| r.9).collect();
            fn last_row<'a>(rows: &[&'a AggRow]) -> Option<&'a AggRow> {
                rows.iter().max_by(|a, b| (a.0, &a.3).cmp(&(b.0, &b.3))).copied()
            }
            let value = match (stat, counter) {
                ("min", true) => rates.iter().copied().fold(f64::INFINITY, f64::min),
                ("max", true) => rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ("mean", true) => rates.iter().sum::<f64>() / rates.len() as f64,
                ("last", true) => {
                    let with_rate: Vec<&AggRow> = rows.iter().copied().filter(|r| r.9.is_some()).collect();
                    last_row(&with_rate).unwrap().9.unwrap()
                }
                ("min", false) => rows.iter().map(|r| r.6).fold(f64::INFINITY, f64::min),
                ("max", false) => rows.iter().map(|r| r.7).fold(f64::NEG_INFINITY, f64::max),
                ("mean", false) => rows.iter().map(|r| r.5).sum::<f64>() / rows.iter().map(|r| r.4).sum::<f64>(),
                ("last", false) => last_row(&rows).unwrap().8,
                _ => unreachable!(),
            };
            (key, value)
        })
        .collect()
}

fn ms_of(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_job_runs_to_its_end_and_the_lake_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("metrics.jsonl");
    let lines = write_input(&input);
    let (server, app) = open(&data);
    let c = Client::new(&server, &app);

    // A rule of the server's, which the job evaluates beside its own (it has none).
    let rule = json!({"name": "busy", "measurement": "cpu", "field": "usage_user", "aggregate": "max",
                      "target": "vm", "comparison": ">", "warn": 1});
    assert_eq!(c.json(Method::POST, "/alarms/rules", rule).await.status, StatusCode::CREATED);
    let spec = format!(
        "name = \"fleet\"\n[source]\nkind = \"file\"\npath = {:?}\n[window]\nsize = \"10s\"\nlateness = \"0s\"\n",
        input.display().to_string()
    );
    let a = c.send(Method::POST, "/jobs", "application/toml", spec).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let created = a.json();
    assert_eq!(created["state"], "starting");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("j-") && id.len() == 10, "{id}");

    let detail = wait_ended(&c, &id).await;
    assert_eq!(detail["state"], "stopped", "{detail}");
    assert_eq!(detail["name"], "fleet");
    assert!(detail["error"].is_null());
    for t in ["submitted_at", "started_at", "stopped_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(detail[t].as_str().unwrap()).is_ok(), "{t}: {detail}");
    }
    let status = &detail["status"];
    assert_eq!(status["records_in"], lines as u64, "{status}");
    assert_eq!(status["rejects"], 0);
    assert_eq!(status["late"], 0);
    assert!(status["windows"].as_u64().unwrap() >= (TICKS * STEP_S / 10) as u64, "{status}");
    assert!(status["rows_out"].as_u64().unwrap() > 0);
    // The end of the file lifts the watermark: an ended job has none.
    assert!(status["watermark"].is_null(), "{status}");
    // The spec as run: the server's lake and registry were added.
    let spec = &detail["spec"];
    assert_eq!(spec["sink"][0]["kind"], "parquet");
    assert_eq!(spec["sink"][0]["path"], server.lake().display().to_string());
    assert_eq!(spec["registry"]["file"], data.canonicalize().unwrap().join("registry.json").display().to_string());

    let listed = c.get("/jobs").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let line = &listed[0];
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["state"], "stopped");
    assert_eq!(line["records_in"], lines as u64);
    assert!(line.as_object().unwrap().contains_key("watermark"));
    for k in ["name", "started_at", "records_per_s"] {
        assert!(!line[k].is_null(), "{k}: {line}");
    }

    let prometheus = c.get("/metrics/prometheus").await;
    assert_eq!(prometheus.status, StatusCode::OK);
    assert!(prometheus.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = prometheus.text();
    assert!(text.contains(&format!("dragonflow_records_in_total{{job=\"{id}\",name=\"fleet\"}} {lines}\n")), "{text}");
    assert!(text.contains("# TYPE dragonflow_rejects_total counter\n"), "{text}");
    assert!(
        text.contains(&format!("dragonflow_job_state{{job=\"{id}\",name=\"fleet\",state=\"stopped\"}} 1\n")),
        "{text}"
    );
    assert!(text.contains("dragonflow_jobs{state=\"stopped\"} 1\n"), "{text}");
    // Windows of old data close long after their end: every one is in the last bucket.
    let windows = status["windows"].as_u64().unwrap();
    assert!(text.contains("# TYPE dragonflow_window_close_latency_seconds histogram\n"), "{text}");
    for (sample, n) in [("_bucket", 0), ("_count", windows)] {
        let labels = if sample == "_bucket" { ",le=\"600\"" } else { "" };
        let line =
            format!("dragonflow_window_close_latency_seconds{sample}{{job=\"{id}\",name=\"fleet\"{labels}}} {n}\n");
        assert!(text.contains(&line), "{line} not in {text}");
    }
    let inf = format!(
        "dragonflow_window_close_latency_seconds_bucket{{job=\"{id}\",name=\"fleet\",le=\"+Inf\"}} {windows}\n"
    );
    assert!(text.contains(&inf), "{text}");

    // History: equal to the same aggregation computed from the rows of `aggregates`.
    let since = chrono::DateTime::from_timestamp(T0 - 3600, 0).unwrap().to_rfc3339();
    let until = chrono::DateTime::from_timestamp(T0 + 3600, 0).unwrap().to_rfc3339();
    let range = format!("since={}&until={}", urlencode(&since), urlencode(&until));
    for (measurement, period_s, period) in
        [("cpu", 60, "1m"), ("net", 60, "1m"), ("cpu", 3600, "1h"), ("net", 30, "30s")]
    {
        let rows = aggregates(&c, measurement).await;
        assert!(!rows.is_empty());
        for stat in ["min", "max", "mean", "last"] {
            let expected = reference_history(&rows, period_s, stat);
            let a = c.get(&format!("/metrics/{measurement}?period={period}&stat={stat}&{range}")).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            let body = a.json();
            let got: BTreeMap<(i64, String, String), f64> = body["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    assert_eq!(p["counter"], measurement == "net", "{p}");
                    let key = (
                        ms_of(p["time"].as_str().unwrap()),
                        p["vm_id"].as_str().unwrap().to_string(),
                        p["field"].as_str().unwrap().to_string(),
                    );
                    (key, p["value"].as_f64().unwrap())
                })
                .collect();
            assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{measurement} {stat}");
            for (k, v) in &expected {
                assert!(close(got[k], *v), "{measurement} {period} {stat} {k:?}: {} != {v}", got[k]);
            }
        }
    }
    // Filters: one VM, one field, one instance.
    let rows: Vec<AggRow> = aggregates(&c, "cpu")
        .await
        .into_iter()
        .filter(|r| r.1 == "vm-2" && r.2 == "usage_user" && r.3 == "cpu-total")
        .collect();
    let expected = reference_history(&rows, 60, "mean");
    let body = c
        .get(&format!("/metrics/cpu?vm=vm-2&field=usage_user&instance=cpu-total&mcis=mcis-1&ns=ns-1&{range}"))
        .await
        .json();
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), expected.len());
    for p in points {
        let key = (ms_of(p["time"].as_str().unwrap()), "vm-2".to_string(), "usage_user".to_string());
        assert!(close(p["value"].as_f64().unwrap(), expected[&key]));
    }
    // The default range is the last hour: this data is older.
    assert_eq!(c.get("/metrics/cpu").await.json()["points"], json!([]));

    // The latest window of each measurement, instance and field of a VM.
    let latest = c.get("/metrics/latest?vm=vm-1").await.json();
    let latest = latest.as_array().unwrap();
    assert_eq!(latest.len(), 2 * 2 + 1, "{latest:?}");
    let last_window = aggregates(&c, "cpu").await.iter().map(|r| r.0).max().unwrap();
    let row = latest.iter().find(|r| r["field"] == "usage_user" && r["instance"] == "cpu0").unwrap();
    assert_eq!(ms_of(row["window_start"].as_str().unwrap()), last_window);

    // Group metrics and the latest rankings.
    let groups = c.get(&format!("/groups?level=mcis&metric=cpu_util_mean&{range}")).await.json();
    assert!(!groups.as_array().unwrap().is_empty(), "{groups}");
    assert!(groups.as_array().unwrap().iter().all(|g| g["group_id"] == "ns-1/mcis-1" && g["vm_count"] == 2));
    let rankings = c.get("/rankings?level=csp").await.json();
    let rankings = rankings.as_array().unwrap();
    assert!(!rankings.is_empty());
    let newest = rankings[0]["window_start"].clone();
    assert!(rankings.iter().all(|r| r["window_start"] == newest && r["level"] == "csp"));
    // The rule raised WARNING once per VM and instance (the values never fall back).
    let events = c.get("/alarms/events?rule=busy&level=warning").await.json();
    let targets: BTreeSet<&str> = events.as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "ns-1/mcis-1/vm-1/aws[cpu-total]",
        "ns-1/mcis-1/vm-1/aws[cpu0]",
        "ns-1/mcis-1/vm-2/aws[cpu-total]",
        "ns-1/mcis-1/vm-2/aws[cpu0]",
    ]
    .into();
    assert_eq!(targets, expected, "{events}");
    assert_eq!(events.as_array().unwrap().len(), 4, "{events}");
    assert!(events[0]["time"].is_string() && events[0]["previous_level"] == "OK", "{events}");
    assert_eq!(c.get("/alarms/events?rule=busy&level=CRITICAL").await.json(), json!([]));
    assert_eq!(c.get("/alarms/events?limit=1").await.json().as_array().unwrap().len(), 1);

    // SQL: JSON, CSV, the row limit.
    let a = c
        .json(
            Method::POST,
            "/sql",
            json!({"query": "SELECT vm_id, count(*) AS n FROM aggregates GROUP BY vm_id ORDER BY vm_id"}),
        )
        .await;
    let body = a.json();
    assert_eq!(body["columns"], json!(["vm_id", "n"]));
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    let a = c.json(Method::POST, "/sql", json!({"query": "SELECT window_start, field FROM aggregates ORDER BY window_start DESC, field", "limit": 3})).await;
    let body = a.json();
    assert_eq!(body["row_count"], 3);
    assert_eq!(body["truncated"], true);
    assert_eq!(ms_of(body["rows"][0]["window_start"].as_str().unwrap()), last_window, "the order is kept: {body}");
    let csv = call(
        &app,
        Method::POST,
        "/sql",
        Some(server.token()),
        Some((
            "application/json",
            br#"{"query": "SELECT DISTINCT vm_id FROM aggregates ORDER BY vm_id", "limit": 1}"#.to_vec(),
        )),
    )
    .await;
    assert_eq!(csv.status, StatusCode::OK); // JSON without Accept
    let csv = app
        .clone()
        .oneshot(
            Request::post("/sql")
                .header(header::AUTHORIZATION, format!("Bearer {}", server.token()))
                .header(header::ACCEPT, "text/csv")
                .header(header::CONTENT_TYPE, "application/json")
                .body(HttpBody::from(
                    r#"{"query": "SELECT DISTINCT vm_id FROM aggregates ORDER BY vm_id", "limit": 1}"#,
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(csv.headers()["x-dragonflow-truncated"], "true");
    assert!(csv.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    let text = axum::body::to_bytes(csv.into_body(), usize::MAX).await.unwrap();
    assert_eq!(std::str::from_utf8(&text).unwrap(), "vm_id\nvm-1\n");

    // Agents: the lake's, merged with the registry's records.
    let agents = c.get("/agents").await.json();
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert!(agents.iter().all(|a| a["health"] == "healthy" && a["registered"] == false && a["first_seen"].is_string()));
    let key = "ns-1%2Fmcis-1%2Fvm-1%2Faws";
    let a = c.json(Method::PUT, &format!("/agents/{key}"), json!({"vcpu": 4, "mechanism": "pull"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let one = c.get(&format!("/agents/{key}")).await.json();
    assert_eq!(
        (one["vcpu"].as_f64(), &one["registered"], &one["health"]),
        (Some(4.0), &json!(true), &json!("healthy"))
    );
    assert_eq!(one["os_type"], "");
    assert_eq!(c.get("/agents?mechanism=pull").await.json().as_array().unwrap().len(), 1);
    assert_eq!(c.get("/agents?health=healthy&csp=aws").await.json().as_array().unwrap().len(), 2);
    // A key the data registered can be removed too.
    assert_eq!(c.delete("/agents/ns-1%2Fmcis-1%2Fvm-2%2Faws").await.status, StatusCode::OK);
    assert_eq!(c.get("/agents").await.json().as_array().unwrap().len(), 1);

    // A new server over the same data directory knows the job, its state and its counters.
    let (again, app_again) = open(&data);
    let c2 = Client::new(&again, &app_again);
    let listed = c2.get("/jobs").await.json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "stopped");
    let detail = c2.get(&format!("/jobs/{id}")).await.json();
    assert_eq!(detail["status"]["records_in"], lines as u64);
    assert_eq!(detail["spec"]["name"], "fleet");
    assert_eq!(c2.get("/agents").await.json().as_array().unwrap().len(), 1, "the tombstone is kept");
    // DELETE on a job that ended removes it.
    let a = c2.delete(&format!("/jobs/{id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["removed"], true);
    assert_eq!(a.json()["state"], "stopped");
    assert_eq!(c2.get("/jobs").await.json(), json!([]));
    assert_eq!(c2.get(&format!("/jobs/{id}")).await.status, StatusCode::NOT_FOUND);
    assert!(!data.join("jobs").join(&id).exists());
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn agents_round_trip_through_the_registry_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, app) = open(&data);
    let c = Client::new(&server, &app);
    let registry = data.canonicalize().unwrap().join("registry.json");
    assert_eq!(std::fs::read_to_string(&registry).unwrap().trim(), "[]");

    let records = [
        ("ns-1%2Fm-1%2Fvm-1%2Faws", json!({"os_type": "ubuntu", "vcpu": 2, "memory_gib": 8, "state": "enable"})),
        (
            "ns-1%2Fm-2%2Fvm-2%2Fgcp",
            json!({"mechanism": "pull", "pull_url": "http://10.0.0.2:8888", "cost_per_hour": 0.2}),
        ),
        ("ns-2%2Fm-1%2Fvm-3%2Faws", json!({"mcis_id": "m-9", "public_ip": "10.0.0.3", "state": "disable"})),
    ];
    for (key, body) in &records {
        let a = c.json(Method::PUT, &format!("/agents/{key}"), body.clone()).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
        assert_eq!(a.json()["registered"], true);
    }
    let all = c.get("/agents").await.json();
    let keys: Vec<&str> = all.as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["ns-1/m-1/vm-1/aws", "ns-1/m-2/vm-2/gcp", "ns-2/m-1/vm-3/aws"]);
    let vm3 = &all[2];
    assert_eq!(
        (&vm3["ns_id"], &vm3["mcis_id"], &vm3["vm_id"], &vm3["csp_type"]),
        (&json!("ns-2"), &json!("m-9"), &json!("vm-3"), &json!("aws"))
    );
    assert_eq!((&vm3["state"], &vm3["health"]), (&json!("disable"), &json!("unknown")));
    let count = |q: &'static str| {
        let c = &c;
        async move { c.get(&format!("/agents?{q}")).await.json().as_array().unwrap().len() }
    };
    assert_eq!(count("ns=ns-1").await, 2);
    assert_eq!(count("csp=aws").await, 2);
    assert_eq!(count("mcis=m-9").await, 1);
    assert_eq!(count("mechanism=pull").await, 1);
    assert_eq!(count("health=unknown").await, 3);
    assert_eq!(count("health=healthy").await, 0);
    assert_eq!(count("ns=ns-1&csp=gcp").await, 1);

    // An update replaces the record.
    let a =
        c.json(Method::PUT, "/agents/ns-1%2Fm-1%2Fvm-1%2Faws", json!({"key": "ns-1/m-1/vm-1/aws", "vcpu": 16})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let one = c.get("/agents/ns-1%2Fm-1%2Fvm-1%2Faws").await.json();
    assert_eq!((one["vcpu"].as_f64(), &one["os_type"], one["memory_gib"].is_null()), (Some(16.0), &json!(""), true));

    // Removal: a tombstone in the file, which a job reads as the key's removal.
    assert_eq!(c.delete("/agents/ns-1%2Fm-2%2Fvm-2%2Fgcp").await.status, StatusCode::OK);
    assert_eq!(c.get("/agents/ns-1%2Fm-2%2Fvm-2%2Fgcp").await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.delete("/agents/ns-1%2Fm-2%2Fvm-2%2Fgcp").await.status, StatusCode::NOT_FOUND);
    assert_eq!(count("").await, 2);
    let text = std::fs::read(&registry).unwrap();
    let updates = operators::registry::parse_registry_file(&text, &registry).unwrap();
    let by_key: BTreeMap<&str, &operators::registry::RegistryUpdate> =
        updates.iter().map(|u| (u.key.as_str(), u)).collect();
    assert_eq!(by_key.len(), 3);
    assert!(by_key["ns-1/m-2/vm-2/gcp"].record.is_none());
    assert_eq!(by_key["ns-1/m-1/vm-1/aws"].record.as_ref().unwrap().vcpu, Some(16.0));
    assert_eq!(by_key["ns-2/m-1/vm-3/aws"].record.as_ref().unwrap().mcis_id, "m-9");
    // A job's registry reader sees the same.
    let mut reader = operators::registry::RegistryFile::new(&registry);
    assert_eq!(reader.poll().unwrap().unwrap().len(), 3);
    // And it is registered again by a PUT.
    assert_eq!(c.json(Method::PUT, "/agents/ns-1%2Fm-2%2Fvm-2%2Fgcp", json!({})).await.status, StatusCode::CREATED);
    assert_eq!(count("").await, 3);
    // A new server reads the file back.
    let (again, app_again) = open(&data);
    let all = Client::new(&again, &app_again).get("/agents").await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn rules_and_handlers_round_trip_and_reach_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, app) = open(&data);
    let c = Client::new(&server, &app);
    let version = server.alarms.live.version();
    let hook = json!({"name": "hook", "kind": "webhook", "url": "https://example.com/alarms", "timeout": "5s"});
    assert_eq!(c.json(Method::POST, "/alarms/handlers", hook.clone()).await.status, StatusCode::CREATED);
    assert_eq!(c.json(Method::POST, "/alarms/handlers", hook).await.status, StatusCode::CONFLICT);
    let rule = json!({"name": "cpu_high", "measurement": "cpu", "field": "usage_user", "aggregate": "mean",
                      "target": "vm", "comparison": ">", "warn": 80, "crit": 95, "handlers": ["hook"]});
    let a = c.json(Method::POST, "/alarms/rules", rule.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(a.json()["warn_windows"], 1, "defaults filled in: {}", a.text());
    assert_eq!(c.json(Method::POST, "/alarms/rules", rule).await.status, StatusCode::CONFLICT);
    let group_rule =
        json!({"name": "mcis_cpu", "level": "mcis", "metric": "cpu_util_mean", "comparison": ">=", "warn": 90});
    assert_eq!(c.json(Method::PUT, "/alarms/rules/mcis_cpu", group_rule).await.status, StatusCode::CREATED);
    assert!(server.alarms.live.version() > version);
    let live: Vec<String> = server.alarms.live.rules().iter().map(|r| r.name.clone()).collect();
    assert_eq!(live, ["cpu_high", "mcis_cpu"]);
    assert_eq!(server.alarms.live.handlers().len(), 1);

    let listed = c.get("/alarms/rules").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let mut one = c.get("/alarms/rules/cpu_high").await.json();
    assert_eq!(one["measurement"], "cpu");
    one["warn"] = json!(85);
    let a = c.json(Method::PUT, "/alarms/rules/cpu_high", one).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(server.alarms.live.rules()[0].warn, Some(85.0));

    // A handler in use is not removed.
    let a = c.delete("/alarms/handlers/hook").await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.json()["error"].as_str().unwrap().contains("cpu_high"));

    // A new server loads what was stored.
    let (again, app_again) = open(&data);
    assert_eq!(again.alarms.live.rules().len(), 2);
    assert_eq!(again.alarms.live.rules()[0].warn, Some(85.0));
    let c2 = Client::new(&again, &app_again);
    assert_eq!(c2.delete("/alarms/rules/cpu_high").await.status, StatusCode::OK);
    assert_eq!(c2.delete("/alarms/handlers/hook").await.status, StatusCode::OK);
    assert_eq!(c2.get("/alarms/handlers").await.json(), json!([]));
    let names: Vec<String> = again.alarms.live.rules().iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["mcis_cpu"]);
}

/// A Kafka job on librdkafka's mock cluster runs until stopped: DELETE stops it gracefully; a job
/// still running when the server shuts down is started again by the next server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_stop_on_delete_and_resume_after_a_restart() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("metrics", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, app) = open(&data);
    let c = Client::new(&server, &app);
    let spec = |group: &str| {
        json!({"name": group, "source": {"kind": "kafka", "brokers": brokers, "topics": ["metrics"], "group": group,
               "start": "earliest", "options": {"sasl.password": "kafka-secret"}}})
    };

    let a = c.json(Method::POST, "/jobs", spec("first")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let first = a.json()["id"].as_str().unwrap().to_string();
    let running = wait_state(&c, &first, "running").await;
    assert_eq!(running["spec"]["source"]["options"]["sasl.password"], "<redacted>");
    assert!(running["status"]["uptime_s"].as_f64().is_some(), "{running}");
    assert!(std::fs::read_to_string(data.join("jobs").join(&first).join("spec.json"))
        .unwrap()
        .contains("kafka-secret"));
    let a = c.delete(&format!("/jobs/{first}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let stopped = a.json();
    assert_eq!((&stopped["state"], &stopped["removed"]), (&json!("stopped"), &json!(false)), "{stopped}");
    assert!(stopped["stopped_at"].is_string());
    let persisted: Value =
        serde_json::from_slice(&std::fs::read(data.join("jobs").join(&first).join("state.json")).unwrap()).unwrap();
    assert_eq!(persisted["state"], "stopped");

    let a = c.json(Method::POST, "/jobs", spec("second")).await;
    let second = a.json()["id"].as_str().unwrap().to_string();
    wait_state(&c, &second, "running").await;
    let stopper = server.clone();
    tokio::task::spawn_blocking(move || stopper.shutdown()).await.unwrap();
    let persisted: Value =
        serde_json::from_slice(&std::fs::read(data.join("jobs").join(&second).join("state.json")).unwrap()).unwrap();
    assert_eq!(persisted["state"], "running", "a server's shutdown leaves the job to resume");

    let (again, app_again) = open(&data);
    let c2 = Client::new(&again, &app_again);
    let jobs = c2.get("/jobs").await.json();
    let states: BTreeMap<&str, &str> =
        jobs.as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap(), j["state"].as_str().unwrap())).collect();
    assert_eq!(states[first.as_str()], "stopped");
    assert!(matches!(states[second.as_str()], "starting" | "running"), "{states:?}");
    wait_state(&c2, &second, "running").await;
    let a = c2.delete(&format!("/jobs/{second}")).await;
    assert_eq!(a.json()["state"], "stopped");
    again.shutdown();
}

#[test]
fn specs_are_completed_with_the_servers_defaults() {
    let defaults = crate::jobs::SpecDefaults { lake: "/srv/lake".into(), registry: "/srv/registry.json".into() };
    let toml = "[source]\nkind = \"file\"\npath = \"m.jsonl\"\n";
    let spec = crate::jobs::prepare(toml, &defaults).unwrap();
    assert_eq!(pipelines::alarms::lake_path(&spec).unwrap(), Path::new("/srv/lake"));
    assert_eq!(spec.registry.file.as_deref(), Some(Path::new("/srv/registry.json")));
    let own = "[source]\nkind = \"file\"\npath = \"m.jsonl\"\n[registry]\nfile = \"mine.csv\"\n[[sink]]\nkind = \"parquet\"\npath = \"mine\"\n";
    let spec = crate::jobs::prepare(own, &defaults).unwrap();
    assert_eq!(spec.sinks.len(), 1);
    assert_eq!(pipelines::alarms::lake_path(&spec).unwrap(), Path::new("mine"));
    assert_eq!(spec.registry.file.as_deref(), Some(Path::new("mine.csv")));
    let json =
        r#"{"source": {"kind": "file", "path": "m.jsonl"}, "sink": [{"kind": "influxdb", "url": "http://h:8086"}]}"#;
    let spec = crate::jobs::prepare(json, &defaults).unwrap();
    assert_eq!(spec.sinks.len(), 2, "the lake comes after the given sinks");
    assert_eq!(pipelines::alarms::lake_path(&spec).unwrap(), Path::new("/srv/lake"));
    // Errors name the field as the spec's own parser does.
    let e = crate::jobs::prepare("[source]\nkind = \"file\"\npath = \"m\"\n[[sink]]\nkind = \"parquet\"\n", &defaults)
        .unwrap_err();
    assert_eq!(e.field, "sink[0].path");
    let e = crate::jobs::prepare("[window]\nsize = \"1s\"\n", &defaults).unwrap_err();
    assert_eq!(e.field, "source", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_time_limit_is_cancelled_with_504() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().join("data"),
        workers: 1,
        sql_time_limit: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = Server::open(config).expect("server opens");
    let app = router(server.clone());
    let c = Client::new(&server, &app);
    // Quick queries are answered as usual.
    let quick =
        c.json(Method::POST, "/sql", json!({"query": "SELECT count(*) AS n FROM generate_series(1, 1000)"})).await;
    assert_eq!(quick.status, StatusCode::OK, "{}", quick.text());
    assert_eq!(quick.json()["rows"][0]["n"], 1000);
    // Counting ten billion rows takes minutes: cancelled at the limit.
    let slow =
        c.json(Method::POST, "/sql", json!({"query": "SELECT count(*) FROM generate_series(1, 10000000000)"})).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    let error = slow.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("300ms") && error.contains("cancelled"), "{error}");
}

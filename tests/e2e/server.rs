//! The job server, from outside: `dragonflow serve` as its own process, driven over HTTP and
//! through the CLI client, with jobs reading tansu (started by `tests/run-all.sh`).
//!
//! - a job submitted over HTTP runs, reports growing counters and a watermark, stops on DELETE
//!   with its windows written and offsets committed; resubmitted after a server restart it reads
//!   only what is new: every message counted once;
//! - a rule added over HTTP to a running job fires on the next breaching window, and a handler's
//!   password appears in no response;
//! - the history route equals the same aggregation with `dragonflow sql` over the lake;
//! - without the token every route answers 401;
//! - a pull job inside the server polls the agents registered over HTTP, follows their changes
//!   without a restart, and shows its polling in the job's status and in Prometheus.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bin, dragonflow, kafka, publish, sql_rows, unique, PullAgents};

/// A `dragonflow serve` process on a port of its own; stopped (SIGINT, then kill) on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    token: String,
    data: PathBuf,
}

impl Server {
    /// A server over `data`, whose query routes read `lake`.
    fn start(data: &Path, lake: &Path) -> Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", data.to_str().unwrap()])
            .args(["--lake", lake.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server { child: Some(child), port, token: String::new(), data: data.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = server.call_raw("GET", "/healthz", None, None) {
                break;
            }
            assert!(Instant::now() < deadline, "the server did not answer /healthz");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.token = std::fs::read_to_string(data.join("token")).expect("the server wrote its token").trim().into();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.1 request (`Connection: close`); the status and the body.
    fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let (kind, bytes) = body.unwrap_or(("application/json", b""));
        head.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n\r\n", bytes.len()));
        stream.write_all(head.as_bytes())?;
        stream.write_all(bytes)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(answer.len());
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut body = answer[(split + 4).min(answer.len())..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Ok((status, body))
    }

    /// An authorised JSON call; the status and the parsed body (`Null` when empty).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let (status, bytes) = self
            .call_raw(method, path, Some(&self.token), text.as_deref().map(|t| ("application/json", t.as_bytes())))
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(120);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

fn job_spec(topic: &str, group: &str, lake: &Path) -> String {
    format!(
        "name = \"e2e\"\n[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nstart = \"committed\"\n\
         idle_timeout = \"2s\"\n[source.options]\n\"fetch.wait.max.ms\" = \"5\"\n\n[window]\nsize = \"10s\"\nlateness = \"5s\"\n\n\
         [checkpoint]\ninterval = \"1s\"\n\n[[sink]]\nkind = \"parquet\"\npath = {:?}\nflush_interval = \"1s\"\n",
        kafka(),
        lake.display().to_string()
    )
}

fn submit(server: &Server, spec: &str) -> String {
    let (status, bytes) =
        server.call_raw("POST", "/jobs", Some(&server.token), Some(("application/toml", spec.as_bytes()))).unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
    body["id"].as_str().expect("an id").to_string()
}

/// Polls `GET /jobs/{id}` until `done` holds for its body.
fn wait_job(server: &Server, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, job) = server.call("GET", &format!("/jobs/{id}"), None);
        assert_eq!(status, 200, "{job}");
        if done(&job) {
            return job;
        }
        assert_ne!(job["state"], "failed", "{job}");
        assert!(Instant::now() < deadline, "job {id}: {what}: {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn records_in(job: &Value) -> u64 {
    job["status"]["records_in"].as_u64().unwrap_or(0)
}

/// Start of the generated data: a whole minute of event time some minutes ago.
fn start_ns() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now / 60 - 20) * 60 * 1_000_000_000
}

#[test]
fn jobs_over_http_stop_resume_after_a_restart_and_count_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let lake = dir.path().join("lake");
    let topic = unique("srv");
    let group = unique("gsrv");
    let t0 = start_ns();
    let first = publish(&kafka(), &topic, Some(2), 20, 5, t0, 120);

    let mut server = Server::start(&data, &lake);
    let spec = job_spec(&topic, &group, &lake);
    let id = submit(&server, &spec);
    // Counters grow, and a watermark appears.
    let early = wait_job(&server, &id, "reading", |j| records_in(j) > 0);
    let running = wait_job(&server, &id, "all read", |j| records_in(j) == first.messages);
    assert!(records_in(&running) >= records_in(&early));
    assert_eq!(running["state"], "running", "{running}");
    assert!(running["status"]["watermark"].is_i64() || running["status"]["watermark"].is_string(), "{running}");
    let (status, jobs) = server.call("GET", "/jobs", None);
    assert_eq!(status, 200);
    assert!(jobs.as_array().unwrap().iter().any(|j| j["id"] == id.as_str()), "{jobs}");

    // DELETE stops it gracefully and answers once it is done.
    let (status, stopped) = server.call("DELETE", &format!("/jobs/{id}"), None);
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let checkpoints = lake.join("_checkpoints");
    assert!(checkpoints.exists(), "a checkpoint was written");

    // A restart of the server, more data, and the same job again: it reads only what is new.
    server.stop();
    let second = publish(&kafka(), &topic, None, 20, 6, t0 + 120 * 1_000_000_000, 60);
    let server = Server::start(&data, &lake);
    let (_, jobs) = server.call("GET", "/jobs", None);
    let old = jobs.as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).cloned();
    assert_eq!(old.map(|j| j["state"].clone()), Some(json!("stopped")), "a stopped job stays stopped: {jobs}");
    let id2 = submit(&server, &spec);
    wait_job(&server, &id2, "reading the new messages", |j| records_in(j) >= second.messages);
    let (status, done) = server.call("DELETE", &format!("/jobs/{id2}"), None);
    assert_eq!((status, done["state"].as_str()), (200, Some("stopped")), "{done}");

    // Every message once: the windows hold each value once, whichever run wrote them.
    let total = first.messages + second.messages;
    let counted = sql_rows(
        &lake,
        "SELECT sum(count) AS n, count(*) AS rows, count(DISTINCT concat(CAST(window_start AS VARCHAR), vm_id, measurement, instance, field)) AS keys \
         FROM aggregates WHERE field IN ('usage_idle','cur_freq','used_percent','read_bytes','bytes_recv')",
    );
    assert_eq!(counted[0]["n"], total.to_string(), "{counted:?}");
    assert_eq!(counted[0]["rows"], counted[0]["keys"], "no window written twice");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn rules_over_http_reach_a_running_job_and_secrets_stay_out_of_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let lake = dir.path().join("lake");
    let topic = unique("srvalarm");
    let group = unique("gsrvalarm");
    let t0 = start_ns();
    let first = publish(&kafka(), &topic, Some(1), 10, 7, t0, 60);
    let server = Server::start(&data, &lake);

    // A handler with a password: write-only.
    let handler = json!({
        "name": "mail", "kind": "smtp", "host": "127.0.0.1", "port": 2525, "from": "df@example.com",
        "to": ["ops@example.com"], "username": "df", "password": "pa55-w0rd-zz", "tls": "none"
    });
    let (status, answer) = server.call("POST", "/alarms/handlers", Some(handler));
    assert!(status == 200 || status == 201, "{status} {answer}");
    let id = submit(&server, &job_spec(&topic, &group, &lake));
    // 60 s of data: once read, the watermark (last timestamp − 5 s) closes the first 5 windows.
    wait_job(&server, &id, "all read, 5 windows closed", |j| {
        records_in(j) == first.messages && j["status"]["windows"].as_u64() >= Some(5)
    });

    // A rule every VM breaches (some CPU is always in use), added while the job runs.
    let rule = json!({
        "name": "cpu_in_use", "measurement": "cpu", "field": "usage_idle", "aggregate": "mean",
        "target": "vm", "comparison": "<", "crit": 100
    });
    let (status, answer) = server.call("POST", "/alarms/rules", Some(rule));
    assert!(status == 200 || status == 201, "{status} {answer}");
    let more = publish(&kafka(), &topic, None, 10, 7, t0 + 60 * 1_000_000_000, 40);
    wait_job(&server, &id, "reading the new messages", |j| records_in(j) == first.messages + more.messages);
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let (status, events) = server.call("GET", "/alarms/events?level=CRITICAL&rule=cpu_in_use", None);
        assert_eq!(status, 200, "{events}");
        if events.as_array().is_some_and(|e| e.len() >= 10) {
            break events;
        }
        assert!(Instant::now() < deadline, "the new rule did not fire: {events}");
        std::thread::sleep(Duration::from_millis(500));
    };
    // One OK → CRITICAL per VM, none in the windows that closed before the rule existed.
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 10, "{events:?}");
    let first_end = (t0 + 50 * 1_000_000_000) / 1_000_000_000;
    for e in events {
        assert_eq!(e["previous_level"], "OK", "{e}");
        let time = e["time"].as_str().unwrap_or_default();
        assert!(time > format_secs(first_end).as_str(), "fired for a window closed before the rule: {e}");
    }

    // The password is in no answer.
    for path in ["/alarms/handlers", "/alarms/handlers/mail", &format!("/jobs/{id}"), "/jobs", "/alarms/rules"] {
        let (status, bytes) = server.call_raw("GET", path, Some(&server.token), None).unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(!String::from_utf8_lossy(&bytes).contains("pa55-w0rd-zz"), "{path} shows the password");
    }
    let (status, _) = server.call("DELETE", &format!("/jobs/{id}"), None);
    assert_eq!(status, 200);

    // The history route equals the same aggregation over the lake.
    let vm = sql_rows(&lake, "SELECT vm_id FROM aggregates WHERE measurement = 'cpu' ORDER BY vm_id LIMIT 1")[0]
        ["vm_id"]
        .clone();
    let (status, history) =
        server.call("GET", &format!("/metrics/cpu?field=usage_idle&vm={vm}&period=1m&stat=mean&duration=1d"), None);
    assert_eq!(status, 200, "{history}");
    let want = sql_rows(
        &lake,
        &format!(
            "SELECT date_bin(INTERVAL '1 minute', window_start) AS bucket, sum(sum) / sum(count) AS v FROM aggregates \
             WHERE measurement = 'cpu' AND field = 'usage_idle' AND vm_id = '{vm}' AND instance = 'cpu-total' \
             GROUP BY bucket ORDER BY bucket"
        ),
    );
    let rows = history["points"].as_array().cloned().unwrap_or_default();
    let got: Vec<f64> = rows.iter().filter_map(|r| r["value"].as_f64()).collect();
    let want: Vec<f64> = want.iter().map(|r| r["v"].parse::<f64>().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{history} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(crate::common::rel(*g, *w) < 1e-9, "{history} vs {want:?}");
    }

    // The CLI is a client of the same server.
    let out = dragonflow(&["jobs", "--server", &server.url(), "--token", &server.token, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|j| j["id"] == id.as_str()), "{listed}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&server.token));
    let _ = std::fs::remove_dir_all(&server.data);
}

fn format_secs(secs: i64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn without_the_token_every_route_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), &dir.path().join("lake"));
    let (status, doc) = server.call("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths").clone();
    assert!(paths.len() >= 15, "{doc}");
    for (path, methods) in paths {
        let concrete = path
            .replace("{id}", "j-0")
            .replace("{key}", "a%2Fb%2Fc%2Fd")
            .replace("{name}", "x")
            .replace("{measurement}", "cpu");
        for method in methods.as_object().unwrap().keys() {
            let (status, body) = server.call_raw(&method.to_uppercase(), &concrete, None, None).unwrap();
            let expected = if path == "/healthz" { 200 } else { 401 };
            assert_eq!(status, expected, "{method} {path}: {}", String::from_utf8_lossy(&body));
            if expected == 401 {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                assert!(v["error"].is_string(), "{method} {path}: the error is JSON");
            }
        }
    }
    // A wrong token is refused too, and a bad body gets a JSON error naming the field.
    let (status, _) = server.call_raw("GET", "/jobs", Some("wrong"), None).unwrap();
    assert_eq!(status, 401);
    let (status, bytes) = server
        .call_raw("POST", "/jobs", Some(&server.token), Some(("application/toml", b"[window]\nsize = \"ten\"\n")))
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!((400..500).contains(&status), "{status}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains('`')), "{v}");
}

#[test]
fn on_demand_calls_a_pull_agent_now_through_the_server_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let agents = PullAgents::start(dir.path(), 3, &[]);
    let server = Server::start(&dir.path().join("server"), &dir.path().join("lake"));
    let record = &agents.registry[0];
    let (ns, mcis, vm, csp) = (
        record["ns_id"].as_str().unwrap(),
        record["mcis_id"].as_str().unwrap(),
        record["vm_id"].as_str().unwrap(),
        record["csp_type"].as_str().unwrap(),
    );
    let key = format!("{ns}/{mcis}/{vm}/{csp}");
    let encoded = key.replace('/', "%2F");
    let pull_url = record["pull_url"].as_str().unwrap();
    let (status, answer) = server.call(
        "PUT",
        &format!("/agents/{encoded}"),
        Some(json!({"mechanism": "pull", "pull_url": pull_url, "state": "enable"})),
    );
    assert!(status == 200 || status == 201, "{status} {answer}");

    let (status, answer) = server.call("GET", &format!("/agents/{encoded}/ondemand?measurement=cpu,mem"), None);
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{answer}");
    for (r, name) in results.iter().zip(["cpu", "mem"]) {
        assert_eq!(r["measurement"], name, "{answer}");
        assert_eq!(r["metric"]["name"], name, "{answer}");
        assert_eq!(r["metric"]["tags"]["vmId"], vm, "{answer}");
        assert!(r["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{answer}");
    }
    assert!(results[0]["metric"]["fields"]["usage_idle"].is_number(), "{answer}");

    // The same through the CLI; then a failing agent: named, and a non-zero exit.
    let base = ["--server", &server.url(), "--token", &server.token];
    let out = dragonflow(&[&["ondemand", &key, "--measurement", "cpu"][..], &base[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("usage_idle="), "{text}{}", String::from_utf8_lossy(&out.stderr));
    agents.set(vm, "fail");
    let out = dragonflow(&[&["ondemand", &key, "--measurement", "cpu"][..], &base[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && text.contains("cpu") && text.contains("FAILED"), "{text}");
    // Without the server, straight to the agent's URL.
    agents.set(vm, "ok");
    let out = dragonflow(&["ondemand", &key, "--url", pull_url, "--measurement", "mem", "--json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(out.status.success(), "{answer}");
    assert_eq!(answer["results"][0]["metric"]["name"], "mem", "{answer}");
    // An agent without a pull_url cannot be called.
    let (status, _) = server.call("PUT", "/agents/a%2Fb%2Fc%2Fd", Some(json!({"mechanism": "push"})));
    assert!(status == 200 || status == 201);
    let (status, answer) = server.call("GET", "/agents/a%2Fb%2Fc%2Fd/ondemand", None);
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("pull_url")), "{answer}");
}

#[test]
fn pulled_agents_land_in_the_windows_with_the_values_served_and_failures_in_agent_health() {
    use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("served.jsonl");
    // Agents ticking every second, served over HTTP, every value served logged.
    let agents = PullAgents::start(dir.path(), 6, &["--interval", "1s", "--log", log.to_str().unwrap()]);
    let registry = agents.registry_path.clone();

    // A job whose Kafka topic stays empty: everything comes from the pull agents.
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("metrics", 1, 1).unwrap();
    let lake = dir.path().join("lake");
    let spec = JobSpec::parse(&format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"metrics\"]\nstart = \"earliest\"\nidle_timeout = \"1s\"\n\
         [window]\nsize = \"2s\"\nlateness = \"1s\"\n\n[registry]\nfile = {:?}\nunhealthy_after = 1000\n\n\
         [pull]\nmeasurements = [\"cpu\", \"mem\"]\ninterval = \"1s\"\ntimeout = \"500ms\"\nfailures_unhealthy = 2\nhealthcheck_interval = \"1s\"\n\n\
         [[sink]]\nkind = \"parquet\"\npath = {:?}\nflush_interval = \"500ms\"\n",
        cluster.bootstrap_servers(),
        registry.display().to_string(),
        lake.display().to_string()
    ))
    .unwrap();
    let control = Arc::new(JobControl::new());
    let metrics = Arc::new(JobMetrics::new(2));
    let job = {
        let (control, metrics) = (control.clone(), metrics.clone());
        std::thread::spawn(move || run_job(&spec, &RunOptions::default(), control, metrics))
    };
    // One agent fails for a while, then answers again.
    let failing = agents.registry[0]["vm_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(3));
    agents.set(&failing, "fail");
    std::thread::sleep(Duration::from_secs(6));
    agents.set(&failing, "ok");
    std::thread::sleep(Duration::from_secs(5));
    control.drain();
    job.join().unwrap().expect("the job runs");
    drop(agents);

    // Every (VM, window) the job wrote holds exactly the values the agents served in it.
    let mut served: std::collections::BTreeMap<(String, i64), Vec<f64>> = Default::default();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["measurement"] == "cpu" {
            let window = v["timestamp"].as_i64().unwrap() / 2 * 2;
            served
                .entry((v["vm_id"].as_str().unwrap().into(), window))
                .or_default()
                .push(v["fields"]["usage_idle"].as_f64().unwrap());
        }
    }
    let rows = sql_rows(
        &lake,
        "SELECT vm_id, CAST(to_unixtime(window_start) AS BIGINT) AS ws, count, mean FROM aggregates \
         WHERE measurement = 'cpu' AND field = 'usage_idle' ORDER BY vm_id, ws",
    );
    let vms: std::collections::BTreeSet<_> = rows.iter().map(|r| r["vm_id"].clone()).collect();
    assert_eq!(vms.len(), 6, "every pulled agent has windows: {vms:?}");
    let last = rows.iter().map(|r| r["ws"].parse::<i64>().unwrap()).max().unwrap();
    let mut compared = 0;
    for r in &rows {
        let ws: i64 = r["ws"].parse().unwrap();
        if ws >= last - 2 {
            continue; // the windows the drain cut through
        }
        let values = &served[&(r["vm_id"].clone(), ws)];
        assert_eq!(r["count"], values.len().to_string(), "{r:?} vs {values:?}");
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(crate::common::rel(r["mean"].parse().unwrap(), mean) < 1e-9, "{r:?} vs {values:?}");
        compared += 1;
    }
    assert!(compared >= 6 * 3, "{compared} windows compared");

    // The failing agent turned unhealthy, and healthy again, in agent_health.
    let health = sql_rows(
        &lake,
        &format!("SELECT \"from\" AS f, \"to\" AS t, reason FROM agent_health WHERE vm_id = '{failing}' AND reason LIKE 'pull:%' ORDER BY time"),
    );
    let moves: Vec<_> = health.iter().map(|r| (r["f"].as_str(), r["t"].as_str())).collect();
    assert_eq!(moves, vec![("healthy", "unhealthy"), ("unhealthy", "healthy")], "{health:?}");
    assert!(health[0]["reason"].contains("failed polls"), "{health:?}");
}

#[test]
fn a_pull_job_in_the_server_polls_the_agents_registered_over_http_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let agents = PullAgents::start(dir.path(), 4, &["--interval", "1s"]);
    let lake = dir.path().join("lake");
    let server = Server::start(&dir.path().join("server"), &lake);
    let key = |i: usize| {
        let r = &agents.registry[i];
        let part = |f: &str| r[f].as_str().unwrap().to_string();
        format!("{}/{}/{}/{}", part("ns_id"), part("mcis_id"), part("vm_id"), part("csp_type"))
    };
    let register = |i: usize| {
        let body = json!({"mechanism": "pull", "pull_url": agents.registry[i]["pull_url"], "state": "enable"});
        let (status, answer) = server.call("PUT", &format!("/agents/{}", key(i).replace('/', "%2F")), Some(body));
        assert!(status == 200 || status == 201, "{status} {answer}");
    };
    for i in 0..3 {
        register(i);
    }
    // A pull-only job with neither a registry file nor a sink: the server's registry and lake.
    let id = submit(
        &server,
        "name = \"pulled\"\n[source]\nkind = \"pull\"\n\n[window]\nsize = \"2s\"\nlateness = \"1s\"\n\n\
         [pull]\nmeasurements = [\"cpu\", \"mem\"]\ninterval = \"1s\"\n",
    );
    let pull = |job: &Value| job["status"]["pull"].clone();
    let job = wait_job(&server, &id, "polls the three agents into windows", |j| {
        pull(j)["agents"] == 3 && pull(j)["polls_ok"].as_u64() > Some(12) && j["status"]["windows"].as_u64() >= Some(2)
    });
    let delays = pull(&job)["round_delay"].as_array().cloned().unwrap_or_default();
    assert_eq!(delays.first().map(|b| b["le_ms"].clone()), Some(json!(5)), "{job}");
    assert_eq!(delays.last().map(|b| b["le_ms"].clone()), Some(json!("+Inf")), "{job}");
    let rounds: u64 = delays.iter().filter_map(|b| b["count"].as_u64()).sum();
    assert!(rounds > 0 && rounds <= pull(&job)["rounds"].as_u64().unwrap(), "{job}");
    let (status, text) = server.call_raw("GET", "/metrics/prometheus", Some(&server.token), None).unwrap();
    let text = String::from_utf8_lossy(&text).to_string();
    assert_eq!(status, 200);
    let healthy = format!("dragonflow_pull_agents{{job=\"{id}\",name=\"pulled\",health=\"healthy\"}} 3");
    assert!(text.lines().any(|l| l == healthy), "{healthy} in\n{text}");

    // The fourth agent is registered and the first one removed, over HTTP: the running job
    // follows, and what it pulled is queryable.
    register(3);
    wait_job(&server, &id, "polls the fourth agent", |j| pull(j)["agents"] == 4);
    let (status, _) = server.call("DELETE", &format!("/agents/{}", key(0).replace('/', "%2F")), None);
    assert!(status == 200 || status == 204, "{status}");
    wait_job(&server, &id, "stops polling the first agent", |j| pull(j)["agents"] == 3);
    let vm3 = agents.registry[3]["vm_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, latest) = server.call("GET", &format!("/metrics/latest?vm={vm3}"), None);
        assert_eq!(status, 200, "{latest}");
        if latest.as_array().is_some_and(|rows| rows.iter().any(|r| r["measurement"] == "cpu")) {
            break;
        }
        assert!(Instant::now() < deadline, "no window of {vm3}: {latest}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, stopped) = server.call("DELETE", &format!("/jobs/{id}"), None);
    assert_eq!(status, 200, "{stopped}");
    let vms = sql_rows(&lake, "SELECT DISTINCT vm_id FROM aggregates ORDER BY vm_id");
    let vms: Vec<&str> = vms.iter().map(|r| r["vm_id"].as_str()).collect();
    let mut want: Vec<&str> = (0..4).map(|i| agents.registry[i]["vm_id"].as_str().unwrap()).collect();
    want.sort();
    assert_eq!(vms, want, "every registered agent was pulled, and only those");
}

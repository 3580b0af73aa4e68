//! Alarm rules through `dragonflow run`: a scripted CPU sequence gives exactly the events the rule
//! semantics define (docs/alarms.md), events land in the lake and reach handlers (a local HTTP
//! receiver for Slack and webhooks, Debian's aiosmtpd for mail), a handler that hangs does not
//! hold windows back, and `dragonflow alarms test` sends a sample through a rule's handlers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{bin, dragonflow, dragonflow_ok, sql_rows};

/// Start of the data, in seconds (a multiple of the window).
const T0: i64 = 1_700_000_000;
const WINDOW_S: i64 = 10;

/// vm-1's `cpu.usage_user` per window: crosses warn, crit, oscillates inside the hysteresis band,
/// falls back through WARNING, recovers, spikes, then falls silent.
const SCRIPT: [f64; 16] =
    [50.0, 85.0, 85.0, 97.0, 97.0, 92.0, 96.0, 91.0, 93.0, 88.0, 75.0, 82.0, 72.0, 60.0, 50.0, 99.0];
/// vm-2 keeps reporting (10% busy) until this window, so the data's watermark passes vm-1's silence.
const VM2_UNTIL: i64 = 26;

fn window_end(w: i64) -> String {
    rfc3339((T0 + WINDOW_S * (w + 1)) * 1_000_000_000)
}

/// RFC 3339 of a whole second, as the SQL CSV output prints timestamps (`2023-11-14T22:13:30+00:00`).
fn rfc3339(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Writes the scripted input: one record per VM per window, in the middle of the window.
fn write_input(path: &Path) {
    let mut out = String::new();
    let line = |vm: &str, w: i64, busy: f64| {
        let tags = format!(r#"{{"nsId":"ns-1","mcisId":"mcis-1","vmId":"{vm}","cspType":"aws","osType":"ubuntu"}}"#);
        format!(
            "{{\"name\":\"cpu\",\"tags\":{tags},\"fields\":{{\"usage_user\":{busy},\"usage_idle\":{}}},\"timestamp\":{}}}\n",
            100.0 - busy,
            T0 + WINDOW_S * w + 5
        )
    };
    for w in 0..VM2_UNTIL {
        if let Some(v) = SCRIPT.get(w as usize) {
            out.push_str(&line("vm-1", w, *v));
        }
        out.push_str(&line("vm-2", w, 10.0));
    }
    std::fs::write(path, out).unwrap();
}

const RULES: &str = r#"
[[alarm]]
name = "cpu_high"
measurement = "cpu"
field = "usage_user"
aggregate = "mean"
target = "vm"
comparison = ">"
warn = 80
crit = 95
warn_windows = 2
warn_reset = 70
crit_reset = 90
nodata_after = 3
message = "{rule} {level} on {target}: {value} (threshold {threshold})"
HANDLERS

[[alarm]]
name = "csp_cpu"
level = "csp"
metric = "cpu_util_max"
comparison = ">="
crit = 95
crit_windows = 2
"#;

fn write_spec(dir: &Path, input: &Path, lake: &Path, handlers: &str, rule_handlers: &str) -> PathBuf {
    let spec = dir.join("job.toml");
    let rules = RULES.replace("HANDLERS", rule_handlers);
    std::fs::write(
        &spec,
        format!(
            "[source]\nkind = \"file\"\npath = {:?}\nformat = \"json\"\n\n[window]\nsize = \"{WINDOW_S}s\"\nlateness = \"5s\"\n\n\
             [[sink]]\nkind = \"parquet\"\npath = {:?}\n{handlers}\n{rules}",
            input.display().to_string(),
            lake.display().to_string()
        ),
    )
    .unwrap();
    spec
}

/// `(window index, target, previous level, level, value, threshold)` of every event, by time.
type Expected = Vec<(i64, &'static str, &'static str, &'static str, &'static str, &'static str)>;

fn expected() -> Expected {
    let vm = "ns-1/mcis-1/vm-1/aws";
    vec![
        // Two windows above 80 before WARNING (warn_windows = 2).
        (2, vm, "OK", "WARNING", "85.0", "80.0"),
        (3, vm, "WARNING", "CRITICAL", "97.0", "95.0"),
        // csp_cpu needs two windows at or above 95.
        (4, "aws", "OK", "CRITICAL", "97.0", "95.0"),
        (5, "aws", "CRITICAL", "OK", "92.0", "95.0"),
        // 92, 96, 91, 93 stay inside the band above crit_reset (90): no flapping. 88 falls to
        // WARNING (still above warn_reset 70); 75, 82, 72 stay WARNING; 60 recovers, once.
        (9, vm, "CRITICAL", "WARNING", "88.0", "90.0"),
        (13, vm, "WARNING", "OK", "60.0", "70.0"),
        (15, vm, "OK", "CRITICAL", "99.0", "95.0"),
        // Silent for windows 16, 17, 18 (nodata_after = 3) while vm-2 moves the watermark on.
        (18, vm, "CRITICAL", "NODATA", "", ""),
    ]
}

fn events(lake: &Path) -> Vec<HashMap<String, String>> {
    sql_rows(
        lake,
        "SELECT id, time, rule, target, previous_level, level, value, threshold, message, delivered, delivery_error \
         FROM alarm_events ORDER BY time, rule, target",
    )
}

fn check_events(rows: &[HashMap<String, String>]) {
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["time"].clone(),
                r["target"].clone(),
                r["previous_level"].clone(),
                r["level"].clone(),
                r["value"].clone(),
                r["threshold"].clone(),
            )
        })
        .collect();
    let want: Vec<_> = expected()
        .into_iter()
        .map(|(w, t, p, l, v, th)| (window_end(w), t.to_string(), p.into(), l.into(), v.into(), th.into()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn scripted_cpu_gives_exactly_the_events_of_the_rule_semantics_and_replays_identically() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cpu.json");
    write_input(&input);
    let lake = dir.path().join("lake");
    let spec = write_spec(dir.path(), &input, &lake, "", "");
    let out = dragonflow_ok(&["run", spec.to_str().unwrap(), "--status-every", "0"]);
    assert!(out.contains("alarms:      8 events"), "{out}");
    let rows = events(&lake);
    check_events(&rows);
    let crit = &rows[1];
    assert_eq!(crit["message"], "cpu_high CRITICAL on ns-1/mcis-1/vm-1/aws: 97 (threshold 95)");
    // No handlers: nothing to deliver.
    assert!(rows.iter().all(|r| r["delivered"].is_empty() && r["delivery_error"].is_empty()));
    // Listable by level and time.
    let critical = sql_rows(
        &lake,
        &format!(
            "SELECT target FROM alarm_events WHERE level = 'CRITICAL' AND time >= TIMESTAMP '{}' ORDER BY time",
            window_end(4)
        ),
    );
    let targets: Vec<_> = critical.iter().map(|r| r["target"].as_str()).collect();
    assert_eq!(targets, ["aws", "ns-1/mcis-1/vm-1/aws"]);

    // A second run over the same input (with one worker) gives the same events, ids included.
    let lake2 = dir.path().join("lake2");
    let spec2 = write_spec(dir.path(), &input, &lake2, "", "");
    dragonflow_ok(&["run", spec2.to_str().unwrap(), "--status-every", "0", "--workers", "1"]);
    let again = events(&lake2);
    let ids = |rows: &[HashMap<String, String>]| rows.iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&rows));
}

/// One HTTP request as the receiver saw it.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

/// A local HTTP receiver: answers 200 to every request or, started holding, holds every request
/// unanswered while `hold` is set and then closes it without an answer.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    hold: Arc<AtomicBool>,
}

impl Receiver {
    fn start(hold: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(AtomicBool::new(hold));
        let (seen, held) = (requests.clone(), hold.clone());
        let holding = hold.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, held) = (seen.clone(), held.clone());
                std::thread::spawn(move || serve(stream, &seen, holding.then_some(&*held)));
            }
        });
        Receiver { port, requests, hold }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, hold: Option<&AtomicBool>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        seen.lock().unwrap().push(Request { path, headers, body });
        if let Some(hold) = hold {
            while hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let mut w = &stream;
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

#[test]
fn events_reach_slack_and_webhook_handlers_and_deliveries_are_recorded() {
    let receiver = Receiver::start(false);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cpu.json");
    write_input(&input);
    let lake = dir.path().join("lake");
    let handlers = format!(
        "[[handler]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{}\"\nchannel = \"#ops\"\nusername = \"dragonflow\"\n\n\
         [[handler]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer s3cret-token\" }}\n",
        receiver.url("/services/T000/B000/slacksecret"),
        receiver.url("/alarms")
    );
    let spec = write_spec(dir.path(), &input, &lake, &handlers, "handlers = [\"chat\", \"hook\"]");
    let out = dragonflow(&["run", spec.to_str().unwrap(), "--status-every", "0"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for secret in ["s3cret-token", "slacksecret"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "a secret was printed:\n{stdout}\n{stderr}");
    }

    let rows = events(&lake);
    check_events(&rows);
    // Six events of cpu_high (the rule with handlers), each to both handlers.
    let cpu: Vec<_> = rows.iter().filter(|r| r["rule"] == "cpu_high").collect();
    assert_eq!(cpu.len(), 6);
    assert!(cpu.iter().all(|r| r["delivered"] == "true" && r["delivery_error"].is_empty()), "{cpu:?}");
    let requests = receiver.requests();
    let hooks: Vec<_> = requests.iter().filter(|r| r.path == "/alarms").collect();
    let slack: Vec<_> = requests.iter().filter(|r| r.path.starts_with("/services/")).collect();
    assert_eq!((hooks.len(), slack.len()), (6, 6), "{requests:?}");

    // The webhook gets the event as JSON, with its headers.
    // Two CRITICAL events exist (from WARNING and from OK) and deliveries run concurrently:
    // pick the one raised from WARNING on both sides.
    let critical = hooks
        .iter()
        .find(|r| r.body["level"] == "CRITICAL" && r.body["previous_level"] == "WARNING")
        .expect("a CRITICAL event");
    assert_eq!(critical.headers.get("authorization").map(String::as_str), Some("Bearer s3cret-token"));
    assert!(critical.headers["content-type"].starts_with("application/json"));
    let body = &critical.body;
    let row = cpu.iter().find(|r| r["level"] == "CRITICAL" && r["previous_level"] == "WARNING").unwrap();
    assert_eq!(body["id"], row["id"].as_str());
    assert_eq!(body["rule"], "cpu_high");
    assert_eq!(body["target"], "ns-1/mcis-1/vm-1/aws");
    assert_eq!(body["previous_level"], "WARNING");
    assert_eq!(body["value"], 97.0);
    assert_eq!(body["threshold"], 95.0);
    assert_eq!(body["time_ns"], (T0 + 40) * 1_000_000_000);
    assert_eq!(body["message"], row["message"].as_str());
    let nodata = hooks.iter().find(|r| r.body["level"] == "NODATA").expect("a NODATA event");
    assert!(nodata.body["value"].is_null() && nodata.body["threshold"].is_null());

    // Slack gets its incoming-webhook shape.
    let s = slack.iter().find(|r| r.body["text"] == row["message"].as_str()).expect("slack");
    assert_eq!(s.body["attachments"][0]["title"], "cpu_high is CRITICAL");
    assert_eq!(s.body["channel"], "#ops");
    assert_eq!(s.body["username"], "dragonflow");
    assert_eq!(s.body["attachments"][0]["color"], "danger");
    let fields = s.body["attachments"][0]["fields"].as_array().expect("fields");
    assert!(fields.iter().any(|f| f["title"] == "Target" && f["value"] == "ns-1/mcis-1/vm-1/aws"));

    // The log keeps the pending rows and the outcomes; the view shows one row per event.
    let log = sql_rows(&lake, "SELECT count(*) AS n FROM alarm_log WHERE rule = 'cpu_high'");
    assert_eq!(log[0]["n"], "12");
    let secrets = sql_rows(&lake, "SELECT count(*) AS n FROM alarm_log WHERE delivery_error LIKE '%secret%'");
    assert_eq!(secrets[0]["n"], "0");
}

#[test]
fn a_hanging_handler_does_not_hold_windows_back_and_its_failure_is_recorded() {
    let receiver = Receiver::start(true);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cpu.json");
    write_input(&input);
    let lake = dir.path().join("lake");
    let handlers = format!(
        "[[handler]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"60s\"\nretries = 0\n",
        receiver.url("/alarms")
    );
    let spec = write_spec(dir.path(), &input, &lake, &handlers, "handlers = [\"hook\"]");
    let mut child = Command::new(bin())
        .args(["run", spec.to_str().unwrap(), "--status-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While the receiver holds every request unanswered, every window and every event is
    // written: the dataflow never waits for a handler.
    let deadline = Instant::now() + Duration::from_secs(120);
    let windows = loop {
        let done = sql_rows(&lake, "SELECT count(DISTINCT window_end) AS n FROM aggregates");
        let pending = sql_rows(&lake, "SELECT count(*) AS n FROM alarm_log WHERE delivered IS NULL");
        if done.first().map(|r| r["n"].as_str()) == Some(&VM2_UNTIL.to_string())
            && pending.first().map(|r| r["n"].as_str()) == Some("8")
        {
            break done;
        }
        assert!(Instant::now() < deadline, "windows were not written while a handler hung");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before its handler answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(windows[0]["n"], VM2_UNTIL.to_string());
    assert!(!receiver.requests().is_empty(), "the handler was called");
    assert!(child.try_wait().unwrap().is_none(), "the job waits for its deliveries");

    // The receiver drops the connections: the deliveries fail, and the failures are recorded.
    receiver.hold.store(false, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = events(&lake);
    check_events(&rows);
    let cpu: Vec<_> = rows.iter().filter(|r| r["rule"] == "cpu_high").collect();
    assert!(cpu.iter().all(|r| r["delivered"] == "false" && r["delivery_error"].starts_with("hook: ")), "{cpu:?}");
}

/// Debian's aiosmtpd, on a port of the test's own, printing what it receives; stopped on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    output: Arc<Mutex<String>>,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // The first interpreter that has aiosmtpd: a `python3` earlier on PATH (pyenv, a venv)
        // may not see Debian's package.
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| Command::new(p).args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success()))
            .expect("no python3 can import aiosmtpd: install python3-aiosmtpd, or run tests/run-all.sh");
        let mut child = Command::new(python)
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (install python3-aiosmtpd, or run tests/run-all.sh)");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aiosmtpd exited ({status}): install python3-aiosmtpd, or run tests/run-all.sh");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer { child, port, output }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alarms_test_sends_a_sample_through_smtp_and_reports_a_dead_handler() {
    let smtp = SmtpServer::start();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cpu.json");
    write_input(&input);
    let handlers = format!(
        "[[handler]]\nname = \"mail\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"dragonflow@example.com\"\n\
         to = [\"ops@example.com\", \"oncall@example.com\"]\ntls = \"none\"\n\n\
         [[handler]]\nname = \"gone\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/hook?token=zzsecret\"\ntimeout = \"2s\"\nretries = 0\n",
        smtp.port
    );
    let spec = write_spec(dir.path(), &input, &dir.path().join("lake"), &handlers, "handlers = [\"mail\"]");

    let out = dragonflow_ok(&["alarms", "test", spec.to_str().unwrap(), "cpu_high"]);
    assert!(out.contains("mail: delivered"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mail = loop {
        let text = smtp.output.lock().unwrap().clone();
        if text.contains("END MESSAGE") {
            break text;
        }
        assert!(Instant::now() < deadline, "no mail arrived: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(mail.contains("Subject: [Dragonflow] CRITICAL cpu_high on sample-target"), "{mail}");
    assert!(mail.contains("From: dragonflow@example.com"), "{mail}");
    assert!(mail.contains("ops@example.com") && mail.contains("oncall@example.com"), "{mail}");
    assert!(mail.contains("[test] cpu_high CRITICAL on sample-target: 96 (threshold 95)"), "{mail}");
    assert!(mail.contains("Rule: cpu_high"), "{mail}");

    // A handler nobody listens on: the command names it, fails, and keeps its token to itself.
    let spec = write_spec(dir.path(), &input, &dir.path().join("lake"), &handlers, "handlers = [\"gone\"]");
    let out = dragonflow(&["alarms", "test", spec.to_str().unwrap(), "cpu_high"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("gone: FAILED"), "{text}");
    assert!(!text.contains("zzsecret"), "{text}");

    // A rule that does not exist is named.
    let out = dragonflow(&["alarms", "test", spec.to_str().unwrap(), "nope"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("\"nope\"") && text.contains("cpu_high"), "{text}");
}

/// Publishes `cpu` records of vm-1 (busy at `busy`%) for windows `from..to`, one per window.
fn publish_cpu(brokers: &str, from: i64, to: i64, busy: f64) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for w in from..to {
        let tags = r#"{"nsId":"ns-1","mcisId":"mcis-1","vmId":"vm-1","cspType":"aws","osType":"ubuntu"}"#;
        let line = format!(
            "{{\"name\":\"cpu\",\"tags\":{tags},\"fields\":{{\"usage_user\":{busy}}},\"timestamp\":{}}}",
            T0 + WINDOW_S * w + 5
        );
        producer.send(BaseRecord::<(), _>::to("metrics").payload(&line)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_rule_added_to_a_running_job_fires_on_the_next_closed_window() {
    use pipelines::alarms::LiveAlarms;
    use pipelines::spec::{KafkaSource, ParquetSink, SinkSpec, SourceSpec, StartAt};
    use pipelines::{run_job, JobControl, JobMetrics, JobSpec, RunOptions};

    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("metrics", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut spec = JobSpec::parse(&format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"metrics\"]\nstart = \"earliest\"\nidle_timeout = \"10m\"\n\
         [source.options]\n\"fetch.wait.max.ms\" = \"5\"\n\n[window]\nsize = \"{WINDOW_S}s\"\nlateness = \"5s\"\n\n\
         [[sink]]\nkind = \"parquet\"\npath = {:?}\n",
        lake.display().to_string()
    ))
    .unwrap();
    assert!(matches!(spec.source, SourceSpec::Kafka(KafkaSource { start: StartAt::Earliest, .. })));
    spec.sinks =
        vec![SinkSpec::Parquet(ParquetSink { path: lake.clone(), flush_interval: Duration::from_millis(200) })];

    let live = LiveAlarms::new();
    let control = Arc::new(JobControl::new());
    // One worker for the one partition: another worker would read nothing and hold the watermark.
    let metrics = Arc::new(JobMetrics::new(1));
    let options = RunOptions { workers: 1, alarms: Some(live.clone()), ..Default::default() };
    let job = {
        let (control, metrics) = (control.clone(), metrics.clone());
        std::thread::spawn(move || run_job(&spec, &options, control, metrics))
    };

    // Windows 0..=9 are sent; the watermark (last timestamp − 5 s) closes windows 0..=8.
    publish_cpu(&brokers, 0, 10, 99.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.windows.load(Ordering::Relaxed) < 9 {
        assert!(Instant::now() < deadline, "windows 0..=8 did not close: {}", metrics.status_line());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing raises anything yet: there is no rule. Now one arrives.
    let rule: pipelines::spec::AlarmSpec = serde_json::from_value(serde_json::json!({
        "name": "cpu_user", "measurement": "cpu", "field": "usage_user", "aggregate": "mean",
        "target": "vm", "comparison": ">", "crit": 90
    }))
    .unwrap();
    live.set(vec![rule], Vec::new());
    publish_cpu(&brokers, 10, 14, 99.0);
    control.drain();
    job.join().unwrap().expect("job runs");

    let rows = sql_rows(&lake, "SELECT time, rule, target, previous_level, level FROM alarm_events ORDER BY time");
    let got: Vec<_> =
        rows.iter().map(|r| (r["time"].as_str(), r["previous_level"].as_str(), r["level"].as_str())).collect();
    // The first window closed after the rule arrived is window 9: it fires there, once.
    assert_eq!(got, vec![(window_end(9).as_str(), "OK", "CRITICAL")], "{rows:?}");
}

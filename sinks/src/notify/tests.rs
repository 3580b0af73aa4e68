//! Delivery against real servers: a small HTTP/1.1 receiver written here (it records what arrives
//! and answers as told), and Debian's aiosmtpd (`python3-aiosmtpd`) for mail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use operators::model::{AlarmDelivery, AlarmEvent};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

// --- Fixtures

fn event(handlers: &[&str]) -> AlarmEvent {
    AlarmEvent {
        id: "3f2a9c0d1b7e4a55".into(),
        time: 1_714_564_800_000_000_000,
        rule: "cpu_high".into(),
        target: "vm-7".into(),
        level: "CRITICAL".into(),
        previous_level: "WARNING".into(),
        value: Some(97.5),
        threshold: Some(95.0),
        message: "cpu_high is CRITICAL on vm-7: 97.5".into(),
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
    }
}

fn handler(name: &str, kind: HandlerKind, timeout: Duration, retries: u32) -> HandlerSpec {
    HandlerSpec { name: name.into(), kind, timeout, retries }
}

fn slack(url: &str) -> HandlerKind {
    HandlerKind::Slack(SlackHandler {
        url: url.into(),
        channel: Some("#ops".into()),
        username: Some("dragonflow".into()),
    })
}

fn webhook(url: &str, headers: &[(&str, &str)]) -> HandlerKind {
    let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    HandlerKind::Webhook(WebhookHandler { url: url.into(), headers })
}

fn smtp(port: u16, tls: SmtpTls, login: Option<(&str, &str)>) -> HandlerKind {
    HandlerKind::Smtp(SmtpHandler {
        host: "127.0.0.1".into(),
        port,
        from: "Dragonflow <alarms@example.com>".into(),
        to: vec!["ops@example.com".into(), "oncall@example.com".into()],
        username: login.map(|(u, _)| u.to_string()),
        password: login.map(|(_, p)| p.to_string()),
        tls,
    })
}

/// Short waits between attempts, so that retries take milliseconds.
fn quick() -> DeliveryPolicy {
    DeliveryPolicy::default().with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A dispatcher whose outcomes arrive on a channel, one delivery at a time.
fn dispatcher(handlers: Vec<HandlerSpec>, policy: DeliveryPolicy) -> (Dispatcher, mpsc::Receiver<AlarmDelivery>) {
    let (tx, rx) = mpsc::channel();
    let outcomes = Box::new(move |batch: Vec<AlarmDelivery>| {
        for delivery in batch {
            let _ = tx.send(delivery);
        }
    });
    (Dispatcher::start_with(handlers, outcomes, policy).expect("dispatcher"), rx)
}

fn next(outcomes: &mpsc::Receiver<AlarmDelivery>) -> AlarmDelivery {
    outcomes.recv_timeout(Duration::from_secs(20)).expect("an outcome within 20 s")
}

// --- The HTTP receiver

/// How the receiver answers a request.
#[derive(Clone, Debug)]
enum Reply {
    /// This status, with this body.
    Status(u16, &'static str),
    /// This status after a while.
    Late(Duration, u16),
    /// Nothing: the connection stays open, silent.
    Never,
}

#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP/1.1 server on 127.0.0.1 with a thread and runtime of its own: the n-th request gets
/// the n-th reply (the last one repeats). Stops when dropped.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    fn start(replies: Vec<Reply>) -> Receiver {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let record = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let replies = Arc::new(replies);
                let count = Arc::new(AtomicUsize::new(0));
                let serve = async {
                    loop {
                        let Ok((socket, _)) = listener.accept().await else { continue };
                        let (replies, count, record) = (replies.clone(), count.clone(), record.clone());
                        tokio::spawn(async move {
                            let _ = serve_one(socket, &replies, &count, &record).await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Receiver { port, received, stop: Some(stop) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_one(
    mut socket: tokio::net::TcpStream,
    replies: &[Reply],
    count: &AtomicUsize,
    record: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    record.lock().expect("lock").push(Received { method, path, headers, body });

    let n = count.fetch_add(1, Ordering::SeqCst);
    let reply = replies.get(n).or(replies.last()).cloned().unwrap_or(Reply::Status(200, ""));
    let (status, text) = match reply {
        Reply::Status(status, text) => (status, text),
        Reply::Late(wait, status) => {
            tokio::time::sleep(wait).await;
            (status, "")
        }
        Reply::Never => {
            // Hold the connection open without a word until the client gives up.
            let _ = socket.read(&mut buf).await;
            return Ok(());
        }
    };
    let response = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

// --- Payloads

#[test]
fn values_are_written_compactly() {
    let cases = [
        (Some(97.5), "97.5"),
        (Some(95.0), "95"),
        (Some(0.1 + 0.2), "0.3"),
        (Some(-0.0), "0"),
        (Some(-12.25), "-12.25"),
        (Some(1e-9), "1e-9"),
        (Some(2.5e21), "2.5e21"),
        (Some(123456789.125), "123456789.125"),
        (Some(f64::NAN), "NaN"),
        (None, "-"),
    ];
    for (value, text) in cases {
        assert_eq!(format_value(value), text, "{value:?}");
    }
    assert_eq!(format_time(1_714_564_800_000_000_000), "2024-05-01T12:00:00Z");
    assert_eq!(format_time(1_714_564_800_250_000_000), "2024-05-01T12:00:00.250Z");
}

#[test]
fn slack_colours_and_nodata() {
    let h = SlackHandler { url: "http://x".into(), channel: None, username: None };
    for (level, colour) in [("CRITICAL", "danger"), ("WARNING", "warning"), ("OK", "good"), ("NODATA", "#808080")] {
        let mut e = event(&[]);
        e.level = level.into();
        e.value = None;
        let body = payload::slack(&h, &e);
        assert_eq!(body["attachments"][0]["color"], colour);
        assert_eq!(body["attachments"][0]["fields"][1], json!({"title": "Value", "value": "-", "short": true}));
        assert!(body.get("channel").is_none() && body.get("username").is_none(), "{body}");
    }
}

#[test]
fn the_mail_says_what_happened() {
    let e = event(&[]);
    assert_eq!(payload::mail_subject(&e), "[Dragonflow] CRITICAL cpu_high on vm-7");
    assert_eq!(
        payload::mail_body(&e),
        "cpu_high is CRITICAL on vm-7: 97.5\n\nRule: cpu_high\nTarget: vm-7\nLevel: WARNING -> CRITICAL\n\
         Value: 97.5\nThreshold: 95\nWindow end: 2024-05-01T12:00:00Z\nEvent id: 3f2a9c0d1b7e4a55\n"
    );
    let mut e = event(&[]);
    e.target = "vm\r\nBcc: x@y".into();
    assert!(!payload::mail_subject(&e).contains('\n'));
}

// --- HTTP delivery

#[test]
fn slack_receives_the_documented_message() {
    let receiver = Receiver::start(vec![Reply::Status(200, "ok")]);
    let h = handler("ops-slack", slack(&receiver.url("/services/T0/B0/TOKEN")), Duration::from_secs(5), 0);
    let outcomes = deliver_blocking(&[h], &event(&["ops-slack"]));
    assert_eq!(outcomes, vec![("ops-slack".to_string(), Ok(()))]);

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].method.as_str(), got[0].path.as_str()), ("POST", "/services/T0/B0/TOKEN"));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let message = "cpu_high is CRITICAL on vm-7: 97.5";
    let expected = json!({
        "text": message,
        "channel": "#ops",
        "username": "dragonflow",
        "attachments": [{
            "color": "danger",
            "title": "cpu_high is CRITICAL",
            "text": message,
            "fields": [
                {"title": "Target", "value": "vm-7", "short": true},
                {"title": "Value", "value": "97.5", "short": true},
                {"title": "Threshold", "value": "95", "short": true},
                {"title": "Previous level", "value": "WARNING", "short": true},
                {"title": "Window end", "value": "2024-05-01T12:00:00Z"},
            ],
            "footer": "Dragonflow",
            "ts": 1_714_564_800,
        }],
    });
    assert_eq!(got[0].json(), expected);
}

#[test]
fn a_webhook_receives_the_event_and_its_headers() {
    let receiver = Receiver::start(vec![Reply::Status(204, "")]);
    let kind = webhook(&receiver.url("/alarms?key=abc"), &[("Authorization", "Bearer s3cret"), ("X-Team", "ops")]);
    let h = handler("hook", kind, Duration::from_secs(5), 0);
    let mut nodata = event(&["hook"]);
    (nodata.level, nodata.value, nodata.threshold) = ("NODATA".into(), None, None);
    for e in [event(&["hook"]), nodata] {
        assert_eq!(deliver_blocking(std::slice::from_ref(&h), &e), vec![("hook".to_string(), Ok(()))]);
    }

    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].method.as_str(), got[0].path.as_str()), ("POST", "/alarms?key=abc"));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(got[0].header("authorization"), Some("Bearer s3cret"));
    assert_eq!(got[0].header("x-team"), Some("ops"));
    assert_eq!(
        got[0].json(),
        json!({
            "id": "3f2a9c0d1b7e4a55",
            "time": "2024-05-01T12:00:00.000000000Z",
            "time_ns": 1_714_564_800_000_000_000i64,
            "rule": "cpu_high",
            "target": "vm-7",
            "level": "CRITICAL",
            "previous_level": "WARNING",
            "value": 97.5,
            "threshold": 95.0,
            "message": "cpu_high is CRITICAL on vm-7: 97.5",
        })
    );
    let second = got[1].json();
    assert_eq!(
        (&second["level"], &second["value"], &second["threshold"]),
        (&json!("NODATA"), &Value::Null, &Value::Null)
    );
}

#[test]
fn a_500_is_retried_until_accepted() {
    let receiver = Receiver::start(vec![Reply::Status(500, "busy"), Reply::Status(200, "ok")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 3);
    let (dispatcher, outcomes) = dispatcher(vec![h], quick());
    dispatcher.send(event(&["hook"]));
    let outcome = next(&outcomes);
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.event, event(&["hook"]));
    assert_eq!(receiver.received().len(), 2);
    dispatcher.shutdown(Duration::from_secs(1));
}

#[test]
fn a_400_is_not_retried_and_echoed_secrets_are_redacted() {
    // The servers echo the request's secrets back, as some do.
    let slack_server = Receiver::start(vec![Reply::Status(400, "bad token /services/T0/B0/SLACKTOKEN")]);
    let hook_server = Receiver::start(vec![Reply::Status(400, "bad token Bearer s3cret")]);
    let slack = handler("ops-slack", slack(&slack_server.url("/services/T0/B0/SLACKTOKEN")), Duration::from_secs(5), 3);
    let hook = handler(
        "hook",
        webhook(&hook_server.url("/alarms"), &[("Authorization", "Bearer s3cret")]),
        Duration::from_secs(5),
        3,
    );
    let (dispatcher, outcomes) = dispatcher(vec![slack, hook], quick());
    dispatcher.send(event(&["ops-slack", "hook"]));
    let outcome = next(&outcomes);
    dispatcher.shutdown(Duration::from_secs(1));

    assert!(!outcome.delivered);
    assert_eq!((slack_server.received().len(), hook_server.received().len()), (1, 1), "not retried");
    let error = outcome.error.expect("an error");
    let parts: Vec<&str> = error.split("; ").collect();
    assert_eq!(parts.len(), 2, "{error}");
    for ((part, name), port) in parts.iter().zip(["ops-slack", "hook"]).zip([slack_server.port, hook_server.port]) {
        assert!(part.starts_with(&format!("{name}: POST http://127.0.0.1:{port}/…: HTTP 400 ")), "{part}");
        assert!(part.ends_with("(not retried)") && part.contains("bad token <redacted>"), "{part}");
    }
    for secret in ["SLACKTOKEN", "s3cret", "/services"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }
}

#[test]
fn a_refusal_after_a_retry_ends_the_delivery() {
    let receiver = Receiver::start(vec![Reply::Status(502, ""), Reply::Status(403, "")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 5);
    let outcomes = deliver_blocking_with(&[h], &event(&["hook"]), &quick());
    let origin = format!("POST http://127.0.0.1:{}/…", receiver.port);
    assert_eq!(outcomes[0].1, Err(format!("{origin}: HTTP 403 Forbidden (attempt 2 of 6, not retried)")));
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn a_408_and_a_429_are_retried() {
    let receiver = Receiver::start(vec![Reply::Status(408, ""), Reply::Status(429, ""), Reply::Status(200, "")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 2);
    let outcomes = deliver_blocking_with(&[h], &event(&["hook"]), &quick());
    assert_eq!(outcomes, vec![("hook".to_string(), Ok(()))]);
    assert_eq!(receiver.received().len(), 3);
}

#[test]
fn a_silent_receiver_times_out_on_every_attempt() {
    let receiver = Receiver::start(vec![Reply::Never]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_millis(300), 1);
    let started = Instant::now();
    let outcomes = deliver_blocking_with(&[h], &event(&["hook"]), &quick());
    let took = started.elapsed();

    let error = outcomes[0].1.clone().expect_err("a timeout");
    let origin = format!("POST http://127.0.0.1:{}/…", receiver.port);
    assert_eq!(error, format!("{origin}: no answer within 300ms (after 2 attempts)"));
    assert_eq!(receiver.received().len(), 2);
    // Two attempts of 300 ms and a 10 ms wait; generous bounds.
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_slow_answer_within_the_timeout_is_a_success() {
    let receiver = Receiver::start(vec![Reply::Late(Duration::from_millis(200), 200)]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    let outcome = deliver_blocking(&[h], &event(&["hook"]));
    assert_eq!(outcome, vec![("hook".to_string(), Ok(()))]);
}

#[test]
fn deliver_once_makes_one_attempt() {
    let receiver = Receiver::start(vec![Reply::Status(503, "")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 3);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(deliver_once(&h, &event(&["hook"])));
    let expected = format!("POST http://127.0.0.1:{}/…: HTTP 503 Service Unavailable", receiver.port);
    assert_eq!(result, Err(expected));
    assert_eq!(receiver.received().len(), 1);
}

#[test]
fn send_never_waits_for_a_handler() {
    let receiver = Receiver::start(vec![Reply::Never]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    let (dispatcher, outcomes) = dispatcher(vec![h], DeliveryPolicy::default());

    let started = Instant::now();
    for i in 0..200 {
        let mut e = event(&["hook"]);
        e.id = format!("{i:016x}");
        dispatcher.send(e);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "200 sends took {took:?} against a 5 s timeout");
    assert_eq!(dispatcher.pending(), 200);
    assert!(outcomes.try_recv().is_err(), "nothing is finished yet");

    let started = Instant::now();
    dispatcher.shutdown(Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown took {:?}", started.elapsed());
    let reported: Vec<AlarmDelivery> = outcomes.try_iter().collect();
    assert_eq!(reported.len(), 200);
    for outcome in &reported {
        assert!(!outcome.delivered);
        assert_eq!(outcome.error.as_deref(), Some("hook: not delivered: the job stopped"));
    }
    let mut ids: Vec<&str> = reported.iter().map(|o| o.event.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
}

#[test]
fn shutdown_waits_for_deliveries_in_flight() {
    let receiver = Receiver::start(vec![Reply::Late(Duration::from_millis(300), 200)]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    let (dispatcher, outcomes) = dispatcher(vec![h], DeliveryPolicy::default());
    dispatcher.send(event(&["hook"]));
    dispatcher.shutdown(Duration::from_secs(10));
    let outcome = outcomes.try_recv().expect("reported before shutdown returned");
    assert!(outcome.delivered, "{outcome:?}");
}

#[test]
fn a_full_queue_refuses_at_once() {
    let receiver = Receiver::start(vec![Reply::Never]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    let policy = DeliveryPolicy { queue: 2, ..DeliveryPolicy::default() };
    let (dispatcher, outcomes) = dispatcher(vec![h], policy);
    for i in 0..3 {
        let mut e = event(&["hook"]);
        e.id = i.to_string();
        dispatcher.send(e);
    }
    let refused = outcomes.recv_timeout(Duration::from_secs(2)).expect("the third event refused at once");
    assert_eq!((refused.event.id.as_str(), refused.delivered), ("2", false));
    assert_eq!(refused.error.as_deref(), Some(QUEUE_FULL));
    assert_eq!(dispatcher.pending(), 2);
    dispatcher.shutdown(Duration::ZERO);
    assert_eq!(outcomes.try_iter().count(), 2);
}

#[test]
fn a_dead_port_fails_without_revealing_the_url() {
    let port = free_port();
    let url = format!("http://alarms:pa55word@127.0.0.1:{port}/services/T0/B0/SLACKTOKEN?key=QUERYKEY");
    let h = handler("ops-slack", slack(&url), Duration::from_secs(5), 1);
    let outcomes = deliver_blocking_with(&[h], &event(&["ops-slack"]), &quick());
    let error = outcomes[0].1.clone().expect_err("refused");
    assert!(error.starts_with(&format!("POST http://127.0.0.1:{port}/…: ")), "{error}");
    assert!(error.contains("refused") && error.ends_with("(after 2 attempts)"), "{error}");
    for secret in ["SLACKTOKEN", "QUERYKEY", "pa55word", "alarms", "/services"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }
}

#[test]
fn https_urls_are_understood() {
    // Nothing listens, but the https:// scheme must get as far as connecting.
    let port = free_port();
    let h = handler("hook", webhook(&format!("https://127.0.0.1:{port}/h"), &[]), Duration::from_secs(5), 0);
    let error = deliver_blocking(&[h], &event(&["hook"]))[0].1.clone().expect_err("refused");
    assert!(error.starts_with(&format!("POST https://127.0.0.1:{port}/…: ")) && error.contains("refused"), "{error}");
}

#[test]
fn unknown_handlers_fail_and_events_without_handlers_are_not_reported() {
    let receiver = Receiver::start(vec![Reply::Status(200, "")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    let (dispatcher, outcomes) = dispatcher(vec![h], DeliveryPolicy::default());
    dispatcher.send(event(&[]));
    dispatcher.send(event(&["hook", "nope"]));
    dispatcher.send(event(&["nope"]));
    let first = next(&outcomes);
    let second = next(&outcomes);
    dispatcher.shutdown(Duration::from_secs(1));
    assert!(outcomes.try_recv().is_err(), "the event without handlers is not reported");

    let mut got = [first, second];
    got.sort_by_key(|o| o.event.handlers.len());
    assert_eq!(got[0].event.handlers, ["nope"]);
    assert_eq!((got[0].delivered, got[0].error.as_deref()), (false, Some("nope: unknown handler")));
    assert_eq!(got[1].event.handlers, ["hook", "nope"]);
    assert_eq!((got[1].delivered, got[1].error.as_deref()), (false, Some("nope: unknown handler")));
    assert_eq!(receiver.received().len(), 1);
}

#[test]
fn bad_urls_and_headers_fail_cleanly() {
    let cases = [
        (webhook("http://127.0.0.1:1/a b", &[]), "not a valid URL"),
        (webhook("not a url/with/TOKEN", &[]), "not a valid URL"),
        (
            webhook("http://127.0.0.1:1/h", &[("X-Key", "line\nbreak-secret")]),
            "the value of header \"x-key\" is not valid",
        ),
        (webhook("http://127.0.0.1:1/h", &[("bad name", "v")]), "\"bad name\" is not a header name"),
    ];
    for (kind, expected) in cases {
        let h = handler("hook", kind, Duration::from_secs(5), 2);
        let error = deliver_blocking(&[h], &event(&["hook"]))[0].1.clone().expect_err("refused");
        assert!(error.contains(expected) && error.ends_with("(not retried)"), "{error}");
        assert!(!error.contains("TOKEN") && !error.contains("secret"), "{error}");
    }
}

#[tokio::test]
async fn deliver_blocking_works_inside_a_runtime() {
    let receiver = Receiver::start(vec![Reply::Status(200, "")]);
    let h = handler("hook", webhook(&receiver.url("/h"), &[]), Duration::from_secs(5), 0);
    assert_eq!(deliver_blocking(&[h], &event(&["hook"])), vec![("hook".to_string(), Ok(()))]);
}

// --- SMTP against aiosmtpd

/// A Python that can import aiosmtpd: the first `python3` on PATH, else Debian's.
fn python_with_aiosmtpd() -> &'static str {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!(
        "these tests need the SMTP server aiosmtpd, importable by python3 or /usr/bin/python3: \
         install it with `apt-get install -y python3-aiosmtpd`, or run tests/run-all.sh"
    );
}

/// `python3 -m aiosmtpd` on a free loopback port, printing what it receives (its default
/// handler); killed, by its pid, when dropped.
struct SmtpServer {
    child: Child,
    port: u16,
    printed: Arc<Mutex<String>>,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let python = python_with_aiosmtpd();
        let port = free_port();
        let mut child = Command::new(python)
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let printed = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let printed = printed.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut text = printed.lock().expect("lock");
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        }
        let server = SmtpServer { child, port, printed };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}: {}", server.printed());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn printed(&self) -> String {
        self.printed.lock().expect("lock").clone()
    }

    /// What aiosmtpd printed of the first message it received.
    fn message(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let printed = self.printed();
            if let (Some(start), Some(end)) =
                (printed.find("---------- MESSAGE FOLLOWS ----------"), printed.find("------------ END MESSAGE"))
            {
                return printed[start..end].to_string();
            }
            assert!(Instant::now() < deadline, "no message printed by aiosmtpd:\n{printed}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn smtp_delivers_the_mail() {
    let server = SmtpServer::start();
    let h = handler("ops-mail", smtp(server.port, SmtpTls::None, None), Duration::from_secs(10), 0);
    let outcomes = deliver_blocking(&[h], &event(&["ops-mail"]));
    assert_eq!(outcomes, vec![("ops-mail".to_string(), Ok(()))], "aiosmtpd said:\n{}", server.printed());

    let message = server.message();
    let lines: Vec<&str> = message.lines().collect();
    for expected in [
        "Subject: [Dragonflow] CRITICAL cpu_high on vm-7",
        "From: Dragonflow <alarms@example.com>",
        "To: ops@example.com, oncall@example.com",
        "Content-Type: text/plain; charset=utf-8",
        "cpu_high is CRITICAL on vm-7: 97.5",
        "Rule: cpu_high",
        "Target: vm-7",
        "Level: WARNING -> CRITICAL",
        "Value: 97.5",
        "Threshold: 95",
        "Window end: 2024-05-01T12:00:00Z",
        "Event id: 3f2a9c0d1b7e4a55",
        "Message-ID: <3f2a9c0d1b7e4a55@dragonflow>",
    ] {
        assert!(lines.contains(&expected), "no line {expected:?} in:\n{message}");
    }
    // The body follows the headers: the message, a blank line, the details.
    let body = lines.iter().position(|l| *l == "cpu_high is CRITICAL on vm-7: 97.5").expect("body");
    assert_eq!((lines[body + 1], lines[body + 2]), ("", "Rule: cpu_high"), "{message}");
}

#[test]
fn smtp_starttls_refused_by_the_server_fails_clearly_without_the_password() {
    let server = SmtpServer::start();
    let login = Some(("alarms", "hunter2-smtp"));
    let h = handler("ops-mail", smtp(server.port, SmtpTls::Starttls, login), Duration::from_secs(10), 0);
    let outcomes = deliver_blocking(&[h], &event(&["ops-mail"]));
    let error = outcomes[0].1.clone().expect_err("no STARTTLS");
    assert!(error.starts_with(&format!("smtp 127.0.0.1:{}: ", server.port)), "{error}");
    assert!(error.contains("STARTTLS is not supported"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert!(!server.printed().contains("MESSAGE FOLLOWS"), "nothing is sent in plain text");
}

#[test]
fn smtp_to_a_dead_port_is_retried_then_fails() {
    let port = free_port();
    let h = handler("ops-mail", smtp(port, SmtpTls::None, Some(("alarms", "hunter2-smtp"))), Duration::from_secs(5), 1);
    let outcomes = deliver_blocking_with(&[h], &event(&["ops-mail"]), &quick());
    let error = outcomes[0].1.clone().expect_err("refused");
    assert!(error.starts_with(&format!("smtp 127.0.0.1:{port}: ")) && error.ends_with("(after 2 attempts)"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn a_bad_address_is_not_retried() {
    let mut kind = smtp(free_port(), SmtpTls::None, None);
    if let HandlerKind::Smtp(m) = &mut kind {
        m.to = vec!["not an address".into()];
    }
    let h = handler("ops-mail", kind, Duration::from_secs(5), 3);
    let error = deliver_blocking(&[h], &event(&["ops-mail"]))[0].1.clone().expect_err("bad address");
    assert!(
        error.contains("`to` \"not an address\" is not a mail address") && error.ends_with("(not retried)"),
        "{error}"
    );
}

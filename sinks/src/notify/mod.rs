//! Alarm handlers: delivery of alarm events to Slack, SMTP and webhooks.
//!
//! A job's `[[handler]]`s ([`HandlerSpec`]) are where the events of its alarm rules go. Delivery
//! never blocks a worker: [`Dispatcher::send`] queues the event (at most
//! [`DeliveryPolicy::queue`] pending; beyond that the event fails at once with
//! `"delivery queue full"`) and a thread of its own delivers it, at most
//! [`DeliveryPolicy::concurrency`] attempts at a time, each bounded by the handler's `timeout`.
//! A handler gets `1 + retries` attempts, with exponential backoff between them (500 ms, doubled
//! each time, at most 30 s). A 4xx answer other than 408 and 429, an address that cannot be
//! parsed and a permanent (5xx) SMTP reply are not retried. [`deliver_blocking`] does the same
//! for one event from a plain thread (`dragonflow alarms test`), [`deliver_once`] makes a single
//! attempt.
//!
//! The outcome of an event is an [`AlarmDelivery`](operators::model::AlarmDelivery): `delivered` when every handler accepted it,
//! otherwise `error` lists each failure as `<handler name>: <reason>`, joined with `"; "`
//! (`ops-slack: POST https://hooks.slack.com/…: HTTP 404 Not Found: no_service (not retried)`).
//! A name in `event.handlers` that is no handler fails as `unknown handler`; a delivery still
//! running when the dispatcher stops fails as `not delivered: the job stopped`.
//!
//! Errors carry no secret: a URL appears as its [`Origin`] (scheme and host), and a URL's path,
//! a header value or a password echoed back by a server or a library is replaced by `<redacted>`.
//!
//! # What is sent
//!
//! Values and thresholds are written compactly (`97.5`, `0.3`, `1e-9`; `-` when absent), times as
//! RFC 3339 UTC. The examples are for a rule `cpu_high` that became CRITICAL on `vm-7`.
//!
//! **`kind = "slack"`**: a POST of JSON to the incoming webhook `url`; a 2xx answer is success.
//! `channel` and `username` are present only when the handler sets them. The attachment's colour
//! is `danger` (CRITICAL), `warning` (WARNING), `good` (OK) or `#808080` (NODATA); `ts` is the
//! window end in seconds.
//!
//! ```json
//! {
//!   "text": "cpu_high is CRITICAL on vm-7: 97.5",
//!   "channel": "#ops",
//!   "username": "dragonflow",
//!   "attachments": [{
//!     "color": "danger",
//!     "title": "cpu_high is CRITICAL",
//!     "text": "cpu_high is CRITICAL on vm-7: 97.5",
//!     "fields": [
//!       {"title": "Target", "value": "vm-7", "short": true},
//!       {"title": "Value", "value": "97.5", "short": true},
//!       {"title": "Threshold", "value": "95", "short": true},
//!       {"title": "Previous level", "value": "WARNING", "short": true},
//!       {"title": "Window end", "value": "2024-05-01T12:00:00Z"}
//!     ],
//!     "footer": "Dragonflow",
//!     "ts": 1714564800
//!   }]
//! }
//! ```
//!
//! **`kind = "webhook"`**: a POST to `url` with `Content-Type: application/json`, the handler's
//! `headers` (which replace a default of the same name) and the event; a 2xx answer is success.
//! `time` is the window end with nanoseconds, `time_ns` the same in ns since the epoch; `value`
//! and `threshold` are `null` when absent (NODATA).
//!
//! ```json
//! {
//!   "id": "3f2a9c0d1b7e4a55",
//!   "time": "2024-05-01T12:00:00.000000000Z",
//!   "time_ns": 1714564800000000000,
//!   "rule": "cpu_high",
//!   "target": "vm-7",
//!   "level": "CRITICAL",
//!   "previous_level": "WARNING",
//!   "value": 97.5,
//!   "threshold": 95.0,
//!   "message": "cpu_high is CRITICAL on vm-7: 97.5"
//! }
//! ```
//!
//! **`kind = "smtp"`**: one plain-text mail (UTF-8) from `from` to every address of `to`, through
//! `host:port`: in plain text (`tls = "none"`), upgraded with STARTTLS, which the server must
//! offer (`"starttls"`), or over TLS from the start (`"tls"`); the server's certificate is checked
//! against the Mozilla roots. With a `username`, the client logs in with it and `password`. The
//! Message-ID is `<event id@dragonflow>`, so a replayed event is the same message.
//!
//! ```text
//! Subject: [Dragonflow] CRITICAL cpu_high on vm-7
//!
//! cpu_high is CRITICAL on vm-7: 97.5
//!
//! Rule: cpu_high
//! Target: vm-7
//! Level: WARNING -> CRITICAL
//! Value: 97.5
//! Threshold: 95
//! Window end: 2024-05-01T12:00:00Z
//! Event id: 3f2a9c0d1b7e4a55
//! ```

mod config;
mod courier;
mod dispatcher;
mod payload;

use std::sync::Arc;
use std::time::Duration;

use operators::model::AlarmEvent;

pub use config::{
    url_secrets, user_info, HandlerKind, HandlerSpec, Origin, SlackHandler, SmtpHandler, SmtpTls, WebhookHandler,
};
pub use dispatcher::{Dispatcher, QUEUE_FULL, STOPPED, UNKNOWN_HANDLER};
pub use payload::{format_time, format_value};

use courier::Courier;

/// How deliveries are retried, and how much a [`Dispatcher`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// The wait before the second attempt, doubled before each further one. Default 500 ms.
    pub first_backoff: Duration,
    /// The longest wait between attempts. Default 30 s.
    pub max_backoff: Duration,
    /// Events queued or in flight beyond which [`Dispatcher::send`] refuses more. Default 10 000.
    pub queue: usize,
    /// Attempts in flight at once, across events and handlers. Default 16.
    pub concurrency: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            queue: 10_000,
            concurrency: 16,
        }
    }
}

impl DeliveryPolicy {
    /// The same policy with another backoff: `first` before the second attempt, doubled each
    /// time up to `max`.
    pub fn with_backoff(self, first: Duration, max: Duration) -> Self {
        DeliveryPolicy { first_backoff: first, max_backoff: max, ..self }
    }
}

/// Sends one event through one handler, once (no retry), within `handler.timeout`. Must run on
/// a tokio runtime with I/O and time enabled.
pub async fn deliver_once(handler: &HandlerSpec, event: &AlarmEvent) -> Result<(), String> {
    let courier = Courier::new()?;
    courier.attempt(handler, event).await.map_err(|failure| failure.message)
}

/// Blocking helper for the CLI (`dragonflow alarms test`): delivers `event` through every handler
/// of `handlers` (whatever `event.handlers` says), concurrently, each with its full retry policy;
/// returns each handler's name and outcome, in order. Builds its own current-thread runtime.
pub fn deliver_blocking(handlers: &[HandlerSpec], event: &AlarmEvent) -> Vec<(String, Result<(), String>)> {
    deliver_blocking_with(handlers, event, &DeliveryPolicy::default())
}

/// [`deliver_blocking`] with another backoff (the policy's queue and concurrency do not apply).
pub fn deliver_blocking_with(
    handlers: &[HandlerSpec],
    event: &AlarmEvent,
    policy: &DeliveryPolicy,
) -> Vec<(String, Result<(), String>)> {
    let run = || {
        let outcomes = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(deliver_all(handlers, event, policy)),
            Err(e) => Err(format!("cannot start a runtime: {e}")),
        };
        match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => handlers.iter().map(|h| (h.name.clone(), Err(e.clone()))).collect(),
        }
    };
    // A runtime cannot be blocked on from inside another: called from async code, the delivery
    // runs on a thread of its own.
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| match scope.spawn(run).join() {
            Ok(outcomes) => outcomes,
            Err(_) => handlers.iter().map(|h| (h.name.clone(), Err("delivery failed".to_string()))).collect(),
        })
    } else {
        run()
    }
}

async fn deliver_all(
    handlers: &[HandlerSpec],
    event: &AlarmEvent,
    policy: &DeliveryPolicy,
) -> Result<Vec<(String, Result<(), String>)>, String> {
    let courier = Arc::new(Courier::new()?);
    let tasks: Vec<_> = handlers
        .iter()
        .map(|handler| {
            let (courier, handler, event, policy) = (courier.clone(), handler.clone(), event.clone(), *policy);
            tokio::spawn(async move { courier.deliver(&handler, &event, &policy, None).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (handler, task) in handlers.iter().zip(tasks) {
        let outcome = task.await.unwrap_or_else(|_| Err("delivery failed".to_string()));
        outcomes.push((handler.name.clone(), outcome));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests;

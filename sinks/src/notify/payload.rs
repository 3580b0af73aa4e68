//! What each kind of handler sends: the Slack message, the webhook body and the mail, built from
//! an [`AlarmEvent`] alone (pure functions, tested without a network).

use chrono::{DateTime, SecondsFormat};
use operators::model::AlarmEvent;
use serde_json::{json, Value};

use super::config::SlackHandler;

pub use operators::alarm::eval::{format_time, format_value};

/// A time in ns as RFC 3339 UTC with all nine fractional digits.
fn format_time_ns(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The colour of Slack's attachment bar.
fn slack_color(level: &str) -> &'static str {
    match level {
        "CRITICAL" => "danger",
        "WARNING" => "warning",
        "OK" => "good",
        _ => "#808080",
    }
}

/// The message for a Slack incoming webhook.
pub fn slack(handler: &SlackHandler, event: &AlarmEvent) -> Value {
    let short = |title: &str, value: String| json!({"title": title, "value": value, "short": true});
    let mut body = json!({
        "text": event.message,
        "attachments": [{
            "color": slack_color(&event.level),
            "title": format!("{} is {}", event.rule, event.level),
            "text": event.message,
            "fields": [
                short("Target", event.target.clone()),
                short("Value", format_value(event.value)),
                short("Threshold", format_value(event.threshold)),
                short("Previous level", event.previous_level.clone()),
                {"title": "Window end", "value": format_time(event.time)},
            ],
            "footer": "Dragonflow",
            "ts": event.time.div_euclid(1_000_000_000),
        }],
    });
    if let Some(channel) = &handler.channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = &handler.username {
        body["username"] = json!(username);
    }
    body
}

/// The body POSTed by a generic webhook.
pub fn webhook(event: &AlarmEvent) -> Value {
    json!({
        "id": event.id,
        "time": format_time_ns(event.time),
        "time_ns": event.time,
        "rule": event.rule,
        "target": event.target,
        "level": event.level,
        "previous_level": event.previous_level,
        "value": event.value.filter(|v| v.is_finite()),
        "threshold": event.threshold.filter(|v| v.is_finite()),
        "message": event.message,
    })
}

/// The subject of an alarm mail.
pub fn mail_subject(event: &AlarmEvent) -> String {
    // A header is one line: a line break in a name would end it.
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    format!("[Dragonflow] {} {} on {}", one_line(&event.level), one_line(&event.rule), one_line(&event.target))
}

/// The plain-text body of an alarm mail.
pub fn mail_body(event: &AlarmEvent) -> String {
    format!(
        "{}\n\nRule: {}\nTarget: {}\nLevel: {} -> {}\nValue: {}\nThreshold: {}\nWindow end: {}\nEvent id: {}\n",
        event.message,
        event.rule,
        event.target,
        event.previous_level,
        event.level,
        format_value(event.value),
        format_value(event.threshold),
        format_time(event.time),
        event.id,
    )
}

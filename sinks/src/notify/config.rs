//! `[[handler]]` of a job spec: where alarm events are delivered. Read by `pipelines::spec` (which
//! validates the handlers against each other and the rules) and used here to deliver.
//!
//! Handlers carry secrets (a Slack URL's path is its token, an SMTP password, webhook header
//! values): Debug output hides them, serialisation leaves out the password and header values, and
//! [`Origin`] is how a URL appears in any message.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec_util::{at, humantime_serde, not_for};

/// Shown in place of a secret.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL without what may carry a token (user info, path, query): `https://hooks.slack.com/…`.
/// Debug output is quoted, Display is not.
pub struct Origin<'a>(pub &'a str);

/// What of a URL may carry a credential: the URL itself, what follows its host (path, query,
/// fragment: a webhook's token), and its user info with its password.
pub fn url_secrets(url: &str) -> Vec<&str> {
    let mut parts = vec![url];
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end < rest.len() {
        parts.push(&rest[end..]);
    }
    parts.extend(user_info(url));
    parts
}

/// The user info of a URL (`user:pass`) and its password, if it has any.
pub fn user_info(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rsplit_once('@') {
        Some((info, _)) => std::iter::once(info).chain(info.split_once(':').map(|(_, pass)| pass)).collect(),
        None => Vec::new(),
    }
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", self.0));
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let more = if end < rest.len() || host.len() < authority.len() { "/…" } else { "" };
        write!(f, "{scheme}://{host}{more}")
    }
}

impl std::fmt::Debug for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// One `[[handler]]`: where alarm events are delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawHandler")]
pub struct HandlerSpec {
    /// Unique among the handlers; rules name it in `handlers`.
    pub name: String,
    #[serde(flatten)]
    pub kind: HandlerKind,
    /// One delivery attempt; default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts after the first; default 3.
    pub retries: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HandlerKind {
    Slack(SlackHandler),
    Smtp(SmtpHandler),
    Webhook(WebhookHandler),
}

/// A Slack incoming webhook. Debug output shows only the URL's origin (the path is the token).
#[derive(Clone, PartialEq, Serialize)]
pub struct SlackHandler {
    pub url: String,
    pub channel: Option<String>,
    pub username: Option<String>,
}

impl std::fmt::Debug for SlackHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackHandler")
            .field("url", &Origin(&self.url))
            .field("channel", &self.channel)
            .field("username", &self.username)
            .finish()
    }
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text.
    #[default]
    None,
    /// Plain text upgraded with STARTTLS.
    Starttls,
    /// TLS from the start (SMTPS).
    Tls,
}

impl SmtpTls {
    /// The port used when `port` is absent: 25, 587 (STARTTLS) or 465 (TLS).
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// Mail through an SMTP server. The password is never serialised and Debug output hides it.
#[derive(Clone, PartialEq, Serialize)]
pub struct SmtpHandler {
    pub host: String,
    /// Default [`SmtpTls::default_port`].
    pub port: u16,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    /// Never serialised back out.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub tls: SmtpTls,
}

impl std::fmt::Debug for SmtpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpHandler")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The event as JSON, POSTed to `url`. Header values (often credentials) are never serialised,
/// and Debug output shows only the header names and the URL's origin.
#[derive(Clone, PartialEq, Serialize)]
pub struct WebhookHandler {
    pub url: String,
    /// Never serialised back out.
    #[serde(skip_serializing)]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Headers<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map().entries(self.0.keys().map(|k| (k, Redacted))).finish()
            }
        }
        f.debug_struct("WebhookHandler")
            .field("url", &Origin(&self.url))
            .field("headers", &Headers(&self.headers))
            .finish()
    }
}

fn default_handler_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HandlerType {
    Slack,
    Smtp,
    Webhook,
}

/// Every handler field in one flat struct, so that a field of another kind is named in the error
/// rather than reported as unknown.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandler {
    name: String,
    kind: HandlerType,
    url: Option<String>,
    channel: Option<String>,
    username: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    from: Option<String>,
    to: Option<Vec<String>>,
    password: Option<String>,
    tls: Option<SmtpTls>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    retries: Option<u32>,
}

impl TryFrom<RawHandler> for HandlerSpec {
    type Error = String;
    fn try_from(r: RawHandler) -> Result<Self, String> {
        // Every kind-specific field once; each kind refuses those it does not take.
        let given = [
            ("url", r.url.is_some()),
            ("channel", r.channel.is_some()),
            ("username", r.username.is_some()),
            ("host", r.host.is_some()),
            ("port", r.port.is_some()),
            ("from", r.from.is_some()),
            ("to", r.to.is_some()),
            ("password", r.password.is_some()),
            ("tls", r.tls.is_some()),
            ("headers", r.headers.is_some()),
        ];
        let takes = |kind: &str, fields: &[&str]| {
            let foreign: Vec<_> = given.iter().filter(|(f, _)| !fields.contains(f)).copied().collect();
            not_for(kind, &foreign)
        };
        let kind = match r.kind {
            HandlerType::Slack => {
                takes("slack", &["url", "channel", "username"])?;
                let url = r.url.ok_or_else(|| at("url", "missing: expected \"https://hooks.slack.com/services/…\""))?;
                HandlerKind::Slack(SlackHandler { url, channel: r.channel, username: r.username })
            }
            HandlerType::Smtp => {
                takes("smtp", &["host", "port", "from", "to", "username", "password", "tls"])?;
                let tls = r.tls.unwrap_or_default();
                HandlerKind::Smtp(SmtpHandler {
                    host: r.host.ok_or_else(|| at("host", "missing: expected the SMTP server's host name"))?,
                    port: r.port.unwrap_or(tls.default_port()),
                    from: r.from.ok_or_else(|| at("from", "missing: expected the sender's address"))?,
                    to: r.to.ok_or_else(|| at("to", "missing: expected a list of recipients' addresses"))?,
                    username: r.username,
                    password: r.password,
                    tls,
                })
            }
            HandlerType::Webhook => {
                takes("webhook", &["url", "headers"])?;
                let url = r.url.ok_or_else(|| at("url", "missing: expected \"http(s)://host/path\""))?;
                HandlerKind::Webhook(WebhookHandler { url, headers: r.headers.unwrap_or_default() })
            }
        };
        Ok(HandlerSpec {
            name: r.name,
            kind,
            timeout: r.timeout.unwrap_or_else(default_handler_timeout),
            retries: r.retries.unwrap_or(3),
        })
    }
}

//! One delivery of one event through one handler, and the retry loop around it.
//!
//! Every message that leaves this module goes through [`Courier::attempt`], which scrubs the
//! handler's secrets from it: URLs appear as their [`Origin`], and a URL's path, a header value or
//! a password that a server or a library echoed back is replaced by `<redacted>`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use operators::model::AlarmEvent;
use tokio::sync::Semaphore;

use super::config::{url_secrets, HandlerKind, HandlerSpec, Origin, SmtpHandler, SmtpTls};
use super::payload;
use super::DeliveryPolicy;
use crate::error::chain;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How much of a refusal's body is quoted in the error.
const QUOTED_BODY: usize = 200;

/// Why an attempt failed, and whether another attempt may do better.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub retry: bool,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retry: true }
    }
    fn permanent(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), retry: false }
    }
}

/// Delivers events; holds the one HTTP(S) client its deliveries share.
pub(crate) struct Courier {
    http: HttpsClient,
}

impl Courier {
    pub fn new() -> Result<Courier, String> {
        // The provider is named rather than taken from the process default: whether another crate
        // in the binary also brings one must not decide (or panic) here.
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Courier { http: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// Up to `1 + handler.retries` attempts with exponential backoff between them; a permanent
    /// failure (a 4xx other than 408 and 429, a malformed address, a 5xx SMTP reply) ends early.
    /// `permits` caps the attempts in flight across deliveries; a delivery waiting for its next
    /// attempt holds none.
    pub async fn deliver(
        &self,
        handler: &HandlerSpec,
        event: &AlarmEvent,
        policy: &DeliveryPolicy,
        permits: Option<&Semaphore>,
    ) -> Result<(), String> {
        let attempts = handler.retries.saturating_add(1);
        let mut backoff = policy.first_backoff;
        let mut attempt = 1;
        loop {
            let result = {
                let _permit = match permits {
                    Some(p) => p.acquire().await.ok(),
                    None => None,
                };
                self.attempt(handler, event).await
            };
            let failure = match result {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if !failure.retry {
                return Err(match (attempt, attempts) {
                    (_, 1) => failure.message,
                    (1, _) => format!("{} (not retried)", failure.message),
                    _ => format!("{} (attempt {attempt} of {attempts}, not retried)", failure.message),
                });
            }
            if attempt >= attempts {
                return Err(if attempts > 1 {
                    format!("{} (after {attempts} attempts)", failure.message)
                } else {
                    failure.message
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(policy.max_backoff);
            attempt += 1;
        }
    }

    /// One attempt, bounded by `handler.timeout`, its error free of the handler's secrets.
    pub async fn attempt(&self, handler: &HandlerSpec, event: &AlarmEvent) -> Result<(), Failure> {
        let send = async {
            match &handler.kind {
                HandlerKind::Slack(s) => self.post_json(&s.url, &BTreeMap::new(), &payload::slack(s, event)).await,
                HandlerKind::Webhook(w) => self.post_json(&w.url, &w.headers, &payload::webhook(event)).await,
                HandlerKind::Smtp(m) => mail(m, handler.timeout, event).await,
            }
        };
        let result = match tokio::time::timeout(handler.timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Failure::transient(format!(
                "{}: no answer within {}",
                destination(handler),
                humantime::format_duration(handler.timeout)
            ))),
        };
        result.map_err(|f| Failure { message: scrub(&f.message, handler), retry: f.retry })
    }

    async fn post_json(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
    ) -> Result<(), Failure> {
        let to = format!("POST {}", Origin(url));
        let uri: hyper::Uri = url.parse().map_err(|_| Failure::permanent(format!("{to}: not a valid URL")))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("dragonflow/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| Failure::permanent(format!("{to}: not a valid request")))?;
        for (name, value) in headers {
            // The value is a secret: errors name the header only.
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| Failure::permanent(format!("{to}: {name:?} is not a header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| Failure::permanent(format!("{to}: the value of header {name:?} is not valid")))?;
            request.headers_mut().insert(name, value);
        }
        let response =
            self.http.request(request).await.map_err(|e| Failure::transient(format!("{to}: {}", chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            // Read to the end so that the connection may be reused.
            let _ = Limited::new(response.into_body(), 64 * 1024).collect().await;
            return Ok(());
        }
        let said = match Limited::new(response.into_body(), 4 * 1024).collect().await {
            Ok(body) => quote(&body.to_bytes()),
            Err(_) => String::new(),
        };
        let retry = !status.is_client_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        let message =
            if said.is_empty() { format!("{to}: HTTP {status}") } else { format!("{to}: HTTP {status}: {said}") };
        Err(Failure { message, retry })
    }
}

/// Where a handler delivers, safe to show: `POST https://hooks.slack.com/…`, `smtp host:port`.
fn destination(handler: &HandlerSpec) -> String {
    match &handler.kind {
        HandlerKind::Slack(s) => format!("POST {}", Origin(&s.url)),
        HandlerKind::Webhook(w) => format!("POST {}", Origin(&w.url)),
        HandlerKind::Smtp(m) => format!("smtp {}:{}", m.host, m.port),
    }
}

async fn mail(handler: &SmtpHandler, timeout: Duration, event: &AlarmEvent) -> Result<(), Failure> {
    let to = format!("smtp {}:{}", handler.host, handler.port);
    let address = |field: &str, text: &str| {
        text.parse::<Mailbox>()
            .map_err(|e| Failure::permanent(format!("{to}: `{field}` {text:?} is not a mail address ({e})")))
    };
    // The event's id makes a replayed event the same message, which mail clients show once.
    let id: String = event.id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let mut message = Message::builder()
        .message_id((!id.is_empty()).then(|| format!("<{id}@dragonflow>")))
        .from(address("from", &handler.from)?)
        .subject(payload::mail_subject(event))
        .header(ContentType::TEXT_PLAIN);
    for recipient in &handler.to {
        message = message.to(address("to", recipient)?);
    }
    let message = message
        .body(payload::mail_body(event))
        .map_err(|e| Failure::permanent(format!("{to}: cannot build the mail ({e})")))?;

    let transport = match handler.tls {
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(handler.host.as_str())),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&handler.host),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&handler.host),
    };
    let mut transport = transport
        .map_err(|e| Failure::permanent(format!("{to}: cannot set up TLS: {}", chain(&e))))?
        .port(handler.port)
        .timeout(Some(timeout));
    if let Some(username) = &handler.username {
        transport =
            transport.credentials(Credentials::new(username.clone(), handler.password.clone().unwrap_or_default()));
    }
    match transport.build::<Tokio1Executor>().send(message).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure { message: format!("{to}: {}", chain(&e)), retry: !e.is_permanent() }),
    }
}

/// The start of a refusal's body, on one line.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(QUOTED_BODY) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// `message` with every secret of `handler` replaced by `<redacted>`. Secrets shorter than four
/// characters are left: they reveal nothing and would garble the message.
fn scrub(message: &str, handler: &HandlerSpec) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    match &handler.kind {
        HandlerKind::Slack(s) => secrets.extend(url_secrets(&s.url)),
        HandlerKind::Webhook(w) => {
            secrets.extend(url_secrets(&w.url));
            secrets.extend(w.headers.values().map(String::as_str));
        }
        HandlerKind::Smtp(m) => secrets.extend(m.password.as_deref()),
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.retain(|s| s.chars().count() >= 4);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = message.to_string();
    for secret in secrets {
        text = text.replace(secret, "<redacted>");
    }
    text
}

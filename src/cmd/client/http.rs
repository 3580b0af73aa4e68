//! The one HTTP exchange every client command makes: a request to the job server with the bearer
//! token, its status and body back. Plain http/1 over hyper on a small tokio runtime; the token goes
//! only into the `Authorization` header (marked sensitive) and never into a message.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::render::Json;

pub const JSON: &str = "application/json";

/// A connection to one job server.
pub struct ServerClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ServerClient {
    /// `base` as made by [`super::url::base_url`]; `timeout` bounds each whole exchange.
    pub fn new(base: String, token: Option<String>, timeout: Duration) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
        let http = {
            let _in_runtime = runtime.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        Ok(ServerClient { base, token, timeout, runtime, http })
    }

    /// `method path` with an optional body `(bytes, content type)`, asking for `accept`; the answer's
    /// status and body, whatever the status. Errors only when the server could not be reached or did
    /// not answer in time.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
        accept: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(ACCEPT, accept)
            .header(USER_AGENT, concat!("dragonflow/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            // The error names neither the token nor its text.
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the token is not a valid header value (expected printable ASCII)"))?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).with_context(|| format!("building the request {method} {uri}"))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        match self.runtime.block_on(async { tokio::time::timeout(self.timeout, exchange).await }) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(anyhow!(unreachable(&self.base, &sinks::error::chain(e.as_ref())))),
            Err(_) => Err(anyhow!(
                "no answer from the Dragonflow server at {} to {method} {path} within {}",
                self.base,
                humantime::format_duration(self.timeout)
            )),
        }
    }

    /// Like [`request`](Self::request), but a status other than 2xx is an error carrying the server's
    /// `{"error": …}` text.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
        accept: &str,
    ) -> anyhow::Result<Bytes> {
        let (status, bytes) = self.request(method.clone(), path, body, accept)?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(anyhow!(refusal(&method, path, status, &bytes)))
        }
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        self.call(Method::GET, path, None, JSON)
    }
}

/// Parses an answer that should be JSON.
pub fn json(bytes: &[u8]) -> anyhow::Result<Json> {
    Json::parse(bytes).map_err(|e| anyhow!("the server's answer is not JSON ({e}): {}", excerpt(bytes)))
}

fn unreachable(base: &str, cause: &str) -> String {
    format!(
        "could not reach the Dragonflow server at {base} ({cause}); is it running? Start one with \
         `dragonflow serve`, or point --server (DRAGONFLOW_SERVER) at it"
    )
}

/// What to say about a non-2xx answer: the server's `{"error": …}`, else its text.
pub fn refusal(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> String {
    let said = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match v.get("error") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => excerpt(body),
        },
        Err(_) => excerpt(body),
    };
    let mut text = format!("{method} {path}: the server answered {status}");
    if !said.is_empty() {
        text.push_str(": ");
        text.push_str(&said);
    }
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(
            " (give the server's token with --token, DRAGONFLOW_TOKEN or --token-file; \
             `dragonflow serve` writes it to DATA_DIR/token)",
        );
    }
    text
}

/// At most 500 characters of a body, trimmed, for a message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_shows_the_servers_error() {
        let t = refusal(&Method::GET, "/jobs/x", StatusCode::NOT_FOUND, br#"{"error": "no job \"x\""}"#);
        assert_eq!(t, r#"GET /jobs/x: the server answered 404 Not Found: no job "x""#);
        let t = refusal(&Method::POST, "/jobs", StatusCode::BAD_GATEWAY, b"  upstream down\n");
        assert_eq!(t, "POST /jobs: the server answered 502 Bad Gateway: upstream down");
        let t = refusal(&Method::DELETE, "/jobs/x", StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(t, "DELETE /jobs/x: the server answered 500 Internal Server Error");
        let t = refusal(&Method::GET, "/jobs", StatusCode::UNAUTHORIZED, br#"{"error": "missing bearer token"}"#);
        assert!(t.starts_with("GET /jobs: the server answered 401 Unauthorized: missing bearer token (give"), "{t}");
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(2000);
        assert_eq!(excerpt(body.as_bytes()).chars().count(), 501);
    }

    #[test]
    fn unreachable_server_is_named_with_a_hint() {
        let client =
            ServerClient::new("http://127.0.0.1:1".into(), Some("s3cret".into()), Duration::from_secs(5)).unwrap();
        let e = client.request(Method::GET, "/jobs", None, JSON).unwrap_err().to_string();
        assert!(e.contains("could not reach the Dragonflow server at http://127.0.0.1:1"), "{e}");
        assert!(e.contains("dragonflow serve"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_token_that_is_no_header_value_is_not_echoed() {
        let client =
            ServerClient::new("http://127.0.0.1:1".into(), Some("bad\ntoken".into()), Duration::from_secs(5)).unwrap();
        let e = client.request(Method::GET, "/jobs", None, JSON).unwrap_err().to_string();
        assert!(e.contains("not a valid header value") && !e.contains("token\n") && !e.contains("bad"), "{e}");
    }
}

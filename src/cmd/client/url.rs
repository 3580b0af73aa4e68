//! Addresses on the job server: the base URL as given by `--server`, path segments and query strings,
//! percent-encoded (an agent key `ns/mcis/vm/csp` is one segment, so its `/` must be encoded).

use anyhow::bail;

/// The server's base URL, `http://host:port` (a path prefix is kept), without a trailing `/`.
///
/// `127.0.0.1:9090` is taken as `http://127.0.0.1:9090`. Only plain http: the server listens on
/// loopback, and a TLS client would be one more thing to trust for nothing.
pub fn base_url(server: &str) -> anyhow::Result<String> {
    let server = server.trim();
    if server.is_empty() {
        bail!("--server is empty: expected a URL like http://127.0.0.1:9090");
    }
    let rest = match server.split_once("://") {
        None => server,
        Some(("http", rest)) => rest,
        Some(("https", _)) => bail!("--server {server}: only http:// is supported (run the server on loopback)"),
        Some((scheme, _)) => bail!("--server {server}: unknown scheme {scheme:?}, expected http://host:port"),
    };
    let rest = rest.trim_end_matches('/');
    if rest.split('/').next().unwrap_or("").is_empty() {
        bail!("--server {server}: no host, expected a URL like http://127.0.0.1:9090");
    }
    if rest.contains(['?', '#', '@']) {
        bail!("--server {server}: expected a URL like http://127.0.0.1:9090, without credentials, query or fragment");
    }
    let url = format!("http://{rest}");
    Ok(url)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so the text is one path segment
/// or one query value whatever it holds (`/`, `?`, `&`, `%`, spaces, non-ASCII).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `prefix/` followed by `segment` encoded as one path segment: `/agents/ns1%2Fmcis1%2Fvm1%2Faws`.
pub fn path(prefix: &str, segment: &str) -> String {
    format!("{}/{}", prefix.trim_end_matches('/'), encode(segment))
}

/// A query string built from the parameters that were given; absent ones are left out.
#[derive(Default)]
pub struct Query {
    pairs: Vec<String>,
}

impl Query {
    pub fn new() -> Self {
        Query::default()
    }

    /// Adds `key=value` when `value` is there.
    pub fn opt(mut self, key: &str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.pairs.push(format!("{}={}", encode(key), encode(&v.to_string())));
        }
        self
    }

    /// `path?k=v&…`, or `path` alone when no parameter was given.
    pub fn on(&self, path: &str) -> String {
        if self.pairs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.pairs.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalised() {
        assert_eq!(base_url("http://127.0.0.1:9090").unwrap(), "http://127.0.0.1:9090");
        assert_eq!(base_url("http://127.0.0.1:9090/").unwrap(), "http://127.0.0.1:9090");
        assert_eq!(base_url("127.0.0.1:9090").unwrap(), "http://127.0.0.1:9090");
        assert_eq!(base_url(" http://localhost:9090/df/ ").unwrap(), "http://localhost:9090/df");
    }

    #[test]
    fn base_url_refuses_what_it_cannot_use() {
        for bad in ["", "https://x:1", "ftp://x", "http://", "http:///jobs", "http://x:1/?a=b"] {
            assert!(base_url(bad).is_err(), "{bad:?} was accepted");
        }
        let e = base_url("https://h:9090").unwrap_err().to_string();
        assert!(e.contains("only http://"), "{e}");
    }

    #[test]
    fn encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode("ns1/mcis-1/vm 1/aws"), "ns1%2Fmcis-1%2Fvm%201%2Faws");
        assert_eq!(encode("a&b=c?d#e%f+g"), "a%26b%3Dc%3Fd%23e%25f%2Bg");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn agent_key_is_one_segment() {
        assert_eq!(path("/agents", "ns1/mcis1/vm-7/aws"), "/agents/ns1%2Fmcis1%2Fvm-7%2Faws");
        assert_eq!(path("/alarms/rules/", "cpu high"), "/alarms/rules/cpu%20high");
    }

    #[test]
    fn query_leaves_out_absent_parameters() {
        let none: Option<&str> = None;
        assert_eq!(Query::new().opt("ns", none).on("/agents"), "/agents");
        let q = Query::new().opt("ns", Some("ns 1")).opt("mcis", none).opt("csp", Some("aws")).opt("limit", Some(5));
        assert_eq!(q.on("/agents"), "/agents?ns=ns%201&csp=aws&limit=5");
        let q = Query::new().opt("since", Some("2024-01-01T00:00:00+01:00"));
        assert_eq!(q.on("/alarms/events"), "/alarms/events?since=2024-01-01T00%3A00%3A00%2B01%3A00");
    }
}

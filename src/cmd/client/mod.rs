//! The CLI as the job server's client (`dragonflow serve`, docs/server.md): the flags every client
//! command shares, and the commands on jobs and agents. Each command makes one or a few requests and
//! shows the answer as a table for people or, with `--json`, as the server sent it, for scripts.

pub mod agents;
pub mod http;
pub mod items;
pub mod jobs;
pub mod render;
pub mod url;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use http::ServerClient;
use render::Json;

/// How long a request may take unless a command says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is, how to prove who we are, and how to show its answers. The token is never
/// printed (not even in `--help`: its environment value is hidden).
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The job server's URL (`dragonflow serve`); plain http.
    #[arg(long, value_name = "URL", env = "DRAGONFLOW_SERVER", default_value = "http://127.0.0.1:9090", global = true)]
    pub server: String,
    /// The server's bearer token. Prefer DRAGONFLOW_TOKEN or --token-file: a flag shows in `ps`.
    #[arg(long, value_name = "TOKEN", env = "DRAGONFLOW_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the bearer token from FILE (the server writes it to DATA_DIR/token); wins over --token.
    #[arg(long, value_name = "FILE", env = "DRAGONFLOW_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// How long to wait for the answer, e.g. "30s" or "5m" [default: 30s; `stop`: 10m].
    #[arg(long, value_name = "DURATION", value_parser = super::duration, global = true)]
    pub timeout: Option<Duration>,
    /// Print the server's JSON answer as it is (pretty-printed), for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ServerArgs {
    /// A client for the server, with `default_timeout` unless `--timeout` was given.
    pub fn connect(&self, default_timeout: Duration) -> anyhow::Result<ServerClient> {
        let token = token(self.token.as_deref(), self.token_file.as_deref())?;
        ServerClient::new(url::base_url(&self.server)?, token, self.timeout.unwrap_or(default_timeout))
    }
}

/// The token from `--token-file` (trimmed), else `--token`; an empty one is a mistake, not "no token".
pub fn token(token: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?,
        None => match token {
            Some(t) => t.to_string(),
            None => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        match file {
            Some(f) => bail!("the token file {} is empty", f.display()),
            None => bail!("the token (--token or DRAGONFLOW_TOKEN) is empty"),
        }
    }
    Ok(Some(token.to_string()))
}

/// Prints an answer for scripts: pretty JSON when it is JSON, else the text as sent.
pub fn print_json(bytes: &[u8]) {
    match render::pretty(bytes) {
        Some(text) => println!("{text}"),
        None => print_text(bytes),
    }
}

/// Prints text as sent, ending with a newline.
pub fn print_text(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
}

/// Prints a list answer (a JSON array of objects): as sent with `--json`, else a table of the
/// `preferred` columns the rows have (all of them when they have none), or `empty` when there are
/// no rows.
pub fn print_list(args: &ServerArgs, bytes: &[u8], preferred: &[&str], empty: &str) -> anyhow::Result<()> {
    if args.json {
        print_json(bytes);
        return Ok(());
    }
    let rows = match http::json(bytes)? {
        Json::Array(rows) => rows,
        _ => {
            print_json(bytes);
            return Ok(());
        }
    };
    if rows.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    match render::table(&rows, &render::columns(&rows, preferred), render::LIST) {
        Some(t) => print!("{t}"),
        None => print_json(bytes),
    }
    Ok(())
}

/// Prints one object: as sent with `--json`, else as aligned `key  value` lines without the
/// top-level keys of `skip`.
pub fn print_record(args: &ServerArgs, bytes: &[u8], skip: &[&str]) -> anyhow::Result<()> {
    if args.json {
        print_json(bytes);
        return Ok(());
    }
    let value = http::json(bytes)?;
    print!("{}", render::record(&value, skip, render::LIST));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        assert_eq!(token(Some("flag"), Some(&f)).unwrap().as_deref(), Some("abc123"));
        assert_eq!(token(Some(" flag "), None).unwrap().as_deref(), Some("flag"));
        assert_eq!(token(None, None).unwrap(), None);
    }

    #[test]
    fn empty_or_missing_tokens_are_errors_that_do_not_show_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  \n").unwrap();
        assert!(token(None, Some(&f)).unwrap_err().to_string().contains("is empty"));
        assert!(token(Some(""), None).unwrap_err().to_string().contains("is empty"));
        let missing = dir.path().join("nope");
        let e = format!("{:#}", token(Some("s3cret"), Some(&missing)).unwrap_err());
        assert!(e.contains("reading the token file") && !e.contains("s3cret"), "{e}");
    }
}

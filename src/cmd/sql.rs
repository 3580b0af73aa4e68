//! `dragonflow sql --lake DIR "QUERY"` reads a lake here; `dragonflow sql --server URL "QUERY"` asks a
//! job server (`POST /sql`), which reads its own lake.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use sinks::sql::{format_batches, lake_context, query, OutputFormat};

use super::client::render::{self, Json};
use super::client::{http, print_json, print_text, token, url};

/// The server gives a query 30 s; the answer may take a little longer to arrive.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct SqlArgs {
    /// The lake's directory (read here, without a server).
    #[arg(long, default_value = "lake")]
    pub lake: PathBuf,
    /// Output format: table, csv or json.
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    /// Ask this job server instead of reading a lake here (POST /sql), e.g. http://127.0.0.1:9090.
    /// Only when given: DRAGONFLOW_SERVER alone does not turn a local query into a remote one.
    #[arg(long, value_name = "URL", conflicts_with = "lake")]
    pub server: Option<String>,
    /// With --server: the server's bearer token. Prefer DRAGONFLOW_TOKEN or --token-file.
    #[arg(long, value_name = "TOKEN", env = "DRAGONFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --server: read the bearer token from FILE; wins over --token.
    #[arg(long, value_name = "FILE", env = "DRAGONFLOW_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With --server: at most this many rows (the server's default otherwise).
    #[arg(long)]
    pub limit: Option<u64>,
    /// With --server: how long to wait for the answer [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    pub timeout: Option<Duration>,
    /// The query (read-only: SELECT, WITH, EXPLAIN, SHOW…).
    pub query: String,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    if let Some(server) = &args.server {
        return remote(server, &args);
    }
    let text = run_query(&args.lake, &args.query, args.format)?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// Runs one read-only query over a lake and formats the answer.
pub fn run_query(lake: &std::path::Path, sql: &str, format: OutputFormat) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let ctx = lake_context(lake).await?;
        let batches = query(&ctx, sql).await?;
        Ok(format_batches(&batches, format)?)
    })
}

/// The body of `POST /sql`.
fn request_body(sql: &str, limit: Option<u64>) -> Vec<u8> {
    let mut body = serde_json::json!({ "query": sql });
    if let Some(l) = limit {
        body["limit"] = l.into();
    }
    body.to_string().into_bytes()
}

fn remote(server: &str, args: &SqlArgs) -> anyhow::Result<()> {
    let token = token(args.token.as_deref(), args.token_file.as_deref())?;
    let client = http::ServerClient::new(url::base_url(server)?, token, args.timeout.unwrap_or(SERVER_TIMEOUT))?;
    let accept = if args.format == OutputFormat::Csv { "text/csv" } else { http::JSON };
    let body = request_body(&args.query, args.limit);
    let bytes = client.call(Method::POST, "/sql", Some((body, http::JSON)), accept)?;
    match args.format {
        OutputFormat::Csv => print_text(&bytes),
        OutputFormat::Json => print_json(&bytes),
        OutputFormat::Table => {
            let answer = http::json(&bytes)?;
            match answer_table(&answer) {
                Some(text) => print!("{text}"),
                None => print_json(&bytes),
            }
            if let Some(note) = truncation_note(&answer) {
                eprintln!("{note}");
            }
        }
    }
    Ok(())
}

/// The rows of a SQL answer as a table like the local one: the answer is an array of row objects
/// (columns in the order of the first row), or an object with `rows` (and maybe `columns`, names or
/// `{"name": …}`). `None` for any other shape.
fn answer_table(answer: &Json) -> Option<String> {
    let (rows, named): (&[Json], Option<Vec<String>>) = match answer {
        Json::Array(rows) => (rows, None),
        Json::Object(_) => match answer.get("rows") {
            Some(Json::Array(rows)) => {
                let named = match answer.get("columns") {
                    Some(Json::Array(cols)) => cols
                        .iter()
                        .map(|c| c.as_str().or_else(|| c.get("name").and_then(Json::as_str)).map(str::to_string))
                        .collect::<Option<Vec<_>>>(),
                    _ => None,
                };
                (rows, named)
            }
            _ => return None,
        },
        _ => return None,
    };
    let columns = named.unwrap_or_else(|| render::columns(rows, &[]));
    if columns.is_empty() {
        return Some("(no rows)\n".to_string());
    }
    render::table(rows, &columns, render::SQL)
}

/// What to say when the server kept only the first rows (`"truncated": true`).
fn truncation_note(answer: &Json) -> Option<String> {
    if !matches!(answer.get("truncated"), Some(Json::Bool(true))) {
        return None;
    }
    let limit = match answer.get("limit") {
        Some(Json::Number(n)) => format!(" {n}"),
        _ => String::new(),
    };
    Some(format!("(only the first{limit} rows: the server cut the answer; --limit N asks for more)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn body_holds_query_and_limit() {
        let b: serde_json::Value = serde_json::from_slice(&request_body("SELECT 'a\"b'", Some(5))).unwrap();
        assert_eq!(b, serde_json::json!({"query": "SELECT 'a\"b'", "limit": 5}));
        let b: serde_json::Value = serde_json::from_slice(&request_body("SELECT 1", None)).unwrap();
        assert_eq!(b, serde_json::json!({"query": "SELECT 1"}));
    }

    #[test]
    fn rows_keep_the_querys_column_order() {
        let t = answer_table(&json(r#"[{"window_start": "2024-01-01T00:00:00Z", "group_id": "m1", "cpu": 12.5}]"#));
        let expected = "\
+----------------------+----------+------+
| window_start         | group_id | cpu  |
+----------------------+----------+------+
| 2024-01-01T00:00:00Z | m1       | 12.5 |
+----------------------+----------+------+
";
        assert_eq!(t.unwrap(), expected);
    }

    #[test]
    fn rows_and_columns_object() {
        let t = answer_table(&json(r#"{"columns": [{"name": "b"}, {"name": "a"}], "rows": []}"#)).unwrap();
        assert_eq!(t, "+---+---+\n| b | a |\n+---+---+\n");
        let t = answer_table(&json(r#"{"columns": ["n"], "rows": [{"n": 1}]}"#)).unwrap();
        assert_eq!(t, "+---+\n| n |\n+---+\n| 1 |\n+---+\n");
        assert_eq!(answer_table(&json("[]")).unwrap(), "(no rows)\n");
        assert_eq!(answer_table(&json(r#"{"x": 1}"#)), None);
    }

    #[test]
    fn a_cut_answer_is_said_so() {
        let cut = json(r#"{"columns": ["n"], "rows": [{"n": 1}], "row_count": 1, "limit": 1, "truncated": true}"#);
        assert_eq!(
            truncation_note(&cut).unwrap(),
            "(only the first 1 rows: the server cut the answer; --limit N asks for more)"
        );
        assert_eq!(truncation_note(&json(r#"{"rows": [], "truncated": false}"#)), None);
        assert_eq!(truncation_note(&json("[]")), None);
    }
}

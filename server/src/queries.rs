//! The routes that read the lake: history and latest windows of a measurement, group metrics,
//! rankings, the alarm event log, and read-only SQL.
//!
//! Each request opens a DataFusion session over the server's lake ([`sinks::lake_context`]) and
//! runs read-only SQL through [`sinks::query`] (the CLI's guard). Values from the request are
//! passed into SQL only as quoted string literals or as numbers the server computed. Rows are
//! answered as JSON objects with every column (nulls included); timestamps in RFC 3339 (UTC).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use datafusion::execution::context::SQLOptions;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sinks::sql::OutputFormat;

use crate::api::{ApiError, ApiResult, Body, Params, PathParam};
use crate::store::ns_rfc3339;
use crate::Server;

/// `POST /sql`: rows answered at most; the default, and the largest a request may ask for.
pub const SQL_DEFAULT_LIMIT: usize = 10_000;
pub const SQL_MAX_LIMIT: usize = 100_000;
/// `POST /sql`: a query running longer is cancelled.
pub const SQL_TIME_LIMIT: Duration = Duration::from_secs(30);
/// `GET /alarms/events`: the default and largest `limit`.
pub const EVENTS_DEFAULT_LIMIT: usize = 1_000;
/// `GET /groups`: at most this many rows.
pub const GROUPS_MAX_ROWS: usize = 100_000;

/// A string as a SQL literal.
pub(crate) fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Runs a query the server wrote over the lake; any failure is the server's (500).
pub(crate) async fn lake_rows(lake: &Path, sql: &str) -> ApiResult<Vec<Map<String, Value>>> {
    let ctx = sinks::lake_context(lake).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let batches = sinks::query(&ctx, sql).await.map_err(|e| ApiError::internal(e.to_string()))?;
    rows_json(&batches)
}

/// Record batches as JSON objects, one per row, nulls included.
fn rows_json(batches: &[RecordBatch]) -> ApiResult<Vec<Map<String, Value>>> {
    let failed = |e: &dyn std::fmt::Display| ApiError::internal(format!("cannot encode rows as JSON: {e}"));
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for b in batches {
        writer.write(b).map_err(|e| failed(&e))?;
    }
    writer.finish().map_err(|e| failed(&e))?;
    let bytes = writer.into_inner();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| failed(&e))
}

/// A time parameter: RFC 3339, or a duration back from now (`1h`). Nanoseconds since the epoch.
pub(crate) fn parse_time(name: &str, text: &str) -> ApiResult<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return t.timestamp_nanos_opt().ok_or_else(|| ApiError::bad_request(format!("`{name}` is out of range")));
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(pipelines::source::wall_ns().saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::bad_request(format!(
            "`{name}`: expected an RFC 3339 time (2024-05-01T12:00:00Z) or a duration back from now (1h), got {text:?}"
        ))),
    }
}

/// `since`/`until`, or `duration` back from now (`default` when none of them is given).
fn time_range(params: &Params, default: Option<&str>) -> ApiResult<(Option<i64>, Option<i64>)> {
    let until = params.get("until").map(|u| parse_time("until", u)).transpose()?;
    let since = match (params.get("since"), params.get("duration")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `since` or `duration`, not both")),
        (Some(s), None) => Some(parse_time("since", s)?),
        (None, Some(d)) => Some(parse_duration_back("duration", d)?),
        (None, None) => default.map(|d| parse_duration_back("duration", d)).transpose()?,
    };
    Ok((since, until))
}

fn parse_duration_back(name: &str, text: &str) -> ApiResult<i64> {
    let d = humantime::parse_duration(text)
        .map_err(|_| ApiError::bad_request(format!("`{name}`: expected a duration like 1h, got {text:?}")))?;
    Ok(pipelines::source::wall_ns().saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
}

/// `column >= since AND column < until` as SQL conditions.
fn time_conditions(column: &str, (since, until): (Option<i64>, Option<i64>)) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(s) = since {
        c.push(format!("{column} >= to_timestamp_nanos({s})"));
    }
    if let Some(u) = until {
        c.push(format!("{column} < to_timestamp_nanos({u})"));
    }
    c
}

/// Conditions `column = 'value'` for the parameters given.
fn equal_conditions(params: &Params, pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().filter_map(|(p, column)| params.get(p).map(|v| format!("{column} = {}", lit(v)))).collect()
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// How `GET /metrics/{measurement}` reduces the windows of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Min,
    Max,
    Mean,
    Last,
}

impl Stat {
    fn parse(text: &str) -> ApiResult<Stat> {
        match text {
            "min" => Ok(Stat::Min),
            "max" => Ok(Stat::Max),
            "mean" => Ok(Stat::Mean),
            "last" => Ok(Stat::Last),
            other => Err(ApiError::bad_request(format!("`stat`: expected min, max, mean or last, got {other:?}"))),
        }
    }

    /// The bucket's value: over the windows' aggregates for a gauge, over their `rate` for a
    /// counter (a field with a rate in any window of the bucket).
    fn sql(self) -> &'static str {
        match self {
            Stat::Min => r#"CASE WHEN bool_or(rate IS NOT NULL) THEN min(rate) ELSE min("min") END"#,
            Stat::Max => r#"CASE WHEN bool_or(rate IS NOT NULL) THEN max(rate) ELSE max("max") END"#,
            Stat::Mean => {
                r#"CASE WHEN bool_or(rate IS NOT NULL) THEN avg(rate) ELSE sum("sum") / CAST(sum("count") AS DOUBLE) END"#
            }
            Stat::Last => {
                r#"CASE WHEN bool_or(rate IS NOT NULL) THEN last_value(rate ORDER BY window_start, instance) FILTER (WHERE rate IS NOT NULL) ELSE last_value("last" ORDER BY window_start, instance) END"#
            }
        }
    }
}

/// The SQL of `GET /metrics/{measurement}` (documented in docs/server.md).
pub fn history_sql(measurement: &str, period_s: u64, stat: Stat, conditions: &[String]) -> String {
    let mut all = vec![format!("measurement = {}", lit(measurement))];
    all.extend(conditions.iter().cloned());
    let bucket = format!("date_bin(INTERVAL '{period_s} seconds', window_start)");
    format!(
        "SELECT {bucket} AS time, vm_id, field, {value} AS value, bool_or(rate IS NOT NULL) AS counter \
         FROM aggregates {filter} GROUP BY {bucket}, vm_id, field ORDER BY time, vm_id, field",
        value = stat.sql(),
        filter = where_clause(&all),
    )
}

/// `GET /metrics/{measurement}`
pub async fn history(
    State(server): State<Arc<Server>>,
    PathParam(measurement): PathParam,
    params: Params,
) -> ApiResult<Json<Value>> {
    let period_text = params.get("period").unwrap_or("1m");
    let period =
        humantime::parse_duration(period_text).ok().filter(|p| p.as_secs() >= 1 && p.subsec_nanos() == 0).ok_or_else(
            || ApiError::bad_request(format!("`period`: expected 1m, 1h or 1d (whole seconds), got {period_text:?}")),
        )?;
    let stat = Stat::parse(params.get("stat").unwrap_or("mean"))?;
    let range = time_range(&params, Some("1h"))?;
    let mut conditions = equal_conditions(
        &params,
        &[("field", "field"), ("vm", "vm_id"), ("mcis", "mcis_id"), ("ns", "ns_id"), ("instance", "instance")],
    );
    conditions.extend(time_conditions("window_start", range));
    let sql = history_sql(&measurement, period.as_secs(), stat, &conditions);
    let points = lake_rows(&server.lake, &sql).await?;
    Ok(Json(json!({
        "measurement": measurement,
        "period": period_text,
        "stat": params.get("stat").unwrap_or("mean"),
        "since": range.0.map(ns_rfc3339),
        "until": range.1.map(ns_rfc3339),
        "points": points,
    })))
}

/// `GET /metrics/latest?vm=`
pub async fn latest(State(server): State<Arc<Server>>, params: Params) -> ApiResult<Json<Value>> {
    let vm = params.get("vm").ok_or_else(|| ApiError::bad_request("`vm` is required"))?;
    let sql = format!(
        "SELECT DISTINCT ON (measurement, instance, field) window_start, window_end, measurement, instance, field, \
         \"count\", \"sum\", \"min\", \"max\", mean, \"last\", rate, ns_id, mcis_id, vm_id, csp_type, os_type \
         FROM aggregates WHERE vm_id = {} ORDER BY measurement, instance, field, window_start DESC",
        lit(vm)
    );
    Ok(Json(Value::Array(lake_rows(&server.lake, &sql).await?.into_iter().map(Value::Object).collect())))
}

/// `GET /groups`
pub async fn groups(State(server): State<Arc<Server>>, params: Params) -> ApiResult<Json<Value>> {
    let mut conditions = equal_conditions(&params, &[("level", "level"), ("metric", "metric"), ("group", "group_id")]);
    conditions.extend(time_conditions("window_start", time_range(&params, Some("1h"))?));
    let sql = format!(
        "SELECT window_start, window_end, level, group_id, metric, value, vm_count FROM groups {} \
         ORDER BY window_start, level, metric, group_id LIMIT {GROUPS_MAX_ROWS}",
        where_clause(&conditions)
    );
    Ok(Json(Value::Array(lake_rows(&server.lake, &sql).await?.into_iter().map(Value::Object).collect())))
}

/// `GET /rankings`
pub async fn rankings(State(server): State<Arc<Server>>, params: Params) -> ApiResult<Json<Value>> {
    let conditions = equal_conditions(&params, &[("level", "level"), ("metric", "metric")]);
    let filter = where_clause(&conditions);
    let mut outer = conditions.clone();
    outer.push(format!("window_start = (SELECT max(window_start) FROM rankings {filter})"));
    let sql = format!(
        "SELECT window_start, window_end, level, metric, \"order\", rank, group_id, value FROM rankings {} \
         ORDER BY level, metric, \"order\", rank",
        where_clause(&outer)
    );
    Ok(Json(Value::Array(lake_rows(&server.lake, &sql).await?.into_iter().map(Value::Object).collect())))
}

/// `GET /alarms/events`
pub async fn events(State(server): State<Arc<Server>>, params: Params) -> ApiResult<Json<Value>> {
    let limit = match params.get("limit") {
        None => EVENTS_DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=SQL_MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("`limit`: expected 1 to {SQL_MAX_LIMIT}, got {l:?}")))?,
    };
    let mut conditions = equal_conditions(&params, &[("rule", "rule"), ("target", "target"), ("job", "job")]);
    if let Some(level) = params.get("level") {
        let level = level.to_ascii_uppercase();
        if !["OK", "WARNING", "CRITICAL", "NODATA"].contains(&level.as_str()) {
            return Err(ApiError::bad_request(format!(
                "`level`: expected OK, WARNING, CRITICAL or NODATA, got {level:?}"
            )));
        }
        conditions.push(format!("level = {}", lit(&level)));
    }
    conditions.extend(time_conditions("time", time_range(&params, None)?));
    let sql = format!(
        "SELECT id, time, rule, target, level, previous_level, value, threshold, message, delivered, delivery_error, \
         job FROM alarm_events {} ORDER BY time DESC, id LIMIT {limit}",
        where_clause(&conditions)
    );
    Ok(Json(Value::Array(lake_rows(&server.lake, &sql).await?.into_iter().map(Value::Object).collect())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    query: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /sql`: `{"query": "...", "limit": 10000}`.
pub async fn sql(State(server): State<Arc<Server>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let request: SqlRequest = serde_json::from_slice(&body.0)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"query\": \"...\", \"limit\": N}}: {e}")))?;
    if request.query.trim().is_empty() {
        return Err(ApiError::bad_request("`query` is empty"));
    }
    let limit = request.limit.unwrap_or(SQL_DEFAULT_LIMIT);
    if limit == 0 || limit > SQL_MAX_LIMIT {
        return Err(ApiError::bad_request(format!("`limit`: expected 1 to {SQL_MAX_LIMIT}, got {limit}")));
    }
    let csv = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| {
        a.split(',').any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/csv"))
    });
    let lake = server.lake.clone();
    let run = async move { run_limited(&lake, &request.query, limit).await };
    let time_limit = server.config().sql_time_limit;
    let (batches, truncated) = tokio::time::timeout(time_limit, run).await.map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the query ran longer than {} and was cancelled", humantime::format_duration(time_limit)),
        )
    })??;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if csv {
        let text = sinks::format_batches(&batches, OutputFormat::Csv)?;
        let mut response = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response();
        let headers = response.headers_mut();
        headers.insert("x-dragonflow-rows", HeaderValue::from(rows));
        headers.insert("x-dragonflow-truncated", HeaderValue::from_static(if truncated { "true" } else { "false" }));
        return Ok(response);
    }
    let columns: Vec<String> =
        batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    let rows_json = rows_json(&batches)?;
    Ok(Json(json!({
        "columns": columns,
        "rows": rows_json,
        "row_count": rows,
        "limit": limit,
        "truncated": truncated,
    }))
    .into_response())
}

/// Runs a read-only query and keeps at most `limit` rows; `true` when rows were left out.
///
/// A query (`SELECT`, `WITH`, `VALUES`) is first checked by the lake's read-only guard as
/// `EXPLAIN query` (which plans it without running it), then run with DataFusion's own read-only
/// options and a limit of `limit + 1` rows on top of its plan, so no more than that is computed and
/// its order is kept. Other statements (`SHOW`, `DESCRIBE`, `EXPLAIN`) run through the guard as
/// given and their result is cut.
async fn run_limited(lake: &Path, sql: &str, limit: usize) -> Result<(Vec<RecordBatch>, bool), ApiError> {
    let ctx = sinks::lake_context(lake).await?;
    let lower = sql.trim_start().trim_start_matches('(').trim_start().to_ascii_lowercase();
    let is_query = ["select", "with", "values"].iter().any(|k| lower.starts_with(k));
    if !is_query {
        return Ok(cut(sinks::query(&ctx, sql).await?, limit));
    }
    sinks::query(&ctx, &format!("EXPLAIN {sql}")).await?;
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let failed = |e: datafusion::error::DataFusionError| ApiError::bad_request(format!("sql query failed: {e}"));
    let frame = ctx.sql_with_options(sql, options).await.map_err(failed)?;
    let batches = frame.limit(0, Some(limit + 1)).map_err(failed)?.collect().await.map_err(failed)?;
    Ok(cut(batches, limit))
}

/// The first `limit` rows, and whether there were more.
fn cut(batches: Vec<RecordBatch>, limit: usize) -> (Vec<RecordBatch>, bool) {
    let mut kept = Vec::new();
    let mut left = limit;
    let mut truncated = false;
    for b in batches {
        if left == 0 {
            truncated |= b.num_rows() > 0;
            continue;
        }
        if b.num_rows() > left {
            kept.push(b.slice(0, left));
            truncated = true;
            left = 0;
        } else {
            left -= b.num_rows();
            kept.push(b);
        }
    }
    (kept, truncated)
}

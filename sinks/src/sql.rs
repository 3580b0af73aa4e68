//! Read-only SQL over the lake, with DataFusion.
//!
//! [`lake_context`] registers every table of [`crate::tables`] as a listing table over
//! `<lake>/<table>/` with the Hive partition columns `date` and `hour`. A job resumed after a crash
//! may write a row of `late`, `rejects`, `agents_history` or `agent_health` again, so these are
//! read through a view that keeps one row per record (`DISTINCT ON` the record's key columns); the
//! window tables (`aggregates`, `groups`, `rankings`) need none, their files are replaced in place
//! instead. The view `agents` holds the latest row of each key of `agents_history`, unless that
//! row is a deletion. `alarm_log` is read as written — an event's pending row, its delivery
//! outcomes and the repeats of a replay — and the view `alarm_events` holds one row per event:
//! its latest outcome if it has one, else its pending row. [`query`] runs one statement and
//! refuses anything that would change state (DDL, DML, `COPY`, `SET`, …); [`format_batches`]
//! renders results as a text table, CSV or JSON.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sinks::SinkError> {
//! use sinks::sql::{format_batches, lake_context, query, OutputFormat};
//! let ctx = lake_context("/var/lib/dragonflow/lake".as_ref()).await?;
//! let rows = query(&ctx, "SELECT vm_id, max(max) FROM aggregates WHERE field = 'usage_idle' GROUP BY vm_id").await?;
//! println!("{}", format_batches(&rows, OutputFormat::Table)?);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::{ident, lit, DdlStatement, LogicalPlan, Statement as PlanStatement, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::error::SinkError;
use crate::tables::{Table, PARTITION_COLUMNS};

pub use crate::tables::{schema, TABLES, VIEWS};

/// A session over the lake at `path` with its tables registered (see the [module docs](self)).
///
/// A table whose directory does not exist yet is registered as an empty table with the same
/// columns, so queries over it return no rows instead of failing; it stays empty for the life of
/// this context.
pub async fn lake_context(path: &Path) -> Result<SessionContext, SinkError> {
    check_lake_path(path)?;
    let config = SessionConfig::new().with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    for table in Table::ALL {
        let dir = path.join(table.name());
        let register_err =
            |e: DataFusionError| SinkError::Register { table: table.name(), path: dir.clone(), source: Box::new(e) };
        let provider: Arc<dyn TableProvider> = if dir.is_dir() {
            // A trailing separator marks the URL as a directory (a collection of files).
            let url = ListingTableUrl::parse(format!("{}/", dir.display())).map_err(register_err)?;
            let partition_cols = PARTITION_COLUMNS.iter().map(|c| (c.to_string(), DataType::Utf8)).collect();
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partition_cols);
            let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(table.schema());
            let files: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config).map_err(register_err)?);
            match record_key(table) {
                Some(key) => {
                    let all = table.sql_schema().fields().iter().map(|f| ident(f.name())).collect();
                    let on = key.iter().map(|c| ident(*c)).collect();
                    ctx.read_table(files)
                        .and_then(|df| df.distinct_on(on, all, None))
                        .map_err(register_err)?
                        .into_view()
                }
                None => files,
            }
        } else {
            Arc::new(EmptyTable::new(table.sql_schema()))
        };
        ctx.register_table(table.name(), provider).map_err(register_err)?;
    }
    register_agents(&ctx, path).await?;
    register_alarm_events(&ctx, path).await?;
    Ok(ctx)
}

/// The view `alarm_events`: per event `id` of a job, the row of `alarm_log` with a delivery outcome
/// (`delivered` not null) recorded last — or, while there is none, a pending row (all pending
/// rows of an event are equal but for `recorded_at`). An outcome wins whatever the clocks say: the
/// delivery thread may record it before the dataflow's writer flushes the pending row. Ties
/// (outcomes recorded in the same nanosecond) go to a successful delivery.
const ALARM_EVENTS_SQL: &str = "SELECT DISTINCT ON (id, job) \
     id, time, rule, target, level, previous_level, value, threshold, message, delivered, delivery_error, \
     handlers, recorded_at, job \
     FROM alarm_log \
     ORDER BY id, job, delivered IS NULL, recorded_at DESC, delivered DESC";

/// Registers the view `alarm_events` (see [`ALARM_EVENTS_SQL`]).
async fn register_alarm_events(ctx: &SessionContext, path: &Path) -> Result<(), SinkError> {
    let register_err = |e: DataFusionError| SinkError::Register {
        table: "alarm_events",
        path: path.join(Table::AlarmLog.name()),
        source: Box::new(e),
    };
    let view = ctx.sql(ALARM_EVENTS_SQL).await.map_err(register_err)?.into_view();
    ctx.register_table("alarm_events", view).map_err(register_err)?;
    Ok(())
}

/// Registers the view `agents`: per key, the row of `agents_history` with the greatest
/// `(time, deleted, health)` — so a removal wins over a record of the same time — left out when
/// it is a deletion.
async fn register_agents(ctx: &SessionContext, path: &Path) -> Result<(), SinkError> {
    let history = Table::AgentsHistory;
    let register_err = |e: DataFusionError| SinkError::Register {
        table: "agents",
        path: path.join(history.name()),
        source: Box::new(e),
    };
    let all = history.sql_schema().fields().iter().map(|f| ident(f.name())).collect();
    let sort = vec![
        ident("key").sort(true, false),
        ident("time").sort(false, true),
        ident("deleted").sort(false, true),
        ident("health").sort(false, true),
    ];
    let view = ctx
        .table(history.name())
        .await
        .and_then(|df| df.distinct_on(vec![ident("key")], all, Some(sort)))
        .and_then(|df| df.filter(ident("deleted").eq(lit(false))))
        .map_err(register_err)?
        .into_view();
    ctx.register_table("agents", view).map_err(register_err)?;
    Ok(())
}

/// The columns that identify one row of a table whose rows a resumed job may write again; `None`
/// for the tables read as written: the window tables, whose files are replaced, and `alarm_log`,
/// whose repeats differ in `recorded_at` and are collapsed by the view `alarm_events` instead.
fn record_key(table: Table) -> Option<&'static [&'static str]> {
    match table {
        Table::Aggregates | Table::Groups | Table::Rankings | Table::AlarmLog => None,
        Table::Late => Some(&[
            "source",
            "partition",
            "position",
            "ns_id",
            "mcis_id",
            "vm_id",
            "csp_type",
            "os_type",
            "measurement",
            "instance",
            "field",
            "timestamp",
            "value",
            "date",
            "hour",
        ]),
        Table::Rejects => Some(&["source", "partition", "position", "reason", "payload"]),
        Table::AgentsHistory => Some(&["key", "time", "health", "deleted"]),
        Table::AgentHealth => Some(&["ns_id", "mcis_id", "vm_id", "csp_type", "time", "to"]),
    }
}

/// DataFusion addresses local directories by URL-like strings: refuse what it would misread.
fn check_lake_path(path: &Path) -> Result<(), SinkError> {
    let unsupported = |reason: String| SinkError::UnsupportedPath { path: path.to_path_buf(), reason };
    let text = path.to_str().ok_or_else(|| unsupported("the path is not valid UTF-8".to_string()))?;
    match text.chars().find(|c| matches!(c, '*' | '?' | '[')) {
        Some(c) => Err(unsupported(format!("`{c}` in the path would be read as a glob pattern"))),
        None => Ok(()),
    }
}

/// Runs one read-only SQL statement and collects its results.
///
/// Queries, `EXPLAIN`, `SHOW` and `DESCRIBE` run; anything that would create, change or drop a
/// table, write files (`COPY`), or change the session (`SET`, `PREPARE`, transactions) fails with
/// [`SinkError::ReadOnly`] naming what was refused.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SinkError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(SinkError::query)?;
    refuse_writes(&statement)?;
    let plan = state.statement_to_plan(statement).await.map_err(SinkError::query)?;
    // Second line of defence: whatever the statement looked like, the plan must not write.
    refuse_write_plan(&plan)?;
    read_only_options().verify_plan(&plan).map_err(|e| read_only(e.message()))?;
    let frame = ctx.execute_logical_plan(plan).await.map_err(SinkError::query)?;
    frame.collect().await.map_err(SinkError::query)
}

/// The last recorded state of every agent before event time `before` (ns): for each key, its
/// latest row of `agents_history` (a removal included, as `deleted`). A job resuming from a
/// checkpoint starts its registry and agent health from these.
///
/// `recent_span` (ns) is how far before `before` an agent's rows may be behind its data: the
/// snapshot interval plus the silence that makes it unhealthy.
pub fn agents_before(lake: &Path, before: i64, recent_span: i64) -> Result<Vec<operators::model::AgentRow>, SinkError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use operators::registry::{AgentRecord, AgentState, Mechanism};

    let sql = format!(
        "SELECT DISTINCT ON (key) arrow_cast(time, 'Int64') AS time, key, ns_id, mcis_id, vm_id, csp_type, \
         os_type, mechanism, public_ip, state, vcpu, memory_gib, cost_per_hour, pull_url, \
         arrow_cast(first_seen, 'Int64') AS first_seen, arrow_cast(last_seen, 'Int64') AS last_seen, health, deleted \
         FROM agents_history WHERE time < to_timestamp_nanos({before}) ORDER BY key, time DESC, deleted DESC"
    );
    // Rows are written on changes and in periodic snapshots, so an agent's `last_seen` there may
    // lag: its last window with data before `before` is read from `aggregates`, over the span
    // in which it can be later than the agent's last row (a snapshot interval and then some).
    let recent = format!(
        "SELECT concat_ws('/', ns_id, mcis_id, vm_id, csp_type) AS key, \
         arrow_cast(arrow_cast(max(window_start), 'Timestamp(Nanosecond, Some(\"UTC\"))'), 'Int64') AS last \
         FROM aggregates \
         WHERE window_start < to_timestamp_nanos({before}) AND window_start >= to_timestamp_nanos({since}) \
         GROUP BY ns_id, mcis_id, vm_id, csp_type",
        since = before.saturating_sub(recent_span)
    );
    let [batches, recent] = query_blocking(lake, [&sql, &recent])?;
    let mut last_window = std::collections::HashMap::new();
    for b in &recent {
        let keys = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("strings cast to Utf8");
        let keys = keys.as_string::<i32>();
        let last = b.column(1).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            if !keys.is_null(r) && !last.is_null(r) {
                last_window.insert(keys.value(r).to_string(), last.value(r));
            }
        }
    }
    let mut rows = Vec::new();
    for b in &batches {
        let col = |name: &str| b.column_by_name(name).expect("selected column");
        // Text columns as Utf8 once per batch (the lake may hand them over as views).
        let text: std::collections::HashMap<&str, arrow::array::ArrayRef> = [
            "key",
            "ns_id",
            "mcis_id",
            "vm_id",
            "csp_type",
            "os_type",
            "mechanism",
            "public_ip",
            "state",
            "pull_url",
            "health",
        ]
        .into_iter()
        .map(|name| (name, arrow::compute::cast(col(name), &DataType::Utf8).expect("strings cast to Utf8")))
        .collect();
        let string = |name: &str, r: usize| -> String {
            let c = text[name].as_string::<i32>();
            if c.is_null(r) {
                String::new()
            } else {
                c.value(r).to_string()
            }
        };
        let int = |name: &str, r: usize| -> Option<i64> {
            let c = col(name).as_primitive::<Int64Type>();
            (!c.is_null(r)).then(|| c.value(r))
        };
        let float = |name: &str, r: usize| -> Option<f64> {
            let c = col(name).as_primitive::<Float64Type>();
            (!c.is_null(r)).then(|| c.value(r))
        };
        let deleted = col("deleted").as_boolean();
        for r in 0..b.num_rows() {
            let pull_url = string("pull_url", r);
            let record = AgentRecord {
                key: string("key", r),
                ns_id: string("ns_id", r),
                mcis_id: string("mcis_id", r),
                vm_id: string("vm_id", r),
                csp_type: string("csp_type", r),
                os_type: string("os_type", r),
                mechanism: if string("mechanism", r) == "pull" { Mechanism::Pull } else { Mechanism::Push },
                public_ip: string("public_ip", r),
                state: if string("state", r) == "disable" { AgentState::Disable } else { AgentState::Enable },
                vcpu: float("vcpu", r),
                memory_gib: float("memory_gib", r),
                cost_per_hour: float("cost_per_hour", r),
                pull_url: (!pull_url.is_empty()).then_some(pull_url),
            };
            let last_seen = match (int("last_seen", r), last_window.get(&record.key)) {
                (Some(a), Some(b)) => Some(a.max(*b)),
                (a, b) => a.or(b.copied()),
            };
            rows.push(operators::model::AgentRow {
                time: int("time", r).unwrap_or_default(),
                record,
                first_seen: int("first_seen", r),
                last_seen,
                health: string("health", r),
                deleted: !deleted.is_null(r) && deleted.value(r),
            });
        }
    }
    Ok(rows)
}

/// The level of every alarm (rule and target) of the job `job` at event time `before` (ns), as
/// `(rule, target, level, time)` sorted by rule and target: the level and time of its latest event
/// of `alarm_log` before `before` (of events at the same time, the one recorded last). Rows
/// without a job (written before `alarm_log` had the column) count for every job. A job resuming
/// from a checkpoint starts its alarm state from these. Empty while `alarm_log` has no rows.
pub fn alarm_levels_before(
    lake: &Path,
    job: &str,
    before: i64,
) -> Result<Vec<(String, String, String, i64)>, SinkError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    let sql = format!(
        "SELECT DISTINCT ON (rule, target) rule, target, level, arrow_cast(time, 'Int64') AS time_ns \
         FROM alarm_log WHERE time < to_timestamp_nanos({before}) AND (job = '{}' OR job IS NULL) \
         ORDER BY rule, target, time DESC, recorded_at DESC",
        job.replace('\'', "''")
    );
    let [batches] = query_blocking(lake, [&sql])?;
    let mut levels = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in &batches {
        // Text columns as Utf8 (the lake may hand them over as views).
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8).expect("strings cast to Utf8");
        let (rule, target, level) = (text(0), text(1), text(2));
        let (rule, target, level) = (rule.as_string::<i32>(), target.as_string::<i32>(), level.as_string::<i32>());
        let time = b.column(3).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            // Never null in the lake's schema: a row that is anyway is left out, not trusted.
            if rule.is_null(r) || target.is_null(r) || level.is_null(r) || time.is_null(r) {
                continue;
            }
            levels.push((
                rule.value(r).to_string(),
                target.value(r).to_string(),
                level.value(r).to_string(),
                time.value(r),
            ));
        }
    }
    levels.sort();
    Ok(levels)
}

/// Runs queries over the lake at `lake` on a runtime of its own, for callers outside async code
/// (a job restoring its state before it starts).
fn query_blocking<const N: usize>(lake: &Path, sqls: [&str; N]) -> Result<[Vec<RecordBatch>; N], SinkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SinkError::io("start a runtime for", lake, e))?;
    runtime.block_on(async {
        let ctx = lake_context(lake).await?;
        let mut results: [Vec<RecordBatch>; N] = std::array::from_fn(|_| Vec::new());
        for (result, sql) in results.iter_mut().zip(sqls) {
            *result = query(&ctx, sql).await?;
        }
        Ok(results)
    })
}

fn read_only_options() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

fn read_only(statement: impl Into<String>) -> SinkError {
    SinkError::ReadOnly { statement: statement.into() }
}

/// Accepts only statements that read: queries, `EXPLAIN` of those, `SHOW …` and `DESCRIBE`.
fn refuse_writes(statement: &DfStatement) -> Result<(), SinkError> {
    match statement {
        DfStatement::Statement(statement) => refuse_sql_writes(statement),
        DfStatement::Explain(explain) => refuse_writes(&explain.statement),
        DfStatement::CreateExternalTable(_) => Err(read_only("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(read_only("COPY")),
        DfStatement::Reset(_) => Err(read_only("RESET")),
    }
}

fn refuse_sql_writes(statement: &SqlStatement) -> Result<(), SinkError> {
    match statement {
        SqlStatement::Query(_)
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ExplainTable { .. } => Ok(()),
        SqlStatement::Explain { statement, .. } => refuse_sql_writes(statement),
        other => Err(read_only(statement_kind(other))),
    }
}

/// The leading keywords of a statement, e.g. `INSERT INTO` or `DROP TABLE`, to name it in errors.
fn statement_kind(statement: &SqlStatement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> =
        text.split_whitespace().take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_')).take(4).collect();
    if words.is_empty() {
        "this statement".to_string()
    } else {
        words.join(" ")
    }
}

/// Refuses plans that write, naming the operation (used after planning, whatever the SQL was).
fn refuse_write_plan(plan: &LogicalPlan) -> Result<(), SinkError> {
    let refused = match plan {
        LogicalPlan::Ddl(ddl) => Some(match ddl {
            DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_string(),
            DdlStatement::CreateMemoryTable(_) => "CREATE TABLE".to_string(),
            DdlStatement::CreateView(_) => "CREATE VIEW".to_string(),
            DdlStatement::DropTable(_) => "DROP TABLE".to_string(),
            DdlStatement::DropView(_) => "DROP VIEW".to_string(),
            other => other.name().to_string(),
        }),
        LogicalPlan::Dml(dml) => Some(match &dml.op {
            WriteOp::Insert(_) => "INSERT".to_string(),
            WriteOp::Ctas => "CREATE TABLE AS".to_string(),
            other => other.name().to_uppercase(),
        }),
        LogicalPlan::Copy(_) => Some("COPY".to_string()),
        LogicalPlan::Statement(statement) => Some(match statement {
            PlanStatement::SetVariable(_) => "SET".to_string(),
            PlanStatement::ResetVariable(_) => "RESET".to_string(),
            PlanStatement::TransactionStart(_) => "BEGIN".to_string(),
            PlanStatement::TransactionEnd(_) => "COMMIT or ROLLBACK".to_string(),
            PlanStatement::Prepare(_) => "PREPARE".to_string(),
            PlanStatement::Execute(_) => "EXECUTE".to_string(),
            other => other.name().to_string(),
        }),
        _ => None,
    };
    match refused {
        Some(statement) => Err(read_only(statement)),
        None => plan.inputs().into_iter().try_for_each(refuse_write_plan),
    }
}

/// How [`format_batches`] renders results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// A text table (Arrow's pretty printer).
    #[default]
    Table,
    /// CSV with a header line; timestamps in RFC 3339.
    Csv,
    /// One JSON array of objects, one per row.
    Json,
}

impl OutputFormat {
    /// The format's name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputFormat {
    type Err = SinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            _ => Err(SinkError::UnknownFormat(s.to_string())),
        }
    }
}

/// RFC 3339 with as many fractional digits as needed, e.g. `2024-03-10T23:59:50+00:00`.
const RFC3339: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";

/// Renders query results in `format`.
pub fn format_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<String, SinkError> {
    let failed = |reason: String| SinkError::Format { format: format.name(), reason };
    match format {
        OutputFormat::Table => arrow::util::pretty::pretty_format_batches(batches)
            .map(|table| table.to_string())
            .map_err(|e| failed(e.to_string())),
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format(RFC3339.to_string())
                .build(Vec::new());
            for batch in batches {
                writer.write(batch).map_err(|e| failed(e.to_string()))?;
            }
            String::from_utf8(writer.into_inner()).map_err(|e| failed(e.to_string()))
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs).map_err(|e| failed(e.to_string()))?;
            writer.finish().map_err(|e| failed(e.to_string()))?;
            String::from_utf8(writer.into_inner()).map_err(|e| failed(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan check alone (without the statement check) refuses every writing plan.
    #[tokio::test]
    async fn plans_that_write_are_refused() {
        let dir = std::env::temp_dir().join("dragonflow-sinks-no-such-lake");
        let ctx = lake_context(&dir).await.expect("context");
        let cases = [
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'", "CREATE EXTERNAL TABLE"),
            ("INSERT INTO late SELECT * FROM late", "INSERT"),
            ("EXPLAIN INSERT INTO late SELECT * FROM late", "INSERT"),
            ("COPY (SELECT 1) TO '/tmp/dragonflow-never-written.parquet'", "COPY"),
            ("DROP VIEW v", "DROP VIEW"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
        ];
        for (sql, kind) in cases {
            let plan = ctx.state().create_logical_plan(sql).await.expect(sql);
            let err = refuse_write_plan(&plan).expect_err(sql);
            assert_eq!(err.to_string(), format!("dragonflow sql is read-only: {kind} is not allowed"), "{sql}");
        }
        let plan = ctx.state().create_logical_plan("SELECT * FROM late").await.expect("select");
        assert!(refuse_write_plan(&plan).is_ok());
    }

    #[tokio::test]
    async fn glob_characters_in_the_lake_path_are_refused() {
        let err = lake_context(Path::new("/data/lake[1]")).await.err().expect("refused");
        assert!(err.to_string().contains("glob"), "{err}");
    }
}

//! The one error type of the sinks: every variant says what failed and where (a path, a table,
//! the refused statement), so a message in a log is enough to act on.

use std::path::PathBuf;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use parquet::errors::ParquetError;

/// What went wrong in a sink.
#[derive(thiserror::Error, Debug)]
pub enum SinkError {
    /// The InfluxDB sink failed (after retrying what can be retried).
    #[error("influxdb: {what}: {reason}")]
    Influx { what: String, reason: String },
    /// A file-system operation (create a directory or file, sync, rename, …) failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The Parquet encoder failed while writing a file.
    #[error("cannot write parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },

    /// Buffered rows could not be turned into (or split into) Arrow record batches.
    #[error("cannot encode rows of table {table}: {source}")]
    Encode {
        table: &'static str,
        #[source]
        source: ArrowError,
    },

    /// A timestamp outside the range a date can be computed for.
    #[error("table {table}: timestamp {nanos} ns is out of range for a date partition")]
    TimestampOutOfRange { table: &'static str, nanos: i64 },

    /// The lake's writer thread stopped (after a write error); nothing more can be written.
    #[error("lake writer for {path} has stopped: {reason}")]
    WriterStopped { path: PathBuf, reason: String },

    /// The lake's writer thread could not be started.
    #[error("cannot start the lake writer thread for {path}: {source}")]
    SpawnWriter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The lake's writer thread panicked.
    #[error("lake writer thread for {path} panicked")]
    WriterPanicked { path: PathBuf },

    /// A lake path that SQL cannot address (not UTF-8, or containing glob characters).
    #[error("cannot read the lake at {path}: {reason}")]
    UnsupportedPath { path: PathBuf, reason: String },

    /// A table of the lake could not be registered for SQL.
    #[error("cannot register table {table} over {path}: {source}")]
    Register {
        table: &'static str,
        path: PathBuf,
        #[source]
        source: Box<DataFusionError>,
    },

    /// A statement that would change something was refused: SQL over the lake is read-only.
    #[error("dragonflow sql is read-only: {statement} is not allowed")]
    ReadOnly {
        /// The kind of statement refused, e.g. `CREATE EXTERNAL TABLE`.
        statement: String,
    },

    /// A query failed to parse, plan or run.
    #[error("sql query failed: {source}")]
    Query {
        #[source]
        source: Box<DataFusionError>,
    },

    /// Query results could not be formatted.
    #[error("cannot format results as {format}: {reason}")]
    Format { format: &'static str, reason: String },

    /// An output format name that is not `table`, `csv` or `json`.
    #[error("unknown output format `{0}`: expected table, csv or json")]
    UnknownFormat(String),

    /// A table name that is not one of the lake's tables.
    #[error("unknown table `{0}`: expected one of {tables}", tables = crate::tables::TABLES.join(", "))]
    UnknownTable(String),
}

impl SinkError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SinkError::Io { op, path: path.into(), source }
    }

    pub(crate) fn query(source: DataFusionError) -> Self {
        SinkError::Query { source: Box::new(source) }
    }
}

/// An error and its causes, `outer: inner: root`, each cause said once (libraries often repeat
/// their source in their own message; hyper's "client error (Connect)" alone does not say why).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

//! Dragonflow's destinations.
//!
//! - [`tables`]: the lake's tables and their Arrow schemas, shared by the writer and SQL.
//! - [`lake`]: [`LakeWriter`], one per worker, writes Hive-partitioned Parquet files through a
//!   bounded channel to its own writer thread.
//! - [`sql`]: read-only DataFusion SQL over the lake (its tables and the views `agents` and
//!   `alarm_events`), and result formatting (table, CSV, JSON).
//! - [`influx`]: [`InfluxWriter`], one per worker, writes window, group, ranking, health, alarm,
//!   late and reject points to InfluxDB 1.x over HTTP with batching, gzip, bounded requests in flight,
//!   retries and bisection of refused batches.
//! - [`notify`]: alarm handlers (Slack, SMTP, webhooks) and the delivery thread.
//! - [`spec_util`]: field-marked errors and human durations for reading specs.
//! - [`error`]: [`SinkError`], which says what failed and where.

pub mod error;
pub mod influx;
pub mod lake;
pub mod notify;
pub mod spec_util;
pub mod sql;
pub mod tables;

pub use error::SinkError;
pub use influx::{InfluxConfig, InfluxStats, InfluxWriter};
pub use lake::{LakeConfig, LakeStats, LakeWriter};
pub use sql::{format_batches, lake_context, query, OutputFormat};
pub use tables::{schema, Table, TABLES, VIEWS};

#[cfg(test)]
mod tests;

//! Dragonflow's destinations.
//!
//! - [`tables`]: the lake's tables and their Arrow schemas, shared by the writer and SQL.
//! - [`lake`]: [`LakeWriter`], one per worker, writes Hive-partitioned Parquet files through a
//!   bounded channel to its own writer thread.
//! - [`sql`]: read-only DataFusion SQL over the lake, and result formatting (table, CSV, JSON).
//! - [`error`]: [`SinkError`], which says what failed and where.

pub mod error;
pub mod lake;
pub mod sql;
pub mod tables;

pub use error::SinkError;
pub use lake::{LakeConfig, LakeStats, LakeWriter};
pub use sql::{format_batches, lake_context, query, OutputFormat};
pub use tables::{schema, Table, TABLES};

#[cfg(test)]
mod tests;

//! Dragonflow's load generator: N virtual monitoring agents (Telegraf-like) with plausible,
//! self-consistent metric dynamics, published to Kafka or written to a file.
//!
//! - [`Fleet`]: the agents and the messages of each collection tick (deterministic given a seed;
//!   optional clock skew, reordering, and churn: agents replaced by new VMs every minute).
//! - [`write_file`]: ticks on a synthetic clock into JSON lines or line protocol (gzip with `.gz`).
//! - [`run_kafka`]: ticks into a Kafka topic, in real time or as fast as possible.
//! - [`Stats`] and [`status_line`]: what was sent, for programs and for people.
//!
//! ```
//! use loadgen::{Fleet, FleetConfig};
//!
//! let mut fleet = Fleet::new(FleetConfig { agents: 10, ..FleetConfig::default() });
//! let mut out = Vec::new();
//! fleet.tick(1_700_000_000_000_000_000, &mut out);
//! assert_eq!(out.len(), 10 * 6);
//! assert!(out[0].payload.starts_with(br#"{"fields":{"usage_guest":"#));
//! ```

#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

mod agent;
mod encode;
mod file;
mod fleet;
mod kafka;
mod stats;

pub use file::write_file;
pub use fleet::{AgentInfo, Fleet, FleetConfig, Message, MEASUREMENTS};
pub use kafka::{run_kafka, KafkaTarget};
pub use operators::decode::Format;
pub use stats::{status_line, Stats};

/// What went wrong in a load-generator run.
#[derive(thiserror::Error, Debug)]
pub enum LoadgenError {
    /// Creating or writing the output file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A Kafka client could not be created or an admin operation failed.
    #[error("Kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The cause.
        source: rdkafka::error::KafkaError,
    },
    /// An operation did not complete in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// A setting is unusable.
    #[error("invalid load generator setting: {0}")]
    Config(String),
}

/// The tick interval in ns, if it is usable.
fn interval_ns(interval: Duration) -> Result<i64, LoadgenError> {
    match i64::try_from(interval.as_nanos()) {
        Ok(ns) if ns > 0 => Ok(ns),
        _ => Err(LoadgenError::Config(format!("the tick interval must be positive and finite, got {interval:?}"))),
    }
}

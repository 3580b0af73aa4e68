//! Dragonflow's load generator: N virtual monitoring agents (Telegraf-like) with plausible,
//! self-consistent metric dynamics, published to Kafka, written to a file, or served over HTTP.
//!
//! - [`Fleet`]: the agents and the messages of each collection tick (deterministic given a seed;
//!   optional clock skew, reordering, and churn: agents replaced by new VMs every minute).
//! - [`write_file`]: ticks on a synthetic clock into JSON lines or line protocol (gzip with `.gz`).
//! - [`run_kafka`]: ticks into a Kafka topic, in real time or as fast as possible.
//! - [`AgentListener`] and [`run_listener`]: pull mode, the agents answer over HTTP (some slow,
//!   failing or unreachable on purpose) while the fleet ticks in real time.
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
mod listener;
mod stats;

pub use file::write_file;
pub use fleet::{AgentInfo, Fleet, FleetConfig, Message, MEASUREMENTS};
pub use kafka::{run_kafka, KafkaTarget};
pub use listener::{
    listener_status_line, run_listener, AgentListener, AgentStatus, Behaviour, ListenerConfig, ListenerStats,
};
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
    /// The pull-mode listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The async runtime of the pull-mode listener could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
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

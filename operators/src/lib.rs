//! Dragonflow's dataflow logic, free of Kafka, HTTP and files.
//!
//! - [`model`]: the metric model — series keys, observations, window rows, late and rejected records.
//! - [`decode`]: Telegraf JSON and Influx line protocol decoders that never panic on input.
//! - [`intern`]: per-worker interning of agent identities and series, so the hot path works on integers.
//! - [`time`]: event-time windows and per-partition watermarks.
//! - [`aggregate`]: the mergeable window aggregate (count, sum, min, max, mean, last).
//! - [`ingest`]: turns raw messages into observation batches stamped with their window, splitting off late and rejected records.
//! - [`window`]: the `WindowAggregate` timely operator.
//! - [`groups`]: the agent registry, agent health, group metrics and rankings (differential dataflow).
//! - [`registry`]: the agent registry's records.
//! - [`checkpoint`]: per-partition bookkeeping that lets a replayable source resume exactly.
//! - [`alarm`]: the per-(rule, target) alarm state machine: OK, WARNING, CRITICAL, NODATA, with hysteresis.

pub mod aggregate;
pub mod alarm;
pub mod checkpoint;
pub mod decode;
pub mod groups;
pub mod ingest;
pub mod intern;
pub mod model;
pub mod registry;
pub mod time;
pub mod window;

pub use aggregate::Agg;
pub use model::{AgentTags, LateRow, Observation, ObservationBatch, Origin, RejectRow, SeriesKey, WindowBatch};
pub use time::{Watermarks, WindowSpec};

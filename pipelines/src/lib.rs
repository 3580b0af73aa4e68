//! Dragonflow jobs: the spec, the sources, and the wiring of operators and sinks on timely
//! workers.
//!
//! - [`spec`]: the job spec (TOML or JSON), validated with errors that name the field.
//! - [`source`]: file and Kafka readers and the source operator that stamps event time.
//! - [`sink`]: the operator that feeds the sinks.
//! - [`fleet`]: the registry-updates source of the fleet metrics (groups, rankings, health).
//! - [`job`]: one function that wires a job top to bottom and runs it.
//! - [`control`], [`metrics`]: stopping a job, and watching it.

pub mod alarms;
pub mod checkpoint;
pub mod control;
pub mod fleet;
pub mod job;
pub mod metrics;
pub mod sink;
pub mod source;
pub mod spec;

pub use control::JobControl;
pub use job::{run_job, JobError, JobReport, RunOptions};
pub use metrics::JobMetrics;
pub use spec::{JobSpec, SpecError};

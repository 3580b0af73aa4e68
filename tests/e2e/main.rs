//! End-to-end tests of the `dragonflow` binary and the engine's crates together.
//!
//! One test crate (one link of DataFusion) with a module per area. Tests here need no outside
//! service: Kafka is librdkafka's in-process mock cluster. Tests against real services (tansu,
//! InfluxDB, aiosmtpd) live in `services`, `crash`, `registry_topic`, `server`, `alarms` and
//! `pull`, and need what `tests/run-all.sh` starts or installs.

mod alarms;
mod cli;
mod common;
mod crash;
mod demo;
mod file_job;
mod groups;
mod kafka_mock;
mod pull;
mod registry_topic;
mod server;
mod services;

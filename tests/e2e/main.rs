//! End-to-end tests of the `dragonflow` binary and the engine's crates together.
//!
//! One test crate (one link of DataFusion) with a module per area. Tests here need no outside
//! service: Kafka is librdkafka's in-process mock cluster. Tests against real services (tansu,
//! InfluxDB) live in `services`, and need what `tests/run-all.sh` starts.

mod alarms;
mod cli;
mod common;
mod crash;
mod demo;
mod file_job;
mod groups;
mod kafka_mock;
mod registry_topic;
mod services;

//! The job spec: one serde tree, read from TOML or JSON, validated before anything starts.
//!
//! Errors name the field (`window.size`, `sink[1].path`, …) and say what was expected.

use std::path::PathBuf;
use std::time::Duration;

use operators::decode::{Format, TimestampUnit};
use serde::{Deserialize, Serialize};

/// A whole job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Optional name, shown in status lines.
    #[serde(default)]
    pub name: Option<String>,
    pub source: SourceSpec,
    #[serde(default)]
    pub window: WindowConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawSource")]
pub enum SourceSpec {
    File(FileSource),
    Kafka(KafkaSource),
}

impl SourceSpec {
    pub fn format(&self) -> Format {
        match self {
            SourceSpec::File(f) => f.format,
            SourceSpec::Kafka(k) => k.format,
        }
    }
    pub fn timestamp_unit(&self) -> TimestampUnit {
        match self {
            SourceSpec::File(f) => f.timestamp_unit,
            SourceSpec::Kafka(k) => k.timestamp_unit,
        }
    }
}

fn default_format() -> Format {
    Format::Json
}

/// A file of JSON lines or line protocol (`.gz` accepted), for replay and backfill.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    pub path: PathBuf,
    #[serde(default = "default_format")]
    pub format: Format,
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
}

/// Where a Kafka source starts when the job starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Earliest,
    Latest,
    /// The consumer group's committed offsets (earliest where there are none).
    #[default]
    Committed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// `host:port,host:port`
    pub brokers: String,
    /// Topics to read; or `topic_regex`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression over topic names, e.g. `^ns.*_mcis_.*` for per-agent topics.
    #[serde(default)]
    pub topic_regex: Option<String>,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub start: StartAt,
    #[serde(default = "default_format")]
    pub format: Format,
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// A partition without messages for this long stops holding the watermark back.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Finish once every partition has been read up to the end it had when the job started.
    #[serde(default)]
    pub stop_at_end: bool,
    /// Extra librdkafka consumer properties.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

fn default_group() -> String {
    "dragonflow".into()
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default = "default_size", with = "humantime_serde")]
    pub size: Duration,
    #[serde(default = "default_lateness", with = "humantime_serde")]
    pub lateness: Duration,
    /// How far ahead of the partition's watermark (or the clock) a timestamp may be.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub max_skew: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { size: default_size(), lateness: default_lateness(), max_skew: default_skew() }
    }
}

fn default_size() -> Duration {
    Duration::from_secs(10)
}
fn default_lateness() -> Duration {
    Duration::from_secs(5)
}
fn default_skew() -> Duration {
    Duration::from_secs(600)
}

/// Bounds on the state a job keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// A series that has not reported for this long (event time) is forgotten.
    #[serde(default = "default_series_ttl", with = "humantime_serde")]
    pub series_ttl: Duration,
    /// Most live series in the job (shared evenly by the workers); new series beyond it are
    /// rejected with a reason. Absent: no limit.
    #[serde(default)]
    pub max_series: Option<u64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { series_ttl: default_series_ttl(), max_series: None }
    }
}

fn default_series_ttl() -> Duration {
    Duration::from_secs(600)
}

/// Checkpoints of a Kafka job: where, and how often one is attempted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the checkpoints; default `<first parquet sink>/_checkpoints/<group>`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often (wall clock) a checkpoint is attempted once the sinks have made progress durable.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { dir: None, interval: default_checkpoint_interval() }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Measurement → tag naming its instance; merged over the defaults
    /// (`cpu = "cpu"`, `disk = "path"`, `diskio = "name"`, `net = "interface"`).
    #[serde(default)]
    pub instance_tags: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawSink")]
pub enum SinkSpec {
    Parquet(ParquetSink),
    #[serde(rename = "influxdb")]
    InfluxDb(InfluxSink),
}

/// InfluxDB 1.x: one point per (agent, measurement, instance, window).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InfluxSink {
    pub url: String,
    pub database: String,
    pub retention_policy: String,
    pub retention: String,
    pub username: Option<String>,
    /// Never serialised back out.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub batch_lines: usize,
    pub gzip: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSink {
    pub path: PathBuf,
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
}

fn default_flush() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    File,
    Kafka,
}

/// Every source field in one flat struct, so that errors keep their path (`source.format`);
/// the kind decides which fields apply.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: SourceKind,
    path: Option<PathBuf>,
    #[serde(default = "default_format")]
    format: Format,
    #[serde(default)]
    timestamp_unit: TimestampUnit,
    brokers: Option<String>,
    topics: Option<Vec<String>>,
    topic_regex: Option<String>,
    group: Option<String>,
    start: Option<StartAt>,
    #[serde(default, with = "humantime_serde::option")]
    idle_timeout: Option<Duration>,
    stop_at_end: Option<bool>,
    options: Option<std::collections::BTreeMap<String, String>>,
}

/// Marks a conversion error with the sub-field it concerns, for [`path_error`].
fn at(field: &str, message: impl std::fmt::Display) -> String {
    format!("@{field}@{message}")
}

fn not_for(kind: &str, fields: &[(&str, bool)]) -> Result<(), String> {
    match fields.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(at(name, format!("does not apply to kind = \"{kind}\""))),
        None => Ok(()),
    }
}

impl TryFrom<RawSource> for SourceSpec {
    type Error = String;
    fn try_from(r: RawSource) -> Result<Self, String> {
        match r.kind {
            SourceKind::File => {
                not_for(
                    "file",
                    &[
                        ("brokers", r.brokers.is_some()),
                        ("topics", r.topics.is_some()),
                        ("topic_regex", r.topic_regex.is_some()),
                        ("group", r.group.is_some()),
                        ("start", r.start.is_some()),
                        ("idle_timeout", r.idle_timeout.is_some()),
                        ("stop_at_end", r.stop_at_end.is_some()),
                        ("options", r.options.is_some()),
                    ],
                )?;
                let path = r.path.ok_or_else(|| at("path", "missing: expected the path of a file"))?;
                Ok(SourceSpec::File(FileSource { path, format: r.format, timestamp_unit: r.timestamp_unit }))
            }
            SourceKind::Kafka => {
                not_for("kafka", &[("path", r.path.is_some())])?;
                let brokers = r.brokers.ok_or_else(|| at("brokers", "missing: expected \"host:port[,host:port…]\""))?;
                Ok(SourceSpec::Kafka(KafkaSource {
                    brokers,
                    topics: r.topics.unwrap_or_default(),
                    topic_regex: r.topic_regex,
                    group: r.group.unwrap_or_else(default_group),
                    start: r.start.unwrap_or_default(),
                    format: r.format,
                    timestamp_unit: r.timestamp_unit,
                    idle_timeout: r.idle_timeout.unwrap_or_else(default_idle),
                    stop_at_end: r.stop_at_end.unwrap_or(false),
                    options: r.options.unwrap_or_default(),
                }))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SinkKind {
    Parquet,
    #[serde(rename = "influxdb")]
    InfluxDb,
}

/// Every sink field in one flat struct (see [`RawSource`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: SinkKind,
    path: Option<PathBuf>,
    #[serde(default, with = "humantime_serde::option")]
    flush_interval: Option<Duration>,
    url: Option<String>,
    database: Option<String>,
    retention_policy: Option<String>,
    retention: Option<String>,
    username: Option<String>,
    password: Option<String>,
    batch_lines: Option<usize>,
    gzip: Option<bool>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    retry_for: Option<Duration>,
}

impl TryFrom<RawSink> for SinkSpec {
    type Error = String;
    fn try_from(r: RawSink) -> Result<Self, String> {
        match r.kind {
            SinkKind::Parquet => {
                not_for(
                    "parquet",
                    &[
                        ("url", r.url.is_some()),
                        ("database", r.database.is_some()),
                        ("retention_policy", r.retention_policy.is_some()),
                        ("retention", r.retention.is_some()),
                        ("username", r.username.is_some()),
                        ("password", r.password.is_some()),
                        ("batch_lines", r.batch_lines.is_some()),
                        ("gzip", r.gzip.is_some()),
                        ("timeout", r.timeout.is_some()),
                        ("retry_for", r.retry_for.is_some()),
                    ],
                )?;
                let path = r.path.ok_or_else(|| at("path", "missing: expected the lake's directory"))?;
                Ok(SinkSpec::Parquet(ParquetSink {
                    path,
                    flush_interval: r.flush_interval.unwrap_or_else(default_flush),
                }))
            }
            SinkKind::InfluxDb => {
                not_for("influxdb", &[("path", r.path.is_some())])?;
                let url = r.url.ok_or_else(|| at("url", "missing: expected \"http://host:8086\""))?;
                if !url.starts_with("http://") {
                    return Err(at("url", format!("expected \"http://host:port\", got {url:?}")));
                }
                Ok(SinkSpec::InfluxDb(InfluxSink {
                    url,
                    database: r.database.unwrap_or_else(|| "cbmon".into()),
                    retention_policy: r.retention_policy.unwrap_or_else(|| "df_rp".into()),
                    retention: r.retention.unwrap_or_else(|| "4w".into()),
                    username: r.username,
                    password: r.password,
                    batch_lines: r.batch_lines.unwrap_or(5000),
                    gzip: r.gzip.unwrap_or(true),
                    timeout: r.timeout.unwrap_or(Duration::from_secs(10)),
                    flush_interval: r.flush_interval.unwrap_or_else(default_flush),
                    retry_for: r.retry_for.unwrap_or(Duration::from_secs(600)),
                }))
            }
        }
    }
}

/// A spec that was refused: which field, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid job spec: `{field}`: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into() }
    }
}

impl JobSpec {
    /// Parses TOML, or JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = if text.trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| path_error(e.path().to_string(), e.inner()))?
        } else {
            let de = toml::Deserializer::parse(text).map_err(|e| SpecError::new("(document)", e.to_string()))?;
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path().to_string(), e.inner()))?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Reads and parses a spec file.
    pub fn load(path: &std::path::Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::new("(file)", format!("cannot read {}: {e}", path.display())))?;
        JobSpec::parse(&text)
    }

    /// Checks what serde cannot: values in range, combinations that make sense.
    pub fn validate(&self) -> Result<(), SpecError> {
        let w = &self.window;
        if w.size < Duration::from_secs(1) {
            return Err(SpecError::new("window.size", "expected a window of at least 1s, e.g. \"10s\""));
        }
        if !w.size.as_nanos().is_multiple_of(1_000_000_000) {
            return Err(SpecError::new("window.size", "expected a whole number of seconds, e.g. \"10s\""));
        }
        if w.size > Duration::from_secs(7 * 86_400) {
            return Err(SpecError::new("window.size", "expected a window of at most 7 days"));
        }
        if w.lateness > Duration::from_secs(86_400) {
            return Err(SpecError::new("window.lateness", "expected at most 1 day"));
        }
        match &self.source {
            SourceSpec::File(f) => {
                if f.path.as_os_str().is_empty() {
                    return Err(SpecError::new("source.path", "expected the path of a file"));
                }
            }
            SourceSpec::Kafka(k) => {
                if k.brokers.trim().is_empty() {
                    return Err(SpecError::new("source.brokers", "expected \"host:port[,host:port…]\""));
                }
                match (&k.topics.is_empty(), &k.topic_regex) {
                    (true, None) => {
                        return Err(SpecError::new("source.topics", "expected a list of topics, or `topic_regex`"))
                    }
                    (false, Some(_)) => {
                        return Err(SpecError::new(
                            "source.topic_regex",
                            "give either `topics` or `topic_regex`, not both",
                        ))
                    }
                    _ => {}
                }
                if let Some(re) = &k.topic_regex {
                    regex::Regex::new(re).map_err(|e| {
                        SpecError::new("source.topic_regex", format!("invalid regular expression: {e}"))
                    })?;
                }
                if k.group.trim().is_empty() {
                    return Err(SpecError::new("source.group", "expected a consumer group name"));
                }
                if k.idle_timeout.is_zero() {
                    return Err(SpecError::new("source.idle_timeout", "expected a positive duration, e.g. \"30s\""));
                }
            }
        }
        if self.sinks.is_empty() {
            return Err(SpecError::new("sink", "expected at least one [[sink]]"));
        }
        for (i, s) in self.sinks.iter().enumerate() {
            match s {
                SinkSpec::InfluxDb(s) => {
                    if s.database.is_empty() || s.retention_policy.is_empty() {
                        return Err(SpecError::new(format!("sink[{i}].database"), "expected a name"));
                    }
                    if s.batch_lines == 0 {
                        return Err(SpecError::new(format!("sink[{i}].batch_lines"), "expected at least 1"));
                    }
                    if s.retention.is_empty() || !s.retention.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(SpecError::new(
                            format!("sink[{i}].retention"),
                            "expected an InfluxQL duration like \"4w\" or \"INF\"",
                        ));
                    }
                }
                SinkSpec::Parquet(p) => {
                    if p.path.as_os_str().is_empty() {
                        return Err(SpecError::new(format!("sink[{i}].path"), "expected the lake's directory"));
                    }
                    if p.flush_interval.is_zero() {
                        return Err(SpecError::new(
                            format!("sink[{i}].flush_interval"),
                            "expected a positive duration",
                        ));
                    }
                }
            }
        }
        for (m, t) in &self.keys.instance_tags {
            if m.is_empty() || t.is_empty() {
                return Err(SpecError::new("keys.instance_tags", "expected measurement = \"tag\" pairs"));
            }
        }
        // A released series id may still sit in an open window; the ttl keeps them far apart.
        let floor = (w.size + w.lateness) * 2;
        if self.limits.series_ttl < floor {
            return Err(SpecError::new(
                "limits.series_ttl",
                format!(
                    "expected at least twice window.size + window.lateness ({})",
                    humantime::format_duration(floor)
                ),
            ));
        }
        if self.limits.max_series == Some(0) {
            return Err(SpecError::new("limits.max_series", "expected a positive number of series (or leave it out)"));
        }
        if self.checkpoint.interval < Duration::from_millis(100) {
            return Err(SpecError::new("checkpoint.interval", "expected at least 100ms, e.g. \"5s\""));
        }
        if matches!(self.source, SourceSpec::Kafka(_)) && self.checkpoint_dir().is_none() {
            return Err(SpecError::new(
                "checkpoint.dir",
                "a Kafka job without a parquet sink needs a directory for its checkpoints",
            ));
        }
        Ok(())
    }

    /// A short name of what the job reads (topics and group, or the file), the same every time
    /// the job runs: window files carry it, so a job run again replaces its own files and jobs
    /// sharing a lake keep theirs.
    pub fn source_id(&self) -> String {
        let text = match &self.source {
            SourceSpec::File(f) => format!("file:{}", f.path.display()),
            SourceSpec::Kafka(k) => {
                format!("kafka:{}:{}:{}", k.topics.join(","), k.topic_regex.as_deref().unwrap_or(""), k.group)
            }
        };
        format!("{:08x}", operators::model::stable_hash(&[&text]) as u32)
    }

    /// Where a Kafka job keeps its checkpoints.
    pub fn checkpoint_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.checkpoint.dir {
            return Some(dir.clone());
        }
        let SourceSpec::Kafka(k) = &self.source else { return None };
        self.sinks.iter().find_map(|s| match s {
            SinkSpec::Parquet(p) => Some(p.path.join("_checkpoints").join(sanitize(&k.group))),
            _ => None,
        })
    }
}

/// A group name as one path component.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

fn path_error(path: String, inner: &dyn std::fmt::Display) -> SpecError {
    let mut field = if path.is_empty() || path == "." { "(document)".to_string() } else { path };
    let mut message = inner.to_string();
    // A conversion error names its sub-field as `@name@message`.
    if let Some(start) = message.find('@') {
        if let Some(len) = message[start + 1..].find('@') {
            let sub = message[start + 1..start + 1 + len].to_string();
            message = format!("{}{}", &message[..start], &message[start + len + 2..]);
            field = format!("{field}.{sub}");
        }
    }
    // toml prefixes messages with a location block; keep the first meaningful line.
    let message = message.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(&message).trim().to_string();
    // A missing field is named as the field itself.
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(name) = rest.split('`').next() {
            field = if field == "(document)" { name.to_string() } else { format!("{field}.{name}") };
        }
    }
    SpecError { field, message }
}

/// Durations written the way people write them: "10s", "500ms", "5m", "4w".
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse::<D::Error>(&text)
    }

    fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!("expected a duration like \"10s\", \"500ms\" or \"5m\", got {text:?} ({e})"))
        })
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| super::parse::<D::Error>(&t)).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_id_names_what_is_read() {
        let spec = |group: &str| {
            let text = format!(
                "[source]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ntopics = [\"m\"]\ngroup = \"{group}\"\n[[sink]]\nkind = \"parquet\"\npath = \"lake\"\n"
            );
            super::JobSpec::parse(&text).unwrap()
        };
        assert_eq!(spec("a").source_id(), spec("a").source_id());
        assert_ne!(spec("a").source_id(), spec("b").source_id());
        assert_eq!(spec("a").source_id().len(), 8);
        assert!(spec("a").checkpoint_dir().unwrap().ends_with("_checkpoints/a"));
    }

    use super::*;

    const GOOD: &str = r#"
[source]
kind = "file"
path = "metrics.jsonl"
format = "json"
[window]
size = "10s"
lateness = "5s"
[[sink]]
kind = "parquet"
path = "lake"
"#;

    #[test]
    fn parses_the_documented_example() {
        let spec = JobSpec::parse(GOOD).unwrap();
        assert_eq!(spec.window.size, Duration::from_secs(10));
        assert!(matches!(spec.source, SourceSpec::File(_)));
        assert_eq!(spec.sinks.len(), 1);
    }

    #[test]
    fn json_is_accepted_too() {
        let spec = JobSpec::parse(
            r#"{"source":{"kind":"kafka","brokers":"b:9092","topics":["metrics"]},"sink":[{"kind":"parquet","path":"l"}]}"#,
        )
        .unwrap();
        assert!(matches!(spec.source, SourceSpec::Kafka(_)));
    }

    fn refused(text: &str) -> SpecError {
        JobSpec::parse(text).expect_err("spec should be refused")
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (GOOD.replace("size = \"10s\"", "size = \"ten\""), "window.size", "duration"),
            (GOOD.replace("size = \"10s\"", "size = \"0s\""), "window.size", "at least 1s"),
            (GOOD.replace("size = \"10s\"", "size = \"1500ms\""), "window.size", "whole number"),
            (GOOD.replace("kind = \"file\"", "kind = \"ftp\""), "source.kind", "unknown variant"),
            (
                GOOD.replace("format = \"json\"", "format = \"json\"\nbrokers = \"x\""),
                "source.brokers",
                "does not apply",
            ),
            (GOOD.replace("path = \"metrics.jsonl\"", ""), "source.path", "missing"),
            (GOOD.replace("format = \"json\"", "format = \"xml\""), "source.format", "unknown variant"),
            (GOOD.replace("lateness = \"5s\"", "latenes = \"5s\""), "window", "unknown field"),
            (GOOD.replace("kind = \"parquet\"", "kind = \"csv\""), "sink[0].kind", "unknown variant"),
            (GOOD.replace("path = \"lake\"", "path = \"\""), "sink[0].path", "directory"),
            (GOOD.replace("[[sink]]\nkind = \"parquet\"\npath = \"lake\"", ""), "sink", "missing field"),
        ];
        for (text, field, msg) in cases {
            let e = refused(&text);
            assert!(e.field.starts_with(field), "{text}\n-> field {} ({})", e.field, e.message);
            assert!(e.message.contains(msg), "{text}\n-> {}", e.message);
        }
    }

    #[test]
    fn kafka_needs_topics() {
        let e = refused("[source]\nkind = \"kafka\"\nbrokers = \"x:1\"\n[[sink]]\nkind = \"parquet\"\npath = \"l\"\n");
        assert_eq!(e.field, "source.topics");
        let e = refused(
            "[source]\nkind = \"kafka\"\nbrokers = \"x:1\"\ntopic_regex = \"(\"\n[[sink]]\nkind = \"parquet\"\npath = \"l\"\n",
        );
        assert_eq!(e.field, "source.topic_regex");
    }
}

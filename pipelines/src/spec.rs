//! The job spec: one serde tree, read from TOML or JSON, validated before anything starts.
//!
//! Errors name the field (`window.size`, `sink[1].path`, …) and say what was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use operators::aggregate::Counters;
use operators::alarm::Comparison;
use operators::decode::{Format, TimestampUnit};
use operators::groups::vm::BUILTIN_METRICS;
use operators::groups::{CustomMetric, GroupsConfig, Level, OverVms, PerVm};
use serde::{Deserialize, Serialize};
pub use sinks::notify::{HandlerKind, HandlerSpec, SlackHandler, SmtpHandler, SmtpTls, WebhookHandler};
use sinks::spec_util::{at, humantime_serde, not_for};

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
    /// Group metrics, rankings, agents and agent health (`docs/groups.md`).
    #[serde(default)]
    pub groups: GroupsSpec,
    /// Where agent records come from besides the data, and agent health.
    #[serde(default)]
    pub registry: RegistrySpec,
    /// Which fields are cumulative counters (they get a rate per window).
    #[serde(default)]
    pub counters: CountersSpec,
    /// `[[alarm]]`: warning/critical rules on window results.
    #[serde(default, rename = "alarm")]
    pub alarms: Vec<AlarmSpec>,
    /// `[[handler]]`: where alarm events are delivered.
    #[serde(default, rename = "handler")]
    pub handlers: Vec<HandlerSpec>,
    /// `[pull]`: also poll the registry's pull agents over HTTP, into the same windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullSpec>,
}

/// `[pull]`: the registry file's records with `mechanism = "pull"`, `state = "enable"` and a
/// `pull_url` are polled for each measurement every `interval`, spread over the workers by key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSpec {
    #[serde(default = "default_pull_measurements")]
    pub measurements: Vec<String>,
    #[serde(default = "default_pull_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// One call.
    #[serde(default = "default_pull_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls in flight in the process.
    #[serde(default = "default_pull_concurrency")]
    pub concurrency: usize,
    /// Consecutive failed polls after which an agent is unhealthy (and only probed at
    /// `healthcheck_interval` until it answers).
    #[serde(default = "default_pull_failures")]
    pub failures_unhealthy: u32,
    #[serde(default = "default_pull_healthcheck", with = "humantime_serde")]
    pub healthcheck_interval: Duration,
}

fn default_pull_measurements() -> Vec<String> {
    crate::source::pull::PullConfig::default().measurements
}
fn default_pull_interval() -> Duration {
    crate::source::pull::PullConfig::default().interval
}
fn default_pull_timeout() -> Duration {
    crate::source::pull::PullConfig::default().timeout
}
fn default_pull_concurrency() -> usize {
    crate::source::pull::PullConfig::default().concurrency
}
fn default_pull_failures() -> u32 {
    crate::source::pull::PullConfig::default().failures_unhealthy
}
fn default_pull_healthcheck() -> Duration {
    crate::source::pull::PullConfig::default().healthcheck_interval
}

impl PullSpec {
    /// The pull source's settings.
    pub fn config(&self) -> crate::source::pull::PullConfig {
        crate::source::pull::PullConfig {
            measurements: self.measurements.clone(),
            interval: self.interval,
            timeout: self.timeout,
            concurrency: self.concurrency,
            failures_unhealthy: self.failures_unhealthy,
            healthcheck_interval: self.healthcheck_interval,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawSource")]
pub enum SourceSpec {
    File(FileSource),
    Kafka(KafkaSource),
    /// `kind = "pull"`: no pushed input; the job's records all come from `[pull]`.
    Pull,
}

impl SourceSpec {
    pub fn format(&self) -> Format {
        match self {
            SourceSpec::File(f) => f.format,
            SourceSpec::Kafka(k) => k.format,
            SourceSpec::Pull => Format::Json,
        }
    }
    pub fn timestamp_unit(&self) -> TimestampUnit {
        match self {
            SourceSpec::File(f) => f.timestamp_unit,
            SourceSpec::Kafka(k) => k.timestamp_unit,
            SourceSpec::Pull => TimestampUnit::default(),
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

/// `[groups]`: which group levels are computed, the rankings' k, extra group metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsSpec {
    /// `false`: no groups, rankings, agents or agent health.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_levels", deserialize_with = "level_list")]
    pub levels: Vec<Level>,
    /// Top-k and bottom-k of the rankings.
    #[serde(default = "default_k")]
    pub k: usize,
    /// `[[groups.metric]]`: group metrics besides the built-in ones.
    #[serde(default, rename = "metric")]
    pub metrics: Vec<GroupMetricSpec>,
}

impl Default for GroupsSpec {
    fn default() -> Self {
        GroupsSpec { enabled: true, levels: default_levels(), k: default_k(), metrics: Vec::new() }
    }
}

fn default_true() -> bool {
    true
}
fn default_levels() -> Vec<Level> {
    Level::ALL.to_vec()
}
fn default_k() -> usize {
    5
}

/// Group levels by name, each error naming its element (`groups.levels[1]`).
fn level_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Level>, D::Error> {
    struct Named(Level);
    impl<'de> Deserialize<'de> for Named {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let name = String::deserialize(d)?;
            name.parse().map(Named).map_err(serde::de::Error::custom)
        }
    }
    Ok(Vec::<Named>::deserialize(d)?.into_iter().map(|n| n.0).collect())
}

/// One `[[groups.metric]]`: `aggregate` of `measurement.field` per VM, combined `over_vms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMetricSpec {
    pub name: String,
    pub measurement: String,
    pub field: String,
    pub aggregate: PerVm,
    pub over_vms: OverVms,
}

/// `[registry]`: agent records from a file and/or a Kafka topic, and agent health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// A JSON or CSV file of records, read again when it changes. A relative path is taken as
    /// given (relative to the working directory), like the other paths of the spec.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A topic of registry updates on the Kafka source's brokers.
    #[serde(default)]
    pub topic: Option<String>,
    /// Silent windows before an agent is unhealthy.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Event time between two full snapshots in the `agents` table.
    #[serde(default = "default_snapshot_every", with = "humantime_serde")]
    pub snapshot_every: Duration,
    /// How often (wall clock) the file is checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for RegistrySpec {
    fn default() -> Self {
        RegistrySpec {
            file: None,
            topic: None,
            unhealthy_after: default_unhealthy_after(),
            snapshot_every: default_snapshot_every(),
            reload_interval: default_reload_interval(),
        }
    }
}

fn default_unhealthy_after() -> u32 {
    3
}
fn default_snapshot_every() -> Duration {
    Duration::from_secs(60)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}

/// `[counters]`: the cumulative counters, as `measurement` (all its fields) or
/// `measurement.field`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountersSpec {
    #[serde(default = "default_counter_fields")]
    pub fields: Vec<String>,
}

impl Default for CountersSpec {
    fn default() -> Self {
        CountersSpec { fields: default_counter_fields() }
    }
}

fn default_counter_fields() -> Vec<String> {
    vec!["diskio".into(), "net".into()]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawSink")]
pub enum SinkSpec {
    Parquet(ParquetSink),
    #[serde(rename = "influxdb")]
    InfluxDb(InfluxSink),
}

/// InfluxDB 1.x: one point per (agent, measurement, instance, window).
#[derive(Clone, Serialize, Deserialize)]
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

/// The password is never printed.
impl std::fmt::Debug for InfluxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxSink")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("retention_policy", &self.retention_policy)
            .field("retention", &self.retention)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("batch_lines", &self.batch_lines)
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .field("flush_interval", &self.flush_interval)
            .field("retry_for", &self.retry_for)
            .finish()
    }
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
    Pull,
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

impl RawSource {
    /// The fields only a Kafka source takes, and whether each is given.
    fn kafka_fields(&self) -> [(&'static str, bool); 8] {
        [
            ("brokers", self.brokers.is_some()),
            ("topics", self.topics.is_some()),
            ("topic_regex", self.topic_regex.is_some()),
            ("group", self.group.is_some()),
            ("start", self.start.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("stop_at_end", self.stop_at_end.is_some()),
            ("options", self.options.is_some()),
        ]
    }
}

impl TryFrom<RawSource> for SourceSpec {
    type Error = String;
    fn try_from(r: RawSource) -> Result<Self, String> {
        match r.kind {
            SourceKind::File => {
                not_for("file", &r.kafka_fields())?;
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
            SourceKind::Pull => {
                not_for("pull", &r.kafka_fields())?;
                not_for("pull", &[("path", r.path.is_some())])?;
                Ok(SourceSpec::Pull)
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

/// How a rule's series are reduced to one value per window, and whose value it watches.
pub use operators::alarm::{RuleAggregate as AlarmAggregate, RuleTarget as AlarmTarget};

/// The value a rule watches, serialised flat into its `[[alarm]]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AlarmWatch {
    /// `aggregate` of `measurement.field` per window.
    Field { measurement: String, field: String, aggregate: AlarmAggregate },
    /// A group metric of `level`: a built-in one or a `[[groups.metric]]`.
    Group { level: Level, metric: String },
}

/// The placeholders a rule's `message` may use.
pub const ALARM_PLACEHOLDERS: &[&str] = &["rule", "level", "value", "threshold", "target", "window_end"];

/// The `message` of a rule that gives none.
pub const DEFAULT_ALARM_MESSAGE: &str = "{rule} {level}: {target} {value} (threshold {threshold}) at {window_end}";

/// One `[[alarm]]`: a warning and/or critical threshold on a watched value, per target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAlarm")]
pub struct AlarmSpec {
    /// Unique among the rules.
    pub name: String,
    #[serde(flatten)]
    pub watch: AlarmWatch,
    /// Default `all`.
    pub target: AlarmTarget,
    /// One VM or group of `target` only.
    pub target_id: Option<String>,
    pub comparison: Comparison,
    pub warn: Option<f64>,
    pub crit: Option<f64>,
    /// Consecutive breaching windows before WARNING is raised; default 1.
    pub warn_windows: u32,
    /// Consecutive breaching windows before CRITICAL is raised; default 1.
    pub crit_windows: u32,
    /// WARNING falls only once the value is past this (on the non-breaching side of `warn`).
    pub warn_reset: Option<f64>,
    /// CRITICAL falls only once the value is past this (on the non-breaching side of `crit`).
    pub crit_reset: Option<f64>,
    /// Names of `[[handler]]`s; default none (events are still logged).
    pub handlers: Vec<String>,
    /// A template over [`ALARM_PLACEHOLDERS`]; default [`DEFAULT_ALARM_MESSAGE`].
    pub message: String,
    /// Silent windows before a target gets `NODATA`; `None`: `registry.unhealthy_after`.
    pub nodata_after: Option<u32>,
}

impl AlarmSpec {
    /// Silent windows before a target gets `NODATA`.
    pub fn nodata_windows(&self, registry: &RegistrySpec) -> u32 {
        self.nodata_after.unwrap_or(registry.unhealthy_after)
    }
}

/// Every rule field in one flat struct (see [`RawSource`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    name: String,
    measurement: Option<String>,
    field: Option<String>,
    aggregate: Option<AlarmAggregate>,
    level: Option<Level>,
    metric: Option<String>,
    #[serde(default)]
    target: AlarmTarget,
    target_id: Option<String>,
    comparison: Comparison,
    warn: Option<f64>,
    crit: Option<f64>,
    warn_windows: Option<u32>,
    crit_windows: Option<u32>,
    warn_reset: Option<f64>,
    crit_reset: Option<f64>,
    #[serde(default)]
    handlers: Vec<String>,
    message: Option<String>,
    nodata_after: Option<u32>,
}

impl TryFrom<RawAlarm> for AlarmSpec {
    type Error = String;
    fn try_from(r: RawAlarm) -> Result<Self, String> {
        let by_field = [
            ("measurement", r.measurement.is_some()),
            ("field", r.field.is_some()),
            ("aggregate", r.aggregate.is_some()),
        ];
        let by_group = [("level", r.level.is_some()), ("metric", r.metric.is_some())];
        let watch = match (by_field.iter().any(|f| f.1), by_group.iter().find(|f| f.1)) {
            (true, Some((name, _))) => {
                return Err(at(
                    name,
                    "give either `measurement`, `field` and `aggregate`, or `level` and `metric`, not both",
                ))
            }
            (false, None) => return Err(at(
                "measurement",
                "missing: expected `measurement`, `field` and `aggregate`, or a group metric's `level` and `metric`",
            )),
            (true, None) => AlarmWatch::Field {
                measurement: r
                    .measurement
                    .ok_or_else(|| at("measurement", "missing: expected a measurement, e.g. \"cpu\""))?,
                field: r.field.ok_or_else(|| at("field", "missing: expected a field, e.g. \"usage_user\""))?,
                aggregate: r
                    .aggregate
                    .ok_or_else(|| at("aggregate", "missing: expected mean, min, max, last, count or rate"))?,
            },
            (false, Some(_)) => AlarmWatch::Group {
                level: r.level.ok_or_else(|| at("level", "missing: expected ns, mcis, csp or os"))?,
                metric: r
                    .metric
                    .ok_or_else(|| at("metric", "missing: expected a group metric, e.g. \"cpu_util_mean\""))?,
            },
        };
        Ok(AlarmSpec {
            name: r.name,
            watch,
            target: r.target,
            target_id: r.target_id,
            comparison: r.comparison,
            warn: r.warn,
            crit: r.crit,
            warn_windows: r.warn_windows.unwrap_or(1),
            crit_windows: r.crit_windows.unwrap_or(1),
            warn_reset: r.warn_reset,
            crit_reset: r.crit_reset,
            handlers: r.handlers,
            message: r.message.unwrap_or_else(|| DEFAULT_ALARM_MESSAGE.into()),
            nodata_after: r.nodata_after,
        })
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
            SourceSpec::Pull => {}
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
        self.validate_counters()?;
        self.validate_groups()?;
        self.validate_registry()?;
        self.validate_pull()?;
        validate_handlers(&self.handlers)?;
        validate_alarms(&self.alarms, &self.handlers, &self.groups)
    }

    fn validate_counters(&self) -> Result<(), SpecError> {
        for (i, entry) in self.counters.fields.iter().enumerate() {
            let whole = match entry.split_once('.') {
                Some((m, f)) => !m.is_empty() && !f.is_empty(),
                None => !entry.is_empty(),
            };
            if !whole {
                return Err(SpecError::new(
                    format!("counters.fields[{i}]"),
                    format!("expected \"measurement\" or \"measurement.field\", got {entry:?}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_groups(&self) -> Result<(), SpecError> {
        let g = &self.groups;
        for (i, level) in g.levels.iter().enumerate() {
            if g.levels[..i].contains(level) {
                return Err(SpecError::new(format!("groups.levels[{i}]"), format!("\"{level}\" is listed twice")));
            }
        }
        if g.k == 0 {
            return Err(SpecError::new("groups.k", "must be at least 1"));
        }
        for (i, m) in g.metrics.iter().enumerate() {
            let at = |field: &str| format!("groups.metric[{i}].{field}");
            if m.name.trim().is_empty() {
                return Err(SpecError::new(at("name"), "expected a metric name, e.g. \"tps\""));
            }
            if BUILTIN_METRICS.contains(&m.name.as_str()) {
                return Err(SpecError::new(at("name"), format!("{:?} is the name of a built-in group metric", m.name)));
            }
            if let Some(j) = g.metrics[..i].iter().position(|o| o.name == m.name) {
                return Err(SpecError::new(
                    at("name"),
                    format!("{:?} is already the name of groups.metric[{j}]", m.name),
                ));
            }
            if m.measurement.is_empty() {
                return Err(SpecError::new(at("measurement"), "expected a measurement, e.g. \"nginx\""));
            }
            if m.field.is_empty() {
                return Err(SpecError::new(at("field"), "expected a field of the measurement"));
            }
        }
        Ok(())
    }

    fn validate_pull(&self) -> Result<(), SpecError> {
        let Some(pull) = &self.pull else {
            if matches!(self.source, SourceSpec::Pull) {
                return Err(SpecError::new(
                    "pull",
                    "missing: a source of kind \"pull\" needs a [pull] section (measurements, interval, …)",
                ));
            }
            return Ok(());
        };
        if self.registry.file.is_none() && self.registry.topic.is_none() {
            return Err(SpecError::new(
                "pull",
                "needs registry.file or registry.topic: the agents polled are their records with \
                 mechanism = \"pull\" and a pull_url",
            ));
        }
        match pull.config().validate() {
            Err(crate::source::pull::PullError::Config { field, message }) => {
                Err(SpecError::new(format!("pull.{field}"), message))
            }
            _ => Ok(()),
        }
    }

    fn validate_registry(&self) -> Result<(), SpecError> {
        let r = &self.registry;
        if r.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(SpecError::new("registry.file", "expected the path of a JSON or CSV file"));
        }
        if let Some(topic) = &r.topic {
            let SourceSpec::Kafka(k) = &self.source else {
                return Err(SpecError::new("registry.topic", "needs a Kafka source (its brokers serve the topic)"));
            };
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
                return Err(SpecError::new(
                    "registry.topic",
                    format!("expected a Kafka topic name (letters, digits, '.', '_', '-'), got {topic:?}"),
                ));
            }
            let read_as_metrics = k.topics.contains(topic)
                || k.topic_regex
                    .as_deref()
                    .and_then(|re| regex::Regex::new(re).ok())
                    .is_some_and(|re| re.is_match(topic));
            if read_as_metrics {
                return Err(SpecError::new(
                    "registry.topic",
                    format!("{topic:?} is also read by the source as metrics (source.topics or source.topic_regex)"),
                ));
            }
        }
        if r.unhealthy_after == 0 {
            return Err(SpecError::new("registry.unhealthy_after", "must be at least 1"));
        }
        if r.snapshot_every < Duration::from_secs(1) {
            return Err(SpecError::new("registry.snapshot_every", "must be at least 1s, e.g. \"1m\""));
        }
        if r.reload_interval < Duration::from_millis(100) {
            return Err(SpecError::new("registry.reload_interval", "must be at least 100ms, e.g. \"2s\""));
        }
        Ok(())
    }

    /// The cumulative counters of `[counters]`.
    /// The counters: `[counters] fields`, and every field a `[[groups.metric]]` takes the rate of.
    pub fn counters(&self) -> Counters {
        let rated = self.groups.metrics.iter().filter(|m| m.aggregate == PerVm::Rate);
        Counters::new(
            self.counters.fields.iter().cloned().chain(rated.map(|m| format!("{}.{}", m.measurement, m.field))),
        )
    }

    /// What the fleet-metrics stage needs; `None` when `groups.enabled = false`.
    pub fn groups_config(&self) -> Option<GroupsConfig> {
        if !self.groups.enabled {
            return None;
        }
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Some(GroupsConfig {
            levels: self.groups.levels.clone(),
            k: self.groups.k,
            metrics: self
                .groups
                .metrics
                .iter()
                .map(|m| CustomMetric {
                    name: m.name.clone(),
                    measurement: m.measurement.clone(),
                    field: m.field.clone(),
                    aggregate: m.aggregate,
                    over_vms: m.over_vms,
                })
                .collect(),
            unhealthy_after: self.registry.unhealthy_after,
            snapshot_every: nanos(self.registry.snapshot_every),
            window: nanos(self.window.size),
            counters: self.counters(),
        })
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
            SourceSpec::Pull => format!("pull:{}", self.registry.file.as_deref().unwrap_or(Path::new("")).display()),
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

/// Validates alarm rules and handlers kept outside a job spec (the job server's), as
/// [`JobSpec::validate`] validates a spec's `[[alarm]]`s and `[[handler]]`s: the same checks, and
/// errors naming the same fields (`alarm[0].crit`, `handler[1].url`, …) by position in `rules`
/// and `handlers`. Rules on group metrics are checked against `groups`.
pub fn validate_alarm_set(rules: &[AlarmSpec], handlers: &[HandlerSpec], groups: &GroupsSpec) -> Result<(), SpecError> {
    validate_handlers(handlers)?;
    validate_alarms(rules, handlers, groups)
}

/// Checks `[[handler]]`s: names unique and set, timeouts positive, each kind's fields usable.
fn validate_handlers(handlers: &[HandlerSpec]) -> Result<(), SpecError> {
    for (i, h) in handlers.iter().enumerate() {
        let at = |field: &str| format!("handler[{i}].{field}");
        if h.name.trim().is_empty() {
            return Err(SpecError::new(at("name"), "expected a handler name, e.g. \"ops-slack\""));
        }
        if let Some(j) = handlers[..i].iter().position(|o| o.name == h.name) {
            return Err(SpecError::new(at("name"), format!("{:?} is already the name of handler[{j}]", h.name)));
        }
        if h.timeout.is_zero() {
            return Err(SpecError::new(at("timeout"), "expected a positive duration, e.g. \"10s\""));
        }
        let optional_name = |field: &str, value: &Option<String>| match value {
            Some(v) if v.trim().is_empty() => Err(SpecError::new(at(field), "expected a name (or leave it out)")),
            _ => Ok(()),
        };
        match &h.kind {
            HandlerKind::Slack(s) => {
                if !is_http_url(&s.url) {
                    return Err(SpecError::new(at("url"), "expected \"https://hooks.slack.com/services/…\""));
                }
                optional_name("channel", &s.channel)?;
                optional_name("username", &s.username)?;
            }
            HandlerKind::Smtp(s) => {
                if s.host.is_empty() || s.host.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(SpecError::new(
                        at("host"),
                        "expected the SMTP server's host name, e.g. \"smtp.example.com\"",
                    ));
                }
                if s.port == 0 {
                    return Err(SpecError::new(at("port"), "expected a port from 1 to 65535"));
                }
                if !is_mail_address(&s.from) {
                    return Err(SpecError::new(at("from"), "expected an address like \"alarms@example.com\""));
                }
                if s.to.is_empty() {
                    return Err(SpecError::new(at("to"), "expected at least one recipient"));
                }
                if let Some(k) = s.to.iter().position(|a| !is_mail_address(a)) {
                    return Err(SpecError::new(
                        format!("handler[{i}].to[{k}]"),
                        "expected an address like \"ops@example.com\"",
                    ));
                }
                optional_name("username", &s.username)?;
                // A username alone is kept: a serialised spec carries no password.
                if s.password.is_some() && s.username.is_none() {
                    return Err(SpecError::new(at("username"), "missing: `password` needs a `username`"));
                }
            }
            HandlerKind::Webhook(w) => {
                if !is_http_url(&w.url) {
                    return Err(SpecError::new(at("url"), "expected \"http(s)://host/path\""));
                }
                for (name, value) in &w.headers {
                    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                    if name.is_empty() || !name.chars().all(token) {
                        return Err(SpecError::new(at("headers"), format!("{name:?} is not a header name")));
                    }
                    // The value is a secret: the message names the header only.
                    if value.contains(['\r', '\n', '\0']) {
                        return Err(SpecError::new(
                            at("headers"),
                            format!("the value of {name:?} contains a line break"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks `[[alarm]]` rules against each other, the group settings and the `handlers` they name.
fn validate_alarms(alarms: &[AlarmSpec], handlers: &[HandlerSpec], groups: &GroupsSpec) -> Result<(), SpecError> {
    for (i, a) in alarms.iter().enumerate() {
        let at = |field: &str| format!("alarm[{i}].{field}");
        if a.name.trim().is_empty() {
            return Err(SpecError::new(at("name"), "expected a rule name, e.g. \"cpu_high\""));
        }
        if let Some(j) = alarms[..i].iter().position(|o| o.name == a.name) {
            return Err(SpecError::new(at("name"), format!("{:?} is already the name of alarm[{j}]", a.name)));
        }
        match &a.watch {
            AlarmWatch::Field { measurement, field, .. } => {
                if measurement.is_empty() {
                    return Err(SpecError::new(at("measurement"), "expected a measurement, e.g. \"cpu\""));
                }
                if field.is_empty() {
                    return Err(SpecError::new(at("field"), "expected a field of the measurement"));
                }
            }
            AlarmWatch::Group { level, metric } => {
                if !groups.enabled {
                    return Err(SpecError::new(
                        at("level"),
                        "a rule on a group metric needs groups (groups.enabled is false)",
                    ));
                }
                if !groups.levels.contains(level) {
                    return Err(SpecError::new(at("level"), format!("\"{level}\" is not in groups.levels")));
                }
                if !BUILTIN_METRICS.contains(&metric.as_str()) && !groups.metrics.iter().any(|m| m.name == *metric) {
                    return Err(SpecError::new(
                        at("metric"),
                        format!("{metric:?} is neither a built-in group metric nor a [[groups.metric]]"),
                    ));
                }
                if a.target != AlarmTarget::All && a.target.level() != Some(*level) {
                    return Err(SpecError::new(
                        at("target"),
                        format!("a rule on a group metric of level \"{level}\" expects target \"{level}\" or \"all\""),
                    ));
                }
            }
        }
        if let Some(id) = &a.target_id {
            if a.target == AlarmTarget::All {
                return Err(SpecError::new(at("target_id"), "needs a `target` of vm, mcis, ns or csp"));
            }
            if id.trim().is_empty() {
                return Err(SpecError::new(at("target_id"), "expected the id of a VM or group (or leave it out)"));
            }
        }
        let c = a.comparison;
        let numbers = [("warn", a.warn), ("crit", a.crit), ("warn_reset", a.warn_reset), ("crit_reset", a.crit_reset)];
        if let Some((field, _)) = numbers.iter().find(|(_, v)| v.is_some_and(|v| !v.is_finite())) {
            return Err(SpecError::new(at(field), "expected a finite number"));
        }
        match (a.warn, a.crit) {
            (None, None) => return Err(SpecError::new(at("warn"), "expected `warn` or `crit` (or both)")),
            (Some(warn), Some(crit)) => {
                let ordered = match c {
                    Comparison::Gt | Comparison::Ge => crit >= warn,
                    Comparison::Lt | Comparison::Le => crit <= warn,
                    Comparison::Eq | Comparison::Ne => true,
                };
                if !ordered {
                    let side = if matches!(c, Comparison::Gt | Comparison::Ge) { "at least" } else { "at most" };
                    return Err(SpecError::new(
                        at("crit"),
                        format!("for comparison \"{c}\" crit must be {side} warn ({warn}), got {crit}"),
                    ));
                }
            }
            _ => {}
        }
        if a.warn_windows == 0 {
            return Err(SpecError::new(at("warn_windows"), "must be at least 1"));
        }
        if a.crit_windows == 0 {
            return Err(SpecError::new(at("crit_windows"), "must be at least 1"));
        }
        for (field, reset, threshold, of) in
            [("warn_reset", a.warn_reset, a.warn, "warn"), ("crit_reset", a.crit_reset, a.crit, "crit")]
        {
            let Some(reset) = reset else { continue };
            let Some(threshold) = threshold else {
                return Err(SpecError::new(at(field), format!("needs `{of}`")));
            };
            // The level falls once the value is past the reset, so it must lie on the non-breaching side.
            let side = match c {
                Comparison::Gt | Comparison::Ge if reset > threshold => "at or below",
                Comparison::Lt | Comparison::Le if reset < threshold => "at or above",
                Comparison::Eq | Comparison::Ne => {
                    return Err(SpecError::new(at(field), format!("a reset does not apply to comparison \"{c}\"")))
                }
                _ => continue,
            };
            return Err(SpecError::new(
                at(field),
                format!(
                    "for comparison \"{c}\" the reset must be {side} {of} ({threshold}), its non-breaching side; \
                     got {reset}"
                ),
            ));
        }
        for (k, name) in a.handlers.iter().enumerate() {
            if !handlers.iter().any(|h| h.name == *name) {
                return Err(SpecError::new(
                    format!("alarm[{i}].handlers[{k}]"),
                    format!("no [[handler]] is named {name:?}"),
                ));
            }
            if a.handlers[..k].contains(name) {
                return Err(SpecError::new(format!("alarm[{i}].handlers[{k}]"), format!("{name:?} is listed twice")));
            }
        }
        check_template(&a.message).map_err(|e| SpecError::new(at("message"), e))?;
        if a.nodata_after == Some(0) {
            return Err(SpecError::new(at("nodata_after"), "must be at least 1"));
        }
    }
    Ok(())
}

/// `http://` or `https://` followed by a host.
fn is_http_url(url: &str) -> bool {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with(['/', '?', '#']) && !r.contains(char::is_whitespace))
}

/// `local@domain`, optionally as `Name <local@domain>`.
fn is_mail_address(text: &str) -> bool {
    let addr = match text.rsplit_once('<') {
        Some((_, rest)) => match rest.strip_suffix('>') {
            Some(addr) => addr,
            None => return false,
        },
        None => text,
    };
    matches!(addr.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty()
        && !domain.contains('@') && !addr.contains(char::is_whitespace))
}

/// A rule's message may use only [`ALARM_PLACEHOLDERS`], each as `{name}`.
fn check_template(template: &str) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err(format!("expected a message template, e.g. {DEFAULT_ALARM_MESSAGE:?}"));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { return Err("a `{` is not closed".into()) };
        let name = &after[..close];
        if !ALARM_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}}: expected {}",
                ALARM_PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
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
    fn the_example_jobs_are_valid() {
        let examples = [
            ("pull.toml", include_str!("../jobs/pull.toml")),
            ("mixed.toml", include_str!("../jobs/mixed.toml")),
            ("kafka-alarms.toml", include_str!("../jobs/kafka-alarms.toml")),
        ];
        for (name, text) in examples {
            let spec = JobSpec::parse(text).unwrap_or_else(|e| panic!("pipelines/jobs/{name}: {e}"));
            assert!(!spec.alarms.is_empty(), "{name} shows an alarm rule");
        }
    }

    #[test]
    fn a_pull_source_takes_no_pushed_input_and_needs_its_pull_section() {
        let base = "[source]\nkind = \"pull\"\n\n[registry]\nfile = \"agents.json\"\n\n\
                    [[sink]]\nkind = \"parquet\"\npath = \"lake\"\n";
        let spec = JobSpec::parse(&format!("{base}\n[pull]\ninterval = \"5s\"\n")).unwrap();
        assert!(matches!(spec.source, SourceSpec::Pull));
        assert_eq!(spec.pull.as_ref().unwrap().config().interval, Duration::from_secs(5));
        assert_eq!(spec.checkpoint_dir(), None, "pulled values cannot be read again: no checkpoints");
        let e = refused(base);
        assert_eq!(e.field, "pull");
        assert!(e.message.contains("[pull]"), "{e}");
        let e =
            refused(&format!("{}\n[pull]\n", base.replace("kind = \"pull\"", "kind = \"pull\"\nbrokers = \"b:9092\"")));
        assert_eq!(e.field, "source.brokers");
        let e = refused(&format!("{}\n[pull]\n", base.replace("file = \"agents.json\"", "")));
        assert_eq!(e.field, "pull");
        assert!(e.message.contains("registry.file"), "{e}");
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

    const KAFKA: &str = r#"
[source]
kind = "kafka"
brokers = "b:9092"
topics = ["metrics"]
[[sink]]
kind = "parquet"
path = "lake"
"#;

    const FULL: &str = r#"
[groups]
enabled = true
levels = ["mcis", "os"]
k = 3

[[groups.metric]]
name = "tps"
measurement = "nginx"
field = "requests"
aggregate = "rate"
over_vms = "sum"

[[groups.metric]]
name = "conns"
measurement = "nginx"
field = "active"
aggregate = "mean"
over_vms = "max"

[registry]
file = "agents.json"
topic = "agents"
unhealthy_after = 2
snapshot_every = "5m"
reload_interval = "500ms"

[counters]
fields = ["diskio", "net", "nginx.requests"]
"#;

    #[test]
    fn groups_registry_and_counters_default_when_absent() {
        let spec = JobSpec::parse(GOOD).unwrap();
        assert_eq!(spec.groups, GroupsSpec::default());
        assert!(spec.groups.enabled);
        assert_eq!(spec.groups.levels, vec![Level::Ns, Level::Mcis, Level::Csp, Level::Os]);
        assert_eq!(spec.groups.k, 5);
        assert!(spec.groups.metrics.is_empty());
        assert_eq!(spec.registry, RegistrySpec::default());
        assert_eq!((spec.registry.file.as_ref(), spec.registry.topic.as_ref()), (None, None));
        assert_eq!(spec.registry.unhealthy_after, 3);
        assert_eq!(spec.registry.snapshot_every, Duration::from_secs(60));
        assert_eq!(spec.registry.reload_interval, Duration::from_secs(2));
        assert_eq!(spec.counters.fields, vec!["diskio", "net"]);

        let g = spec.groups_config().expect("groups are on by default");
        assert_eq!((g.levels, g.k, g.metrics.len(), g.unhealthy_after), (Level::ALL.to_vec(), 5, 0, 3));
        assert_eq!((g.snapshot_every, g.window), (60_000_000_000, 10_000_000_000));
        assert!(g.counters.is_counter("net", "bytes_recv") && g.counters.is_counter("diskio", "reads"));
        assert!(!g.counters.is_counter("cpu", "usage_idle"));

        // Empty sections are the defaults too.
        let spec = JobSpec::parse(&format!("{GOOD}\n[groups]\n[registry]\n[counters]\n")).unwrap();
        assert_eq!(
            (spec.groups, spec.registry, spec.counters),
            (GroupsSpec::default(), RegistrySpec::default(), CountersSpec::default())
        );
    }

    #[test]
    fn groups_registry_and_counters_sections_are_read() {
        let spec = JobSpec::parse(&format!("{KAFKA}{FULL}")).unwrap();
        assert_eq!(spec.groups.levels, vec![Level::Mcis, Level::Os]);
        assert_eq!(spec.groups.k, 3);
        assert_eq!(
            spec.groups.metrics[0],
            GroupMetricSpec {
                name: "tps".into(),
                measurement: "nginx".into(),
                field: "requests".into(),
                aggregate: PerVm::Rate,
                over_vms: OverVms::Sum,
            }
        );
        assert_eq!((spec.groups.metrics[1].aggregate, spec.groups.metrics[1].over_vms), (PerVm::Mean, OverVms::Max));
        assert_eq!(spec.registry.file.as_deref(), Some(std::path::Path::new("agents.json")));
        assert_eq!(spec.registry.topic.as_deref(), Some("agents"));
        assert_eq!(spec.registry.unhealthy_after, 2);
        assert_eq!(spec.registry.snapshot_every, Duration::from_secs(300));
        assert_eq!(spec.registry.reload_interval, Duration::from_millis(500));

        let g = spec.groups_config().unwrap();
        assert_eq!(g.levels, vec![Level::Mcis, Level::Os]);
        assert_eq!((g.k, g.unhealthy_after, g.snapshot_every), (3, 2, 300_000_000_000));
        assert_eq!(g.metrics[0].name, "tps");
        assert_eq!(g.metrics[1].over_vms, OverVms::Max);
        assert!(g.counters.is_counter("nginx", "requests") && !g.counters.is_counter("nginx", "active"));

        let off = JobSpec::parse(&format!("{GOOD}\n[groups]\nenabled = false\n")).unwrap();
        assert!(off.groups_config().is_none());
        // Counters apply without groups too.
        assert!(off.counters().is_counter("net", "bytes_sent"));
    }

    #[test]
    fn spec_with_groups_round_trips_through_serde() {
        for text in [GOOD.to_string(), format!("{KAFKA}{FULL}")] {
            let spec = JobSpec::parse(&text).unwrap();
            let json = serde_json::to_string(&spec).unwrap();
            let back = JobSpec::parse(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!((back.groups, back.registry, back.counters), (spec.groups, spec.registry, spec.counters));
        }
    }

    #[test]
    fn bad_groups_registry_and_counters_name_the_field() {
        let full = format!("{KAFKA}{FULL}");
        let cases = [
            (
                full.replace(r#"["mcis", "os"]"#, r#"["ns", "rack"]"#),
                "groups.levels[1]",
                r#"unknown group level "rack""#,
            ),
            (full.replace(r#"["mcis", "os"]"#, r#"["ns", "os", "ns"]"#), "groups.levels[2]", "listed twice"),
            (full.replace("k = 3", "k = 0"), "groups.k", "must be at least 1"),
            (full.replace("k = 3", "k = -1"), "groups.k", "invalid value"),
            (full.replace("k = 3", "top = 3"), "groups.top", "unknown field"),
            (
                full.replace(r#"aggregate = "rate""#, r#"aggregate = "median""#),
                "groups.metric[0].aggregate",
                "unknown variant",
            ),
            (
                full.replace(r#"over_vms = "sum""#, r#"over_vms = "avg""#),
                "groups.metric[0].over_vms",
                "unknown variant",
            ),
            (full.replace(r#"over_vms = "sum""#, ""), "groups.metric[0].over_vms", "missing field"),
            (
                full.replace(r#"over_vms = "sum""#, "over_vms = \"sum\"\nunit = \"x\""),
                "groups.metric[0].unit",
                "unknown field",
            ),
            (full.replace(r#"name = "tps""#, r#"name = "cpu_util_mean""#), "groups.metric[0].name", "built-in"),
            (
                full.replace(r#"name = "conns""#, r#"name = "tps""#),
                "groups.metric[1].name",
                "already the name of groups.metric[0]",
            ),
            (full.replace(r#"name = "tps""#, r#"name = """#), "groups.metric[0].name", "expected a metric name"),
            (full.replace(r#"field = "active""#, r#"field = """#), "groups.metric[1].field", "expected a field"),
            (full.replace(r#"file = "agents.json""#, r#"file = """#), "registry.file", "expected the path"),
            (full.replace(r#"topic = "agents""#, r#"topic = "metrics""#), "registry.topic", "also read by the source"),
            (full.replace(r#"topic = "agents""#, r#"topic = "a b""#), "registry.topic", "topic name"),
            (format!("{GOOD}\n[registry]\ntopic = \"agents\"\n"), "registry.topic", "needs a Kafka source"),
            (
                full.replace("unhealthy_after = 2", "unhealthy_after = 0"),
                "registry.unhealthy_after",
                "must be at least 1",
            ),
            (full.replace(r#""5m""#, r#""0s""#), "registry.snapshot_every", "at least 1s"),
            (full.replace(r#""5m""#, r#""soon""#), "registry.snapshot_every", "duration"),
            (full.replace(r#""500ms""#, r#""1ms""#), "registry.reload_interval", "at least 100ms"),
            (full.replace("reload_interval", "reload"), "registry.reload", "unknown field"),
            (full.replace(r#""net", "nginx.requests""#, r#""net.""#), "counters.fields[1]", "measurement.field"),
            (full.replace(r#""diskio", "net""#, r#""""#), "counters.fields[0]", "measurement"),
            (full.replace("[counters]\nfields", "[counters]\nfield"), "counters.field", "unknown field"),
        ];
        for (text, field, msg) in cases {
            let e = refused(&text);
            assert_eq!(e.field, field, "{text}\n-> {e}");
            assert!(e.message.contains(msg), "{text}\n-> {e}");
        }
        // A topic the regular expression of the source matches is read as metrics too.
        let regex = full.replace(r#"topics = ["metrics"]"#, r#"topic_regex = "^a.*""#);
        assert_eq!(refused(&regex).field, "registry.topic");
    }

    const ALARMS: &str = r##"
[[handler]]
name = "ops-slack"
kind = "slack"
url = "https://hooks.slack.com/services/T0/B0/SLACKTOKEN"
channel = "#ops"
username = "dragonflow"

[[handler]]
name = "ops-mail"
kind = "smtp"
host = "smtp.example.com"
from = "Dragonflow <alarms@example.com>"
to = ["ops@example.com", "oncall@example.com"]
username = "alarms"
password = "hunter2-smtp"
tls = "starttls"
timeout = "30s"
retries = 5

[[handler]]
name = "hook"
kind = "webhook"
url = "https://hooks.example.com/alarms"
headers = { Authorization = "Bearer s3cret-header" }

[[alarm]]
name = "cpu_high"
measurement = "cpu"
field = "usage_user"
aggregate = "mean"
target = "vm"
comparison = ">"
warn = 80
crit = 95
warn_windows = 2
crit_windows = 3
warn_reset = 70
crit_reset = 90
handlers = ["ops-slack", "ops-mail", "hook"]
message = "{rule} is {level} on {target}: {value}"
nodata_after = 5

[[alarm]]
name = "mcis_rtt"
level = "mcis"
metric = "rtt_ms_mean"
target = "mcis"
target_id = "mcis-01"
comparison = "<"
crit = 1.5

[[alarm]]
name = "tps_low"
level = "os"
metric = "tps"
comparison = "<="
warn = 10
"##;

    fn alarms_spec() -> String {
        format!("{KAFKA}{FULL}{ALARMS}")
    }

    #[test]
    fn alarms_and_handlers_default() {
        let spec = JobSpec::parse(GOOD).unwrap();
        assert!(spec.alarms.is_empty() && spec.handlers.is_empty());

        let text = format!(
            "{GOOD}{}",
            r#"
[[handler]]
name = "s"
kind = "slack"
url = "http://127.0.0.1:9000/slack"
[[handler]]
name = "m"
kind = "smtp"
host = "localhost"
from = "a@b"
to = ["c@d"]
[[handler]]
name = "m2"
kind = "smtp"
host = "localhost"
from = "a@b"
to = ["c@d"]
tls = "starttls"
[[handler]]
name = "m3"
kind = "smtp"
host = "localhost"
from = "a@b"
to = ["c@d"]
tls = "tls"
[[handler]]
name = "w"
kind = "webhook"
url = "http://127.0.0.1:9000/hook"
[[alarm]]
name = "r"
measurement = "cpu"
field = "usage_user"
aggregate = "max"
comparison = ">="
warn = 90
"#
        );
        let spec = JobSpec::parse(&text).unwrap();
        let a = &spec.alarms[0];
        assert_eq!(
            a.watch,
            AlarmWatch::Field { measurement: "cpu".into(), field: "usage_user".into(), aggregate: AlarmAggregate::Max }
        );
        assert_eq!((a.target, a.target_id.as_deref(), a.comparison), (AlarmTarget::All, None, Comparison::Ge));
        assert_eq!((a.warn, a.crit, a.warn_windows, a.crit_windows), (Some(90.0), None, 1, 1));
        assert_eq!((a.warn_reset, a.crit_reset, a.nodata_after), (None, None, None));
        assert!(a.handlers.is_empty());
        assert_eq!(a.message, DEFAULT_ALARM_MESSAGE);
        assert_eq!(a.nodata_windows(&spec.registry), 3);

        for h in &spec.handlers {
            assert_eq!((h.timeout, h.retries), (Duration::from_secs(10), 3), "{}", h.name);
        }
        let HandlerKind::Slack(s) = &spec.handlers[0].kind else { panic!("slack") };
        assert_eq!((s.channel.as_deref(), s.username.as_deref()), (None, None));
        let smtp = |i: usize| match &spec.handlers[i].kind {
            HandlerKind::Smtp(m) => (m.port, m.tls, m.username.is_none() && m.password.is_none()),
            other => panic!("{other:?}"),
        };
        assert_eq!(smtp(1), (25, SmtpTls::None, true));
        assert_eq!(smtp(2), (587, SmtpTls::Starttls, true));
        assert_eq!(smtp(3), (465, SmtpTls::Tls, true));
        let HandlerKind::Webhook(w) = &spec.handlers[4].kind else { panic!("webhook") };
        assert!(w.headers.is_empty());
    }

    #[test]
    fn alarms_and_handlers_are_read() {
        let spec = JobSpec::parse(&alarms_spec()).unwrap();
        assert_eq!(spec.alarms.len(), 3);
        let a = &spec.alarms[0];
        assert_eq!(a.name, "cpu_high");
        assert_eq!(
            a.watch,
            AlarmWatch::Field {
                measurement: "cpu".into(),
                field: "usage_user".into(),
                aggregate: AlarmAggregate::Mean
            }
        );
        assert_eq!((a.target, a.comparison), (AlarmTarget::Vm, Comparison::Gt));
        assert_eq!((a.warn, a.crit, a.warn_windows, a.crit_windows), (Some(80.0), Some(95.0), 2, 3));
        assert_eq!((a.warn_reset, a.crit_reset), (Some(70.0), Some(90.0)));
        assert_eq!(a.handlers, vec!["ops-slack", "ops-mail", "hook"]);
        assert_eq!(a.message, "{rule} is {level} on {target}: {value}");
        assert_eq!(a.nodata_windows(&spec.registry), 5);

        let b = &spec.alarms[1];
        assert_eq!(b.watch, AlarmWatch::Group { level: Level::Mcis, metric: "rtt_ms_mean".into() });
        assert_eq!((b.target, b.target_id.as_deref()), (AlarmTarget::Mcis, Some("mcis-01")));
        assert_eq!((b.comparison, b.warn, b.crit), (Comparison::Lt, None, Some(1.5)));
        // `registry.unhealthy_after = 2` in FULL.
        assert_eq!(b.nodata_windows(&spec.registry), 2);
        let c = &spec.alarms[2];
        assert_eq!(c.watch, AlarmWatch::Group { level: Level::Os, metric: "tps".into() });
        assert_eq!((c.target, c.comparison), (AlarmTarget::All, Comparison::Le));

        let names: Vec<_> = spec.handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["ops-slack", "ops-mail", "hook"]);
        assert_eq!(
            spec.handlers[0].kind,
            HandlerKind::Slack(SlackHandler {
                url: "https://hooks.slack.com/services/T0/B0/SLACKTOKEN".into(),
                channel: Some("#ops".into()),
                username: Some("dragonflow".into()),
            })
        );
        assert_eq!(
            spec.handlers[1].kind,
            HandlerKind::Smtp(SmtpHandler {
                host: "smtp.example.com".into(),
                port: 587,
                from: "Dragonflow <alarms@example.com>".into(),
                to: vec!["ops@example.com".into(), "oncall@example.com".into()],
                username: Some("alarms".into()),
                password: Some("hunter2-smtp".into()),
                tls: SmtpTls::Starttls,
            })
        );
        assert_eq!((spec.handlers[1].timeout, spec.handlers[1].retries), (Duration::from_secs(30), 5));
        let HandlerKind::Webhook(w) = &spec.handlers[2].kind else { panic!("webhook") };
        assert_eq!(w.url, "https://hooks.example.com/alarms");
        assert_eq!(w.headers.get("Authorization").map(String::as_str), Some("Bearer s3cret-header"));

        assert!(Comparison::Gt.breaches(2.0, 1.0) && !Comparison::Gt.breaches(1.0, 1.0));
        assert!(Comparison::Le.breaches(1.0, 1.0) && Comparison::Ne.breaches(0.0, 1.0));
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_serialized_spec() {
        let spec = JobSpec::parse(&alarms_spec()).unwrap();
        let secrets = ["hunter2-smtp", "s3cret-header", "SLACKTOKEN"];
        let debug = format!("{spec:?}");
        for secret in secrets {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("password: Some(<redacted>)"), "{debug}");
        assert!(debug.contains("{\"Authorization\": <redacted>}"), "{debug}");
        assert!(debug.contains("\"https://hooks.slack.com/…\""), "{debug}");

        let json = serde_json::to_string(&spec).unwrap();
        let toml = toml::to_string(&spec).unwrap();
        for secret in ["hunter2-smtp", "s3cret-header"] {
            assert!(!json.contains(secret), "{secret} in {json}");
            assert!(!toml.contains(secret), "{secret} in {toml}");
        }
        assert!(!json.contains("password") && !json.contains("Authorization"), "{json}");

        // What is serialised reads back as the same rules and handlers, less the secrets.
        for text in [json, toml] {
            let back = JobSpec::parse(&text).unwrap();
            assert_eq!(back.alarms, spec.alarms);
            let mut expected = spec.handlers.clone();
            for h in &mut expected {
                match &mut h.kind {
                    HandlerKind::Smtp(m) => m.password = None,
                    HandlerKind::Webhook(w) => w.headers.clear(),
                    HandlerKind::Slack(_) => {}
                }
            }
            assert_eq!(back.handlers, expected);
        }
    }

    #[test]
    fn the_influxdb_password_never_appears_in_debug_output() {
        let text = "[source]\nkind = \"file\"\npath = \"m.jsonl\"\n\n[[sink]]\nkind = \"influxdb\"\n\
                    url = \"http://127.0.0.1:8086\"\nusername = \"u\"\npassword = \"hunter2-influx\"\n";
        let spec = JobSpec::parse(text).unwrap();
        let debug = format!("{spec:?}");
        assert!(!debug.contains("hunter2-influx") && debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn bad_alarms_and_handlers_name_the_field() {
        let full = alarms_spec();
        let cases = [
            (
                full.replace(r#"comparison = ">""#, r#"comparison = "=>""#),
                "alarm[0].comparison",
                r#"expected one of ">", ">=", "<", "<=", "==", "!=""#,
            ),
            (full.replace("comparison = \">\"\n", ""), "alarm[0].comparison", "missing field"),
            (
                full.replace("aggregate = \"mean\"\n", "aggregate = \"mean\"\nlevel = \"mcis\"\n"),
                "alarm[0].level",
                "not both",
            ),
            (
                full.replace("measurement = \"cpu\"\nfield = \"usage_user\"\naggregate = \"mean\"\n", ""),
                "alarm[0].measurement",
                "missing",
            ),
            (full.replace("field = \"usage_user\"\n", ""), "alarm[0].field", "missing"),
            (full.replace("aggregate = \"mean\"\n", ""), "alarm[0].aggregate", "missing"),
            (full.replace(r#"aggregate = "mean""#, r#"aggregate = "median""#), "alarm[0].aggregate", "unknown variant"),
            (full.replace("metric = \"rtt_ms_mean\"\n", ""), "alarm[1].metric", "missing"),
            (full.replace(r#"level = "mcis""#, r#"level = "rack""#), "alarm[1].level", "unknown variant"),
            (full.replace(r#"level = "mcis""#, r#"level = "ns""#), "alarm[1].level", "not in groups.levels"),
            (full.replace("enabled = true", "enabled = false"), "alarm[1].level", "needs groups"),
            (full.replace(r#""rtt_ms_mean""#, r#""rtt""#), "alarm[1].metric", "neither a built-in"),
            (full.replace(r#"target = "mcis""#, r#"target = "csp""#), "alarm[1].target", "target \"mcis\" or \"all\""),
            (full.replace(r#"target = "mcis""#, r#"target = "vm""#), "alarm[1].target", "target \"mcis\" or \"all\""),
            (full.replace(r#"target = "vm""#, r#"target = "rack""#), "alarm[0].target", "unknown variant"),
            (
                full.replace("metric = \"tps\"\n", "metric = \"tps\"\ntarget_id = \"x\"\n"),
                "alarm[2].target_id",
                "target",
            ),
            (full.replace(r#"target_id = "mcis-01""#, r#"target_id = """#), "alarm[1].target_id", "expected the id"),
            (full.replace("crit = 1.5\n", ""), "alarm[1].warn", "expected `warn` or `crit`"),
            (full.replace("warn = 80\n", "warn = nan\n"), "alarm[0].warn", "finite"),
            (full.replace("crit = 95\n", "crit = 50\n"), "alarm[0].crit", "must be at least warn (80)"),
            (full.replace("crit = 1.5\n", "crit = 1.5\nwarn = 1\n"), "alarm[1].crit", "must be at most warn (1)"),
            (full.replace("warn_windows = 2", "warn_windows = 0"), "alarm[0].warn_windows", "at least 1"),
            (full.replace("crit_windows = 3", "crit_windows = 0"), "alarm[0].crit_windows", "at least 1"),
            (full.replace("warn_windows = 2", "warn_windows = -1"), "alarm[0].warn_windows", "invalid value"),
            (full.replace("warn_reset = 70", "warn_reset = 85"), "alarm[0].warn_reset", "at or below warn (80)"),
            (full.replace("crit_reset = 90", "crit_reset = 96"), "alarm[0].crit_reset", "at or below crit (95)"),
            (
                full.replace("crit = 1.5\n", "crit = 1.5\ncrit_reset = 1\n"),
                "alarm[1].crit_reset",
                "at or above crit (1.5)",
            ),
            (full.replace("crit = 1.5\n", "crit = 1.5\nwarn_reset = 2\n"), "alarm[1].warn_reset", "needs `warn`"),
            (
                full.replace("comparison = \"<=\"\nwarn = 10\n", "comparison = \"==\"\nwarn = 10\nwarn_reset = 9\n"),
                "alarm[2].warn_reset",
                "does not apply to comparison \"==\"",
            ),
            (full.replace(r#""hook"]"#, r#""hooks"]"#), "alarm[0].handlers[2]", "no [[handler]] is named \"hooks\""),
            (full.replace(r#""hook"]"#, r#""ops-slack"]"#), "alarm[0].handlers[2]", "listed twice"),
            (full.replace("on {target}", "on {host}"), "alarm[0].message", "unknown placeholder {host}"),
            (full.replace("on {target}", "on {target"), "alarm[0].message", "unknown placeholder"),
            (full.replace(": {value}\"", ": {value\""), "alarm[0].message", "not closed"),
            (full.replace("nodata_after = 5", "nodata_after = 0"), "alarm[0].nodata_after", "at least 1"),
            (
                full.replace(r#"name = "mcis_rtt""#, r#"name = "cpu_high""#),
                "alarm[1].name",
                "already the name of alarm[0]",
            ),
            (full.replace(r#"name = "tps_low""#, r#"name = " ""#), "alarm[2].name", "expected a rule name"),
            (full.replace("nodata_after = 5", "severity = 5"), "alarm[0].severity", "unknown field"),
            (full.replace(r#"kind = "slack""#, r#"kind = "pager""#), "handler[0].kind", "unknown variant"),
            (
                full.replace("url = \"https://hooks.slack.com/services/T0/B0/SLACKTOKEN\"\n", ""),
                "handler[0].url",
                "missing",
            ),
            (full.replace("https://hooks.slack.com", "ftp://hooks.slack.com"), "handler[0].url", "expected"),
            (
                full.replace("channel = \"#ops\"", "host = \"x\""),
                "handler[0].host",
                "does not apply to kind = \"slack\"",
            ),
            (full.replace("channel = \"#ops\"", "channel = \"\""), "handler[0].channel", "expected a name"),
            (full.replace("host = \"smtp.example.com\"\n", ""), "handler[1].host", "missing"),
            (full.replace("host = \"smtp.example.com\"", "host = \"\""), "handler[1].host", "host name"),
            (full.replace("from = \"Dragonflow <alarms@example.com>\"\n", ""), "handler[1].from", "missing"),
            (full.replace("<alarms@example.com>", "alarms"), "handler[1].from", "expected an address"),
            (full.replace("to = [\"ops@example.com\", \"oncall@example.com\"]\n", ""), "handler[1].to", "missing"),
            (full.replace(r#"["ops@example.com", "oncall@example.com"]"#, "[]"), "handler[1].to", "at least one"),
            (full.replace("\"oncall@example.com\"", "\"oncall\""), "handler[1].to[1]", "expected an address"),
            (full.replace("tls = \"starttls\"", "tls = \"ssl\""), "handler[1].tls", "unknown variant"),
            (full.replace("tls = \"starttls\"", "port = 0"), "handler[1].port", "1 to 65535"),
            (full.replace("username = \"alarms\"\n", ""), "handler[1].username", "needs a `username`"),
            (full.replace("timeout = \"30s\"", "timeout = \"0s\""), "handler[1].timeout", "positive duration"),
            (full.replace("timeout = \"30s\"", "timeout = \"soon\""), "handler[1].timeout", "duration"),
            (full.replace("retries = 5", "retries = -1"), "handler[1].retries", "invalid value"),
            (full.replace("retries = 5", "channel = \"x\""), "handler[1].channel", "does not apply to kind = \"smtp\""),
            (
                full.replace(r#"name = "ops-mail""#, r#"name = "ops-slack""#),
                "handler[1].name",
                "already the name of handler[0]",
            ),
            (full.replace(r#"name = "hook""#, r#"name = """#), "handler[2].name", "expected a handler name"),
            (full.replace("url = \"https://hooks.example.com/alarms\"\n", ""), "handler[2].url", "missing"),
            (full.replace("https://hooks.example.com/alarms", "hooks.example.com"), "handler[2].url", "expected"),
            (full.replace("{ Authorization =", "{ \"Auth orization\" ="), "handler[2].headers", "not a header name"),
            (full.replace("headers = {", "username = \"u\"\nheaders = {"), "handler[2].username", "does not apply"),
            (full.replace("channel = \"#ops\"", "icon = \"x\""), "handler[0].icon", "unknown field"),
        ];
        for (text, field, msg) in cases {
            assert_ne!(text, full, "the case does not change the spec: {field} / {msg}");
            let e = refused(&text);
            assert_eq!(e.field, field, "{text}\n-> {e}");
            assert!(e.message.contains(msg), "{text}\n-> {e}");
        }
        // A refused header value is not repeated in the error.
        let e = refused(&full.replace("Bearer s3cret-header", "Bearer s3cret-header\\n"));
        assert_eq!(e.field, "handler[2].headers");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

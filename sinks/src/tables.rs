//! The tables of the lake and their Arrow schemas: the one place that says what is stored.
//!
//! Both sides use these definitions: the [`crate::lake`] writer encodes rows with them and
//! [`crate::sql`] registers them for queries. Each table is Hive-partitioned by the UTC date and
//! hour of one of its time columns ([`Table::partition_column`]); the partition columns `date`
//! and `hour` exist only in the directory names and appear as Utf8 columns in SQL.
//!
//! Adding a table means adding a variant here (name, schema, partition column) and an encoder in
//! [`crate::lake`].
//!
//! Window bounds (`window_start`, `window_end` of `aggregates`, `groups` and `rankings`) are UTC
//! timestamps in milliseconds; event times (`late.timestamp`, `agents_history.time`,
//! `alarm_log.time`, …) are UTC timestamps in nanoseconds.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::SinkError;

/// The names of the lake's tables, in [`Table::ALL`] order.
pub const TABLES: &[&str] =
    &["aggregates", "late", "rejects", "agents_history", "agent_health", "groups", "rankings", "alarm_log"];

/// Views that SQL derives from the lake's tables (they have no directory of their own):
/// `agents`, the latest row of each key of `agents_history` that is not deleted, and
/// `alarm_events`, one row per alarm event of `alarm_log` with its delivery outcome if known.
pub const VIEWS: &[&str] = &["agents", "alarm_events"];

/// The Hive partition columns of every table, outermost first.
pub const PARTITION_COLUMNS: &[&str] = &["date", "hour"];

/// One table of the lake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Window aggregates: one row per series and closed window.
    Aggregates,
    /// Values that arrived after their window had closed.
    Late,
    /// Input that could not be used, with the reason.
    Rejects,
    /// Versions of the agent registry's records: a row whenever a record changes, plus snapshots.
    AgentsHistory,
    /// Changes of an agent's health.
    AgentHealth,
    /// Group metrics: one row per window, level, group and metric.
    Groups,
    /// Top-k and bottom-k groups per window, level and metric.
    Rankings,
    /// Alarm events as raised (delivery pending) and again with each delivery outcome.
    AlarmLog,
}

impl Table {
    /// Every table, in [`TABLES`] order.
    pub const ALL: [Table; 8] = [
        Table::Aggregates,
        Table::Late,
        Table::Rejects,
        Table::AgentsHistory,
        Table::AgentHealth,
        Table::Groups,
        Table::Rankings,
        Table::AlarmLog,
    ];

    /// The table's name (its directory in the lake and its name in SQL).
    pub fn name(self) -> &'static str {
        match self {
            Table::Aggregates => "aggregates",
            Table::Late => "late",
            Table::Rejects => "rejects",
            Table::AgentsHistory => "agents_history",
            Table::AgentHealth => "agent_health",
            Table::Groups => "groups",
            Table::Rankings => "rankings",
            Table::AlarmLog => "alarm_log",
        }
    }

    /// The time column whose UTC date and hour choose a row's partition.
    pub fn partition_column(self) -> &'static str {
        match self {
            Table::Aggregates => "window_start",
            Table::Late => "timestamp",
            Table::Rejects => "received_at",
            Table::AgentsHistory | Table::AgentHealth | Table::AlarmLog => "time",
            Table::Groups | Table::Rankings => "window_start",
        }
    }

    /// The schema of the table's Parquet files (without the partition columns).
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; Table::ALL.len()]> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| Table::ALL.map(|t| Arc::new(t.build_schema())));
        Arc::clone(&schemas[self as usize])
    }

    /// The schema seen in SQL: the file schema followed by the partition columns.
    pub fn sql_schema(self) -> SchemaRef {
        let mut fields: Vec<Field> = self.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(PARTITION_COLUMNS.iter().map(|name| Field::new(*name, DataType::Utf8, false)));
        Arc::new(Schema::new(fields))
    }

    fn build_schema(self) -> Schema {
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        let f64 = |name: &str| Field::new(name, DataType::Float64, false);
        let ts_ms =
            |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false);
        let ts_ns = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false);
        let nullable = |field: Field| field.with_nullable(true);
        let agent = ["ns_id", "mcis_id", "vm_id", "csp_type", "os_type"].map(utf8);
        let series = ["measurement", "instance", "field"].map(utf8);
        let origin = [
            utf8("source"),
            Field::new("partition", DataType::Int32, false),
            Field::new("position", DataType::Int64, false),
        ];
        let fields: Vec<Field> = match self {
            Table::Aggregates => [ts_ms("window_start"), ts_ms("window_end")]
                .into_iter()
                .chain(agent)
                .chain(series)
                .chain([Field::new("count", DataType::UInt64, false)])
                .chain(["sum", "min", "max", "mean", "last"].map(f64))
                // Null for fields that are not counters and for windows with one timestamp.
                .chain([nullable(f64("rate"))])
                .collect(),
            Table::Late => agent
                .into_iter()
                .chain(series)
                .chain([ts_ns("timestamp"), f64("value"), ts_ns("watermark")])
                .chain(origin)
                .collect(),
            Table::Rejects => {
                [ts_ns("received_at")].into_iter().chain(origin).chain([utf8("reason"), utf8("payload")]).collect()
            }
            Table::AgentsHistory => [ts_ns("time"), utf8("key")]
                .into_iter()
                .chain(agent)
                .chain(["mechanism", "public_ip", "state"].map(utf8))
                .chain(["vcpu", "memory_gib", "cost_per_hour"].map(|name| nullable(f64(name))))
                .chain([nullable(utf8("pull_url")), nullable(ts_ns("first_seen")), nullable(ts_ns("last_seen"))])
                .chain([utf8("health"), Field::new("deleted", DataType::Boolean, false)])
                .collect(),
            Table::AgentHealth => [ts_ns("time")]
                .into_iter()
                .chain(["ns_id", "mcis_id", "vm_id", "csp_type", "from", "to", "reason"].map(utf8))
                .collect(),
            Table::Groups => [ts_ms("window_start"), ts_ms("window_end")]
                .into_iter()
                .chain(["level", "group_id", "metric"].map(utf8))
                .chain([f64("value"), Field::new("vm_count", DataType::UInt64, false)])
                .collect(),
            Table::Rankings => [ts_ms("window_start"), ts_ms("window_end")]
                .into_iter()
                .chain(["level", "metric", "order"].map(utf8))
                .chain([Field::new("rank", DataType::UInt32, false), utf8("group_id"), f64("value")])
                .collect(),
            Table::AlarmLog => [utf8("id"), ts_ns("time")]
                .into_iter()
                .chain(["rule", "target", "level", "previous_level"].map(utf8))
                // Null for NODATA (and, for the threshold, NODATA → OK).
                .chain(["value", "threshold"].map(|name| nullable(f64(name))))
                // Handler names joined with ",".
                .chain(["message", "handlers"].map(utf8))
                // Null while delivery is pending (or the rule has no handlers); `delivery_error`
                // also when delivered.
                .chain([nullable(Field::new("delivered", DataType::Boolean, false)), nullable(utf8("delivery_error"))])
                // Wall clock when the row was written: orders the rows of one event.
                .chain([ts_ns("recorded_at")])
                // The job that raised the event (its source id, as in window file names); null
                // in files written before the column existed.
                .chain([nullable(utf8("job"))])
                .collect(),
        };
        Schema::new(fields)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Table {
    type Err = SinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Table::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| SinkError::UnknownTable(s.to_string()))
    }
}

/// The file schema of `table` (see [`Table::schema`]).
pub fn schema(table: Table) -> SchemaRef {
    table.schema()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_names_agree() {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, TABLES);
        for t in Table::ALL {
            assert_eq!(t.name().parse::<Table>().ok(), Some(t));
            assert!(t.schema().field_with_name(t.partition_column()).is_ok());
        }
        assert!("nope".parse::<Table>().is_err());
        for view in VIEWS {
            assert!(view.parse::<Table>().is_err(), "{view} is a view, not a table");
        }
    }

    #[test]
    fn column_names_are_exact() {
        let names = |t: Table| t.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(",");
        assert_eq!(
            names(Table::Aggregates),
            "window_start,window_end,ns_id,mcis_id,vm_id,csp_type,os_type,measurement,instance,field,\
             count,sum,min,max,mean,last,rate"
        );
        assert_eq!(
            names(Table::Late),
            "ns_id,mcis_id,vm_id,csp_type,os_type,measurement,instance,field,timestamp,value,watermark,\
             source,partition,position"
        );
        assert_eq!(names(Table::Rejects), "received_at,source,partition,position,reason,payload");
        assert_eq!(
            names(Table::AgentsHistory),
            "time,key,ns_id,mcis_id,vm_id,csp_type,os_type,mechanism,public_ip,state,vcpu,memory_gib,\
             cost_per_hour,pull_url,first_seen,last_seen,health,deleted"
        );
        assert_eq!(names(Table::AgentHealth), "time,ns_id,mcis_id,vm_id,csp_type,from,to,reason");
        assert_eq!(names(Table::Groups), "window_start,window_end,level,group_id,metric,value,vm_count");
        assert_eq!(names(Table::Rankings), "window_start,window_end,level,metric,order,rank,group_id,value");
        assert_eq!(
            names(Table::AlarmLog),
            "id,time,rule,target,level,previous_level,value,threshold,message,handlers,delivered,delivery_error,\
             recorded_at,job"
        );
        let nullable = |t: Table| {
            t.schema().fields().iter().filter(|f| f.is_nullable()).map(|f| f.name().clone()).collect::<Vec<_>>()
        };
        assert_eq!(nullable(Table::Aggregates), ["rate"]);
        assert_eq!(
            nullable(Table::AgentsHistory),
            ["vcpu", "memory_gib", "cost_per_hour", "pull_url", "first_seen", "last_seen"]
        );
        assert!(nullable(Table::Groups).is_empty() && nullable(Table::AgentHealth).is_empty());
        assert_eq!(nullable(Table::AlarmLog), ["value", "threshold", "delivered", "delivery_error", "job"]);
        let sql = Table::Rejects.sql_schema();
        assert_eq!(sql.fields().len(), 8);
        assert_eq!(sql.field(7).name(), "hour");
    }
}

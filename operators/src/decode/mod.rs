//! Decoders for what agents send: Telegraf JSON (one metric or a `{"metrics":[…]}` batch per
//! message) and Influx line protocol (one or more lines per message).
//!
//! A decoder hands every metric it can read to [`Decoded::metric`] and every part it cannot to
//! [`Decoded::reject`] with a reason; one bad metric or line never loses the others, and no
//! input makes a decoder panic. [`check_contract`] states that promise as a check; the fuzz
//! harness (`examples/fuzz_decoders.rs`) and the regression cases in `fuzz/regressions/` hold
//! the decoders to it.

use std::borrow::Cow;

mod contract;
mod influx;
mod json;
#[cfg(test)]
mod regressions;

pub use contract::{check_contract, Broken, Tally};
pub use influx::decode_influx;
pub use json::decode_json;

/// Largest message a decoder accepts (bytes); larger ones are rejected whole.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Latest event time a decoder accepts: 2200-01-01T00:00:00Z in ns. Anything later is a broken
/// clock or a unit mix-up, and keeping well below `i64::MAX` leaves room for window arithmetic.
pub const MAX_TIMESTAMP_NS: i64 = 7_258_118_400 * 1_000_000_000;

/// The wire format of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Telegraf's JSON serializer.
    Json,
    /// Influx line protocol.
    Influx,
}

/// The unit of numeric timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    /// Detect by magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17
    /// microseconds, otherwise nanoseconds (covers the years 1973–5138 in every unit).
    #[default]
    Auto,
    S,
    Ms,
    Us,
    Ns,
}

impl TimestampUnit {
    /// Nanoseconds per unit for a timestamp of magnitude `v`.
    fn nanos_per_unit(self, v: f64) -> i64 {
        match self {
            TimestampUnit::S => 1_000_000_000,
            TimestampUnit::Ms => 1_000_000,
            TimestampUnit::Us => 1_000,
            TimestampUnit::Ns => 1,
            TimestampUnit::Auto => {
                let a = v.abs();
                if a < 1e11 {
                    1_000_000_000
                } else if a < 1e14 {
                    1_000_000
                } else if a < 1e17 {
                    1_000
                } else {
                    1
                }
            }
        }
    }

    /// Converts an integer timestamp to nanoseconds since the epoch.
    pub fn int_to_nanos(self, v: i64) -> Result<i64, String> {
        if v < 0 {
            return Err(format!("negative timestamp {v}"));
        }
        match v.checked_mul(self.nanos_per_unit(v as f64)) {
            Some(ns) if ns <= MAX_TIMESTAMP_NS => Ok(ns),
            _ => Err(far_future(v)),
        }
    }

    /// Converts a fractional timestamp to nanoseconds since the epoch.
    pub fn float_to_nanos(self, v: f64) -> Result<i64, String> {
        if !v.is_finite() {
            return Err(format!("timestamp {v} is not a finite number"));
        }
        if v < 0.0 {
            return Err(format!("negative timestamp {v}"));
        }
        let ns = (v * self.nanos_per_unit(v) as f64).round();
        if ns > MAX_TIMESTAMP_NS as f64 {
            return Err(far_future(v));
        }
        Ok(ns as i64)
    }
}

fn far_future(v: impl std::fmt::Display) -> String {
    format!("timestamp {v} is after 2200-01-01T00:00:00Z")
}

/// A field value as sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    /// A string field; its content is not aggregated.
    Str,
}

impl FieldValue {
    /// The value to aggregate, for numeric fields.
    #[inline]
    pub fn numeric(self) -> Option<f64> {
        match self {
            FieldValue::Float(v) => Some(v),
            FieldValue::Int(v) => Some(v as f64),
            FieldValue::UInt(v) => Some(v as f64),
            FieldValue::Bool(_) | FieldValue::Str => None,
        }
    }
}

/// One decoded metric, borrowing from the message where it can.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metric<'a> {
    pub name: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub fields: Vec<(Cow<'a, str>, FieldValue)>,
    /// Event time, ns since the epoch.
    pub timestamp: i64,
}

impl Metric<'_> {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }
}

/// Receives what a decoder produces.
pub trait Decoded {
    fn metric(&mut self, metric: &Metric<'_>);
    /// `payload` is the part of the message that was refused (the whole message, one batch
    /// element or one line).
    fn reject(&mut self, reason: String, payload: &[u8]);
}

/// Decodes one message in the given format.
pub fn decode(format: Format, payload: &[u8], unit: TimestampUnit, arrival_ns: i64, out: &mut impl Decoded) {
    if payload.len() > MAX_MESSAGE_BYTES {
        out.reject(format!("message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES}", payload.len()), payload);
        return;
    }
    match format {
        Format::Json => decode_json(payload, unit, out),
        Format::Influx => decode_influx(payload, unit, arrival_ns, out),
    }
}

/// Collects decoder output; handy in tests and tools.
#[derive(Debug, Default)]
pub struct Collected {
    pub metrics: Vec<Metric<'static>>,
    pub rejects: Vec<(String, Vec<u8>)>,
}

impl Decoded for Collected {
    fn metric(&mut self, m: &Metric<'_>) {
        let own = |c: &Cow<'_, str>| Cow::Owned(c.to_string());
        self.metrics.push(Metric {
            name: own(&m.name),
            tags: m.tags.iter().map(|(k, v)| (own(k), own(v))).collect(),
            fields: m.fields.iter().map(|(k, v)| (own(k), *v)).collect(),
            timestamp: m.timestamp,
        });
    }
    fn reject(&mut self, reason: String, payload: &[u8]) {
        self.rejects.push((reason, payload.to_vec()));
    }
}

/// Checks what every format requires of a metric; returns the reason it is unusable.
fn validate(m: &Metric<'_>) -> Result<(), String> {
    if m.name.is_empty() {
        return Err("metric has no name".into());
    }
    if m.fields.is_empty() {
        return Err(format!("metric '{}' has no fields", m.name));
    }
    Ok(())
}

/// Splits non-finite numeric values off a metric: they are rejected, the rest is kept.
fn non_finite_fields(m: &Metric<'_>) -> Option<String> {
    let bad: Vec<&str> =
        m.fields.iter().filter(|(_, v)| v.numeric().is_some_and(|x| !x.is_finite())).map(|(k, _)| &**k).collect();
    if bad.is_empty() {
        None
    } else {
        Some(format!("non-finite value in field(s) {} of '{}'", bad.join(", "), m.name))
    }
}

/// Hands a metric on, rejecting its non-finite values with a reason.
fn emit(mut m: Metric<'_>, payload: &[u8], out: &mut impl Decoded) {
    if let Err(reason) = validate(&m) {
        out.reject(reason, payload);
        return;
    }
    if let Some(reason) = non_finite_fields(&m) {
        out.reject(reason, payload);
        m.fields.retain(|(_, v)| v.numeric().is_none_or(|x| x.is_finite()));
        if m.fields.is_empty() {
            return;
        }
    }
    out.metric(&m);
}

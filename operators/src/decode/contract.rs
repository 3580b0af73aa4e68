//! The decoders' promise, written as a check that the fuzz harness and the regression tests share.
//!
//! For every input, whatever its bytes: the decoder does not panic; it produces at least one
//! metric or one reject; every reject carries a reason; every metric has a name, at least one
//! field, only finite numeric values, and a timestamp in `0..=MAX_TIMESTAMP_NS` (or the arrival
//! time, which line protocol uses for lines without one).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{decode, Decoded, Format, Metric, TimestampUnit, MAX_TIMESTAMP_NS};

/// What one input produced when the promise held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub metrics: u64,
    pub rejects: u64,
}

/// How an input broke the promise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("decoder panicked: {0}")]
    Panic(String),
    #[error("contract violated: {0}")]
    Violation(String),
}

/// Decodes `payload` and checks everything the decoder produced against the promise.
///
/// A panic is caught and reported as [`Broken::Panic`]; the panic hook still runs, so callers
/// that expect many panics (the fuzz harness) install a quiet one.
pub fn check_contract(format: Format, payload: &[u8], unit: TimestampUnit, arrival_ns: i64) -> Result<Tally, Broken> {
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut check = Check { arrival_ns, tally: Tally::default(), violation: None };
        decode(format, payload, unit, arrival_ns, &mut check);
        check
    }));
    let check = run.map_err(|p| Broken::Panic(panic_message(&*p)))?;
    if let Some(v) = check.violation {
        return Err(Broken::Violation(v));
    }
    if check.tally.metrics + check.tally.rejects == 0 {
        return Err(Broken::Violation("input produced neither a metric nor a reject".into()));
    }
    Ok(check.tally)
}

struct Check {
    arrival_ns: i64,
    tally: Tally,
    /// The first broken promise; later ones are usually consequences of it.
    violation: Option<String>,
}

impl Decoded for Check {
    fn metric(&mut self, m: &Metric<'_>) {
        self.tally.metrics += 1;
        if self.violation.is_none() {
            self.violation = metric_violation(m, self.arrival_ns);
        }
    }

    fn reject(&mut self, reason: String, _payload: &[u8]) {
        self.tally.rejects += 1;
        if self.violation.is_none() && reason.trim().is_empty() {
            self.violation = Some("reject without a reason".into());
        }
    }
}

/// What is wrong with a metric a decoder handed on, if anything. Names are cut short because
/// fuzzed ones can be megabytes long.
fn metric_violation(m: &Metric<'_>, arrival_ns: i64) -> Option<String> {
    if m.name.is_empty() {
        return Some("metric without a name".into());
    }
    if m.fields.is_empty() {
        return Some(format!("metric '{:.60}' without fields", m.name));
    }
    if let Some((k, v)) = m.fields.iter().find(|(_, v)| v.numeric().is_some_and(|x| !x.is_finite())) {
        return Some(format!("metric '{:.60}' has non-finite value {v:?} in field '{k:.60}'", m.name));
    }
    if m.timestamp != arrival_ns && !(0..=MAX_TIMESTAMP_NS).contains(&m.timestamp) {
        return Some(format!("metric '{:.60}' has timestamp {} outside 0..={MAX_TIMESTAMP_NS}", m.name, m.timestamp));
    }
    None
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_message_keeps_the_promise() {
        let t = check_contract(Format::Influx, b"cpu v=1 1\n", TimestampUnit::Auto, 7).unwrap();
        assert_eq!(t, Tally { metrics: 1, rejects: 0 });
    }

    #[test]
    fn broken_promises_are_named() {
        let m = Metric {
            name: "m".into(),
            fields: vec![("v".into(), super::super::FieldValue::Float(f64::NAN))],
            ..Default::default()
        };
        assert!(metric_violation(&m, 0).unwrap().contains("non-finite"));
        let m = Metric { name: "".into(), ..Default::default() };
        assert!(metric_violation(&m, 0).unwrap().contains("without a name"));
        let m = Metric {
            name: "m".into(),
            fields: vec![("v".into(), super::super::FieldValue::Int(1))],
            timestamp: -1,
            tags: vec![],
        };
        assert!(metric_violation(&m, 0).unwrap().contains("outside"));
    }
}

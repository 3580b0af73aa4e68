//! Influx line protocol, parsed by the `influxdb-line-protocol` crate (InfluxDB's own parser).
//! Each line is decoded on its own: a bad line is rejected alone, with the parser's reason.

use std::borrow::Cow;

use influxdb_line_protocol::{parse_lines, split_lines, FieldValue as LpValue};

use super::{emit, Decoded, FieldValue, Metric, TimestampUnit};

/// Decodes one message of line protocol. A line without a timestamp gets `arrival_ns`.
/// Timestamps are nanoseconds unless `unit` says otherwise (`Auto` means nanoseconds here,
/// as in InfluxDB's write API).
pub fn decode_influx(payload: &[u8], unit: TimestampUnit, arrival_ns: i64, out: &mut impl Decoded) {
    let unit = if unit == TimestampUnit::Auto { TimestampUnit::Ns } else { unit };
    // Lines that carry something (a metric, or bytes rejected as not being one).
    let mut lines = 0usize;
    // Invalid UTF-8 only spoils the lines it is on.
    for raw_line in payload.split(|&b| b == b'\n') {
        let text = match std::str::from_utf8(raw_line) {
            Ok(t) => t,
            Err(e) => {
                lines += 1;
                out.reject(format!("line is not valid UTF-8: {e}"), raw_line);
                continue;
            }
        };
        // split_lines also splits on newlines inside quoted strings correctly; a raw line
        // holds no newline, so this yields the line itself (and handles `\r`).
        for line in split_lines(text) {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            lines += 1;
            decode_line(trimmed, unit, arrival_ns, out);
        }
    }
    // Blank lines and comments are fine between metrics, but a message of nothing else would
    // vanish without a trace.
    if lines == 0 {
        out.reject("message holds no line-protocol line (empty, blank or only comments)".into(), payload);
    }
}

fn decode_line(line: &str, unit: TimestampUnit, arrival_ns: i64, out: &mut impl Decoded) {
    let parsed = match parse_lines(line).next() {
        Some(Ok(p)) => p,
        Some(Err(e)) => return out.reject(format!("invalid line protocol: {e}"), line.as_bytes()),
        // Not reached: the line is trimmed and not a comment, so the parser sees a line.
        None => return out.reject("invalid line protocol: no line found".into(), line.as_bytes()),
    };
    let timestamp = match parsed.timestamp {
        Some(t) => match unit.int_to_nanos(t) {
            Ok(t) => t,
            Err(reason) => return out.reject(reason, line.as_bytes()),
        },
        None => arrival_ns,
    };
    let tags = parsed
        .series
        .tag_set
        .as_ref()
        .map(|t| t.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect())
        .unwrap_or_default();
    let fields = parsed
        .field_set
        .iter()
        .map(|(k, v)| {
            let v = match v {
                LpValue::F64(x) => FieldValue::Float(*x),
                LpValue::I64(x) => FieldValue::Int(*x),
                LpValue::U64(x) => FieldValue::UInt(*x),
                LpValue::Boolean(b) => FieldValue::Bool(*b),
                LpValue::String(_) => FieldValue::Str,
            };
            (Cow::Borrowed(k.as_str()), v)
        })
        .collect();
    let metric = Metric { name: Cow::Borrowed(parsed.series.measurement.as_str()), tags, fields, timestamp };
    emit(metric, line.as_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::super::Collected;
    use super::*;

    fn run(s: &[u8]) -> Collected {
        let mut c = Collected::default();
        decode_influx(s, TimestampUnit::Auto, 42, &mut c);
        c
    }

    #[test]
    fn several_lines_with_types_and_escapes() {
        let c = run(b"cpu,nsId=ns-01,vmId=vm\\ 1,cspType=aws usage_idle=97.1,usage_user=1.2 1700000000000000000\n\
disk,path=/data n=5i,u=7u,ok=t,s=\"a b\" 1700000000000000001\n\
mem used=3\n");
        assert!(c.rejects.is_empty(), "{:?}", c.rejects);
        assert_eq!(c.metrics.len(), 3);
        assert_eq!(c.metrics[0].tag("vmId"), Some("vm 1"));
        assert_eq!(c.metrics[0].fields[0].1, FieldValue::Float(97.1));
        assert_eq!(c.metrics[1].fields[0].1, FieldValue::Int(5));
        assert_eq!(c.metrics[1].fields[1].1, FieldValue::UInt(7));
        assert_eq!(c.metrics[1].fields[2].1, FieldValue::Bool(true));
        assert_eq!(c.metrics[1].fields[3].1, FieldValue::Str);
        assert_eq!(c.metrics[1].timestamp, 1_700_000_000_000_000_001);
        assert_eq!(c.metrics[2].timestamp, 42, "a line without timestamp gets the arrival time");
    }

    #[test]
    fn a_bad_line_does_not_spoil_the_others() {
        let c = run(b"cpu v=1 1\ncpu v= 2\n\xff\xfe v=1\nmem v=2 3\n");
        assert_eq!(c.metrics.len(), 2);
        assert_eq!(c.rejects.len(), 2);
        assert!(c.rejects[0].0.contains("invalid line protocol"));
        assert!(c.rejects[1].0.contains("UTF-8"));
    }

    #[test]
    fn a_message_without_lines_is_rejected() {
        for input in [&b""[..], b"\n\n", b" \r\n\t", b"# only a comment\n", "\u{85}".as_bytes()] {
            let c = run(input);
            assert!(c.metrics.is_empty());
            assert_eq!(c.rejects.len(), 1, "{input:?}");
            assert!(c.rejects[0].0.contains("no line-protocol line"), "{}", c.rejects[0].0);
        }
        let c = run(b"# header\n\ncpu v=1 1\n");
        assert_eq!((c.metrics.len(), c.rejects.len()), (1, 0), "comments and blank lines beside a metric are fine");
    }

    #[test]
    fn far_future_timestamps_are_rejected() {
        let c = run(b"cpu v=1 7258118400000000000\ncpu v=2 7258118400000000001\ncpu v=3 9223372036854775807\n");
        assert_eq!(c.metrics.len(), 1);
        assert_eq!(c.rejects.len(), 2);
        assert!(c.rejects.iter().all(|(r, _)| r.contains("after 2200-01-01")), "{:?}", c.rejects);
    }

    #[test]
    fn non_finite_values_are_rejected_but_others_kept() {
        let c = run(b"cpu a=1,b=1e400 1\n");
        assert_eq!(c.rejects.len(), 1, "{:?}", c.rejects);
        assert_eq!(c.metrics.len(), 1);
        assert_eq!(c.metrics[0].fields.len(), 1);
    }
}

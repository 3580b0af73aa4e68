//! Telegraf JSON: `{"name","tags","fields","timestamp"}` per metric, or `{"metrics":[…]}`.
//!
//! Deserialisation borrows strings from the message whenever they contain no escapes. Each
//! element of a batch is decoded on its own, so one malformed element is rejected alone.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{emit, Decoded, FieldValue, Metric, TimestampUnit};

/// Deepest nesting accepted inside a metric (the format itself needs 2).
const MAX_DEPTH: usize = 16;

struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Tag values may be strings, numbers or booleans; all are kept as text.
struct TagValue<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for TagValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TagValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean tag value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(TagValue(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

struct Tags<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Tags<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Tags<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut tags = Vec::with_capacity(8);
                while let Some((k, v)) = map.next_entry::<Str<'a>, TagValue<'a>>()? {
                    tags.push((k.0, v.0));
                }
                Ok(Tags(tags))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Tags(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

struct Field(FieldValue);

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, boolean or string field value")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field, E> {
                Ok(Field(FieldValue::Float(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field, E> {
                Ok(Field(FieldValue::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field, E> {
                Ok(Field(FieldValue::UInt(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field, E> {
                Ok(Field(FieldValue::Bool(v)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Field, E> {
                Ok(Field(FieldValue::Str))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
                Err(E::custom("null field value"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Field, A::Error> {
                Err(de::Error::custom("array field value"))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Field, A::Error> {
                Err(de::Error::custom("object field value"))
            }
        }
        d.deserialize_any(V)
    }
}

struct Fields<'a>(Vec<(Cow<'a, str>, FieldValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(12);
                while let Some(k) = map.next_key::<Str<'a>>()? {
                    let v: Field = map.next_value().map_err(|e| de::Error::custom(format!("field '{}': {e}", k.0)))?;
                    fields.push((k.0, v.0));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

enum Timestamp {
    Int(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a numeric timestamp")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v).map(Timestamp::Int).map_err(|_| E::custom(format!("timestamp {v} out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Ok(Timestamp::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawMetric<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    tags: Option<Tags<'a>>,
    #[serde(borrow)]
    fields: Option<Fields<'a>>,
    timestamp: Option<Timestamp>,
    #[serde(borrow)]
    metrics: Option<Vec<&'a RawValue>>,
}

/// Nesting depth of a JSON text (brackets outside strings), stopping early past `limit`.
fn too_deep(payload: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in payload {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Decodes one Telegraf JSON message.
pub fn decode_json(payload: &[u8], unit: TimestampUnit, out: &mut impl Decoded) {
    decode_value(payload, unit, true, out)
}

fn decode_value(payload: &[u8], unit: TimestampUnit, allow_batch: bool, out: &mut impl Decoded) {
    // serde_json has its own recursion limit (128); ours is far lower and keeps the error clear.
    if payload.iter().filter(|&&b| b == b'{' || b == b'[').nth(MAX_DEPTH).is_some() && too_deep(payload, MAX_DEPTH) {
        out.reject(format!("JSON nested deeper than {MAX_DEPTH} levels"), payload);
        return;
    }
    // serde would read an array as a struct's fields in order; a metric is an object.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        out.reject("invalid Telegraf JSON: expected an object, found an array".into(), payload);
        return;
    }
    let raw: RawMetric<'_> = match serde_json::from_slice(payload) {
        Ok(raw) => raw,
        Err(e) => {
            out.reject(format!("invalid Telegraf JSON: {e}"), payload);
            return;
        }
    };
    if let Some(batch) = raw.metrics {
        if !allow_batch {
            out.reject("nested \"metrics\" batch inside a batch".into(), payload);
            return;
        }
        if batch.is_empty() {
            out.reject("empty \"metrics\" batch".into(), payload);
            return;
        }
        for element in batch {
            decode_value(element.get().as_bytes(), unit, false, out);
        }
        return;
    }
    let name = match raw.name {
        Some(n) => n.0,
        None => return out.reject("missing \"name\"".into(), payload),
    };
    let fields = match raw.fields {
        Some(f) => f.0,
        None => return out.reject(format!("metric '{name}' has no \"fields\""), payload),
    };
    let timestamp = match raw.timestamp {
        Some(Timestamp::Int(v)) => unit.int_to_nanos(v),
        Some(Timestamp::Float(v)) => unit.float_to_nanos(v),
        None => Err(format!("metric '{name}' has no \"timestamp\"")),
    };
    let timestamp = match timestamp {
        Ok(t) => t,
        Err(reason) => return out.reject(reason, payload),
    };
    let metric = Metric { name, tags: raw.tags.map(|t| t.0).unwrap_or_default(), fields, timestamp };
    emit(metric, payload, out);
}

#[cfg(test)]
mod tests {
    use super::super::Collected;
    use super::*;

    fn run(s: &str) -> Collected {
        let mut c = Collected::default();
        decode_json(s.as_bytes(), TimestampUnit::Auto, &mut c);
        c
    }

    #[test]
    fn single_metric() {
        let c = run(
            r#"{"fields":{"usage_idle":97.1,"n":3,"ok":true,"s":"x"},"name":"cpu","tags":{"nsId":"ns-01","vmId":"vm\"1"},"timestamp":1700000000}"#,
        );
        assert!(c.rejects.is_empty(), "{:?}", c.rejects);
        let m = &c.metrics[0];
        assert_eq!(m.name, "cpu");
        assert_eq!(m.tag("vmId"), Some("vm\"1"));
        assert_eq!(m.timestamp, 1_700_000_000_000_000_000);
        assert_eq!(m.fields[0], ("usage_idle".into(), FieldValue::Float(97.1)));
        assert_eq!(m.fields[1].1, FieldValue::UInt(3));
        assert_eq!(m.fields[2].1, FieldValue::Bool(true));
        assert_eq!(m.fields[3].1, FieldValue::Str);
    }

    #[test]
    fn timestamp_units_by_magnitude() {
        for (ts, want) in [
            ("1700000000", 1_700_000_000_000_000_000i64),
            ("1700000000.5", 1_700_000_000_500_000_000),
            ("1700000000123", 1_700_000_000_123_000_000),
            ("1700000000123456", 1_700_000_000_123_456_000),
            ("1700000000123456789", 1_700_000_000_123_456_789),
        ] {
            let c = run(&format!(r#"{{"name":"m","fields":{{"v":1}},"timestamp":{ts}}}"#));
            assert_eq!(c.metrics[0].timestamp, want, "{ts}");
        }
    }

    #[test]
    fn batch_keeps_good_elements() {
        let c = run(
            r#"{"metrics":[{"name":"a","fields":{"v":1},"timestamp":1700000000},{"name":"b","fields":{"v":[1]},"timestamp":1},{"name":"c","fields":{"v":2},"timestamp":1700000001}]}"#,
        );
        assert_eq!(c.metrics.len(), 2);
        assert_eq!(c.rejects.len(), 1);
        assert!(c.rejects[0].0.contains("array field value"), "{}", c.rejects[0].0);
        assert!(String::from_utf8_lossy(&c.rejects[0].1).contains("\"b\""));
    }

    #[test]
    fn bad_messages_are_rejected_with_reasons() {
        for (input, reason) in [
            ("not json", "invalid Telegraf JSON"),
            (r#"{"fields":{"v":1},"timestamp":1}"#, "missing \"name\""),
            (r#"{"name":"m","timestamp":1}"#, "no \"fields\""),
            (r#"{"name":"m","fields":{"v":1}}"#, "no \"timestamp\""),
            (r#"{"name":"m","fields":{},"timestamp":1}"#, "has no fields"),
            (r#"{"name":"m","fields":{"v":1},"timestamp":-5}"#, "negative timestamp"),
            (r#"{"name":"m","fields":{"v":null},"timestamp":1}"#, "null field value"),
            (r#"{"name":"m","fields":{"v":1},"timestamp":"now"}"#, "numeric timestamp"),
            (r#"{"name":"m","fields":{"v":1e999},"timestamp":1}"#, "invalid Telegraf JSON"),
            (&format!("{}1{}", "[".repeat(40), "]".repeat(40)), "nested deeper"),
            (r#"{"metrics":[]}"#, "empty \"metrics\" batch"),
            (r#"["cpu",null,{"v":1},1700000000,null]"#, "expected an object, found an array"),
            (r#"{"name":"m","fields":{"v":1},"timestamp":7258118400000000001}"#, "after 2200-01-01"),
            (r#"{"name":"m","fields":{"v":1},"timestamp":9223372036854775807}"#, "after 2200-01-01"),
        ] {
            let c = run(input);
            assert!(c.metrics.is_empty(), "{input}");
            assert_eq!(c.rejects.len(), 1, "{input}");
            assert!(c.rejects[0].0.contains(reason), "{input}: {}", c.rejects[0].0);
        }
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut c = Collected::default();
        decode_json(b"{\"name\":\"\xff\",\"fields\":{\"v\":1},\"timestamp\":1}", TimestampUnit::Auto, &mut c);
        assert_eq!(c.rejects.len(), 1);
    }
}

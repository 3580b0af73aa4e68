//! Writes one metric as the bytes a Telegraf agent would send: the JSON serializer's
//! `{"fields":{…},"name":…,"tags":{…},"timestamp":…}` or one line of Influx line protocol.
//!
//! This is the generator's hot loop, so nothing here goes through `serde_json::Value` or the
//! `fmt` machinery: numbers are written digit by digit into a reused buffer. Gauges are kept as
//! fixed-point integers (see [`FieldWriter::fixed`]) so that identities such as "the cpu fields
//! sum to 100" hold exactly in decimal and survive the trip through text.

use operators::decode::Format;

/// Tag values an agent puts on every metric, already escaped for the fleet's format.
#[derive(Clone, Debug)]
pub(crate) struct AgentTagValues {
    /// In the order of [`AgentTag`].
    values: [Box<str>; 5],
}

/// The agent tags, in the order of [`AgentTagValues::values`]; `host` repeats `vmId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentTag {
    Csp,
    Mcis,
    Ns,
    Os,
    Vm,
}

const AGENT_TAGS: [(&str, AgentTag); 6] = [
    ("cspType", AgentTag::Csp),
    ("host", AgentTag::Vm),
    ("mcisId", AgentTag::Mcis),
    ("nsId", AgentTag::Ns),
    ("osType", AgentTag::Os),
    ("vmId", AgentTag::Vm),
];

impl AgentTagValues {
    /// Escapes the agent's tag values for `format`.
    pub(crate) fn new(format: Format, ns: &str, mcis: &str, vm: &str, csp: &str, os: &str) -> Self {
        let esc = |v: &str| -> Box<str> {
            let mut buf = Vec::with_capacity(v.len());
            match format {
                Format::Json => json_escape(&mut buf, v),
                Format::Influx => tag_escape(&mut buf, v),
            }
            // Both escapers only insert ASCII into valid UTF-8.
            String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()).into()
        };
        AgentTagValues { values: [esc(csp), esc(mcis), esc(ns), esc(os), esc(vm)] }
    }

    fn get(&self, tag: AgentTag) -> &str {
        &self.values[tag as usize]
    }
}

/// One tag of a measurement: an agent tag or a fixed instance tag (`cpu=cpu-total`, …).
#[derive(Clone, Debug)]
enum TagSlot {
    Agent(&'static str, AgentTag),
    Fixed(&'static str, &'static str),
}

impl TagSlot {
    fn key(&self) -> &'static str {
        match self {
            TagSlot::Agent(k, _) | TagSlot::Fixed(k, _) => k,
        }
    }
}

/// Encodes metrics of one format. The tags of each measurement are merged once, sorted by key
/// as Telegraf sorts them, so encoding a message only copies short strings.
#[derive(Clone, Debug)]
pub(crate) struct Encoder {
    format: Format,
    /// Per measurement (index as in [`crate::fleet::MEASUREMENTS`]): its tags in key order.
    tags: Vec<Vec<TagSlot>>,
}

impl Encoder {
    /// `instance_tags[i]` are the fixed tags of measurement `i`; their values must need no escaping.
    pub(crate) fn new(format: Format, instance_tags: &[&[(&'static str, &'static str)]]) -> Self {
        let tags = instance_tags
            .iter()
            .map(|fixed| {
                let mut slots: Vec<TagSlot> = AGENT_TAGS.iter().map(|&(k, t)| TagSlot::Agent(k, t)).collect();
                slots.extend(fixed.iter().map(|&(k, v)| TagSlot::Fixed(k, v)));
                // Byte order of the keys, like Go's sort.Strings.
                slots.sort_by(|a, b| a.key().as_bytes().cmp(b.key().as_bytes()));
                slots
            })
            .collect();
        Encoder { format, tags }
    }

    /// The fleet's format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// The timestamp a decoder reads back for event time `ts_ns`: whole seconds for JSON
    /// (Telegraf's default `json_timestamp_units = "1s"`), nanoseconds for line protocol.
    pub(crate) fn wire_timestamp(&self, ts_ns: i64) -> i64 {
        match self.format {
            Format::Json => ts_ns.div_euclid(1_000_000_000) * 1_000_000_000,
            Format::Influx => ts_ns,
        }
    }

    /// Clears `buf` and writes measurement `index` named `name` of the agent with `tags` at
    /// `ts_ns`; `fields` writes the fields, in key order.
    pub(crate) fn encode(
        &self,
        buf: &mut Vec<u8>,
        index: usize,
        name: &str,
        tags: &AgentTagValues,
        ts_ns: i64,
        fields: impl FnOnce(&mut FieldWriter<'_>),
    ) {
        buf.clear();
        let slots = &self.tags[index];
        match self.format {
            Format::Json => {
                buf.extend_from_slice(b"{\"fields\":{");
                fields(&mut FieldWriter { buf, format: Format::Json, first: true });
                buf.extend_from_slice(b"},\"name\":\"");
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(b"\",\"tags\":{");
                for (i, slot) in slots.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.push(b'"');
                    buf.extend_from_slice(slot.key().as_bytes());
                    buf.extend_from_slice(b"\":\"");
                    let value = match slot {
                        TagSlot::Agent(_, t) => tags.get(*t),
                        TagSlot::Fixed(_, v) => v,
                    };
                    buf.extend_from_slice(value.as_bytes());
                    buf.push(b'"');
                }
                buf.extend_from_slice(b"},\"timestamp\":");
                write_i64(buf, ts_ns.div_euclid(1_000_000_000));
                buf.push(b'}');
            }
            Format::Influx => {
                buf.extend_from_slice(name.as_bytes());
                for slot in slots {
                    buf.push(b',');
                    buf.extend_from_slice(slot.key().as_bytes());
                    buf.push(b'=');
                    let value = match slot {
                        TagSlot::Agent(_, t) => tags.get(*t),
                        TagSlot::Fixed(_, v) => v,
                    };
                    buf.extend_from_slice(value.as_bytes());
                }
                buf.push(b' ');
                fields(&mut FieldWriter { buf, format: Format::Influx, first: true });
                buf.push(b' ');
                write_i64(buf, ts_ns);
            }
        }
    }
}

/// Writes the fields of one metric. Field names are plain identifiers that need no escaping.
pub(crate) struct FieldWriter<'a> {
    buf: &'a mut Vec<u8>,
    format: Format,
    first: bool,
}

impl FieldWriter<'_> {
    fn name(&mut self, name: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        match self.format {
            Format::Json => {
                self.buf.push(b'"');
                self.buf.extend_from_slice(name.as_bytes());
                self.buf.extend_from_slice(b"\":");
            }
            Format::Influx => {
                self.buf.extend_from_slice(name.as_bytes());
                self.buf.push(b'=');
            }
        }
    }

    /// An integer field (a counter or a byte count): `123` in JSON, `123i` in line protocol.
    pub(crate) fn int(&mut self, name: &str, v: u64) {
        self.name(name);
        write_u64(self.buf, v);
        if self.format == Format::Influx {
            self.buf.push(b'i');
        }
    }

    /// A float field given in millionths (`units / 1e6`), written as a decimal with at most six
    /// fractional digits and at least one, so every decoder reads it as a float.
    pub(crate) fn fixed(&mut self, name: &str, micros: u64) {
        self.name(name);
        write_fixed6(self.buf, micros);
    }
}

/// Decimal digits of `v`.
pub(crate) fn write_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Decimal digits of `v`, with a sign when negative.
pub(crate) fn write_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    write_u64(buf, v.unsigned_abs());
}

/// `micros / 1e6` as a decimal: `12.5`, `0.000001`, `100.0`.
pub(crate) fn write_fixed6(buf: &mut Vec<u8>, micros: u64) {
    write_u64(buf, micros / 1_000_000);
    buf.push(b'.');
    let mut frac = micros % 1_000_000;
    let mut width = 6;
    while width > 1 && frac.is_multiple_of(10) {
        frac /= 10;
        width -= 1;
    }
    let mut digits = [b'0'; 6];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// JSON string content as Go's `encoding/json` writes it (HTML-safe: `<`, `>`, `&` escaped too).
pub(crate) fn json_escape(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0..=0x1f | b'<' | b'>' | b'&' => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
            }
            _ => buf.push(b),
        }
    }
}

/// A tag value (or key) in line protocol: `,`, `=`, space and backslash escaped with a
/// backslash, control characters written as `\t`, `\n`, …. Line protocol cannot carry a value
/// that ends in a backslash, so trailing backslashes are dropped (as Telegraf does).
pub(crate) fn tag_escape(buf: &mut Vec<u8>, s: &str) {
    for &b in s.trim_end_matches('\\').as_bytes() {
        match b {
            b',' | b'=' | b' ' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            0x0c => buf.extend_from_slice(b"\\f"),
            _ => buf.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use operators::decode::{decode, Collected, FieldValue, TimestampUnit};

    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn numbers() {
        assert_eq!(text(|b| write_u64(b, 0)), "0");
        assert_eq!(text(|b| write_u64(b, u64::MAX)), u64::MAX.to_string());
        assert_eq!(text(|b| write_i64(b, i64::MIN)), i64::MIN.to_string());
        assert_eq!(text(|b| write_i64(b, -7)), "-7");
        for (micros, want) in [
            (0, "0.0"),
            (1, "0.000001"),
            (12_500_000, "12.5"),
            (100_000_000, "100.0"),
            (3_141_592, "3.141592"),
            (10, "0.00001"),
        ] {
            assert_eq!(text(|b| write_fixed6(b, micros)), want);
            assert_eq!(want.parse::<f64>().unwrap(), micros as f64 / 1e6);
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(text(|b| json_escape(b, "a\"b\\c\n<&>\u{1}é")), r#"a\"b\\c\n\u003c\u0026\u003e\u0001é"#);
        assert_eq!(text(|b| tag_escape(b, "vm 1,a=b\\c\\")), r"vm\ 1\,a\=b\\c");
    }

    #[test]
    fn awkward_tag_values_survive_both_formats() {
        let fixed: &[&[(&str, &str)]] = &[&[("cpu", "cpu-total")]];
        for format in [Format::Json, Format::Influx] {
            let enc = Encoder::new(format, fixed);
            let tags = AgentTagValues::new(format, "ns 1", "m,c=s", "vm\"\\1\\", "aws", "linux");
            let mut buf = Vec::new();
            enc.encode(&mut buf, 0, "cpu", &tags, 1_700_000_000_123_456_789, |f| {
                f.fixed("usage_idle", 97_100_000);
                f.int("n", 3);
            });
            let mut c = Collected::default();
            decode(format, &buf, TimestampUnit::Auto, 0, &mut c);
            assert!(c.rejects.is_empty(), "{format:?}: {:?} in {}", c.rejects, String::from_utf8_lossy(&buf));
            let m = &c.metrics[0];
            assert_eq!(m.tag("nsId"), Some("ns 1"));
            assert_eq!(m.tag("mcisId"), Some("m,c=s"));
            let vm = if format == Format::Json { "vm\"\\1\\" } else { "vm\"\\1" };
            assert_eq!(m.tag("host"), Some(vm));
            assert_eq!(m.tag("cpu"), Some("cpu-total"));
            assert_eq!(m.timestamp, enc.wire_timestamp(1_700_000_000_123_456_789));
            assert_eq!(m.fields[0].1, FieldValue::Float(97.1));
            assert!(matches!(m.fields[1].1, FieldValue::Int(3) | FieldValue::UInt(3)));
        }
    }

    #[test]
    fn json_layout_is_telegrafs() {
        let enc = Encoder::new(Format::Json, &[&[("path", "/"), ("device", "sda1"), ("fstype", "ext4")]]);
        let tags = AgentTagValues::new(Format::Json, "ns-0", "mcis-0-0", "vm-1", "aws", "linux");
        let mut buf = Vec::new();
        enc.encode(&mut buf, 0, "disk", &tags, 1_700_000_000_999_000_000, |f| f.int("free", 1));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#"{"fields":{"free":1},"name":"disk","tags":{"cspType":"aws","device":"sda1","fstype":"ext4","host":"vm-1","mcisId":"mcis-0-0","nsId":"ns-0","osType":"linux","path":"/","vmId":"vm-1"},"timestamp":1700000000}"#
        );
    }
}

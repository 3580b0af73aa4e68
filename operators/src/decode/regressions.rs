//! Regression cases for the decoders: every file under `fuzz/regressions/json/` and
//! `fuzz/regressions/influx/` is an input the fuzz harness found, or one standing for a class of
//! hostile input, and each must keep the promise of [`check_contract`] in every timestamp unit.
//! A file whose name starts with `ok-` must also decode without a reject; any other file must
//! produce at least one reject. Giant messages are built here rather than kept as files.

use std::path::{Path, PathBuf};

use super::{check_contract, Collected, Format, Tally, TimestampUnit, MAX_MESSAGE_BYTES};

const ARRIVAL_NS: i64 = 1_700_000_000_000_000_000;
const UNITS: [TimestampUnit; 5] =
    [TimestampUnit::Auto, TimestampUnit::S, TimestampUnit::Ms, TimestampUnit::Us, TimestampUnit::Ns];

fn cases(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(dir);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("directory entry").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
        .collect()
}

fn check_all(format: Format, dir: &str) -> usize {
    let cases = cases(dir);
    for (path, payload) in &cases {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        for unit in UNITS {
            let tally = check_contract(format, payload, unit, ARRIVAL_NS)
                .unwrap_or_else(|e| panic!("{dir}/{name} ({unit:?}): {e}"));
            // Units other than the default turn valid timestamps into far-future ones.
            if unit == TimestampUnit::Auto {
                if name.starts_with("ok-") {
                    assert!(tally.metrics > 0 && tally.rejects == 0, "{dir}/{name}: {tally:?}");
                } else {
                    assert!(tally.rejects > 0, "{dir}/{name} should be rejected (at least in part): {tally:?}");
                }
            }
        }
    }
    cases.len()
}

#[test]
fn json_cases_keep_the_promise() {
    assert!(check_all(Format::Json, "json") >= 12, "fewer JSON regression cases than expected");
}

#[test]
fn influx_cases_keep_the_promise() {
    assert!(check_all(Format::Influx, "influx") >= 12, "fewer line-protocol regression cases than expected");
}

fn json_metric(i: usize) -> String {
    format!(
        r#"{{"fields":{{"usage_idle":97.5,"n":{i}}},"name":"cpu","tags":{{"nsId":"ns-01","vmId":"vm-{i}"}},"timestamp":1700000000}}"#
    )
}

fn influx_line(i: usize) -> String {
    format!("cpu,nsId=ns-01,vmId=vm-{i} usage_idle=97.5,n={i}i 1700000000000000000\n")
}

/// Builds a message of whole metrics from `part`, as large as fits within `limit` bytes.
fn message_up_to(limit: usize, head: &str, sep: &str, tail: &str, part: impl Fn(usize) -> String) -> (Vec<u8>, usize) {
    let mut out = head.to_string();
    let mut n = 0;
    loop {
        let next = part(n);
        if out.len() + sep.len() + next.len() + tail.len() > limit {
            break;
        }
        if n > 0 {
            out.push_str(sep);
        }
        out.push_str(&next);
        n += 1;
    }
    out.push_str(tail);
    (out.into_bytes(), n)
}

#[test]
fn giant_messages_are_rejected_whole_with_the_limit_as_reason() {
    let (json, _) = message_up_to(MAX_MESSAGE_BYTES + 4096, r#"{"metrics":["#, ",", "]}", json_metric);
    let (influx, _) = message_up_to(MAX_MESSAGE_BYTES + 4096, "", "", "", influx_line);
    for (format, payload) in [(Format::Json, json), (Format::Influx, influx)] {
        assert!(payload.len() > MAX_MESSAGE_BYTES);
        let mut c = Collected::default();
        super::decode(format, &payload, TimestampUnit::Auto, ARRIVAL_NS, &mut c);
        assert!(c.metrics.is_empty(), "{format:?}");
        assert_eq!(c.rejects.len(), 1, "{format:?}");
        assert!(c.rejects[0].0.contains("exceeds the limit"), "{format:?}: {}", c.rejects[0].0);
        assert_eq!(
            check_contract(format, &payload, TimestampUnit::Auto, ARRIVAL_NS),
            Ok(Tally { metrics: 0, rejects: 1 })
        );
    }
}

#[test]
fn messages_just_under_the_limit_decode_in_full() {
    let (json, json_n) = message_up_to(MAX_MESSAGE_BYTES, r#"{"metrics":["#, ",", "]}", json_metric);
    let (influx, influx_n) = message_up_to(MAX_MESSAGE_BYTES, "", "", "", influx_line);
    for (format, payload, n) in [(Format::Json, json, json_n), (Format::Influx, influx, influx_n)] {
        assert!(payload.len() <= MAX_MESSAGE_BYTES && payload.len() > MAX_MESSAGE_BYTES - 200);
        let tally = check_contract(format, &payload, TimestampUnit::Auto, ARRIVAL_NS).unwrap();
        assert_eq!(tally, Tally { metrics: n as u64, rejects: 0 }, "{format:?}");
    }
}

#[test]
fn nesting_as_deep_as_the_limit_allows_is_rejected() {
    let half = MAX_MESSAGE_BYTES / 2;
    for payload in [
        "[".repeat(MAX_MESSAGE_BYTES),
        format!("{}{}", "[".repeat(half), "]".repeat(half)),
        format!(r#"{{"name":"m","fields":{}1{},"timestamp":1}}"#, r#"{"a":"#.repeat(half / 5), "}".repeat(half / 5)),
    ] {
        let tally = check_contract(Format::Json, payload.as_bytes(), TimestampUnit::Auto, ARRIVAL_NS).unwrap();
        assert_eq!(tally, Tally { metrics: 0, rejects: 1 });
    }
}

#[test]
fn a_giant_string_is_decoded_or_rejected_but_never_breaks() {
    let long = "x".repeat(MAX_MESSAGE_BYTES - 200);
    let json = format!(r#"{{"name":"{long}","fields":{{"v":1}},"timestamp":1700000000}}"#);
    let influx = format!("{long} v=1 1700000000000000000");
    for (format, payload) in [(Format::Json, json), (Format::Influx, influx)] {
        let tally = check_contract(format, payload.as_bytes(), TimestampUnit::Auto, ARRIVAL_NS).unwrap();
        assert_eq!(tally, Tally { metrics: 1, rejects: 0 }, "{format:?}");
    }
}

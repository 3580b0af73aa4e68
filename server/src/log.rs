//! The server's log: one JSON object per line on stderr, `{"ts", "level", "msg", …fields}`.
//! Callers never pass secrets (tokens, handler URLs' paths, passwords) as fields.

use serde_json::{Map, Value};

/// Writes one log line. `fields` (a JSON object) are added after `ts`, `level` and `msg`.
pub(crate) fn event(level: &str, msg: &str, fields: Value) {
    let mut line = Map::new();
    line.insert("ts".into(), Value::String(crate::store::now_rfc3339()));
    line.insert("level".into(), Value::String(level.into()));
    line.insert("msg".into(), Value::String(msg.into()));
    if let Value::Object(fields) = fields {
        for (k, v) in fields {
            line.entry(k).or_insert(v);
        }
    }
    eprintln!("{}", Value::Object(line));
}

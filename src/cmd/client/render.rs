//! What the server answers, shown to people: JSON kept in the server's key order, tables with aligned
//! columns, one record as aligned `key  value` lines, and `--json` output pretty-printed without
//! changing a byte of the values.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that keeps the order of an object's keys as the server sent them (columns of a SQL
/// answer, fields of a job's status), which `serde_json::Value` sorts.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(bytes: &[u8]) -> Result<Json, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Compact JSON text, for a nested value shown in one cell.
    fn compact(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::String(s) => serde_json::Value::String(s.clone()).to_string(),
            Json::Array(items) => format!("[{}]", items.iter().map(Json::compact).collect::<Vec<_>>().join(",")),
            Json::Object(fields) => {
                let fields: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::Value::String(k.clone()), v.compact()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            fields.push((k, v));
        }
        Ok(Json::Object(fields))
    }
}

/// How cells are written.
#[derive(Clone, Copy)]
pub struct Style {
    /// Fractional numbers rounded to this many decimals (trailing zeros dropped); `None`: as sent.
    pub precision: Option<usize>,
    /// What a JSON null shows as.
    pub null: &'static str,
    /// `+---+` borders like the local `dragonflow sql` (Arrow's printer) instead of bare columns.
    pub boxed: bool,
}

/// Tables of the server's lists: numbers rounded for reading.
pub const LIST: Style = Style { precision: Some(3), null: "-", boxed: false };
/// SQL answers: values as the server sent them, boxed like the local `dragonflow sql`.
pub const SQL: Style = Style { precision: None, null: "", boxed: true };

/// The text of one cell, and whether it is a number (right-aligned).
fn cell(v: &Json, style: Style) -> (String, bool) {
    match v {
        Json::Null => (style.null.to_string(), false),
        Json::Bool(b) => (b.to_string(), false),
        Json::Number(n) => (number(n, style.precision), true),
        Json::String(s) => (one_line(s), false),
        Json::Array(items) if items.is_empty() => ("[]".to_string(), false),
        Json::Array(items) if items.iter().all(|i| matches!(i, Json::String(_) | Json::Number(_) | Json::Bool(_))) => {
            let items: Vec<String> = items.iter().map(|i| cell(i, style).0).collect();
            (items.join(", "), false)
        }
        other => (one_line(&other.compact()), false),
    }
}

fn number(n: &serde_json::Number, precision: Option<usize>) -> String {
    match (precision, n.as_f64()) {
        (Some(p), Some(f)) if n.is_f64() && f.fract() != 0.0 => {
            let s = format!("{f:.p$}");
            let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
            s.to_string()
        }
        _ => n.to_string(),
    }
}

/// Control characters escaped, so a value never breaks a row or its alignment.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if c.is_control() => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// The columns of a table of `rows`: those of `preferred` that some row has a value for (not null), in
/// that order; all the rows' keys in order of appearance when none of them is there (or none is
/// preferred).
pub fn columns(rows: &[Json], preferred: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for row in rows {
        if let Json::Object(fields) = row {
            for (k, _) in fields {
                if !all.contains(k) {
                    all.push(k.clone());
                }
            }
        }
    }
    let has_value = |key: &str| rows.iter().any(|r| r.get(key).is_some_and(|v| *v != Json::Null));
    let picked: Vec<String> = preferred.iter().filter(|p| has_value(p)).map(|p| p.to_string()).collect();
    if picked.is_empty() {
        all
    } else {
        picked
    }
}

/// `rows` (JSON objects) as a table of `columns`; a key a row lacks is shown as null. `None` when the
/// rows are not all objects: the caller shows the JSON instead.
pub fn table(rows: &[Json], columns: &[String], style: Style) -> Option<String> {
    if !rows.iter().all(|r| matches!(r, Json::Object(_))) {
        return None;
    }
    let cells: Vec<Vec<(String, bool)>> =
        rows.iter().map(|r| columns.iter().map(|c| cell(r.get(c).unwrap_or(&Json::Null), style)).collect()).collect();
    Some(grid(columns, &cells, style.boxed))
}

/// Lays out a header and rows of cells; columns whose non-empty cells are all numbers align right
/// (bare style; the boxed style aligns left like Arrow's printer).
pub fn grid(headers: &[String], rows: &[Vec<(String, bool)>], boxed: bool) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    let mut right = vec![true; n];
    let mut any = vec![false; n];
    for row in rows {
        for (i, (text, numeric)) in row.iter().enumerate().take(n) {
            widths[i] = widths[i].max(width(text));
            if !text.is_empty() {
                any[i] = true;
                right[i] &= *numeric;
            }
        }
    }
    let right: Vec<bool> = (0..n).map(|i| !boxed && any[i] && right[i]).collect();
    let pad = |text: &str, i: usize| {
        let fill = " ".repeat(widths[i] - width(text));
        if right[i] {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = String::new();
    let line = |texts: Vec<String>| -> String {
        if boxed {
            format!("| {} |\n", texts.join(" | "))
        } else {
            format!("{}\n", texts.join("  ").trim_end())
        }
    };
    let border: String = if boxed {
        format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"))
    } else {
        String::new()
    };
    out.push_str(&border);
    out.push_str(&line(headers.iter().enumerate().map(|(i, h)| pad(h, i)).collect()));
    out.push_str(&border);
    for row in rows {
        let texts = (0..n).map(|i| pad(row.get(i).map_or("", |c| c.0.as_str()), i)).collect();
        out.push_str(&line(texts));
    }
    if boxed && !rows.is_empty() {
        out.push_str(&border);
    }
    out
}

/// One object as aligned `key  value` lines, nested objects flattened to dotted keys
/// (`status.records_in`), arrays of objects indexed (`sinks[0].queue`). Keys of `skip` (top level)
/// are left out.
pub fn record(value: &Json, skip: &[&str], style: Style) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    match value {
        Json::Object(fields) => {
            for (k, v) in fields.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
                flatten(k, v, style, &mut lines);
            }
        }
        other => flatten("value", other, style, &mut lines),
    }
    let w = lines.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        let line = format!("{k}{}  {v}", " ".repeat(w - width(&k)));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn flatten(key: &str, value: &Json, style: Style, out: &mut Vec<(String, String)>) {
    match value {
        Json::Object(fields) if !fields.is_empty() => {
            for (k, v) in fields {
                flatten(&format!("{key}.{k}"), v, style, out);
            }
        }
        Json::Array(items) if items.iter().any(|i| matches!(i, Json::Object(_) | Json::Array(_))) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{key}[{i}]"), v, style, out);
            }
        }
        other => out.push((key.to_string(), cell(other, style).0)),
    }
}

/// Pretty-prints JSON text as sent: keys in their order, numbers and strings byte for byte, two
/// spaces of indentation. `None` when the text is not JSON.
pub fn pretty(text: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).ok()?;
    let text = std::str::from_utf8(text).ok()?;
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}') | Some(']')) {
                    out.push(chars.next().unwrap_or(']'));
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::parse(text.as_bytes()).unwrap()
    }

    fn rows(text: &str) -> Vec<Json> {
        match json(text) {
            Json::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn keys_keep_the_servers_order() {
        let v = json(r#"{"zeta": 1, "alpha": {"y": 2, "b": 3}, "mid": null}"#);
        let Json::Object(fields) = &v else { panic!() };
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha", "mid"]);
        assert_eq!(v.get("alpha").unwrap().compact(), r#"{"y":2,"b":3}"#);
    }

    #[test]
    fn table_aligns_columns_and_numbers_right() {
        let r = rows(
            r#"[{"id": "a1", "name": "fleet", "state": "running", "records_in": 12345, "records_per_s": 10.25},
                {"id": "b22", "name": null, "state": "stopped", "records_in": 7, "records_per_s": 0.123456}]"#,
        );
        let cols = columns(&r, &["id", "name", "state", "records_in", "records_per_s", "watermark"]);
        assert_eq!(cols, ["id", "name", "state", "records_in", "records_per_s"]);
        let t = table(&r, &cols, LIST).unwrap();
        let expected = "\
id   name   state    records_in  records_per_s
a1   fleet  running       12345          10.25
b22  -      stopped           7          0.123
";
        assert_eq!(t, expected);
    }

    #[test]
    fn table_without_preferred_columns_takes_all_in_order_of_appearance() {
        let r = rows(r#"[{"b": 1, "a": "x"}, {"c": true, "a": "y"}]"#);
        let cols = columns(&r, &["nothing"]);
        assert_eq!(cols, ["b", "a", "c"]);
        let with_nulls = rows(r#"[{"name": "x", "target_id": null}, {"name": "y"}]"#);
        assert_eq!(columns(&with_nulls, &["name", "target_id"]), ["name"]);
        assert_eq!(table(&r, &cols, LIST).unwrap(), "b  a  c\n1  x  -\n-  y  true\n");
        assert_eq!(table(&rows("[1, 2]"), &cols, LIST), None);
    }

    #[test]
    fn table_of_nothing_is_its_header() {
        let cols: Vec<String> = vec!["id".into(), "state".into()];
        assert_eq!(table(&[], &cols, LIST).unwrap(), "id  state\n");
        assert_eq!(table(&[], &cols, SQL).unwrap(), "+----+-------+\n| id | state |\n+----+-------+\n");
    }

    #[test]
    fn boxed_table_looks_like_the_local_sql() {
        let r = rows(r#"[{"vm_id": "vm-1", "cpu": 12.5}, {"vm_id": "vm-10", "cpu": null}]"#);
        let t = table(&r, &columns(&r, &[]), SQL).unwrap();
        let expected = "\
+-------+------+
| vm_id | cpu  |
+-------+------+
| vm-1  | 12.5 |
| vm-10 |      |
+-------+------+
";
        assert_eq!(t, expected);
    }

    #[test]
    fn cells_stay_on_one_line_and_count_characters_not_bytes() {
        let r = rows(r#"[{"k": "a\nb\tc", "n": 1}, {"k": "été", "n": 22}]"#);
        let t = table(&r, &columns(&r, &[]), LIST).unwrap();
        assert_eq!(t, "k         n\na\\nb\\tc   1\nété      22\n");
    }

    #[test]
    fn nested_values_in_cells() {
        let r = rows(r#"[{"handlers": ["a", "b"], "to": [], "opts": {"x": [1, {"y": 2}]}}]"#);
        let t = table(&r, &columns(&r, &[]), LIST).unwrap();
        assert_eq!(t, "handlers  to  opts\na, b      []  {\"x\":[1,{\"y\":2}]}\n");
    }

    #[test]
    fn numbers_round_only_when_asked() {
        let n = |t: &str| serde_json::from_str::<serde_json::Number>(t).unwrap();
        assert_eq!(number(&n("1.23456"), Some(3)), "1.235");
        assert_eq!(number(&n("2.5"), Some(3)), "2.5");
        assert_eq!(number(&n("3.0001"), Some(3)), "3");
        assert_eq!(number(&n("42"), Some(3)), "42");
        assert_eq!(number(&n("1.23456"), None), "1.23456");
    }

    #[test]
    fn record_flattens_nested_objects() {
        let v = json(
            r#"{"id": "j1", "state": "running", "spec": {"name": "x"},
                "status": {"records_in": 10, "lag": {"metrics/0": 3}, "sinks": [{"kind": "parquet", "queue": 0}]},
                "tags": ["a", "b"], "empty": {}}"#,
        );
        let out = record(&v, &["spec"], LIST);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "id                     j1");
        assert_eq!(lines[2], "status.records_in      10");
        assert_eq!(lines[3], "status.lag.metrics/0   3");
        assert_eq!(lines[4], "status.sinks[0].kind   parquet");
        assert_eq!(lines[5], "status.sinks[0].queue  0");
        assert_eq!(lines[6], "tags                   a, b");
        assert_eq!(lines[7], "empty                  {}");
        assert!(!out.contains("spec"));
    }

    #[test]
    fn pretty_keeps_text_and_order() {
        let text = br#"{"z":1.50,"a":[1,2,{}],"s":"x, {y}: \"q\"","e":[ ],"n":null}"#;
        let expected = r#"{
  "z": 1.50,
  "a": [
    1,
    2,
    {}
  ],
  "s": "x, {y}: \"q\"",
  "e": [],
  "n": null
}"#;
        assert_eq!(pretty(text).unwrap(), expected);
        assert_eq!(pretty(b"[]").unwrap(), "[]");
        assert_eq!(pretty(b"not json"), None);
        let escaped = br#"["a\\", "b"]"#;
        assert_eq!(pretty(escaped).unwrap(), "[\n  \"a\\\\\",\n  \"b\"\n]");
    }
}

//! Rule and handler files: a TOML file with one or more `[[alarm]]` (or `[[handler]]`) tables, as in a
//! job spec, turned into the JSON objects the server's `PUT /alarms/rules/{name}` and
//! `PUT /alarms/handlers/{name}` take. A whole job spec works too: only its `[[alarm]]` (or
//! `[[handler]]`) tables are read. A `.json` file holds the same tree.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

/// One `[[alarm]]` or `[[handler]]` of a file, by its `name`.
#[derive(Debug, PartialEq)]
pub struct Item {
    pub name: String,
    pub body: Value,
}

/// TOML as JSON: tables become objects, datetimes their RFC 3339 text. NaN and infinities have no JSON
/// form and are refused, with the key's path.
pub fn toml_to_json(value: &toml::Value, path: &str) -> anyhow::Result<Value> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => bail!("`{path}`: {f} has no JSON form (expected a finite number)"),
        },
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| toml_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.iter().map(|(k, v)| Ok((k.clone(), toml_to_json(v, &join(path, k))?))).collect::<anyhow::Result<_>>()?,
        ),
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads the `[[table]]` items of a file (`table` is `alarm` or `handler`).
pub fn read(file: &Path, table: &str) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse(&text, json, table).with_context(|| format!("in {}", file.display()))
}

/// The `[[table]]` items of a TOML (or, with `json`, JSON) text, each with its `name`; names must be
/// unique, since the later one would replace the earlier on the server.
pub fn parse(text: &str, json: bool, table: &str) -> anyhow::Result<Vec<Item>> {
    let root: Value = if json {
        serde_json::from_str(text).context("not valid JSON")?
    } else {
        let t: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("not valid TOML: {e}"))?;
        toml_to_json(&toml::Value::Table(t), "")?
    };
    let list = match root.get(table) {
        Some(Value::Array(list)) => list.clone(),
        Some(Value::Object(_)) => bail!("`{table}` must be an array of tables: write [[{table}]], not [{table}]"),
        Some(_) => bail!("`{table}` must be an array of tables, [[{table}]]"),
        None => bail!("no [[{table}]] table in the file"),
    };
    if list.is_empty() {
        bail!("no [[{table}]] table in the file");
    }
    let mut items: Vec<Item> = Vec::with_capacity(list.len());
    for (i, body) in list.into_iter().enumerate() {
        if !body.is_object() {
            bail!("`{table}[{i}]`: expected a table");
        }
        let name = match body.get("name") {
            Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
            Some(Value::String(_)) | None => bail!("`{table}[{i}].name`: every [[{table}]] needs a name"),
            Some(_) => bail!("`{table}[{i}].name`: expected a string"),
        };
        if items.iter().any(|it| it.name == name) {
            bail!("`{table}[{i}].name`: {name:?} appears twice in the file");
        }
        items.push(Item { name, body });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: &str = r##"
name = "a job spec's other keys are ignored"

[[alarm]]
name = "cpu_high"
measurement = "cpu"
field = "usage_user"
aggregate = "mean"
target = "vm"
comparison = ">"
warn = 80
crit = 95.5
handlers = ["ops-slack"]
enabled = true
since = 2024-05-01T10:00:00Z

[[alarm]]
name = "mcis_cpu"
level = "mcis"
metric = "cpu_util_mean"
comparison = ">="
crit = 90

[[handler]]
name = "ops-slack"
kind = "slack"
url = "https://hooks.slack.com/services/x"
headers = { Authorization = "Bearer y" }
timeout = "10s"
"##;

    #[test]
    fn rules_become_json_objects() {
        let items = parse(RULES, false, "alarm").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].name, "cpu_high");
        assert_eq!(
            items[0].body,
            json!({
                "name": "cpu_high", "measurement": "cpu", "field": "usage_user", "aggregate": "mean",
                "target": "vm", "comparison": ">", "warn": 80, "crit": 95.5, "handlers": ["ops-slack"],
                "enabled": true, "since": "2024-05-01T10:00:00Z"
            })
        );
        assert!(items[0].body["warn"].is_i64());
        assert_eq!(
            items[1].body,
            json!({"name": "mcis_cpu", "level": "mcis", "metric": "cpu_util_mean", "comparison": ">=", "crit": 90})
        );
    }

    #[test]
    fn handlers_with_inline_tables() {
        let items = parse(RULES, false, "handler").unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].name, "ops-slack");
        assert_eq!(items[0].body["headers"], json!({"Authorization": "Bearer y"}));
        assert_eq!(items[0].body["timeout"], "10s");
    }

    #[test]
    fn json_files_hold_the_same_tree() {
        let text = r#"{"handler": [{"name": "hook", "kind": "webhook", "url": "http://x/"}]}"#;
        let items = parse(text, true, "handler").unwrap();
        assert_eq!(
            items,
            vec![Item { name: "hook".into(), body: json!({"name": "hook", "kind": "webhook", "url": "http://x/"}) }]
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str, table: &str| format!("{:#}", parse(text, false, table).unwrap_err());
        assert!(err("[[handler]]\nname = \"h\"\n", "alarm").contains("no [[alarm]] table"));
        assert!(err("[alarm]\nname = \"x\"\n", "alarm").contains("write [[alarm]], not [alarm]"));
        assert!(err("[[alarm]]\nmeasurement = \"cpu\"\n", "alarm").contains("`alarm[0].name`"));
        assert!(err("[[alarm]]\nname = 3\n", "alarm").contains("`alarm[0].name`: expected a string"));
        assert!(err("[[alarm]]\nname = \"a\"\n[[alarm]]\nname = \"a\"\n", "alarm")
            .contains("`alarm[1].name`: \"a\" appears twice"));
        assert!(err("[[alarm]]\nname = \"a\"\nwarn = nan\n", "alarm").contains("`alarm[0].warn`"));
        assert!(err("[[alarm]\n", "alarm").contains("not valid TOML"));
    }

    #[test]
    fn toml_values_convert() {
        let v: toml::Table = toml::from_str("a = [1, 2.5, \"x\", [true]]\nb.c = -1\nd = 1979-05-27\n").unwrap();
        let j = toml_to_json(&toml::Value::Table(v), "").unwrap();
        assert_eq!(j, json!({"a": [1, 2.5, "x", [true]], "b": {"c": -1}, "d": "1979-05-27"}));
        let inf: toml::Table = toml::from_str("x = { y = [1.0, inf] }").unwrap();
        let e = toml_to_json(&toml::Value::Table(inf), "").unwrap_err().to_string();
        assert!(e.contains("`x.y[1]`"), "{e}");
    }
}

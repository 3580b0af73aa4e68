//! The agent registry's records: what Dragonflow knows about each agent besides its metrics.
//!
//! A record is keyed by the agent's identity as it reports, `{nsId}/{mcisId}/{vmId}/{cspType}`
//! (its tags). Its `ns_id`, `mcis_id`, `csp_type` and `os_type` say which groups it counts in,
//! so moving a VM to another MCIS is an update of its record's `mcis_id`.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::AgentTags;

/// How the agent's metrics reach Dragonflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    #[default]
    Push,
    Pull,
}

/// Whether the agent is monitored. A disabled agent's data is still aggregated, but it raises
/// no health changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    #[default]
    Enable,
    Disable,
}

/// One agent's registry record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// `{nsId}/{mcisId}/{vmId}/{cspType}` of the agent's tags.
    pub key: String,
    pub ns_id: String,
    pub mcis_id: String,
    pub vm_id: String,
    pub csp_type: String,
    pub os_type: String,
    pub mechanism: Mechanism,
    pub public_ip: String,
    pub state: AgentState,
    pub vcpu: Option<f64>,
    pub memory_gib: Option<f64>,
    pub cost_per_hour: Option<f64>,
    /// Where a pull agent answers (`mechanism = "pull"`).
    pub pull_url: Option<String>,
}

impl AgentRecord {
    /// The record of an agent first seen in the data: its tags, nothing else known.
    pub fn from_tags(tags: &AgentTags) -> Self {
        AgentRecord {
            key: tags.key(),
            ns_id: tags.ns_id.to_string(),
            mcis_id: tags.mcis_id.to_string(),
            vm_id: tags.vm_id.to_string(),
            csp_type: tags.csp_type.to_string(),
            os_type: tags.os_type.to_string(),
            ..AgentRecord::default()
        }
    }
}

/// A change of the registry: a new version of a key's record, or its removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryUpdate {
    pub key: String,
    /// Event time (ns) from which the change holds; `None`: from the first window not yet closed.
    pub time: Option<i64>,
    /// `None` removes the key.
    pub record: Option<AgentRecord>,
}

// Reading records: registry files (JSON, JSON lines, CSV) and registry messages (Kafka).

/// Each field of a record: its name, and the reference framework's camelCase name.
const F_KEY: &[&str] = &["key"];
const F_NS_ID: &[&str] = &["ns_id", "nsId"];
const F_MCIS_ID: &[&str] = &["mcis_id", "mcisId"];
const F_VM_ID: &[&str] = &["vm_id", "vmId"];
const F_CSP_TYPE: &[&str] = &["csp_type", "cspType"];
const F_OS_TYPE: &[&str] = &["os_type", "osType"];
const F_MECHANISM: &[&str] = &["mechanism"];
const F_PUBLIC_IP: &[&str] = &["public_ip", "publicIp"];
const F_STATE: &[&str] = &["state"];
const F_VCPU: &[&str] = &["vcpu"];
const F_MEMORY_GIB: &[&str] = &["memory_gib", "memoryGib"];
const F_COST_PER_HOUR: &[&str] = &["cost_per_hour", "costPerHour"];
const F_PULL_URL: &[&str] = &["pull_url", "pullUrl"];
const F_TIME: &[&str] = &["time"];
const F_DELETED: &[&str] = &["deleted"];

/// Where in its input a record was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Position in a JSON array, from 1.
    Record(usize),
    /// Line of a JSON-lines or CSV file, from 1.
    Line(u64),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Record(n) => write!(f, "record {n}"),
            Place::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// A registry file or message that could not be read: where, which field, and why.
///
/// Displayed as `agents.json: record 3: field "state": expected "enable" or "disable", got "on"`.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistryError {
    pub path: Option<PathBuf>,
    pub place: Option<Place>,
    /// The field as the input names it (`state`, `nsId`, …).
    pub field: Option<String>,
    pub message: String,
}

impl RegistryError {
    fn new(message: impl Into<String>) -> Self {
        RegistryError { path: None, place: None, field: None, message: message.into() }
    }

    fn at(mut self, place: Place) -> Self {
        self.place.get_or_insert(place);
        self
    }

    fn in_file(mut self, path: &Path) -> Self {
        self.path.get_or_insert_with(|| path.to_path_buf());
        self
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(place) = &self.place {
            write!(f, "{place}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field {field:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RegistryError {}

fn field_error(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError { field: Some(field.to_string()), ..RegistryError::new(message) }
}

/// The value of a field under any of its names; `null` counts as absent. A field given under
/// two names is refused.
fn lookup<'a>(
    obj: &'a Map<String, Value>,
    names: &[&'static str],
) -> Result<Option<(&'static str, &'a Value)>, RegistryError> {
    let mut found: Option<(&'static str, &'a Value)> = None;
    for &name in names {
        match (obj.get(name), found) {
            (None | Some(Value::Null), _) => {}
            (Some(_), Some((first, _))) => return Err(field_error(name, format!("given twice, also as {first:?}"))),
            (Some(v), None) => found = Some((name, v)),
        }
    }
    Ok(found)
}

fn text(obj: &Map<String, Value>, names: &[&'static str]) -> Result<Option<String>, RegistryError> {
    match lookup(obj, names)? {
        None => Ok(None),
        Some((_, Value::String(s))) => Ok(Some(s.clone())),
        Some((name, v)) => Err(field_error(name, format!("expected a string, got {v}"))),
    }
}

/// A non-empty string (an empty one counts as absent), for fields with a fixed set of values.
fn word(obj: &Map<String, Value>, names: &[&'static str]) -> Result<Option<(&'static str, String)>, RegistryError> {
    match lookup(obj, names)? {
        None => Ok(None),
        Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
        Some((name, Value::String(s))) => Ok(Some((name, s.trim().to_ascii_lowercase()))),
        Some((name, v)) => Err(field_error(name, format!("expected a string, got {v}"))),
    }
}

/// A number ≥ 0, written as a number or a string (CSV); an empty string counts as absent.
fn amount(obj: &Map<String, Value>, names: &[&'static str]) -> Result<Option<f64>, RegistryError> {
    let Some((name, v)) = lookup(obj, names)? else { return Ok(None) };
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        _ => Err(field_error(name, format!("expected a number ≥ 0, got {v}"))),
    }
}

fn flag(obj: &Map<String, Value>, names: &[&'static str]) -> Result<Option<bool>, RegistryError> {
    let Some((name, v)) = lookup(obj, names)? else { return Ok(None) };
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(field_error(name, format!("expected true or false, got {v}"))),
        },
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Some(false)),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(Some(true)),
        _ => Err(field_error(name, format!("expected true or false, got {v}"))),
    }
}

/// Event time in ns since the epoch: an integer, or an RFC 3339 timestamp.
fn event_time(obj: &Map<String, Value>, names: &[&'static str]) -> Result<Option<i64>, RegistryError> {
    let Some((name, v)) = lookup(obj, names)? else { return Ok(None) };
    let bad = || field_error(name, format!("expected an RFC 3339 time or integer ns since the epoch, got {v}"));
    match v {
        Value::Number(n) => n.as_i64().map(Some).ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.bytes().all(|b| b.is_ascii_digit()) {
                return s.parse::<i64>().map(Some).map_err(|_| bad());
            }
            let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
            t.timestamp_nanos_opt().map(Some).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// Reads one record. `message_key` (a Kafka message's key), when given, is the record's key.
///
/// The key defaults to `{ns_id}/{mcis_id}/{vm_id}/{csp_type}`. Of a record with a key of that
/// form, an absent `ns_id`, `mcis_id`, `vm_id` or `csp_type` is taken from the key.
fn update_from_object(obj: &Map<String, Value>, message_key: Option<&str>) -> Result<RegistryUpdate, RegistryError> {
    let time = event_time(obj, F_TIME)?;
    let deleted = flag(obj, F_DELETED)?.unwrap_or(false);
    let given_key = text(obj, F_KEY)?.filter(|k| !k.is_empty());
    let mut ns_id = text(obj, F_NS_ID)?;
    let mut mcis_id = text(obj, F_MCIS_ID)?;
    let mut vm_id = text(obj, F_VM_ID)?;
    let mut csp_type = text(obj, F_CSP_TYPE)?;
    let os_type = text(obj, F_OS_TYPE)?;
    let mechanism = match word(obj, F_MECHANISM)? {
        None => Mechanism::default(),
        Some((_, w)) if w == "push" => Mechanism::Push,
        Some((_, w)) if w == "pull" => Mechanism::Pull,
        Some((name, w)) => return Err(field_error(name, format!("expected \"push\" or \"pull\", got {w:?}"))),
    };
    let state = match word(obj, F_STATE)? {
        None => AgentState::default(),
        Some((_, w)) if w == "enable" => AgentState::Enable,
        Some((_, w)) if w == "disable" => AgentState::Disable,
        Some((name, w)) => return Err(field_error(name, format!("expected \"enable\" or \"disable\", got {w:?}"))),
    };
    let public_ip = text(obj, F_PUBLIC_IP)?;
    let vcpu = amount(obj, F_VCPU)?;
    let memory_gib = amount(obj, F_MEMORY_GIB)?;
    let cost_per_hour = amount(obj, F_COST_PER_HOUR)?;
    let pull_url = text(obj, F_PULL_URL)?.filter(|u| !u.is_empty());

    let key = match message_key.filter(|k| !k.is_empty()).map(str::to_string).or(given_key) {
        Some(key) => key,
        None => {
            let Some(vm) = vm_id.as_deref().filter(|v| !v.is_empty()) else {
                return Err(field_error("vm_id", "missing: a record needs `vm_id` or `key`"));
            };
            let part = |v: &Option<String>| v.clone().unwrap_or_default();
            format!("{}/{}/{vm}/{}", part(&ns_id), part(&mcis_id), part(&csp_type))
        }
    };
    if deleted {
        return Ok(RegistryUpdate { key, time, record: None });
    }
    if let [ns, mcis, vm, csp] = key.split('/').collect::<Vec<_>>()[..] {
        ns_id.get_or_insert_with(|| ns.to_string());
        mcis_id.get_or_insert_with(|| mcis.to_string());
        vm_id.get_or_insert_with(|| vm.to_string());
        csp_type.get_or_insert_with(|| csp.to_string());
    }
    let record = AgentRecord {
        key: key.clone(),
        ns_id: ns_id.unwrap_or_default(),
        mcis_id: mcis_id.unwrap_or_default(),
        vm_id: vm_id.unwrap_or_default(),
        csp_type: csp_type.unwrap_or_default(),
        os_type: os_type.unwrap_or_default(),
        mechanism,
        public_ip: public_ip.unwrap_or_default(),
        state,
        vcpu,
        memory_gib,
        cost_per_hour,
        pull_url,
    };
    Ok(RegistryUpdate { key, time, record: Some(record) })
}

fn update_from_value(value: &Value, message_key: Option<&str>) -> Result<RegistryUpdate, RegistryError> {
    match value {
        Value::Object(obj) => update_from_object(obj, message_key),
        v => Err(RegistryError::new(format!("expected a JSON object (a record), got {}", kind_of(v)))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_error(e: &serde_json::Error) -> RegistryError {
    let message = e.to_string();
    // serde_json appends " at line L column C"; the line is the error's place.
    let message = match message.rfind(" at line ") {
        Some(i) if e.line() > 0 => format!("invalid JSON: {} (column {})", &message[..i], e.column()),
        _ => format!("invalid JSON: {message}"),
    };
    let e_line = e.line() as u64;
    let err = RegistryError::new(message);
    if e_line > 0 {
        err.at(Place::Line(e_line))
    } else {
        err
    }
}

fn parse_json_array(text: &[u8]) -> Result<Vec<RegistryUpdate>, RegistryError> {
    let values: Vec<Value> = serde_json::from_slice(text).map_err(|e| json_error(&e))?;
    values.iter().enumerate().map(|(i, v)| update_from_value(v, None).map_err(|e| e.at(Place::Record(i + 1)))).collect()
}

/// One JSON record after another, normally one per line (blank lines are fine).
fn parse_json_lines(text: &[u8]) -> Result<Vec<RegistryUpdate>, RegistryError> {
    let mut stream = serde_json::Deserializer::from_slice(text).into_iter::<Value>();
    let (mut counted, mut line) = (0usize, 1u64);
    let mut updates = Vec::new();
    loop {
        let from = stream.byte_offset();
        let value = match stream.next() {
            None => break,
            Some(Err(e)) => return Err(json_error(&e)),
            Some(Ok(v)) => v,
        };
        // The record's line: where its first character is.
        let start = from + text[from..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        line += text[counted..start].iter().filter(|&&b| b == b'\n').count() as u64;
        counted = start;
        updates.push(update_from_value(&value, None).map_err(|e| e.at(Place::Line(line)))?);
    }
    Ok(updates)
}

fn csv_error(e: &csv::Error) -> RegistryError {
    let err = RegistryError::new(format!("invalid CSV: {e}"));
    match e.position() {
        Some(p) => err.at(Place::Line(p.line())),
        None => err,
    }
}

/// CSV with a header naming the fields; empty cells count as absent.
fn parse_csv(text: &[u8]) -> Result<Vec<RegistryUpdate>, RegistryError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text);
    let headers = reader.headers().map_err(|e| csv_error(&e))?.clone();
    let mut updates = Vec::new();
    let mut row = csv::StringRecord::new();
    let mut obj = Map::new();
    loop {
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(&e)),
        }
        let line = row.position().map_or(0, |p| p.line());
        obj.clear();
        for (name, cell) in headers.iter().zip(row.iter()) {
            if !cell.is_empty() {
                obj.insert(name.to_string(), Value::String(cell.to_string()));
            }
        }
        updates.push(update_from_object(&obj, None).map_err(|e| e.at(Place::Line(line)))?);
    }
    Ok(updates)
}

/// Reads a registry file: a JSON array of records, JSON records one per line, or CSV with a
/// header (`.csv`; a file of another name that does not start with `[` or `{` is read as CSV
/// too). Returns the records in the order of the file.
pub fn parse_registry_file(text: &[u8], path: &Path) -> Result<Vec<RegistryUpdate>, RegistryError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    let result = match (extension.as_deref(), first) {
        (Some("csv"), _) => parse_csv(text),
        (_, None) => Ok(Vec::new()),
        (_, Some(b'[')) => parse_json_array(text),
        (_, Some(b'{')) => parse_json_lines(text),
        (Some("json" | "jsonl" | "ndjson"), _) => {
            Err(RegistryError::new("expected a JSON array of records, or one JSON record per line"))
        }
        _ => parse_csv(text),
    };
    result.map_err(|e| e.in_file(path))
}

/// Reads a message of a registry topic: a JSON record, keyed by the agent key. The message key,
/// when present, is the record's key. An empty or absent payload (a tombstone) removes the key.
pub fn parse_registry_message(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<RegistryUpdate, RegistryError> {
    let key = match key.filter(|k| !k.is_empty()) {
        Some(k) => Some(std::str::from_utf8(k).map_err(|_| RegistryError::new("the message key is not UTF-8"))?),
        None => None,
    };
    let payload = payload.unwrap_or_default();
    if payload.iter().all(|b| b.is_ascii_whitespace()) {
        return match key {
            Some(key) => Ok(RegistryUpdate { key: key.to_string(), time: None, record: None }),
            None => Err(RegistryError::new("a tombstone (empty message) without a message key")),
        };
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    match (&value, key) {
        (Value::Null, Some(key)) => Ok(RegistryUpdate { key: key.to_string(), time: None, record: None }),
        _ => update_from_value(&value, key),
    }
}

/// A key's entries in a registry file, in the order they hold (untimed ones last).
type History = Vec<(Option<i64>, Option<AgentRecord>)>;

/// Records written within this long of being read may be followed by a change that leaves the
/// modification time and length as they were: such a file is compared by content again.
const RACY: Duration = Duration::from_secs(2);

/// A registry file, read again when it changes.
pub struct RegistryFile {
    path: PathBuf,
    /// Modification time and length of the file when last read.
    stamp: Option<(Option<SystemTime>, u64)>,
    /// The file was modified shortly before it was last read: compare its content next time.
    racy: bool,
    /// Hash of the content of the last load.
    hash: Option<u64>,
    /// Every key of the last load and its entries.
    keys: BTreeMap<String, History>,
    loaded: bool,
}

impl RegistryFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RegistryFile { path: path.into(), stamp: None, racy: false, hash: None, keys: BTreeMap::new(), loaded: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file if it changed. Returns every record on the first successful call; after
    /// that, when the content changed, what changed: the entries of each new or changed key
    /// (a key's history as given, sorted by time, untimed entries last) and a removal without
    /// time for each key no longer in the file; `None` when the content is the same. A file that
    /// cannot be read or parsed is an error and leaves the last load in place: the next call
    /// tries again.
    pub fn poll(&mut self) -> Result<Option<Vec<RegistryUpdate>>, RegistryError> {
        let io = |e: std::io::Error| RegistryError::new(format!("cannot read: {e}")).in_file(&self.path);
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let stamp = (meta.modified().ok(), meta.len());
        if self.loaded && !self.racy && self.stamp == Some(stamp) {
            return Ok(None);
        }
        let read_at = SystemTime::now();
        let text = std::fs::read(&self.path).map_err(io)?;
        let racy = stamp.0.is_none_or(|m| read_at.duration_since(m).map_or(true, |age| age < RACY));
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        if self.loaded && self.hash == Some(hash) {
            self.stamp = Some(stamp);
            self.racy = racy;
            return Ok(None);
        }
        let mut keys: BTreeMap<String, History> = BTreeMap::new();
        for u in parse_registry_file(&text, &self.path)? {
            keys.entry(u.key).or_default().push((u.time, u.record));
        }
        for history in keys.values_mut() {
            history.sort_by_key(|(time, _)| (time.is_none(), *time));
        }
        let mut updates = Vec::new();
        for (key, history) in &keys {
            if self.keys.get(key) != Some(history) {
                updates.extend(history.iter().map(|(time, record)| RegistryUpdate {
                    key: key.clone(),
                    time: *time,
                    record: record.clone(),
                }));
            }
        }
        for key in self.keys.keys().filter(|k| !keys.contains_key(*k)) {
            updates.push(RegistryUpdate { key: key.clone(), time: None, record: None });
        }
        self.keys = keys;
        self.stamp = Some(stamp);
        self.racy = racy;
        self.hash = Some(hash);
        self.loaded = true;
        Ok(Some(updates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, name: &str) -> Result<Vec<RegistryUpdate>, RegistryError> {
        parse_registry_file(text.as_bytes(), Path::new(name))
    }

    fn record(u: &RegistryUpdate) -> &AgentRecord {
        u.record.as_ref().expect("a record, not a removal")
    }

    #[test]
    fn registry_json_array() {
        let text = r#"[
            {"ns_id": "ns1", "mcis_id": "m1", "vm_id": "vm1", "csp_type": "aws", "os_type": "ubuntu",
             "mechanism": "pull", "public_ip": "10.0.0.1", "state": "disable", "vcpu": 4, "memory_gib": 16.5,
             "cost_per_hour": 0.2, "pull_url": "http://10.0.0.1:8888", "time": "2024-01-01T00:00:10Z"},
            {"key": "custom", "vm_id": "vm2", "time": 1500000000}
        ]"#;
        let u = parse(text, "agents.json").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].key, "ns1/m1/vm1/aws");
        assert_eq!(u[0].time, Some(1_704_067_210_000_000_000));
        let r = record(&u[0]);
        assert_eq!(
            r,
            &AgentRecord {
                key: "ns1/m1/vm1/aws".into(),
                ns_id: "ns1".into(),
                mcis_id: "m1".into(),
                vm_id: "vm1".into(),
                csp_type: "aws".into(),
                os_type: "ubuntu".into(),
                mechanism: Mechanism::Pull,
                public_ip: "10.0.0.1".into(),
                state: AgentState::Disable,
                vcpu: Some(4.0),
                memory_gib: Some(16.5),
                cost_per_hour: Some(0.2),
                pull_url: Some("http://10.0.0.1:8888".into()),
            }
        );
        assert_eq!(u[1].key, "custom");
        assert_eq!(u[1].time, Some(1_500_000_000));
        assert_eq!(record(&u[1]).mechanism, Mechanism::Push);
        assert_eq!(record(&u[1]).state, AgentState::Enable);
        assert_eq!(record(&u[1]).vcpu, None);
    }

    #[test]
    fn registry_json_lines_with_blank_lines_and_deletions() {
        let text = "{\"vm_id\": \"a\", \"ns_id\": \"n\"}\n\n  \n{\"key\": \"n//b/\", \"deleted\": true, \"time\": \"2024-01-01T00:00:00+01:00\"}\n";
        let u = parse(text, "agents").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].key, "n//a/");
        assert_eq!(u[1], RegistryUpdate { key: "n//b/".into(), time: Some(1_704_063_600_000_000_000), record: None });
    }

    #[test]
    fn registry_camel_case_fields() {
        let text = r#"{"nsId":"ns1","mcisId":"m1","vmId":"vm1","cspType":"gcp","osType":"centos","publicIp":"1.2.3.4","pullUrl":"http://x","costPerHour":"1.5","memoryGib":8}"#;
        let u = parse(text, "agents.jsonl").unwrap();
        let r = record(&u[0]);
        assert_eq!(u[0].key, "ns1/m1/vm1/gcp");
        assert_eq!((r.os_type.as_str(), r.public_ip.as_str()), ("centos", "1.2.3.4"));
        assert_eq!((r.pull_url.as_deref(), r.cost_per_hour, r.memory_gib), (Some("http://x"), Some(1.5), Some(8.0)));
        let e = parse(r#"{"vm_id":"a","vmId":"a"}"#, "x.json").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("vmId"));
    }

    #[test]
    fn registry_csv_with_header() {
        let text = "key,ns_id,mcis_id,vm_id,csp_type,state,vcpu,time,deleted\n\
                    ,ns1,m1,vm1,aws,disable,2,2024-01-01T00:00:00Z,\n\
                    \n\
                    ns1/m1/vm2/aws,,,,, ,,5,true\n";
        let u = parse(text, "agents.csv").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].key, "ns1/m1/vm1/aws");
        assert_eq!(record(&u[0]).state, AgentState::Disable);
        assert_eq!(record(&u[0]).vcpu, Some(2.0));
        assert_eq!(u[0].time, Some(1_704_067_200_000_000_000));
        assert_eq!(u[1], RegistryUpdate { key: "ns1/m1/vm2/aws".into(), time: Some(5), record: None });
        // Sniffed: not JSON, so CSV.
        let u = parse("vmId,nsId\nvm9,ns9\n", "agents.txt").unwrap();
        assert_eq!(u[0].key, "ns9//vm9/");
    }

    #[test]
    fn registry_fields_missing_from_a_record_come_from_its_key() {
        let u = parse(r#"[{"key": "ns1/m1/vm1/aws", "mcis_id": "m2"}]"#, "a.json").unwrap();
        let r = record(&u[0]);
        assert_eq!(
            (r.ns_id.as_str(), r.mcis_id.as_str(), r.vm_id.as_str(), r.csp_type.as_str()),
            ("ns1", "m2", "vm1", "aws")
        );
    }

    #[test]
    fn registry_empty_file_has_no_records() {
        assert_eq!(parse("", "a.json").unwrap(), vec![]);
        assert_eq!(parse(" \n", "a").unwrap(), vec![]);
        assert_eq!(parse("[]", "a").unwrap(), vec![]);
    }

    #[test]
    fn registry_errors_name_the_record_and_field() {
        let e = parse(r#"[{"vm_id":"a"},{"vm_id":"b"},{"vm_id":"c","state":"on"}]"#, "agents.json").unwrap_err();
        assert_eq!((e.place, e.field.as_deref()), (Some(Place::Record(3)), Some("state")));
        assert!(
            e.to_string().starts_with(r#"agents.json: record 3: field "state": expected "enable" or "disable""#),
            "{e}"
        );
        let cases = [
            ("[{\"ns_id\":\"a\"}]", "a.json", Place::Record(1), Some("vm_id"), "missing"),
            ("{\"vm_id\":\"a\"}\n\n{\"vm_id\":\"b\",\"vcpu\":-1}", "a.jsonl", Place::Line(3), Some("vcpu"), "≥ 0"),
            ("{\"vm_id\":\"a\",\"time\":1.5}", "a", Place::Line(1), Some("time"), "RFC 3339"),
            ("{\"vm_id\":\"a\",\"time\":\"yesterday\"}", "a", Place::Line(1), Some("time"), "RFC 3339"),
            (
                "{\"vm_id\":\"a\",\"mechanism\":\"poll\"}",
                "a",
                Place::Line(1),
                Some("mechanism"),
                "\"push\" or \"pull\"",
            ),
            ("{\"vm_id\":\"a\",\"deleted\":\"maybe\"}", "a", Place::Line(1), Some("deleted"), "true or false"),
            ("{\"vm_id\":7}", "a", Place::Line(1), Some("vm_id"), "expected a string"),
            ("[{\"vm_id\":\"a\"}, 3]", "a", Place::Record(2), None, "JSON object"),
            ("{\"vm_id\":\"a\"}\n{\"vm_id\":", "a", Place::Line(2), None, "invalid JSON"),
            ("[{\"vm_id\":\"a\"},\n{]", "a", Place::Line(2), None, "invalid JSON"),
            ("vm_id,state\na,enable\nb,bad\n", "a.csv", Place::Line(3), Some("state"), "expected"),
            ("vm_id,state\na,enable,extra\n", "a.csv", Place::Line(2), None, "invalid CSV"),
            ("ns_id\nn\n", "a.csv", Place::Line(2), Some("vm_id"), "missing"),
        ];
        for (text, name, place, field, message) in cases {
            let e = parse(text, name).expect_err(text);
            assert_eq!(e.place, Some(place), "{text}: {e}");
            assert_eq!(e.field.as_deref(), field, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert_eq!(e.path.as_deref(), Some(Path::new(name)));
        }
        let e = parse("hello", "a.json").unwrap_err();
        assert!(e.message.contains("JSON array"), "{e}");
    }

    #[test]
    fn registry_messages() {
        let u = parse_registry_message(Some(b"ns1/m1/vm1/aws"), Some(br#"{"os_type":"ubuntu","time":7}"#)).unwrap();
        assert_eq!((u.key.as_str(), u.time), ("ns1/m1/vm1/aws", Some(7)));
        let r = record(&u);
        assert_eq!((r.key.as_str(), r.vm_id.as_str(), r.os_type.as_str()), ("ns1/m1/vm1/aws", "vm1", "ubuntu"));
        // The message key wins over the record's.
        let u = parse_registry_message(Some(b"k"), Some(br#"{"key":"other","vm_id":"v"}"#)).unwrap();
        assert_eq!((u.key.as_str(), record(&u).key.as_str()), ("k", "k"));
        // Without a message key, the record's fields give it.
        let u = parse_registry_message(None, Some(br#"{"vm_id":"v","ns_id":"n"}"#)).unwrap();
        assert_eq!(u.key, "n//v/");
        // Tombstones.
        let tomb = RegistryUpdate { key: "k".into(), time: None, record: None };
        assert_eq!(parse_registry_message(Some(b"k"), None).unwrap(), tomb);
        assert_eq!(parse_registry_message(Some(b"k"), Some(b"")).unwrap(), tomb);
        assert_eq!(parse_registry_message(Some(b"k"), Some(b"null")).unwrap(), tomb);
        let u = parse_registry_message(Some(b"k"), Some(br#"{"deleted":true,"time":9}"#)).unwrap();
        assert_eq!(u, RegistryUpdate { key: "k".into(), time: Some(9), record: None });
        // Errors.
        assert!(parse_registry_message(None, None).unwrap_err().message.contains("without a message key"));
        assert!(parse_registry_message(Some(b"k"), Some(b"{")).unwrap_err().message.contains("invalid JSON"));
        let e = parse_registry_message(Some(b"k"), Some(br#"{"state":"off"}"#)).unwrap_err();
        assert_eq!(e.to_string(), r#"field "state": expected "enable" or "disable", got "off""#);
        assert!(parse_registry_message(None, Some(br#"{"ns_id":"n"}"#)).is_err());
    }

    fn keyed(updates: &[RegistryUpdate]) -> Vec<(&str, Option<i64>, Option<&str>)> {
        updates.iter().map(|u| (u.key.as_str(), u.time, u.record.as_ref().map(|r| r.os_type.as_str()))).collect()
    }

    #[test]
    fn registry_file_poll_returns_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.jsonl");
        let mut file = RegistryFile::new(&path);
        assert!(file.poll().is_err(), "no file yet");

        std::fs::write(&path, "{\"key\":\"a\",\"os_type\":\"u\"}\n{\"key\":\"b\",\"os_type\":\"u\"}\n{\"key\":\"h\",\"os_type\":\"2\",\"time\":20}\n{\"key\":\"h\",\"os_type\":\"1\",\"time\":10}\n").unwrap();
        let first = file.poll().unwrap().expect("the first load");
        assert_eq!(
            keyed(&first),
            vec![
                ("a", None, Some("u")),
                ("b", None, Some("u")),
                ("h", Some(10), Some("1")),
                ("h", Some(20), Some("2"))
            ]
        );
        assert_eq!(file.poll().unwrap(), None, "unchanged");

        // `a` changes, `b` goes, `c` comes, `h` gains an entry (its history is given again).
        std::fs::write(&path, "{\"key\":\"a\",\"os_type\":\"v\"}\n{\"key\":\"c\",\"os_type\":\"u\"}\n{\"key\":\"h\",\"os_type\":\"1\",\"time\":10}\n{\"key\":\"h\",\"os_type\":\"2\",\"time\":20}\n{\"key\":\"h\",\"os_type\":\"3\",\"time\":30}\n").unwrap();
        let diff = file.poll().unwrap().expect("a change");
        assert_eq!(
            keyed(&diff),
            vec![
                ("a", None, Some("v")),
                ("c", None, Some("u")),
                ("h", Some(10), Some("1")),
                ("h", Some(20), Some("2")),
                ("h", Some(30), Some("3")),
                ("b", None, None),
            ]
        );
        assert_eq!(file.poll().unwrap(), None);

        // Same content written again, and a content change of the same length.
        std::fs::write(&path, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(file.poll().unwrap(), None);
        let text = std::fs::read_to_string(&path).unwrap().replace("\"os_type\":\"v\"", "\"os_type\":\"w\"");
        std::fs::write(&path, text).unwrap();
        assert_eq!(keyed(&file.poll().unwrap().unwrap()), vec![("a", None, Some("w"))]);

        // A broken file keeps the last load, and is retried.
        std::fs::write(&path, "{\"key\":\"a\",\"state\":\"zzz\"}\n").unwrap();
        assert!(file.poll().is_err());
        assert!(file.poll().is_err());
        std::fs::write(&path, "{\"key\":\"a\",\"os_type\":\"w\"}\n").unwrap();
        assert_eq!(keyed(&file.poll().unwrap().unwrap()), vec![("c", None, None), ("h", None, None)]);

        // An empty file removes every key.
        std::fs::write(&path, "").unwrap();
        assert_eq!(keyed(&file.poll().unwrap().unwrap()), vec![("a", None, None)]);
        assert_eq!(file.poll().unwrap(), None);
    }
}

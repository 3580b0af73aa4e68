//! Per-worker interning of agents and series.
//!
//! The hot path never allocates for a known series: the tags of a metric are written into a
//! reusable byte buffer, looked up once per metric to find its *group* (agent, measurement,
//! instance), and each field is then found by a short scan of the group's fields. Series ids
//! are dense `u32`s local to the worker; [`SeriesTable::key`] turns one back into a [`SeriesKey`].

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::{AgentTags, SeriesKey};

/// Tags of one metric, borrowed from the decoded message.
#[derive(Clone, Copy, Debug, Default)]
pub struct TagRefs<'a> {
    pub ns_id: &'a str,
    pub mcis_id: &'a str,
    pub vm_id: &'a str,
    pub csp_type: &'a str,
    pub os_type: &'a str,
}

struct Group {
    agent: Arc<AgentTags>,
    measurement: Arc<str>,
    instance: Arc<str>,
    fields: Vec<(Arc<str>, u32)>,
}

/// Why a new series was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternError {
    #[error("series cardinality limit of {0} reached on this worker")]
    CardinalityLimit(usize),
}

#[derive(Default)]
pub struct SeriesTable {
    group_index: FxHashMap<Box<[u8]>, u32>,
    groups: Vec<Group>,
    agents: FxHashMap<Box<[u8]>, Arc<AgentTags>>,
    names: FxHashSet<Arc<str>>,
    series: Vec<SeriesKey>,
    buf: Vec<u8>,
    limit: Option<usize>,
}

impl SeriesTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse new series beyond `limit` (per worker).
    pub fn with_limit(limit: Option<usize>) -> Self {
        SeriesTable { limit, ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(s);
        self.names.insert(n.clone());
        n
    }

    /// The group id of (agent, measurement, instance).
    pub fn group(&mut self, tags: &TagRefs<'_>, measurement: &str, instance: &str) -> u32 {
        self.buf.clear();
        for part in [tags.ns_id, tags.mcis_id, tags.vm_id, tags.csp_type, tags.os_type] {
            self.buf.extend_from_slice(part.as_bytes());
            self.buf.push(0);
        }
        let agent_len = self.buf.len();
        self.buf.extend_from_slice(measurement.as_bytes());
        self.buf.push(0);
        self.buf.extend_from_slice(instance.as_bytes());
        if let Some(&g) = self.group_index.get(self.buf.as_slice()) {
            return g;
        }
        let agent = match self.agents.get(&self.buf[..agent_len]) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(AgentTags {
                    ns_id: tags.ns_id.into(),
                    mcis_id: tags.mcis_id.into(),
                    vm_id: tags.vm_id.into(),
                    csp_type: tags.csp_type.into(),
                    os_type: tags.os_type.into(),
                });
                self.agents.insert(self.buf[..agent_len].into(), a.clone());
                a
            }
        };
        let key: Box<[u8]> = self.buf.as_slice().into();
        let measurement = self.name(measurement);
        let instance = self.name(instance);
        let id = self.groups.len() as u32;
        self.groups.push(Group { agent, measurement, instance, fields: Vec::new() });
        self.group_index.insert(key, id);
        id
    }

    /// The series id of a field of a group.
    #[inline]
    pub fn series(&mut self, group: u32, field: &str) -> Result<u32, InternError> {
        let g = &self.groups[group as usize];
        if let Some((_, id)) = g.fields.iter().find(|(f, _)| &**f == field) {
            return Ok(*id);
        }
        if let Some(limit) = self.limit {
            if self.series.len() >= limit {
                return Err(InternError::CardinalityLimit(limit));
            }
        }
        let field = self.name(field);
        let g = &mut self.groups[group as usize];
        let id = self.series.len() as u32;
        g.fields.push((field.clone(), id));
        let key = SeriesKey::new(g.agent.clone(), g.measurement.clone(), g.instance.clone(), field);
        self.series.push(key);
        Ok(id)
    }

    /// The key of a series id handed out by this table.
    #[inline]
    pub fn key(&self, series: u32) -> &SeriesKey {
        &self.series[series as usize]
    }

    /// The agent, measurement and instance of a group.
    pub fn group_parts(&self, group: u32) -> (&Arc<AgentTags>, &Arc<str>, &Arc<str>) {
        let g = &self.groups[group as usize];
        (&g.agent, &g.measurement, &g.instance)
    }

    /// A shared copy of a field name.
    pub fn field_name(&mut self, field: &str) -> Arc<str> {
        self.name(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_series_same_id() {
        let mut t = SeriesTable::new();
        let tags = TagRefs { ns_id: "ns", mcis_id: "m", vm_id: "vm-1", csp_type: "aws", os_type: "linux" };
        let g = t.group(&tags, "cpu", "cpu-total");
        let a = t.series(g, "usage_idle").unwrap();
        let b = t.series(g, "usage_user").unwrap();
        assert_ne!(a, b);
        let g2 = t.group(&tags, "cpu", "cpu-total");
        assert_eq!(g, g2);
        assert_eq!(t.series(g2, "usage_idle").unwrap(), a);
        assert_eq!(&*t.key(a).field, "usage_idle");
        assert_eq!(&*t.key(a).agent.vm_id, "vm-1");
        // Tags that differ only in where a separator falls are different agents.
        let other = TagRefs { ns_id: "n", mcis_id: "sm", ..tags };
        assert_ne!(t.group(&other, "cpu", "cpu-total"), g);
    }

    #[test]
    fn limit_refuses_new_series_only() {
        let mut t = SeriesTable::with_limit(Some(1));
        let tags = TagRefs::default();
        let g = t.group(&tags, "cpu", "");
        let a = t.series(g, "x").unwrap();
        assert!(t.series(g, "y").is_err());
        assert_eq!(t.series(g, "x").unwrap(), a);
    }
}

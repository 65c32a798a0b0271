//! The change log `GET /admin/v1/history` shows: every change this replica read from the config topic (or, in
//! standalone mode, accepted), newest first, with who made it, where and when, and whether it applied. It is
//! rebuilt from the topic at every start, so it holds what the topic still holds — the latest change of every
//! resource at least, once the broker has compacted the topic — up to [`CAPACITY`] entries.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tollgate_schemas::config::{ChangeAction, ResourceKind};
use uuid::Uuid;

/// Entries kept; older ones are dropped first.
pub const CAPACITY: usize = 10_000;

/// One change, as the history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Its offset in the config topic (standalone: its sequence number).
    pub version: i64,
    pub change_id: Uuid,
    pub time: DateTime<Utc>,
    /// The replica that accepted it.
    pub source: String,
    /// The admin key id that made it, or `seed`.
    pub actor: String,
    pub kind: ResourceKind,
    pub id: String,
    pub action: ChangeAction,
    /// The resource after the change (consumer keys without their hashes); absent on delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    /// `applied`, or `rejected` when it would have left the configuration invalid (two replicas accepted
    /// conflicting changes at once; the later one in topic order loses).
    pub result: &'static str,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The bounded change log.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Entry>,
}

impl History {
    pub fn record(&mut self, entry: Entry) {
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// The newest `limit` entries matching `kind` and `id` (when given), newest first.
    pub fn query(&self, kind: Option<ResourceKind>, id: Option<&str>, limit: usize) -> Vec<Entry> {
        self.entries
            .iter()
            .rev()
            .filter(|e| kind.is_none_or(|k| e.kind == k) && id.is_none_or(|id| e.id == id))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The entry of the change at `version`, if this replica has read it.
    pub fn at(&self, version: i64) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: i64, kind: ResourceKind, id: &str) -> Entry {
        Entry {
            version,
            change_id: Uuid::now_v7(),
            time: Utc::now(),
            source: "gw".into(),
            actor: "ops".into(),
            kind,
            id: id.into(),
            action: ChangeAction::Put,
            resource: None,
            result: "applied",
            problems: Vec::new(),
        }
    }

    #[test]
    fn newest_first_filtered_by_kind_and_id() {
        let mut history = History::default();
        history.record(entry(1, ResourceKind::Route, "chat"));
        history.record(entry(2, ResourceKind::Instance, "canary"));
        history.record(entry(3, ResourceKind::Route, "chat"));
        let versions = |entries: Vec<Entry>| entries.iter().map(|e| e.version).collect::<Vec<_>>();
        assert_eq!(versions(history.query(None, None, 10)), vec![3, 2, 1]);
        assert_eq!(
            versions(history.query(Some(ResourceKind::Route), Some("chat"), 10)),
            vec![3, 1]
        );
        assert_eq!(versions(history.query(None, None, 1)), vec![3]);
        assert_eq!(history.at(2).map(|e| e.id.as_str()), Some("canary"));
    }

    #[test]
    fn the_oldest_entries_go_first_when_full() {
        let mut history = History::default();
        for version in 0..(CAPACITY as i64 + 5) {
            history.record(entry(version, ResourceKind::Limit, "l"));
        }
        assert!(history.at(4).is_none());
        assert!(history.at(5).is_some());
    }
}

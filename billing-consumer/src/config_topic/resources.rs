//! The configuration the config topic holds, without any I/O: every live resource by kind and id, exactly as
//! the gateway stored it (the JSON of its TOML table), built by applying the topic's messages in order.
//!
//! A message is a `tollgate.config.v1` change keyed `kind/id`: a `put` stores its `resource`, a `delete` removes
//! it, and so does a tombstone (a null value). A message that is none of these (no key, a key naming no
//! resource, a value that is not a change of its key) is refused with the reason and changes nothing, as the
//! gateway skips it too.
//!
//! Price versions follow the rule every reader applies in topic order ([`tollgate_schemas::prices::check_transition`],
//! judged at the change's time): a change that breaks it — other figures for a published version, a back-dated
//! version, deleting one in force — is refused here as the gateways reject it, so prices never follow a change
//! the configuration did not take. A price's tombstone removes nothing: the delete change before it counts.

use std::collections::BTreeMap;

use tollgate_schemas::config::{ChangeAction, ConfigChangeEvent, ResourceKind, parse_key};

/// Every live resource, by kind and id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    by_key: BTreeMap<(ResourceKind, String), serde_json::Value>,
    /// Messages applied so far, tombstones of nothing included.
    applied: u64,
}

/// What one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub kind: ResourceKind,
    pub id: String,
    /// `put`, `delete`, or `tombstone`.
    pub action: &'static str,
    /// The admin key id that made the change ([`tollgate_schemas::config::SEED_ACTOR`] for seeded resources);
    /// `None` for a tombstone, which names no one.
    pub actor: Option<String>,
    /// True when the resource is now different from before (created, replaced by other content, or removed).
    pub changed: bool,
}

impl Resources {
    /// Applies one message of the topic (its key and value; a missing or empty value is a tombstone).
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Applied, String> {
        let applied = self.apply_message(key, value)?;
        self.applied += 1;
        Ok(applied)
    }

    fn apply_message(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Applied, String> {
        let key = std::str::from_utf8(key.ok_or("no key")?).map_err(|_| "its key is not UTF-8")?;
        let (kind, id) = parse_key(key).ok_or_else(|| format!("keyed `{key}`, not kind/id"))?;
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            let changed = kind != ResourceKind::Price && self.by_key.remove(&(kind, id.to_owned())).is_some();
            return Ok(Applied {
                kind,
                id: id.to_owned(),
                action: "tombstone",
                actor: None,
                changed,
            });
        };
        let event: ConfigChangeEvent =
            serde_json::from_slice(value).map_err(|e| format!("not a tollgate.config.v1 CloudEvent: {e}"))?;
        if !event.is_expected_type() {
            return Err(format!(
                "a CloudEvent of type `{}`, not tollgate.config.v1",
                event.event_type
            ));
        }
        let change = event.data;
        if (change.kind, change.id.as_str()) != (kind, id) {
            return Err(format!("keyed `{key}` but changes `{}`", change.key()));
        }
        let slot = (change.kind, change.id.clone());
        if change.kind == ResourceKind::Price {
            tollgate_schemas::prices::check_transition(
                &format!("prices/{}", change.id),
                self.by_key.get(&slot),
                change
                    .resource
                    .as_ref()
                    .filter(|_| change.action == ChangeAction::Put),
                event.time.timestamp_millis(),
            )?;
        }
        let (action, changed) = match change.action {
            ChangeAction::Put => {
                let resource = change.resource.ok_or("a put without a resource")?;
                let changed = self.by_key.get(&slot) != Some(&resource);
                self.by_key.insert(slot, resource);
                ("put", changed)
            }
            ChangeAction::Delete => ("delete", self.by_key.remove(&slot).is_some()),
        };
        Ok(Applied {
            kind: change.kind,
            id: change.id,
            action,
            actor: Some(change.actor),
            changed,
        })
    }

    /// True when no resource is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True once any message was applied: from then on the topic's resources are the configuration, even none
    /// at all (the gateway's rule: a topic that ever held a change replaces the file's resources; only an empty
    /// one leaves them).
    pub fn replaces_file(&self) -> bool {
        self.applied > 0
    }

    /// Resources held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The resources of `kind`, by id in order.
    pub fn of_kind(&self, kind: ResourceKind) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.by_key
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|((_, id), resource)| (id.as_str(), resource))
    }

    /// The resource `kind/id`, if it is held.
    pub fn get(&self, kind: ResourceKind, id: &str) -> Option<&serde_json::Value> {
        self.by_key.get(&(kind, id.to_owned()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use tollgate_schemas::CloudEvent;
    use tollgate_schemas::config::ConfigChange;

    /// A message's key and value for a change of `kind`/`id`, dated before every price version the tests write
    /// (a change dated after a version's effective time would be a back-dated version, which the readers refuse).
    pub(crate) fn message(
        kind: ResourceKind,
        id: &str,
        resource: Option<serde_json::Value>,
    ) -> (String, Vec<u8>) {
        message_at(kind, id, resource, "2025-12-01T00:00:00Z")
    }

    /// A message's key and value for a change of `kind`/`id` dated `at` (RFC 3339).
    fn message_at(
        kind: ResourceKind,
        id: &str,
        resource: Option<serde_json::Value>,
        at: &str,
    ) -> (String, Vec<u8>) {
        let change = ConfigChange {
            kind,
            id: id.to_owned(),
            action: if resource.is_some() {
                ChangeAction::Put
            } else {
                ChangeAction::Delete
            },
            resource,
            actor: "ops-alice".to_owned(),
        };
        let key = change.key();
        let time = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc);
        let event = CloudEvent::new("tollgate-gateway/gw-1", key.clone(), time, change);
        (key, serde_json::to_vec(&event).unwrap())
    }

    fn put(resources: &mut Resources, kind: ResourceKind, id: &str, resource: serde_json::Value) -> Applied {
        let (key, value) = message(kind, id, Some(resource));
        resources.apply(Some(key.as_bytes()), Some(&value)).unwrap()
    }

    #[test]
    fn puts_store_deletes_and_tombstones_remove() {
        let mut resources = Resources::default();
        assert!(resources.is_empty() && !resources.replaces_file());
        let limit = json!({"id": "daily", "limit": 10, "time_window": "24h"});
        let applied = put(&mut resources, ResourceKind::Limit, "daily", limit.clone());
        assert_eq!(
            applied,
            Applied {
                kind: ResourceKind::Limit,
                id: "daily".into(),
                action: "put",
                actor: Some("ops-alice".into()),
                changed: true,
            }
        );
        assert!(
            !put(&mut resources, ResourceKind::Limit, "daily", limit.clone()).changed,
            "the same content again changes nothing"
        );
        put(
            &mut resources,
            ResourceKind::Route,
            "chat",
            json!({"name": "chat"}),
        );
        assert_eq!(resources.len(), 2);
        assert_eq!(resources.get(ResourceKind::Limit, "daily"), Some(&limit));
        let limits: Vec<_> = resources.of_kind(ResourceKind::Limit).collect();
        assert_eq!(limits, [("daily", &limit)]);

        let (key, value) = message(ResourceKind::Limit, "daily", None);
        let deleted = resources.apply(Some(key.as_bytes()), Some(&value)).unwrap();
        assert_eq!((deleted.action, deleted.changed), ("delete", true));
        assert_eq!(resources.get(ResourceKind::Limit, "daily"), None);
        // The tombstone that follows a delete finds nothing left to remove.
        let tombstone = resources.apply(Some(key.as_bytes()), None).unwrap();
        assert_eq!(
            (tombstone.action, tombstone.changed, tombstone.actor),
            ("tombstone", false, None)
        );
        // A tombstone alone (its delete compacted away) removes the resource.
        let gone = resources.apply(Some(b"route/chat"), Some(b"")).unwrap();
        assert_eq!(
            (gone.kind, gone.action, gone.changed),
            (ResourceKind::Route, "tombstone", true)
        );
        assert!(resources.is_empty());
        assert!(
            resources.replaces_file(),
            "emptied, the topic still is the configuration"
        );

        // A tombstone of nothing as the first message makes the topic the configuration too.
        let mut only_tombstone = Resources::default();
        assert!(!only_tombstone.apply(Some(b"limit/x"), None).unwrap().changed);
        assert!(only_tombstone.replaces_file());
    }

    /// A price change message dated `at`.
    fn price_message(id: &str, resource: Option<serde_json::Value>, at: &str) -> (String, Vec<u8>) {
        message_at(ResourceKind::Price, id, resource, at)
    }

    #[test]
    fn price_versions_follow_the_readers_rule_in_topic_order() {
        let price = |input: &str| {
            json!({"model": "m", "effective_from": "2027-01-01", "currency": "USD",
                   "input_per_mtok": input, "output_per_mtok": "1"})
        };
        let mut resources = Resources::default();
        let apply = |resources: &mut Resources, (key, value): (String, Vec<u8>)| {
            resources.apply(Some(key.as_bytes()), Some(&value))
        };
        // Published before it starts: taken.
        apply(
            &mut resources,
            price_message("m@2027-01-01", Some(price("1")), "2026-12-01T00:00:00Z"),
        )
        .unwrap();
        // Two replicas at once, the second with other figures: the first stays.
        let refused = apply(
            &mut resources,
            price_message("m@2027-01-01", Some(price("9")), "2026-12-01T00:00:01Z"),
        );
        assert!(refused.is_err());
        assert_eq!(
            resources.get(ResourceKind::Price, "m@2027-01-01"),
            Some(&price("1"))
        );
        // Deleting it once in force: refused, and its tombstone removes nothing.
        assert!(
            apply(
                &mut resources,
                price_message("m@2027-01-01", None, "2027-02-01T00:00:00Z")
            )
            .is_err()
        );
        resources.apply(Some(b"price/m@2027-01-01"), None).unwrap();
        assert!(resources.get(ResourceKind::Price, "m@2027-01-01").is_some());
        // A version published after its effective_from (back-dated): refused.
        let backdated = json!({"model": "m", "effective_from": "2027-01-15", "currency": "USD",
                               "input_per_mtok": "2", "output_per_mtok": "1"});
        assert!(
            apply(
                &mut resources,
                price_message("m@2027-01-15", Some(backdated), "2027-02-01T00:00:00Z")
            )
            .is_err()
        );
        assert!(resources.get(ResourceKind::Price, "m@2027-01-15").is_none());
    }

    #[test]
    fn messages_that_are_not_changes_are_refused_and_change_nothing() {
        let mut resources = Resources::default();
        put(&mut resources, ResourceKind::Limit, "daily", json!({"limit": 1}));
        let before = resources.clone();
        let (_, value) = message(ResourceKind::Limit, "daily", None);
        let refusals = [
            resources.apply(None, None).unwrap_err(),
            resources.apply(Some(b"heartbeat"), None).unwrap_err(),
            resources.apply(Some(b"limit/daily"), Some(b"{")).unwrap_err(),
            resources.apply(Some(b"limit/other"), Some(&value)).unwrap_err(),
            resources.apply(Some(&[0xff]), Some(&value)).unwrap_err(),
            resources.apply(None, Some(&value)).unwrap_err(),
        ];
        assert_eq!(refusals[0], "no key");
        assert_eq!(refusals[1], "keyed `heartbeat`, not kind/id");
        assert!(
            refusals[2].starts_with("not a tollgate.config.v1 CloudEvent"),
            "{refusals:?}"
        );
        assert_eq!(refusals[3], "keyed `limit/other` but changes `limit/daily`");
        assert_eq!(refusals[4], "its key is not UTF-8");
        assert_eq!(
            refusals[5], "no key",
            "a change without a key is skipped, as the gateway does"
        );

        let mut other_type: serde_json::Value = serde_json::from_slice(&value).unwrap();
        other_type["type"] = json!("tollgate.quota.v1");
        let refused = resources
            .apply(
                Some(b"limit/daily"),
                Some(&serde_json::to_vec(&other_type).unwrap()),
            )
            .unwrap_err();
        assert_eq!(
            refused,
            "a CloudEvent of type `tollgate.quota.v1`, not tollgate.config.v1"
        );
        let mut no_resource: serde_json::Value = serde_json::from_slice(&value).unwrap();
        no_resource["data"]["action"] = json!("put");
        let refused = resources
            .apply(
                Some(b"limit/daily"),
                Some(&serde_json::to_vec(&no_resource).unwrap()),
            )
            .unwrap_err();
        assert_eq!(refused, "a put without a resource");
        assert_eq!(
            resources, before,
            "refused messages change nothing, not even the count"
        );
    }
}

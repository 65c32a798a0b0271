//! Rebuilding the configuration from the config topic's content at start: the state a replica starts from must
//! equal the state the live replicas had, whatever the broker's compaction kept.
//!
//! Compaction keeps the latest record of every key and drops the rest, so it reorders dependencies: after a
//! route was edited, its only record may sit after the consumer and the limit that name its model. Folding
//! such a log in offset order, validating each change against the state so far, rejects the consumer and the
//! limit — a consumer locked out and a quota gone, on every replica that restarts. So the rebuild does not
//! replay history: it takes **the latest value of every key** (a put: the resource; a delete or a tombstone:
//! absent) and validates the result **as a whole**.
//!
//! That equals the live state because live replicas hold exactly the latest *applied* value of every key, and
//! a rejected change never stays a key's latest value: the replica that published it publishes a restore right
//! after (the key's applied value, actor [`tollgate_schemas::config::RESTORE_ACTOR`]; see
//! [`super::LiveConfig`]). Price versions follow the same rule; their immutability is enforced where changes
//! are folded live ([`ResourceSet::check_transition`]).
//!
//! When the whole does not validate — the file's fixed sections or its environment changed since, or a replica
//! died between a rejected change and its restore — the rebuild keeps the largest set it can grow by adding
//! the latest values in offset order, pass after pass, as long as one still fits; what is left out is
//! reported, logged as an error and counted (`tollgate_config_replay_left_out_total`).

use std::collections::BTreeMap;

use tollgate_schemas::config::{ChangeAction, ResourceKind};

use super::Incoming;
use super::resources::ResourceSet;

/// What a record of the topic became in the rebuilt state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The latest record of its key: its value is in the state (for a delete: the key is absent).
    Latest,
    /// A later record of the same key replaced it.
    Superseded,
    /// The latest record of its key, left out because the whole did not validate with it.
    LeftOut,
}

/// The rebuilt state.
#[derive(Debug)]
pub struct Rebuilt<C> {
    pub set: ResourceSet,
    /// The validated configuration of `set`; `None` when not even the empty set validates.
    pub config: Option<C>,
    /// Every record's fate, by offset.
    pub fates: BTreeMap<i64, Fate>,
    /// The problems of the whole, when it did not validate (then some records were left out).
    pub problems: Vec<String>,
}

impl<C> Rebuilt<C> {
    pub fn left_out(&self) -> usize {
        self.fates.values().filter(|f| **f == Fate::LeftOut).count()
    }
}

/// The latest value of every key of `batch` (in offset order), validated as a whole by `assemble`; see the
/// module's header for what happens when the whole is invalid.
pub fn rebuild<C>(
    batch: &[Incoming],
    assemble: impl Fn(&ResourceSet) -> Result<C, Vec<String>>,
) -> Rebuilt<C> {
    let mut latest: BTreeMap<(ResourceKind, &str), &Incoming> = BTreeMap::new();
    for incoming in batch {
        let key = (incoming.kind, incoming.id.as_str());
        if latest
            .get(&key)
            .is_none_or(|seen| seen.version < incoming.version)
        {
            latest.insert(key, incoming);
        }
    }
    let mut fates: BTreeMap<i64, Fate> = batch.iter().map(|i| (i.version, Fate::Superseded)).collect();
    let mut puts: Vec<&Incoming> = Vec::new();
    for incoming in latest.values() {
        fates.insert(incoming.version, Fate::Latest);
        if value_of(incoming).is_some() {
            puts.push(incoming);
        }
    }
    puts.sort_by_key(|i| i.version);

    let mut whole = ResourceSet::default();
    for incoming in &puts {
        if let Some(value) = value_of(incoming) {
            whole.put(incoming.kind, &incoming.id, value.clone());
        }
    }
    let problems = match assemble(&whole) {
        Ok(config) => {
            return Rebuilt {
                set: whole,
                config: Some(config),
                fates,
                problems: Vec::new(),
            };
        }
        Err(problems) => problems,
    };

    // The whole is invalid: grow the largest set that validates, in offset order, until a pass adds nothing.
    let mut set = ResourceSet::default();
    let mut config = assemble(&set).ok();
    let mut pending = puts;
    loop {
        let before = pending.len();
        pending.retain(|incoming| {
            let Some(value) = value_of(incoming) else {
                return false;
            };
            let mut next = set.clone();
            next.put(incoming.kind, &incoming.id, value.clone());
            match assemble(&next) {
                Ok(valid) => {
                    set = next;
                    config = Some(valid);
                    false
                }
                Err(_) => true,
            }
        });
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    for incoming in pending {
        fates.insert(incoming.version, Fate::LeftOut);
    }
    Rebuilt {
        set,
        config,
        fates,
        problems,
    }
}

/// The resource a record leaves in place: a put's resource; `None` for a delete or a tombstone.
fn value_of(incoming: &Incoming) -> Option<&serde_json::Value> {
    let change = &incoming.event.as_ref()?.data;
    match change.action {
        ChangeAction::Put => change.resource.as_ref(),
        ChangeAction::Delete => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};
    use tollgate_schemas::CloudEvent;
    use tollgate_schemas::config::{ConfigChange, RESTORE_ACTOR, SEED_ACTOR};

    use super::*;
    use crate::config::{Config, RawConfig};

    const BASE: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [meter]
        url = "http://127.0.0.1:1"
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;

    fn base() -> RawConfig {
        toml::from_str(BASE).expect("base config parses")
    }

    fn assemble(set: &ResourceSet) -> Result<Config, Vec<String>> {
        set.assemble(&base(), &Default::default())
    }

    /// A topic being written: every record gets the next offset.
    #[derive(Default)]
    struct Topic {
        records: Vec<Incoming>,
    }

    impl Topic {
        fn record(
            &mut self,
            kind: ResourceKind,
            id: &str,
            action: ChangeAction,
            resource: Option<Value>,
            actor: &str,
        ) {
            let version = self.records.len() as i64;
            let event = CloudEvent::new(
                "tollgate-gateway/test",
                format!("{}/{id}", kind.as_str()),
                Utc.timestamp_opt(1_700_000_000 + version, 0)
                    .single()
                    .expect("a valid time"),
                ConfigChange {
                    kind,
                    id: id.to_owned(),
                    action,
                    resource,
                    actor: actor.to_owned(),
                },
            );
            self.records.push(Incoming {
                version,
                kind,
                id: id.to_owned(),
                event: Some(event),
            });
        }

        fn put(&mut self, kind: ResourceKind, id: &str, resource: Value) {
            self.record(kind, id, ChangeAction::Put, Some(resource), "admin");
        }

        /// A delete change followed by its tombstone, as the publisher writes them.
        fn delete(&mut self, kind: ResourceKind, id: &str) {
            self.record(kind, id, ChangeAction::Delete, None, "admin");
            let version = self.records.len() as i64;
            self.records.push(Incoming {
                version,
                kind,
                id: id.to_owned(),
                event: None,
            });
        }

        /// What the broker's compaction keeps: the latest record of every key, in offset order.
        fn compacted(&self) -> Vec<Incoming> {
            let mut latest = BTreeMap::new();
            for (i, record) in self.records.iter().enumerate() {
                latest.insert((record.kind, record.id.clone()), i);
            }
            let mut kept: Vec<usize> = latest.into_values().collect();
            kept.sort_unstable();
            kept.into_iter()
                .map(|i| {
                    let r = &self.records[i];
                    Incoming {
                        version: r.version,
                        kind: r.kind,
                        id: r.id.clone(),
                        event: r.event.clone(),
                    }
                })
                .collect()
        }
    }

    fn instance(name: &str, endpoint: &str) -> Value {
        json!({"name": name, "provider": "openai", "endpoint": endpoint})
    }

    fn route(name: &str, instance: &str) -> Value {
        json!({"name": name, "models": [name], "targets": [{"instance": instance}]})
    }

    fn consumer(name: &str, model: &str) -> Value {
        json!({
            "name": name,
            "keys": [{"id": format!("{name}-key"), "sha256": format!("{:064x}", name.len() * 1000 + name.as_bytes()[0] as usize)}],
            "token_limits": [{"models": [model], "limit": 1000, "time_window": "1h"}]
        })
    }

    fn limit(id: &str, model: &str) -> Value {
        json!({"id": id, "models": [model], "limit": 5000, "time_window": "1h"})
    }

    /// The state live replicas reach by applying every record in offset order, each validated against the
    /// state before it (what [`super::super::LiveConfig`] does as it follows the topic).
    fn live_state(records: &[Incoming]) -> ResourceSet {
        let mut set = ResourceSet::default();
        for record in records {
            let Some(event) = &record.event else { continue };
            let mut next = set.clone();
            match (event.data.action, &event.data.resource) {
                (ChangeAction::Put, Some(resource)) => next.put(record.kind, &record.id, resource.clone()),
                _ => {
                    next.remove(record.kind, &record.id);
                }
            }
            if assemble(&next).is_ok() {
                set = next;
            }
        }
        set
    }

    /// The scenario of the local stack: seeded, then the route edited, deleted with what names it, and
    /// re-added; an instance replaced under a route; a limit removed and added again under a new id.
    fn edited_topic() -> Topic {
        let mut topic = Topic::default();
        topic.record(
            ResourceKind::Instance,
            "openai-a",
            ChangeAction::Put,
            Some(instance("openai-a", "http://a.example/v1")),
            SEED_ACTOR,
        );
        topic.record(
            ResourceKind::Route,
            "gpt-4o-mini",
            ChangeAction::Put,
            Some(route("gpt-4o-mini", "openai-a")),
            SEED_ACTOR,
        );
        topic.record(
            ResourceKind::Consumer,
            "demo",
            ChangeAction::Put,
            Some(consumer("demo", "gpt-4o-mini")),
            SEED_ACTOR,
        );
        topic.record(
            ResourceKind::Limit,
            "mini-total",
            ChangeAction::Put,
            Some(limit("mini-total", "gpt-4o-mini")),
            SEED_ACTOR,
        );
        // Reference scenario 1's kind of change: the route is edited (a PATCH), after everything that names it.
        let mut edited = route("gpt-4o-mini", "openai-a");
        edited["targets"][0]["weight"] = json!(5);
        topic.put(ResourceKind::Route, "gpt-4o-mini", edited);
        // A second model: its route, a consumer naming it, then all three deleted (dependents first) and the
        // route and consumer added again.
        topic.put(ResourceKind::Route, "gpt-4o", route("gpt-4o", "openai-a"));
        topic.put(ResourceKind::Consumer, "team", consumer("team", "gpt-4o"));
        topic.delete(ResourceKind::Consumer, "team");
        topic.delete(ResourceKind::Route, "gpt-4o");
        topic.put(ResourceKind::Route, "gpt-4o", route("gpt-4o", "openai-a"));
        topic.put(ResourceKind::Consumer, "team", consumer("team", "gpt-4o"));
        // A new instance, the route moved to it, the old instance edited last.
        topic.put(
            ResourceKind::Instance,
            "openai-b",
            instance("openai-b", "http://b.example/v1"),
        );
        topic.put(ResourceKind::Route, "gpt-4o", route("gpt-4o", "openai-b"));
        topic.put(
            ResourceKind::Instance,
            "openai-a",
            instance("openai-a", "http://a2.example/v1"),
        );
        // The global limit deleted and re-added.
        topic.delete(ResourceKind::Limit, "mini-total");
        topic.put(
            ResourceKind::Limit,
            "mini-total",
            limit("mini-total", "gpt-4o-mini"),
        );
        topic
    }

    #[test]
    fn a_compacted_topic_rebuilds_the_state_the_live_replicas_had() {
        let topic = edited_topic();
        let live = live_state(&topic.records);
        assert!(live.get(ResourceKind::Consumer, "demo").is_some());
        assert!(live.get(ResourceKind::Consumer, "team").is_some());

        let compacted = topic.compacted();
        assert!(compacted.len() < topic.records.len());
        // In-order validation of the compacted log loses the consumers and the limit: the bug this prevents.
        let in_order = live_state(&compacted);
        assert!(in_order.get(ResourceKind::Consumer, "demo").is_none());

        let rebuilt = rebuild(&compacted, assemble);
        assert!(rebuilt.problems.is_empty(), "{:?}", rebuilt.problems);
        assert_eq!(rebuilt.left_out(), 0);
        assert_eq!(rebuilt.set, live);
        let config = rebuilt.config.expect("the rebuilt state validates");
        assert_eq!(config.consumers.len(), 2);
        // The demo consumer's token limit and the global one are there: no quota vanished.
        assert_eq!(
            config
                .consumers
                .iter()
                .find(|c| c.name == "demo")
                .map(|c| c.token_limits.len()),
            Some(1)
        );
        assert_eq!(config.token_limits.len(), 1);

        // The uncompacted topic rebuilds the same state.
        assert_eq!(rebuild(&topic.records, assemble).set, live);
    }

    #[test]
    fn a_rejected_change_followed_by_its_restore_is_not_the_state() {
        let mut topic = edited_topic();
        // Two replicas at once: one deletes the route, the other adds a consumer naming it. The consumer came
        // first and applied; the delete is rejected on every replica, and its publisher restores the route.
        let before = live_state(&topic.records);
        topic.delete(ResourceKind::Route, "gpt-4o");
        let restored = before.get(ResourceKind::Route, "gpt-4o").cloned();
        topic.record(
            ResourceKind::Route,
            "gpt-4o",
            ChangeAction::Put,
            restored,
            RESTORE_ACTOR,
        );
        let live = live_state(&topic.records);
        assert_eq!(live, before);
        assert_eq!(rebuild(&topic.compacted(), assemble).set, live);
    }

    #[test]
    fn an_invalid_whole_keeps_every_resource_that_still_fits_and_says_what_it_left_out() {
        let mut topic = Topic::default();
        topic.put(ResourceKind::Consumer, "demo", consumer("demo", "gpt-4o-mini"));
        topic.put(
            ResourceKind::Instance,
            "openai-a",
            instance("openai-a", "http://a.example/v1"),
        );
        topic.put(
            ResourceKind::Route,
            "gpt-4o-mini",
            route("gpt-4o-mini", "openai-a"),
        );
        // Never valid: names an instance that does not exist.
        topic.put(ResourceKind::Route, "broken", route("broken", "nowhere"));
        let rebuilt = rebuild(&topic.records, assemble);
        assert!(!rebuilt.problems.is_empty());
        assert_eq!(rebuilt.left_out(), 1);
        assert_eq!(rebuilt.fates.get(&3), Some(&Fate::LeftOut));
        // The consumer, listed before what it depends on, is kept.
        assert!(rebuilt.set.get(ResourceKind::Consumer, "demo").is_some());
        assert!(rebuilt.set.get(ResourceKind::Route, "broken").is_none());
        assert!(rebuilt.config.is_some());
    }
}

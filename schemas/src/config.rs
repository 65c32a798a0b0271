//! `tollgate.config.v1`: changes to the live configuration, as the admin API publishes them and every gateway
//! replica (and billing-consumer, for limits and prices) applies them.
//!
//! The topic is compacted and has one partition, so every reader sees every change in the same order. A message's
//! key is [`ConfigChange::key`] — `kind/id`, e.g. `route/chat` — so compaction keeps the latest state of each
//! resource. A change is a [`ConfigChange`] in a CloudEvents envelope: the envelope's `id` is the change id, its
//! `source` the gateway that accepted it, its `time` when; `data.actor` is the admin key id that made it (or
//! [`SEED_ACTOR`] for resources seeded from a gateway's TOML file).
//!
//! A deletion is published twice under the resource's key: first a [`ChangeAction::Delete`] change (so the
//! change log keeps who deleted what, and when), then a tombstone (a null value) so compaction can drop the key.
//! A reader treats both as "the resource is gone".
//!
//! `resource` is the resource exactly as stored: the same fields as its table in the gateway's TOML file
//! (`[[instances]]`, `[[routes]]`, `[[consumers]]`, `[[token_limits]]` with an `id`, and for prices
//! `[[prices]]` of billing-consumer's price file). Consumer keys appear only as SHA-256 hashes, provider keys only
//! as the name of the environment variable holding them: a secret never travels on this topic.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{CloudEvent, EventData};

/// A change in its envelope, as it travels on [`crate::topics::CONFIG_V1`] (key: [`ConfigChange::key`]).
pub type ConfigChangeEvent = CloudEvent<ConfigChange>;

/// The actor of changes that seeded an empty topic from a gateway's TOML file.
pub const SEED_ACTOR: &str = "seed";

/// The actor of a restore: after a change was rejected in topic order (two replicas accepted conflicting changes
/// at once), the replica that published it publishes the key's applied value again, so that a rejected change
/// never stays a key's latest value — the one compaction keeps.
pub const RESTORE_ACTOR: &str = "restore";

/// The kinds of resource the admin API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A provider endpoint (`[[instances]]`).
    Instance,
    /// Model names → targets (`[[routes]]`).
    Route,
    /// A group of consumers, with an optional parent team: organisation → team → consumer (`[[teams]]`).
    Team,
    /// A tenant with its keys and limits (`[[consumers]]`).
    Consumer,
    /// A token limit over every consumer (`[[token_limits]]`).
    Limit,
    /// One version of one model's price (`[[prices]]`).
    Price,
}

impl ResourceKind {
    /// Every kind, in the order a configuration is assembled (what a route names must exist before it).
    pub const ALL: [Self; 6] = [
        Self::Instance,
        Self::Route,
        Self::Team,
        Self::Consumer,
        Self::Limit,
        Self::Price,
    ];

    /// The singular name used in keys: `instance`, `route`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Route => "route",
            Self::Team => "team",
            Self::Consumer => "consumer",
            Self::Limit => "limit",
            Self::Price => "price",
        }
    }

    /// The collection's name in admin URLs and TOML tables: `instances`, `routes`, …
    pub fn plural(self) -> &'static str {
        match self {
            Self::Instance => "instances",
            Self::Route => "routes",
            Self::Team => "teams",
            Self::Consumer => "consumers",
            Self::Limit => "limits",
            Self::Price => "prices",
        }
    }

    /// The kind named by a key's prefix or a URL segment, singular or plural.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name || k.plural() == name)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a change does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// Create or replace the resource with `resource`.
    Put,
    /// Remove the resource; `resource` is absent.
    Delete,
}

/// One accepted change to one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConfigChange {
    pub kind: ResourceKind,
    /// The resource's name (for prices `model@effective_from`).
    pub id: String,
    pub action: ChangeAction,
    /// The resource as stored after the change; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<serde_json::Value>,
    /// Who made the change: the admin key id, or [`SEED_ACTOR`].
    pub actor: String,
}

impl ConfigChange {
    /// The Kafka key of a resource: `kind/id`.
    pub fn key(&self) -> String {
        resource_key(self.kind, &self.id)
    }
}

/// The Kafka key of a resource: `kind/id`, e.g. `route/chat`.
pub fn resource_key(kind: ResourceKind, id: &str) -> String {
    format!("{}/{id}", kind.as_str())
}

/// The kind and id a key names, when it is a resource key.
pub fn parse_key(key: &str) -> Option<(ResourceKind, &str)> {
    let (kind, id) = key.split_once('/')?;
    Some((ResourceKind::parse(kind)?, id)).filter(|(_, id)| !id.is_empty())
}

impl EventData for ConfigChange {
    const TYPE: &'static str = "tollgate.config.v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_kind_and_the_id_and_parse_back() {
        let key = resource_key(ResourceKind::Price, "gpt-4o@2026-01-01");
        assert_eq!(key, "price/gpt-4o@2026-01-01");
        assert_eq!(parse_key(&key), Some((ResourceKind::Price, "gpt-4o@2026-01-01")));
        assert_eq!(parse_key("route/"), None);
        assert_eq!(parse_key("heartbeat"), None);
        assert_eq!(parse_key("nonsense/x"), None);
    }

    #[test]
    fn kinds_parse_from_singular_and_plural_names() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
            assert_eq!(ResourceKind::parse(kind.plural()), Some(kind));
        }
    }
}

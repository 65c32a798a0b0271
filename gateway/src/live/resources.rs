//! The resources of the live configuration — instances, routes, teams, consumers, global token limits and prices — as
//! the admin API stores them: one JSON document per `(kind, id)`, with exactly the fields of the resource's TOML
//! table. [`ResourceSet::assemble`] turns a set into a validated [`Config`] by putting its resources in place of
//! the file's and running the file's validation, so a change is judged by the same rules as the file, as a whole.
//!
//! Problems come back with resource paths instead of file positions: `routes/chat.targets[0].instance: no
//! instance is named `x``. Prices are validated here with the price file's rules (`tollgate_schemas::prices`) and
//! added to the `[billing] prices` file's table, which budgets reserve and settle with.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_schemas::config::ResourceKind;
use tollgate_schemas::quota::{QuotaScope, TokenLimitConfig};

use crate::config::{Config, Egress, RawConfig, RawInstance, Secret, derived_limit_id};

/// Every resource of one configuration, by kind and id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    items: BTreeMap<ResourceKind, BTreeMap<String, Value>>,
}

impl ResourceSet {
    /// The resources of a configuration file: its instances, routes, consumers and `[[token_limits]]` (named by
    /// their `id`, or by their scope key when they have none).
    pub fn from_file(raw: &RawConfig) -> Self {
        let mut set = Self::default();
        for instance in &raw.instances {
            set.insert_typed(ResourceKind::Instance, &instance.name, instance);
        }
        for route in &raw.routes {
            set.insert_typed(ResourceKind::Route, &route.name, route);
        }
        for team in &raw.teams {
            set.insert_typed(ResourceKind::Team, &team.name, team);
        }
        for consumer in &raw.consumers {
            set.insert_typed(ResourceKind::Consumer, &consumer.name, consumer);
        }
        for (i, limit) in raw.token_limits.iter().enumerate() {
            let id = limit_id(limit).unwrap_or_else(|| format!("limit-{i}"));
            let mut limit = limit.clone();
            limit.id = Some(id.clone());
            set.insert_typed(ResourceKind::Limit, &id, &limit);
        }
        set
    }

    fn insert_typed(&mut self, kind: ResourceKind, id: &str, resource: &impl Serialize) {
        if let Ok(value) = serde_json::to_value(resource) {
            self.put(kind, id, value);
        }
    }

    pub fn get(&self, kind: ResourceKind, id: &str) -> Option<&Value> {
        self.items.get(&kind)?.get(id)
    }

    /// The resources of one kind, sorted by id.
    pub fn list(&self, kind: ResourceKind) -> impl Iterator<Item = (&str, &Value)> {
        self.items
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|(id, value)| (id.as_str(), value))
    }

    /// Creates or replaces a resource.
    pub fn put(&mut self, kind: ResourceKind, id: &str, value: Value) {
        self.items.entry(kind).or_default().insert(id.to_owned(), value);
    }

    /// Removes a resource; what it was, if it existed.
    pub fn remove(&mut self, kind: ResourceKind, id: &str) -> Option<Value> {
        let of_kind = self.items.get_mut(&kind)?;
        let removed = of_kind.remove(id);
        // No empty kinds: two sets with the same resources compare equal however they were reached.
        if of_kind.is_empty() {
            self.items.remove(&kind);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.items.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every resource, kinds in [`ResourceKind::ALL`] order (what a resource names comes before it).
    pub fn iter(&self) -> impl Iterator<Item = (ResourceKind, &str, &Value)> {
        ResourceKind::ALL
            .into_iter()
            .flat_map(move |kind| self.list(kind).map(move |(id, value)| (kind, id, value)))
    }

    /// The configuration `base` (the file's server, Kafka, quota, spool and admin settings) with this set's
    /// resources, validated as a whole; or every problem, with resource paths.
    pub fn assemble(
        &self,
        base: &RawConfig,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let mut raw = base.clone();
        let (instances, instance_ids) =
            self.typed::<RawInstance>(ResourceKind::Instance, "name", &mut problems);
        let (routes, route_ids) = self.typed(ResourceKind::Route, "name", &mut problems);
        let (teams, team_ids) = self.typed(ResourceKind::Team, "name", &mut problems);
        let (consumers, consumer_ids) = self.typed(ResourceKind::Consumer, "name", &mut problems);
        let (token_limits, limit_ids) =
            self.typed::<TokenLimitConfig>(ResourceKind::Limit, "id", &mut problems);
        self.check_prices(&mut problems);
        let egress = Egress::of_file(&base.admin, &base.instances);
        for (instance, id) in instances.iter().zip(&instance_ids) {
            for (field, problem) in egress.check_instance(instance.api_key_env.as_deref(), &instance.endpoint)
            {
                problems.push(format!("instances/{id}.{field}: {problem}"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        raw.instances = instances;
        raw.routes = routes;
        raw.teams = teams;
        raw.consumers = consumers;
        raw.token_limits = token_limits;
        let env = |name: &str| {
            secrets
                .get(name)
                .map(|s| s.expose().to_owned())
                .or_else(|| std::env::var(name).ok())
        };
        let mut config = Config::from_raw(raw, env).map_err(|errors| {
            let tables = [
                ("instances", ResourceKind::Instance, &instance_ids),
                ("routes", ResourceKind::Route, &route_ids),
                ("teams", ResourceKind::Team, &team_ids),
                ("consumers", ResourceKind::Consumer, &consumer_ids),
                ("token_limits", ResourceKind::Limit, &limit_ids),
            ];
            errors
                .0
                .into_iter()
                .map(|problem| resource_path(problem, &tables))
                .collect::<Vec<_>>()
        })?;
        // The admin API's price versions add to the price file's (checked above), as billing-consumer adds them.
        let (prices, _) = config.prices.with_resources(self.list(ResourceKind::Price));
        config.prices = std::sync::Arc::new(prices);
        Ok(config)
    }

    /// The resources of `kind` as their TOML type, in id order, with their ids; a resource that does not
    /// deserialize, or whose `name_field` differs from its id, is a problem.
    fn typed<T: DeserializeOwned>(
        &self,
        kind: ResourceKind,
        name_field: &str,
        problems: &mut Vec<String>,
    ) -> (Vec<T>, Vec<String>) {
        let mut items = Vec::new();
        let mut ids = Vec::new();
        for (id, value) in self.list(kind) {
            let path = format!("{}/{id}", kind.plural());
            if value.get(name_field).and_then(Value::as_str) != Some(id) {
                problems.push(format!("{path}.{name_field}: must be `{id}`, the resource's id"));
                continue;
            }
            match serde_json::from_value::<T>(value.clone()) {
                Ok(item) => {
                    items.push(item);
                    ids.push(id.to_owned());
                }
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        (items, ids)
    }

    /// The rules a change must follow besides leaving a valid whole, judged against this set (the state before
    /// the change) at `at_ms`, the change's own time, so that every replica folding the topic judges it alike:
    /// a price version never changes once published, is never created in force already (back-dated: events
    /// already billed would be priced again differently on replay), and is never deleted once in force.
    pub fn check_transition(
        &self,
        kind: ResourceKind,
        id: &str,
        next: Option<&Value>,
        at_ms: i64,
    ) -> Result<(), String> {
        if kind != ResourceKind::Price {
            return Ok(());
        }
        tollgate_schemas::prices::check_transition(&format!("prices/{id}"), self.get(kind, id), next, at_ms)
    }

    fn check_prices(&self, problems: &mut Vec<String>) {
        for (id, value) in self.list(ResourceKind::Price) {
            let path = format!("prices/{id}");
            match serde_json::from_value::<tollgate_schemas::prices::PriceEntry>(value.clone()) {
                Ok(entry) => {
                    if entry.version_id() != id {
                        problems.push(format!(
                            "{path}: a price version's id is `model@effective_from`, here `{}`",
                            entry.version_id()
                        ));
                    }
                    if let Err(found) = entry.validate(&path) {
                        problems.extend(found);
                    }
                }
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
    }
}

/// A `[[token_limits]]` entry's name: its `id`, or its scope key.
fn limit_id(limit: &TokenLimitConfig) -> Option<String> {
    limit.id.clone().or_else(|| {
        QuotaScope::from_limit(None, None, limit)
            .ok()
            .map(|s| derived_limit_id(&s.key()))
    })
}

/// `routes[2].targets[0].instance: …` → `routes/chat.targets[0].instance: …`.
fn resource_path(problem: String, tables: &[(&str, ResourceKind, &Vec<String>)]) -> String {
    for (table, kind, ids) in tables {
        let Some(rest) = problem.strip_prefix(table).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((index, rest)) = rest.split_once(']') else {
            continue;
        };
        if let Some(id) = index.parse::<usize>().ok().and_then(|i| ids.get(i)) {
            return format!("{}/{id}{rest}", kind.plural());
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn price(model: &str, from: &str, input: u64) -> Value {
        json!({"model": model, "effective_from": from, "currency": "USD",
               "input_per_million": input, "output_per_million": 10})
    }

    #[test]
    fn price_versions_are_immutable_never_backdated_and_never_deleted_once_in_force() {
        let june = chrono::DateTime::parse_from_rfc3339("2027-06-01T00:00:00Z")
            .map(|t| t.timestamp_millis())
            .unwrap();
        let mut set = ResourceSet::default();
        set.put(ResourceKind::Price, "m@2027-07-01", price("m", "2027-07-01", 1));
        set.put(ResourceKind::Price, "m@2027-01-01", price("m", "2027-01-01", 1));
        let check = |id: &str, next: Option<Value>| {
            set.check_transition(ResourceKind::Price, id, next.as_ref(), june)
        };
        // The same figures again: a no-op, not a change.
        assert!(check("m@2027-07-01", Some(price("m", "2027-07-01", 1))).is_ok());
        // Other figures for a published version, in force or not: refused.
        assert!(check("m@2027-07-01", Some(price("m", "2027-07-01", 2))).is_err());
        assert!(check("m@2027-01-01", Some(price("m", "2027-01-01", 2))).is_err());
        // A new version must start after the change.
        assert!(check("m@2027-08-01", Some(price("m", "2027-08-01", 2))).is_ok());
        let backdated = check("m@2027-05-01", Some(price("m", "2027-05-01", 2))).unwrap_err();
        assert!(backdated.contains("back-dated"), "{backdated}");
        // Deleting: only a version not yet in force.
        assert!(check("m@2027-07-01", None).is_ok());
        assert!(check("m@2027-01-01", None).is_err());
        // Other kinds have no transition rules.
        assert!(set.check_transition(ResourceKind::Route, "r", None, june).is_ok());
    }

    const BASE: &str = r#"
        [meter]
        url = "http://127.0.0.1:9/"
        [kafka]
        brokers = "127.0.0.1:9092"

        [[instances]]
        name = "primary"
        endpoint = "http://127.0.0.1:1/v1"

        [[instances]]
        name = "canary"
        endpoint = "http://127.0.0.1:2/v1"

        [[routes]]
        name = "chat"
        models = ["gpt-4o-mini"]
        targets = [{ instance = "primary", weight = 50 }, { instance = "canary", weight = 50 }]

        [[token_limits]]
        models = ["gpt-4o-mini"]
        limit = 1000
        time_window = "1h"
    "#;

    fn base() -> RawConfig {
        toml::from_str(BASE).unwrap()
    }

    #[test]
    fn the_files_resources_assemble_to_the_files_configuration() {
        let set = ResourceSet::from_file(&base());
        assert_eq!(set.len(), 4);
        let limit_id = "models:gpt-4o-mini.window:3600s.strategy:total_tokens";
        assert!(set.get(ResourceKind::Limit, limit_id).is_some(), "{set:?}");
        let config = set.assemble(&base(), &BTreeMap::new()).unwrap();
        assert_eq!(config.instances.len(), 2);
        assert_eq!(config.routes[0].targets.len(), 2);
        assert_eq!(config.token_limits[0].id, limit_id);
    }

    #[test]
    fn a_route_naming_a_missing_instance_is_reported_at_the_route() {
        let mut set = ResourceSet::from_file(&base());
        set.remove(ResourceKind::Instance, "canary");
        let problems = set.assemble(&base(), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            problems,
            vec!["routes/chat.targets[1].instance: no instance is named `canary`".to_owned()]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_resource() {
        let mut set = ResourceSet::from_file(&base());
        set.put(
            ResourceKind::Instance,
            "broken",
            json!({"name": "broken", "endpoint": "ftp://x", "timeout": "soon"}),
        );
        set.put(
            ResourceKind::Route,
            "other",
            json!({"name": "elsewhere", "models": ["m"], "targets": []}),
        );
        let problems = set.assemble(&base(), &BTreeMap::new()).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("routes/other.name: must be `other`")),
            "{problems:?}"
        );
        let set_ok_names = {
            let mut s = ResourceSet::from_file(&base());
            s.put(
                ResourceKind::Instance,
                "broken",
                json!({"name": "broken", "endpoint": "ftp://x", "timeout": "soon"}),
            );
            s
        };
        let problems = set_ok_names.assemble(&base(), &BTreeMap::new()).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("instances/broken.endpoint")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("instances/broken.timeout")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_resource_of_the_wrong_shape_is_a_problem_not_a_panic() {
        let mut set = ResourceSet::from_file(&base());
        set.put(
            ResourceKind::Consumer,
            "acme",
            json!({"name": "acme", "keys": "nope", "colour": 3}),
        );
        let problems = set.assemble(&base(), &BTreeMap::new()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("consumers/acme: "), "{problems:?}");
    }
}

//! The quota policy: which scopes the quota loop computes and their limits, read from the gateway's own TOML
//! file so that both sides derive the same scope keys from the same text.
//!
//! Only the quota sections are read, leniently: every other section (and every other field of `[[consumers]]`
//! and `[[instances]]`) is ignored — the gateway validates the whole file. Three places hold token limits:
//!
//! - `[[consumers.token_limits]]` — a consumer's own limits;
//! - top-level `[[token_limits]]` — limits on everyone's usage (of some models, or of one instance);
//! - `[instances.token_limit]` — an instance's capacity, over every consumer;
//!
//! and two hold spend budgets ([`tollgate_schemas::budget`]), computed as scopes of the `spend` strategy whose
//! limit is micro-units of their currency: `[[consumers.budgets]]` and `[[teams.budgets]]`.
//!
//! Every problem is reported at once with its path (`consumers[0].token_limits[1].time_window: …`).
//!
//! With `--config-topic`, the admin API's resources replace those three sections once the topic held any change
//! ([`from_resources`]): each `consumer` resource is a `[[consumers]]` table, each `team` a `[[teams]]` table,
//! each `limit` one
//! `[[token_limits]]` entry (with its `id`), each `instance` an `[[instances]]` table — the same scopes, in the
//! same order (consumers, limits, instances; each by id), with problems at resource paths
//! (`limits/daily.time_window: …`). Routes carry no limits.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tollgate_schemas::budget::{BudgetConfig, BudgetHolder};
use tollgate_schemas::config::ResourceKind;
use tollgate_schemas::quota::{QuotaScope, TokenLimitConfig};

use crate::config_topic::resources::Resources;
use crate::error::BillingError;

/// One scope to compute, with its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredScope {
    /// Which usage counts, over which window.
    pub scope: QuotaScope,
    /// [`QuotaScope::key`], computed once: the scope in its snapshots (their Kafka keys add the window start).
    pub key: String,
    /// Tokens allowed per window (micro-units of the currency for a budget).
    pub limit: u64,
}

/// The gateway file, as far as quotas are concerned.
#[derive(Debug, Deserialize)]
struct GatewayFile {
    #[serde(default)]
    consumers: Vec<ConsumerSection>,
    #[serde(default)]
    token_limits: Vec<toml::Value>,
    #[serde(default)]
    instances: Vec<InstanceSection>,
    #[serde(default)]
    teams: Vec<TeamSection>,
}

#[derive(Debug, Deserialize)]
struct ConsumerSection {
    name: Option<String>,
    #[serde(default)]
    token_limits: Vec<toml::Value>,
    #[serde(default)]
    budgets: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
struct TeamSection {
    name: Option<String>,
    #[serde(default)]
    budgets: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
struct InstanceSection {
    name: Option<String>,
    token_limit: Option<toml::Value>,
}

/// A `consumer` resource, as far as quotas are concerned.
#[derive(Debug, Deserialize)]
struct ConsumerResource {
    name: Option<String>,
    #[serde(default)]
    token_limits: Vec<serde_json::Value>,
    #[serde(default)]
    budgets: Vec<serde_json::Value>,
}

/// A `team` resource, as far as budgets are concerned.
#[derive(Debug, Deserialize)]
struct TeamResource {
    name: Option<String>,
    #[serde(default)]
    budgets: Vec<serde_json::Value>,
}

/// An `instance` resource, as far as quotas are concerned.
#[derive(Debug, Deserialize)]
struct InstanceResource {
    name: Option<String>,
    token_limit: Option<serde_json::Value>,
}

/// Reads the quota policy from the gateway configuration file at `path`.
pub fn load(path: &Path) -> Result<Vec<ConfiguredScope>, BillingError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| BillingError::QuotaPolicy {
        path: shown.clone(),
        problems: vec![format!("cannot be read: {e}")],
    })?;
    from_gateway_toml(&text).map_err(|problems| BillingError::QuotaPolicy {
        path: shown,
        problems,
    })
}

/// The configured scopes of a gateway configuration file's text, deduplicated by key, in the order they first
/// appear; or every problem, each with its path.
pub fn from_gateway_toml(text: &str) -> Result<Vec<ConfiguredScope>, Vec<String>> {
    let file: GatewayFile = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
    let mut collector = Collector::default();

    for (i, consumer) in file.consumers.iter().enumerate() {
        for (j, limit) in consumer.token_limits.iter().enumerate() {
            let path = format!("consumers[{i}].token_limits[{j}]");
            match &consumer.name {
                Some(name) => collector.add(&path, Some(name), None, toml_limit(limit)),
                None => collector.problem(format!("consumers[{i}].name: missing")),
            }
        }
        for (j, budget) in consumer.budgets.iter().enumerate() {
            let path = format!("consumers[{i}].budgets[{j}]");
            match &consumer.name {
                Some(name) => collector.add_budget(&path, BudgetHolder::Consumer(name), toml_budget(budget)),
                None => collector.problem(format!("consumers[{i}].name: missing")),
            }
        }
    }
    for (i, team) in file.teams.iter().enumerate() {
        for (j, budget) in team.budgets.iter().enumerate() {
            let path = format!("teams[{i}].budgets[{j}]");
            match &team.name {
                Some(name) => collector.add_budget(&path, BudgetHolder::Team(name), toml_budget(budget)),
                None => collector.problem(format!("teams[{i}].name: missing")),
            }
        }
    }
    for (i, limit) in file.token_limits.iter().enumerate() {
        collector.add(&format!("token_limits[{i}]"), None, None, toml_limit(limit));
    }
    for (i, instance) in file.instances.iter().enumerate() {
        let Some(limit) = &instance.token_limit else {
            continue;
        };
        let path = format!("instances[{i}].token_limit");
        match &instance.name {
            Some(name) => collector.add(&path, None, Some(name), toml_limit(limit)),
            None => collector.problem(format!("instances[{i}].name: missing")),
        }
    }
    collector.finish()
}

/// The configured scopes of the config topic's resources (see the module docs), deduplicated by key, in the
/// order [`from_gateway_toml`] would give them; and every problem, each with its resource path. Lenient, as a
/// live configuration must be: the scopes are those of every valid limit, whatever else is wrong.
pub fn from_resources(resources: &Resources) -> (Vec<ConfiguredScope>, Vec<String>) {
    let mut collector = Collector::default();
    for (id, resource) in resources.of_kind(ResourceKind::Consumer) {
        let Some(consumer) = collector.read::<ConsumerResource>(&format!("consumers/{id}"), resource) else {
            continue;
        };
        let name = consumer.name.as_deref().unwrap_or(id);
        for (j, limit) in consumer.token_limits.iter().enumerate() {
            let path = format!("consumers/{id}.token_limits[{j}]");
            collector.add(&path, Some(name), None, json_limit(limit));
        }
        for (j, budget) in consumer.budgets.iter().enumerate() {
            let path = format!("consumers/{id}.budgets[{j}]");
            collector.add_budget(&path, BudgetHolder::Consumer(name), json_budget(budget));
        }
    }
    for (id, resource) in resources.of_kind(ResourceKind::Team) {
        let Some(team) = collector.read::<TeamResource>(&format!("teams/{id}"), resource) else {
            continue;
        };
        let name = team.name.as_deref().unwrap_or(id);
        for (j, budget) in team.budgets.iter().enumerate() {
            let path = format!("teams/{id}.budgets[{j}]");
            collector.add_budget(&path, BudgetHolder::Team(name), json_budget(budget));
        }
    }
    for (id, limit) in resources.of_kind(ResourceKind::Limit) {
        collector.add(&format!("limits/{id}"), None, None, json_limit(limit));
    }
    for (id, resource) in resources.of_kind(ResourceKind::Instance) {
        let path = format!("instances/{id}");
        let Some(instance) = collector.read::<InstanceResource>(&path, resource) else {
            continue;
        };
        if let Some(limit) = &instance.token_limit {
            let name = instance.name.as_deref().unwrap_or(id);
            collector.add(
                &format!("{path}.token_limit"),
                None,
                Some(name),
                json_limit(limit),
            );
        }
    }
    (collector.scopes, collector.problems)
}

fn toml_limit(raw: &toml::Value) -> Result<TokenLimitConfig, String> {
    raw.clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())
}

fn json_limit(raw: &serde_json::Value) -> Result<TokenLimitConfig, String> {
    TokenLimitConfig::deserialize(raw).map_err(|e| e.to_string())
}

fn toml_budget(raw: &toml::Value) -> Result<BudgetConfig, String> {
    raw.clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())
}

fn json_budget(raw: &serde_json::Value) -> Result<BudgetConfig, String> {
    BudgetConfig::deserialize(raw).map_err(|e| e.to_string())
}

/// Scopes and problems gathered so far.
#[derive(Debug, Default)]
struct Collector {
    scopes: Vec<ConfiguredScope>,
    /// Index into `scopes` and the path of the limit that defined it, by key.
    seen: HashMap<String, (usize, String)>,
    problems: Vec<String>,
}

impl Collector {
    fn problem(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// `resource` read as `T`, or `None` with the problem noted at `path`.
    fn read<T: DeserializeOwned>(&mut self, path: &str, resource: &serde_json::Value) -> Option<T> {
        match T::deserialize(resource) {
            Ok(read) => Some(read),
            Err(e) => {
                self.problem(format!("{path}: {e}"));
                None
            }
        }
    }

    fn add(
        &mut self,
        path: &str,
        consumer: Option<&str>,
        instance: Option<&str>,
        limit: Result<TokenLimitConfig, String>,
    ) {
        let limit = match limit {
            Ok(limit) => limit,
            Err(problem) => {
                self.problem(format!("{path}: {problem}"));
                return;
            }
        };
        let scope = QuotaScope::from_limit(consumer, instance, &limit).map(|scope| (scope, limit.limit));
        self.add_scope(path, "limit", scope);
    }

    fn add_budget(&mut self, path: &str, holder: BudgetHolder<'_>, budget: Result<BudgetConfig, String>) {
        match budget {
            Ok(budget) => {
                let scope = budget
                    .validate(holder)
                    .map(|budget| (budget.scope, budget.limit_micros));
                self.add_scope(path, "amount", scope);
            }
            Err(problem) => self.problem(format!("{path}: {problem}")),
        }
    }

    /// Adds a validated scope with its limit (its field named `limit_field`), or notes its problems.
    fn add_scope(
        &mut self,
        path: &str,
        limit_field: &str,
        scope: Result<(QuotaScope, u64), Vec<(&'static str, String)>>,
    ) {
        let (scope, limit) = match scope {
            Ok(scope) => scope,
            Err(problems) => {
                for (field, problem) in problems {
                    self.problem(format!("{path}.{field}: {problem}"));
                }
                return;
            }
        };
        let key = scope.key();
        match self.seen.get(&key) {
            Some((index, first)) => {
                let configured = self.scopes.get(*index).map_or(limit, |s| s.limit);
                if configured != limit {
                    self.problem(format!(
                        "{path}.{limit_field}: {limit} differs from the limit {configured} of the same scope \
                         `{key}` at {first}"
                    ));
                }
            }
            None => {
                self.seen
                    .insert(key.clone(), (self.scopes.len(), path.to_owned()));
                self.scopes.push(ConfiguredScope { scope, key, limit });
            }
        }
    }

    fn finish(self) -> Result<Vec<ConfiguredScope>, Vec<String>> {
        if self.problems.is_empty() {
            Ok(self.scopes)
        } else {
            Err(self.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::quota::LimitStrategy;

    const GATEWAY: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        some_future_setting = true

        [kafka]
        brokers = "127.0.0.1:9092"

        [[instances]]
        name = "openai-1"
        provider = "openai"
        endpoint = "https://api.openai.com/v1"
        [instances.token_limit]
        limit = 1000000
        time_window = "1m"

        [[instances]]
        name = "vllm"
        provider = "openai"
        endpoint = "http://vllm:8000/v1"

        [[routes]]
        name = "gpt-4o-mini"
        models = ["gpt-4o-mini"]
        targets = [{ instance = "openai-1" }]

        [[consumers]]
        name = "team-a"
        keys = [{ id = "a-1", sha256 = "00" }]
        [[consumers.token_limits]]
        models = ["gpt-4o-mini", "mini"]
        limit = 50000
        time_window = "1h"
        [[consumers.token_limits]]
        limit = 10000
        time_window = "1m"
        limit_strategy = "completion_tokens"
        instance = "vllm"

        [[consumers]]
        name = "team-b"
        keys = [{ id = "b-1", sha256 = "11" }]

        [[token_limits]]
        models = ["gpt-4o-mini"]
        limit = 2000000
        time_window = "24h"
        limit_strategy = "prompt_tokens"
        rejected_type = "insufficient_quota"
    "#;

    #[test]
    fn reads_every_kind_of_limit_and_ignores_the_rest() {
        let scopes = from_gateway_toml(GATEWAY).unwrap();
        let keys: Vec<_> = scopes.iter().map(|s| (s.key.as_str(), s.limit)).collect();
        assert_eq!(
            keys,
            [
                (
                    "consumer=team-a;models=gpt-4o-mini,mini;window=3600s;strategy=total_tokens",
                    50_000
                ),
                (
                    "consumer=team-a;instance=vllm;window=60s;strategy=completion_tokens",
                    10_000
                ),
                (
                    "models=gpt-4o-mini;window=86400s;strategy=prompt_tokens",
                    2_000_000
                ),
                ("instance=openai-1;window=60s;strategy=total_tokens", 1_000_000),
            ]
        );
        let team_a = &scopes[0].scope;
        assert_eq!(team_a.consumer.as_deref(), Some("team-a"));
        assert_eq!(
            team_a.period,
            tollgate_schemas::quota::Period::Every { ms: 3_600_000 }
        );
        assert_eq!(scopes[2].scope.strategy, LimitStrategy::PromptTokens);
        assert_eq!(scopes[3].scope.instance.as_deref(), Some("openai-1"));
        assert!(scopes.iter().all(|s| s.key == s.scope.key()));
    }

    #[test]
    fn a_file_without_limits_has_no_scopes() {
        assert_eq!(from_gateway_toml("").unwrap(), []);
        assert_eq!(
            from_gateway_toml("[[consumers]]\nname = \"demo\"\nkeys = []\n").unwrap(),
            []
        );
    }

    #[test]
    fn the_same_scope_twice_is_one_scope_unless_the_limits_differ() {
        let twice = r#"
            [[token_limits]]
            limit = 10
            time_window = "1h"
            [[token_limits]]
            limit = 10
            time_window = "60m"
        "#;
        let scopes = from_gateway_toml(twice).unwrap();
        assert_eq!(scopes.len(), 1);

        let conflicting = twice.replacen(
            "limit = 10\n            time_window = \"60m\"",
            "limit = 11\n            time_window = \"60m\"",
            1,
        );
        let problems = from_gateway_toml(&conflicting).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("token_limits[1].limit: 11 differs from the limit 10"),
            "{problems:?}"
        );
        assert!(problems[0].ends_with("at token_limits[0]"), "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let bad = r#"
            [[consumers]]
            name = "team-a"
            [[consumers.token_limits]]
            limit = 10
            time_window = "1h"
            [[consumers.token_limits]]
            limit = 0
            time_window = "soon"
            [[consumers.token_limits]]
            limit = 5
            time_window = "1h"
            colour = "blue"

            [[consumers]]
            [[consumers.token_limits]]
            limit = 5
            time_window = "1h"

            [[instances]]
            name = "vllm"
            [instances.token_limit]
            limit = 5
            time_window = "1h"
            instance = "other"
        "#;
        let problems = from_gateway_toml(bad).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("consumers[0].token_limits[1].time_window: `soon`"));
        assert_eq!(
            problems[1],
            "consumers[0].token_limits[1].limit: must be at least 1"
        );
        assert!(
            problems[2].starts_with("consumers[0].token_limits[2]: unknown field `colour`"),
            "{problems:#?}"
        );
        assert_eq!(problems[3], "consumers[1].name: missing");
        assert_eq!(
            problems[4],
            "instances[0].token_limit.instance: is implied by the instance the limit is set on"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_one_problem() {
        let problems = from_gateway_toml("[[consumers]\nname = ").unwrap_err();
        assert_eq!(problems.len(), 1);
        let problems = from_gateway_toml("token_limits = 3").unwrap_err();
        assert_eq!(problems.len(), 1);
    }

    fn resources(entries: &[(ResourceKind, &str, serde_json::Value)]) -> Resources {
        let mut resources = Resources::default();
        for (kind, id, resource) in entries {
            let (key, value) =
                crate::config_topic::resources::tests::message(*kind, id, Some(resource.clone()));
            resources.apply(Some(key.as_bytes()), Some(&value)).unwrap();
        }
        resources
    }

    #[test]
    fn resources_give_the_scopes_the_same_sections_of_a_file_give() {
        use serde_json::json;
        // GATEWAY's sections as the admin API stores them, put in another order than the file's.
        let topic = resources(&[
            (
                ResourceKind::Limit,
                "mini-daily",
                json!({"id": "mini-daily", "models": ["gpt-4o-mini"], "limit": 2000000, "time_window": "24h",
                       "limit_strategy": "prompt_tokens", "rejected_type": "insufficient_quota"}),
            ),
            (
                ResourceKind::Route,
                "gpt-4o-mini",
                json!({"name": "gpt-4o-mini", "models": ["gpt-4o-mini"], "targets": [{"instance": "openai-1"}]}),
            ),
            (
                ResourceKind::Consumer,
                "team-b",
                json!({"name": "team-b", "keys": [{"id": "b-1"}], "expires_at": null}),
            ),
            (
                ResourceKind::Consumer,
                "team-a",
                json!({"name": "team-a", "keys": [{"id": "a-1", "sha256": "00"}], "token_limits": [
                    {"models": ["gpt-4o-mini", "mini"], "limit": 50000, "time_window": "1h"},
                    {"limit": 10000, "time_window": "1m", "limit_strategy": "completion_tokens", "instance": "vllm"},
                ]}),
            ),
            (
                ResourceKind::Instance,
                "vllm",
                json!({"name": "vllm", "provider": "openai", "endpoint": "http://vllm:8000/v1", "token_limit": null}),
            ),
            (
                ResourceKind::Instance,
                "openai-1",
                json!({"name": "openai-1", "provider": "openai", "endpoint": "https://api.openai.com/v1",
                       "token_limit": {"limit": 1000000, "time_window": "1m"}}),
            ),
            (
                ResourceKind::Price,
                "gpt-4o-mini@2026-01-01",
                json!({"model": "gpt-4o-mini", "effective_from": "2026-01-01", "currency": "USD",
                       "input_per_mtok": "0.15", "output_per_mtok": "0.60"}),
            ),
        ]);
        let (scopes, problems) = from_resources(&topic);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(scopes, from_gateway_toml(GATEWAY).unwrap());
        assert_eq!(from_resources(&Resources::default()), (vec![], vec![]));
    }

    #[test]
    fn a_bad_resource_is_a_problem_at_its_path_and_the_good_ones_still_count() {
        use serde_json::json;
        let topic = resources(&[
            (
                ResourceKind::Limit,
                "ok",
                json!({"id": "ok", "limit": 5, "time_window": "1h"}),
            ),
            (
                ResourceKind::Limit,
                "soon",
                json!({"id": "soon", "limit": 5, "time_window": "soon"}),
            ),
            (
                ResourceKind::Limit,
                "twice",
                json!({"id": "twice", "limit": 6, "time_window": "60m"}),
            ),
            (
                ResourceKind::Consumer,
                "team-x",
                json!({"name": "team-x", "token_limits": {"limit": 1}}),
            ),
            (
                ResourceKind::Instance,
                "gpu",
                json!({"name": "gpu", "token_limit": {"limit": 1, "time_window": "1h", "instance": "cpu"}}),
            ),
        ]);
        let (scopes, problems) = from_resources(&topic);
        let keys: Vec<_> = scopes.iter().map(|s| (s.key.as_str(), s.limit)).collect();
        assert_eq!(keys, [("window=3600s;strategy=total_tokens", 5)]);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("consumers/team-x: invalid type: map, expected a sequence"),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("limits/soon.time_window: `soon`"),
            "{problems:#?}"
        );
        assert!(
            problems[2].starts_with("limits/twice.limit: 6 differs from the limit 5 of the same scope"),
            "{problems:#?}"
        );
        assert!(problems[2].ends_with("at limits/ok"), "{problems:#?}");
        assert_eq!(
            problems[3],
            "instances/gpu.token_limit.instance: is implied by the instance the limit is set on"
        );
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/tollgate.toml")).unwrap_err();
        assert_eq!(err.kind(), "quota_policy");
        assert!(err.to_string().contains("/nonexistent/tollgate.toml"), "{err}");
    }

    #[test]
    fn budgets_of_consumers_and_teams_are_spend_scopes_in_micro_units() {
        let scopes = from_gateway_toml(
            r#"
            [[teams]]
            name = "acme"
            [[teams.budgets]]
            amount = "2000"
            currency = "USD"
            period = "month"
            [[consumers]]
            name = "alice"
            team = "acme"
            [[consumers.budgets]]
            amount = "1.50"
            currency = "EUR"
            period = "day"
            on_exceed = "alert"
            "#,
        )
        .unwrap();
        let keys: Vec<(&str, u64)> = scopes.iter().map(|s| (s.key.as_str(), s.limit)).collect();
        assert_eq!(
            keys,
            [
                (
                    "consumer=alice;window=86400s;strategy=spend;currency=EUR",
                    1_500_000
                ),
                (
                    "team=acme;window=month;strategy=spend;currency=USD",
                    2_000_000_000
                ),
            ]
        );
        let problems = from_gateway_toml(
            "[[teams]]\nname = \"t\"\n[[teams.budgets]]\namount = \"1\"\ncurrency = \"USD\"\nperiod = \"year\"\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            ["teams[0].budgets[0].period: `year` is not day, week, month or fixed"]
        );
    }
}

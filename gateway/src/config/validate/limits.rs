//! `[[token_limits]]` and `[quota]`: token quotas by scope (one limit per scope, every name of a route or none),
//! and the quota feed that carries their snapshots.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tollgate_schemas::budget::{BudgetConfig, BudgetHolder};
use tollgate_schemas::quota::{QuotaScope, TokenLimitConfig};

use super::Problems;
use crate::config::derived_limit_id;
use crate::config::model::*;
use crate::config::raw::*;

/// One model, one quota, one price: every name of a route is the same model, so a list of model names (a token
/// limit's, a key's) that names one name of a route must name all of them — otherwise the other names would
/// escape the limit (or the key's restriction).
pub(super) struct Aliases<'a> {
    /// Model name → the route serving it.
    pub owner: &'a HashMap<String, String>,
    /// Route name → all its model names.
    pub names: &'a HashMap<&'a str, &'a [String]>,
}

impl Aliases<'_> {
    pub fn check(&self, p: &mut Problems, path: &str, listed: &[String]) {
        let mut reported = HashSet::new();
        for model in listed {
            let Some(route) = self.owner.get(model) else {
                continue;
            };
            if !reported.insert(route.as_str()) {
                continue;
            }
            let all = self.names.get(route.as_str()).copied().unwrap_or_default();
            let missing: Vec<&str> = all
                .iter()
                .filter(|name| !listed.contains(name))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                p.push(
                    path,
                    format!(
                        "names `{model}` of route `{route}` but not its other names `{}`: all names of a route are \
                         one model for quotas, limits and prices, so list every one of them",
                        missing.join("`, `")
                    ),
                );
            }
        }
    }
}

/// What a token limit may refer to, and the scopes already taken (two limits on one scope would contradict
/// each other's snapshot).
pub(super) struct LimitRules<'a> {
    pub models: &'a HashMap<String, String>,
    pub aliases: &'a Aliases<'a>,
    pub instances: &'a HashMap<String, usize>,
    pub keys: HashSet<String>,
}

impl LimitRules<'_> {
    /// Validates one token limit set on `consumer` (or globally) and, for an instance's own quota, `instance`.
    pub fn validate(
        &mut self,
        p: &mut Problems,
        path: &str,
        consumer: Option<&str>,
        instance: Option<&str>,
        raw: TokenLimitConfig,
    ) -> Option<TokenLimit> {
        for (j, model) in raw.models.iter().enumerate() {
            if !model.is_empty() && !self.models.contains_key(model) {
                p.push(
                    format!("{path}.models[{j}]"),
                    format!("no route serves `{model}`"),
                );
            }
        }
        self.aliases.check(p, &format!("{path}.models"), &raw.models);
        if let Some(name) = &raw.instance
            && !self.instances.contains_key(name)
        {
            p.push(
                format!("{path}.instance"),
                format!("no instance is named `{name}`"),
            );
        }
        let scope = match QuotaScope::from_limit(consumer, instance, &raw) {
            Ok(scope) => scope,
            Err(problems) => {
                for (field, message) in problems {
                    p.push(format!("{path}.{field}"), message);
                }
                return None;
            }
        };
        let key = scope.key();
        if !self.keys.insert(key.clone()) {
            p.push(
                path,
                format!("another token limit already covers the same scope (`{key}`)"),
            );
            return None;
        }
        Some(TokenLimit {
            id: key.clone(),
            scope,
            key,
            limit: raw.limit,
            rejected_code: raw.rejected_code.unwrap_or(429),
            rejected_msg: raw.rejected_msg.unwrap_or_else(default_token_rejected_msg),
            rejected_type: match raw.rejected_type.as_deref() {
                Some("insufficient_quota") => "insufficient_quota",
                _ => "rate_limit_exceeded",
            },
            budget: None,
        })
    }

    /// Validates one spend budget of `holder`, at `path`: a token limit of the `spend` strategy whose limit is
    /// micro-units of its currency, refused with 429 `insufficient_quota`.
    pub fn budget(
        &mut self,
        p: &mut Problems,
        path: &str,
        holder: BudgetHolder<'_>,
        raw: BudgetConfig,
    ) -> Option<TokenLimit> {
        let budget = match raw.validate(holder) {
            Ok(budget) => budget,
            Err(problems) => {
                for (field, message) in problems {
                    p.push(format!("{path}.{field}"), message);
                }
                return None;
            }
        };
        let key = budget.scope.key();
        if !self.keys.insert(key.clone()) {
            p.push(
                path,
                format!("another budget already covers the same scope (`{key}`)"),
            );
            return None;
        }
        if let Some(id) = &raw.id {
            p.name(format!("{path}.id"), id);
        }
        let currency = raw.currency.clone();
        Some(TokenLimit {
            id: raw.id.unwrap_or_else(|| derived_limit_id(&key)),
            rejected_msg: format!(
                "Budget of {} {currency} {} is spent",
                tollgate_schemas::prices::format_micros(
                    i64::try_from(budget.limit_micros).unwrap_or(i64::MAX)
                ),
                budget.scope.period.describe(),
            ),
            scope: budget.scope,
            key,
            limit: budget.limit_micros,
            rejected_code: 429,
            rejected_type: "insufficient_quota",
            budget: Some(BudgetTerms {
                currency,
                on_exceed: budget.on_exceed,
            }),
        })
    }
}

/// Each instance's own token limit (`instances[i].token_limit`), set on the instance it belongs to.
pub(super) fn instance_limits(
    p: &mut Problems,
    limits: &mut LimitRules<'_>,
    raw_limits: Vec<(usize, TokenLimitConfig)>,
    instances: &mut [Instance],
) {
    for (i, raw) in raw_limits {
        let name = instances.get(i).map(|instance| instance.name.clone());
        let limit = limits.validate(
            p,
            &format!("instances[{i}].token_limit"),
            None,
            name.as_deref(),
            raw,
        );
        if let Some(instance) = instances.get_mut(i) {
            instance.token_limit = limit;
        }
    }
}

/// The file's `[[token_limits]]`: ids unique, each named by its id or its scope.
pub(super) fn token_limits(
    p: &mut Problems,
    raw_limits: Vec<TokenLimitConfig>,
    limits: &mut LimitRules<'_>,
) -> Vec<TokenLimit> {
    let mut limit_ids = HashSet::new();
    for (j, limit) in raw_limits.iter().enumerate() {
        if let Some(id) = &limit.id {
            p.name(format!("token_limits[{j}].id"), id);
            if !limit_ids.insert(id.clone()) {
                p.push(format!("token_limits[{j}].id"), format!("`{id}` is used twice"));
            }
        }
    }
    raw_limits
        .into_iter()
        .enumerate()
        .filter_map(|(j, limit)| {
            let id = limit.id.clone();
            let mut limit = limits.validate(p, &format!("token_limits[{j}]"), None, None, limit)?;
            limit.id = id.unwrap_or_else(|| derived_limit_id(&limit.key));
            Some(limit)
        })
        .collect()
}

pub(super) fn quota(p: &mut Problems, raw: RawQuota) -> QuotaConfig {
    if raw.topic.trim().is_empty() {
        p.push("quota.topic", "must not be empty");
    }
    let quota = QuotaConfig {
        topic: raw.topic,
        reserve_max_tokens: raw.reserve_max_tokens,
        max_snapshot_age: p.duration("quota.max_snapshot_age", &raw.max_snapshot_age),
        load_timeout: p.duration("quota.load_timeout", &raw.load_timeout),
        budget_output_tokens: raw.budget_output_tokens,
    };
    if !(1..=10_000_000).contains(&quota.budget_output_tokens) {
        p.push("quota.budget_output_tokens", "must be 1 to 10000000");
    }
    if quota.load_timeout > Duration::from_secs(600) {
        p.push("quota.load_timeout", "must be at most 10m");
    }
    quota
}

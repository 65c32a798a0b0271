//! `[[routes]]`: models to instances, with priorities, weights, balancing and failover.

use std::collections::{HashMap, HashSet};

use super::Problems;
use crate::config::model::*;
use crate::config::raw::*;
use crate::pipeline::crossing::Crossing;
use crate::protocol::{Endpoint, Provider};

use super::instances::Instances;

/// The largest weight of one target: weights are shares, and a bound keeps one change from building huge
/// structures on every replica.
const MAX_WEIGHT: u32 = 10_000;
/// The largest sum of a consistent-hash route's weights: its ring holds 160 points per unit of weight, built on
/// every replica at every change (and at every start, from the config topic).
const MAX_HASH_WEIGHT_TOTAL: u64 = 1_000;
/// Attempts per request, failovers included: each may hold an upstream connection and a reservation.
const MAX_ATTEMPTS: usize = 10;

/// The routes, and which route serves each model name.
pub(super) struct Routes {
    pub list: Vec<Route>,
    /// Model name → the route serving it.
    pub model_owner: HashMap<String, String>,
}

pub(super) fn routes(p: &mut Problems, raw_routes: Vec<RawRoute>, known: &Instances) -> Routes {
    let instance_index = &known.index;
    let instances = &known.list;
    let mut route_names = HashSet::new();
    let mut model_owner: HashMap<String, String> = HashMap::new();
    let mut routes = Vec::with_capacity(raw_routes.len());
    for (i, raw) in raw_routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        p.name(format!("{path}.name"), &raw.name);
        if !route_names.insert(raw.name.clone()) {
            p.push(format!("{path}.name"), format!("`{}` is defined twice", raw.name));
        }
        if raw.models.is_empty() {
            p.push(format!("{path}.models"), "must list at least one model name");
        }
        for (j, model) in raw.models.iter().enumerate() {
            if model.is_empty() {
                p.push(format!("{path}.models[{j}]"), "must not be empty");
            } else if let Some(owner) = model_owner.insert(model.clone(), raw.name.clone()) {
                p.push(
                    format!("{path}.models[{j}]"),
                    format!("`{model}` is already served by route `{owner}`"),
                );
            }
        }
        if raw.targets.is_empty() {
            p.push(format!("{path}.targets"), "must list at least one instance");
        }
        let mut targets = Vec::with_capacity(raw.targets.len());
        let mut seen = HashSet::new();
        for (j, t) in raw.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            if let Some(rewrite) = &t.path
                && !rewrite.starts_with('/')
            {
                p.push(
                    format!("{tpath}.path"),
                    format!("`{rewrite}` must be an absolute path like /v2/chat/completions"),
                );
            }
            if !seen.insert(t.instance.clone()) {
                p.push(
                    format!("{tpath}.instance"),
                    format!("`{}` is a target of this route twice", t.instance),
                );
            }
            if t.weight > MAX_WEIGHT {
                p.push(
                    format!("{tpath}.weight"),
                    format!("{} is over the largest weight, {MAX_WEIGHT}", t.weight),
                );
            }
            match instance_index.get(&t.instance) {
                Some(&instance) => targets.push(Target {
                    instance,
                    priority: t.priority,
                    weight: t.weight,
                    path: t.path,
                }),
                None => p.push(
                    format!("{tpath}.instance"),
                    format!("no instance is named `{}`", t.instance),
                ),
            }
        }
        if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
            p.push(
                format!("{path}.targets"),
                "at least one target needs a weight above 0",
            );
        }
        // Stable: equal priorities keep file order.
        targets.sort_by_key(|t| std::cmp::Reverse(t.priority));
        let first_provider = targets
            .first()
            .and_then(|t| instances.get(t.instance))
            .map(|i: &Instance| i.provider);
        let paths = raw.paths.unwrap_or_else(|| {
            // The first target's protocol's endpoints that every target can serve (a route that mixes
            // protocols defaults to the endpoints translated between them).
            provider_paths(first_provider.unwrap_or(Provider::Openai))
                .into_iter()
                .filter(|route_path| {
                    Endpoint::of_path(route_path).is_some_and(|endpoint| {
                        targets
                            .iter()
                            .filter_map(|t| instances.get(t.instance))
                            .all(|i: &Instance| Crossing::can_serve(endpoint, i.provider))
                    })
                })
                .collect()
        });
        for (j, route_path) in paths.iter().enumerate() {
            let Some(endpoint) = Endpoint::of_path(route_path) else {
                p.push(
                    format!("{path}.paths[{j}]"),
                    format!(
                        "`{route_path}` is not an endpoint this gateway serves ({})",
                        served_paths()
                    ),
                );
                continue;
            };
            for t in &targets {
                if let Some(instance) = instances.get(t.instance)
                    && !Crossing::can_serve(endpoint, instance.provider)
                {
                    p.push(
                        format!("{path}.paths[{j}]"),
                        format!(
                            "`{route_path}` speaks the {} protocol, which target `{}` ({}) cannot serve: only chat \
                             completions and messages are translated between protocols",
                            endpoint.provider().as_str(),
                            instance.name,
                            instance.provider.as_str()
                        ),
                    );
                }
            }
        }
        let balancer = balancer(p, &path, &raw.balancer, raw.hash_on.as_deref());
        let total_weight: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        if matches!(balancer, Balancer::ConsistentHash(_)) && total_weight > MAX_HASH_WEIGHT_TOTAL {
            p.push(
                format!("{path}.targets"),
                format!(
                    "the weights of a consistent_hash route add up to {total_weight}, over \
                     {MAX_HASH_WEIGHT_TOTAL} (its ring holds 160 points per unit of weight)"
                ),
            );
        }
        if raw.failover.max_attempts == 0 || raw.failover.max_attempts > MAX_ATTEMPTS {
            p.push(
                format!("{path}.failover.max_attempts"),
                format!("must be 1–{MAX_ATTEMPTS}"),
            );
        }
        for (j, status) in raw.failover.retry_on_status.iter().enumerate() {
            if !(400..=599).contains(status) {
                p.push(
                    format!("{path}.failover.retry_on_status[{j}]"),
                    format!("{status} is not an error status"),
                );
            }
        }
        let failover = FailoverConfig {
            max_attempts: raw.failover.max_attempts,
            deadline: p.duration(format!("{path}.failover.deadline"), &raw.failover.deadline),
            retry_on_status: raw.failover.retry_on_status,
        };
        routes.push(Route {
            name: raw.name,
            models: raw.models,
            paths,
            targets,
            balancer,
            failover,
        });
    }
    Routes {
        list: routes,
        model_owner,
    }
}

fn served_paths() -> String {
    Endpoint::ALL
        .iter()
        .map(|e| e.path())
        .collect::<Vec<_>>()
        .join(", ")
}

fn balancer(p: &mut Problems, path: &str, balancer: &str, hash_on: Option<&str>) -> Balancer {
    const HASH_ON: &str = "must be \"consumer\" or \"header:<name>\"";
    match (balancer, hash_on) {
        ("weighted_round_robin", None) => Balancer::WeightedRoundRobin,
        ("weighted_round_robin", Some(_)) => {
            p.push(
                format!("{path}.hash_on"),
                "only applies to balancer = \"consistent_hash\"",
            );
            Balancer::WeightedRoundRobin
        }
        ("consistent_hash", Some("consumer")) => Balancer::ConsistentHash(HashOn::Consumer),
        ("consistent_hash", Some(on)) => match on.strip_prefix("header:") {
            Some(name) if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Balancer::ConsistentHash(HashOn::Header(name.to_ascii_lowercase()))
            }
            _ => {
                p.push(format!("{path}.hash_on"), format!("`{on}` {HASH_ON}"));
                Balancer::WeightedRoundRobin
            }
        },
        ("consistent_hash", None) => {
            p.push(
                format!("{path}.hash_on"),
                format!("is required with consistent_hash and {HASH_ON}"),
            );
            Balancer::WeightedRoundRobin
        }
        (other, _) => {
            p.push(
                format!("{path}.balancer"),
                format!("`{other}` is not weighted_round_robin or consistent_hash"),
            );
            Balancer::WeightedRoundRobin
        }
    }
}

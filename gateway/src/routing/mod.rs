//! Model routing: which instances may serve a request, and in which order they are tried.
//!
//! Built once from the configuration into an immutable table keyed by model name (and alias); a lookup is one
//! hash probe. For each request, [`RouteTable::plan`] orders the targets:
//! 1. priority groups from the highest `priority` down; within a group only available instances (see
//!    [`health`]) with a weight above 0;
//! 2. the group's first pick comes from its balancer ([`balancer`]): smooth weighted round-robin, or
//!    consistent hashing on the consumer or a header; the group's other available targets follow by weight, so
//!    a failover stays within the same priority before going lower;
//! 3. when nothing is available, the least-recently-failed target is tried anyway rather than failing untried;
//! 4. the plan is cut to the route's `failover.max_attempts`.
//!
//! The folder holds routing from the table to the instance's answer: the router (here), one pick within a
//! priority group ([`balancer`]), instance health — circuit breakers and `Retry-After` cooldowns, shared by all
//! workers ([`health`]) and across replicas through the health topic ([`shared`]) — and active health checks
//! ([`probe`]), one attempt against one instance and which
//! failures are safe to retry ([`upstream`]), and what of a provider's error body a client may see ([`scrub`]).

pub mod balancer;
pub mod health;
pub mod probe;
pub mod scrub;
pub mod shared;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Balancer, Config, FailoverConfig, HashOn, Instance};
use crate::metrics::{InstanceMetrics, RouteMetrics};
use crate::routing::health::InstanceHealth;
use balancer::{HashRing, SmoothWeighted};

/// One target of a route.
#[derive(Debug)]
pub struct RouteTarget {
    pub instance: Arc<Instance>,
    pub health: Arc<InstanceHealth>,
    pub weight: u32,
    /// Upstream path replacing the endpoint's path (a canary on `/v2/...`).
    pub path: Option<String>,
    /// The instance's metric series, shared by every route it serves.
    pub metrics: Arc<InstanceMetrics>,
}

/// Targets of one priority, with their balancer state.
#[derive(Debug)]
struct PriorityGroup {
    /// Indices into [`RouteTable::targets`].
    members: Vec<usize>,
    round_robin: SmoothWeighted,
    ring: Option<HashRing>,
}

/// A route: its targets and how to choose among them.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    /// The route's first model name: the name every alias of the route is served and billed as when neither
    /// the instance nor the answer names a model.
    pub model: Arc<str>,
    pub paths: Vec<String>,
    pub targets: Vec<RouteTarget>,
    pub failover: FailoverConfig,
    /// The route's metric series.
    pub metrics: Arc<RouteMetrics>,
    hash_on: Option<HashOn>,
    groups: Vec<PriorityGroup>,
}

/// What a request offers for consistent hashing.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashKeys<'a> {
    pub consumer: Option<&'a str>,
    pub header: Option<&'a [u8]>,
}

impl RouteTable {
    /// The targets to try for one request, in order (indices into `targets`).
    pub fn plan(&self, keys: HashKeys<'_>, now: Instant) -> Vec<usize> {
        let mut plan = Vec::with_capacity(self.targets.len().min(self.failover.max_attempts));
        let usable = |i: usize| self.targets[i].weight > 0 && self.targets[i].health.is_available(now);
        for group in &self.groups {
            let eligible = |m: usize| usable(group.members[m]);
            let key = match &self.hash_on {
                Some(HashOn::Consumer) => keys.consumer.map(str::as_bytes),
                Some(HashOn::Header(_)) => keys.header,
                None => None,
            };
            let first = match (&group.ring, key) {
                (Some(ring), Some(key)) => ring.pick(key, eligible),
                _ => group.round_robin.pick(eligible),
            };
            let Some(first) = first else { continue };
            plan.push(group.members[first]);
            let mut rest: Vec<usize> = group
                .members
                .iter()
                .copied()
                .filter(|&i| i != group.members[first] && usable(i))
                .collect();
            rest.sort_by_key(|&i| std::cmp::Reverse(self.targets[i].weight));
            plan.extend(rest);
        }
        if plan.is_empty() {
            let least_recently_failed = (0..self.targets.len())
                .filter(|&i| self.targets[i].weight > 0)
                .min_by_key(|&i| self.targets[i].health.last_failure());
            plan.extend(least_recently_failed);
        }
        plan.truncate(self.failover.max_attempts);
        plan
    }

    /// The header consistent hashing reads, if any.
    pub fn hash_header(&self) -> Option<&str> {
        match &self.hash_on {
            Some(HashOn::Header(name)) => Some(name),
            _ => None,
        }
    }
}

/// All routes by model name.
#[derive(Debug, Default)]
pub struct Router {
    by_model: HashMap<String, Arc<RouteTable>>,
    models: Vec<String>,
}

impl Router {
    /// `health[i]` is the health of `config.instances[i]`, shared with the prober.
    pub fn new(config: &Config, health: &[Arc<InstanceHealth>]) -> Self {
        let instances: Vec<Arc<Instance>> = config.instances.iter().cloned().map(Arc::new).collect();
        let instance_metrics: Vec<Arc<InstanceMetrics>> = config
            .instances
            .iter()
            .map(|i| Arc::new(InstanceMetrics::new(&i.name)))
            .collect();
        let mut by_model = HashMap::new();
        let mut models = Vec::new();
        for route in &config.routes {
            let targets: Vec<RouteTarget> = route
                .targets
                .iter()
                .filter_map(|t| {
                    Some(RouteTarget {
                        instance: instances.get(t.instance)?.clone(),
                        health: health.get(t.instance)?.clone(),
                        weight: t.weight,
                        path: t.path.clone(),
                        metrics: instance_metrics.get(t.instance)?.clone(),
                    })
                })
                .collect();
            let mut priorities: Vec<i32> = route.targets.iter().map(|t| t.priority).collect();
            priorities.dedup();
            let groups = priorities
                .into_iter()
                .map(|priority| {
                    let members: Vec<usize> = (0..targets.len())
                        .filter(|&i| route.targets[i].priority == priority)
                        .collect();
                    let weights: Vec<u32> = members.iter().map(|&i| targets[i].weight).collect();
                    let ring = matches!(route.balancer, Balancer::ConsistentHash(_)).then(|| {
                        let named: Vec<(&str, u32)> = members
                            .iter()
                            .map(|&i| (targets[i].instance.name.as_str(), targets[i].weight))
                            .collect();
                        HashRing::new(&named)
                    });
                    PriorityGroup {
                        round_robin: SmoothWeighted::new(&weights),
                        ring,
                        members,
                    }
                })
                .collect();
            let hash_on = match &route.balancer {
                Balancer::ConsistentHash(on) => Some(on.clone()),
                Balancer::WeightedRoundRobin => None,
            };
            let name: Arc<str> = Arc::from(route.name.as_str());
            let table = Arc::new(RouteTable {
                metrics: Arc::new(RouteMetrics::new(name.clone())),
                name,
                model: Arc::from(route.models.first().map_or(route.name.as_str(), String::as_str)),
                paths: route.paths.clone(),
                targets,
                failover: route.failover.clone(),
                hash_on,
                groups,
            });
            for model in &route.models {
                by_model.insert(model.clone(), table.clone());
                models.push(model.clone());
            }
        }
        models.sort_unstable();
        Self { by_model, models }
    }

    /// The route serving `model` on `path`, if any.
    pub fn route(&self, path: &str, model: &str) -> Option<&Arc<RouteTable>> {
        self.by_model
            .get(model)
            .filter(|r| r.paths.iter().any(|p| p == path))
    }

    /// Every model name a client may ask for, sorted.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

/// One [`InstanceHealth`] per configured instance, in configuration order.
pub fn health_of(config: &Config) -> Vec<Arc<InstanceHealth>> {
    config
        .instances
        .iter()
        .map(|i| {
            Arc::new(InstanceHealth::new(
                &i.name,
                i.circuit_breaker,
                i.health_check.as_ref(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ENDPOINT: &str = "/v1/chat/completions";

    fn router(routes: &str) -> Router {
        let text = format!(
            r#"
            [meter]
            url = "http://127.0.0.1:8081"
            [kafka]
            brokers = "127.0.0.1:9092"
            [[instances]]
            name = "local"
            endpoint = "http://10.0.0.1:8000/v1"
            circuit_breaker = {{ failures = 1, cooldown = "10s" }}
            [[instances]]
            name = "local-2"
            endpoint = "http://10.0.0.2:8000/v1"
            [[instances]]
            name = "cloud"
            endpoint = "https://api.example.com/v1"
            {routes}
            "#
        );
        let config = Config::from_toml(&text).unwrap();
        Router::new(&config, &health_of(&config))
    }

    fn names(route: &RouteTable, plan: &[usize]) -> Vec<String> {
        plan.iter()
            .map(|&i| route.targets[i].instance.name.clone())
            .collect()
    }

    #[test]
    fn aliases_share_one_route_on_its_paths_only() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["gpt-4o", "chat-default"]
            paths = ["/v1/chat/completions"]
            targets = [{ instance = "cloud" }]
            [[routes]]
            name = "embed"
            models = ["text-embedding-3-small"]
            targets = [{ instance = "cloud" }]"#,
        );
        assert!(Arc::ptr_eq(
            r.route(ENDPOINT, "gpt-4o").unwrap(),
            r.route(ENDPOINT, "chat-default").unwrap()
        ));
        assert!(r.route(ENDPOINT, "gpt-4").is_none());
        assert!(
            r.route("/v1/embeddings", "gpt-4o").is_none(),
            "a route serves only its paths"
        );
        assert!(
            r.route("/v1/embeddings", "text-embedding-3-small").is_some(),
            "by default, every endpoint"
        );
        assert!(r.route("/v1/completions", "text-embedding-3-small").is_some());
        assert_eq!(r.models(), ["chat-default", "gpt-4o", "text-embedding-3-small"]);
    }

    #[test]
    fn higher_priority_first_then_the_same_priority_then_lower() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["m"]
            targets = [{ instance = "cloud" }, { instance = "local", priority = 10 }, { instance = "local-2", priority = 10, weight = 3 }]"#,
        );
        let route = r.route(ENDPOINT, "m").unwrap();
        let plan = route.plan(HashKeys::default(), Instant::now());
        assert_eq!(names(route, &plan), ["local-2", "local", "cloud"]);
    }

    #[test]
    fn an_open_instance_leaves_the_plan_and_lower_priorities_take_over() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["m"]
            targets = [{ instance = "local", priority = 10 }, { instance = "cloud" }]"#,
        );
        let route = r.route(ENDPOINT, "m").unwrap();
        let now = Instant::now();
        route.targets[0].health.record_failure(now, None);
        assert_eq!(names(route, &route.plan(HashKeys::default(), now)), ["cloud"]);
        // After the cooldown the preferred instance is back first (as a trial).
        let later = now + Duration::from_secs(10);
        assert_eq!(
            names(route, &route.plan(HashKeys::default(), later)),
            ["local", "cloud"]
        );
    }

    #[test]
    fn when_everything_is_down_the_least_recently_failed_is_still_tried() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["m"]
            targets = [{ instance = "local" }, { instance = "cloud" }]"#,
        );
        let route = r.route(ENDPOINT, "m").unwrap();
        let t = Instant::now();
        route.targets[1]
            .health
            .record_failure(t, Some(Duration::from_secs(60)));
        route.targets[0]
            .health
            .record_failure(t + Duration::from_millis(5), None);
        assert_eq!(
            names(
                route,
                &route.plan(HashKeys::default(), t + Duration::from_millis(6))
            ),
            ["cloud"]
        );
    }

    #[test]
    fn max_attempts_cuts_the_plan() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["m"]
            targets = [{ instance = "local" }, { instance = "local-2" }, { instance = "cloud" }]
            failover = { max_attempts = 2 }"#,
        );
        let route = r.route(ENDPOINT, "m").unwrap();
        assert_eq!(route.plan(HashKeys::default(), Instant::now()).len(), 2);
    }

    #[test]
    fn consistent_hashing_keeps_a_consumer_on_one_instance() {
        let r = router(
            r#"[[routes]]
            name = "chat"
            models = ["m"]
            targets = [{ instance = "local" }, { instance = "local-2" }, { instance = "cloud" }]
            balancer = "consistent_hash"
            hash_on = "consumer""#,
        );
        let route = r.route(ENDPOINT, "m").unwrap();
        let now = Instant::now();
        for consumer in ["team-a", "team-b", "team-c", "team-d"] {
            let keys = HashKeys {
                consumer: Some(consumer),
                header: None,
            };
            let first = route.plan(keys, now)[0];
            assert!((0..20).all(|_| route.plan(keys, now)[0] == first), "{consumer}");
        }
    }
}

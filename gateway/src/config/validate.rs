//! Validation: [`RawConfig`] into [`Config`], reporting every problem at once with its path
//! (`instances[1].endpoint: …`) so that an operator fixes a file in one round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use tollgate_schemas::quota::{QuotaScope, TokenLimitConfig};
use url::Url;

use super::model::*;
use super::raw::*;
use super::{derived_limit_id, one_line};
use crate::protocol::{Endpoint, Provider};

/// serde_json refuses deeper documents itself.
const MAX_JSON_DEPTH: usize = 128;
/// A body read longer than this is a connection held open, not an upload.
const MAX_BODY_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// The smallest segment accepted: a few events.
const MIN_SPOOL_SEGMENT_BYTES: u64 = 4096;
/// The largest weight of one target: weights are shares, and a bound keeps one change from building huge
/// structures on every replica.
const MAX_WEIGHT: u32 = 10_000;
/// The largest sum of a consistent-hash route's weights: its ring holds 160 points per unit of weight, built on
/// every replica at every change (and at every start, from the config topic).
const MAX_HASH_WEIGHT_TOTAL: u64 = 1_000;

const LIMIT_ID_ONLY_GLOBAL: &str =
    "only [[token_limits]] entries have an id; a consumer's or an instance's limit is named by its owner";

/// Collects problems while validating.
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(one_line(&format!("{path}: {message}")));
    }

    fn duration(&mut self, path: impl fmt::Display, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(path, "must be longer than zero");
                Duration::ZERO
            }
            Err(e) => {
                self.push(
                    path,
                    format!("`{value}` is not a duration like \"250ms\" or \"1h\": {e}"),
                );
                Duration::ZERO
            }
        }
    }

    fn name(&mut self, path: impl fmt::Display, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
        if !ok {
            self.push(
                path,
                format!("`{value}` must be 1–128 characters of [A-Za-z0-9-_.:/]"),
            );
        }
    }
}

impl RawConfig {
    pub(super) fn validate(self, env: &impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let source = std::sync::Arc::new(self.clone());
        let mut p = Problems(Vec::new());
        // Stands in for an invalid URL so validation can go on; never reaches a valid `Config`.
        let placeholder =
            Url::parse("http://invalid.invalid/").map_err(|e| ConfigErrors(vec![e.to_string()]))?;

        let listen = self.server.listen.parse().unwrap_or_else(|e| {
            p.push(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080: {e}",
                    self.server.listen
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        p.name("server.instance_id", &self.server.instance_id);
        if self.server.workers == 0 {
            p.push("server.workers", "must be at least 1");
        }
        if self.server.max_request_bytes == 0 {
            p.push("server.max_request_bytes", "must be at least 1");
        }
        if self.server.max_response_bytes == 0 {
            p.push("server.max_response_bytes", "must be at least 1");
        }
        if !(1..=MAX_JSON_DEPTH).contains(&self.server.max_json_depth) {
            p.push(
                "server.max_json_depth",
                format!("must be from 1 to {MAX_JSON_DEPTH} (the JSON parser's own recursion limit)"),
            );
        }
        if self.server.max_json_values < 16 {
            p.push("server.max_json_values", "must be at least 16");
        }
        if self.server.max_inflight_requests == 0 {
            p.push("server.max_inflight_requests", "must be at least 1");
        }
        if self.server.max_inflight_bytes < self.server.max_request_bytes {
            p.push(
                "server.max_inflight_bytes",
                format!(
                    "must be at least server.max_request_bytes ({}): one largest body must fit",
                    self.server.max_request_bytes
                ),
            );
        }
        let body_read_timeout = p.duration("server.body_read_timeout", &self.server.body_read_timeout);
        if body_read_timeout > MAX_BODY_READ_TIMEOUT {
            p.push(
                "server.body_read_timeout",
                format!("must be at most {}s", MAX_BODY_READ_TIMEOUT.as_secs()),
            );
        }
        let metrics_listen =
            self.server
                .metrics_listen
                .as_deref()
                .and_then(|raw| match raw.parse::<SocketAddr>() {
                    Ok(addr) if addr == listen && addr.port() != 0 => {
                        p.push(
                            "server.metrics_listen",
                            format!("`{raw}` is server.listen's address: give the metrics their own"),
                        );
                        None
                    }
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        p.push(
                            "server.metrics_listen",
                            format!("`{raw}` is not an address like 127.0.0.1:9464: {e}"),
                        );
                        None
                    }
                });
        let server = ServerConfig {
            listen,
            instance_id: self.server.instance_id,
            workers: self.server.workers,
            max_request_bytes: self.server.max_request_bytes,
            max_response_bytes: self.server.max_response_bytes,
            body_read_timeout,
            max_json_depth: self.server.max_json_depth,
            max_json_values: self.server.max_json_values,
            max_inflight_requests: self.server.max_inflight_requests,
            max_inflight_bytes: self.server.max_inflight_bytes,
            shutdown_timeout: p.duration("server.shutdown_timeout", &self.server.shutdown_timeout),
            stream_idle_timeout: p.duration("server.stream_idle_timeout", &self.server.stream_idle_timeout),
            send_timeout: p.duration("server.send_timeout", &self.server.send_timeout),
            drain_timeout: p.duration("server.drain_timeout", &self.server.drain_timeout),
            max_retry_after: p.duration("server.max_retry_after", &self.server.max_retry_after),
            metering: self.server.metering,
            metrics_listen,
        };

        let meter = MeterConfig {
            url: http_url(&mut p, "meter.url", &self.meter.url, &placeholder),
            timeout: p.duration("meter.timeout", &self.meter.timeout),
        };

        if self.kafka.brokers.trim().is_empty() {
            p.push(
                "kafka.brokers",
                "must name at least one broker, e.g. \"127.0.0.1:9092\"",
            );
        }
        if self.kafka.usage_topic.trim().is_empty() {
            p.push("kafka.usage_topic", "must not be empty");
        }
        if self.kafka.queue_capacity == 0 || self.kafka.queue_capacity > MAX_QUEUE_CAPACITY {
            p.push("kafka.queue_capacity", format!("must be 1–{MAX_QUEUE_CAPACITY}"));
        }
        for (key, value) in &self.kafka.properties {
            if let Some(problem) = weakens_delivery(key, value) {
                p.push(format!("kafka.properties.\"{key}\""), problem);
            }
        }
        let kafka = KafkaConfig {
            brokers: self.kafka.brokers,
            usage_topic: self.kafka.usage_topic,
            queue_capacity: self.kafka.queue_capacity,
            message_timeout: p.duration("kafka.message_timeout", &self.kafka.message_timeout),
            properties: self.kafka.properties,
        };

        let mut secrets = BTreeMap::new();
        let mut instance_index = HashMap::new();
        let mut instances = Vec::with_capacity(self.instances.len());
        let mut instance_limits = Vec::new();
        for (i, raw) in self.instances.into_iter().enumerate() {
            let path = format!("instances[{i}]");
            p.name(format!("{path}.name"), &raw.name);
            if instance_index.insert(raw.name.clone(), i).is_some() {
                p.push(format!("{path}.name"), format!("`{}` is defined twice", raw.name));
            }
            let api_key = raw.api_key_env.as_deref().and_then(|var| match env(var) {
                Some(value) if !value.is_empty() => {
                    let secret = Secret::new(value);
                    secrets.insert(var.to_owned(), secret.clone());
                    Some(secret)
                }
                _ => {
                    p.push(
                        format!("{path}.api_key_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            });
            if raw.model.as_deref() == Some("") {
                p.push(
                    format!("{path}.model"),
                    "must not be empty (leave it out to keep the client's model)",
                );
            }
            if raw.circuit_breaker.failures == 0 {
                p.push(format!("{path}.circuit_breaker.failures"), "must be at least 1");
            }
            let circuit_breaker = BreakerConfig {
                failures: raw.circuit_breaker.failures,
                cooldown: p.duration(
                    format!("{path}.circuit_breaker.cooldown"),
                    &raw.circuit_breaker.cooldown,
                ),
            };
            let health_check = raw.health_check.map(|h| validate_health_check(&mut p, &path, h));
            if let Some(limit) = raw.token_limit {
                if limit.id.is_some() {
                    p.push(format!("{path}.token_limit.id"), LIMIT_ID_ONLY_GLOBAL);
                }
                instance_limits.push((i, limit));
            }
            instances.push(Instance {
                circuit_breaker,
                health_check,
                endpoint: http_url(&mut p, format!("{path}.endpoint"), &raw.endpoint, &placeholder),
                connect_timeout: p.duration(format!("{path}.connect_timeout"), &raw.connect_timeout),
                timeout: p.duration(format!("{path}.timeout"), &raw.timeout),
                name: raw.name,
                provider: raw.provider,
                model: raw.model,
                api_key,
                token_limit: None,
            });
        }

        let mut route_names = HashSet::new();
        let mut model_owner: HashMap<String, String> = HashMap::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, raw) in self.routes.into_iter().enumerate() {
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
            let paths = raw
                .paths
                .unwrap_or_else(|| provider_paths(first_provider.unwrap_or(Provider::Openai)));
            for (j, route_path) in paths.iter().enumerate() {
                let Some(endpoint) = Endpoint::ALL.iter().find(|e| e.path() == route_path) else {
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
                        && instance.provider != endpoint.provider()
                    {
                        p.push(
                            format!("{path}.paths[{j}]"),
                            format!(
                                "`{route_path}` speaks the {} protocol but target `{}` is a {} instance",
                                endpoint.provider().as_str(),
                                instance.name,
                                instance.provider.as_str()
                            ),
                        );
                    }
                }
            }
            let balancer = validate_balancer(&mut p, &path, &raw.balancer, raw.hash_on.as_deref());
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

        let route_names: HashMap<&str, &[String]> = routes
            .iter()
            .map(|route| (route.name.as_str(), route.models.as_slice()))
            .collect();
        let aliases = Aliases {
            owner: &model_owner,
            names: &route_names,
        };
        let mut limits = LimitRules {
            models: &model_owner,
            aliases: &aliases,
            instances: &instance_index,
            keys: HashSet::new(),
        };
        for (i, raw) in instance_limits {
            let name = instances.get(i).map(|instance| instance.name.clone());
            let limit = limits.validate(
                &mut p,
                &format!("instances[{i}].token_limit"),
                None,
                name.as_deref(),
                raw,
            );
            if let Some(instance) = instances.get_mut(i) {
                instance.token_limit = limit;
            }
        }

        let mut consumer_names = HashSet::new();
        let mut key_ids = HashSet::new();
        let mut key_hashes = HashSet::new();
        let mut consumers = Vec::with_capacity(self.consumers.len());
        for (i, raw) in self.consumers.into_iter().enumerate() {
            let path = format!("consumers[{i}]");
            p.name(format!("{path}.name"), &raw.name);
            if !consumer_names.insert(raw.name.clone()) {
                p.push(format!("{path}.name"), format!("`{}` is defined twice", raw.name));
            }
            if raw.keys.is_empty() {
                p.push(format!("{path}.keys"), "must list at least one key");
            }
            let mut keys = Vec::with_capacity(raw.keys.len());
            for (j, key) in raw.keys.into_iter().enumerate() {
                let kpath = format!("{path}.keys[{j}]");
                p.name(format!("{kpath}.id"), &key.id);
                if !key_ids.insert(key.id.clone()) {
                    p.push(format!("{kpath}.id"), format!("`{}` is used twice", key.id));
                }
                let mut sha256 = [0u8; 32];
                if hex::decode_to_slice(key.sha256.to_ascii_lowercase(), &mut sha256).is_err() {
                    p.push(
                        format!("{kpath}.sha256"),
                        "must be the 64-hex-digit SHA-256 of the key (`gateway hash-key` prints it)",
                    );
                } else if !key_hashes.insert(sha256) {
                    p.push(format!("{kpath}.sha256"), "the same key is configured twice");
                }
                let expires_at =
                    key.expires_at
                        .as_deref()
                        .and_then(|at| match chrono::DateTime::parse_from_rfc3339(at) {
                            Ok(at) => Some(at.to_utc()),
                            Err(e) => {
                                p.push(
                                    format!("{kpath}.expires_at"),
                                    format!("`{at}` is not an RFC 3339 time: {e}"),
                                );
                                None
                            }
                        });
                for (m, model) in key.models.iter().flatten().enumerate() {
                    if !model_owner.contains_key(model) {
                        p.push(
                            format!("{kpath}.models[{m}]"),
                            format!("no route serves `{model}`"),
                        );
                    }
                }
                if let Some(models) = &key.models {
                    aliases.check(&mut p, &format!("{kpath}.models"), models);
                }
                keys.push(ConsumerKey {
                    id: key.id,
                    sha256,
                    expires_at,
                    models: key.models,
                });
            }
            let limit_count = raw.limit_count.map(|l| {
                let lpath = format!("{path}.limit_count");
                if l.count == 0 {
                    p.push(format!("{lpath}.count"), "must be at least 1");
                }
                if !(400..=599).contains(&l.rejected_code) {
                    p.push(
                        format!("{lpath}.rejected_code"),
                        format!("{} is not an error status", l.rejected_code),
                    );
                }
                let time_window = p.duration(format!("{lpath}.time_window"), &l.time_window);
                if time_window > tollgate_schemas::quota::MAX_WINDOW {
                    p.push(format!("{lpath}.time_window"), "must be at most 366d");
                }
                LimitCount {
                    count: l.count,
                    time_window,
                    rejected_code: l.rejected_code,
                    rejected_msg: l.rejected_msg,
                }
            });
            for (j, limit) in raw.token_limits.iter().enumerate() {
                if limit.id.is_some() {
                    p.push(format!("{path}.token_limits[{j}].id"), LIMIT_ID_ONLY_GLOBAL);
                }
            }
            let token_limits = raw
                .token_limits
                .into_iter()
                .enumerate()
                .filter_map(|(j, limit)| {
                    limits.validate(
                        &mut p,
                        &format!("{path}.token_limits[{j}]"),
                        Some(&raw.name),
                        None,
                        limit,
                    )
                })
                .collect();
            let class = raw.class.unwrap_or_else(|| "default".to_owned());
            p.name(format!("{path}.class"), &class);
            consumers.push(Consumer {
                class,
                name: raw.name,
                keys,
                limit_count,
                token_limits,
            });
        }
        let mut limit_ids = HashSet::new();
        for (j, limit) in self.token_limits.iter().enumerate() {
            if let Some(id) = &limit.id {
                p.name(format!("token_limits[{j}].id"), id);
                if !limit_ids.insert(id.clone()) {
                    p.push(format!("token_limits[{j}].id"), format!("`{id}` is used twice"));
                }
            }
        }
        let token_limits: Vec<TokenLimit> = self
            .token_limits
            .into_iter()
            .enumerate()
            .filter_map(|(j, limit)| {
                let id = limit.id.clone();
                let mut limit = limits.validate(&mut p, &format!("token_limits[{j}]"), None, None, limit)?;
                limit.id = id.unwrap_or_else(|| derived_limit_id(&limit.key));
                Some(limit)
            })
            .collect();

        if self.quota.topic.trim().is_empty() {
            p.push("quota.topic", "must not be empty");
        }
        let quota = QuotaConfig {
            topic: self.quota.topic,
            reserve_max_tokens: self.quota.reserve_max_tokens,
            max_snapshot_age: p.duration("quota.max_snapshot_age", &self.quota.max_snapshot_age),
            load_timeout: p.duration("quota.load_timeout", &self.quota.load_timeout),
        };
        if quota.load_timeout > Duration::from_secs(600) {
            p.push("quota.load_timeout", "must be at most 10m");
        }

        let limited = !token_limits.is_empty()
            || consumers.iter().any(|c: &Consumer| !c.token_limits.is_empty())
            || instances.iter().any(|i| i.token_limit.is_some());
        if !server.metering && limited {
            p.push(
                "server.metering",
                "token limits are counted from metered usage: remove them, or leave metering on",
            );
        }
        let spool = validate_spool(&mut p, self.spool, kafka.message_timeout);
        let admin = validate_admin(&mut p, self.admin, &key_hashes, &source.instances);

        if p.0.is_empty() {
            Ok(Config {
                server,
                meter,
                kafka,
                instances,
                routes,
                consumers,
                token_limits,
                quota,
                spool,
                admin,
                source,
                secrets,
            })
        } else {
            Err(ConfigErrors(p.0))
        }
    }
}

/// Why a librdkafka property would weaken the usage producer's delivery guarantees (acknowledged by every
/// in-sync replica, idempotent: nothing lost, nothing doubled), if it would.
fn weakens_delivery(key: &str, value: &str) -> Option<String> {
    let value = value.trim();
    match key.trim() {
        "acks" | "request.required.acks" if !matches!(value, "all" | "-1") => Some(format!(
            "`{value}` would let the broker acknowledge usage events before every in-sync replica has them; only \
             \"all\" is allowed"
        )),
        "enable.idempotence" if !value.eq_ignore_ascii_case("true") => Some(
            "usage events are produced idempotently (a retry must not double an event); it cannot be turned off"
                .to_owned(),
        ),
        "enable.gapless.guarantee" | "transactional.id" => Some(format!(
            "`{key}` is not supported for usage events (the broker has no transactions)"
        )),
        _ => None,
    }
}

/// One model, one quota, one price: every name of a route is the same model, so a list of model names (a token
/// limit's, a key's) that names one name of a route must name all of them — otherwise the other names would
/// escape the limit (or the key's restriction).
struct Aliases<'a> {
    /// Model name → the route serving it.
    owner: &'a HashMap<String, String>,
    /// Route name → all its model names.
    names: &'a HashMap<&'a str, &'a [String]>,
}

impl Aliases<'_> {
    fn check(&self, p: &mut Problems, path: &str, listed: &[String]) {
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
struct LimitRules<'a> {
    models: &'a HashMap<String, String>,
    aliases: &'a Aliases<'a>,
    instances: &'a HashMap<String, usize>,
    keys: HashSet<String>,
}

impl LimitRules<'_> {
    /// Validates one token limit set on `consumer` (or globally) and, for an instance's own quota, `instance`.
    fn validate(
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
        })
    }
}

fn served_paths() -> String {
    Endpoint::ALL
        .iter()
        .map(|e| e.path())
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate_balancer(p: &mut Problems, path: &str, balancer: &str, hash_on: Option<&str>) -> Balancer {
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

fn validate_spool(p: &mut Problems, raw: RawSpool, message_timeout: Duration) -> SpoolConfig {
    if raw.dir.trim().is_empty() {
        p.push("spool.dir", "must name a directory");
    }
    if raw.segment_bytes > MAX_SPOOL_SEGMENT_BYTES {
        p.push("spool.segment_bytes", "must be at most 1 GiB");
    }
    if raw.segment_bytes < MIN_SPOOL_SEGMENT_BYTES {
        p.push(
            "spool.segment_bytes",
            format!("must be at least {MIN_SPOOL_SEGMENT_BYTES}"),
        );
    }
    if raw.max_bytes < raw.segment_bytes {
        p.push(
            "spool.max_bytes",
            format!("must be at least spool.segment_bytes ({})", raw.segment_bytes),
        );
    }
    let after = p.duration("spool.after", &raw.after);
    if !message_timeout.is_zero() && after >= message_timeout {
        p.push(
            "spool.after",
            format!(
                "must be shorter than kafka.message_timeout ({}): an event is spooled while librdkafka still \
                 holds it, not after it gave up",
                humantime::format_duration(message_timeout)
            ),
        );
    }
    let on_full = match raw.on_full.as_str() {
        "reject" => OnFull::Reject,
        "serve_unmetered" => OnFull::ServeUnmetered,
        other => {
            p.push(
                "spool.on_full",
                format!("`{other}` is not reject or serve_unmetered"),
            );
            OnFull::Reject
        }
    };
    SpoolConfig {
        dir: PathBuf::from(raw.dir),
        max_bytes: raw.max_bytes,
        segment_bytes: raw.segment_bytes,
        fsync_interval: p.duration("spool.fsync_interval", &raw.fsync_interval),
        after,
        on_full,
    }
}

/// `consumer_hashes`: an admin key must not also be a consumer key.
fn validate_admin(
    p: &mut Problems,
    raw: RawAdmin,
    consumer_hashes: &HashSet<[u8; 32]>,
    instances: &[RawInstance],
) -> AdminConfig {
    let egress = Egress::of_file(&raw, instances);
    let listen = raw.listen.parse().unwrap_or_else(|e| {
        p.push(
            "admin.listen",
            format!("`{}` is not an address like 127.0.0.1:9180: {e}", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    let mut keys = Vec::with_capacity(raw.keys.len());
    for (i, key) in raw.keys.into_iter().enumerate() {
        let path = format!("admin.keys[{i}]");
        p.name(format!("{path}.id"), &key.id);
        if !ids.insert(key.id.clone()) {
            p.push(format!("{path}.id"), format!("`{}` is used twice", key.id));
        }
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(key.sha256.to_ascii_lowercase(), &mut sha256).is_err() {
            p.push(
                format!("{path}.sha256"),
                "must be the 64-hex-digit SHA-256 of the key (`gateway hash-key` prints it)",
            );
        } else if !hashes.insert(sha256) {
            p.push(format!("{path}.sha256"), "the same key is configured twice");
        } else if consumer_hashes.contains(&sha256) {
            p.push(
                format!("{path}.sha256"),
                "is also a consumer key; use a key of its own",
            );
        }
        let role = match key.role.as_str() {
            "admin" => AdminRole::Admin,
            "viewer" => AdminRole::Viewer,
            other => {
                p.push(
                    format!("{path}.role"),
                    format!("`{other}` is not admin or viewer"),
                );
                AdminRole::Viewer
            }
        };
        keys.push(AdminKey {
            id: key.id,
            sha256,
            role,
        });
    }
    let allow = cidrs(p, "admin.allow", &raw.allow);
    if raw.allow.is_empty() {
        p.push(
            "admin.allow",
            "must list at least one CIDR (default: loopback only)",
        );
    }
    for (i, net) in raw.allow.iter().enumerate() {
        if let Ok(net) = net.parse::<IpNet>()
            && net.prefix_len() == 0
            && !raw.allow_any
        {
            p.push(
                format!("admin.allow[{i}]"),
                format!("`{net}` admits every address; set admin.allow_any = true to mean it"),
            );
        }
    }
    for (i, net) in raw.trusted_proxies.iter().enumerate() {
        if let Ok(net) = net.parse::<IpNet>()
            && net.prefix_len() == 0
        {
            p.push(
                format!("admin.trusted_proxies[{i}]"),
                format!(
                    "`{net}` would trust every peer's X-Forwarded-For, so any client could claim an allowed \
                     address; list the proxies' own addresses"
                ),
            );
        }
    }
    if raw.config_topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.push(
            "admin.config_topic",
            "must name a topic (leave it out to run standalone)",
        );
    }
    let config_load_timeout = p.duration("admin.config_load_timeout", &raw.config_load_timeout);
    if config_load_timeout > Duration::from_secs(600) {
        p.push("admin.config_load_timeout", "must be at most 10m");
    }
    for (i, var) in raw.provider_key_envs.iter().enumerate() {
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            p.push(
                format!("admin.provider_key_envs[{i}]"),
                format!("`{var}` is not an environment variable name"),
            );
        }
    }
    if raw
        .provider_key_env_prefix
        .as_deref()
        .is_some_and(|prefix| prefix.len() < 4)
    {
        p.push(
            "admin.provider_key_env_prefix",
            "must be at least 4 characters (a short prefix such as `C` would allow CLICKHOUSE_PASSWORD)",
        );
    }
    for (i, net) in cidrs(p, "admin.private_endpoints", &raw.private_endpoints)
        .iter()
        .enumerate()
    {
        if net.prefix_len() == 0 {
            p.push(
                format!("admin.private_endpoints[{i}]"),
                format!("`{net}` allows every address; list the internal ranges providers run on"),
            );
        }
    }
    AdminConfig {
        config_topic: raw.config_topic,
        config_load_timeout,
        egress,
        listen,
        keys,
        allow,
        trusted_proxies: cidrs(p, "admin.trusted_proxies", &raw.trusted_proxies),
    }
}

fn cidrs(p: &mut Problems, path: &str, values: &[String]) -> Vec<IpNet> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| match value.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                p.push(
                    format!("{path}[{i}]"),
                    format!("`{value}` has host bits set; did you mean {}?", net.trunc()),
                );
                None
            }
            Err(e) => {
                p.push(
                    format!("{path}[{i}]"),
                    format!("`{value}` is not a CIDR like 10.0.0.0/8 or ::1/128: {e}"),
                );
                None
            }
        })
        .collect()
}

/// Attempts per request, failovers included: each may hold an upstream connection and a reservation.
const MAX_ATTEMPTS: usize = 10;
/// Events the usage producer may queue in memory (rdkafka's own ceiling is 10 million messages).
const MAX_QUEUE_CAPACITY: usize = 10_000_000;
/// A spool segment is read back whole-record at a time; beyond this it only delays sealing and fsync.
const MAX_SPOOL_SEGMENT_BYTES: u64 = 1 << 30;

/// The APIs a POST probe may call: one small generation, as a client would send it.
const PROBE_POST_PATHS: [&str; 5] = [
    "chat/completions",
    "completions",
    "embeddings",
    "messages",
    "responses",
];

fn validate_health_check(p: &mut Problems, instance_path: &str, raw: RawHealthCheck) -> HealthCheck {
    let path = format!("{instance_path}.health_check");
    // A probe is a request the gateway sends with the instance's provider key, every few seconds, from inside
    // the operator's network: it may read a health path or send one small generation, nothing else (no query
    // strings, no SQL posted to an internal HTTP interface).
    let path_ok = !raw.path.is_empty()
        && raw.path.len() <= 256
        && raw
            .path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/'))
        && !raw.path.split('/').any(|segment| segment == "..");
    if !path_ok {
        p.push(
            format!("{path}.path"),
            "must be 1–256 characters of [A-Za-z0-9-._~/], without a query or `..`",
        );
    }
    match raw.method {
        HealthMethod::Get => {
            if raw.body.is_some() {
                p.push(format!("{path}.body"), "is sent only with POST");
            }
        }
        HealthMethod::Post => {
            if !PROBE_POST_PATHS
                .iter()
                .any(|api| raw.path.trim_end_matches('/').ends_with(api))
            {
                p.push(
                    format!("{path}.path"),
                    format!(
                        "a POST probe must call a generation API ({})",
                        PROBE_POST_PATHS.join(", ")
                    ),
                );
            }
            match raw.body.as_deref().map(serde_json::from_str::<serde_json::Value>) {
                Some(Ok(serde_json::Value::Object(_)))
                    if raw.body.as_ref().is_some_and(|b| b.len() <= 4096) => {}
                Some(Ok(serde_json::Value::Object(_))) => {
                    p.push(format!("{path}.body"), "must be at most 4096 bytes");
                }
                _ => p.push(
                    format!("{path}.body"),
                    "must be a JSON object (a POST probe needs a body)",
                ),
            }
        }
    }
    if raw.expected_statuses.is_empty() {
        p.push(
            format!("{path}.expected_statuses"),
            "must list at least one status",
        );
    }
    for (field, value) in [
        ("healthy_threshold", raw.healthy_threshold),
        ("unhealthy_threshold", raw.unhealthy_threshold),
    ] {
        if value == 0 {
            p.push(format!("{path}.{field}"), "must be at least 1");
        }
    }
    let interval = p.duration(format!("{path}.interval"), &raw.interval);
    if !interval.is_zero() && !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        p.push(format!("{path}.interval"), "must be between 100ms and 1h");
    }
    let timeout = p.duration(format!("{path}.timeout"), &raw.timeout);
    if timeout > Duration::from_secs(60) {
        p.push(format!("{path}.timeout"), "must be at most 60s");
    }
    HealthCheck {
        method: raw.method,
        interval,
        timeout,
        path: raw.path,
        body: raw.body,
        expected_statuses: raw.expected_statuses,
        healthy_threshold: raw.healthy_threshold,
        unhealthy_threshold: raw.unhealthy_threshold,
    }
}

fn http_url(p: &mut Problems, path: impl fmt::Display, value: &str, placeholder: &Url) -> Url {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Ok(_) => {
            p.push(path, format!("`{value}` must be an http:// or https:// URL"));
            placeholder.clone()
        }
        Err(e) => {
            p.push(path, format!("`{value}` is not a URL: {e}"));
            placeholder.clone()
        }
    }
}

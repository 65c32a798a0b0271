//! The read-only admin resources under `/admin/v1`: instances, routes, consumers and limits, as JSON that
//! mirrors the TOML they were configured with. Consumer keys are listed by id, expiry and models — never
//! their hashes. An unknown name is an OpenAI-shaped 404.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::admin::error::AdminError;
use crate::config::{Balancer, Config, Consumer, HashOn, Instance, LimitCount, Route, TokenLimit};

/// `GET /admin/v1/instances`
pub async fn instances(config: web::Data<Config>) -> HttpResponse {
    list(config.instances.iter().map(instance))
}

/// `GET /admin/v1/instances/{name}`
pub async fn one_instance(
    config: web::Data<Config>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    one("instance", name.into_inner(), |n| {
        config.instances.iter().find(|i| i.name == n).map(instance)
    })
}

/// `GET /admin/v1/routes`
pub async fn routes(config: web::Data<Config>) -> HttpResponse {
    list(config.routes.iter().map(|r| route(&config, r)))
}

/// `GET /admin/v1/routes/{name}`
pub async fn one_route(
    config: web::Data<Config>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    one("route", name.into_inner(), |n| {
        config
            .routes
            .iter()
            .find(|r| r.name == n)
            .map(|r| route(&config, r))
    })
}

/// `GET /admin/v1/consumers`
pub async fn consumers(config: web::Data<Config>) -> HttpResponse {
    list(config.consumers.iter().map(consumer))
}

/// `GET /admin/v1/consumers/{name}`
pub async fn one_consumer(
    config: web::Data<Config>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    one("consumer", name.into_inner(), |n| {
        config.consumers.iter().find(|c| c.name == n).map(consumer)
    })
}

/// `GET /admin/v1/limits`: request and token limits per consumer, global token limits, instance token limits.
pub async fn limits(config: web::Data<Config>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "consumers": config.consumers.iter().map(|c| json!({
            "name": c.name,
            "limit_count": c.limit_count.as_ref().map(limit_count),
            "token_limits": c.token_limits.iter().map(token_limit).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "token_limits": config.token_limits.iter().map(token_limit).collect::<Vec<_>>(),
        "instances": config.instances.iter().filter_map(|i| i.token_limit.as_ref().map(|l| json!({
            "name": i.name,
            "token_limit": token_limit(l),
        }))).collect::<Vec<_>>(),
    }))
}

fn list(items: impl Iterator<Item = Value>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "data": items.collect::<Vec<_>>() }))
}

fn one(
    kind: &'static str,
    name: String,
    find: impl FnOnce(&str) -> Option<Value>,
) -> Result<HttpResponse, AdminError> {
    match find(&name) {
        Some(item) => Ok(HttpResponse::Ok().json(item)),
        None => Err(AdminError::NotFound { kind, name }),
    }
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn instance(i: &Instance) -> Value {
    json!({
        "name": i.name,
        "provider": i.provider.as_str(),
        "endpoint": i.endpoint.as_str(),
        "model": i.model,
        // The provider key itself never leaves the process; only whether one is configured.
        "api_key_configured": i.api_key.is_some(),
        "connect_timeout": duration(i.connect_timeout),
        "timeout": duration(i.timeout),
        "circuit_breaker": {
            "failures": i.circuit_breaker.failures,
            "cooldown": duration(i.circuit_breaker.cooldown),
        },
        "health_check": i.health_check.as_ref().map(|h| json!({
            "method": match h.method {
                crate::config::HealthMethod::Get => "GET",
                crate::config::HealthMethod::Post => "POST",
            },
            "path": h.path,
            "body": h.body,
            "expected_statuses": h.expected_statuses,
            "interval": duration(h.interval),
            "timeout": duration(h.timeout),
            "healthy_threshold": h.healthy_threshold,
            "unhealthy_threshold": h.unhealthy_threshold,
        })),
        "token_limit": i.token_limit.as_ref().map(token_limit),
    })
}

fn route(config: &Config, r: &Route) -> Value {
    let (balancer, hash_on) = match &r.balancer {
        Balancer::WeightedRoundRobin => ("weighted_round_robin", None),
        Balancer::ConsistentHash(HashOn::Consumer) => ("consistent_hash", Some("consumer".to_owned())),
        Balancer::ConsistentHash(HashOn::Header(name)) => ("consistent_hash", Some(format!("header:{name}"))),
    };
    json!({
        "name": r.name,
        "models": r.models,
        "paths": r.paths,
        "targets": r.targets.iter().map(|t| json!({
            "instance": config.instances.get(t.instance).map(|i| i.name.as_str()),
            "priority": t.priority,
            "weight": t.weight,
            "path": t.path,
        })).collect::<Vec<_>>(),
        "balancer": balancer,
        "hash_on": hash_on,
        "failover": {
            "max_attempts": r.failover.max_attempts,
            "deadline": duration(r.failover.deadline),
            "retry_on_status": r.failover.retry_on_status,
        },
    })
}

fn consumer(c: &Consumer) -> Value {
    json!({
        "name": c.name,
        // Id, expiry and models only: a key's hash is never shown.
        "keys": c.keys.iter().map(|k| json!({
            "id": k.id,
            "expires_at": k.expires_at.map(|at| at.to_rfc3339()),
            "models": k.models,
        })).collect::<Vec<_>>(),
        "limit_count": c.limit_count.as_ref().map(limit_count),
        "token_limits": c.token_limits.iter().map(token_limit).collect::<Vec<_>>(),
    })
}

fn limit_count(l: &LimitCount) -> Value {
    json!({
        "count": l.count,
        "time_window": duration(l.time_window),
        "rejected_code": l.rejected_code,
        "rejected_msg": l.rejected_msg,
    })
}

fn token_limit(l: &TokenLimit) -> Value {
    json!({
        "models": l.scope.models,
        "instance": l.scope.instance,
        "limit": l.limit,
        "time_window": duration(std::time::Duration::from_millis(l.scope.window_ms)),
        "limit_strategy": l.scope.strategy.as_str(),
        "rejected_code": l.rejected_code,
        "rejected_msg": l.rejected_msg,
        "rejected_type": l.rejected_type,
    })
}

//! `[[instances]]`: provider endpoints, their secrets (read from the environment), circuit breakers and probes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tollgate_schemas::quota::TokenLimitConfig;
use url::Url;

use super::{LIMIT_ID_ONLY_GLOBAL, Problems, http_url};
use crate::config::model::*;
use crate::config::raw::*;
use crate::protocol::Provider;

/// The instances, and what later sections look up in them.
pub(super) struct Instances {
    pub list: Vec<Instance>,
    /// Instance name → its index in `list`.
    pub index: HashMap<String, usize>,
    /// Environment variable → the provider key read from it.
    pub secrets: BTreeMap<String, Secret>,
    /// Each instance's own token limit, validated once routes are known.
    pub limits: Vec<(usize, TokenLimitConfig)>,
}

/// The APIs a POST probe may call: one small generation, as a client would send it.
const PROBE_POST_PATHS: [&str; 5] = [
    "chat/completions",
    "completions",
    "embeddings",
    "messages",
    "responses",
];

pub(super) fn instances(
    p: &mut Problems,
    raw_instances: Vec<RawInstance>,
    env: &impl Fn(&str) -> Option<String>,
    placeholder: &Url,
) -> Instances {
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    let mut instance_index = HashMap::new();
    let mut instances = Vec::with_capacity(raw_instances.len());
    let mut instance_limits = Vec::new();
    for (i, raw) in raw_instances.into_iter().enumerate() {
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
        let health_check = raw.health_check.map(|h| validate_health_check(p, &path, h));
        if let Some(limit) = raw.token_limit {
            if limit.id.is_some() {
                p.push(format!("{path}.token_limit.id"), LIMIT_ID_ONLY_GLOBAL);
            }
            instance_limits.push((i, limit));
        }
        let azure = azure(p, &path, raw.provider, raw.api_version, raw.deployments);
        if raw.default_max_tokens == 0 {
            p.push(format!("{path}.default_max_tokens"), "must be at least 1");
        }
        instances.push(Instance {
            default_max_tokens: raw.default_max_tokens,
            azure,
            circuit_breaker,
            health_check,
            endpoint: http_url(p, format!("{path}.endpoint"), &raw.endpoint, placeholder),
            connect_timeout: p.duration(format!("{path}.connect_timeout"), &raw.connect_timeout),
            timeout: p.duration(format!("{path}.timeout"), &raw.timeout),
            name: raw.name,
            provider: raw.provider,
            model: raw.model,
            api_key,
            token_limit: None,
        });
    }
    Instances {
        list: instances,
        index: instance_index,
        secrets,
        limits: instance_limits,
    }
}

/// Azure OpenAI's addressing: required for `provider = "azure_openai"` (an `api_version`; `deployments` may map
/// models to deployments of other names), refused for every other provider. Both end up in the URL, so they are
/// checked to be plain: an API version of lowercase letters, digits, `-` and `.`; deployment names of letters,
/// digits, `-`, `_` and `.`.
fn azure(
    p: &mut Problems,
    path: &str,
    provider: Provider,
    api_version: Option<String>,
    deployments: BTreeMap<String, String>,
) -> Option<AzureDeployments> {
    if provider != Provider::AzureOpenai {
        if api_version.is_some() {
            p.push(
                format!("{path}.api_version"),
                "only an `azure_openai` instance has an API version",
            );
        }
        if !deployments.is_empty() {
            p.push(
                format!("{path}.deployments"),
                "only an `azure_openai` instance has deployments",
            );
        }
        return None;
    }
    let plain = |s: &str, extra: &[char]| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    let api_version = match api_version {
        Some(v) if plain(&v, &['-', '.']) && !v.chars().any(|c| c.is_ascii_uppercase()) => v,
        Some(v) => {
            p.push(
                format!("{path}.api_version"),
                format!("`{v}` is not an API version such as \"2024-10-21\""),
            );
            v
        }
        None => {
            p.push(
                format!("{path}.api_version"),
                "is required for an `azure_openai` instance, e.g. \"2024-10-21\"",
            );
            String::new()
        }
    };
    for (model, deployment) in &deployments {
        if model.is_empty() {
            p.push(format!("{path}.deployments"), "a model name must not be empty");
        }
        if !plain(deployment, &['-', '_', '.']) {
            p.push(
                format!("{path}.deployments.\"{model}\""),
                format!("`{deployment}` is not a deployment name (letters, digits, `-`, `_`, `.`)"),
            );
        }
    }
    Some(AzureDeployments {
        api_version,
        deployments,
    })
}

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

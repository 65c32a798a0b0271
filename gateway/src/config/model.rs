//! The validated configuration: what the rest of the gateway sees. Built only by [`super::validate`], so every
//! value here has been checked (addresses parse, durations are positive, names are unique, secrets are present).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tollgate_schemas::budget::OnExceed;
use tollgate_schemas::pricing::PriceTable;
use tollgate_schemas::quota::QuotaScope;
use url::Url;

use super::raw::{RawAdmin, RawConfig, RawInstance};
use crate::protocol::Provider;

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub meter: MeterConfig,
    pub billing: BillingConfig,
    pub kafka: KafkaConfig,
    pub instances: Vec<Instance>,
    pub routes: Vec<Route>,
    pub teams: Vec<Team>,
    pub consumers: Vec<Consumer>,
    /// Token limits not tied to one consumer: per model (global) or over everything (`[[token_limits]]`).
    pub token_limits: Vec<TokenLimit>,
    pub quota: QuotaConfig,
    /// The prices budgets reserve and settle at: the `[billing] prices` file's, plus the admin API's price
    /// versions when the configuration is live.
    pub prices: std::sync::Arc<PriceTable>,
    pub spool: SpoolConfig,
    /// The admin listener (`[admin]`); it starts only when at least one admin key is configured.
    pub admin: AdminConfig,
    /// The file as parsed: the live configuration ([`crate::live`]) re-assembles from it, with the instances,
    /// routes, consumers and limits replaced by the admin API's.
    pub source: std::sync::Arc<RawConfig>,
    /// Provider keys read from the environment at load, by variable name: the live configuration reads the same
    /// values when an instance names the same variable.
    pub secrets: BTreeMap<String, Secret>,
}

/// The admin API's listener and who may use it (`[admin]`; see [`crate::admin`]).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address the admin API listens on (default loopback).
    pub listen: SocketAddr,
    /// Admin keys, stored as SHA-256 hashes; none → the admin listener does not start.
    pub keys: Vec<AdminKey>,
    /// Source addresses allowed to reach the admin API.
    pub allow: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The compacted topic admin changes are published to and every replica applies from; `None`: standalone
    /// (the file is the configuration; admin changes apply to this replica only, until it restarts).
    pub config_topic: Option<String>,
    /// How long a start waits for the config topic before serving the configuration it last applied.
    pub config_load_timeout: Duration,
    /// What instances changed through the admin API may reach and read ([`Egress`]).
    pub egress: Egress,
}

/// What an instance may name beyond the file's own instances: an admin key must not be able to send a provider
/// key to any host, read any environment variable (ClickHouse's password, say) as a provider key, or point an
/// instance at an internal service. The file's own instances are trusted as written; a resource of the admin API
/// is judged by [`Egress::check_instance`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// Environment variables an instance may name in `api_key_env`: the ones the file's instances name, plus
    /// `admin.provider_key_envs`.
    pub key_envs: std::collections::BTreeSet<String>,
    /// Any variable with this prefix is allowed too (`admin.provider_key_env_prefix`).
    pub key_env_prefix: Option<String>,
    /// `host:port` of every endpoint the file's instances target: allowed as written, internal or not (the same
    /// host on another port — ClickHouse beside a local model server — is not).
    pub file_hosts: std::collections::BTreeSet<String>,
    /// Loopback, link-local and private ranges instances may target (`admin.private_endpoints`).
    pub private_endpoints: Vec<IpNet>,
}

impl Egress {
    /// The policy of a file: its `[admin]` settings and its own instances (CIDRs that do not parse are left out
    /// here; validation reports them).
    pub fn of_file(admin: &RawAdmin, instances: &[RawInstance]) -> Self {
        Self {
            key_envs: instances
                .iter()
                .filter_map(|i| i.api_key_env.clone())
                .chain(admin.provider_key_envs.iter().cloned())
                .collect(),
            key_env_prefix: admin.provider_key_env_prefix.clone(),
            file_hosts: instances
                .iter()
                .filter_map(|i| Url::parse(&i.endpoint).ok())
                .filter_map(|url| authority(&url))
                .collect(),
            private_endpoints: admin
                .private_endpoints
                .iter()
                .filter_map(|net| net.parse().ok())
                .filter(|net: &IpNet| net.prefix_len() > 0)
                .collect(),
        }
    }

    /// The problems of an instance's `api_key_env` and `endpoint` under this policy, as (field, message).
    pub fn check_instance(&self, api_key_env: Option<&str>, endpoint: &str) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(var) = api_key_env
            && !self.key_envs.contains(var)
            && !self
                .key_env_prefix
                .as_deref()
                .is_some_and(|prefix| var.starts_with(prefix))
        {
            problems.push((
                "api_key_env",
                format!(
                    "`{var}` is not a provider key variable this gateway allows: list it in admin.provider_key_envs \
                     (or give it admin.provider_key_env_prefix)"
                ),
            ));
        }
        if let Ok(url) = Url::parse(endpoint)
            && let Some(host) = url.host()
        {
            let internal = match host {
                url::Host::Domain(name) => {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    (name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal"))
                        .then_some(None)
                }
                url::Host::Ipv4(ip) => {
                    internal_ip(std::net::IpAddr::V4(ip)).then_some(Some(std::net::IpAddr::V4(ip)))
                }
                url::Host::Ipv6(ip) => {
                    internal_ip(std::net::IpAddr::V6(ip)).then_some(Some(std::net::IpAddr::V6(ip)))
                }
            };
            if let Some(ip) = internal {
                let allowed = authority(&url).is_some_and(|a| self.file_hosts.contains(&a))
                    || ip.is_some_and(|ip| self.private_endpoints.iter().any(|net| net.contains(&ip)));
                if !allowed {
                    problems.push((
                        "endpoint",
                        format!(
                            "`{host}` is a loopback, link-local or private address: instances may target it only \
                             when admin.private_endpoints allows it"
                        ),
                    ));
                }
            }
        }
        problems
    }
}

/// `host:port` of a URL, the scheme's default port when it has none.
fn authority(url: &Url) -> Option<String> {
    Some(format!("{}:{}", url.host()?, url.port_or_known_default()?))
}

/// Loopback, link-local, private (RFC 1918, unique local), unspecified, CGNAT and IPv4-mapped forms of them.
fn internal_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| internal_ip(std::net::IpAddr::V4(v4)))
        }
    }
}

/// One admin key: its public id, the SHA-256 of the key, and what it may do.
#[derive(Debug, Clone)]
pub struct AdminKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub role: AdminRole,
}

/// What an admin key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Read and (once writes exist) change the configuration.
    Admin,
    /// Read only: any method other than GET and HEAD is refused with 403.
    Viewer,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// The durable spool of usage events Kafka has not acknowledged (`[spool]`; see [`crate::events::spool`]).
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The directory of segment files; relative paths are relative to the gateway's working directory.
    pub dir: PathBuf,
    /// The spool's largest total size; past it, `on_full` applies.
    pub max_bytes: u64,
    /// A segment file is sealed (and fsynced) at this size and a new one started.
    pub segment_bytes: u64,
    /// Appends are fsynced in batches this often.
    pub fsync_interval: Duration,
    /// An event Kafka has not acknowledged this long after it was handed over is spooled (and so is every event
    /// after it until the spool is drained).
    pub after: Duration,
    pub on_full: OnFull,
    /// Every event is appended to the spool as it is handed to librdkafka, not only once Kafka is late: a
    /// `kill -9` then loses only what the event pump had not received yet (see [`crate::events`]).
    pub write_ahead: bool,
}

/// What the gateway does while the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// New metered requests are answered 503 before they reach any upstream: no usage goes unrecorded.
    Reject,
    /// Requests are served and their usage events dropped, each counted and logged.
    ServeUnmetered,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::ServeUnmetered => "serve_unmetered",
        }
    }
}

/// The gateway's side of the quota loop (`[quota]`).
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// The compacted topic billing-consumer publishes snapshots to.
    pub topic: String,
    /// Reserve the request's `max_tokens` (besides the prompt estimate) at admission, when it gives one.
    pub reserve_max_tokens: bool,
    /// Output tokens a budget reserves for a request that sets no `max_tokens`.
    pub budget_output_tokens: u64,
    /// Snapshots older than this (no heartbeat either) put the gateway in degraded mode: it keeps enforcing from
    /// its last snapshots plus its own usage, logs it and sets `tollgate_quota_degraded`.
    pub max_snapshot_age: Duration,
    /// How long a start waits for the quota feed to read what the topic holds before serving (then degraded).
    pub load_timeout: Duration,
}

/// A token limit (APISIX's `ai-rate-limiting`): at most `limit` tokens of its scope per fixed window.
#[derive(Debug, Clone)]
pub struct TokenLimit {
    /// The limit's name in the admin API: its `id`, or its scope key when it has none. Only `[[token_limits]]`
    /// entries have one of their own.
    pub id: String,
    /// Which usage counts, over which window, with which strategy.
    pub scope: QuotaScope,
    /// `scope.key()`: the Kafka key of its snapshots.
    pub key: String,
    pub limit: u64,
    /// The status of a rejection (default 429).
    pub rejected_code: u16,
    /// The message of a rejection.
    pub rejected_msg: String,
    /// The OpenAI error `type` of a rejection.
    pub rejected_type: &'static str,
    /// For a spend budget: its currency and what happens once it is spent (`limit` is micro-units then).
    pub budget: Option<BudgetTerms>,
}

/// What makes a [`TokenLimit`] a spend budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetTerms {
    /// ISO 4217; `limit` and usage are micro-units of it.
    pub currency: String,
    pub on_exceed: OnExceed,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the OpenAI-compatible API listens on.
    pub listen: SocketAddr,
    /// This replica's name; events carry it as their `source`.
    pub instance_id: String,
    /// How many replicas share the traffic: request-rate limits are enforced as a `1/replicas` share on each
    /// ([`crate::admission::limits`]).
    pub replicas: u32,
    /// HTTP worker threads.
    pub workers: usize,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
    /// Largest upstream response body read (non-streaming); a larger answer is cut, answered 502 and billed
    /// from what was read.
    pub max_response_bytes: usize,
    /// How long the client has to send its whole request body (408 past it).
    pub body_read_timeout: Duration,
    /// Deepest nesting of arrays and objects accepted in a request body.
    pub max_json_depth: usize,
    /// Most JSON values (and object keys) accepted in a request body: what bounds the memory of its parse.
    pub max_json_values: usize,
    /// Requests in flight on this replica (bodies being read, answers awaited, streams relayed); past it, 503.
    pub max_inflight_requests: usize,
    /// Bytes in flight on this replica: request bodies, the cost of their parses, buffered answers; past it, 503.
    pub max_inflight_bytes: usize,
    /// How long a graceful shutdown waits for requests in flight and for events to reach Kafka.
    pub shutdown_timeout: Duration,
    /// A stream that sends nothing for this long is cut.
    pub stream_idle_timeout: Duration,
    /// A stream whose client reads nothing for this long (its buffers stay full) is ended and settled as
    /// `client_cancelled`: a client that stops reading cannot pin a stream, its reservation and its event.
    pub send_timeout: Duration,
    /// How long a graceful stop waits for the work that outlives clients (answers read to learn their usage,
    /// stream tees) before the rest is settled with what is known.
    pub drain_timeout: Duration,
    /// The longest upstream `Retry-After` honoured (cooldowns, and what a client is told); longer ones are cut
    /// to it.
    pub max_retry_after: Duration,
    /// Meter requests: prompt estimate, token quotas, SSE usage parsing and one usage event each. Off, the
    /// gateway is a plain authenticating, routing, failing-over proxy: nothing is estimated, limited by tokens
    /// or billed (token limits are then refused).
    pub metering: bool,
    /// Where `/metrics` is served instead of the API listener; `None` keeps it on the API listener.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// Base URL of meter-sidecar.
    pub url: Url,
    /// Budget for one estimate; past it the gateway uses its in-process fallback.
    pub timeout: Duration,
}

/// `[billing]`: billing-consumer's endpoint, which the usage API (`GET /v1/usage`, `GET /admin/v1/usage`) reads
/// the ledger through; `None`: the usage API answers that it is not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    pub url: Option<Url>,
    /// Budget for one statement.
    pub timeout: Duration,
    /// The price file budgets are priced with, when given.
    pub prices: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub usage_topic: String,
    /// Events waiting for the event pump; when full, events are dropped and counted.
    pub queue_capacity: usize,
    /// How long librdkafka keeps retrying one event before reporting it failed.
    pub message_timeout: Duration,
    /// The compacted topic every replica publishes the circuits it opens and the probe verdicts it reaches to,
    /// and reads the others' from ([`crate::routing::shared`]); `None`: each replica finds out on its own.
    pub health_topic: Option<String>,
    /// Extra librdkafka properties, passed through as they are.
    pub properties: BTreeMap<String, String>,
}

/// One upstream provider endpoint.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub provider: Provider,
    /// Base URL including the API version prefix, e.g. `https://api.openai.com/v1`.
    pub endpoint: Url,
    /// The model name sent upstream instead of the client's, when set.
    pub model: Option<String>,
    /// The provider key, read from the environment at load.
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response head and body.
    pub timeout: Duration,
    /// Passive health: when to stop sending traffic after failures.
    pub circuit_breaker: BreakerConfig,
    /// Active health: a background probe, when configured.
    pub health_check: Option<HealthCheck>,
    /// The instance's own token quota: when it is used up, requests fail over to the next target.
    pub token_limit: Option<TokenLimit>,
    /// Azure OpenAI: the API version and the deployment of each model.
    pub azure: Option<AzureDeployments>,
    /// The `max_tokens` of a translated chat completion that set no limit, sent to an Anthropic instance.
    pub default_max_tokens: u32,
}

/// How an Azure OpenAI instance is addressed: `{endpoint}/openai/deployments/{deployment}/{path}?api-version=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureDeployments {
    pub api_version: String,
    /// Model name → deployment name.
    pub deployments: BTreeMap<String, String>,
}

/// The one upstream path on which Azure OpenAI takes the deployment in the body (`model`), not in the path:
/// `openai/responses?api-version=…`.
const AZURE_BODY_DEPLOYMENT_PATH: &str = "responses";

impl Instance {
    /// The path a request for `model` is sent to on this instance, relative to its endpoint (or absolute):
    /// `path` itself, or for Azure OpenAI `openai/deployments/{deployment}/{path}?api-version={version}`, the
    /// deployment looked up by `model` (a model without an entry goes to the deployment of its own name).
    pub fn request_path<'a>(&self, path: &'a str, model: &str) -> std::borrow::Cow<'a, str> {
        let Some(azure) = &self.azure else {
            return std::borrow::Cow::Borrowed(path);
        };
        let deployment = azure.deployments.get(model).map_or(model, String::as_str);
        let version = &azure.api_version;
        std::borrow::Cow::Owned(if path.starts_with('/') {
            format!("{path}?api-version={version}")
        } else if path == AZURE_BODY_DEPLOYMENT_PATH {
            format!("openai/{path}?api-version={version}")
        } else {
            format!("openai/deployments/{deployment}/{path}?api-version={version}")
        })
    }

    /// The model named in the body sent to `path` for a client's `model`: the instance's own model name when it
    /// has one (`None`: the client's stays). Azure OpenAI's Responses API takes the deployment in the body
    /// instead of the path, so there it is the deployment.
    pub fn body_model<'a>(&'a self, path: &str, model: &'a str) -> Option<&'a str> {
        let sent = self.model.as_deref();
        match &self.azure {
            Some(azure) if path == AZURE_BODY_DEPLOYMENT_PATH => {
                let model = sent.unwrap_or(model);
                Some(azure.deployments.get(model).map_or(model, String::as_str))
            }
            _ => sent,
        }
    }
}

/// Passive health: `failures` consecutive retry-worthy failures open the circuit for `cooldown`; then one trial
/// request half-opens it, and its success closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cooldown: Duration,
}

/// Active health: a request sent in the background every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub method: HealthMethod,
    /// Path relative to the instance's endpoint (`chat/completions`), or absolute on its host (`/health`).
    pub path: String,
    /// JSON body sent with a POST, e.g. a 1-token chat completion.
    pub body: Option<String>,
    pub expected_statuses: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy instance healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthMethod {
    Get,
    Post,
}

/// Where requests for a set of model names go.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Model names (and aliases) clients may ask for.
    pub models: Vec<String>,
    /// Client paths the route serves.
    pub paths: Vec<String>,
    /// Instances, higher `priority` first, then file order.
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    pub failover: FailoverConfig,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Config::instances`].
    pub instance: usize,
    /// Higher is preferred; lower priorities serve only when no higher one is available.
    pub priority: i32,
    /// Share of traffic among the targets of one priority; 0 drains the target.
    pub weight: u32,
    /// Upstream path (absolute, on the instance's host) replacing the endpoint's path, e.g. `/v2/chat/completions`.
    pub path: Option<String>,
}

/// How a target is chosen among the available ones of the highest priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    /// Smooth weighted round-robin: an 80/20 split is exact within every cycle of 5 requests.
    WeightedRoundRobin,
    /// Consistent hashing: the same key keeps going to the same target while it is available.
    ConsistentHash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Consumer,
    /// A request header, lowercase.
    Header(String),
}

/// When a request moves to another target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// At most this many targets are tried for one request.
    pub max_attempts: usize,
    /// Overall deadline for all attempts of one request.
    pub deadline: Duration,
    /// Statuses that fail over besides connect errors, timeouts, 429, 500, 502, 503 and 504.
    pub retry_on_status: Vec<u16>,
}

/// A tenant: the party a request is billed to.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: String,
    /// Its team and the organisation at the top of the team's chain (`[[teams]]`), stamped into each of its
    /// usage events.
    pub team: Option<TeamPath>,
    /// A label for metrics (`tollgate_tokens_total{class}`): few values (plans, tiers, teams), unlike consumer
    /// names. Default `default`.
    pub class: String,
    pub keys: Vec<ConsumerKey>,
    /// At most this many requests per window, when set.
    pub limit_count: Option<LimitCount>,
    /// The consumer's token quotas, checked before the global ones.
    pub token_limits: Vec<TokenLimit>,
}

/// A consumer's place among the teams: its own team, and the organisation — the top of the team's chain of
/// parents (the team itself when it has no parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamPath {
    pub team: String,
    pub organization: String,
}

/// A team (`[[teams]]`), with its parent if it has one.
#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    pub parent: Option<String>,
    /// Its spend budgets (scopes of the `spend` strategy over its consumers' requests).
    pub budgets: Vec<TokenLimit>,
}

/// A request-rate limit (APISIX's `limit-count`): `count` requests per `time_window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCount {
    pub count: u32,
    pub time_window: Duration,
    /// The status of a rejection (default 429).
    pub rejected_code: u16,
    /// The message of a rejection.
    pub rejected_msg: String,
}

#[derive(Debug, Clone)]
pub struct ConsumerKey {
    /// Public identifier of the key; events carry it, never the key.
    pub id: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// After this instant the key is refused.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The model names this key may use; every routed model when absent.
    pub models: Option<Vec<String>>,
}

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every problem found in a configuration, each with its path.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

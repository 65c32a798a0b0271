//! Configuration: one TOML file, parsed into `Raw*` structs (`deny_unknown_fields`) and validated into [`Config`],
//! the only form the rest of the gateway sees.
//!
//! Validation reports every problem at once, each with its path (`instances[1].endpoint: …`), so an operator fixes
//! a file in one round. Secrets are never in the file: an instance names the environment variable that holds its
//! provider key (`api_key_env`), and consumer keys are stored as SHA-256 hashes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tollgate_schemas::quota::{QuotaScope, TokenLimitConfig};
use url::Url;

use crate::protocol::{Endpoint, Provider};

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub meter: MeterConfig,
    pub kafka: KafkaConfig,
    pub instances: Vec<Instance>,
    pub routes: Vec<Route>,
    pub consumers: Vec<Consumer>,
    /// Token limits not tied to one consumer: per model (global) or over everything (`[[token_limits]]`).
    pub token_limits: Vec<TokenLimit>,
    pub quota: QuotaConfig,
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
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the OpenAI-compatible API listens on.
    pub listen: SocketAddr,
    /// This replica's name; events carry it as their `source`.
    pub instance_id: String,
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

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub usage_topic: String,
    /// Events waiting for the event pump; when full, events are dropped and counted.
    pub queue_capacity: usize,
    /// How long librdkafka keeps retrying one event before reporting it failed.
    pub message_timeout: Duration,
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
    /// A label for metrics (`tollgate_tokens_total{class}`): few values (plans, tiers, teams), unlike consumer
    /// names. Default `default`.
    pub class: String,
    pub keys: Vec<ConsumerKey>,
    /// At most this many requests per window, when set.
    pub limit_count: Option<LimitCount>,
    /// The consumer's token quotas, checked before the global ones.
    pub token_limits: Vec<TokenLimit>,
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

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_instance_id() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".to_owned())
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
fn default_max_request_bytes() -> usize {
    8 << 20
}
fn default_max_response_bytes() -> usize {
    16 << 20
}
/// serde_json refuses deeper documents itself.
const MAX_JSON_DEPTH: usize = 128;
/// A body read longer than this is a connection held open, not an upload.
const MAX_BODY_READ_TIMEOUT: Duration = Duration::from_secs(600);

fn default_body_read_timeout() -> String {
    "30s".to_owned()
}
fn default_max_json_depth() -> usize {
    64
}
fn default_max_json_values() -> usize {
    1 << 20
}
fn default_max_inflight_requests() -> usize {
    4096
}
fn default_max_inflight_bytes() -> usize {
    256 << 20
}
fn default_shutdown_timeout() -> String {
    "10s".to_owned()
}
fn default_stream_idle_timeout() -> String {
    "120s".to_owned()
}
fn default_send_timeout() -> String {
    "30s".to_owned()
}
fn default_drain_timeout() -> String {
    "30s".to_owned()
}
fn default_max_retry_after() -> String {
    "1h".to_owned()
}
fn default_meter_timeout() -> String {
    "250ms".to_owned()
}
fn default_usage_topic() -> String {
    tollgate_schemas::topics::USAGE_V1.to_owned()
}
fn default_queue_capacity() -> usize {
    65_536
}
fn default_message_timeout() -> String {
    "30s".to_owned()
}
fn default_connect_timeout() -> String {
    "2s".to_owned()
}
fn default_upstream_timeout() -> String {
    "120s".to_owned()
}
fn default_provider() -> Provider {
    Provider::Openai
}
fn default_rejected_code() -> u16 {
    429
}
fn default_rejected_msg() -> String {
    "Rate limit reached for requests. Try again after the time given in Retry-After.".to_owned()
}
fn default_token_rejected_msg() -> String {
    "Token quota exceeded for the current window. Try again after the time given in Retry-After.".to_owned()
}
fn default_quota_topic() -> String {
    tollgate_schemas::topics::QUOTA_V1.to_owned()
}
fn default_max_snapshot_age() -> String {
    "10s".to_owned()
}
fn default_spool_dir() -> String {
    "spool".to_owned()
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_spool_segment_bytes() -> u64 {
    16 << 20
}
fn default_spool_fsync_interval() -> String {
    "20ms".to_owned()
}
fn default_spool_after() -> String {
    "1s".to_owned()
}
fn default_spool_on_full() -> String {
    "reject".to_owned()
}
/// The smallest segment accepted: a few events.
const MIN_SPOOL_SEGMENT_BYTES: u64 = 4096;
fn default_true() -> bool {
    true
}
fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> String {
    "10s".to_owned()
}
fn default_health_method() -> HealthMethod {
    HealthMethod::Get
}
fn default_expected_statuses() -> Vec<u16> {
    vec![200]
}
fn default_health_interval() -> String {
    "5s".to_owned()
}
fn default_health_timeout() -> String {
    "2s".to_owned()
}
fn default_health_threshold() -> u32 {
    2
}
/// Every client path an instance of `provider` can serve.
fn provider_paths(provider: Provider) -> Vec<String> {
    Endpoint::ALL
        .iter()
        .filter(|e| e.provider() == provider)
        .map(|e| e.path().to_owned())
        .collect()
}
fn default_weight() -> u32 {
    1
}
/// The largest weight of one target: weights are shares, and a bound keeps one change from building huge
/// structures on every replica.
const MAX_WEIGHT: u32 = 10_000;
/// The largest sum of a consistent-hash route's weights: its ring holds 160 points per unit of weight, built on
/// every replica at every change (and at every start, from the config topic).
const MAX_HASH_WEIGHT_TOTAL: u64 = 1_000;
fn default_balancer() -> String {
    "weighted_round_robin".to_owned()
}
fn default_max_attempts() -> usize {
    3
}
fn default_failover_deadline() -> String {
    "120s".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub meter: RawMeter,
    pub kafka: RawKafka,
    #[serde(default)]
    pub instances: Vec<RawInstance>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub token_limits: Vec<TokenLimitConfig>,
    #[serde(default)]
    pub quota: RawQuota,
    #[serde(default)]
    pub spool: RawSpool,
    #[serde(default)]
    pub admin: RawAdmin,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9180".to_owned()
}
fn default_admin_allow() -> Vec<String> {
    vec!["127.0.0.1/32".to_owned(), "::1/128".to_owned()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    #[serde(default)]
    pub keys: Vec<RawAdminKey>,
    /// CIDRs; loopback only by default.
    #[serde(default = "default_admin_allow")]
    pub allow: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Accept an allowlist that contains 0.0.0.0/0 or ::/0.
    #[serde(default)]
    pub allow_any: bool,
    /// The config topic, e.g. "tollgate.config.v1"; absent: standalone.
    pub config_topic: Option<String>,
    #[serde(default = "default_config_load_timeout")]
    pub config_load_timeout: String,
    /// Environment variables admin-API instances may name in `api_key_env`, besides those of the file's instances.
    #[serde(default)]
    pub provider_key_envs: Vec<String>,
    /// Any variable with this prefix may be named too.
    pub provider_key_env_prefix: Option<String>,
    /// CIDRs of loopback, link-local and private addresses admin-API instances may target.
    #[serde(default)]
    pub private_endpoints: Vec<String>,
}

fn default_config_load_timeout() -> String {
    "15s".to_owned()
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            keys: Vec::new(),
            allow: default_admin_allow(),
            trusted_proxies: Vec::new(),
            allow_any: false,
            config_topic: None,
            config_load_timeout: default_config_load_timeout(),
            provider_key_envs: Vec::new(),
            provider_key_env_prefix: None,
            private_endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminKey {
    pub id: String,
    pub sha256: String,
    /// `admin` or `viewer`.
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    #[serde(default = "default_spool_dir")]
    pub dir: String,
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_spool_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default = "default_spool_fsync_interval")]
    pub fsync_interval: String,
    #[serde(default = "default_spool_after")]
    pub after: String,
    /// `reject` or `serve_unmetered`.
    #[serde(default = "default_spool_on_full")]
    pub on_full: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: default_spool_dir(),
            max_bytes: default_spool_max_bytes(),
            segment_bytes: default_spool_segment_bytes(),
            fsync_interval: default_spool_fsync_interval(),
            after: default_spool_after(),
            on_full: default_spool_on_full(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    #[serde(default = "default_quota_topic")]
    pub topic: String,
    #[serde(default = "default_true")]
    pub reserve_max_tokens: bool,
    #[serde(default = "default_max_snapshot_age")]
    pub max_snapshot_age: String,
    /// How long a start waits for the quota feed to read the topic before serving degraded.
    #[serde(default = "default_quota_load_timeout")]
    pub load_timeout: String,
}

fn default_quota_load_timeout() -> String {
    "15s".to_owned()
}

impl Default for RawQuota {
    fn default() -> Self {
        Self {
            topic: default_quota_topic(),
            reserve_max_tokens: true,
            max_snapshot_age: default_max_snapshot_age(),
            load_timeout: default_quota_load_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: String,
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    #[serde(default = "default_max_json_values")]
    pub max_json_values: usize,
    #[serde(default = "default_max_inflight_requests")]
    pub max_inflight_requests: usize,
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: String,
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: String,
    #[serde(default = "default_send_timeout")]
    pub send_timeout: String,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: String,
    #[serde(default = "default_true")]
    pub metering: bool,
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            instance_id: default_instance_id(),
            workers: default_workers(),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            body_read_timeout: default_body_read_timeout(),
            max_json_depth: default_max_json_depth(),
            max_json_values: default_max_json_values(),
            max_inflight_requests: default_max_inflight_requests(),
            max_inflight_bytes: default_max_inflight_bytes(),
            shutdown_timeout: default_shutdown_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
            send_timeout: default_send_timeout(),
            drain_timeout: default_drain_timeout(),
            max_retry_after: default_max_retry_after(),
            metering: true,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeter {
    pub url: String,
    #[serde(default = "default_meter_timeout")]
    pub timeout: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub brokers: String,
    #[serde(default = "default_usage_topic")]
    pub usage_topic: String,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_message_timeout")]
    pub message_timeout: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub name: String,
    #[serde(default = "default_provider")]
    pub provider: Provider,
    pub endpoint: String,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    pub health_check: Option<RawHealthCheck>,
    pub token_limit: Option<TokenLimitConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown: String,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            failures: default_breaker_failures(),
            cooldown: default_breaker_cooldown(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default = "default_health_method")]
    pub method: HealthMethod,
    pub path: String,
    pub body: Option<String>,
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<u16>,
    #[serde(default = "default_health_interval")]
    pub interval: String,
    #[serde(default = "default_health_timeout")]
    pub timeout: String,
    #[serde(default = "default_health_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_health_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub models: Vec<String>,
    /// Default: every endpoint of the targets' protocol.
    pub paths: Option<Vec<String>>,
    pub targets: Vec<RawTarget>,
    /// `weighted_round_robin` or `consistent_hash`.
    #[serde(default = "default_balancer")]
    pub balancer: String,
    /// For `consistent_hash`: `consumer` or `header:<name>`.
    pub hash_on: Option<String>,
    #[serde(default)]
    pub failover: RawFailover,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub instance: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    #[serde(default = "default_failover_deadline")]
    pub deadline: String,
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
}

impl Default for RawFailover {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            deadline: default_failover_deadline(),
            retry_on_status: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub keys: Vec<RawKey>,
    pub limit_count: Option<RawLimitCount>,
    #[serde(default)]
    pub token_limits: Vec<TokenLimitConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitCount {
    pub count: u32,
    pub time_window: String,
    #[serde(default = "default_rejected_code")]
    pub rejected_code: u16,
    #[serde(default = "default_rejected_msg")]
    pub rejected_msg: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub sha256: String,
    /// RFC 3339, e.g. "2027-01-01T00:00:00Z".
    pub expires_at: Option<String>,
    pub models: Option<Vec<String>>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::from_toml(&text)
    }

    /// Parses and validates a configuration, reading secrets from the process environment.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses and validates a configuration, reading secrets through `env`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(&e)]))?;
        Self::from_raw(raw, env)
    }

    /// Validates a parsed configuration, reading secrets through `env`.
    pub fn from_raw(raw: RawConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        raw.validate(&env)
    }
}

fn toml_error(e: &toml::de::Error) -> String {
    // toml's message already carries the line and column; keep it on one line per problem.
    let joined = e
        .to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    one_line(&joined)
}

/// `text` with its control characters written as escapes (a newline as `\n`), so that a value quoted in a
/// problem — a name with a newline in it, say — cannot spread the problem over several lines of `check-config`'s
/// output or of a log, nor forge a line of its own.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The admin API's name for a `[[token_limits]]` entry without an `id`: its scope key in URL-safe characters,
/// e.g. `models:gpt-4o-mini.window:3600s.strategy:total_tokens`.
pub fn derived_limit_id(scope_key: &str) -> String {
    scope_key
        .chars()
        .map(|c| match c {
            ';' => '.',
            '=' => ':',
            ',' => '_',
            c => c,
        })
        .collect()
}

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
    fn validate(self, env: &impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        instance_id = "gw-1"

        [meter]
        url = "http://127.0.0.1:8081"
        timeout = "200ms"

        [kafka]
        brokers = "127.0.0.1:9092"

        [[instances]]
        name = "openai"
        endpoint = "https://api.openai.com/v1"
        model = "gpt-4o-mini-2024-07-18"
        api_key_env = "OPENAI_API_KEY"

        [[routes]]
        name = "gpt-4o-mini"
        models = ["gpt-4o-mini"]
        targets = [{ instance = "openai" }]

        [[consumers]]
        name = "team-a"
        keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874" }]
    "#;

    fn env(name: &str) -> Option<String> {
        (name == "OPENAI_API_KEY").then(|| "sk-provider".to_owned())
    }

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml_with_env(text, env).unwrap_err().0
    }

    /// Found by the `config_toml` fuzz target: a value quoted in a problem used to carry its newline into the
    /// problem, which then spread over several lines of `check-config`'s output and of logs.
    #[test]
    fn a_problem_quoting_a_value_with_control_characters_stays_on_one_line() {
        let text = VALID.replace(
            r#"targets = [{ instance = "openai" }]"#,
            r#"targets = [{ instance = "op\nai\r\u001b[31m" }]"#,
        );
        let found = problems(&text);
        let problem = found
            .iter()
            .find(|p| p.starts_with("routes[0].targets[0].instance"))
            .unwrap_or_else(|| panic!("{found:?}"));
        assert!(problem.contains(r"`op\nai\r\u{1b}[31m`"), "{problem}");
        for problem in &found {
            assert!(!problem.chars().any(char::is_control), "{problem:?}");
        }
        let unparsable = problems("[server]\nlisten = \"127.0.0.1:8080\"\t\r x\n");
        assert!(!unparsable[0].chars().any(char::is_control), "{unparsable:?}");
    }

    #[test]
    fn the_edge_budgets_are_bounded_and_every_bad_one_is_reported() {
        let config = Config::from_toml_with_env(VALID, env).unwrap();
        assert_eq!(config.server.max_response_bytes, 16 << 20);
        assert_eq!(config.server.body_read_timeout, Duration::from_secs(30));
        assert_eq!(config.server.max_json_depth, 64);
        assert_eq!(config.server.max_inflight_bytes, 256 << 20);
        let bad = VALID.replace(
            "instance_id = \"gw-1\"",
            "instance_id = \"gw-1\"\nmax_json_depth = 129\nmax_json_values = 3\nmax_inflight_requests = 0\n\
             max_inflight_bytes = 1024\nbody_read_timeout = \"2h\"",
        );
        let found = problems(&bad);
        for path in [
            "server.max_json_depth",
            "server.max_json_values",
            "server.max_inflight_requests",
            "server.max_inflight_bytes",
            "server.body_read_timeout",
        ] {
            assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
        }
    }

    #[test]
    fn a_limit_or_a_key_that_names_some_names_of_a_route_but_not_all_is_refused() {
        let aliased = VALID.replace(
            r#"models = ["gpt-4o-mini"]"#,
            r#"models = ["gpt-4o-mini", "mini"]"#,
        );
        let partial = format!(
            r#"{aliased}token_limits = [{{ models = ["gpt-4o-mini"], limit = 10000, time_window = "1h" }}]
            [[consumers]]
            name = "team-b"
            keys = [{{ id = "b-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac875", models = ["mini"] }}]
            "#
        );
        let found = problems(&partial);
        for path in [
            "consumers[0].token_limits[0].models",
            "consumers[1].keys[0].models",
        ] {
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(path) && p.contains("route `gpt-4o-mini`")),
                "{path}: {found:?}"
            );
        }
        assert!(
            found.iter().any(|p| p.contains("not its other names `mini`")),
            "{found:?}"
        );
        // Naming every name of the route is one model, one quota.
        let whole = format!(
            r#"{aliased}token_limits = [{{ models = ["mini", "gpt-4o-mini"], limit = 10000, time_window = "1h" }}]"#
        );
        assert!(Config::from_toml_with_env(&whole, env).is_ok());
    }

    #[test]
    fn properties_that_weaken_the_usage_producers_delivery_are_refused() {
        let with = |properties: &str| {
            VALID.replace(
                "brokers = \"127.0.0.1:9092\"",
                &format!("brokers = \"127.0.0.1:9092\"\nproperties = {{ {properties} }}"),
            )
        };
        for (properties, key) in [
            (r#""acks" = "1""#, "acks"),
            (r#""request.required.acks" = "0""#, "request.required.acks"),
            (r#""enable.idempotence" = "false""#, "enable.idempotence"),
            (r#""transactional.id" = "t""#, "transactional.id"),
        ] {
            let found = problems(&with(properties));
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(&format!("kafka.properties.\"{key}\""))),
                "{properties}: {found:?}"
            );
        }
        assert!(
            Config::from_toml_with_env(&with(r#""acks" = "all", "compression.type" = "zstd""#), env).is_ok()
        );
    }

    #[test]
    fn weights_are_bounded_and_a_hash_rings_size_too() {
        let with = |targets: &str, balancer: &str| {
            format!(
                "{}\n[[instances]]\nname = \"b\"\nendpoint = \"https://b.example/v1\"\n\n[[routes]]\nname = \"r\"\n\
                 models = [\"m\"]\ntargets = {targets}\n{balancer}\n",
                VALID
            )
        };
        let heavy = with(r#"[{ instance = "openai", weight = 4294967295 }]"#, "");
        assert!(
            problems(&heavy)
                .iter()
                .any(|p| p.starts_with("routes[1].targets[0].weight")),
            "{:?}",
            problems(&heavy)
        );
        let ring = with(
            r#"[{ instance = "openai", weight = 900 }, { instance = "b", weight = 900 }]"#,
            r#"balancer = "consistent_hash"
hash_on = "consumer""#,
        );
        assert!(
            problems(&ring)
                .iter()
                .any(|p| p.starts_with("routes[1].targets:") && p.contains("1800")),
            "{:?}",
            problems(&ring)
        );
        let fine = with(
            r#"[{ instance = "openai", weight = 900 }, { instance = "b", weight = 900 }]"#,
            "",
        );
        assert!(Config::from_toml_with_env(&fine, env).is_ok());
    }

    #[test]
    fn admin_api_instances_reach_only_allowed_key_variables_and_internal_hosts() {
        let admin = RawAdmin {
            provider_key_envs: vec!["ANTHROPIC_API_KEY".into()],
            provider_key_env_prefix: Some("TOLLGATE_PROVIDER_".into()),
            private_endpoints: vec!["10.1.0.0/16".into()],
            ..RawAdmin::default()
        };
        let file: RawConfig = toml::from_str(&format!(
            "{VALID}\n[[instances]]\nname = \"local\"\nendpoint = \"http://127.0.0.1:8000/v1\"\n"
        ))
        .unwrap();
        let egress = Egress::of_file(&admin, &file.instances);
        let fields = |var: Option<&str>, endpoint: &str| -> Vec<&'static str> {
            egress
                .check_instance(var, endpoint)
                .into_iter()
                .map(|(field, _)| field)
                .collect()
        };
        // Variables: the file's own, the list, the prefix; nothing else (ClickHouse's password, say).
        assert!(fields(Some("OPENAI_API_KEY"), "https://api.openai.com/v1").is_empty());
        assert!(fields(Some("ANTHROPIC_API_KEY"), "https://api.anthropic.com/v1").is_empty());
        assert!(fields(Some("TOLLGATE_PROVIDER_GROQ"), "https://api.groq.com/v1").is_empty());
        assert_eq!(
            fields(Some("CLICKHOUSE_PASSWORD"), "https://api.openai.com/v1"),
            ["api_key_env"]
        );
        // Hosts: public ones; internal ones only as the file targets them or inside private_endpoints.
        assert!(fields(None, "http://127.0.0.1:8000/v1").is_empty());
        assert!(fields(None, "http://10.1.2.3:8000/v1").is_empty());
        for internal in [
            "http://127.0.0.1:8123/",
            "http://localhost:8123/",
            "http://169.254.169.254/latest/meta-data",
            "http://192.168.1.10/v1",
            "http://10.2.0.1/v1",
            "http://[::1]:8123/",
            "http://[::ffff:127.0.0.1]:8123/",
            "http://[fd00::1]/v1",
            "http://0.0.0.0:8123/",
            "http://metadata.google.internal/",
        ] {
            let problems = egress.check_instance(None, internal);
            assert_eq!(problems.len(), 1, "{internal} was allowed");
            let (field, _) = &problems[0];
            assert_eq!(*field, "endpoint", "{internal}");
        }
    }

    #[test]
    fn egress_settings_are_validated() {
        let with = |lines: &str| VALID.replace("[kafka]", &format!("[admin]\n{lines}\n\n[kafka]"));
        let found = problems(&with(
            "provider_key_envs = [\"A B\"]\nprovider_key_env_prefix = \"C\"\nprivate_endpoints = [\"0.0.0.0/0\", \"nonsense\"]\nconfig_load_timeout = \"1h\"",
        ));
        for path in [
            "admin.provider_key_envs[0]",
            "admin.provider_key_env_prefix",
            "admin.private_endpoints[0]",
            "admin.private_endpoints[1]",
            "admin.config_load_timeout",
        ] {
            assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
        }
    }

    #[test]
    fn probes_read_a_health_path_or_send_one_small_generation_and_nothing_else() {
        let with = |check: &str| {
            VALID.replace(
                "api_key_env = \"OPENAI_API_KEY\"",
                &format!("api_key_env = \"OPENAI_API_KEY\"\nhealth_check = {{ {check} }}"),
            )
        };
        let ok = [
            r#"method = "GET", path = "/health""#,
            r#"method = "GET", path = "models""#,
            r#"method = "POST", path = "chat/completions", body = '{"model":"m","max_tokens":1,"messages":[]}'"#,
        ];
        for check in ok {
            assert!(
                Config::from_toml_with_env(&with(check), env).is_ok(),
                "{check}: {:?}",
                problems(&with(check))
            );
        }
        let refused = [
            (
                r#"method = "GET", path = "/?query=DROP%20TABLE%20x""#,
                "health_check.path",
            ),
            (r#"method = "GET", path = "/../admin""#, "health_check.path"),
            (
                r#"method = "POST", path = "/", body = '{"query":"SELECT 1"}'"#,
                "health_check.path",
            ),
            (
                r#"method = "POST", path = "chat/completions", body = 'SELECT 1'"#,
                "health_check.body",
            ),
            (
                r#"method = "GET", path = "/health", body = '{}'"#,
                "health_check.body",
            ),
            (
                r#"method = "GET", path = "/health", interval = "1ms""#,
                "health_check.interval",
            ),
            (
                r#"method = "GET", path = "/health", timeout = "1h""#,
                "health_check.timeout",
            ),
        ];
        for (check, path) in refused {
            let found = problems(&with(check));
            assert!(found.iter().any(|p| p.contains(path)), "{check}: {found:?}");
        }
    }

    #[test]
    fn attempts_queues_and_spool_segments_are_bounded() {
        let text = VALID
            .replace(
                "targets = [{ instance = \"openai\" }]",
                "targets = [{ instance = \"openai\" }]\nfailover = { max_attempts = 1000 }",
            )
            .replace(
                "brokers = \"127.0.0.1:9092\"",
                "brokers = \"127.0.0.1:9092\"\nqueue_capacity = 100000000",
            )
            + "\n[spool]\nmax_bytes = 4294967296\nsegment_bytes = 2147483648\n";
        let found = problems(&text);
        for path in [
            "routes[0].failover.max_attempts",
            "kafka.queue_capacity",
            "spool.segment_bytes",
        ] {
            assert!(found.iter().any(|p| p.starts_with(path)), "{path}: {found:?}");
        }
    }

    #[test]
    fn windows_are_at_most_a_year_and_a_day() {
        let found = problems(&format!(
            "{VALID}\n[[token_limits]]\nmodels = [\"gpt-4o-mini\"]\nlimit = 10\ntime_window = \"100years\"\n"
        ));
        assert!(
            found
                .iter()
                .any(|p| p.contains("time_window") && p.contains("366d")),
            "{found:?}"
        );
        let rate = VALID.replace(
            "keys = [{ id = \"a-1\"",
            "limit_count = { count = 1, time_window = \"1000years\" }\nkeys = [{ id = \"a-1\"",
        );
        let found = problems(&rate);
        assert!(
            found.iter().any(|p| p.contains("limit_count.time_window")),
            "{found:?}"
        );
    }

    #[test]
    fn metrics_can_have_a_listener_of_their_own_but_not_the_apis() {
        let with = |line: &str| {
            VALID.replace(
                "instance_id = \"gw-1\"",
                &format!("instance_id = \"gw-1\"\n{line}"),
            )
        };
        assert_eq!(
            Config::from_toml_with_env(VALID, env)
                .unwrap()
                .server
                .metrics_listen,
            None,
            "by default /metrics stays on the API listener"
        );
        let own = Config::from_toml_with_env(&with("metrics_listen = \"127.0.0.1:9464\""), env).unwrap();
        assert_eq!(own.server.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let same = Config::from_toml_with_env(&with("metrics_listen = \"127.0.0.1:8080\""), env)
            .unwrap_err()
            .to_string();
        assert!(
            same.contains("server.metrics_listen: `127.0.0.1:8080` is server.listen's address"),
            "{same}"
        );
        let bad = Config::from_toml_with_env(&with("metrics_listen = \"localhost\""), env)
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("server.metrics_listen: `localhost` is not an address"),
            "{bad}"
        );
    }

    #[test]
    fn without_metering_token_limits_are_refused() {
        let unmetered = VALID.replace(
            "instance_id = \"gw-1\"",
            "instance_id = \"gw-1\"\nmetering = false",
        );
        assert!(
            !Config::from_toml_with_env(&unmetered, env)
                .unwrap()
                .server
                .metering
        );
        let limited = format!("{unmetered}\n[[token_limits]]\nlimit = 10\ntime_window = \"1h\"\n");
        assert_eq!(
            problems(&limited),
            vec![
                "server.metering: token limits are counted from metered usage: remove them, or leave metering on"
            ]
        );
    }

    #[test]
    fn a_valid_file_loads_with_defaults_filled_in() {
        let config = Config::from_toml_with_env(VALID, env).unwrap();
        assert_eq!(config.server.instance_id, "gw-1");
        assert_eq!(config.meter.timeout, Duration::from_millis(200));
        assert_eq!(config.kafka.usage_topic, "tollgate.usage.v1");
        assert_eq!(
            config.instances[0].api_key.as_ref().unwrap().expose(),
            "sk-provider"
        );
        assert_eq!(config.instances[0].timeout, Duration::from_secs(120));
        assert_eq!(config.consumers[0].keys[0].sha256[0], 0x75);
    }

    #[test]
    fn the_compose_demo_config_is_valid() {
        let text = include_str!("../../compose/tollgate.toml");
        Config::from_toml_with_env(text, |_| Some("x".into())).unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = VALID
            .replace(r#"timeout = "200ms""#, r#"timeout = "soon""#)
            .replace(
                r#"endpoint = "https://api.openai.com/v1""#,
                r#"endpoint = "ftp://x""#,
            )
            .replace(
                r#"targets = [{ instance = "openai" }]"#,
                r#"targets = [{ instance = "opnai" }]"#,
            )
            .replace("75cf857b", "zz");
        let found = problems(&text);
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "meter.timeout",
                "instances[0].endpoint",
                "routes[0].targets[0].instance",
                "consumers[0].keys[0].sha256"
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn a_missing_secret_names_the_variable() {
        let found = Config::from_toml_with_env(VALID, |_| None).unwrap_err().0;
        assert_eq!(
            found,
            ["instances[0].api_key_env: environment variable OPENAI_API_KEY is not set"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let found = problems(&VALID.replace(
            "instance_id = \"gw-1\"",
            "instance_id = \"gw-1\"\nlisten_port = 1",
        ));
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("listen_port"), "{found:?}");
    }

    #[test]
    fn duplicates_are_refused() {
        let twice = format!(
            "{VALID}\n[[routes]]\nname = \"gpt-4o-mini\"\nmodels = [\"gpt-4o-mini\"]\ntargets = [{{ instance = \"openai\" }}]\n"
        );
        let found = problems(&twice);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[1].name: `gpt-4o-mini` is defined twice")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[1].models[0]: `gpt-4o-mini` is already served"))
        );
    }

    #[test]
    fn a_route_cannot_send_one_protocol_to_another_protocols_instance() {
        let mixed = format!(
            "{VALID}\n[[instances]]\nname = \"claude\"\nprovider = \"anthropic\"\nendpoint = \"https://api.anthropic.com/v1\"\n\
             [[routes]]\nname = \"mixed\"\nmodels = [\"m\"]\npaths = [\"/v1/messages\"]\ntargets = [{{ instance = \"openai\" }}, {{ instance = \"claude\" }}]\n"
        );
        let found = problems(&mixed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(
            "routes[1].paths[0]: `/v1/messages` speaks the anthropic protocol but target `openai`"
        ));
        // Without `paths`, a route serves every endpoint of its targets' protocol.
        let claude_only = mixed
            .replace("paths = [\"/v1/messages\"]\n", "")
            .replace("{ instance = \"openai\" }, ", "");
        let config = Config::from_toml_with_env(&claude_only, env).unwrap();
        assert_eq!(config.routes[1].paths, ["/v1/messages"]);
        assert_eq!(
            config.routes[0].paths,
            ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        );
    }

    #[test]
    fn key_expiry_and_models_are_checked_when_the_file_loads() {
        let text = VALID.replace(
            r#"keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874" }]"#,
            r#"keys = [{ id = "a-1", sha256 = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874", expires_at = "next week", models = ["gpt-4o-mini", "gpt-5"] }]"#,
        );
        let found = problems(&text);
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].keys[0].expires_at",
                "consumers[0].keys[0].models[1]"
            ],
            "{found:?}"
        );
    }

    #[test]
    fn a_request_limit_is_checked_when_the_file_loads() {
        let with = |limit: &str| format!("{VALID}limit_count = {limit}\n");
        let config =
            Config::from_toml_with_env(&with(r#"{ count = 600, time_window = "1m" }"#), env).unwrap();
        let limit = config.consumers[0].limit_count.as_ref().unwrap();
        assert_eq!(
            (limit.count, limit.time_window, limit.rejected_code),
            (600, Duration::from_secs(60), 429)
        );
        let found = problems(&with(
            r#"{ count = 0, time_window = "soon", rejected_code = 200 }"#,
        ));
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].limit_count.count",
                "consumers[0].limit_count.rejected_code",
                "consumers[0].limit_count.time_window"
            ],
            "{found:?}"
        );
    }

    #[test]
    fn token_limits_are_checked_when_the_file_loads() {
        let text = format!(
            r#"{VALID}token_limits = [{{ models = ["gpt-4o-mini"], limit = 10000, time_window = "1h" }}]

            [[token_limits]]
            models = ["gpt-4o-mini"]
            limit = 50000
            time_window = "1h"
            limit_strategy = "completion_tokens"
            rejected_type = "insufficient_quota"
            "#
        );
        let config = Config::from_toml_with_env(&text, env).unwrap();
        let own = &config.consumers[0].token_limits[0];
        assert_eq!(
            own.key,
            "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens"
        );
        assert_eq!(
            (own.limit, own.rejected_code, own.rejected_type),
            (10000, 429, "rate_limit_exceeded")
        );
        let global = &config.token_limits[0];
        assert_eq!(
            global.key,
            "models=gpt-4o-mini;window=3600s;strategy=completion_tokens"
        );
        assert_eq!(global.rejected_type, "insufficient_quota");
        assert!(config.quota.reserve_max_tokens);
        assert_eq!(config.quota.max_snapshot_age, Duration::from_secs(10));

        let bad = format!(
            r#"{VALID}token_limits = [
                {{ models = ["gpt-5"], limit = 0, time_window = "1h" }},
                {{ instance = "nowhere", limit = 5, time_window = "1h" }},
                {{ models = ["gpt-4o-mini"], limit = 1, time_window = "1h" }},
                {{ models = ["gpt-4o-mini"], limit = 2, time_window = "60m" }},
            ]
            "#
        );
        let found = problems(&bad);
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].token_limits[0].models[0]",
                "consumers[0].token_limits[0].limit",
                "consumers[0].token_limits[1].instance",
                "consumers[0].token_limits[3]",
            ],
            "{found:?}"
        );
    }

    #[test]
    fn the_spool_has_defaults_and_is_checked_when_the_file_loads() {
        let config = Config::from_toml_with_env(VALID, env).unwrap();
        let spool = &config.spool;
        assert_eq!(spool.dir, PathBuf::from("spool"));
        assert_eq!((spool.max_bytes, spool.segment_bytes), (1 << 30, 16 << 20));
        assert_eq!(spool.fsync_interval, Duration::from_millis(20));
        assert_eq!(spool.after, Duration::from_secs(1));
        assert_eq!(spool.on_full, OnFull::Reject);

        let custom = format!(
            "{VALID}\n[spool]\ndir = \"/var/lib/tollgate/spool\"\nmax_bytes = 65536\nsegment_bytes = 8192\n\
             fsync_interval = \"5ms\"\nafter = \"250ms\"\non_full = \"serve_unmetered\"\n"
        );
        let spool = Config::from_toml_with_env(&custom, env).unwrap().spool;
        assert_eq!(spool.dir, PathBuf::from("/var/lib/tollgate/spool"));
        assert_eq!((spool.max_bytes, spool.segment_bytes), (65536, 8192));
        assert_eq!(spool.after, Duration::from_millis(250));
        assert_eq!(spool.on_full, OnFull::ServeUnmetered);

        let bad = format!(
            "{VALID}\n[spool]\ndir = \"\"\nmax_bytes = 4096\nsegment_bytes = 1000\nfsync_interval = \"0s\"\n\
             after = \"1m\"\non_full = \"drop\"\n"
        );
        let found = problems(&bad);
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spool.dir",
                "spool.segment_bytes",
                "spool.after",
                "spool.on_full",
                "spool.fsync_interval"
            ],
            "{found:?}"
        );
        let found = problems(&format!(
            "{VALID}\n[spool]\nmax_bytes = 8192\nsegment_bytes = 16384\n"
        ));
        assert_eq!(
            found,
            ["spool.max_bytes: must be at least spool.segment_bytes (16384)"]
        );
    }

    #[test]
    fn the_admin_api_has_no_default_key_and_listens_on_loopback_only() {
        let admin = Config::from_toml_with_env(VALID, env).unwrap().admin;
        assert!(
            admin.keys.is_empty(),
            "no key → the admin listener does not start"
        );
        assert_eq!(admin.listen, "127.0.0.1:9180".parse().unwrap());
        let allow: Vec<String> = admin.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["127.0.0.1/32", "::1/128"]);
        assert!(admin.trusted_proxies.is_empty());

        let text = format!(
            "{VALID}\n[admin]\nlisten = \"0.0.0.0:9180\"\nallow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.0/16\"]\n\
             keys = [{{ id = \"ops\", sha256 = \"{hash}\", role = \"admin\" }}, \
             {{ id = \"dash\", sha256 = \"{other}\", role = \"viewer\" }}]\n",
            hash = "ab".repeat(32),
            other = "cd".repeat(32),
        );
        let admin = Config::from_toml_with_env(&text, env).unwrap().admin;
        let roles: Vec<(&str, AdminRole)> = admin.keys.iter().map(|k| (k.id.as_str(), k.role)).collect();
        assert_eq!(roles, [("ops", AdminRole::Admin), ("dash", AdminRole::Viewer)]);
        assert_eq!(admin.keys[0].sha256, [0xab; 32]);
    }

    #[test]
    fn an_allowlist_of_every_address_is_refused_unless_forced() {
        let with = |admin: &str| format!("{VALID}\n[admin]\n{admin}\n");
        let found = problems(&with(r#"allow = ["127.0.0.1/32", "0.0.0.0/0", "::/0"]"#));
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["admin.allow[1]", "admin.allow[2]"], "{found:?}");
        assert!(found[0].contains("allow_any"), "{found:?}");
        let forced =
            Config::from_toml_with_env(&with("allow = [\"0.0.0.0/0\"]\nallow_any = true"), env).unwrap();
        assert_eq!(forced.admin.allow[0].to_string(), "0.0.0.0/0");
        // Trusting every peer's forwarding header would let any client claim an allowed address.
        let spoofable = problems(&with(
            "allow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.1/32\", \"0.0.0.0/0\", \"::/0\"]\nallow_any = true",
        ));
        let paths: Vec<&str> = spoofable.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            ["admin.trusted_proxies[1]", "admin.trusted_proxies[2]"],
            "{spoofable:?}"
        );
    }

    #[test]
    fn admin_problems_are_reported_with_their_paths() {
        let consumer_hash = "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874";
        let text = format!(
            "{VALID}\n[admin]\nlisten = \"everywhere\"\nallow = [\"10.0.0.0/33\", \"10.1.2.3/8\", \"nowhere\"]\n\
             trusted_proxies = [\"proxy\"]\n\
             keys = [{{ id = \"ops\", sha256 = \"zz\", role = \"root\" }}, \
             {{ id = \"ops\", sha256 = \"{consumer_hash}\", role = \"viewer\" }}]\n"
        );
        let found = problems(&text);
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "admin.listen",
                "admin.keys[0].sha256",
                "admin.keys[0].role",
                "admin.keys[1].id",
                "admin.keys[1].sha256",
                "admin.allow[0]",
                "admin.allow[1]",
                "admin.allow[2]",
                "admin.trusted_proxies[0]",
            ],
            "{found:#?}"
        );
        assert!(found[4].contains("also a consumer key"), "{found:?}");
        assert!(found[6].contains("10.0.0.0/8"), "host bits: {found:?}");
    }

    #[test]
    fn secrets_do_not_print() {
        let config = Config::from_toml_with_env(VALID, env).unwrap();
        assert!(!format!("{config:?}").contains("sk-provider"));
    }
}

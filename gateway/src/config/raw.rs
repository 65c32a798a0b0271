//! The configuration file's form: `Raw*` structs that serde reads (`deny_unknown_fields`), with the default of
//! every key. Nothing here is checked; [`super::validate`] turns them into [`super::Config`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_schemas::budget::BudgetConfig;
use tollgate_schemas::quota::TokenLimitConfig;

use super::model::HealthMethod;
use crate::protocol::{Endpoint, Provider};

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
pub(super) fn default_token_rejected_msg() -> String {
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
/// The client paths a route whose first target is of `provider` serves when it names none: its protocol's
/// endpoints; for Gemini, which no client endpoint speaks, chat completions (Anthropic messages reach it too when
/// a route lists `/v1/messages`).
pub(super) fn provider_paths(provider: Provider) -> Vec<String> {
    if provider == Provider::Gemini {
        return vec![Endpoint::ChatCompletions.path().to_owned()];
    }
    Endpoint::ALL
        .iter()
        .filter(|e| e.provider() == provider.protocol())
        .map(|e| e.path().to_owned())
        .collect()
}
fn default_max_tokens() -> u32 {
    4096
}
fn default_weight() -> u32 {
    1
}
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
    pub teams: Vec<RawTeam>,
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
    #[serde(default)]
    pub billing: RawBilling,
}

/// `[billing]`: where the usage API's numbers come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    /// billing-consumer's endpoint (`run --metrics-listen`), e.g. `http://127.0.0.1:9102`; the usage API is off
    /// without it.
    pub url: Option<String>,
    pub timeout: Option<String>,
    /// The price file (billing-consumer's `--prices`): budgets reserve and settle money at these prices.
    pub prices: Option<String>,
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
    /// Every event is also appended to the spool as it is handed to Kafka: a `kill -9` loses none.
    #[serde(default)]
    pub write_ahead: bool,
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
            write_ahead: false,
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
    /// Output tokens a budget reserves for a request that sets no `max_tokens`.
    #[serde(default = "default_budget_output_tokens")]
    pub budget_output_tokens: u64,
}

fn default_budget_output_tokens() -> u64 {
    4096
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
            budget_output_tokens: default_budget_output_tokens(),
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
    /// How many replicas serve behind the load balancer: each enforces its share of every request-rate limit.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    1
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
            replicas: default_replicas(),
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
    /// The compacted topic replicas share instance health through; per-replica health without it.
    pub health_topic: Option<String>,
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
    /// The `max_tokens` sent to an Anthropic instance with a translated chat completion that set no limit
    /// (Anthropic requires one).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// Azure OpenAI only: the `api-version` query parameter of every request, e.g. `"2024-10-21"`.
    pub api_version: Option<String>,
    /// Azure OpenAI only: model name → deployment name. A request for a model goes to its deployment; a model
    /// without an entry goes to the deployment of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
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
    /// The team it belongs to (`[[teams]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub keys: Vec<RawKey>,
    pub limit_count: Option<RawLimitCount>,
    #[serde(default)]
    pub token_limits: Vec<TokenLimitConfig>,
    /// Spend budgets on the consumer's own requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetConfig>,
}

/// `[[teams]]`: a group of consumers; a team with a `parent` is part of that team, and a team without one is an
/// organisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Spend budgets on the requests of the team's consumers (an organisation's: of every team under it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetConfig>,
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

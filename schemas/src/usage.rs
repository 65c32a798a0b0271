//! `tollgate.usage.v1`: what one request consumed. The gateway emits exactly one [`UsageRecorded`] for every
//! request that reached an upstream, whatever happened afterwards; billing-consumer prices and stores it.
//!
//! Cost is deliberately absent: billing-consumer prices events from a versioned price table by event time, so a
//! replay with the same prices reproduces every cent and a corrected price can be re-run.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{CloudEvent, EventData};

/// A usage event in its envelope, as it travels on [`crate::topics::USAGE_V1`].
pub type UsageEvent = CloudEvent<UsageRecorded>;

/// What one request consumed and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UsageRecorded {
    /// The gateway's request id (also returned to the client as `x-request-id`).
    pub request_id: String,
    /// The consumer (tenant) the request was billed to.
    pub consumer_id: String,
    /// The team the consumer belonged to when the request was made (`[[teams]]`), if any. Stamped at request
    /// time, so moving a consumer to another team later never rewrites its history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The organisation at the top of that team's chain of parents (the team itself when it has no parent), if
    /// the consumer has a team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The id of the consumer key that authenticated the request. Never the key itself.
    pub key_id: String,
    /// The API path the client called, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The route that matched the request.
    pub route: String,
    /// The `model` the client asked for.
    pub model_requested: String,
    /// The model that answered, as the answer names it (OpenAI's `model`, Anthropic's `message.model`); when it
    /// names none, the model name sent upstream (the instance's override, else the route's first name). The
    /// model that is priced.
    pub model_served: String,
    /// The provider kind of that instance, e.g. `openai`.
    pub provider: String,
    /// The instance that served (or last failed) the request.
    pub instance: String,
    /// Every upstream attempt in order; more than one when the request failed over.
    pub attempts: Vec<Attempt>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    /// How the request ended.
    pub outcome: Outcome,
    /// The HTTP status the client received.
    pub http_status: u16,
    /// The prompt token count estimated before the request was sent.
    pub prompt_tokens_estimated: u32,
    /// Where that estimate came from.
    pub prompt_estimate_source: EstimateSource,
    /// Prompt (input) tokens billed.
    pub prompt_tokens: u32,
    /// Completion (output) tokens billed.
    pub completion_tokens: u32,
    /// `prompt_tokens + completion_tokens` (as reported by the provider when it reports a total).
    pub total_tokens: u32,
    /// Prompt tokens served from the provider's prompt cache, when the provider reports them.
    pub cached_prompt_tokens: Option<u32>,
    /// Of `completion_tokens`, those the model spent reasoning (OpenAI's
    /// `completion_tokens_details.reasoning_tokens`, Gemini's `thoughtsTokenCount`), when reported. Absent in
    /// events written before it existed, and left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the provider's prompt cache for 5 minutes (Anthropic's
    /// `cache_creation.ephemeral_5m_input_tokens`, or all of `cache_creation_input_tokens` when the provider does
    /// not split them), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the provider's prompt cache for an hour (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_tokens: Option<u32>,
    /// Where `prompt_tokens`/`completion_tokens` came from.
    pub usage_source: UsageSource,
    /// Wall time from the request's arrival to its last byte, in milliseconds.
    pub latency_ms: u32,
    /// Time from the request's arrival to the first upstream response byte, in milliseconds.
    pub ttfb_ms: Option<u32>,
    /// When the request arrived, in Unix epoch milliseconds.
    pub started_at_ms: u64,
    /// When the request finished, in Unix epoch milliseconds.
    pub finished_at_ms: u64,
}

impl EventData for UsageRecorded {
    const TYPE: &'static str = "tollgate.usage.v1";
}

/// One try of one upstream instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Attempt {
    /// The instance tried.
    pub instance: String,
    /// The HTTP status it answered with, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<AttemptError>,
    /// Time spent on this attempt until its response head (or failure), in milliseconds.
    pub latency_ms: u32,
}

/// Why an upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptError {
    /// The connection could not be established.
    Connect,
    /// No response head within the instance's timeout.
    Timeout,
    /// The upstream answered with an error status.
    Status,
    /// The upstream's response could not be read or understood.
    Protocol,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered with a success status and the response reached the client.
    Ok,
    /// Every attempt failed, or the upstream answered with an error status that was passed to the client.
    UpstreamError,
    /// The client went away before the response finished.
    ClientCancelled,
    /// The upstream cut a streamed response short.
    UpstreamCut,
    /// Rejected before any upstream: a token quota was exhausted.
    RejectedQuota,
    /// Rejected before any upstream: a request-rate limit was exceeded.
    RejectedRateLimit,
}

/// Where the billed token numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider's own `usage` block.
    Provider,
    /// Counted by meter-sidecar from the text the provider returned.
    Counted,
    /// Neither was available: the prompt estimate and zero completion tokens.
    Estimated,
}

/// Where the pre-request prompt estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EstimateSource {
    /// meter-sidecar's tokenizer count.
    Meter,
    /// The gateway's in-process approximation, used when meter-sidecar was slow or down.
    Fallback,
}

impl Outcome {
    /// The snake_case name, as serialized; bounded, so usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UpstreamError => "upstream_error",
            Self::ClientCancelled => "client_cancelled",
            Self::UpstreamCut => "upstream_cut",
            Self::RejectedQuota => "rejected_quota",
            Self::RejectedRateLimit => "rejected_rate_limit",
        }
    }
}

impl UsageSource {
    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Counted => "counted",
            Self::Estimated => "estimated",
        }
    }
}

impl EstimateSource {
    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meter => "meter",
            Self::Fallback => "fallback",
        }
    }
}

impl AttemptError {
    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::Protocol => "protocol",
        }
    }
}

//! The providers' protocol facts, in one place: which protocols an instance can speak ([`Provider`]), the client
//! endpoints the gateway meters and the upstream paths behind them ([`Endpoint`]), the client headers a protocol
//! needs upstream, how a client's request body is read and parsed ([`request`]), and what an answer says it
//! consumed and which model produced it ([`usage`]), and the translation of requests, answers, streams and
//! errors between OpenAI Chat Completions and Anthropic Messages ([`translate`]). The request path
//! ([`crate::pipeline`]) asks here; nothing here knows about routes, quotas or events.

pub mod request;
pub mod responses;
pub mod translate;
pub mod usage;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The kind of provider an instance is: the protocol it speaks ([`Provider::protocol`]) and how it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI's API, or anything OpenAI-compatible (vLLM, SGLang, …): `Authorization: Bearer`.
    Openai,
    /// Anthropic's Messages API: `x-api-key` and `anthropic-version`.
    Anthropic,
    /// Azure OpenAI: OpenAI's protocol, reached as `{endpoint}/openai/deployments/{deployment}/{path}?api-version=…`
    /// with an `api-key` header; the deployment is looked up by the model sent upstream.
    AzureOpenai,
    /// Google's Gemini API: its own protocol (`models/{model}:generateContent`, `:streamGenerateContent?alt=sse`)
    /// with an `x-goog-api-key` header. No client endpoint speaks it: OpenAI chat completions and Anthropic
    /// messages reach it translated ([`crate::pipeline::crossing`]).
    Gemini,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::AzureOpenai => "azure_openai",
            Self::Gemini => "gemini",
        }
    }

    /// The protocol its requests, answers, streams and errors are in: [`Provider::Openai`],
    /// [`Provider::Anthropic`] or [`Provider::Gemini`].
    pub fn protocol(self) -> Provider {
        match self {
            Self::Openai | Self::AzureOpenai => Self::Openai,
            Self::Anthropic => Self::Anthropic,
            Self::Gemini => Self::Gemini,
        }
    }
}

/// The OpenAI-compatible endpoints the gateway meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: `messages`, streamable.
    ChatCompletions,
    /// `POST /v1/completions` (legacy): `prompt`, streamable.
    Completions,
    /// `POST /v1/embeddings`: `input`, never streamed.
    Embeddings,
    /// `POST /v1/messages`: Anthropic's Messages API (`messages`, optional `system`), streamable.
    Messages,
    /// `POST /v1/responses`: OpenAI's Responses API (`input`, optional `instructions`), streamable; served by
    /// OpenAI-protocol instances only.
    Responses,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Messages,
        Self::Responses,
    ];

    /// The protocol of the instances that serve it.
    pub fn provider(self) -> Provider {
        match self {
            Self::ChatCompletions | Self::Completions | Self::Embeddings | Self::Responses => {
                Provider::Openai
            }
            Self::Messages => Provider::Anthropic,
        }
    }

    /// The protocol the client speaks on this endpoint: the shape of every answer and error it gets.
    pub fn client_protocol(self) -> Provider {
        match self {
            Self::ChatCompletions | Self::Completions | Self::Embeddings | Self::Responses => {
                Provider::Openai
            }
            Self::Messages => Provider::Anthropic,
        }
    }

    /// The endpoint served on `path`, if one is.
    pub fn of_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The protocol of a client on `path`: Anthropic's on every path that starts with `/v1/messages`, OpenAI's
    /// elsewhere.
    pub fn protocol_of_path(path: &str) -> Provider {
        if path.starts_with("/v1/messages") {
            Provider::Anthropic
        } else {
            Provider::Openai
        }
    }

    /// The client path.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Messages => "/v1/messages",
            Self::Responses => "/v1/responses",
        }
    }

    /// The path relative to an instance's endpoint.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
            Self::Responses => "responses",
        }
    }

    /// The field holding what is metered as the prompt.
    pub(crate) fn prompt_field(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Messages => "messages",
            Self::Completions => "prompt",
            Self::Embeddings | Self::Responses => "input",
        }
    }

    pub(crate) fn streams(self) -> bool {
        !matches!(self, Self::Embeddings)
    }
}

impl Endpoint {
    /// Client headers this endpoint's protocol needs upstream: Anthropic's API version and beta flags. Nothing
    /// else of the client's request headers is forwarded (in particular not its key).
    pub fn passthrough_headers(self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        const ANTHROPIC: [&str; 2] = ["anthropic-version", "anthropic-beta"];
        let names: &[&str] = match self {
            Self::Messages => &ANTHROPIC,
            Self::ChatCompletions | Self::Completions | Self::Embeddings | Self::Responses => &[],
        };
        names
            .iter()
            .filter_map(|name| Some((HeaderName::from_static(name), headers.get(*name)?.clone())))
            .collect()
    }
}

//! Translation between OpenAI Chat Completions and Anthropic Messages, both ways (and from OpenAI Chat
//! Completions to Google Gemini's `generateContent`, in [`gemini`]): a client's request into the
//! upstream's protocol ([`request`]), a whole upstream answer back into the client's ([`response`]), a streamed
//! answer one SSE event at a time ([`stream`]), an upstream error answer ([`error`]), and what an answer consumed
//! in the terms Tollgate bills ([`usage`]). Everything here is a pure function over JSON values or bytes: no
//! I/O, nothing about routes, quotas or events; malformed input of either side gives a [`TranslateError`] (or,
//! in a stream, a skipped and counted event), never a panic. `docs/translation.md` is the mapping in prose.

pub mod error;
pub mod gemini;
pub mod request;
pub mod response;
pub mod stream;
pub mod usage;

#[cfg(test)]
mod tests;

pub use error::{TranslatedError, anthropic_error_to_openai, openai_error_to_anthropic};
pub use gemini::{
    GeminiRequest, GeminiToOpenAiStream, gemini_error_to_anthropic, gemini_error_to_openai,
    gemini_to_openai_answer, openai_object_to_gemini,
};
pub use request::{
    DROPPED_FIELDS_HEADER, TranslatedRequest, anthropic_object_to_openai, anthropic_to_openai_request,
    openai_object_to_anthropic, openai_to_anthropic_request,
};
pub use response::{TranslatedAnswer, anthropic_to_openai_answer, openai_to_anthropic_answer};
pub use stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};
pub use usage::MeteredUsage;

/// Why a request or an answer could not be translated. [`status`](Self::status) says what the client is told:
/// 400 for what the client sent, 502 for what the upstream answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's body is not a JSON object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// A field of the client's request has the wrong type or an impossible value.
    #[error("invalid `{param}`: {reason}")]
    InvalidField { param: String, reason: String },
    /// A field of the client's request is valid but the upstream protocol cannot honour it, and dropping it
    /// would change the answer (e.g. `n` > 1, audio input).
    #[error("`{param}` cannot be honoured by this model's provider: {reason}")]
    Unsupported { param: String, reason: String },
    /// The upstream's answer is not what its protocol promises.
    #[error("the upstream answer cannot be translated: {0}")]
    Upstream(String),
}

impl TranslateError {
    /// The HTTP status the client gets: 400 for its own request, 502 for an untranslatable upstream answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotAnObject | Self::InvalidField { .. } | Self::Unsupported { .. } => 400,
            Self::Upstream(_) => 502,
        }
    }

    /// The request parameter at fault, for the `param` of an OpenAI error body.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidField { param, .. } | Self::Unsupported { param, .. } => Some(param),
            Self::NotAnObject | Self::Upstream(_) => None,
        }
    }

    pub(crate) fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            param: param.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unsupported {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

//! A request answered by an instance of the other protocol: an OpenAI chat completion served by an Anthropic
//! instance, or an Anthropic message served by an OpenAI-protocol one (OpenAI, Azure OpenAI). The client's
//! protocol decides what it gets; [`crate::protocol::translate`] does the translating, this file decides when
//! and applies it to the three things that cross: the request ([`upstream_request`]), a whole answer or error
//! ([`client_body`]), and a stream ([`StreamTranslator`]).
//!
//! Metering never crosses: usage, the served model and the completion text are read from the upstream's own
//! answer in its own protocol, exactly as for a request that did not cross, so a translated request is billed
//! at the model that answered with the provider's figures. Fields the upstream protocol cannot carry are named in
//! the answer's `x-tollgate-dropped-fields` header; a field that cannot be honoured (`n` > 1) is a 400 before
//! anything is sent.

use bytes::Bytes;
use serde_json::Value;

use crate::config::Instance;
use crate::error::GatewayError;
use crate::metrics as m;
use crate::protocol::request::ApiRequest;
use crate::protocol::translate::{
    self, AnthropicToOpenAiStream, OpenAiToAnthropicStream, TranslateError, TranslatedRequest,
};
use crate::protocol::{Endpoint, Provider};

/// Which way a request crosses, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// A chat completion to an Anthropic instance.
    ChatToMessages,
    /// An Anthropic message to an OpenAI-protocol instance.
    MessagesToChat,
}

impl Crossing {
    /// The `direction` label of the translation metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatToMessages => "chat_to_messages",
            Self::MessagesToChat => "messages_to_chat",
        }
    }

    /// How `endpoint`'s requests reach `provider`; `None` when they speak the same protocol.
    pub fn of(endpoint: Endpoint, provider: Provider) -> Option<Self> {
        match (endpoint, provider.protocol()) {
            (Endpoint::ChatCompletions, Provider::Anthropic) => Some(Self::ChatToMessages),
            (Endpoint::Messages, Provider::Openai) => Some(Self::MessagesToChat),
            _ => None,
        }
    }

    /// Whether `endpoint` can be served by instances of `provider`: its own protocol, or a crossing above.
    pub fn can_serve(endpoint: Endpoint, provider: Provider) -> bool {
        endpoint.provider() == provider.protocol() || Self::of(endpoint, provider).is_some()
    }

    /// The endpoint the upstream is called on.
    pub fn upstream_endpoint(self) -> Endpoint {
        match self {
            Self::ChatToMessages => Endpoint::Messages,
            Self::MessagesToChat => Endpoint::ChatCompletions,
        }
    }
}

/// A request body for an instance of the other protocol, the model name it is sent with, and the fields that
/// could not be carried.
#[derive(Debug)]
pub struct CrossedRequest {
    pub body: Bytes,
    pub dropped: Option<String>,
    pub include_usage: bool,
}

/// Translates the client's request for `instance` (its model override applied; an Anthropic instance's
/// `default_max_tokens` where the client set no limit).
pub fn upstream_request(
    crossing: Crossing,
    api: &ApiRequest,
    instance: &Instance,
) -> Result<CrossedRequest, GatewayError> {
    // Read in place: the client's body is not copied for each instance it is translated for.
    let translated = match crossing {
        Crossing::ChatToMessages => {
            translate::openai_object_to_anthropic(&api.body, u64::from(instance.default_max_tokens))
        }
        Crossing::MessagesToChat => translate::anthropic_object_to_openai(&api.body),
    }
    .map_err(|error| {
        counted(crossing, "refused");
        untranslatable(error)
    })?;
    counted(
        crossing,
        if translated.dropped.is_empty() {
            "ok"
        } else {
            "dropped_fields"
        },
    );
    let TranslatedRequest {
        mut body,
        dropped,
        include_usage,
        ..
    } = translated;
    if let (Some(model), Some(object)) = (instance.model.as_deref(), body.as_object_mut()) {
        object.insert("model".to_owned(), Value::String(model.to_owned()));
    }
    let bytes = serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)?;
    Ok(CrossedRequest {
        body: Bytes::from(bytes),
        dropped: (!dropped.is_empty()).then(|| dropped.join(",")),
        include_usage,
    })
}

/// One more `tollgate_translations_total{direction, result}`.
fn counted(crossing: Crossing, result: &'static str) {
    metrics::counter!(m::TRANSLATIONS_TOTAL, "direction" => crossing.as_str(), "result" => result)
        .increment(1);
}

/// A translation failure as the client's error: its own request (400), or the upstream's answer (502).
fn untranslatable(error: TranslateError) -> GatewayError {
    match error {
        TranslateError::Upstream(_) => GatewayError::UpstreamBadResponse,
        other => GatewayError::Untranslatable {
            param: other.param().unwrap_or("body").to_owned(),
            message: other.to_string(),
        },
    }
}

/// A whole upstream answer (or error) in the client's protocol: the status and body to send. A success body
/// that does not translate is the gateway's 502 (it was billed from the upstream's own answer all the same).
pub fn client_body(
    crossing: Crossing,
    status: u16,
    body: &[u8],
    created: i64,
) -> Result<(u16, Bytes), GatewayError> {
    if (200..300).contains(&status) {
        let answer = match crossing {
            Crossing::ChatToMessages => translate::anthropic_to_openai_answer(body, created),
            Crossing::MessagesToChat => translate::openai_to_anthropic_answer(body),
        }
        .map_err(|_| {
            counted(crossing, "untranslatable_answer");
            GatewayError::UpstreamBadResponse
        })?;
        let bytes = serde_json::to_vec(&answer.body).map_err(|_| GatewayError::Internal)?;
        return Ok((status, Bytes::from(bytes)));
    }
    let error = match crossing {
        Crossing::ChatToMessages => translate::anthropic_error_to_openai(status, body),
        Crossing::MessagesToChat => translate::openai_error_to_anthropic(status, body),
    };
    let bytes = serde_json::to_vec(&error.body).map_err(|_| GatewayError::Internal)?;
    Ok((error.status, Bytes::from(bytes)))
}

/// A stream's events translated as they come, for the client's protocol.
#[derive(Debug)]
pub enum StreamTranslator {
    AnthropicToOpenAi(AnthropicToOpenAiStream),
    OpenAiToAnthropic(OpenAiToAnthropicStream),
}

impl StreamTranslator {
    /// The translator for `crossing`; `include_usage`: the OpenAI client asked for the usage chunk.
    pub fn new(crossing: Crossing, include_usage: bool, created: i64) -> Self {
        match crossing {
            Crossing::ChatToMessages => {
                Self::AnthropicToOpenAi(AnthropicToOpenAiStream::new(include_usage, created))
            }
            Crossing::MessagesToChat => Self::OpenAiToAnthropic(OpenAiToAnthropicStream::new()),
        }
    }

    /// The client's frames for one upstream event.
    pub fn push(&mut self, event: Option<&str>, data: &[u8]) -> Vec<u8> {
        match self {
            Self::AnthropicToOpenAi(t) => t.push(event, data),
            Self::OpenAiToAnthropic(t) => t.push(event, data),
        }
    }

    /// The client's last frames once the upstream's stream ended as it should.
    pub fn finish(&mut self) -> Vec<u8> {
        match self {
            Self::AnthropicToOpenAi(t) => t.finish(),
            Self::OpenAiToAnthropic(t) => t.finish(),
        }
    }

    /// The `direction` label of the translation metrics.
    pub fn direction(&self) -> &'static str {
        match self {
            Self::AnthropicToOpenAi(_) => Crossing::ChatToMessages.as_str(),
            Self::OpenAiToAnthropic(_) => Crossing::MessagesToChat.as_str(),
        }
    }

    /// Upstream events that could not be read (skipped, not passed on).
    pub fn malformed_events(&self) -> u64 {
        match self {
            Self::AnthropicToOpenAi(t) => t.malformed_events(),
            Self::OpenAiToAnthropic(t) => t.malformed_events(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chat_and_messages_cross_and_only_to_the_other_protocol() {
        assert_eq!(
            Crossing::of(Endpoint::ChatCompletions, Provider::Anthropic),
            Some(Crossing::ChatToMessages)
        );
        assert_eq!(
            Crossing::of(Endpoint::Messages, Provider::Openai),
            Some(Crossing::MessagesToChat)
        );
        assert_eq!(
            Crossing::of(Endpoint::Messages, Provider::AzureOpenai),
            Some(Crossing::MessagesToChat)
        );
        assert_eq!(
            Crossing::of(Endpoint::ChatCompletions, Provider::AzureOpenai),
            None
        );
        assert_eq!(Crossing::of(Endpoint::Messages, Provider::Anthropic), None);
        assert!(!Crossing::can_serve(Endpoint::Embeddings, Provider::Anthropic));
        assert!(!Crossing::can_serve(Endpoint::Completions, Provider::Anthropic));
        assert!(Crossing::can_serve(
            Endpoint::ChatCompletions,
            Provider::Anthropic
        ));
    }

    #[test]
    fn an_upstream_error_reaches_the_client_in_its_own_protocol() {
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let (status, body) = client_body(Crossing::ChatToMessages, 529, anthropic, 0).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 503);
        assert!(body["error"]["message"].is_string(), "{body}");
        let openai = br#"{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let (status, body) = client_body(Crossing::MessagesToChat, 429, openai, 0).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["type"].as_str()), (429, Some("error")));
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
}

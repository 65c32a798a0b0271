//! A request answered by an instance of another protocol: an OpenAI chat completion served by an Anthropic
//! instance, an Anthropic message served by an OpenAI-protocol one (OpenAI, Azure OpenAI), or either served by a
//! Gemini instance (an Anthropic message goes by way of OpenAI's shape: Messages → Chat → Gemini, and back). The
//! client's protocol decides what it gets; [`crate::protocol::translate`] does the translating, this file decides
//! when and applies it to the three things that cross: the request ([`upstream_request`], and for Gemini the
//! path that names the model: [`Crossing::upstream_path`]), a whole answer or error ([`client_body`]), and a
//! stream ([`StreamTranslator`]).
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
    self, AnthropicToOpenAiStream, GeminiToOpenAiStream, OpenAiToAnthropicStream, TranslateError,
    TranslatedRequest,
};
use crate::protocol::{Endpoint, Provider};

/// Which way a request crosses, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// A chat completion to an Anthropic instance.
    ChatToMessages,
    /// An Anthropic message to an OpenAI-protocol instance.
    MessagesToChat,
    /// A chat completion to a Gemini instance.
    ChatToGemini,
    /// An Anthropic message to a Gemini instance, by way of a chat completion.
    MessagesToGemini,
}

impl Crossing {
    /// The `direction` label of the translation metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatToMessages => "chat_to_messages",
            Self::MessagesToChat => "messages_to_chat",
            Self::ChatToGemini => "chat_to_gemini",
            Self::MessagesToGemini => "messages_to_gemini",
        }
    }

    /// How `endpoint`'s requests reach `provider`; `None` when they speak the same protocol.
    pub fn of(endpoint: Endpoint, provider: Provider) -> Option<Self> {
        match (endpoint, provider.protocol()) {
            (Endpoint::ChatCompletions, Provider::Anthropic) => Some(Self::ChatToMessages),
            (Endpoint::Messages, Provider::Openai) => Some(Self::MessagesToChat),
            (Endpoint::ChatCompletions, Provider::Gemini) => Some(Self::ChatToGemini),
            (Endpoint::Messages, Provider::Gemini) => Some(Self::MessagesToGemini),
            _ => None,
        }
    }

    /// Whether `endpoint` can be served by instances of `provider`: its own protocol, or a crossing above.
    pub fn can_serve(endpoint: Endpoint, provider: Provider) -> bool {
        endpoint.provider() == provider.protocol() || Self::of(endpoint, provider).is_some()
    }

    /// The gateway endpoint of the upstream's protocol that is called; `None` for Gemini, whose
    /// `generateContent` is no endpoint of this gateway's.
    pub fn upstream_endpoint(self) -> Option<Endpoint> {
        match self {
            Self::ChatToMessages => Some(Endpoint::Messages),
            Self::MessagesToChat => Some(Endpoint::ChatCompletions),
            Self::ChatToGemini | Self::MessagesToGemini => None,
        }
    }

    /// The path called on the instance, relative to its endpoint: the other protocol's endpoint, or Gemini's
    /// `models/{model}:generateContent` (`:streamGenerateContent?alt=sse` for a stream).
    pub fn upstream_path(self, model: &str, stream: bool) -> std::borrow::Cow<'static, str> {
        match (self.upstream_endpoint(), stream) {
            (Some(endpoint), _) => std::borrow::Cow::Borrowed(endpoint.upstream_path()),
            (None, false) => std::borrow::Cow::Owned(format!("models/{model}:generateContent")),
            (None, true) => std::borrow::Cow::Owned(format!("models/{model}:streamGenerateContent?alt=sse")),
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
        Crossing::ChatToGemini => translate::openai_object_to_gemini(&api.body).map(gemini_request),
        Crossing::MessagesToGemini => translate::anthropic_object_to_openai(&api.body).and_then(|chat| {
            let object = chat.body.as_object().ok_or(TranslateError::NotAnObject)?;
            let mut gemini = gemini_request(translate::openai_object_to_gemini(object)?);
            let mut dropped = chat.dropped;
            for name in std::mem::take(&mut gemini.dropped) {
                if !dropped.contains(&name) {
                    dropped.push(name);
                }
            }
            gemini.dropped = dropped;
            gemini.include_usage = true;
            Ok(gemini)
        }),
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
    // Gemini names the model in the path, not the body.
    if let (Some(model), Some(object), Some(_)) = (
        instance.model.as_deref(),
        body.as_object_mut(),
        crossing.upstream_endpoint(),
    ) {
        object.insert("model".to_owned(), Value::String(model.to_owned()));
    }
    let bytes = serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)?;
    Ok(CrossedRequest {
        body: Bytes::from(bytes),
        dropped: (!dropped.is_empty()).then(|| dropped.join(",")),
        include_usage,
    })
}

/// A Gemini request in the shape every crossing's request has.
fn gemini_request(gemini: translate::GeminiRequest) -> TranslatedRequest {
    TranslatedRequest {
        body: gemini.body,
        dropped: gemini.dropped,
        stream: gemini.stream,
        include_usage: gemini.include_usage,
    }
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
/// `model` names the answer when the upstream's does not (Gemini's may not).
pub fn client_body(
    crossing: Crossing,
    status: u16,
    body: &[u8],
    created: i64,
    model: &str,
) -> Result<(u16, Bytes), GatewayError> {
    if (200..300).contains(&status) {
        let answer = match crossing {
            Crossing::ChatToMessages => translate::anthropic_to_openai_answer(body, created),
            Crossing::MessagesToChat => translate::openai_to_anthropic_answer(body),
            Crossing::ChatToGemini => translate::gemini_to_openai_answer(body, model, created),
            Crossing::MessagesToGemini => {
                translate::gemini_to_openai_answer(body, model, created).and_then(|chat| {
                    let bytes = serde_json::to_vec(&chat.body)
                        .map_err(|e| TranslateError::Upstream(e.to_string()))?;
                    translate::openai_to_anthropic_answer(&bytes)
                })
            }
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
        Crossing::ChatToGemini => translate::gemini_error_to_openai(status, body),
        Crossing::MessagesToGemini => translate::gemini_error_to_anthropic(status, body),
    };
    let bytes = serde_json::to_vec(&error.body).map_err(|_| GatewayError::Internal)?;
    Ok((error.status, Bytes::from(bytes)))
}

/// A stream's events translated as they come, for the client's protocol.
#[derive(Debug)]
pub enum StreamTranslator {
    AnthropicToOpenAi(AnthropicToOpenAiStream),
    OpenAiToAnthropic(OpenAiToAnthropicStream),
    GeminiToOpenAi(GeminiToOpenAiStream),
    /// Gemini's events into OpenAI chunks, and those into Anthropic's events.
    GeminiToAnthropic(GeminiToOpenAiStream, OpenAiToAnthropicStream),
}

impl StreamTranslator {
    /// The translator for `crossing`; `include_usage`: the OpenAI client asked for the usage chunk; `model`
    /// names the chunks when the upstream's events do not (Gemini's may not).
    pub fn new(crossing: Crossing, include_usage: bool, created: i64, model: &str) -> Self {
        match crossing {
            Crossing::ChatToMessages => {
                Self::AnthropicToOpenAi(AnthropicToOpenAiStream::new(include_usage, created))
            }
            Crossing::MessagesToChat => Self::OpenAiToAnthropic(OpenAiToAnthropicStream::new()),
            Crossing::ChatToGemini => {
                Self::GeminiToOpenAi(GeminiToOpenAiStream::new(include_usage, created, model))
            }
            // Anthropic's stream reports usage in `message_delta`: the chunks between must carry it.
            Crossing::MessagesToGemini => Self::GeminiToAnthropic(
                GeminiToOpenAiStream::new(true, created, model),
                OpenAiToAnthropicStream::new(),
            ),
        }
    }

    /// The client's frames for one upstream event.
    pub fn push(&mut self, event: Option<&str>, data: &[u8]) -> Vec<u8> {
        match self {
            Self::AnthropicToOpenAi(t) => t.push(event, data),
            Self::OpenAiToAnthropic(t) => t.push(event, data),
            Self::GeminiToOpenAi(t) => t.push(event, data),
            Self::GeminiToAnthropic(gemini, anthropic) => {
                let frames = gemini.push(event, data);
                relay_frames(&frames, anthropic)
            }
        }
    }

    /// The client's last frames once the upstream's stream ended as it should.
    pub fn finish(&mut self) -> Vec<u8> {
        match self {
            Self::AnthropicToOpenAi(t) => t.finish(),
            Self::OpenAiToAnthropic(t) => t.finish(),
            Self::GeminiToOpenAi(t) => t.finish(),
            Self::GeminiToAnthropic(gemini, anthropic) => {
                let frames = gemini.finish();
                let mut out = relay_frames(&frames, anthropic);
                out.extend(anthropic.finish());
                out
            }
        }
    }

    /// The `direction` label of the translation metrics.
    pub fn direction(&self) -> &'static str {
        match self {
            Self::AnthropicToOpenAi(_) => Crossing::ChatToMessages.as_str(),
            Self::OpenAiToAnthropic(_) => Crossing::MessagesToChat.as_str(),
            Self::GeminiToOpenAi(_) => Crossing::ChatToGemini.as_str(),
            Self::GeminiToAnthropic(..) => Crossing::MessagesToGemini.as_str(),
        }
    }

    /// Upstream events that could not be read (skipped, not passed on).
    pub fn malformed_events(&self) -> u64 {
        match self {
            Self::AnthropicToOpenAi(t) => t.malformed_events(),
            Self::OpenAiToAnthropic(t) => t.malformed_events(),
            Self::GeminiToOpenAi(t) => t.malformed_events(),
            Self::GeminiToAnthropic(gemini, anthropic) => gemini
                .malformed_events()
                .saturating_add(anthropic.malformed_events()),
        }
    }
}

/// OpenAI SSE frames (`data: …` events separated by blank lines, as [`GeminiToOpenAiStream`] writes them) fed
/// one event at a time to the OpenAI → Anthropic translator; its frames out.
fn relay_frames(frames: &[u8], anthropic: &mut OpenAiToAnthropicStream) -> Vec<u8> {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(frames);
    for event in text.split("\n\n") {
        if let Some(data) = event.trim_start().strip_prefix("data:") {
            out.extend(anthropic.push(None, data.trim_start().as_bytes()));
        }
    }
    out
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
        let (status, body) = client_body(Crossing::ChatToMessages, 529, anthropic, 0, "m").unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 503);
        assert!(body["error"]["message"].is_string(), "{body}");
        let openai = br#"{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let (status, body) = client_body(Crossing::MessagesToChat, 429, openai, 0, "m").unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["type"].as_str()), (429, Some("error")));
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let gemini = br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        let (status, body) = client_body(Crossing::MessagesToGemini, 503, gemini, 0, "m").unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["type"].as_str()), (529, Some("error")), "{body}");
    }

    #[test]
    fn gemini_is_called_by_model_in_the_path_for_chat_and_for_messages() {
        assert_eq!(
            Crossing::of(Endpoint::Messages, Provider::Gemini),
            Some(Crossing::MessagesToGemini)
        );
        assert!(!Crossing::can_serve(Endpoint::Responses, Provider::Gemini));
        assert!(!Crossing::can_serve(Endpoint::Embeddings, Provider::Gemini));
        assert_eq!(
            Crossing::ChatToGemini.upstream_path("gemini-2.5-flash", false),
            "models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            Crossing::MessagesToGemini.upstream_path("gemini-2.5-flash", true),
            "models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            Crossing::MessagesToChat.upstream_path("x", true),
            "chat/completions"
        );
    }

    #[test]
    fn an_anthropic_stream_from_gemini_goes_through_openais_chunks_to_anthropics_events() {
        let mut translator = StreamTranslator::new(Crossing::MessagesToGemini, false, 0, "gemini-2.5-flash");
        let mut out = translator.push(
            None,
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi "}]}}],"modelVersion":"gemini-2.5-flash"}"#,
        );
        out.extend(translator.push(
            None,
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"there"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7}}"#,
        ));
        out.extend(translator.finish());
        let text = String::from_utf8(out).unwrap();
        for event in [
            "message_start",
            "content_block_delta",
            "message_delta",
            "message_stop",
        ] {
            assert!(text.contains(&format!("event: {event}")), "{event}: {text}");
        }
        assert!(text.contains(r#""output_tokens":2"#), "{text}");
        assert_eq!(translator.malformed_events(), 0);
    }
}

//! What a streamed answer consumed, read off its events as they pass on their way to the client: an OpenAI chat
//! (or legacy) completion's chunks, an Anthropic message's events, an OpenAI Responses API stream's events, a
//! Gemini `streamGenerateContent` stream's responses ([`StreamMeter`] picks by the upstream's protocol and
//! endpoint). In come parsed SSE events
//! ([`crate::metering::sse::SseEvent`]) in stream order; out come what each one was ([`Observed`]), the
//! completion text streamed so far, the provider's usage if an event carried one, and whether the stream ended
//! as its protocol ends one (`[DONE]`, `message_stop`, `response.completed`).
//!
//! Memory: the completion text is the only thing that grows with the stream; everything else is a few counters.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::metering::sse::SseEvent;
use crate::protocol::usage::{self, AnthropicUsage, GeminiUsage, Usage};
use crate::protocol::{Endpoint, Provider};

/// Accumulates a streamed chat completion as its events pass.
#[derive(Debug, Default)]
pub struct ChatStreamAccumulator {
    text: String,
    /// The `model` of the first chunk that named one: the model that answered.
    model: Option<String>,
    usage: Option<Usage>,
    done: bool,
    chunks: u64,
}

/// What one event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A normal chunk (or a comment, an event without data, data that is not JSON): forward it.
    Chunk,
    /// The usage-only chunk OpenAI sends last when `stream_options.include_usage` is set (`"choices": []` with a
    /// `usage` object).
    UsageOnly,
    /// `data: [DONE]`.
    Done,
    /// An error in the stream: `{"error": {...}}` as some providers send mid-stream, or an `event: error`.
    Error,
}

/// The parts of a `chat.completion.chunk` that are metered; everything else is ignored. Strings borrow the
/// event's data when they hold no escapes (the usual case), so reading a chunk allocates only its lists.
#[derive(Deserialize)]
struct RawChunk<'a> {
    /// Read on every chunk, kept only from the first.
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<RawChoice<'a>>>,
    usage: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(borrow)]
    delta: Option<RawDelta<'a>>,
    /// Legacy completions (`/v1/completions`) stream their text here instead of in a delta.
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<RawToolCall<'a>>>,
    /// The deprecated `functions` API's single call.
    #[serde(borrow)]
    function_call: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawToolCall<'a> {
    #[serde(borrow)]
    function: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

impl ChatStreamAccumulator {
    /// Reads one event. Data that is not JSON (other than `[DONE]`) is counted but is not an error: it is
    /// forwarded as a [`Observed::Chunk`].
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let is_error_event = event.event.as_deref() == Some("error");
        let Some(data) = event.data.as_deref() else {
            return if is_error_event {
                Observed::Error
            } else {
                Observed::Chunk
            };
        };
        if data.trim() == "[DONE]" {
            self.done = true;
            return Observed::Done;
        }
        self.chunks += 1;
        let Ok(chunk) = serde_json::from_str::<RawChunk>(data) else {
            return if is_error_event {
                Observed::Error
            } else {
                Observed::Chunk
            };
        };
        if self.model.is_none()
            && let Some(model) = chunk.model.filter(|m| !m.is_empty())
        {
            self.model = Some(model.into_owned());
        }
        let has_choices = chunk.choices.as_ref().is_some_and(|c| !c.is_empty());
        for choice in chunk.choices.into_iter().flatten() {
            if let Some(text) = choice.text {
                self.text.push_str(&text);
            }
            let Some(delta) = choice.delta else { continue };
            self.append(delta);
        }
        let has_usage = chunk.usage.is_some();
        if has_usage && let Some(usage) = usage::from_response_body(data.as_bytes()) {
            self.usage = Some(usage);
        }
        if is_error_event || chunk.error.is_some() {
            Observed::Error
        } else if has_usage && !has_choices {
            Observed::UsageOnly
        } else {
            Observed::Chunk
        }
    }

    /// The completion text so far: every choice's `delta.content`, `delta.refusal`, and
    /// `delta.tool_calls[].function.name` and `.arguments` (and the deprecated `delta.function_call`'s), in
    /// arrival order, all choices (n > 1) concatenated in arrival order.
    pub fn completion_text(&self) -> &str {
        &self.text
    }

    /// The provider's usage, if a chunk carried one (any chunk may carry `usage`; the last non-null one wins).
    pub fn provider_usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` was seen: the stream ended as the provider meant it to.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Events that carried data, other than `[DONE]`, whether or not it was JSON.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    fn append(&mut self, delta: RawDelta<'_>) {
        let calls = delta
            .tool_calls
            .into_iter()
            .flatten()
            .filter_map(|call| call.function);
        let functions = delta.function_call.into_iter().chain(calls);
        let pieces = [delta.content, delta.refusal]
            .into_iter()
            .chain(functions.flat_map(|f| [f.name, f.arguments]))
            .flatten();
        for piece in pieces {
            self.text.push_str(&piece);
        }
    }
}

/// What an Anthropic Messages stream consumed: `message_start` carries the input (and cache) tokens,
/// `content_block_delta` the text (`text_delta`, `input_json_delta` of tool calls, `thinking_delta`), each
/// `message_delta` the output tokens so far, and `message_stop` ends it.
#[derive(Debug, Default)]
pub struct AnthropicStreamAccumulator {
    text: String,
    /// Whether a `message_delta` reported the output tokens: until then, `message_start`'s figure (1) is
    /// provisional.
    output_final: bool,
    /// `message_start`'s `message.model`: the model that answered.
    model: Option<String>,
    usage: Option<AnthropicUsage>,
    done: bool,
    chunks: u64,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<AnthropicMessage>,
    delta: Option<AnthropicDelta>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    model: Option<String>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicDelta {
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
}

impl AnthropicStreamAccumulator {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let Some(data) = event.data.as_deref() else {
            return Observed::Chunk;
        };
        self.chunks += 1;
        let Ok(parsed) = serde_json::from_str::<AnthropicEvent>(data) else {
            return Observed::Chunk;
        };
        match parsed.kind.as_deref() {
            Some("message_start") => {
                if let Some(message) = parsed.message {
                    if let Some(usage) = message.usage {
                        self.usage = Some(usage);
                    }
                    self.model = message.model.filter(|m| !m.is_empty()).or(self.model.take());
                }
            }
            Some("content_block_delta") => {
                if let Some(delta) = parsed.delta {
                    for piece in [delta.text, delta.partial_json, delta.thinking]
                        .into_iter()
                        .flatten()
                    {
                        self.text.push_str(&piece);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(update) = parsed.usage {
                    // Output tokens are cumulative; input figures may be repeated: the latest value wins.
                    let usage = self.usage.get_or_insert_with(AnthropicUsage::default);
                    usage.output_tokens = update.output_tokens.or(usage.output_tokens);
                    self.output_final |= update.output_tokens.is_some();
                    usage.input_tokens = update.input_tokens.or(usage.input_tokens);
                    usage.cache_creation_input_tokens = update
                        .cache_creation_input_tokens
                        .or(usage.cache_creation_input_tokens);
                    usage.cache_read_input_tokens =
                        update.cache_read_input_tokens.or(usage.cache_read_input_tokens);
                    usage.cache_creation = update.cache_creation.or(usage.cache_creation);
                }
            }
            Some("message_stop") => {
                self.done = true;
                return Observed::Done;
            }
            Some("error") => return Observed::Error,
            _ => {}
        }
        Observed::Chunk
    }
}

/// What a Responses API stream consumed: `response.created` names the model; the `*.delta` events of output
/// text, refusals, function-call arguments and reasoning carry the text (a function call's name comes with its
/// `response.output_item.added`); `response.completed` — or `response.incomplete` (a limit was reached) or
/// `response.failed` — ends it and carries the whole response with its `usage`.
#[derive(Debug, Default)]
pub struct ResponsesStreamAccumulator {
    text: String,
    model: Option<String>,
    usage: Option<Usage>,
    done: bool,
    chunks: u64,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    delta: Option<String>,
    item: Option<ResponsesItem>,
    response: Option<ResponsesSnapshot>,
}

#[derive(Deserialize)]
struct ResponsesItem {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct ResponsesSnapshot {
    model: Option<String>,
    usage: Option<serde_json::Value>,
}

impl ResponsesStreamAccumulator {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let Some(data) = event.data.as_deref() else {
            return Observed::Chunk;
        };
        self.chunks += 1;
        let Ok(parsed) = serde_json::from_str::<ResponsesEvent>(data) else {
            return if event.event.as_deref() == Some("error") {
                Observed::Error
            } else {
                Observed::Chunk
            };
        };
        if let Some(response) = parsed.response {
            if let Some(model) = response.model.filter(|m| !m.is_empty()) {
                self.model = Some(model);
            }
            if let Some(usage) = response.usage.and_then(usage::from_openai_usage) {
                self.usage = Some(usage);
            }
        }
        match parsed.kind.as_deref() {
            Some(
                "response.output_text.delta"
                | "response.refusal.delta"
                | "response.function_call_arguments.delta"
                | "response.reasoning_summary_text.delta"
                | "response.reasoning_text.delta",
            ) => {
                if let Some(delta) = parsed.delta {
                    self.text.push_str(&delta);
                }
            }
            Some("response.output_item.added") => {
                if let Some(item) = parsed.item
                    && item.kind.as_deref() == Some("function_call")
                    && let Some(name) = item.name
                {
                    self.text.push_str(&name);
                }
            }
            Some("response.completed" | "response.incomplete") => {
                self.done = true;
                return Observed::Done;
            }
            Some("response.failed") => {
                self.done = true;
                return Observed::Error;
            }
            Some("error") => return Observed::Error,
            _ => {}
        }
        Observed::Chunk
    }
}

/// What a Gemini stream (`streamGenerateContent?alt=sse`) consumed: each event is a whole
/// `GenerateContentResponse` with the next parts of each candidate — their text (thoughts included) and
/// function calls are the completion — and `usageMetadata`, whose latest figures win. Gemini ends a stream by
/// closing it: it ended as it should once a candidate gave its `finishReason` (or the prompt was blocked).
#[derive(Debug, Default)]
pub struct GeminiStreamAccumulator {
    text: String,
    model: Option<String>,
    usage: Option<Usage>,
    done: bool,
    chunks: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiEvent {
    model_version: Option<String>,
    usage_metadata: Option<GeminiUsage>,
    candidates: Option<Vec<serde_json::Value>>,
    prompt_feedback: Option<GeminiFeedback>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiFeedback {
    block_reason: Option<String>,
}

impl GeminiStreamAccumulator {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let Some(data) = event.data.as_deref() else {
            return Observed::Chunk;
        };
        self.chunks += 1;
        let Ok(parsed) = serde_json::from_str::<GeminiEvent>(data) else {
            return Observed::Chunk;
        };
        if parsed.error.is_some() {
            return Observed::Error;
        }
        if let Some(model) = parsed.model_version.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = parsed.usage_metadata.and_then(GeminiUsage::reported) {
            self.usage = Some(usage);
        }
        for candidate in parsed.candidates.iter().flatten() {
            usage::gemini_parts_text(candidate, &mut self.text);
            if candidate.get("finishReason").is_some_and(|r| !r.is_null()) {
                self.done = true;
            }
        }
        if parsed.prompt_feedback.is_some_and(|f| f.block_reason.is_some()) {
            self.done = true;
        }
        Observed::Chunk
    }
}

/// The accumulator for a stream of either protocol, as the tee uses it (and, when the tee is dropped before it
/// ends, the settlement of what it had seen: [`crate::pipeline::settle::Ledger`]).
#[derive(Debug)]
pub enum StreamMeter {
    OpenAi(ChatStreamAccumulator),
    Anthropic(AnthropicStreamAccumulator),
    Responses(ResponsesStreamAccumulator),
    Gemini(GeminiStreamAccumulator),
}

impl StreamMeter {
    /// The accumulator for a stream from an instance of `provider` called on `endpoint` (the upstream's: a
    /// translated request is metered in the protocol that answered it).
    pub fn new(provider: Provider, endpoint: Endpoint) -> Self {
        match (provider.protocol(), endpoint) {
            (Provider::Anthropic, _) => Self::Anthropic(AnthropicStreamAccumulator::default()),
            (Provider::Gemini, _) => Self::Gemini(GeminiStreamAccumulator::default()),
            (_, Endpoint::Responses) => Self::Responses(ResponsesStreamAccumulator::default()),
            _ => Self::OpenAi(ChatStreamAccumulator::default()),
        }
    }

    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        match self {
            Self::OpenAi(a) => a.observe(event),
            Self::Anthropic(a) => a.observe(event),
            Self::Responses(a) => a.observe(event),
            Self::Gemini(a) => a.observe(event),
        }
    }

    pub fn completion_text(&self) -> &str {
        match self {
            Self::OpenAi(a) => a.completion_text(),
            Self::Anthropic(a) => &a.text,
            Self::Responses(a) => &a.text,
            Self::Gemini(a) => &a.text,
        }
    }

    pub fn provider_usage(&self) -> Option<Usage> {
        match self {
            Self::OpenAi(a) => a.provider_usage(),
            Self::Anthropic(a) => a
                .usage
                .filter(|u| u.input_tokens.is_some())
                .map(AnthropicUsage::to_usage),
            Self::Responses(a) => a.usage,
            Self::Gemini(a) => a.usage,
        }
    }

    /// The provider's usage when it is final — OpenAI's usage chunk, Anthropic's output tokens in a
    /// `message_delta` — and not a provisional figure such as `message_start`'s one output token.
    pub fn final_usage(&self) -> Option<Usage> {
        match self {
            Self::OpenAi(a) => a.provider_usage(),
            Self::Anthropic(a) if a.output_final => self.provider_usage(),
            Self::Anthropic(_) => None,
            // Only the final events carry the response's usage.
            Self::Responses(a) => a.usage,
            // Gemini's figures grow with the stream: final once it ended as it should.
            Self::Gemini(a) if a.done => a.usage,
            Self::Gemini(_) => None,
        }
    }

    /// The model the stream says answered, when it named one.
    pub fn served_model(&self) -> Option<&str> {
        match self {
            Self::OpenAi(a) => a.model.as_deref(),
            Self::Anthropic(a) => a.model.as_deref(),
            Self::Responses(a) => a.model.as_deref(),
            Self::Gemini(a) => a.model.as_deref(),
        }
    }

    pub fn saw_done(&self) -> bool {
        match self {
            Self::OpenAi(a) => a.saw_done(),
            Self::Anthropic(a) => a.done,
            Self::Responses(a) => a.done,
            Self::Gemini(a) => a.done,
        }
    }

    pub fn chunks(&self) -> u64 {
        match self {
            Self::OpenAi(a) => a.chunks(),
            Self::Anthropic(a) => a.chunks,
            Self::Responses(a) => a.chunks,
            Self::Gemini(a) => a.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anthropic_stream_bills_input_cache_and_output_tokens_and_ends_at_message_stop() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-5","usage":{"input_tokens":25,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        ];
        let mut meter = StreamMeter::new(Provider::Anthropic, Endpoint::Messages);
        for e in events {
            assert_eq!(
                meter.observe(&SseEvent {
                    data: Some(e.into()),
                    ..SseEvent::default()
                }),
                Observed::Chunk
            );
        }
        assert!(!meter.saw_done());
        let stop = SseEvent {
            data: Some(r#"{"type":"message_stop"}"#.into()),
            ..SseEvent::default()
        };
        assert_eq!(meter.observe(&stop), Observed::Done);
        assert!(meter.saw_done());
        assert_eq!(meter.completion_text(), "Hello{\"a\":1}");
        let usage = meter.final_usage().unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (125, 15, 140)
        );
        assert_eq!(meter.served_model(), Some("claude-sonnet-4-5"));
    }

    #[test]
    fn a_responses_stream_counts_its_deltas_and_bills_response_completed() {
        let events = [
            (
                "response.created",
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"gpt-4.1-mini-2025-04-14","status":"in_progress","usage":null}}"#,
            ),
            (
                "response.output_item.added",
                r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","name":"get_weather","arguments":""}}"#,
            ),
            (
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","delta":"{\"city\":1}"}"#,
            ),
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
            ),
            (
                "response.reasoning_summary_text.delta",
                r#"{"type":"response.reasoning_summary_text.delta","delta":"hm"}"#,
            ),
        ];
        let mut meter = StreamMeter::new(Provider::AzureOpenai, Endpoint::Responses);
        for (name, e) in events {
            let event = SseEvent {
                event: Some(name.into()),
                data: Some(e.into()),
                ..SseEvent::default()
            };
            assert_eq!(meter.observe(&event), Observed::Chunk);
        }
        assert!(!meter.saw_done());
        assert!(meter.final_usage().is_none(), "no usage before the end");
        assert_eq!(meter.completion_text(), "get_weather{\"city\":1}Hihm");
        let completed = SseEvent {
            event: Some("response.completed".into()),
            data: Some(
                r#"{"type":"response.completed","response":{"model":"gpt-4.1-mini-2025-04-14","status":"completed",
                "usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":32},"output_tokens":25,
                "output_tokens_details":{"reasoning_tokens":9},"total_tokens":65}}}"#
                    .into(),
            ),
            ..SseEvent::default()
        };
        assert_eq!(meter.observe(&completed), Observed::Done);
        assert!(meter.saw_done());
        let usage = meter.final_usage().unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (40, 25, 65)
        );
        assert_eq!(
            (usage.cached_prompt_tokens, usage.reasoning_tokens),
            (Some(32), Some(9))
        );
        assert_eq!(meter.served_model(), Some("gpt-4.1-mini-2025-04-14"));
    }

    #[test]
    fn a_gemini_stream_counts_its_parts_and_bills_the_latest_usage_once_a_candidate_finished() {
        let mut meter = StreamMeter::new(Provider::Gemini, Endpoint::ChatCompletions);
        let chunks = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1},"modelVersion":"gemini-2.5-flash"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"},{"functionCall":{"name":"f","args":{}}}]}}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3}}"#,
        ];
        for chunk in chunks {
            assert_eq!(meter.observe(&data(chunk)), Observed::Chunk);
        }
        assert!(!meter.saw_done());
        assert!(meter.final_usage().is_none(), "provisional until the end");
        assert_eq!(meter.provider_usage().map(|u| u.completion_tokens), Some(3));
        let last = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"!"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"thoughtsTokenCount":20,"totalTokenCount":33}}"#;
        meter.observe(&data(last));
        assert!(meter.saw_done());
        assert_eq!(meter.completion_text(), "Hellof{}!");
        let usage = meter.final_usage().unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens
            ),
            (9, 24, Some(20))
        );
        assert_eq!(meter.served_model(), Some("gemini-2.5-flash"));
        assert_eq!(
            meter.observe(&data(
                r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#
            )),
            Observed::Error
        );
    }

    #[test]
    fn a_failed_response_ends_the_stream_as_an_error() {
        let mut meter = StreamMeter::new(Provider::Openai, Endpoint::Responses);
        let failed = SseEvent {
            data: Some(r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"x"}}}"#.into()),
            ..SseEvent::default()
        };
        assert_eq!(meter.observe(&failed), Observed::Error);
        assert!(meter.saw_done());
        assert!(meter.final_usage().is_none());
    }

    #[test]
    fn anthropics_output_tokens_are_provisional_until_a_message_delta_reports_them() {
        let mut meter = StreamMeter::new(Provider::Anthropic, Endpoint::Messages);
        for e in [
            r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            meter.observe(&SseEvent {
                data: Some(e.into()),
                ..SseEvent::default()
            });
        }
        assert!(meter.saw_done());
        assert_eq!(meter.provider_usage().map(|u| u.completion_tokens), Some(1));
        assert_eq!(
            meter.final_usage(),
            None,
            "one output token is message_start's placeholder"
        );
    }

    use crate::metering::sse::tests::{cut_at, openai_stream};
    use crate::metering::sse::{EventSplitter, parse_event};
    use proptest::prelude::*;
    use tollgate_schemas::UsageSource;

    fn data(json: &str) -> SseEvent<'_> {
        SseEvent {
            data: Some(json.into()),
            ..SseEvent::default()
        }
    }

    /// What the accumulator made of `pieces` pushed through a splitter, and what each event was.
    fn accumulate(pieces: &[Vec<u8>]) -> (ChatStreamAccumulator, Vec<Observed>) {
        let mut splitter = EventSplitter::new(1 << 16);
        let mut accumulator = ChatStreamAccumulator::default();
        let mut observed = Vec::new();
        for piece in pieces {
            for raw in splitter.push(piece).unwrap() {
                observed.push(accumulator.observe(&parse_event(&raw)));
            }
        }
        assert!(splitter.remainder().is_empty());
        (accumulator, observed)
    }

    #[test]
    fn the_official_usage_chunk_is_usage_only() {
        let mut acc = ChatStreamAccumulator::default();
        let chunk = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
        assert_eq!(acc.observe(&data(chunk)), Observed::UsageOnly);
        assert_eq!(
            acc.provider_usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 12,
                total_tokens: 21,
                cached_prompt_tokens: None,
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                source: UsageSource::Provider,
            })
        );
        assert_eq!(acc.chunks(), 1);
    }

    #[test]
    fn a_chunk_with_choices_and_usage_is_a_chunk_whose_usage_counts() {
        let mut acc = ChatStreamAccumulator::default();
        let chunk = r#"{"choices":[{"index":0,"delta":{"content":"hi"}}],
            "usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        assert_eq!(acc.observe(&data(chunk)), Observed::Chunk);
        let usage = acc.provider_usage().unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (3, 1, 4)
        );
        assert_eq!(usage.cached_prompt_tokens, Some(2));
        assert_eq!(acc.completion_text(), "hi");
    }

    #[test]
    fn the_last_non_null_usage_wins() {
        let mut acc = ChatStreamAccumulator::default();
        acc.observe(&data(
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        ));
        acc.observe(&data(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
        ));
        assert_eq!(
            acc.observe(&data(r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#)),
            Observed::Chunk
        );
        assert_eq!(acc.provider_usage().map(|u| u.total_tokens), Some(11));
    }

    #[test]
    fn done_ends_the_stream() {
        let mut acc = ChatStreamAccumulator::default();
        assert!(!acc.saw_done());
        assert_eq!(acc.observe(&data("[DONE]")), Observed::Done);
        assert!(acc.saw_done());
        assert_eq!(acc.chunks(), 0);
    }

    #[test]
    fn an_error_in_the_stream_is_an_error() {
        let mut acc = ChatStreamAccumulator::default();
        let error = r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
        assert_eq!(acc.observe(&data(error)), Observed::Error);
        let named = SseEvent {
            event: Some("error".into()),
            data: Some("upstream overloaded".into()),
            id: None,
        };
        assert_eq!(acc.observe(&named), Observed::Error);
        assert_eq!(
            acc.observe(&data(r#"{"error":null,"choices":[]}"#)),
            Observed::Chunk
        );
        assert!(!acc.saw_done());
    }

    #[test]
    fn comments_and_garbage_are_forwarded_as_chunks() {
        let mut acc = ChatStreamAccumulator::default();
        assert_eq!(acc.observe(&parse_event(b": keep-alive\n\n")), Observed::Chunk);
        assert_eq!(acc.chunks(), 0, "an event without data is not a chunk");
        assert_eq!(acc.observe(&data("<html>")), Observed::Chunk);
        assert_eq!(acc.observe(&data(r#"{"choices":"not a list"}"#)), Observed::Chunk);
        assert_eq!(
            acc.observe(&data(r#"{"choices":[{"delta":{"content":"x"}}]"#)),
            Observed::Chunk
        );
        assert_eq!(acc.chunks(), 3);
        assert_eq!(acc.completion_text(), "");
        assert_eq!(acc.provider_usage(), None);
    }

    #[test]
    fn text_is_content_refusal_and_function_calls_in_arrival_order() {
        let mut acc = ChatStreamAccumulator::default();
        for chunk in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"refusal":"b"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{"}},
                {"index":1,"function":{"name":"g","arguments":"["}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"h","arguments":"(x)"}}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ] {
            assert_eq!(acc.observe(&data(chunk)), Observed::Chunk);
        }
        assert_eq!(acc.completion_text(), "abf{g[h(x)");
    }

    proptest! {
        #[test]
        fn the_openai_stream_meters_the_same_under_every_split(
            points in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let stream = openai_stream();
            let (whole, whole_observed) = accumulate(std::slice::from_ref(&stream));
            let (acc, observed) = accumulate(&cut_at(&stream, &points));

            // Written out by hand from the fixture: choice 0's and choice 1's deltas in the order they arrived.
            let expected = concat!(
                "héllo ",
                "wörld 🚀 ",
                "日本語",
                "Ño.",
                "get_weather",
                r#"{"city":"#,
                r#""Zürich"}"#,
            );
            prop_assert_eq!(whole.completion_text(), expected);
            prop_assert_eq!(acc.completion_text(), expected);

            let usage = Usage {
                prompt_tokens: 9,
                completion_tokens: 12,
                total_tokens: 21,
                cached_prompt_tokens: Some(4),
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                source: UsageSource::Provider,
            };
            prop_assert_eq!(whole.provider_usage(), Some(usage));
            prop_assert_eq!(acc.provider_usage(), Some(usage));
            prop_assert!(whole.saw_done() && acc.saw_done());
            prop_assert_eq!(acc.chunks(), 9);
            prop_assert_eq!(acc.chunks(), whole.chunks());

            use Observed::{Chunk, Done, UsageOnly};
            let expected_observed = [Chunk, Chunk, Chunk, Chunk, Chunk, Chunk, Chunk, Chunk, Chunk, Chunk, UsageOnly, Done];
            prop_assert_eq!(&whole_observed, &expected_observed);
            prop_assert_eq!(&observed, &expected_observed);
        }
    }
}

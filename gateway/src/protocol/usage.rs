//! Reading what a provider says a request consumed: the `usage` block of an OpenAI-compatible response
//! (`prompt_tokens`, `completion_tokens`, `total_tokens`, `prompt_tokens_details.cached_tokens`; the Responses
//! API's `input_tokens` and `output_tokens`), Anthropic's (`input_tokens`, cache writes and reads,
//! `output_tokens`) or Gemini's `usageMetadata` (prompt, cached, candidates and thinking tokens), the model that answered, the completion text of a
//! whole answer (counted when the provider reported no usage), and the rule that settles the numbers billed when
//! an answer ended early or said nothing ([`at_least_streamed`], [`estimated`]).

use serde::Deserialize;
use tollgate_schemas::UsageSource;

use crate::protocol::Provider;

/// The token numbers billed for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_prompt_tokens: Option<u32>,
    /// Of `completion_tokens`, those spent reasoning (OpenAI's `completion_tokens_details.reasoning_tokens`).
    pub reasoning_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the prompt cache for 5 minutes (Anthropic's
    /// `cache_creation.ephemeral_5m_input_tokens`, or all of `cache_creation_input_tokens` when not split).
    pub cache_write_5m_tokens: Option<u32>,
    /// Of `prompt_tokens`, those written to the prompt cache for an hour (`ephemeral_1h_input_tokens`).
    pub cache_write_1h_tokens: Option<u32>,
    pub source: UsageSource,
}

/// A whole OpenAI answer or a stream chunk: the fields read from it.
#[derive(Deserialize)]
struct Envelope {
    model: Option<String>,
    usage: Option<RawUsage>,
}

/// What a whole answer says about itself: its usage (when reported) and the model that produced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerFacts {
    pub usage: Option<Usage>,
    pub model: Option<String>,
}

/// The usage and the served model of a whole answer in `provider`'s protocol, read in one pass; nothing for a
/// body that is not JSON.
pub fn read_answer(provider: Provider, body: &[u8]) -> AnswerFacts {
    let (model, usage) = match provider {
        Provider::Openai | Provider::AzureOpenai => match serde_json::from_slice::<Envelope>(body) {
            Ok(answer) => (answer.model, answer.usage.and_then(RawUsage::reported)),
            Err(_) => (None, None),
        },
        Provider::Anthropic => match serde_json::from_slice::<AnthropicEnvelope>(body) {
            Ok(answer) => (answer.model, answer.usage.and_then(AnthropicUsage::reported)),
            Err(_) => (None, None),
        },
        Provider::Gemini => match serde_json::from_slice::<GeminiEnvelope>(body) {
            Ok(answer) => (
                answer.model_version,
                answer.usage_metadata.and_then(GeminiUsage::reported),
            ),
            Err(_) => (None, None),
        },
    };
    AnswerFacts {
        usage,
        model: model.filter(|m| !m.is_empty()),
    }
}

/// The generated text of a whole answer, as a stream of it would be counted: OpenAI chat choices' `content`,
/// `refusal` and tool-call (or `function_call`) names and arguments, legacy completions' `text`, Responses API
/// output items' text, refusals, reasoning summaries and function calls' names and arguments; Anthropic
/// content blocks' `text`, `thinking` and tool-use `name` and `input` (as JSON). `None` for a body that is not
/// JSON: there is nothing to count, only to estimate.
pub fn completion_text(provider: Provider, body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let mut text = String::new();
    let mut push = |piece: Option<&serde_json::Value>| {
        if let Some(s) = piece.and_then(serde_json::Value::as_str) {
            text.push_str(s);
        }
    };
    match provider {
        Provider::Openai | Provider::AzureOpenai => {
            for choice in value
                .get("choices")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
            {
                push(choice.get("text"));
                let Some(message) = choice.get("message") else {
                    continue;
                };
                push(message.get("content"));
                push(message.get("refusal"));
                let calls = message
                    .get("tool_calls")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten();
                for function in calls
                    .filter_map(|c| c.get("function"))
                    .chain(message.get("function_call"))
                {
                    push(function.get("name"));
                    push(function.get("arguments"));
                }
            }
            // A Responses API answer: its output items.
            for item in value
                .get("output")
                .and_then(|o| o.as_array())
                .into_iter()
                .flatten()
            {
                for part in item
                    .get("content")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                {
                    push(part.get("text"));
                    push(part.get("refusal"));
                }
                for summary in item
                    .get("summary")
                    .and_then(|s| s.as_array())
                    .into_iter()
                    .flatten()
                {
                    push(summary.get("text"));
                }
                if item.get("type").and_then(serde_json::Value::as_str) == Some("function_call") {
                    push(item.get("name"));
                    push(item.get("arguments"));
                }
            }
        }
        Provider::Gemini => {
            for candidate in value
                .get("candidates")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
            {
                gemini_parts_text(candidate, &mut text);
            }
        }
        Provider::Anthropic => {
            for block in value
                .get("content")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
            {
                push(block.get("text"));
                push(block.get("thinking"));
                if block.get("type").and_then(serde_json::Value::as_str) == Some("tool_use") {
                    push(block.get("name"));
                    let input = block.get("input").map(serde_json::Value::to_string);
                    push(input.map(serde_json::Value::String).as_ref());
                }
            }
        }
    }
    Some(text)
}

/// What is billed for an answer whose provider figures are missing or may be short (a stream that ended early,
/// an answer without usage): the prompt as the provider reported it, else the estimate; completion tokens the
/// larger of the provider's figure so far and `counted`, the exact count of what was generated (`counted_source`
/// says how it was counted). So an early end never bills less than what was streamed.
pub fn at_least_streamed(
    provider: Option<Usage>,
    prompt_estimate: u32,
    counted: u32,
    counted_source: UsageSource,
) -> Usage {
    let prompt_tokens = provider.map_or(prompt_estimate, |u| u.prompt_tokens);
    let reported = provider.map_or(0, |u| u.completion_tokens);
    let (completion_tokens, source) = match provider {
        Some(_) if reported >= counted => (reported, UsageSource::Provider),
        _ => (counted, counted_source),
    };
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        cached_prompt_tokens: provider.and_then(|u| u.cached_prompt_tokens),
        reasoning_tokens: provider.and_then(|u| u.reasoning_tokens),
        cache_write_5m_tokens: provider.and_then(|u| u.cache_write_5m_tokens),
        cache_write_1h_tokens: provider.and_then(|u| u.cache_write_1h_tokens),
        source,
    }
}

/// An OpenAI `usage` object: Chat Completions' names, or the Responses API's (`input_tokens`, `output_tokens`
/// and their `_details`), which mean the same.
#[derive(Deserialize)]
struct RawUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u32>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u32>,
    total_tokens: Option<u32>,
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(alias = "output_tokens_details")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u32>,
}

/// The provider's usage in a JSON response body, if it reported one.
pub fn from_response_body(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<Envelope>(body).ok()?.usage?.reported()
}

/// The usage an OpenAI `usage` object reports (Chat Completions' or the Responses API's names), if it does.
pub fn from_openai_usage(usage: serde_json::Value) -> Option<Usage> {
    serde_json::from_value::<RawUsage>(usage).ok()?.reported()
}

impl RawUsage {
    /// The usage billed, when the block reports prompt or completion tokens.
    fn reported(self) -> Option<Usage> {
        if self.prompt_tokens.is_none() && self.completion_tokens.is_none() {
            return None;
        }
        let prompt_tokens = self.prompt_tokens.unwrap_or(0);
        let completion_tokens = self.completion_tokens.unwrap_or(0);
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: self
                .total_tokens
                .unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
            cached_prompt_tokens: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: self.completion_tokens_details.and_then(|d| d.reasoning_tokens),
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            source: UsageSource::Provider,
        })
    }
}

#[derive(Deserialize)]
struct AnthropicEnvelope {
    model: Option<String>,
    usage: Option<AnthropicUsage>,
}

/// Anthropic's usage object: input (uncached), cache writes, cache reads, output.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct AnthropicUsage {
    pub input_tokens: Option<u32>,
    pub cache_creation_input_tokens: Option<u32>,
    pub cache_read_input_tokens: Option<u32>,
    /// The cache writes split by lifetime, when the provider splits them.
    pub cache_creation: Option<CacheCreation>,
    pub output_tokens: Option<u32>,
}

/// Anthropic's `usage.cache_creation`: the tokens written to the prompt cache, by lifetime.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct CacheCreation {
    pub ephemeral_5m_input_tokens: Option<u32>,
    pub ephemeral_1h_input_tokens: Option<u32>,
}

impl AnthropicUsage {
    /// The usage billed, when the object reports input or output tokens.
    fn reported(self) -> Option<Usage> {
        (self.input_tokens.is_some() || self.output_tokens.is_some()).then(|| self.to_usage())
    }

    /// As billed: every prompt token — uncached, written to and read from the cache — is a prompt token, and the
    /// total includes them (not only the output, as some gateways count Anthropic streams). Cache writes are
    /// split by lifetime when the provider says (`cache_creation`), otherwise they are all the default 5-minute
    /// ones; a split that adds up to more than `cache_creation_input_tokens` counts as written.
    pub fn to_usage(self) -> Usage {
        let split = self
            .cache_creation
            .filter(|c| c.ephemeral_5m_input_tokens.is_some() || c.ephemeral_1h_input_tokens.is_some());
        let (cache_write_5m_tokens, cache_write_1h_tokens) = match split {
            Some(split) => (
                Some(split.ephemeral_5m_input_tokens.unwrap_or(0)),
                Some(split.ephemeral_1h_input_tokens.unwrap_or(0)),
            ),
            None => (self.cache_creation_input_tokens, None),
        };
        let written = self.cache_creation_input_tokens.unwrap_or(0).max(
            cache_write_5m_tokens
                .unwrap_or(0)
                .saturating_add(cache_write_1h_tokens.unwrap_or(0)),
        );
        let prompt_tokens = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(written)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        let completion_tokens = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            cached_prompt_tokens: self.cache_read_input_tokens,
            reasoning_tokens: None,
            cache_write_5m_tokens,
            cache_write_1h_tokens,
            source: UsageSource::Provider,
        }
    }
}

/// A whole Gemini answer (or one event of its stream): the model that answered and the usage.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiEnvelope {
    model_version: Option<String>,
    usage_metadata: Option<GeminiUsage>,
}

/// Gemini's `usageMetadata`. `promptTokenCount` already counts the cached tokens; thinking tokens are billed as
/// output, as Google bills them.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeminiUsage {
    pub prompt_token_count: Option<u32>,
    pub cached_content_token_count: Option<u32>,
    pub candidates_token_count: Option<u32>,
    pub thoughts_token_count: Option<u32>,
    pub tool_use_prompt_token_count: Option<u32>,
}

impl GeminiUsage {
    /// The usage billed, when the object reports prompt or candidate tokens: the prompt with the tokens of
    /// tool results Gemini's tools added, the candidates with the thinking.
    pub fn reported(self) -> Option<Usage> {
        if self.prompt_token_count.is_none() && self.candidates_token_count.is_none() {
            return None;
        }
        let prompt_tokens = self
            .prompt_token_count
            .unwrap_or(0)
            .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0));
        let completion_tokens = self
            .candidates_token_count
            .unwrap_or(0)
            .saturating_add(self.thoughts_token_count.unwrap_or(0));
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            cached_prompt_tokens: self.cached_content_token_count,
            reasoning_tokens: self.thoughts_token_count,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            source: UsageSource::Provider,
        })
    }
}

/// Appends the generated text of one Gemini candidate: its parts' `text` (thoughts included) and each
/// `functionCall`'s name and arguments (as JSON).
pub(crate) fn gemini_parts_text(candidate: &serde_json::Value, text: &mut String) {
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten();
    for part in parts {
        if let Some(piece) = part.get("text").and_then(serde_json::Value::as_str) {
            text.push_str(piece);
        }
        if let Some(call) = part.get("functionCall") {
            if let Some(name) = call.get("name").and_then(serde_json::Value::as_str) {
                text.push_str(name);
            }
            if let Some(args) = call.get("args") {
                text.push_str(&args.to_string());
            }
        }
    }
}

/// The provider's usage in a whole response body, read the way `provider` reports it.
pub fn from_body(provider: Provider, body: &[u8]) -> Option<Usage> {
    read_answer(provider, body).usage
}

/// What is billed when the provider reported nothing: the prompt estimate for a successful response (the
/// provider processed the prompt), nothing for a failed one.
pub fn estimated(prompt_estimate: u32, succeeded: bool) -> Usage {
    let prompt_tokens = if succeeded { prompt_estimate } else { 0 };
    Usage {
        prompt_tokens,
        completion_tokens: 0,
        total_tokens: prompt_tokens,
        cached_prompt_tokens: None,
        reasoning_tokens: None,
        cache_write_5m_tokens: None,
        cache_write_1h_tokens: None,
        source: UsageSource::Estimated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_usage_with_cached_tokens() {
        let body =
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30,
            "prompt_tokens_details":{"cached_tokens":16}}}"#;
        let usage = from_response_body(body).unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (21, 9, 30)
        );
        assert_eq!(usage.cached_prompt_tokens, Some(16));
        assert_eq!(usage.source, UsageSource::Provider);
    }

    #[test]
    fn anthropic_totals_include_every_input_token() {
        let body = br#"{"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":4,
            "cache_read_input_tokens":100,"output_tokens":7}}"#;
        let usage = from_body(Provider::Anthropic, body).unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (114, 7, 121)
        );
        assert_eq!(usage.cached_prompt_tokens, Some(100));
    }

    #[test]
    fn reasoning_tokens_and_cache_writes_by_lifetime_are_their_own_figures() {
        let openai = br#"{"usage":{"prompt_tokens":30,"completion_tokens":500,"total_tokens":530,
            "completion_tokens_details":{"reasoning_tokens":448}}}"#;
        let usage = from_response_body(openai).unwrap();
        assert_eq!(
            (usage.completion_tokens, usage.reasoning_tokens),
            (500, Some(448))
        );
        assert_eq!(
            (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens),
            (None, None)
        );

        let split = br#"{"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":300,
            "cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},
            "cache_read_input_tokens":50,"output_tokens":7}}"#;
        let usage = from_body(Provider::Anthropic, split).unwrap();
        assert_eq!(usage.prompt_tokens, 360, "every input token, written or read");
        assert_eq!(
            (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens),
            (Some(100), Some(200))
        );
        assert_eq!(usage.cached_prompt_tokens, Some(50));

        let unsplit = br#"{"type":"message","usage":{"input_tokens":10,"cache_creation_input_tokens":40,
            "output_tokens":7}}"#;
        let usage = from_body(Provider::Anthropic, unsplit).unwrap();
        assert_eq!(
            (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens),
            (Some(40), None)
        );
    }

    #[test]
    fn a_responses_api_answer_names_its_usage_with_input_and_output_tokens() {
        let body = br#"{"id":"resp_1","object":"response","model":"gpt-4.1-mini-2025-04-14","output":[
            {"type":"reasoning","summary":[{"type":"summary_text","text":"Think."}]},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi","annotations":[]}]},
            {"type":"function_call","call_id":"c","name":"f","arguments":"{}"}],
            "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":20},"output_tokens":87,
            "output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}"#;
        let facts = read_answer(Provider::Openai, body);
        let usage = facts.usage.unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (36, 87, 123)
        );
        assert_eq!(
            (usage.cached_prompt_tokens, usage.reasoning_tokens),
            (Some(20), Some(64))
        );
        assert_eq!(facts.model.as_deref(), Some("gpt-4.1-mini-2025-04-14"));
        assert_eq!(completion_text(Provider::Openai, body).unwrap(), "Think.Hif{}");
    }

    #[test]
    fn a_gemini_answer_bills_thinking_as_output_and_names_its_model_version() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hm","thought":true},
            {"text":"Hi"},{"functionCall":{"name":"f","args":{"a":1}}}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":40,"cachedContentTokenCount":32,"candidatesTokenCount":12,
            "thoughtsTokenCount":100,"toolUsePromptTokenCount":3,"totalTokenCount":155},
            "modelVersion":"gemini-2.5-flash","responseId":"r"}"#;
        let facts = read_answer(Provider::Gemini, body);
        let usage = facts.usage.unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (43, 112, 155)
        );
        assert_eq!(
            (usage.cached_prompt_tokens, usage.reasoning_tokens),
            (Some(32), Some(100))
        );
        assert_eq!(facts.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            completion_text(Provider::Gemini, body).unwrap(),
            r#"HmHif{"a":1}"#
        );
        assert_eq!(read_answer(Provider::Gemini, br#"{"candidates":[]}"#).usage, None);
    }

    #[test]
    fn a_missing_total_is_the_sum() {
        let usage = from_response_body(br#"{"usage":{"prompt_tokens":5,"completion_tokens":7}}"#).unwrap();
        assert_eq!(usage.total_tokens, 12);
    }

    #[test]
    fn no_usage_block_or_garbage_is_none() {
        assert!(from_response_body(br#"{"choices":[]}"#).is_none());
        assert!(from_response_body(br#"{"usage":null}"#).is_none());
        assert!(from_response_body(br#"{"usage":{}}"#).is_none());
        assert!(from_response_body(b"<html>").is_none());
        assert!(from_response_body(br#"{"usage":{"prompt_tokens":-1}}"#).is_none());
    }

    #[test]
    fn a_whole_answer_names_its_model_and_its_usage() {
        let facts = read_answer(
            Provider::Openai,
            br#"{"model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        );
        assert_eq!(facts.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(facts.usage.map(|u| u.total_tokens), Some(5));
        assert_eq!(read_answer(Provider::Openai, b"<html>"), AnswerFacts::default());
    }

    #[test]
    fn the_completion_text_of_a_whole_answer_is_what_a_stream_of_it_would_carry() {
        let chat = br#"{"choices":[{"message":{"content":"Hi","refusal":null,
            "tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]}},{"message":{"content":"!"}}]}"#;
        assert_eq!(completion_text(Provider::Openai, chat).unwrap(), r#"Hif{"a":1}!"#);
        assert_eq!(
            completion_text(Provider::Openai, br#"{"choices":[{"text":"legacy"}]}"#).unwrap(),
            "legacy"
        );
        let anthropic = br#"{"content":[{"type":"text","text":"Sure"},
            {"type":"tool_use","name":"get","input":{"q":"x"}}]}"#;
        assert_eq!(
            completion_text(Provider::Anthropic, anthropic).unwrap(),
            r#"Sureget{"q":"x"}"#
        );
        assert_eq!(completion_text(Provider::Openai, b"not json"), None);
    }

    #[test]
    fn an_early_end_bills_the_larger_of_the_providers_figure_and_what_was_streamed() {
        // Anthropic's message_start says 1 output token; 40 were streamed before the cut.
        let start = Usage {
            prompt_tokens: 25,
            completion_tokens: 1,
            total_tokens: 26,
            cached_prompt_tokens: None,
            reasoning_tokens: None,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            source: UsageSource::Provider,
        };
        let billed = at_least_streamed(Some(start), 30, 40, UsageSource::Counted);
        assert_eq!((billed.prompt_tokens, billed.completion_tokens), (25, 40));
        assert_eq!(billed.source, UsageSource::Counted);
        let ahead = Usage {
            completion_tokens: 50,
            ..start
        };
        let billed = at_least_streamed(Some(ahead), 30, 40, UsageSource::Counted);
        assert_eq!(
            (billed.completion_tokens, billed.source),
            (50, UsageSource::Provider)
        );
        let none = at_least_streamed(None, 30, 7, UsageSource::Estimated);
        assert_eq!(
            (none.prompt_tokens, none.completion_tokens, none.total_tokens),
            (30, 7, 37)
        );
    }

    proptest::proptest! {
        #[test]
        fn an_early_end_never_bills_less_than_either_figure(
            reported in proptest::option::of(0u32..1_000_000),
            counted in 0u32..1_000_000,
            estimate in 0u32..1_000_000,
        ) {
            let provider = reported.map(|completion_tokens| Usage {
                prompt_tokens: 9,
                completion_tokens,
                total_tokens: 9 + completion_tokens,
                cached_prompt_tokens: None,
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                source: UsageSource::Provider,
            });
            let billed = at_least_streamed(provider, estimate, counted, UsageSource::Counted);
            proptest::prop_assert!(billed.completion_tokens >= counted);
            proptest::prop_assert!(billed.completion_tokens >= reported.unwrap_or(0));
            proptest::prop_assert_eq!(billed.total_tokens, billed.prompt_tokens + billed.completion_tokens);
        }
    }

    #[test]
    fn estimates_bill_the_prompt_only_on_success() {
        assert_eq!(estimated(40, true).total_tokens, 40);
        assert_eq!(estimated(40, false).total_tokens, 0);
        assert_eq!(estimated(40, true).source, UsageSource::Estimated);
    }
}

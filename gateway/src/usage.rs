//! Reading what a provider says a request consumed: the `usage` block of an OpenAI-compatible response
//! (`prompt_tokens`, `completion_tokens`, `total_tokens`, `prompt_tokens_details.cached_tokens`), and settling
//! the numbers billed when there is none.

use serde::Deserialize;
use tollgate_schemas::UsageSource;

/// The token numbers billed for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_prompt_tokens: Option<u32>,
    pub source: UsageSource,
}

#[derive(Deserialize)]
struct Envelope {
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    total_tokens: Option<u32>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u32>,
}

/// The provider's usage in a JSON response body, if it reported one.
pub fn from_response_body(body: &[u8]) -> Option<Usage> {
    let raw = serde_json::from_slice::<Envelope>(body).ok()?.usage?;
    let prompt_tokens = raw.prompt_tokens.unwrap_or(0);
    let completion_tokens = raw.completion_tokens.unwrap_or(0);
    if raw.prompt_tokens.is_none() && raw.completion_tokens.is_none() {
        return None;
    }
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: raw
            .total_tokens
            .unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
        cached_prompt_tokens: raw.prompt_tokens_details.and_then(|d| d.cached_tokens),
        source: UsageSource::Provider,
    })
}

#[derive(Deserialize)]
struct AnthropicEnvelope {
    usage: Option<AnthropicUsage>,
}

/// Anthropic's usage object: input (uncached), cache writes, cache reads, output.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct AnthropicUsage {
    pub input_tokens: Option<u32>,
    pub cache_creation_input_tokens: Option<u32>,
    pub cache_read_input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
}

impl AnthropicUsage {
    /// As billed: every prompt token — uncached, written to and read from the cache — is a prompt token, and the
    /// total includes them (not only the output, as some gateways count Anthropic streams).
    pub fn to_usage(self) -> Usage {
        let prompt_tokens = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        let completion_tokens = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            cached_prompt_tokens: self.cache_read_input_tokens,
            source: UsageSource::Provider,
        }
    }
}

/// The provider's usage in a whole response body, read the way `provider` reports it.
pub fn from_body(provider: crate::config::Provider, body: &[u8]) -> Option<Usage> {
    match provider {
        crate::config::Provider::Openai => from_response_body(body),
        crate::config::Provider::Anthropic => {
            let usage = serde_json::from_slice::<AnthropicEnvelope>(body).ok()?.usage?;
            (usage.input_tokens.is_some() || usage.output_tokens.is_some()).then(|| usage.to_usage())
        }
    }
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
        let usage = from_body(crate::config::Provider::Anthropic, body).unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (114, 7, 121)
        );
        assert_eq!(usage.cached_prompt_tokens, Some(100));
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
    fn estimates_bill_the_prompt_only_on_success() {
        assert_eq!(estimated(40, true).total_tokens, 40);
        assert_eq!(estimated(40, false).total_tokens, 0);
        assert_eq!(estimated(40, true).source, UsageSource::Estimated);
    }
}

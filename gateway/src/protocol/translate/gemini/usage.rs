//! What a Gemini answer consumed, in the terms Tollgate bills: [`MeteredUsage::from_gemini`] reads Gemini's
//! `usageMetadata`. Gemini bills thinking tokens as output tokens, so they are part of `completion_tokens` here
//! too (and reported again as `reasoning_tokens`); its cached tokens are part of the prompt count, as in
//! OpenAI's usage.

use serde_json::{Map, Value};

use super::super::usage::MeteredUsage;

fn count(object: &Map<String, Value>, field: &str) -> u64 {
    object.get(field).and_then(Value::as_u64).unwrap_or(0)
}

impl MeteredUsage {
    /// From Gemini's `usageMetadata`: `prompt_tokens` is `promptTokenCount` (which already counts
    /// `cachedContentTokenCount`) plus `toolUsePromptTokenCount`; `completion_tokens` is `candidatesTokenCount`
    /// plus `thoughtsTokenCount` (thinking is billed as output); `cached_read_tokens` is
    /// `cachedContentTokenCount`; `reasoning_tokens` is `thoughtsTokenCount`. Gemini reports no cache writes.
    /// `None` when `usage_metadata` is not an object or holds neither `promptTokenCount` nor
    /// `candidatesTokenCount`.
    pub fn from_gemini(usage_metadata: &Value) -> Option<Self> {
        let usage = usage_metadata.as_object()?;
        if !["promptTokenCount", "candidatesTokenCount"]
            .iter()
            .any(|f| usage.get(*f).is_some_and(|v| !v.is_null()))
        {
            return None;
        }
        let thoughts = count(usage, "thoughtsTokenCount");
        Some(Self {
            prompt_tokens: count(usage, "promptTokenCount")
                .saturating_add(count(usage, "toolUsePromptTokenCount")),
            completion_tokens: count(usage, "candidatesTokenCount").saturating_add(thoughts),
            cached_read_tokens: count(usage, "cachedContentTokenCount"),
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: thoughts,
        })
    }
}

//! What a translated answer consumed, in the terms Tollgate bills ([`MeteredUsage`]): read from the upstream's
//! own usage block (Anthropic's or OpenAI's), and written back as the client's protocol's usage block. The
//! figures are always the upstream's: a translated answer is billed as the upstream counted it, whatever shape
//! the client sees.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The token figures of one answer as Tollgate bills them.
///
/// `prompt_tokens` counts every prompt token, cached or not: for Anthropic, `input_tokens` plus cache reads
/// plus cache writes (of both lifetimes); for OpenAI, `prompt_tokens`. `cached_read_tokens`,
/// `cache_write_5m_tokens` and `cache_write_1h_tokens` are the parts of it read from or written to a prompt
/// cache. `reasoning_tokens` is the part of `completion_tokens` spent on reasoning, when the upstream says
/// (OpenAI's `completion_tokens_details.reasoning_tokens`; Anthropic counts thinking in `output_tokens` without
/// a separate figure, so 0 there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteredUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_read_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub reasoning_tokens: u64,
}

fn count(object: &Map<String, Value>, field: &str) -> u64 {
    object.get(field).and_then(Value::as_u64).unwrap_or(0)
}

impl MeteredUsage {
    /// Prompt and completion.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// All cache writes.
    pub fn cache_write_tokens(&self) -> u64 {
        self.cache_write_5m_tokens
            .saturating_add(self.cache_write_1h_tokens)
    }

    /// From Anthropic's `usage` object: `input_tokens`, `cache_creation_input_tokens` (split by
    /// `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens` when given; otherwise all 5
    /// minutes, the default lifetime), `cache_read_input_tokens`, `output_tokens`. `None` when `usage` is not an
    /// object or holds none of these figures.
    pub fn from_anthropic(usage: &Value) -> Option<Self> {
        let usage = usage.as_object()?;
        const FIELDS: [&str; 5] = [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cache_creation",
        ];
        if !FIELDS.iter().any(|f| usage.get(*f).is_some_and(|v| !v.is_null())) {
            return None;
        }
        let (split_5m, split_1h) = match usage.get("cache_creation").and_then(Value::as_object) {
            Some(split) => (
                count(split, "ephemeral_5m_input_tokens"),
                count(split, "ephemeral_1h_input_tokens"),
            ),
            None => (0, 0),
        };
        // The total written is the larger of the reported total and the sum of its parts; what the parts do
        // not explain was written with the default lifetime.
        let writes = count(usage, "cache_creation_input_tokens").max(split_5m.saturating_add(split_1h));
        let reads = count(usage, "cache_read_input_tokens");
        Some(Self {
            prompt_tokens: count(usage, "input_tokens")
                .saturating_add(reads)
                .saturating_add(writes),
            completion_tokens: count(usage, "output_tokens"),
            cached_read_tokens: reads,
            cache_write_5m_tokens: writes.saturating_sub(split_1h),
            cache_write_1h_tokens: split_1h,
            reasoning_tokens: 0,
        })
    }

    /// From OpenAI's `usage` object: `prompt_tokens`, `prompt_tokens_details.cached_tokens`,
    /// `completion_tokens`, `completion_tokens_details.reasoning_tokens`. `None` when `usage` is not an object
    /// or holds neither `prompt_tokens` nor `completion_tokens`.
    pub fn from_openai(usage: &Value) -> Option<Self> {
        let usage = usage.as_object()?;
        if !["prompt_tokens", "completion_tokens"]
            .iter()
            .any(|f| usage.get(*f).is_some_and(|v| !v.is_null()))
        {
            return None;
        }
        let detail = |object: &str, field: &str| {
            usage
                .get(object)
                .and_then(Value::as_object)
                .map_or(0, |details| count(details, field))
        };
        Some(Self {
            prompt_tokens: count(usage, "prompt_tokens"),
            completion_tokens: count(usage, "completion_tokens"),
            cached_read_tokens: detail("prompt_tokens_details", "cached_tokens"),
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens"),
        })
    }

    /// As OpenAI's `usage` object. Cache writes are part of `prompt_tokens` (OpenAI has no figure for them).
    pub fn to_openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }

    /// As Anthropic's `usage` object: `input_tokens` is what is neither read from nor written to the cache.
    /// Reasoning tokens stay inside `output_tokens` (Anthropic has no figure for them).
    pub fn to_anthropic(&self) -> Value {
        let uncached = self
            .prompt_tokens
            .saturating_sub(self.cached_read_tokens)
            .saturating_sub(self.cache_write_tokens());
        json!({
            "input_tokens": uncached,
            "cache_creation_input_tokens": self.cache_write_tokens(),
            "cache_read_input_tokens": self.cached_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            },
            "output_tokens": self.completion_tokens,
        })
    }
}

/// Anthropic's usage figures as a stream reports them: `message_start` carries the input side (and an early
/// output count), `message_delta` the cumulative output (and, in newer API versions, the input side again).
/// Each figure seen replaces the previous one; only the known numeric fields are kept, so memory stays bounded
/// whatever the upstream sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct AnthropicUsageTracker {
    figures: Map<String, Value>,
}

impl AnthropicUsageTracker {
    const NUMBERS: [&'static str; 4] = [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ];

    pub(crate) fn observe(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage.and_then(Value::as_object) else {
            return;
        };
        for field in Self::NUMBERS {
            if let Some(n) = usage.get(field).and_then(Value::as_u64) {
                self.figures.insert(field.to_owned(), Value::from(n));
            }
        }
        if let Some(split) = usage.get("cache_creation").and_then(Value::as_object) {
            let mut kept = Map::new();
            for field in ["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"] {
                if let Some(n) = split.get(field).and_then(Value::as_u64) {
                    kept.insert(field.to_owned(), Value::from(n));
                }
            }
            self.figures
                .insert("cache_creation".to_owned(), Value::Object(kept));
        }
    }

    pub(crate) fn usage(&self) -> Option<MeteredUsage> {
        if self.figures.is_empty() {
            return None;
        }
        MeteredUsage::from_anthropic(&Value::Object(self.figures.clone()))
    }
}

//! Prompt estimates before forwarding. The gateway asks meter-sidecar for the exact tiktoken count of the chat
//! messages (or texts), within a small time budget; the requests of a worker that ask at the same moment share
//! one call to `POST /v1/tokens/count/batch` ([`batch`]). When the sidecar is slow, down or answers nonsense, the
//! gateway falls back to an in-process approximation, marks the estimate as [`EstimateSource::Fallback`] in the
//! event and counts it — a metered request is never failed for want of an estimate. Completions of streams
//! without a provider `usage` block are counted one by one (`POST /v1/tokens/count`). An outage is logged when it
//! begins, while it lasts and when it ends, not per request ([`outage`]).

pub mod batch;
pub mod outage;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_schemas::EstimateSource;

use self::batch::Batcher;
use self::outage::{Outage, Report};

use crate::config::MeterConfig;
use crate::metrics as m;
use crate::protocol::request::Prompt;

/// OpenAI's chat-format overhead: tokens per message, and for priming the reply.
const TOKENS_PER_MESSAGE: u32 = 3;
const TOKENS_FOR_REPLY: u32 = 3;
/// The fallback's rule of thumb for English text in current BPE encodings.
const BYTES_PER_TOKEN: u32 = 4;
/// The fallback's image figures: OpenAI's low-detail price, and otherwise the most any image costs under the tile
/// rule meter-sidecar applies (85 + 170 × 8; the sidecar reads the size, the fallback does not). An image's URL or
/// base64 data is never counted as text.
const IMAGE_LOW_DETAIL_TOKENS: u32 = 85;
const IMAGE_MAX_TOKENS: u32 = 1445;

/// A prompt estimate and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u32,
    pub source: EstimateSource,
}

#[derive(Serialize)]
struct CountChatRequest<'a> {
    model: &'a str,
    messages: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    functions: Option<&'a Value>,
}

#[derive(Serialize)]
struct CountTextRequest<'a> {
    model: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct CountResponse {
    tokens: u32,
}

/// A client of meter-sidecar, one per HTTP worker.
pub struct MeterClient {
    client: awc::Client,
    count_url: String,
    batcher: Batcher,
    /// `tollgate_meter_duration_seconds`, and `tollgate_prompt_estimates_total` by source (meter, fallback):
    /// registered once per worker.
    duration: metrics::Histogram,
    by_meter: metrics::Counter,
    by_fallback: metrics::Counter,
    outage: Outage,
}

impl std::fmt::Debug for MeterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterClient")
            .field("count_url", &self.count_url)
            .finish()
    }
}

impl MeterClient {
    pub fn new(config: &MeterConfig) -> Self {
        let client = awc::Client::builder()
            .timeout(config.timeout)
            .connector(awc::Connector::new().timeout(config.timeout))
            .disable_redirects()
            .finish();
        let base = config.url.as_str().trim_end_matches('/');
        Self {
            batcher: Batcher::new(
                client.clone(),
                format!("{base}/v1/tokens/count/batch"),
                config.timeout,
            ),
            client,
            count_url: format!("{base}/v1/tokens/count"),
            duration: metrics::histogram!(m::METER_DURATION_SECONDS),
            by_meter: metrics::counter!(m::ESTIMATES_TOTAL, "source" => EstimateSource::Meter.as_str()),
            by_fallback: metrics::counter!(m::ESTIMATES_TOTAL, "source" => EstimateSource::Fallback.as_str()),
            outage: Outage::default(),
        }
    }

    /// The prompt estimate for a request to `model`. Never fails: falls back in-process.
    pub async fn estimate(&self, model: &str, prompt: &Prompt<'_>) -> Estimate {
        let started = Instant::now();
        let counted = match count_items(model, prompt) {
            Ok((items, count)) => self.batcher.count(items, count).await.and_then(|counts| {
                counts.into_iter().try_fold(0u32, |sum, tokens| {
                    tokens.map(|t| sum.saturating_add(t)).ok_or("item")
                })
            }),
            Err(_) => Err("encode"),
        }
        .map(|tokens| match prompt {
            Prompt::Chat { .. } => tokens,
            Prompt::Texts { pretokenized, .. } => tokens.saturating_add(*pretokenized),
        });
        self.duration.record(started.elapsed().as_secs_f64());
        let estimate = match counted {
            Ok(tokens) => {
                self.answered();
                Estimate {
                    tokens,
                    source: EstimateSource::Meter,
                }
            }
            Err(reason) => {
                self.failed(reason);
                Estimate {
                    tokens: fallback_estimate(prompt),
                    source: EstimateSource::Fallback,
                }
            }
        };
        match estimate.source {
            EstimateSource::Meter => &self.by_meter,
            EstimateSource::Fallback => &self.by_fallback,
        }
        .increment(1);
        estimate
    }

    /// The exact token count of `text` (a completion) for `model`; an error names why it could not be had.
    pub async fn count_text(&self, model: &str, text: &str) -> Result<u32, &'static str> {
        if text.is_empty() {
            return Ok(0);
        }
        let result = self.post(&CountTextRequest { model, text }).await;
        match result {
            Ok(_) => self.answered(),
            Err(reason) => self.failed(reason),
        }
        result
    }

    /// A call failed: logs the outage's beginning, or its continuation every [`outage::REPEAT_EVERY`].
    fn failed(&self, reason: &'static str) {
        match self.outage.failed(Instant::now()) {
            Report::Began => tracing::warn!(
                reason,
                "meter-sidecar unavailable; estimating and counting tokens in-process until it answers"
            ),
            Report::Continues { fallbacks } => tracing::warn!(
                reason,
                fallbacks,
                "meter-sidecar still unavailable; estimating and counting tokens in-process"
            ),
            Report::Quiet | Report::Ended { .. } => {}
        }
    }

    /// A call was answered: logs the end of an outage.
    fn answered(&self) {
        if let Report::Ended { away, fallbacks } = self.outage.answered(Instant::now()) {
            tracing::info!(
                seconds = away.as_secs_f64(),
                fallbacks,
                "meter-sidecar answers again"
            );
        }
    }

    async fn post(&self, body: &impl Serialize) -> Result<u32, &'static str> {
        let mut response = self
            .client
            .post(&self.count_url)
            .send_json(body)
            .await
            .map_err(send_error)?;
        if !response.status().is_success() {
            return Err("status");
        }
        let body: CountResponse = response.json().await.map_err(|_| "body")?;
        Ok(body.tokens)
    }
}

/// The count items of a prompt for a batch call — its JSON, comma-separated — and how many there are: the chat
/// messages as one item, or each text as one.
fn count_items(model: &str, prompt: &Prompt<'_>) -> serde_json::Result<(Vec<u8>, usize)> {
    match prompt {
        Prompt::Chat {
            messages,
            tools,
            functions,
        } => {
            let item = serde_json::to_vec(&CountChatRequest {
                model,
                messages,
                tools: *tools,
                functions: *functions,
            })?;
            Ok((item, 1))
        }
        Prompt::Texts { texts, .. } => {
            let mut items = Vec::new();
            for (i, text) in texts.iter().enumerate() {
                if i > 0 {
                    items.push(b',');
                }
                serde_json::to_writer(&mut items, &CountTextRequest { model, text })?;
            }
            Ok((items, texts.len()))
        }
    }
}

/// The in-process approximation of a prompt's tokens (see [`fallback_chat_estimate`]), without any I/O.
pub fn fallback_estimate(prompt: &Prompt<'_>) -> u32 {
    match prompt {
        Prompt::Chat {
            messages,
            tools,
            functions,
        } => {
            let definitions = [tools, functions]
                .into_iter()
                .flatten()
                .map(|d| string_bytes(d).div_ceil(BYTES_PER_TOKEN))
                .fold(0, u32::saturating_add);
            fallback_chat_estimate(messages).saturating_add(definitions)
        }
        Prompt::Texts { texts, pretokenized } => texts
            .iter()
            .map(|t| fallback_text_estimate(t))
            .fold(*pretokenized, u32::saturating_add),
    }
}

fn send_error(e: awc::error::SendRequestError) -> &'static str {
    match e {
        awc::error::SendRequestError::Timeout => "timeout",
        awc::error::SendRequestError::Connect(_) => "connect",
        _ => "send",
    }
}

/// An approximation of the chat prompt's token count without a tokenizer: one token per four bytes of every
/// string in each message, each image part at the fallback's image figure, plus OpenAI's per-message overhead.
pub fn fallback_chat_estimate(messages: &Value) -> u32 {
    let Some(messages) = messages.as_array() else {
        return 0;
    };
    let text_tokens: u32 = messages
        .iter()
        .map(|m| {
            string_bytes(m)
                .div_ceil(BYTES_PER_TOKEN)
                .saturating_add(image_tokens(m))
        })
        .fold(0, u32::saturating_add);
    let count = u32::try_from(messages.len()).unwrap_or(u32::MAX);
    text_tokens
        .saturating_add(count.saturating_mul(TOKENS_PER_MESSAGE))
        .saturating_add(TOKENS_FOR_REPLY)
}

/// The fallback's approximation of a text's tokens: one per four bytes.
pub fn fallback_text_estimate(text: &str) -> u32 {
    u32::try_from(text.len())
        .unwrap_or(u32::MAX)
        .div_ceil(BYTES_PER_TOKEN)
}

/// An image content part: OpenAI's `image_url` / `input_image`, Anthropic's `image`.
fn is_image(map: &serde_json::Map<String, Value>) -> bool {
    matches!(
        map.get("type").and_then(Value::as_str),
        Some("image_url" | "input_image" | "image")
    )
}

/// The fallback's tokens for the image parts inside `value`.
fn image_tokens(value: &Value) -> u32 {
    match value {
        Value::Object(map) if is_image(map) => {
            let detail = map
                .get("image_url")
                .and_then(|u| u.get("detail"))
                .or_else(|| map.get("detail"))
                .and_then(Value::as_str);
            if detail == Some("low") {
                IMAGE_LOW_DETAIL_TOKENS
            } else {
                IMAGE_MAX_TOKENS
            }
        }
        Value::Object(map) => map.values().map(image_tokens).fold(0, u32::saturating_add),
        Value::Array(items) => items.iter().map(image_tokens).fold(0, u32::saturating_add),
        Value::String(_) | Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// The bytes of every string inside `value`, image parts left out.
fn string_bytes(value: &Value) -> u32 {
    let bytes = match value {
        Value::String(s) => s.len(),
        Value::Array(items) => return items.iter().map(string_bytes).fold(0, u32::saturating_add),
        Value::Object(map) if is_image(map) => 0,
        Value::Object(map) => return map.values().map(string_bytes).fold(0, u32::saturating_add),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    };
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_definitions_are_prompt_too_and_reach_meter_sidecar() {
        let messages = json!([{"role": "user", "content": "Hi"}]);
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather of a city", "parameters": {"type": "object"}}}]);
        let bare = Prompt::Chat {
            messages: std::borrow::Cow::Borrowed(&messages),
            tools: None,
            functions: None,
        };
        let with_tools = Prompt::Chat {
            messages: std::borrow::Cow::Borrowed(&messages),
            tools: Some(&tools),
            functions: None,
        };
        assert!(fallback_estimate(&with_tools) > fallback_estimate(&bare));
        let (item, count) = count_items("gpt-4o", &with_tools).unwrap();
        assert_eq!(count, 1);
        let item: Value = serde_json::from_slice(&item).unwrap();
        assert_eq!(item["tools"], tools);
        assert!(item.get("functions").is_none());
    }

    #[test]
    fn fallback_counts_bytes_over_four_plus_chat_overhead() {
        let messages = json!([
            {"role": "system", "content": "You are terse."},   // 6 + 14 = 20 bytes → 5 tokens
            {"role": "user", "content": "Hi"}                  // 4 + 2 = 6 bytes → 2 tokens (rounded up)
        ]);
        assert_eq!(fallback_chat_estimate(&messages), 5 + 2 + 2 * 3 + 3);
    }

    #[test]
    fn fallback_reads_content_parts_and_ignores_non_text() {
        let messages = json!([{"role": "user", "content": [{"type": "text", "text": "abcd"}], "n": 3}]);
        // "user" (1) + "text" (1) + "abcd" (1) + overhead 3 + reply 3
        assert_eq!(fallback_chat_estimate(&messages), 9);
    }

    #[test]
    fn fallback_counts_an_image_at_its_rule_never_as_the_text_of_its_data() {
        let data = format!("data:image/png;base64,{}", "A".repeat(400_000));
        let messages = json!([{"role": "user", "content": [
            {"type": "text", "text": "abcd"},
            {"type": "image_url", "image_url": {"url": data}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        ]}]);
        // "user" (1) + "text" (1) + "abcd" (1) + 1445 + 85 + overhead 3 + reply 3
        assert_eq!(fallback_chat_estimate(&messages), 1539);
    }

    #[test]
    fn fallback_of_non_array_is_zero() {
        assert_eq!(fallback_chat_estimate(&json!("hello")), 0);
    }
}

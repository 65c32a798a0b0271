//! A whole (non-streamed) upstream answer in the client's protocol: an Anthropic message → an OpenAI
//! `chat.completion` ([`anthropic_to_openai_answer`]) and back ([`openai_to_anthropic_answer`]), with the stop
//! reason, the content (text, tool calls, thinking as `reasoning_content`) and the usage mapped, and the usage
//! as billed ([`MeteredUsage`]) read from the upstream's own figures. An answer that is not what the upstream's
//! protocol promises is a [`TranslateError::Upstream`] (a 502 for the client).

use serde_json::{Map, Value, json};

use super::TranslateError;
use super::usage::MeteredUsage;

/// A whole answer in the client's protocol, and what it consumed.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedAnswer {
    /// The client's answer body.
    pub body: Value,
    /// What the upstream reported the answer consumed; `None` when it reported nothing.
    pub usage: Option<MeteredUsage>,
}

/// Anthropic's `stop_reason` → OpenAI's `finish_reason`. `pause_turn` (a server tool's long turn, to be
/// continued by sending the answer back) has no OpenAI counterpart: the client sees `stop`.
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => "stop",
    }
}

/// OpenAI's `finish_reason` → Anthropic's `stop_reason`. OpenAI does not say whether `stop` came from a stop
/// sequence: it is `end_turn`.
pub(crate) fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

pub(super) fn upstream(reason: &str) -> TranslateError {
    TranslateError::Upstream(reason.to_owned())
}

pub(super) fn parse(body: &[u8]) -> Result<Value, TranslateError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| TranslateError::Upstream(format!("not JSON ({e})")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(upstream("not a JSON object"))
    }
}

/// An Anthropic message → an OpenAI `chat.completion`. `created` is the Unix time to report (Anthropic's
/// answer has none). Text blocks are concatenated into `content`, `tool_use` blocks become `tool_calls`
/// (arguments as a JSON string), `thinking` blocks become `reasoning_content`; `redacted_thinking` and server
/// tool blocks have no OpenAI form and are left out.
pub fn anthropic_to_openai_answer(body: &[u8], created: i64) -> Result<TranslatedAnswer, TranslateError> {
    let answer = parse(body)?;
    if answer.get("type").and_then(Value::as_str) == Some("error") {
        return Err(upstream("an error object in a successful answer"));
    }
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| upstream("`content` is not an array"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => {
                let (Some(id), Some(name)) = (
                    block.get("id").and_then(Value::as_str),
                    block.get("name").and_then(Value::as_str),
                ) else {
                    return Err(upstream("a tool_use block without id or name"));
                };
                let arguments = block
                    .get("input")
                    .map_or_else(|| "{}".to_owned(), Value::to_string);
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), Value::from("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".to_owned(), content);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".to_owned(), Value::String(reasoning));
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    message.insert("refusal".to_owned(), Value::Null);
    let finish = finish_reason(answer.get("stop_reason").and_then(Value::as_str));
    let usage = answer.get("usage").and_then(MeteredUsage::from_anthropic);
    let mut out = json!({
        "id": answer.get("id").and_then(Value::as_str).unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": answer.get("model").and_then(Value::as_str).unwrap_or_default(),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
    });
    if let (Some(usage), Some(object)) = (usage, out.as_object_mut()) {
        object.insert("usage".to_owned(), usage.to_openai());
    }
    Ok(TranslatedAnswer { body: out, usage })
}

/// An OpenAI `chat.completion` → an Anthropic message: the first choice's text (and refusal) as text blocks,
/// `reasoning_content` as a `thinking` block (with an empty signature: OpenAI-compatible servers sign
/// nothing), `tool_calls` as `tool_use` blocks (their arguments must be JSON objects). Reasoning tokens stay
/// part of `output_tokens` and are reported in [`TranslatedAnswer::usage`].
pub fn openai_to_anthropic_answer(body: &[u8]) -> Result<TranslatedAnswer, TranslateError> {
    let answer = parse(body)?;
    if answer.get("error").is_some_and(|e| !e.is_null()) {
        return Err(upstream("an error object in a successful answer"));
    }
    let choice = answer
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| upstream("no choice"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| upstream("the choice has no message"))?;
    let mut content = Vec::new();
    if let Some(reasoning) = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    match message.get("content") {
        Some(Value::String(text)) if !text.is_empty() => content.push(json!({"type": "text", "text": text})),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    content.push(json!({"type": "text", "text": text}));
                }
            }
        }
        _ => {}
    }
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    if let Some(refusal) = refusal {
        content.push(json!({"type": "text", "text": refusal}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function");
            let (Some(id), Some(name)) = (
                call.get("id").and_then(Value::as_str),
                function.and_then(|f| f.get("name")).and_then(Value::as_str),
            ) else {
                return Err(upstream("a tool call without id or name"));
            };
            let input = match function.and_then(|f| f.get("arguments")) {
                None | Some(Value::Null) => json!({}),
                Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                    Ok(input @ Value::Object(_)) => input,
                    _ => return Err(upstream("tool call arguments that are not a JSON object")),
                },
                Some(_) => return Err(upstream("tool call arguments that are not a string")),
            };
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let stop = if refusal.is_some() && finish == Some("stop") {
        "refusal"
    } else {
        stop_reason(finish)
    };
    let usage = answer.get("usage").and_then(MeteredUsage::from_openai);
    let out = json!({
        "id": answer.get("id").and_then(Value::as_str).unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model").and_then(Value::as_str).unwrap_or_default(),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage.unwrap_or_default().to_anthropic(),
    });
    Ok(TranslatedAnswer { body: out, usage })
}

//! OpenAI's Responses API (`POST /v1/responses`) as the gateway reads it: a request's `instructions` and `input`
//! items as the chat messages the prompt estimate counts ([`input_as_messages`]). The rest of the endpoint's
//! facts sit with their kind: the usage and text of a whole answer in [`super::usage`] (its `usage` names
//! `input_tokens`/`output_tokens`), the stream's events in [`crate::metering::stream_usage`].
//!
//! The request is forwarded as the client sent it (only `model` may be replaced); nothing here changes what goes
//! upstream.

use serde_json::{Value, json};

/// The request's prompt as chat messages, for the estimate: `instructions` as a leading system message, then each
/// `input` item — a plain string as a user message; a message item (`{"role", "content"}`, `type` optional) with
/// its `input_text`/`output_text` parts as text parts and `input_image` parts as image parts; a `function_call`
/// as an assistant tool call; a `function_call_output` as a tool message; a `reasoning` item as its summary text.
/// Any other item (a file, a built-in tool's call or result) is counted as its JSON text, which overestimates
/// rather than misses it.
pub fn input_as_messages(body: &serde_json::Map<String, Value>) -> Value {
    let mut messages = Vec::new();
    if let Some(instructions) = body.get("instructions").filter(|v| !v.is_null()) {
        messages.push(json!({"role": "system", "content": text_or_json(instructions)}));
    }
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => messages.extend(items.iter().map(item_as_message)),
        _ => {}
    }
    Value::Array(messages)
}

fn item_as_message(item: &Value) -> Value {
    let kind = item.get("type").and_then(Value::as_str);
    let field = |name: &str| item.get(name).cloned().unwrap_or(Value::Null);
    match (kind, item) {
        (_, Value::String(text)) => json!({"role": "user", "content": text}),
        (None | Some("message"), _) if item.get("role").is_some() => {
            let content = match item.get("content") {
                Some(Value::Array(parts)) => Value::Array(parts.iter().map(part_as_chat_part).collect()),
                Some(Value::String(text)) => Value::String(text.clone()),
                _ => Value::Null,
            };
            json!({"role": role_of(item), "content": content})
        }
        (Some("function_call"), _) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": field("call_id"),
                "type": "function",
                "function": {"name": field("name"), "arguments": text_or_json(&field("arguments"))},
            }],
        }),
        (Some("function_call_output"), _) => json!({
            "role": "tool",
            "tool_call_id": field("call_id"),
            "content": text_or_json(&field("output")),
        }),
        (Some("reasoning"), _) => {
            let summary: Vec<&str> = item
                .get("summary")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("text").and_then(Value::as_str))
                .collect();
            json!({"role": "assistant", "content": summary.join("\n")})
        }
        _ => json!({"role": "user", "content": item.to_string()}),
    }
}

/// A message item's role as the chat estimate knows it (`developer` is a system message there).
fn role_of(item: &Value) -> &str {
    match item.get("role").and_then(Value::as_str) {
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        _ => "user",
    }
}

fn part_as_chat_part(part: &Value) -> Value {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            json!({"type": "text", "text": part.get("text").cloned().unwrap_or(Value::Null)})
        }
        Some("refusal") => {
            json!({"type": "text", "text": part.get("refusal").cloned().unwrap_or(Value::Null)})
        }
        Some("input_image") => json!({
            "type": "image_url",
            "image_url": {
                "url": part.get("image_url").or_else(|| part.get("file_id")).cloned().unwrap_or(Value::Null),
                "detail": part.get("detail").cloned().unwrap_or(Value::Null),
            },
        }),
        _ => json!({"type": "text", "text": part.to_string()}),
    }
}

/// A string as it is; anything else as its JSON text.
fn text_or_json(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(body: Value) -> Value {
        input_as_messages(body.as_object().unwrap())
    }

    #[test]
    fn a_string_input_and_instructions_are_a_system_and_a_user_message() {
        let got = messages(json!({"model": "m", "instructions": "Be brief.", "input": "Hi"}));
        assert_eq!(
            got,
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        );
    }

    #[test]
    fn items_become_the_chat_messages_they_stand_for() {
        let got = messages(json!({"model": "m", "input": [
            {"role": "developer", "content": "Rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is in"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"q\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {"type": "file_search_call", "id": "fs"},
        ]}));
        assert_eq!(got[0], json!({"role": "system", "content": "Rules"}));
        assert_eq!(
            got[1]["content"][0],
            json!({"type": "text", "text": "What is in"})
        );
        assert_eq!(got[1]["content"][1]["image_url"]["detail"], "low");
        assert_eq!(got[2]["tool_calls"][0]["function"]["arguments"], "{\"q\":1}");
        assert_eq!(
            got[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "42"})
        );
        assert_eq!(got[4]["content"], "thought");
        assert_eq!(got[5]["role"], "user", "unknown items are counted as their JSON");
    }
}

//! The mock provider's OpenAI Responses API (`POST /v1/responses`): a whole `response` object and its stream of
//! typed events, shaped as OpenAI's API reference shows them — `response.created`, `response.in_progress`, an
//! output message item whose text comes in `response.output_text.delta` events, a `function_call` item with its
//! arguments in `response.function_call_arguments.delta` fragments when the request has `tools`, and
//! `response.completed` carrying the whole response with its `usage` (`input_tokens`, `output_tokens` and their
//! details). The answer's text and usage follow the same deterministic rules as the mock's chat completions
//! ([`completion_text`], [`reported_usage`]); a request with `reasoning` also reports reasoning tokens
//! ([`REASONING_TOKENS`]).

use serde_json::{Value, json};

use crate::mock_provider::{completion_text, long_completion_tokens, long_event_text, reported_usage};

/// The reasoning tokens the mock reports, within `output_tokens`, for a request that sets `reasoning`.
pub const REASONING_TOKENS: u32 = 16;

/// A Responses request's `instructions` and `input` as chat messages with string contents: the mock answers
/// the last user text, as it does for chat.
pub fn responses_messages(body: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(instructions) = body["instructions"].as_str() {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match &body["input"] {
        Value::String(text) => messages.push(json!({"role": "user", "content": text})),
        Value::Array(items) => {
            for item in items {
                let content = match &item["content"] {
                    Value::String(text) => text.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => item["output"].as_str().unwrap_or_default().to_owned(),
                };
                let role = item["role"].as_str().unwrap_or("tool");
                messages.push(json!({"role": role, "content": content}));
            }
        }
        _ => {}
    }
    Value::Array(messages)
}

/// The `usage` the mock reports for a Responses request, and its (input, output, cached, reasoning) figures.
pub fn responses_usage(body: &Value) -> (u32, u32, u32, u32) {
    let (prompt, completion, cached) = reported_usage(&responses_messages(body));
    let reasoning = if body["reasoning"].is_object() {
        REASONING_TOKENS
    } else {
        0
    };
    (prompt, completion + reasoning, cached, reasoning)
}

fn usage_object(body: &Value, long: Option<usize>) -> Value {
    let (input, mut output, cached, reasoning) = responses_usage(body);
    if let Some(n) = long {
        output = long_completion_tokens(n) + reasoning;
    }
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

fn text_of(body: &Value, long: Option<usize>) -> String {
    match long {
        Some(n) => long_event_text().repeat(n),
        None => completion_text(&responses_messages(body)),
    }
}

const CALL_ARGUMENTS: [&str; 3] = ["{\"city\": ", "\"Zürich\", ", "\"unit\": \"c\"}"];

fn output_items(body: &Value, text: &str) -> Vec<Value> {
    let mut items = vec![json!({
        "id": "msg_mock", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })];
    if body["tools"].is_array() {
        items.push(json!({
            "id": "fc_mock", "type": "function_call", "status": "completed", "call_id": "call_mock",
            "name": "get_weather", "arguments": CALL_ARGUMENTS.concat(),
        }));
    }
    items
}

fn response_object(body: &Value, status: &str, output: Vec<Value>, usage: Value) -> Value {
    json!({
        "id": "resp_mock",
        "object": "response",
        "created_at": 1_795_338_902,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": body["instructions"],
        "max_output_tokens": body["max_output_tokens"],
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": body["tools"].as_array().cloned().unwrap_or_default(),
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    })
}

/// A whole Responses answer; without `usage` (`null`) when `with_usage` is false.
pub fn responses_answer(body: &Value, with_usage: bool, long: Option<usize>) -> Value {
    let text = text_of(body, long);
    let usage = if with_usage {
        usage_object(body, long)
    } else {
        Value::Null
    };
    response_object(body, "completed", output_items(body, &text), usage)
}

/// The events of a streamed Responses answer, each a complete `event:`/`data:` pair with its blank line.
pub fn responses_events(body: &Value, with_usage: bool, long: Option<usize>) -> Vec<String> {
    let mut sequence = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        events.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    let text = text_of(body, long);
    let pending = response_object(body, "in_progress", Vec::new(), Value::Null);
    push("response.created", json!({"response": pending}));
    push("response.in_progress", json!({"response": pending}));
    let message = json!({"id": "msg_mock", "type": "message", "status": "in_progress", "role": "assistant", "content": []});
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    let pieces: Vec<String> = match long {
        Some(n) => (0..n).map(|_| long_event_text()).collect(),
        None => text.split_inclusive(' ').map(str::to_owned).collect(),
    };
    for piece in pieces {
        push(
            "response.output_text.delta",
            json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    push(
        "response.content_part.done",
        json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": part}),
    );
    let items = output_items(body, &text);
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": items[0]}),
    );
    if let Some(call) = items.get(1) {
        let mut added = call.clone();
        added["arguments"] = json!("");
        added["status"] = json!("in_progress");
        push(
            "response.output_item.added",
            json!({"output_index": 1, "item": added}),
        );
        for fragment in CALL_ARGUMENTS {
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": "fc_mock", "output_index": 1, "delta": fragment}),
            );
        }
        push(
            "response.function_call_arguments.done",
            json!({"item_id": "fc_mock", "output_index": 1, "arguments": CALL_ARGUMENTS.concat()}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 1, "item": call}),
        );
    }
    let usage = if with_usage {
        usage_object(body, long)
    } else {
        Value::Null
    };
    push(
        "response.completed",
        json!({"response": response_object(body, "completed", items, usage)}),
    );
    events
}

//! Streamed answers translated one upstream SSE event at a time: [`AnthropicToOpenAiStream`] turns Anthropic's
//! `message_start` / `content_block_*` / `message_delta` / `message_stop` events into OpenAI
//! `chat.completion.chunk`s ending with `data: [DONE]`, and [`OpenAiToAnthropicStream`] the reverse. Each is fed
//! the event name (if any) and the data of one event, and returns the client's SSE frames to send (possibly
//! none). Memory is bounded: nothing of the answer's text or arguments is kept, only the block bookkeeping
//! (capped at [`MAX_BLOCKS`]) and the usage figures. An event that cannot be read is skipped and counted
//! ([`malformed_events`](AnthropicToOpenAiStream::malformed_events)); nothing here panics.
//!
//! Thinking is carried, not dropped: Anthropic's `thinking_delta` becomes OpenAI's `delta.reasoning_content`
//! (as DeepSeek and vLLM stream reasoning), and `reasoning_content` becomes a `thinking` block the other way.
//! Anthropic's `signature_delta` has no OpenAI counterpart and is left out.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::error::{
    anthropic_error_value_to_openai, openai_error_value_to_anthropic, openai_stream_error_status,
};
use super::response::{finish_reason, stop_reason};
use super::usage::{AnthropicUsageTracker, MeteredUsage};

/// The most content blocks (or tool calls) one translated stream tracks; blocks beyond are skipped as
/// malformed.
pub const MAX_BLOCKS: usize = 4096;

pub(super) fn openai_frame(value: &Value) -> Vec<u8> {
    let mut frame = b"data: ".to_vec();
    // Serializing a `Value` cannot fail (its keys are strings); should it, the frame is empty data.
    let _ = serde_json::to_writer(&mut frame, value);
    frame.extend_from_slice(b"\n\n");
    frame
}

pub(super) const OPENAI_DONE: &[u8] = b"data: [DONE]\n\n";

fn anthropic_frame(out: &mut Vec<u8>, event: &str, value: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

// -----------------------------------------------------------------------------------------------------------
// Anthropic → OpenAI
// -----------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum AnthropicBlock {
    Text,
    Thinking,
    /// A `tool_use` block and its OpenAI `tool_calls` index.
    Tool(usize),
    /// `redacted_thinking`, server tools, anything newer: not carried.
    Other,
}

/// An Anthropic Messages stream → OpenAI chat completion chunks.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    include_usage: bool,
    created: i64,
    id: String,
    model: String,
    blocks: HashMap<u64, AnthropicBlock>,
    next_tool: usize,
    finish: Option<&'static str>,
    usage: AnthropicUsageTracker,
    done: bool,
    malformed: u64,
}

impl AnthropicToOpenAiStream {
    /// `include_usage`: the client asked for the usage chunk (`stream_options.include_usage`); `created`: the
    /// Unix time the chunks report.
    pub fn new(include_usage: bool, created: i64) -> Self {
        Self {
            include_usage,
            created,
            id: String::new(),
            model: String::new(),
            blocks: HashMap::new(),
            next_tool: 0,
            finish: None,
            usage: AnthropicUsageTracker::default(),
            done: false,
            malformed: 0,
        }
    }

    /// What the answer consumed as reported so far (the whole answer's once `message_delta` has arrived),
    /// whether or not the client asked for the usage chunk.
    pub fn usage(&self) -> Option<MeteredUsage> {
        self.usage.usage()
    }

    /// Events skipped because they could not be read.
    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    /// The client's stream is complete (`[DONE]` or an error frame was sent); later events are ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream's model, from `message_start`.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Vec<u8> {
        openai_frame(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn skip(&mut self) -> Vec<u8> {
        self.malformed += 1;
        Vec::new()
    }

    /// One upstream event (its `event:` name, if any, and its data) → the client's frames.
    pub fn push(&mut self, event: Option<&str>, data: &[u8]) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return self.skip();
        };
        if !value.is_object() {
            return self.skip();
        }
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event)
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let Some(message) = value.get("message").filter(|m| m.is_object()) else {
                    return self.skip();
                };
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    id.clone_into(&mut self.id);
                }
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    model.clone_into(&mut self.model);
                }
                self.usage.observe(message.get("usage"));
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            "content_block_start" => {
                let (Some(index), Some(block)) = (
                    value.get("index").and_then(Value::as_u64),
                    value.get("content_block").filter(|b| b.is_object()),
                ) else {
                    return self.skip();
                };
                if self.blocks.len() >= MAX_BLOCKS && !self.blocks.contains_key(&index) {
                    return self.skip();
                }
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        self.blocks.insert(index, AnthropicBlock::Text);
                        match block
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            Some(text) => self.chunk(json!({"content": text}), None),
                            None => Vec::new(),
                        }
                    }
                    Some("thinking") => {
                        self.blocks.insert(index, AnthropicBlock::Thinking);
                        match block
                            .get("thinking")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            Some(text) => self.chunk(json!({"reasoning_content": text}), None),
                            None => Vec::new(),
                        }
                    }
                    Some("tool_use") => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        self.blocks.insert(index, AnthropicBlock::Tool(tool));
                        let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                        let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                        self.chunk(
                            json!({"tool_calls": [{
                                "index": tool,
                                "id": id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }]}),
                            None,
                        )
                    }
                    _ => {
                        self.blocks.insert(index, AnthropicBlock::Other);
                        Vec::new()
                    }
                }
            }
            "content_block_delta" => {
                let (Some(index), Some(delta)) = (
                    value.get("index").and_then(Value::as_u64),
                    value.get("delta").filter(|d| d.is_object()),
                ) else {
                    return self.skip();
                };
                let Some(block) = self.blocks.get(&index).copied() else {
                    return self.skip();
                };
                let field = |name: &str| delta.get(name).and_then(Value::as_str);
                // Empty fragments (Anthropic opens tool input with one) say nothing: not sent.
                if ["text", "thinking", "partial_json"]
                    .iter()
                    .any(|f| field(f) == Some(""))
                {
                    return Vec::new();
                }
                match (delta.get("type").and_then(Value::as_str), block) {
                    (Some("text_delta"), AnthropicBlock::Text) => match field("text") {
                        Some(text) => self.chunk(json!({"content": text}), None),
                        None => self.skip(),
                    },
                    (Some("thinking_delta"), AnthropicBlock::Thinking) => match field("thinking") {
                        Some(text) => self.chunk(json!({"reasoning_content": text}), None),
                        None => self.skip(),
                    },
                    (Some("input_json_delta"), AnthropicBlock::Tool(tool)) => match field("partial_json") {
                        Some(fragment) => self.chunk(
                            json!({"tool_calls": [{"index": tool, "function": {"arguments": fragment}}]}),
                            None,
                        ),
                        None => self.skip(),
                    },
                    // Signatures, citations, deltas of blocks not carried.
                    (Some("signature_delta" | "citations_delta"), _) | (_, AnthropicBlock::Other) => {
                        Vec::new()
                    }
                    _ => self.skip(),
                }
            }
            "content_block_stop" | "ping" => Vec::new(),
            "message_delta" => {
                self.usage.observe(value.get("usage"));
                let stop = value
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if self.finish.is_some() {
                    return Vec::new();
                }
                let finish = finish_reason(stop);
                self.finish = Some(finish);
                self.chunk(json!({}), Some(finish))
            }
            "message_stop" => self.close(),
            "error" => {
                self.done = true;
                openai_frame(&anthropic_error_value_to_openai(500, &value).body)
            }
            // Event types newer than this translation.
            _ => Vec::new(),
        }
    }

    /// The end of the client's stream: the usage chunk when asked for, and `[DONE]`.
    fn close(&mut self) -> Vec<u8> {
        self.done = true;
        let mut out = Vec::new();
        if self.finish.is_none() {
            let finish = finish_reason(None);
            self.finish = Some(finish);
            out.extend(self.chunk(json!({}), Some(finish)));
        }
        if self.include_usage {
            let usage = self.usage().unwrap_or_default().to_openai();
            out.extend(openai_frame(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            })));
        }
        out.extend_from_slice(OPENAI_DONE);
        out
    }

    /// The upstream's stream ended. If it ended after `message_delta` but without `message_stop`, the client's
    /// stream is closed as if it had come; a stream cut before its stop reason is left as it is (the caller
    /// decides how to report a cut answer).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done || self.finish.is_none() {
            return Vec::new();
        }
        self.close()
    }
}

// -----------------------------------------------------------------------------------------------------------
// OpenAI → Anthropic
// -----------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
    /// The OpenAI `tool_calls` index.
    Tool(u64),
}

/// An OpenAI chat completion stream (asked with `stream_options.include_usage`) → Anthropic Messages events.
/// `message_start` reports 0 tokens (OpenAI reports usage only at the end); the real figures are in
/// `message_delta.usage`, sent when `[DONE]` arrives.
#[derive(Debug, Default)]
pub struct OpenAiToAnthropicStream {
    started: bool,
    model: String,
    /// The open Anthropic block: its index and what it holds.
    open: Option<(u64, OpenBlock)>,
    next_block: u64,
    /// The highest tool-call index seen: a fragment for a lower one arrives after its block was closed.
    last_tool: Option<u64>,
    stop: Option<&'static str>,
    usage: Option<MeteredUsage>,
    done: bool,
    malformed: u64,
}

impl OpenAiToAnthropicStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// The upstream's usage, once its usage chunk has arrived.
    pub fn usage(&self) -> Option<MeteredUsage> {
        self.usage
    }

    /// Events (or tool-call fragments) skipped because they could not be read or placed.
    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    /// The client's stream is complete (`message_stop` or an error event was sent).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream's model, from its first chunk.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            anthropic_frame(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// Makes `kind` the open block (closing another), starting it with `start`; its index.
    fn ensure_open(&mut self, out: &mut Vec<u8>, kind: OpenBlock, start: impl FnOnce() -> Value) -> u64 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        anthropic_frame(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start()}),
        );
        index
    }

    fn delta(out: &mut Vec<u8>, index: u64, delta: Value) {
        anthropic_frame(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    /// One upstream event (its `event:` name, if any, and its data) → the client's frames.
    pub fn push(&mut self, _event: Option<&str>, data: &[u8]) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        if data.trim_ascii() == b"[DONE]" {
            return self.close();
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            self.malformed += 1;
            return Vec::new();
        };
        if !chunk.is_object() {
            self.malformed += 1;
            return Vec::new();
        }
        let mut out = Vec::new();
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            self.done = true;
            let error = openai_error_value_to_anthropic(openai_stream_error_status(&chunk), &chunk);
            anthropic_frame(&mut out, "error", &error.body);
            return out;
        }
        if !self.started {
            self.started = true;
            if let Some(model) = chunk.get("model").and_then(Value::as_str) {
                model.clone_into(&mut self.model);
            }
            let id = chunk.get("id").and_then(Value::as_str).unwrap_or_default();
            anthropic_frame(
                &mut out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            );
        }
        if let Some(usage) = chunk.get("usage").and_then(MeteredUsage::from_openai) {
            self.usage = Some(usage);
        }
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| {
                choices
                    .iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            });
        let Some(choice) = choice else {
            return out;
        };
        if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
            self.translate_delta(delta, &mut out);
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(Some(finish)));
            self.close_block(&mut out);
        }
        out
    }

    fn translate_delta(&mut self, delta: &Value, out: &mut Vec<u8>) {
        let text_of = |field: &str| delta.get(field).and_then(Value::as_str).filter(|t| !t.is_empty());
        if let Some(reasoning) = text_of("reasoning_content") {
            let index = self.ensure_open(
                out,
                OpenBlock::Thinking,
                || json!({"type": "thinking", "thinking": "", "signature": ""}),
            );
            Self::delta(
                out,
                index,
                json!({"type": "thinking_delta", "thinking": reasoning}),
            );
        }
        for field in ["content", "refusal"] {
            if let Some(text) = text_of(field) {
                let index = self.ensure_open(out, OpenBlock::Text, || json!({"type": "text", "text": ""}));
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
        }
        let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) else {
            return;
        };
        for call in calls {
            let Some(tool) = call.get("index").and_then(Value::as_u64) else {
                self.malformed += 1;
                continue;
            };
            let function = call.get("function");
            let arguments = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let index = match self.open {
                Some((index, OpenBlock::Tool(open))) if open == tool => index,
                _ if self.last_tool.is_none_or(|last| tool > last) && self.next_block < MAX_BLOCKS as u64 => {
                    self.last_tool = Some(tool);
                    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = function
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    self.ensure_open(
                        out,
                        OpenBlock::Tool(tool),
                        || json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    )
                }
                // A fragment of a tool call whose block is closed (Anthropic blocks cannot reopen).
                _ => {
                    self.malformed += 1;
                    continue;
                }
            };
            if !arguments.is_empty() {
                Self::delta(
                    out,
                    index,
                    json!({"type": "input_json_delta", "partial_json": arguments}),
                );
            }
        }
    }

    /// The end of the client's stream: the open block closed, `message_delta` with the stop reason and the
    /// usage, `message_stop`.
    fn close(&mut self) -> Vec<u8> {
        self.done = true;
        let mut out = Vec::new();
        self.close_block(&mut out);
        let usage = self.usage.unwrap_or_default().to_anthropic();
        anthropic_frame(
            &mut out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage,
            }),
        );
        anthropic_frame(&mut out, "message_stop", &json!({"type": "message_stop"}));
        out
    }

    /// The upstream's stream ended. If it ended after a finish reason but without `[DONE]`, the client's stream
    /// is closed as if it had come; a stream cut before its finish reason is left as it is.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done || self.stop.is_none() {
            return Vec::new();
        }
        self.close()
    }
}

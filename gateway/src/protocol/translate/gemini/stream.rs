//! A Gemini `streamGenerateContent?alt=sse` stream translated one event at a time into OpenAI
//! `chat.completion.chunk`s ([`GeminiToOpenAiStream`]). Each Gemini event is a `GenerateContentResponse` holding
//! the next parts of each candidate; the one that ends a candidate carries its `finishReason`, and
//! `usageMetadata` comes on some events, the last one complete (the latest is kept). Gemini sends no final event
//! of its own: [`finish`](GeminiToOpenAiStream::finish), called when the upstream's stream ends, sends the usage
//! chunk and `data: [DONE]`.
//!
//! Memory is bounded: nothing of the answer's text is kept, only the bookkeeping of at most [`MAX_CANDIDATES`]
//! candidates and the usage figures. An event that cannot be read is skipped and counted
//! ([`malformed_events`](GeminiToOpenAiStream::malformed_events)); nothing here panics.

use serde_json::{Value, json};

use super::super::stream::{OPENAI_DONE, openai_frame};
use super::super::usage::MeteredUsage;
use super::error::gemini_error_value_to_openai;
use super::response::{Part, answer_id, arguments, call_id, finish_reason, part, parts};

/// The most candidates one translated stream tracks; parts of candidates beyond are skipped as malformed.
pub const MAX_CANDIDATES: usize = 8;

/// What the stream remembers of one candidate (one OpenAI choice).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: u64,
    /// Tool calls sent so far: the next one's `index` in `delta.tool_calls`.
    tool_calls: usize,
    finished: bool,
}

/// A Gemini `streamGenerateContent?alt=sse` stream → OpenAI chat completion chunks.
#[derive(Debug)]
pub struct GeminiToOpenAiStream {
    include_usage: bool,
    created: i64,
    /// The chunks' `id`, set by the first event read.
    id: Option<String>,
    model: String,
    candidates: Vec<Candidate>,
    /// Tool calls sent so far across candidates, for their ids.
    next_call: usize,
    usage: Option<MeteredUsage>,
    done: bool,
    malformed: u64,
}

impl GeminiToOpenAiStream {
    /// `include_usage`: the client asked for the usage chunk (`stream_options.include_usage`); `created`: the
    /// Unix time the chunks report; `model`: the model the chunks name until Gemini reports its `modelVersion`.
    pub fn new(include_usage: bool, created: i64, model: &str) -> Self {
        Self {
            include_usage,
            created,
            id: None,
            model: model.to_owned(),
            candidates: Vec::new(),
            next_call: 0,
            usage: None,
            done: false,
            malformed: 0,
        }
    }

    /// What the answer consumed as reported so far (the latest `usageMetadata`; the whole answer's once the last
    /// event has arrived), whether or not the client asked for the usage chunk.
    pub fn usage(&self) -> Option<MeteredUsage> {
        self.usage
    }

    /// Events (or parts) skipped because they could not be read.
    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    /// The client's stream is complete (`[DONE]` or an error frame was sent); later events are ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The model the chunks name: Gemini's `modelVersion` once reported, else the one given to [`Self::new`].
    pub fn model(&self) -> &str {
        &self.model
    }

    fn chunk(&self, index: u64, delta: Value, finish: Option<&str>) -> Vec<u8> {
        openai_frame(&json!({
            "id": self.id.as_deref().unwrap_or_default(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn skip(&mut self) -> Vec<u8> {
        self.malformed += 1;
        Vec::new()
    }

    /// One upstream event (its `event:` name, unused: Gemini names none, and its data) → the client's frames.
    pub fn push(&mut self, _event: Option<&str>, data: &[u8]) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return self.skip();
        };
        if !value.is_object() {
            return self.skip();
        }
        if value.get("error").is_some_and(Value::is_object) {
            self.done = true;
            return openai_frame(&gemini_error_value_to_openai(0, &value).body);
        }
        if self.id.is_none() {
            self.id = Some(answer_id(&value, self.created));
        }
        if let Some(model) = value
            .get("modelVersion")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            && model != self.model
        {
            model.clone_into(&mut self.model);
        }
        if let Some(usage) = value.get("usageMetadata").and_then(MeteredUsage::from_gemini) {
            self.usage = Some(usage);
        }
        let mut out = Vec::new();
        match value.get("candidates") {
            None | Some(Value::Null) => {}
            Some(Value::Array(candidates)) => {
                for (position, candidate) in candidates.iter().enumerate() {
                    self.candidate(candidate, position as u64, &mut out);
                }
            }
            Some(_) => self.malformed += 1,
        }
        let blocked = value
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some_and(|r| !r.is_null());
        if blocked && self.candidates.is_empty() {
            // The prompt was refused before any candidate: one choice, filtered.
            if let Some(slot) = self.start(0, &mut out) {
                self.end(slot, "content_filter", &mut out);
            }
        }
        out
    }

    /// The slot of candidate `index`, tracking it (and sending its first chunk, with the role) when new; `None`
    /// when [`MAX_CANDIDATES`] are already tracked.
    fn start(&mut self, index: u64, out: &mut Vec<u8>) -> Option<usize> {
        if let Some(slot) = self.candidates.iter().position(|c| c.index == index) {
            return Some(slot);
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            return None;
        }
        self.candidates.push(Candidate {
            index,
            tool_calls: 0,
            finished: false,
        });
        out.extend(self.chunk(index, json!({"role": "assistant", "content": ""}), None));
        Some(self.candidates.len() - 1)
    }

    /// Sends the finish chunk of the candidate in `slot`.
    fn end(&mut self, slot: usize, finish: &str, out: &mut Vec<u8>) {
        if let Some(candidate) = self.candidates.get_mut(slot) {
            candidate.finished = true;
            let index = candidate.index;
            out.extend(self.chunk(index, json!({}), Some(finish)));
        }
    }

    fn candidate(&mut self, candidate: &Value, position: u64, out: &mut Vec<u8>) {
        if !candidate.is_object() {
            self.malformed += 1;
            return;
        }
        let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position);
        let Some(slot) = self.start(index, out) else {
            self.malformed += 1;
            return;
        };
        let Some(mut state) = self.candidates.get(slot).copied() else {
            return;
        };
        if state.finished {
            // Gemini sends nothing after a candidate's finish reason; should it, it is not the client's.
            return;
        }
        for p in parts(candidate) {
            match part(p) {
                Part::Text("") | Part::Thought("") | Part::Other => {}
                Part::Text(text) => out.extend(self.chunk(index, json!({"content": text}), None)),
                Part::Thought(text) => {
                    out.extend(self.chunk(index, json!({"reasoning_content": text}), None))
                }
                Part::Call(name, args) => {
                    let delta = json!({"tool_calls": [{
                        "index": state.tool_calls,
                        "id": call_id(self.next_call),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments(args)},
                    }]});
                    state.tool_calls += 1;
                    self.next_call += 1;
                    out.extend(self.chunk(index, delta, None));
                }
                Part::Malformed => self.malformed += 1,
            }
        }
        if let Some(candidate_state) = self.candidates.get_mut(slot) {
            *candidate_state = state;
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.end(slot, finish_reason(Some(reason), state.tool_calls > 0), out);
        }
    }

    /// The upstream's stream ended. If a candidate has finished, the client's stream is closed: the usage chunk
    /// when asked for, and `[DONE]`. A stream cut before any finish reason is left as it is (the caller decides
    /// how to report a cut answer).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done || !self.candidates.iter().any(|c| c.finished) {
            return Vec::new();
        }
        self.done = true;
        let mut out = Vec::new();
        if self.include_usage {
            out.extend(openai_frame(&json!({
                "id": self.id.as_deref().unwrap_or_default(),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage.unwrap_or_default().to_openai(),
            })));
        }
        out.extend_from_slice(OPENAI_DONE);
        out
    }
}

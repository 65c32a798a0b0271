//! A whole Gemini `GenerateContentResponse` as an OpenAI `chat.completion` ([`gemini_to_openai_answer`]): one
//! choice per candidate, text parts as `content`, thought parts as `reasoning_content`, `functionCall` parts as
//! `tool_calls`, the finish reason mapped ([`finish_reason`]) and the usage read from `usageMetadata`
//! ([`MeteredUsage::from_gemini`]). An answer that is not what Gemini's protocol promises is a
//! [`TranslateError::Upstream`] (a 502 for the client).

use serde_json::{Map, Value, json};

use super::super::TranslateError;
use super::super::response::{TranslatedAnswer, parse, upstream};
use super::super::usage::MeteredUsage;

/// Gemini's `finishReason` → OpenAI's `finish_reason`. `STOP` is `tool_calls` when the candidate called
/// functions; the safety family (`SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `LANGUAGE`,
/// `IMAGE_SAFETY`…) is `content_filter`; `MAX_TOKENS` is `length`; anything else (`OTHER`,
/// `MALFORMED_FUNCTION_CALL`, newer values) is `stop`.
pub(crate) fn finish_reason(reason: Option<&str>, tool_calls: bool) -> &'static str {
    match reason {
        Some("STOP") | None if tool_calls => "tool_calls",
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "LANGUAGE"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => "content_filter",
        _ => "stop",
    }
}

/// One part of a candidate's content, as the translation sees it.
#[derive(Debug)]
pub(crate) enum Part<'a> {
    Text(&'a str),
    /// A part with `thought: true`: the model's reasoning summary.
    Thought(&'a str),
    /// A `functionCall`: its name and `args`.
    Call(&'a str, Option<&'a Value>),
    /// Anything without an OpenAI counterpart (`inlineData`, `executableCode`, a bare `thoughtSignature`…).
    Other,
    /// A part that is not an object, or a `functionCall` without a name.
    Malformed,
}

pub(crate) fn part(part: &Value) -> Part<'_> {
    if !part.is_object() {
        return Part::Malformed;
    }
    if let Some(call) = part.get("functionCall").filter(|c| !c.is_null()) {
        return match call.get("name").and_then(Value::as_str) {
            Some(name) => Part::Call(name, call.get("args").filter(|a| !a.is_null())),
            None => Part::Malformed,
        };
    }
    match part.get("text").and_then(Value::as_str) {
        Some(text) if part.get("thought").and_then(Value::as_bool) == Some(true) => Part::Thought(text),
        Some(text) => Part::Text(text),
        None => Part::Other,
    }
}

/// A candidate's parts (`content.parts`); none when it has no content (a blocked or empty candidate).
pub(crate) fn parts(candidate: &Value) -> &[Value] {
    candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The id of the `n`th tool call of an answer.
pub(crate) fn call_id(n: usize) -> String {
    format!("call_{n}")
}

/// The arguments of a tool call as OpenAI carries them: `args` as a JSON string, `{}` when absent.
pub(crate) fn arguments(args: Option<&Value>) -> String {
    args.map_or_else(|| "{}".to_owned(), Value::to_string)
}

/// The answer's id: `chatcmpl-` and Gemini's `responseId`, or one made of `created` when it has none.
pub(crate) fn answer_id(response: &Value, created: i64) -> String {
    match response
        .get("responseId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
    {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-gemini-{created}"),
    }
}

/// A Gemini `GenerateContentResponse` → an OpenAI `chat.completion`. `model` is reported when the answer has
/// no `modelVersion`; `created` is the Unix time to report (Gemini's answer has none). Tool calls get ids
/// `call_0`, `call_1`… in the order met across the answer. A prompt blocked before any candidate
/// (`promptFeedback.blockReason`) is one choice with `content: null` and `finish_reason: content_filter`.
pub fn gemini_to_openai_answer(
    body: &[u8],
    model: &str,
    created: i64,
) -> Result<TranslatedAnswer, TranslateError> {
    let answer = parse(body)?;
    if answer.get("error").is_some_and(|e| !e.is_null()) {
        return Err(upstream("an error object in a successful answer"));
    }
    let candidates = match answer.get("candidates") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(candidates)) => candidates.as_slice(),
        Some(_) => return Err(upstream("`candidates` is not an array")),
    };
    let mut next_call = 0;
    let mut choices = Vec::with_capacity(candidates.len().max(1));
    for (position, candidate) in candidates.iter().enumerate() {
        if !candidate.is_object() {
            return Err(upstream("a candidate that is not an object"));
        }
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        for p in parts(candidate) {
            match part(p) {
                Part::Text(t) => text.push_str(t),
                Part::Thought(t) => reasoning.push_str(t),
                Part::Call(name, args) => {
                    tool_calls.push(json!({
                        "id": call_id(next_call),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments(args)},
                    }));
                    next_call += 1;
                }
                Part::Other => {}
                Part::Malformed => return Err(upstream("a malformed content part")),
            }
        }
        let finish = finish_reason(
            candidate.get("finishReason").and_then(Value::as_str),
            !tool_calls.is_empty(),
        );
        let mut message = Map::new();
        message.insert("role".to_owned(), Value::from("assistant"));
        let content = if text.is_empty() && (!tool_calls.is_empty() || finish == "content_filter") {
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
        let index = candidate
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        let blocked = answer
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some_and(|r| !r.is_null());
        if !blocked {
            return Err(upstream("no candidate and no block reason"));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let usage = answer.get("usageMetadata").and_then(MeteredUsage::from_gemini);
    let model = answer
        .get("modelVersion")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(model);
    let mut out = json!({
        "id": answer_id(&answer, created),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let (Some(usage), Some(object)) = (usage, out.as_object_mut()) {
        object.insert("usage".to_owned(), usage.to_openai());
    }
    Ok(TranslatedAnswer { body: out, usage })
}

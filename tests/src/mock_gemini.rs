//! The mock provider's Google Gemini API: `POST /{version}/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, keyed by `x-goog-api-key`, shaped as Google's API reference shows them — a
//! `GenerateContentResponse` with `candidates` (`content.parts` of text and `functionCall`s, `finishReason`),
//! `usageMetadata` (`promptTokenCount` counting `cachedContentTokenCount`, `candidatesTokenCount`,
//! `thoughtsTokenCount` when the request asks for thinking, `totalTokenCount`) and `modelVersion`; a stream is
//! one such response per event, text a word at a time with running usage, the last with its `finishReason`; an
//! error is `{"error": {"code", "message", "status"}}` (a wrong key is Gemini's 400 `API_KEY_INVALID`). The
//! answer's text and usage follow the mock's usual deterministic rules ([`completion_text`],
//! [`reported_usage`]).

use actix_web::HttpResponse;
use serde_json::{Value, json};

use crate::mock_provider::{completion_text, long_completion_tokens, long_event_text, reported_usage};

/// The thinking tokens the mock reports for a request whose `generationConfig.thinkingConfig` asks for thought.
pub const THOUGHTS_TOKENS: u32 = 24;

/// Whether `path` is a Gemini call, and the model it names: `/v1beta/models/gemini-2.5-flash:generateContent`.
pub fn gemini_call(path: &str) -> Option<(String, bool)> {
    let action = path.split("/models/").nth(1)?;
    let (model, method) = action.split_once(':')?;
    match method {
        "generateContent" => Some((model.to_owned(), false)),
        "streamGenerateContent" => Some((model.to_owned(), true)),
        _ => None,
    }
}

/// A Gemini request's `systemInstruction` and `contents` as chat messages with string contents.
pub fn gemini_messages(body: &Value) -> Value {
    let mut messages = Vec::new();
    let text_of = |content: &Value| -> String {
        content["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|part| match part["text"].as_str() {
                Some(text) => text.to_owned(),
                None if part["functionResponse"].is_object() => {
                    part["functionResponse"]["response"].to_string()
                }
                None => String::new(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if body["systemInstruction"].is_object() {
        messages.push(json!({"role": "system", "content": text_of(&body["systemInstruction"])}));
    }
    for content in body["contents"].as_array().into_iter().flatten() {
        let role = if content["role"] == "model" {
            "assistant"
        } else {
            "user"
        };
        messages.push(json!({"role": role, "content": text_of(content)}));
    }
    Value::Array(messages)
}

/// The usage the mock reports for a Gemini request: (prompt, candidates, cached, thoughts).
pub fn gemini_usage(body: &Value) -> (u32, u32, u32, u32) {
    let (prompt, completion, cached) = reported_usage(&gemini_messages(body));
    let thinking = &body["generationConfig"]["thinkingConfig"];
    let thoughts = if thinking.is_object() && thinking["thinkingBudget"] != 0 {
        THOUGHTS_TOKENS
    } else {
        0
    };
    (prompt, completion, cached, thoughts)
}

fn usage_metadata(prompt: u32, candidates: u32, cached: u32, thoughts: u32) -> Value {
    let mut usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if cached > 0 {
        usage["cachedContentTokenCount"] = json!(cached);
    }
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    usage
}

fn wants_tools(body: &Value) -> bool {
    body["tools"][0]["functionDeclarations"].is_array()
}

fn function_call() -> Value {
    json!({"functionCall": {"name": "get_weather", "args": {"city": "Zürich", "unit": "c"}}})
}

fn answer_text(body: &Value, long: Option<usize>) -> String {
    match long {
        Some(n) => long_event_text().repeat(n),
        None => completion_text(&gemini_messages(body)),
    }
}

/// A whole `GenerateContentResponse`; without `usageMetadata` when `with_usage` is false.
pub fn gemini_answer(body: &Value, model: &str, with_usage: bool, long: Option<usize>) -> Value {
    let mut parts = vec![json!({"text": answer_text(body, long)})];
    if wants_tools(body) {
        parts.push(function_call());
    }
    let mut answer = json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": "STOP",
            "index": 0,
        }],
        "modelVersion": model,
        "responseId": "mock-gemini-response",
    });
    if with_usage {
        let (prompt, mut candidates, cached, thoughts) = gemini_usage(body);
        if let Some(n) = long {
            candidates = long_completion_tokens(n);
        }
        answer["usageMetadata"] = usage_metadata(prompt, candidates, cached, thoughts);
    }
    answer
}

/// The events of `streamGenerateContent?alt=sse`: one response per word (or per long piece), with running usage
/// figures; the last one carries the `finishReason` and the final usage.
pub fn gemini_events(body: &Value, model: &str, with_usage: bool, long: Option<usize>) -> Vec<String> {
    let (prompt, candidates, cached, thoughts) = gemini_usage(body);
    let text = answer_text(body, long);
    let mut pieces: Vec<Value> = match long {
        Some(n) => (0..n).map(|_| json!({"text": long_event_text()})).collect(),
        None => text.split_inclusive(' ').map(|w| json!({"text": w})).collect(),
    };
    if wants_tools(body) {
        pieces.push(function_call());
    }
    let total = match long {
        Some(n) => long_completion_tokens(n),
        None => candidates,
    };
    let count = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let last = i + 1 == count;
            let mut candidate = json!({"content": {"role": "model", "parts": [part]}, "index": 0});
            if last {
                candidate["finishReason"] = json!("STOP");
            }
            let mut event = json!({"candidates": [candidate], "modelVersion": model, "responseId": "mock-gemini-response"});
            if with_usage {
                let so_far = if last {
                    total
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX).min(total)
                };
                let thinking = if last { thoughts } else { 0 };
                event["usageMetadata"] = usage_metadata(prompt, so_far, cached, thinking);
            }
            format!("data: {event}\r\n\r\n")
        })
        .collect()
}

/// An error in Gemini's shape: `{"error": {"code", "message", "status"}}`, with the status name Google gives
/// each HTTP status.
pub fn gemini_error(status: u16, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let code =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    let mut response = HttpResponse::build(code);
    if let Some(seconds) = retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    response.json(json!({"error": {"code": status, "message": message, "status": name}}))
}

/// Gemini's answer to a wrong or missing key: 400 `INVALID_ARGUMENT` with the reason `API_KEY_INVALID`.
pub fn gemini_wrong_key() -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }],
    }}))
}

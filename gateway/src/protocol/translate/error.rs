//! An upstream error answer (status and body) in the client's protocol: Anthropic's
//! `{"type":"error","error":{"type","message"}}` and OpenAI's `{"error":{"message","type","param","code"}}`,
//! each way, with the status mapped alongside the error type (Anthropic's 529 `overloaded_error` is OpenAI's 503,
//! and back). A body of neither shape is wrapped, its text cut to [`MAX_UPSTREAM_TEXT`] bytes. Also the error
//! objects a translated stream sends when its upstream reports an error mid-stream.

use serde_json::{Value, json};

/// How much of an unrecognised upstream error body is quoted to the client.
pub const MAX_UPSTREAM_TEXT: usize = 1024;

/// An error answer for the client: the status to answer with and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedError {
    pub status: u16,
    pub body: Value,
}

/// OpenAI's description of one error: status, `type`, `code`.
struct OpenAiKind {
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
}

/// Anthropic's error `type` → OpenAI's status, `type` and `code`. Unknown types go by the upstream status.
fn openai_kind(anthropic_type: Option<&str>, status: u16) -> OpenAiKind {
    let (status, kind, code) = match anthropic_type {
        Some("invalid_request_error") => (400, "invalid_request_error", None),
        Some("authentication_error") => (401, "invalid_request_error", Some("invalid_api_key")),
        Some("permission_error") => (403, "invalid_request_error", Some("permission_denied")),
        Some("not_found_error") => (404, "invalid_request_error", Some("not_found")),
        Some("request_too_large") => (413, "invalid_request_error", Some("request_too_large")),
        Some("rate_limit_error") => (429, "requests", Some("rate_limit_exceeded")),
        Some("billing_error") => (429, "insufficient_quota", Some("insufficient_quota")),
        Some("api_error") => (500, "server_error", None),
        Some("overloaded_error") => (503, "server_error", Some("overloaded")),
        Some("timeout_error") => (504, "server_error", Some("timeout")),
        _ => match status {
            401 => (401, "invalid_request_error", Some("invalid_api_key")),
            429 => (429, "requests", Some("rate_limit_exceeded")),
            529 => (503, "server_error", Some("overloaded")),
            400..=499 => (status, "invalid_request_error", None),
            500..=599 => (status, "server_error", None),
            _ => (502, "server_error", None),
        },
    };
    OpenAiKind { status, kind, code }
}

/// OpenAI's status (and `type` / `code`) → Anthropic's status and error `type`.
fn anthropic_kind(status: u16, openai_type: Option<&str>, code: Option<&str>) -> (u16, &'static str) {
    if openai_type == Some("insufficient_quota") || code == Some("insufficient_quota") {
        return (402, "billing_error");
    }
    match status {
        400 => (400, "invalid_request_error"),
        401 => (401, "authentication_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 => (529, "overloaded_error"),
        504 => (504, "timeout_error"),
        402..=499 => (status, "invalid_request_error"),
        _ => (500, "api_error"),
    }
}

/// `text` cut to at most [`MAX_UPSTREAM_TEXT`] bytes, on a character boundary.
pub(crate) fn truncated(text: &str) -> &str {
    if text.len() <= MAX_UPSTREAM_TEXT {
        return text;
    }
    let mut end = MAX_UPSTREAM_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

pub(super) fn unrecognised(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = truncated(text.trim());
    if text.is_empty() {
        format!("the upstream answered {status} without a body")
    } else {
        format!("the upstream answered {status}: {text}")
    }
}

pub(super) fn string_at<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// The `error` object of an OpenAI body: `{"error":{…}}`, or the flat `{"object":"error","message",…}` some
/// OpenAI-compatible servers send.
fn openai_error_object(body: &Value) -> Option<&Value> {
    match body.get("error") {
        Some(error) if error.is_object() => Some(error),
        _ if string_at(body, "object") == Some("error") && string_at(body, "message").is_some() => Some(body),
        _ => None,
    }
}

/// An Anthropic error (`{"type":"error","error":{…}}`, as a body or a stream's `error` event) → OpenAI's
/// status and body. Also what a stream sends as its error frame.
pub(crate) fn anthropic_error_value_to_openai(status: u16, error: &Value) -> TranslatedError {
    let inner = error.get("error").filter(|e| e.is_object()).unwrap_or(error);
    let anthropic_type = string_at(inner, "type");
    let message = string_at(inner, "message")
        .map(|m| truncated(m).to_owned())
        .unwrap_or_else(|| unrecognised(status, error.to_string().as_bytes()));
    let kind = openai_kind(anthropic_type, status);
    TranslatedError {
        status: kind.status,
        body: json!({"error": {
            "message": message,
            "type": kind.kind,
            "param": null,
            "code": kind.code,
        }}),
    }
}

/// The status an OpenAI error without one (sent mid-stream) stands for, from its `type` and `code`:
/// `invalid_request_error` 400, `requests` / `tokens` / `rate_limit_exceeded` 429, anything else 500.
pub(crate) fn openai_stream_error_status(body: &Value) -> u16 {
    let inner = openai_error_object(body).unwrap_or(body);
    match (string_at(inner, "type"), string_at(inner, "code")) {
        (Some("invalid_request_error"), _) => 400,
        (Some("requests" | "tokens"), _) | (_, Some("rate_limit_exceeded")) => 429,
        _ => 500,
    }
}

/// An OpenAI error object (or a whole error body) → Anthropic's status and body.
pub(crate) fn openai_error_value_to_anthropic(status: u16, body: &Value) -> TranslatedError {
    let inner = openai_error_object(body).unwrap_or(body);
    let openai_type = string_at(inner, "type");
    let code = string_at(inner, "code");
    let message = string_at(inner, "message")
        .map(|m| truncated(m).to_owned())
        .unwrap_or_else(|| unrecognised(status, body.to_string().as_bytes()));
    let (status, kind) = anthropic_kind(status, openai_type, code);
    TranslatedError {
        status,
        body: json!({"type": "error", "error": {"type": kind, "message": message}}),
    }
}

/// An Anthropic upstream's error answer → what an OpenAI client gets. A body that is not Anthropic's error
/// shape is wrapped as a message quoting its first KiB; the status then decides the type.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> TranslatedError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.get("error").is_some_and(Value::is_object) => {
            anthropic_error_value_to_openai(status, &value)
        }
        _ => {
            let kind = openai_kind(None, status);
            TranslatedError {
                status: kind.status,
                body: json!({"error": {
                    "message": unrecognised(status, body),
                    "type": kind.kind,
                    "param": null,
                    "code": kind.code,
                }}),
            }
        }
    }
}

/// An OpenAI(-compatible) upstream's error answer → what an Anthropic client gets. A body of no known error
/// shape is wrapped as a message quoting its first KiB.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> TranslatedError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if openai_error_object(&value).is_some() => openai_error_value_to_anthropic(status, &value),
        _ => {
            let message = unrecognised(status, body);
            let (status, kind) = anthropic_kind(status, None, None);
            TranslatedError {
                status,
                body: json!({"type": "error", "error": {"type": kind, "message": message}}),
            }
        }
    }
}

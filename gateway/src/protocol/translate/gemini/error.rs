//! A Gemini error answer in the client's protocol: Gemini's `{"error":{"code","message","status","details"}}`
//! (or a one-element array of it, which Gemini sometimes answers) → OpenAI's
//! `{"error":{"message","type","param","code"}}` ([`gemini_error_to_openai`]), mapped by the gRPC `status`
//! name, and → Anthropic's through the OpenAI form ([`gemini_error_to_anthropic`]). The OpenAI types and codes
//! are the ones [`anthropic_error_to_openai`](super::super::anthropic_error_to_openai) gives for the same kind
//! of failure, so a client sees one shape whichever provider failed. A body of no known shape is wrapped, its
//! text cut to [`MAX_UPSTREAM_TEXT`](super::super::error::MAX_UPSTREAM_TEXT) bytes.

use serde_json::{Value, json};

use super::super::error::{
    TranslatedError, openai_error_value_to_anthropic, string_at, truncated, unrecognised,
};

/// Gemini's error `status` (or, without one, the HTTP status) → OpenAI's status, `type` and `code`.
fn openai_kind(grpc_status: Option<&str>, status: u16) -> (u16, &'static str, Option<&'static str>) {
    match grpc_status {
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => {
            (400, "invalid_request_error", None)
        }
        Some("UNAUTHENTICATED") => (401, "invalid_request_error", Some("invalid_api_key")),
        Some("PERMISSION_DENIED") => (403, "invalid_request_error", Some("permission_denied")),
        Some("NOT_FOUND") => (404, "invalid_request_error", Some("not_found")),
        Some("RESOURCE_EXHAUSTED") => (429, "requests", Some("rate_limit_exceeded")),
        Some("INTERNAL") => (500, "server_error", None),
        Some("UNAVAILABLE") => (503, "server_error", None),
        Some("DEADLINE_EXCEEDED") => (504, "server_error", Some("timeout")),
        _ => match status {
            401 => (401, "invalid_request_error", Some("invalid_api_key")),
            403 => (403, "invalid_request_error", Some("permission_denied")),
            404 => (404, "invalid_request_error", Some("not_found")),
            429 => (429, "requests", Some("rate_limit_exceeded")),
            400..=499 => (status, "invalid_request_error", None),
            500..=599 => (status, "server_error", None),
            _ => (502, "server_error", None),
        },
    }
}

/// Gemini refuses a bad API key with 400 `INVALID_ARGUMENT` and the reason `API_KEY_INVALID` in its details.
fn api_key_invalid(inner: &Value) -> bool {
    inner
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| string_at(d, "reason") == Some("API_KEY_INVALID"))
        })
}

/// A Gemini error object (`{"error":{…}}`, as a body or a stream event) → OpenAI's status and body. `status`
/// is the HTTP status; when it is not an error status (a mid-stream error), the error's own `code` stands for
/// it.
pub(crate) fn gemini_error_value_to_openai(status: u16, error: &Value) -> TranslatedError {
    let inner = error.get("error").filter(|e| e.is_object()).unwrap_or(error);
    let status = if (400..=599).contains(&status) {
        status
    } else {
        inner
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .unwrap_or(status)
    };
    let message = string_at(inner, "message")
        .map(|m| truncated(m).to_owned())
        .unwrap_or_else(|| unrecognised(status, error.to_string().as_bytes()));
    let (status, kind, code) = if api_key_invalid(inner) {
        openai_kind(Some("UNAUTHENTICATED"), status)
    } else {
        openai_kind(string_at(inner, "status"), status)
    };
    TranslatedError {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    }
}

/// The error object of a Gemini body: `{"error":{…}}`, or the first element of `[{"error":{…}}]`.
fn gemini_error_object(body: &Value) -> Option<&Value> {
    let error = match body {
        Value::Array(list) => list.first()?,
        other => other,
    };
    error.get("error").is_some_and(Value::is_object).then_some(error)
}

/// A Gemini upstream's error answer → what an OpenAI client gets. A body that is not Gemini's error shape is
/// wrapped as a message quoting its first KiB; the status is kept (502 if it is not an error status) and
/// decides the type.
pub fn gemini_error_to_openai(status: u16, body: &[u8]) -> TranslatedError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    if let Some(error) = parsed.as_ref().and_then(gemini_error_object) {
        return gemini_error_value_to_openai(status, error);
    }
    let message = unrecognised(status, body);
    let (status, kind, code) = openai_kind(None, status);
    TranslatedError {
        status,
        body: json!({"error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }}),
    }
}

/// A Gemini upstream's error answer → what an Anthropic client gets: [`gemini_error_to_openai`], then the
/// OpenAI → Anthropic error mapping (e.g. 503 → 529 `overloaded_error`, 429 → `rate_limit_error`).
pub fn gemini_error_to_anthropic(status: u16, body: &[u8]) -> TranslatedError {
    let openai = gemini_error_to_openai(status, body);
    openai_error_value_to_anthropic(openai.status, &openai.body)
}

//! The HTTP API: request and response types and the handlers behind each route.
//!
//! In: HTTP requests routed here by [`crate::server`]. Out: JSON responses, or a [`MeterError`] that renders
//! itself as an OpenAI-shaped error.
//!
//! `POST /v1/tokens/count` reads the body itself (so that every failure, including an oversized body or
//! malformed JSON, comes out as a [`MeterError`] naming the field at fault), picks the encoding, and counts
//! with [`crate::count`]: inline for small bodies, on the blocking thread pool above
//! [`INLINE_COUNT_MAX_BYTES`], so a large count never stalls the worker's other connections.
//!
//! Request bodies are lenient about extra fields, so the gateway may forward a whole chat completion request:
//! `model`, `text`, `messages` and `encoding` are read and everything else is ignored. A `null` field counts
//! as absent.

use std::panic::{AssertUnwindSafe, catch_unwind};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::count;
use crate::encoding::Encoding;
use crate::error::MeterError;
use crate::metrics::{self, InputKind};

/// Bodies up to this size are counted on the worker thread; larger ones on the blocking pool. Counting runs at
/// roughly 10 MB/s per core, so this keeps inline work under about a millisecond.
pub const INLINE_COUNT_MAX_BYTES: usize = 8 * 1024;

/// Shared state of every worker.
#[derive(Debug)]
pub struct AppState {
    /// Validated settings.
    pub config: Config,
    /// Renders the Prometheus text for `/metrics`.
    pub metrics: PrometheusHandle,
}

/// What to count.
#[derive(Debug, Clone, PartialEq)]
pub enum CountInput {
    /// A plain text (a completion, an embedding input, a legacy prompt).
    Text(String),
    /// OpenAI chat messages, as sent.
    Chat(Vec<Value>),
}

impl CountInput {
    /// Which kind of input this is, for metrics.
    pub fn kind(&self) -> InputKind {
        match self {
            CountInput::Text(_) => InputKind::Text,
            CountInput::Chat(_) => InputKind::Chat,
        }
    }

    /// Counts the tokens with `encoding`.
    pub fn tokens(&self, encoding: Encoding) -> usize {
        match self {
            CountInput::Text(text) => count::text_tokens(encoding, text),
            CountInput::Chat(messages) => count::chat_tokens(encoding, messages),
        }
    }
}

/// A validated `POST /v1/tokens/count` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CountRequest {
    /// The model the tokens are for; it picks the encoding unless `encoding` is given.
    pub model: String,
    /// An explicit encoding, overriding the model's.
    pub encoding: Option<Encoding>,
    /// The text or the messages.
    pub input: CountInput,
}

/// The `POST /v1/tokens/count` response: `{"tokens": N, "encoding": "o200k_base"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResponse {
    /// Number of tokens.
    pub tokens: usize,
    /// The encoding that counted them.
    pub encoding: Encoding,
}

impl CountRequest {
    /// Parses and validates a request body.
    ///
    /// Messages must be JSON objects, and a message's `content`, when present, must be a string, an array of
    /// content parts, or `null`; anything else inside a message is left to [`count::chat_tokens`], which counts
    /// what it can read.
    pub fn from_json(body: &[u8]) -> Result<CountRequest, MeterError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(MeterError::EmptyBody);
        }
        let mut object = match serde_json::from_slice::<Value>(body).map_err(MeterError::InvalidJson)? {
            Value::Object(object) => object,
            other => {
                return Err(MeterError::NotAnObject {
                    found: json_type(&other),
                });
            }
        };

        let model = match take(&mut object, "model") {
            None => {
                return Err(MeterError::MissingField {
                    param: "model".to_owned(),
                });
            }
            Some(Value::String(model)) => model,
            Some(_) => return Err(invalid("model", "a string")),
        };
        let encoding = match take(&mut object, "encoding") {
            None => None,
            Some(Value::String(name)) => Some(name.parse::<Encoding>()?),
            Some(_) => return Err(invalid("encoding", "a string naming an encoding")),
        };
        let input = match (take(&mut object, "text"), take(&mut object, "messages")) {
            (Some(_), Some(_)) => return Err(MeterError::TextAndMessages),
            (None, None) => return Err(MeterError::NoInput),
            (Some(Value::String(text)), None) => CountInput::Text(text),
            (Some(_), None) => return Err(invalid("text", "a string")),
            (None, Some(Value::Array(messages))) => {
                validate_messages(&messages)?;
                CountInput::Chat(messages)
            }
            (None, Some(_)) => return Err(invalid("messages", "an array of chat messages")),
        };
        Ok(CountRequest {
            model,
            encoding,
            input,
        })
    }

    /// The encoding to count with: the explicit one, else the model's, else `default`.
    pub fn encoding_or(&self, default: Encoding) -> Encoding {
        self.encoding
            .unwrap_or_else(|| Encoding::for_model(&self.model, default))
    }
}

/// Removes `field` from `object`, treating `null` as absent.
fn take(object: &mut Map<String, Value>, field: &str) -> Option<Value> {
    object.remove(field).filter(|value| !value.is_null())
}

fn invalid(param: &str, expected: &'static str) -> MeterError {
    MeterError::InvalidField {
        param: param.to_owned(),
        expected,
    }
}

/// Checks the shape that counting depends on: objects, with a string, array or null `content`.
fn validate_messages(messages: &[Value]) -> Result<(), MeterError> {
    for (index, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(invalid(&format!("messages[{index}]"), "a chat message object"));
        };
        match message.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(invalid(
                    &format!("messages[{index}].content"),
                    "a string, an array of content parts, or null",
                ));
            }
        }
    }
    Ok(())
}

/// The JSON type of `value`, as a phrase for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `POST /v1/tokens/count`: counts the tokens of a text or of chat messages.
pub async fn count_tokens(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<CountResponse>, MeterError> {
    let limit = state.config.max_body_bytes;
    let body = read_body(&request, payload, limit).await?;
    let body_bytes = body.len();
    let parsed = CountRequest::from_json(&body)?;
    drop(body);

    let encoding = parsed.encoding_or(state.config.default_encoding);
    let kind = parsed.input.kind();
    let input = parsed.input;
    let tokens = if body_bytes <= INLINE_COUNT_MAX_BYTES {
        count_guarded(encoding, &input)?
    } else {
        web::block(move || count_guarded(encoding, &input))
            .await
            .map_err(|_| MeterError::Counting)??
    };

    metrics::record_tokens(encoding, kind, tokens);
    tracing::debug!(
        model = %parsed.model,
        encoding = encoding.name(),
        kind = kind.label(),
        body_bytes,
        tokens,
        "counted tokens"
    );
    Ok(web::Json(CountResponse { tokens, encoding }))
}

/// Counts, turning a panic inside the tokenizer into an error rather than a lost worker. The counting
/// functions are written not to panic; this is the second line of defence for the vendored tokenizer.
fn count_guarded(encoding: Encoding, input: &CountInput) -> Result<usize, MeterError> {
    catch_unwind(AssertUnwindSafe(|| input.tokens(encoding))).map_err(|_| {
        tracing::error!(
            encoding = encoding.name(),
            kind = input.kind().label(),
            "tokenizer panicked"
        );
        MeterError::Counting
    })
}

/// Reads the whole body, refusing it with 413 as soon as it is known to exceed `limit`: from the
/// `Content-Length` header when there is one, otherwise while streaming.
async fn read_body(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, MeterError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(MeterError::PayloadTooLarge { limit });
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(err)) => Err(MeterError::Payload(err.to_string())),
        Err(_) => Err(MeterError::PayloadTooLarge { limit }),
    }
}

/// `GET /healthz`: the process is up and serving. The tokenizers are loaded before the server starts, so
/// there is nothing else to check.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// Any other method on `/v1/tokens/count`.
pub async fn count_method_not_allowed() -> Result<HttpResponse, MeterError> {
    Err(MeterError::MethodNotAllowed { allow: "POST" })
}

/// Any path without a route.
pub async fn not_found() -> Result<HttpResponse, MeterError> {
    Err(MeterError::NotFound)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(body: Value) -> Result<CountRequest, MeterError> {
        CountRequest::from_json(body.to_string().as_bytes())
    }

    fn param_of(err: MeterError) -> String {
        match err {
            MeterError::MissingField { param } | MeterError::InvalidField { param, .. } => param,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_text_request_parses() {
        let request = parse(json!({"model": "gpt-4o", "text": "hi", "stream": true})).unwrap();
        assert_eq!(request.model, "gpt-4o");
        assert_eq!(request.encoding, None);
        assert_eq!(request.input, CountInput::Text("hi".into()));
        assert_eq!(request.encoding_or(Encoding::R50kBase), Encoding::O200kBase);
    }

    #[test]
    fn an_explicit_encoding_overrides_the_model() {
        let request = parse(json!({"model": "gpt-4o", "text": "hi", "encoding": "cl100k_base"})).unwrap();
        assert_eq!(request.encoding_or(Encoding::R50kBase), Encoding::Cl100kBase);
    }

    #[test]
    fn null_fields_count_as_absent() {
        let request = parse(json!({"model": "m", "text": null, "messages": [], "encoding": null})).unwrap();
        assert_eq!(request.input, CountInput::Chat(vec![]));
        assert_eq!(request.encoding_or(Encoding::P50kBase), Encoding::P50kBase);
    }

    #[test]
    fn field_errors_name_the_field() {
        assert_eq!(param_of(parse(json!({"text": "hi"})).unwrap_err()), "model");
        assert_eq!(
            param_of(parse(json!({"model": 4, "text": "hi"})).unwrap_err()),
            "model"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "text": ["hi"]})).unwrap_err()),
            "text"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": "hi"})).unwrap_err()),
            "messages"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": [{}, 3]})).unwrap_err()),
            "messages[1]"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": [{"role": "user", "content": 3}]})).unwrap_err()),
            "messages[0].content"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "text": "", "encoding": 1})).unwrap_err()),
            "encoding"
        );
    }

    #[test]
    fn exactly_one_of_text_and_messages_is_required() {
        let both = parse(json!({"model": "m", "text": "a", "messages": []})).unwrap_err();
        assert!(matches!(both, MeterError::TextAndMessages));
        assert!(matches!(
            parse(json!({"model": "m"})).unwrap_err(),
            MeterError::NoInput
        ));
    }

    #[test]
    fn body_level_errors() {
        assert!(matches!(CountRequest::from_json(b""), Err(MeterError::EmptyBody)));
        assert!(matches!(
            CountRequest::from_json(b" \n"),
            Err(MeterError::EmptyBody)
        ));
        assert!(matches!(
            CountRequest::from_json(b"{\"model\":"),
            Err(MeterError::InvalidJson(_))
        ));
        assert!(matches!(
            CountRequest::from_json(b"[1]"),
            Err(MeterError::NotAnObject { found: "an array" })
        ));
        assert!(matches!(
            parse(json!({"model": "m", "text": "a", "encoding": "gpt2"})),
            Err(MeterError::UnknownEncoding(_))
        ));
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            CountRequest::from_json(body.as_bytes()),
            Err(MeterError::InvalidJson(_))
        ));
    }
}

//! The HTTP API: request and response types and the handlers behind each route.
//!
//! In: HTTP requests routed here by [`crate::server`]. Out: JSON responses, or a [`MeterError`] that renders
//! itself as an OpenAI-shaped error.
//!
//! `POST /v1/tokens/count` reads the body itself (so that every failure, including an oversized body or
//! malformed JSON, comes out as a [`MeterError`] naming the field at fault), picks the encoding, and counts
//! through the [`CountCache`] (which counts with [`crate::count`]): inline for small bodies, on the blocking
//! thread pool above [`INLINE_COUNT_MAX_BYTES`], so a large count never stalls the worker's other connections.
//!
//! `POST /v1/tokens/count/batch` takes `{"items": [<count request>, …]}` and answers
//! `{"results": [<count response> | {"error": {…}}, …]}` in the same order: each item goes through exactly the
//! single-count path ([`CountRequest::from_value`], then [`count_one`]), and an item that fails gets the
//! OpenAI error object the single endpoint would have answered with (its `param` relative to the item)
//! without failing the others. Only the envelope can fail the whole request: an empty or non-JSON body, a
//! missing or non-array `items`, or more than `max_batch_items` items → 400. The whole batch is counted inline
//! or on the blocking pool by the same rule as a single body.
//!
//! Request bodies are lenient about extra fields, so the gateway may forward a whole chat completion request:
//! `model`, `text`, `messages`, `tools`, `functions` and `encoding` are read and everything else is ignored. A
//! `null` field counts as absent. `tools` (OpenAI's or Anthropic's tool definitions) and `functions` (OpenAI's
//! legacy function definitions) count beside `messages` (see [`crate::tools`]); beside `text` they are ignored,
//! as before.

use std::panic::{AssertUnwindSafe, catch_unwind};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::CountCache;
use crate::config::Config;
use crate::encoding::Encoding;
use crate::error::{MeterError, OpenAiError};
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
    /// Counts of recently seen texts, sized by `config.cache_entries`.
    pub cache: CountCache,
}

impl AppState {
    /// The state for `config`, with a count cache of `config.cache_entries` entries.
    pub fn new(config: Config, metrics: PrometheusHandle) -> AppState {
        let cache = CountCache::new(config.cache_entries);
        AppState {
            config,
            metrics,
            cache,
        }
    }
}

/// What to count.
#[derive(Debug, Clone, PartialEq)]
pub enum CountInput {
    /// A plain text (a completion, an embedding input, a legacy prompt).
    Text(String),
    /// Chat messages, as sent, with the request's tool definitions.
    Chat {
        /// The messages.
        messages: Vec<Value>,
        /// The `tools` entries followed by the legacy `functions` entries, each of those wrapped as
        /// `{"type": "function", "function": …}`; every entry is a JSON object.
        tools: Vec<Value>,
    },
}

impl CountInput {
    /// Chat `messages` without tool definitions.
    pub fn chat(messages: Vec<Value>) -> CountInput {
        CountInput::Chat {
            messages,
            tools: Vec::new(),
        }
    }
}

impl CountInput {
    /// Which kind of input this is, for metrics.
    pub fn kind(&self) -> InputKind {
        match self {
            CountInput::Text(_) => InputKind::Text,
            CountInput::Chat { .. } => InputKind::Chat,
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

/// The `POST /v1/tokens/count` response, and a counted item of a batch: `{"tokens": N, "encoding": "o200k_base"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResponse {
    /// Number of tokens.
    pub tokens: usize,
    /// The encoding that counted them.
    pub encoding: Encoding,
}

impl CountRequest {
    /// Parses and validates a request body: see [`CountRequest::from_value`].
    pub fn from_json(body: &[u8]) -> Result<CountRequest, MeterError> {
        parse_body(body).and_then(CountRequest::from_value)
    }

    /// Validates one count request, the body of `POST /v1/tokens/count` or an item of a batch.
    ///
    /// Messages must be JSON objects, and a message's `content`, when present, must be a string, an array of
    /// content parts, or `null`; anything else inside a message is left to [`crate::count::chat_tokens`], which
    /// counts what it can read. Beside `messages`, `tools` and `functions` must each be an array of objects
    /// (or absent or `null`); what is inside a definition is left to [`crate::tools`].
    pub fn from_value(value: Value) -> Result<CountRequest, MeterError> {
        let mut object = into_object(value)?;
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
        let tools = take(&mut object, "tools");
        let functions = take(&mut object, "functions");
        let input = match (take(&mut object, "text"), take(&mut object, "messages")) {
            (Some(_), Some(_)) => return Err(MeterError::TextAndMessages),
            (None, None) => return Err(MeterError::NoInput),
            (Some(Value::String(text)), None) => CountInput::Text(text),
            (Some(_), None) => return Err(invalid("text", "a string")),
            (None, Some(Value::Array(messages))) => {
                validate_messages(&messages)?;
                CountInput::Chat {
                    messages,
                    tools: tool_definitions(tools, functions)?,
                }
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

/// A validated `POST /v1/tokens/count/batch` envelope: one parsed request, or the reason it is invalid, per
/// item, in order.
#[derive(Debug)]
pub struct BatchRequest {
    /// The items, each validated on its own.
    pub items: Vec<Result<CountRequest, MeterError>>,
}

impl BatchRequest {
    /// Parses the envelope `{"items": [...]}` and validates each item with [`CountRequest::from_value`].
    ///
    /// Fails only for the envelope: the body is empty, not JSON or not an object, `items` is missing or not an
    /// array, or it has more than `max_items` entries. An invalid item is an `Err` in [`BatchRequest::items`].
    pub fn from_json(body: &[u8], max_items: usize) -> Result<BatchRequest, MeterError> {
        let mut object = into_object(parse_body(body)?)?;
        let items = match take(&mut object, "items") {
            None => {
                return Err(MeterError::MissingField {
                    param: "items".to_owned(),
                });
            }
            Some(Value::Array(items)) => items,
            Some(_) => return Err(invalid("items", "an array of count requests")),
        };
        if items.len() > max_items {
            return Err(MeterError::TooManyItems {
                count: items.len(),
                max: max_items,
            });
        }
        Ok(BatchRequest {
            items: items.into_iter().map(CountRequest::from_value).collect(),
        })
    }
}

/// The `POST /v1/tokens/count/batch` response: one result per item, in the order of the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchResponse {
    /// The results.
    pub results: Vec<BatchResult>,
}

/// The result of one item: its count, or the error a single count would have answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BatchResult {
    /// `{"tokens": N, "encoding": "..."}`
    Counted(CountResponse),
    /// `{"error": {"message", "type", "param", "code"}}`
    Failed(OpenAiError),
}

impl From<Result<CountResponse, MeterError>> for BatchResult {
    fn from(result: Result<CountResponse, MeterError>) -> Self {
        match result {
            Ok(counted) => BatchResult::Counted(counted),
            Err(error) => {
                metrics::record_batch_item_error(&error);
                BatchResult::Failed(error.to_openai())
            }
        }
    }
}

/// Parses a body as JSON, refusing an empty one.
fn parse_body(body: &[u8]) -> Result<Value, MeterError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(MeterError::EmptyBody);
    }
    serde_json::from_slice::<Value>(body).map_err(MeterError::InvalidJson)
}

/// The object inside `value`, or the error naming what it is instead.
fn into_object(value: Value) -> Result<Map<String, Value>, MeterError> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(MeterError::NotAnObject {
            found: json_type(&other),
        }),
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

/// The tool definitions of a chat request: the `tools` entries, then each `functions` entry as
/// `{"type": "function", "function": <entry>}`. Both must be arrays of objects.
fn tool_definitions(tools: Option<Value>, functions: Option<Value>) -> Result<Vec<Value>, MeterError> {
    let mut definitions = definitions_of("tools", tools)?;
    let functions = definitions_of("functions", functions)?;
    definitions.reserve(functions.len());
    definitions.extend(functions.into_iter().map(|function| {
        let mut tool = Map::new();
        tool.insert("type".to_owned(), Value::String("function".to_owned()));
        tool.insert("function".to_owned(), function);
        Value::Object(tool)
    }));
    Ok(definitions)
}

/// The entries of the array field `param`, each checked to be an object.
fn definitions_of(param: &str, value: Option<Value>) -> Result<Vec<Value>, MeterError> {
    let definitions = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(definitions)) => definitions,
        Some(_) => return Err(invalid(param, "an array of tool definitions")),
    };
    if let Some(index) = definitions.iter().position(|definition| !definition.is_object()) {
        return Err(invalid(&format!("{param}[{index}]"), "a tool definition object"));
    }
    Ok(definitions)
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
    let body = read_body(&request, payload, state.config.max_body_bytes).await?;
    let body_bytes = body.len();
    let parsed = CountRequest::from_json(&body)?;
    drop(body);

    let counted =
        off_the_worker_if_large(state, body_bytes, move |state| count_one(state, &parsed)).await??;
    Ok(web::Json(counted))
}

/// `POST /v1/tokens/count/batch`: counts every item of `{"items": [...]}`, each as `POST /v1/tokens/count`
/// would, and answers the results in the same order.
pub async fn count_tokens_batch(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<BatchResponse>, MeterError> {
    let body = read_body(&request, payload, state.config.max_body_bytes).await?;
    let body_bytes = body.len();
    let batch = BatchRequest::from_json(&body, state.config.max_batch_items)?;
    drop(body);

    let results = off_the_worker_if_large(state, body_bytes, move |state| {
        batch
            .items
            .into_iter()
            .map(|item| BatchResult::from(item.and_then(|request| count_one(state, &request))))
            .collect()
    })
    .await?;
    Ok(web::Json(BatchResponse { results }))
}

/// Counts one validated request: picks its encoding (explicit, else the model's, else the default), counts
/// through the cache, and records the tokens.
pub fn count_one(state: &AppState, request: &CountRequest) -> Result<CountResponse, MeterError> {
    let encoding = request.encoding_or(state.config.default_encoding);
    let kind = request.input.kind();
    let tokens = count_guarded(&state.cache, encoding, &request.input)?;
    metrics::record_tokens(encoding, kind, tokens);
    tracing::debug!(
        model = %request.model,
        encoding = encoding.name(),
        kind = kind.label(),
        tokens,
        "counted tokens"
    );
    Ok(CountResponse { tokens, encoding })
}

/// Runs `count` on the worker thread for bodies up to [`INLINE_COUNT_MAX_BYTES`], on the blocking pool for
/// larger ones.
async fn off_the_worker_if_large<T: Send + 'static>(
    state: web::Data<AppState>,
    body_bytes: usize,
    count: impl FnOnce(&AppState) -> T + Send + 'static,
) -> Result<T, MeterError> {
    if body_bytes <= INLINE_COUNT_MAX_BYTES {
        Ok(count(&state))
    } else {
        web::block(move || count(&state))
            .await
            .map_err(|_| MeterError::Counting)
    }
}

/// Counts, turning a panic inside the tokenizer into an error rather than a lost worker. The counting
/// functions are written not to panic; this is the second line of defence for the vendored tokenizer.
fn count_guarded(cache: &CountCache, encoding: Encoding, input: &CountInput) -> Result<usize, MeterError> {
    catch_unwind(AssertUnwindSafe(|| cache.tokens(encoding, input))).map_err(|_| {
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

/// Any other method on `/v1/tokens/count` or `/v1/tokens/count/batch`.
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
        assert_eq!(request.input, CountInput::chat(vec![]));
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
    fn a_batch_keeps_each_items_own_result_in_order() {
        let body = json!({"items": [
            {"model": "gpt-4o", "text": "a"},
            {"text": "no model"},
            7,
            {"model": "m", "messages": []},
        ]});
        let batch = BatchRequest::from_json(body.to_string().as_bytes(), 4).unwrap();
        assert_eq!(batch.items.len(), 4);
        assert_eq!(
            batch.items[0].as_ref().unwrap().input,
            CountInput::Text("a".into())
        );
        assert!(matches!(&batch.items[1], Err(MeterError::MissingField { param }) if param == "model"));
        assert!(matches!(
            batch.items[2],
            Err(MeterError::NotAnObject { found: "a number" })
        ));
        assert_eq!(batch.items[3].as_ref().unwrap().input, CountInput::chat(vec![]));
    }

    #[test]
    fn only_the_batch_envelope_fails_the_whole_batch() {
        let envelope = |body: Value, max| BatchRequest::from_json(body.to_string().as_bytes(), max);
        assert!(matches!(
            envelope(json!({"items": [{}, {}, {}]}), 2),
            Err(MeterError::TooManyItems { count: 3, max: 2 })
        ));
        assert!(envelope(json!({"items": [{}, {}]}), 2).is_ok());
        assert_eq!(param_of(envelope(json!({}), 2).unwrap_err()), "items");
        assert_eq!(param_of(envelope(json!({"items": "x"}), 2).unwrap_err()), "items");
        assert!(matches!(
            envelope(json!([]), 2),
            Err(MeterError::NotAnObject { found: "an array" })
        ));
        assert!(matches!(
            BatchRequest::from_json(b"", 2),
            Err(MeterError::EmptyBody)
        ));
        assert!(matches!(
            BatchRequest::from_json(b"{\"items\": [", 2),
            Err(MeterError::InvalidJson(_))
        ));
    }

    #[test]
    fn tools_and_functions_are_read_beside_messages_in_order() {
        let request = parse(json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "a"}}, {"name": "b", "input_schema": {}}],
            "functions": [{"name": "c"}]}))
        .unwrap();
        assert_eq!(
            request.input,
            CountInput::Chat {
                messages: vec![],
                tools: vec![
                    json!({"type": "function", "function": {"name": "a"}}),
                    json!({"name": "b", "input_schema": {}}),
                    json!({"type": "function", "function": {"name": "c"}}),
                ],
            }
        );
        let none = parse(json!({"model": "m", "messages": [], "tools": null, "functions": []})).unwrap();
        assert_eq!(none.input, CountInput::chat(vec![]));
    }

    #[test]
    fn malformed_tools_are_400s_naming_them_but_ignored_beside_text() {
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": [], "tools": {}})).unwrap_err()),
            "tools"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": [], "tools": [{}, "x"]})).unwrap_err()),
            "tools[1]"
        );
        assert_eq!(
            param_of(parse(json!({"model": "m", "messages": [], "functions": [3]})).unwrap_err()),
            "functions[0]"
        );
        let text = parse(json!({"model": "m", "text": "hi", "tools": 5})).unwrap();
        assert_eq!(text.input, CountInput::Text("hi".into()));
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

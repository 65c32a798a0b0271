//! A mock OpenAI-compatible provider: the only thing Tollgate's tests fake, because it stands for the outside
//! world. It answers `POST /v1/chat/completions` with a deterministic completion and `usage` block, and
//! misbehaves on demand — an error status (with `Retry-After`), a delay, a body that is not JSON — switched at run
//! time through [`MockProvider::set_behaviour`] in-process or `POST /_mock/behaviour` over HTTP. It records every
//! request it received (headers included) so tests can prove what the gateway sent upstream.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How the mock answers chat requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Behaviour {
    /// 200 with a completion and usage.
    #[default]
    Normal,
    /// An error status with an OpenAI-shaped body; `retry_after` seconds as a header when set.
    Status { status: u16, retry_after: Option<u64> },
    /// Wait, then answer normally.
    Delay { millis: u64 },
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 without a `usage` block (streams: no usage chunk even when asked).
    NoUsage,
    /// Streams only: the first `events` events, written a few milliseconds apart so they reach the client, then
    /// the connection breaks.
    CutStream { events: usize },
    /// Streams only: wait this long before each piece of the stream.
    SlowStream { millis: u64 },
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the request arrived.
    pub at: Instant,
    /// The status the mock answered with.
    pub status: u16,
    pub path: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

#[derive(Debug, Default)]
struct State {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    expected_key: Option<String>,
}

/// A running mock, bound to a local port.
#[derive(Debug, Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
}

impl MockProvider {
    /// Starts the mock on `listener` inside the current actix system. Requests must carry
    /// `Authorization: Bearer <expected_key>` when one is given, as a real provider requires.
    pub fn start(listener: TcpListener, expected_key: Option<String>) -> std::io::Result<(Self, Server)> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            expected_key,
            ..State::default()
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(64 << 20))
                .route("/{version}/chat/completions", web::post().to(chat))
                .route("/{version}/completions", web::post().to(chat))
                .route("/{version}/embeddings", web::post().to(chat))
                .route("/{version}/messages", web::post().to(chat))
                .route("/_mock/behaviour", web::post().to(set_behaviour))
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        Ok((Self { addr, state, handle }, server))
    }

    /// The base URL an instance's `endpoint` should point at.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// A request's prompt as chat messages: `messages` itself, or a legacy `prompt` / embeddings `input` (a string or
/// strings, joined by spaces) as one user message — so one set of rules answers every endpoint.
pub fn as_messages(body: &Value) -> Value {
    if body["messages"].is_array() {
        return body["messages"].clone();
    }
    let prompt = if body["prompt"].is_null() {
        &body["input"]
    } else {
        &body["prompt"]
    };
    let text = match prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    json!([{"role": "user", "content": text}])
}

/// The completion text the mock answers `messages` with.
pub fn completion_text(messages: &Value) -> String {
    let last_user = messages
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    format!("Hello from the mock provider. You said: {last_user}")
}

/// The usage the mock reports for `messages`: (prompt, completion, cached). Deterministic and unlike any
/// tokenizer on purpose, so a test can tell the provider's numbers from the gateway's estimate.
pub fn reported_usage(messages: &Value) -> (u32, u32, u32) {
    let prompt_chars: usize = messages
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).map(str::len).sum())
        .unwrap_or(0);
    let prompt = u32::try_from(prompt_chars).unwrap_or(u32::MAX) / 3 + 11;
    let completion = u32::try_from(completion_text(messages).split_whitespace().count()).unwrap_or(u32::MAX);
    (prompt, completion, prompt / 2)
}

async fn chat(req: HttpRequest, body: web::Json<Value>, state: web::Data<State>) -> HttpResponse {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    let at = Instant::now();
    let body = body.into_inner();
    let behaviour = state
        .behaviour
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let api_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    let anthropic = req.path().ends_with("/messages");
    let authorized = state.expected_key.as_ref().is_none_or(|k| {
        if anthropic {
            api_key == Some(k.as_str())
        } else {
            authorization.as_deref() == Some(format!("Bearer {k}").as_str())
        }
    });
    let status = match (&behaviour, authorized) {
        (_, false) => 401,
        (Behaviour::Status { status, .. }, true) => *status,
        _ => 200,
    };
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            at,
            status,
            path: req.path().to_owned(),
            authorization,
            headers,
            body: body.clone(),
        });
    if !authorized {
        return error(401, "Incorrect API key provided.", "invalid_api_key", None);
    }
    if anthropic && !matches!(behaviour, Behaviour::Status { .. } | Behaviour::Garbage) {
        return anthropic_message(&body, &behaviour);
    }
    if body["stream"] == true && !matches!(behaviour, Behaviour::Status { .. } | Behaviour::Garbage) {
        return stream(&body, &behaviour);
    }
    match behaviour {
        Behaviour::Normal | Behaviour::CutStream { .. } | Behaviour::SlowStream { .. } => {
            completion(&body, true)
        }
        Behaviour::NoUsage => completion(&body, false),
        Behaviour::Delay { millis } => {
            actix_web::rt::time::sleep(Duration::from_millis(millis)).await;
            completion(&body, true)
        }
        Behaviour::Garbage => HttpResponse::Ok()
            .content_type("application/json")
            .body("<html>not json"),
        Behaviour::Status { status, retry_after } => {
            error(status, "The mock is misbehaving on purpose.", "mock", retry_after)
        }
    }
}

/// The SSE events the mock streams for a request `body`: a comment, one chunk per word of [`completion_text`]
/// (the first also carrying the role), the usage-only chunk when `stream_options.include_usage` is set and
/// `with_usage`, and `[DONE]` — each a complete event including its blank line.
pub fn sse_events(body: &Value, with_usage: bool) -> Vec<String> {
    let legacy = !body["prompt"].is_null();
    let messages = &as_messages(body);
    let text = completion_text(messages);
    let chunk = |delta: Value| {
        if legacy {
            let text = delta["content"].as_str().unwrap_or("");
            let chunk = json!({
                "id": "cmpl-mock", "object": "text_completion", "created": 1_795_338_902,
                "model": body["model"], "choices": [{"index": 0, "text": text, "finish_reason": null}]
            });
            return format!("data: {chunk}\n\n");
        }
        let chunk = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_795_338_902,
            "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
        });
        format!("data: {chunk}\n\n")
    };
    let mut events = vec![
        ": mock keep-alive\n\n".to_owned(),
        chunk(json!({"role": "assistant", "content": ""})),
    ];
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if body["n"] == 2 && !legacy {
        // Two choices, interleaved chunk by chunk as OpenAI sends them.
        events.extend(words.iter().map(|w| {
            let chunk = json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_795_338_902, "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null},
                            {"index": 1, "delta": {"content": w.to_uppercase()}, "finish_reason": null}]
            });
            format!("data: {chunk}\n\n")
        }));
    } else {
        events.extend(words.iter().map(|w| chunk(json!({"content": w}))));
    }
    if body["tools"].is_array() && !legacy {
        // A tool call: its name first, then its JSON arguments in fragments.
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_mock", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
        ));
        for fragment in ["{\"city\": ", "\"Zürich\", ", "\"unit\": \"c\"}"] {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
            ));
        }
    }
    if with_usage && body["stream_options"]["include_usage"] == true {
        let (prompt, completion, cached) = reported_usage(messages);
        let usage = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_795_338_902,
            "model": body["model"], "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}
        });
        events.push(format!("data: {usage}\r\n\r\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// The usage the mock reports for an Anthropic request: (input, cache read, output).
pub fn anthropic_usage(body: &Value) -> (u32, u32, u32) {
    let (prompt, completion, cached) = reported_usage(&as_messages(body));
    (prompt, cached, completion)
}

/// The events of the mock's Anthropic Messages stream, each with its `event:` line.
pub fn anthropic_events(body: &Value) -> Vec<String> {
    let messages = as_messages(body);
    let (input, cache_read, output) = anthropic_usage(body);
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": body["model"], "content": [],
            "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let text = completion_text(&messages);
    events.extend(text.split_inclusive(' ').map(|w| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": w}}),
        )
    }));
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

fn anthropic_message(body: &Value, behaviour: &Behaviour) -> HttpResponse {
    if body["stream"] == true {
        return pieces_response(anthropic_events(body), behaviour);
    }
    let (input, cache_read, output) = anthropic_usage(body);
    HttpResponse::Ok().json(json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{"type": "text", "text": completion_text(&as_messages(body))}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read, "output_tokens": output}
    }))
}

/// The largest piece the mock writes at once: pieces are 1 to this many bytes, so that `data:` prefixes, JSON
/// objects and multi-byte characters are split across writes.
const MAX_PIECE_BYTES: u64 = 48;

/// Piece sizes at random byte boundaries: a xorshift sequence seeded from the stream itself, so every request
/// is cut differently and every cut is reproducible from the bytes.
fn piece_sizes(bytes: &[u8]) -> impl Iterator<Item = usize> {
    let mut state = bytes.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % MAX_PIECE_BYTES + 1).unwrap_or(1)
    })
}

fn stream(body: &Value, behaviour: &Behaviour) -> HttpResponse {
    pieces_response(
        sse_events(body, !matches!(behaviour, Behaviour::NoUsage)),
        behaviour,
    )
}

/// Streams `events` in odd-sized pieces, slowed down or cut as `behaviour` says.
fn pieces_response(events: Vec<String>, behaviour: &Behaviour) -> HttpResponse {
    let (bytes, cut) = match behaviour {
        Behaviour::CutStream { events: n } => (events[..(*n).min(events.len())].concat().into_bytes(), true),
        _ => (events.concat().into_bytes(), false),
    };
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in piece_sizes(&bytes) {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        pieces.push(bytes::Bytes::copy_from_slice(&bytes[at..end]));
        at = end;
    }
    let delay = match behaviour {
        Behaviour::SlowStream { millis } => Duration::from_millis(*millis),
        Behaviour::CutStream { .. } => Duration::from_millis(2),
        _ => Duration::ZERO,
    };
    let pieces = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, actix_web::Error>))
        .then(move |piece| async move {
            if !delay.is_zero() {
                actix_web::rt::time::sleep(delay).await;
            }
            piece
        })
        .chain(futures_util::stream::iter(
            cut.then(|| Err(actix_web::error::ErrorInternalServerError("cut"))),
        ));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(pieces)
}

fn completion(body: &Value, with_usage: bool) -> HttpResponse {
    let messages = &as_messages(body);
    let (prompt, completion, cached) = reported_usage(messages);
    if !body["input"].is_null() {
        let mut response = json!({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": [0.015, -0.25, 0.5]}]
        });
        if with_usage {
            response["usage"] = json!({"prompt_tokens": prompt, "total_tokens": prompt});
        }
        return HttpResponse::Ok().json(response);
    }
    if !body["prompt"].is_null() {
        let mut response = json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 1_795_338_902, "model": body["model"],
            "choices": [{"index": 0, "text": completion_text(messages), "finish_reason": "stop"}]
        });
        if with_usage {
            response["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        }
        return HttpResponse::Ok().json(response);
    }
    let mut response = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_795_338_902,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": completion_text(messages)},
            "finish_reason": "stop"
        }]
    });
    if with_usage {
        response["usage"] = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}
        });
    }
    HttpResponse::Ok().json(response)
}

fn error(status: u16, message: &str, code: &str, retry_after: Option<u64>) -> HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    if let Some(seconds) = retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    response.json(json!({"error": {"message": message, "type": "mock_error", "param": null, "code": code}}))
}

async fn set_behaviour(behaviour: web::Json<Behaviour>, state: web::Data<State>) -> HttpResponse {
    *state.behaviour.lock().unwrap_or_else(PoisonError::into_inner) = behaviour.into_inner();
    HttpResponse::NoContent().finish()
}

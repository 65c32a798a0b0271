//! A mock LLM provider: the only thing Tollgate's tests fake, because it stands for the outside world. It speaks
//! OpenAI's chat completions, legacy completions, embeddings and Responses API ([`crate::mock_responses`]),
//! Anthropic's Messages API and Google's Gemini API ([`crate::mock_gemini`]), whole and streamed,
//! with deterministic answers and usage, and misbehaves on demand ([`Behaviour`]: error statuses with
//! `Retry-After`, delays, bodies that are not JSON, missing usage, streams cut or slowed down, answers broken off
//! at a random byte, whole JSON answers to stream requests, endless streams) — switched at run time through
//! [`MockProvider::set_behaviour`] in-process or `POST /_mock/behaviour` over HTTP. It records every request it
//! received (headers included) so tests can prove what the gateway sent upstream.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::mock_gemini::{gemini_answer, gemini_call, gemini_error, gemini_events, gemini_wrong_key};
use crate::mock_responses::{responses_answer, responses_events};

/// How the mock answers requests, on every endpoint and in each endpoint's own protocol: OpenAI chat
/// completions, legacy completions and embeddings (whole, and SSE for the first two), Anthropic messages (whole
/// and SSE) and Anthropic's token count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Behaviour {
    /// 200 with a completion and usage.
    #[default]
    Normal,
    /// An error status with a body in the endpoint's protocol — OpenAI's `{"error": {…}}` (429: type
    /// `requests`, code `rate_limit_exceeded`; 5xx: type `server_error`), Anthropic's
    /// `{"type": "error", "error": {"type": "rate_limit_error" | "overloaded_error" | …, "message"}}` — and
    /// `retry_after` seconds as a `Retry-After` header when set.
    Status { status: u16, retry_after: Option<u64> },
    /// Wait, then answer normally (whole or streamed): the provider is working while the client leaves, or is
    /// slower than the instance's timeout. The wait comes before the response head.
    Delay { millis: u64 },
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 without usage. OpenAI: no `usage` block (streams: no usage chunk even when asked). Anthropic always
    /// reports usage, so here it misreports it the way a truncated report looks: a whole message has no `usage`
    /// object; a stream has only `message_start`'s provisional `output_tokens: 1` and a `message_delta` without
    /// `usage`.
    NoUsage,
    /// Streams only: the first `events` events, written a few milliseconds apart so they reach the client, then
    /// the connection breaks.
    CutStream { events: usize },
    /// Streams only: wait this long before each piece of the stream.
    SlowStream { millis: u64 },
    /// The answer breaks off at a pseudo-random byte offset, different for every request (derived from `seed`
    /// and the mock's request counter; [`cut_offset`]): a stream is written in odd-sized pieces up to the
    /// offset, then the connection breaks; a whole body announces its full `Content-Length`, sends the bytes up
    /// to the offset, then breaks the connection.
    CutAtByte { seed: u64 },
    /// A stream request is answered 200 with a whole `application/json` body (with usage), as if `stream` had
    /// been ignored.
    JsonToStream,
    /// A long answer, written as fast as the connection takes it: streams have `events` content events of about
    /// 1 KiB of text each ([`long_event_text`]) before their usage and end; a whole completion or message has
    /// that much text, an embedding `events × 128` numbers. For clients that stop reading.
    LongStream { events: usize },
    /// 401 with a body that quotes the key the request carried, as some providers do: whole, then masked the
    /// way OpenAI shows it (`sk-pr****…wxyz`).
    EchoKey,
}

/// The text of one content event of [`Behaviour::LongStream`]: 256 short words, 1 KiB.
pub fn long_event_text() -> String {
    "tok ".repeat(256)
}

/// Where [`Behaviour::CutAtByte`] cuts an answer of `len` bytes for the mock's `request`-th request (counted
/// from 0): in `0..len`, so the answer never arrives whole.
pub fn cut_offset(seed: u64, request: u64, len: usize) -> usize {
    let mut x = seed ^ request.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    usize::try_from(x % u64::try_from(len.max(1)).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the request arrived.
    pub at: Instant,
    /// The status the mock answered with.
    pub status: u16,
    pub path: String,
    /// The query string (Azure OpenAI's `api-version=…`), empty when there was none.
    pub query: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    /// The value of the request header `name` (lowercase), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    expected_key: Option<String>,
    /// Requests answered so far: what makes every [`Behaviour::CutAtByte`] cut different.
    counter: AtomicU64,
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
                .route("/{version}/messages/count_tokens", web::post().to(chat))
                .route("/{version}/responses", web::post().to(chat))
                // Gemini: `models/{model}:generateContent` and `:streamGenerateContent`.
                .route("/{version}/models/{action}", web::post().to(chat))
                // Azure OpenAI: the deployment in the path, `api-version` in the query, the key in `api-key`.
                .route(
                    "/openai/deployments/{deployment}/chat/completions",
                    web::post().to(chat),
                )
                .route(
                    "/openai/deployments/{deployment}/completions",
                    web::post().to(chat),
                )
                .route(
                    "/openai/deployments/{deployment}/embeddings",
                    web::post().to(chat),
                )
                // Azure's Responses API: the deployment is the body's `model`.
                .route("/openai/responses", web::post().to(chat))
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
    // Anthropic's token count answers `{"input_tokens"}`: the prompt of the usage a message would report.
    let counting = req.path().ends_with("/messages/count_tokens");
    let anthropic = req.path().ends_with("/messages") || counting;
    let responses = req.path().ends_with("/responses");
    let gemini = gemini_call(req.path());
    let goog_key = req.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let azure = req.path().starts_with("/openai/");
    let azure_key = req.headers().get("api-key").and_then(|v| v.to_str().ok());
    let authorized = state.expected_key.as_ref().is_none_or(|k| {
        if gemini.is_some() {
            goog_key == Some(k.as_str())
        } else if azure {
            // Azure answers 401 without an `api-key`, and without `api-version` 404 ("Resource not found").
            azure_key == Some(k.as_str()) && req.query_string().contains("api-version=")
        } else if anthropic {
            api_key == Some(k.as_str())
        } else {
            authorization.as_deref() == Some(format!("Bearer {k}").as_str())
        }
    });
    let status = match (&behaviour, authorized) {
        (_, false) => 401,
        (Behaviour::Status { status, .. }, true) => *status,
        (Behaviour::EchoKey, true) => 401,
        _ => 200,
    };
    let request = state.counter.fetch_add(1, Ordering::Relaxed);
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            at,
            status,
            path: req.path().to_owned(),
            query: req.query_string().to_owned(),
            authorization: authorization.clone(),
            headers,
            body: body.clone(),
        });
    if !authorized && gemini.is_some() {
        return gemini_wrong_key();
    }
    if !authorized {
        return error(
            anthropic,
            401,
            "Incorrect API key provided.",
            "invalid_api_key",
            None,
        );
    }
    match behaviour {
        Behaviour::EchoKey => {
            let sent = api_key
                .map(str::to_owned)
                .or_else(|| {
                    authorization
                        .as_deref()
                        .and_then(|a| a.strip_prefix("Bearer "))
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let head: String = sent.chars().take(5).collect();
            let tail: String = sent
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let message = format!(
                "Incorrect API key provided: {sent}. You sent {head}{}{tail}. You can find your API key at https://platform.openai.com/account/api-keys.",
                "*".repeat(12)
            );
            return error(anthropic, 401, &message, "invalid_api_key", None);
        }
        Behaviour::Delay { millis } => actix_web::rt::time::sleep(Duration::from_millis(millis)).await,
        Behaviour::Status { status, retry_after } if gemini.is_some() => {
            return gemini_error(status, "The mock is misbehaving on purpose.", retry_after);
        }
        Behaviour::Status { status, retry_after } => {
            return error(
                anthropic,
                status,
                "The mock is misbehaving on purpose.",
                "mock",
                retry_after,
            );
        }
        Behaviour::Garbage => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("<html>not json");
        }
        _ => {}
    }
    if counting {
        let (prompt, _, _) = reported_usage(&as_messages(&body));
        return HttpResponse::Ok().json(serde_json::json!({ "input_tokens": prompt }));
    }
    let with_usage = behaviour != Behaviour::NoUsage;
    let long = match behaviour {
        Behaviour::LongStream { events } => Some(events),
        _ => None,
    };
    if let Some((model, streamed)) = gemini {
        if streamed && behaviour != Behaviour::JsonToStream {
            return stream(
                gemini_events(&body, &model, with_usage, long),
                &behaviour,
                request,
            );
        }
        return whole(
            &gemini_answer(&body, &model, with_usage, long),
            &behaviour,
            request,
        );
    }
    if responses {
        if body["stream"] == true && behaviour != Behaviour::JsonToStream {
            return stream(responses_events(&body, with_usage, long), &behaviour, request);
        }
        return whole(&responses_answer(&body, with_usage, long), &behaviour, request);
    }
    if body["stream"] == true && behaviour != Behaviour::JsonToStream {
        let events = match (anthropic, long) {
            (true, _) => anthropic_stream_events(&body, with_usage, long),
            (false, Some(n)) => long_sse_events(&body, with_usage, n),
            (false, None) => sse_events(&body, with_usage),
        };
        return stream(events, &behaviour, request);
    }
    let answer = if anthropic {
        anthropic_message(&body, with_usage, long)
    } else {
        completion(&body, with_usage, long)
    };
    whole(&answer, &behaviour, request)
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
    // The last choice chunk: an empty delta and why the answer ended, as OpenAI ends every choice.
    let finish = if body["tools"].is_array() && !legacy {
        "tool_calls"
    } else {
        "stop"
    };
    let last = if legacy {
        json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_795_338_902,
               "model": body["model"], "choices": [{"index": 0, "text": "", "finish_reason": finish}]})
    } else {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_795_338_902,
               "model": body["model"], "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    };
    events.push(format!("data: {last}\n\n"));
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
    anthropic_stream_events(body, true, None)
}

/// [`anthropic_events`], without the final usage ([`Behaviour::NoUsage`]: `message_delta` has no `usage`) and
/// with `long` content events of [`long_event_text`] instead of one per word ([`Behaviour::LongStream`]).
fn anthropic_stream_events(body: &Value, with_usage: bool, long: Option<usize>) -> Vec<String> {
    let messages = as_messages(body);
    let (input, cache_read, output) = anthropic_usage(body);
    let output = long.map_or(output, long_completion_tokens);
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
    let delta = |w: &str| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": w}}),
        )
    };
    match long {
        Some(n) => events.extend(std::iter::repeat_n(delta(&long_event_text()), n)),
        None => events.extend(completion_text(&messages).split_inclusive(' ').map(delta)),
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut message_delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}});
    if with_usage {
        message_delta["usage"] = json!({"output_tokens": output});
    }
    events.push(event("message_delta", message_delta));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// What the mock reports as completion tokens for a [`Behaviour::LongStream`] answer of `events` events: a
/// token per word.
pub fn long_completion_tokens(events: usize) -> u32 {
    u32::try_from(events.saturating_mul(256)).unwrap_or(u32::MAX)
}

/// The OpenAI stream of [`Behaviour::LongStream`]: the role chunk, `events` chunks of [`long_event_text`], the
/// usage chunk when asked for and `with_usage`, and `[DONE]`.
fn long_sse_events(body: &Value, with_usage: bool, events: usize) -> Vec<String> {
    let legacy = !body["prompt"].is_null();
    let (object, id) = if legacy {
        ("text_completion", "cmpl-mock")
    } else {
        ("chat.completion.chunk", "chatcmpl-mock")
    };
    let chunk = |text: &str| {
        let choice = if legacy {
            json!({"index": 0, "text": text, "finish_reason": null})
        } else {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
        };
        let chunk = json!({"id": id, "object": object, "created": 1_795_338_902, "model": body["model"],
                           "choices": [choice]});
        format!("data: {chunk}\n\n")
    };
    let mut out = vec![": mock keep-alive\n\n".to_owned(), chunk("")];
    out.extend(std::iter::repeat_n(chunk(&long_event_text()), events));
    if with_usage && body["stream_options"]["include_usage"] == true {
        let (prompt, _, cached) = reported_usage(&as_messages(body));
        let completion = long_completion_tokens(events);
        let usage = json!({
            "id": id, "object": object, "created": 1_795_338_902, "model": body["model"], "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}
        });
        out.push(format!("data: {usage}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_owned());
    out
}

/// A whole Anthropic message, with its `usage` when `with_usage`, and the text of `long` content events when
/// set.
fn anthropic_message(body: &Value, with_usage: bool, long: Option<usize>) -> Value {
    let (input, cache_read, output) = anthropic_usage(body);
    let (text, output) = match long {
        Some(n) => (long_event_text().repeat(n), long_completion_tokens(n)),
        None => (completion_text(&as_messages(body)), output),
    };
    let mut message = json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null
    });
    if with_usage {
        message["usage"] =
            json!({"input_tokens": input, "cache_read_input_tokens": cache_read, "output_tokens": output});
    }
    message
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

/// Streams `events` as `behaviour` says: in odd-sized pieces (slowed down, cut after some events or at a byte),
/// or — a long stream — event by event as fast as the connection takes them. `request` is the mock's request
/// counter.
fn stream(events: Vec<String>, behaviour: &Behaviour, request: u64) -> HttpResponse {
    if let Behaviour::LongStream { .. } = behaviour {
        let events = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, actix_web::Error>(bytes::Bytes::from(e))),
        );
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(events);
    }
    let (bytes, cut) = match behaviour {
        Behaviour::CutStream { events: n } => (events[..(*n).min(events.len())].concat().into_bytes(), true),
        Behaviour::CutAtByte { seed } => {
            let mut bytes = events.concat().into_bytes();
            bytes.truncate(cut_offset(*seed, request, bytes.len()));
            (bytes, true)
        }
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
        Behaviour::CutStream { .. } | Behaviour::CutAtByte { .. } => Duration::from_millis(2),
        _ => Duration::ZERO,
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(delayed_then_cut(pieces, delay, cut))
}

/// `pieces`, each after `delay`, then — when `cut` — an error, which makes the server break the connection.
fn delayed_then_cut(
    pieces: Vec<bytes::Bytes>,
    delay: Duration,
    cut: bool,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, actix_web::Error>> {
    futures_util::stream::iter(pieces.into_iter().map(Ok::<_, actix_web::Error>))
        .then(move |piece| async move {
            if !delay.is_zero() {
                actix_web::rt::time::sleep(delay).await;
            }
            piece
        })
        .chain(futures_util::stream::iter(cut.then_some(())).then(|()| async {
            // Let the last piece leave before the connection breaks.
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            Err(actix_web::error::ErrorInternalServerError("cut"))
        }))
}

/// A whole JSON answer: as it is, or — [`Behaviour::CutAtByte`] — announced with its full `Content-Length`
/// and broken off at a pseudo-random byte.
fn whole(answer: &Value, behaviour: &Behaviour, request: u64) -> HttpResponse {
    let Behaviour::CutAtByte { seed } = behaviour else {
        return HttpResponse::Ok().json(answer);
    };
    let bytes = serde_json::to_vec(answer).unwrap_or_default();
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let offset = cut_offset(*seed, request, bytes.len());
    let sent = bytes::Bytes::copy_from_slice(&bytes[..offset]);
    HttpResponse::Ok()
        .content_type("application/json")
        .no_chunking(len)
        .streaming(delayed_then_cut(vec![sent], Duration::ZERO, true))
}

/// An OpenAI whole answer for the request's endpoint — an embedding list, a legacy completion or a chat
/// completion — with its `usage` when `with_usage`, and `long` events' worth of text (or numbers) when set.
fn completion(body: &Value, with_usage: bool, long: Option<usize>) -> Value {
    let messages = &as_messages(body);
    let (prompt, completion, cached) = reported_usage(messages);
    let (text, completion) = match long {
        Some(n) => (long_event_text().repeat(n), long_completion_tokens(n)),
        None => (completion_text(messages), completion),
    };
    if !body["input"].is_null() {
        let embedding: Vec<f64> = match long {
            Some(n) => (0..n * 128)
                .map(|i| f64::from(u32::try_from(i % 97).unwrap_or(0)) / 97.0)
                .collect(),
            None => vec![0.015, -0.25, 0.5],
        };
        let mut response = json!({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}]
        });
        if with_usage {
            response["usage"] = json!({"prompt_tokens": prompt, "total_tokens": prompt});
        }
        return response;
    }
    if !body["prompt"].is_null() {
        let mut response = json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 1_795_338_902, "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]
        });
        if with_usage {
            response["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        }
        return response;
    }
    let mut response = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_795_338_902,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
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
    response
}

/// An error `status` with a body in the endpoint's protocol (Anthropic's when `anthropic`, else OpenAI's) and
/// `retry_after` seconds as `Retry-After` when set.
fn error(anthropic: bool, status: u16, message: &str, code: &str, retry_after: Option<u64>) -> HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    if let Some(seconds) = retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    if anthropic {
        let kind = match status.as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        return response.json(json!({"type": "error", "error": {"type": kind, "message": message}}));
    }
    let (kind, code) = match status.as_u16() {
        429 => ("requests", "rate_limit_exceeded"),
        500.. => ("server_error", code),
        _ => ("invalid_request_error", code),
    };
    response.json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

async fn set_behaviour(behaviour: web::Json<Behaviour>, state: web::Data<State>) -> HttpResponse {
    *state.behaviour.lock().unwrap_or_else(PoisonError::into_inner) = behaviour.into_inner();
    HttpResponse::NoContent().finish()
}

//! The translation's tests: golden fixtures (`gateway/tests/fixtures/translate/*.json`: a request, an answer,
//! an upstream SSE transcript or an error in, the expected translation out), the property that a streamed
//! answer translates to the same text, tool arguments and usage as the same answer whole, and the property that
//! no input panics.
//!
//! Fixture kinds, by file name prefix: `request_`, `answer_`, `stream_`, `error_`; each holds a `direction`
//! (`openai_to_anthropic` or `anthropic_to_openai`), its `input` and the expected output. With
//! `TRANSLATE_BLESS=1` the expected outputs are rewritten from what the code produces (then read the diff).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

pub(super) fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

fn fixtures(prefix: &str) -> Vec<(PathBuf, Value)> {
    fixtures_in(&fixtures_dir(), prefix)
}

/// The fixtures of `dir` whose file name starts with `prefix`, by name.
pub(super) fn fixtures_in(dir: &Path, prefix: &str) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "json")
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {prefix}* fixtures");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, value)
        })
        .collect()
}

fn bless() -> bool {
    std::env::var_os("TRANSLATE_BLESS").is_some()
}

/// Compares `actual` with `fixture[field]`, or writes it there when blessing.
pub(super) fn check(path: &Path, fixture: &mut Value, field: &str, actual: Value) {
    if bless() {
        fixture[field] = actual;
        let text = serde_json::to_string_pretty(fixture).unwrap();
        std::fs::write(path, text + "\n").unwrap();
        return;
    }
    assert_eq!(
        actual,
        fixture[field],
        "{}: `{field}` differs; got\n{}",
        path.display(),
        serde_json::to_string_pretty(&actual).unwrap()
    );
}

fn direction(fixture: &Value) -> &str {
    fixture["direction"].as_str().unwrap()
}

pub(super) fn usage_value(usage: Option<MeteredUsage>) -> Value {
    serde_json::to_value(usage).unwrap()
}

pub(super) fn error_value(error: &TranslateError) -> Value {
    json!({"status": error.status(), "param": error.param(), "message": error.to_string()})
}

/// Data given as a JSON string is sent as that string's text (a malformed or `[DONE]` event); anything else
/// as its JSON.
pub(super) fn data_bytes(data: &Value) -> Vec<u8> {
    match data {
        Value::String(text) => text.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap(),
    }
}

/// SSE frames → `[{"event": name or null, "data": JSON or the raw text}]`.
pub(super) fn frames(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "unterminated frame: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|frame| {
            let mut event = Value::Null;
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Value::from(name);
                } else if let Some(raw) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            json!({"event": event, "data": data})
        })
        .collect()
}

// -----------------------------------------------------------------------------------------------------------
// Golden fixtures
// -----------------------------------------------------------------------------------------------------------

#[test]
fn request_fixtures() {
    for (path, mut fixture) in fixtures("request_") {
        let input = fixture["input"].clone();
        let result = match direction(&fixture) {
            "openai_to_anthropic" => {
                openai_to_anthropic_request(&input, fixture["default_max_tokens"].as_u64().unwrap_or(4096))
            }
            "anthropic_to_openai" => anthropic_to_openai_request(&input),
            other => panic!("{}: direction {other}", path.display()),
        };
        let actual = match result {
            Ok(translated) => json!({
                "body": translated.body,
                "dropped": translated.dropped,
                "dropped_header": translated.dropped_header(),
                "stream": translated.stream,
                "include_usage": translated.include_usage,
            }),
            Err(error) => json!({"error": error_value(&error)}),
        };
        check(&path, &mut fixture, "expected", actual);
    }
}

#[test]
fn answer_fixtures() {
    for (path, mut fixture) in fixtures("answer_") {
        let input = data_bytes(&fixture["input"]);
        let result = match direction(&fixture) {
            "anthropic_to_openai" => anthropic_to_openai_answer(&input, fixture["created"].as_i64().unwrap()),
            "openai_to_anthropic" => openai_to_anthropic_answer(&input),
            other => panic!("{}: direction {other}", path.display()),
        };
        let actual = match result {
            Ok(answer) => json!({"body": answer.body, "usage": usage_value(answer.usage)}),
            Err(error) => json!({"error": error_value(&error)}),
        };
        check(&path, &mut fixture, "expected", actual);
    }
}

#[test]
fn stream_fixtures() {
    for (path, mut fixture) in fixtures("stream_") {
        let events: Vec<(Option<String>, Vec<u8>)> = fixture["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["event"].as_str().map(str::to_owned), data_bytes(&e["data"])))
            .collect();
        let mut out = Vec::new();
        let (usage, malformed) = match direction(&fixture) {
            "anthropic_to_openai" => {
                let mut stream = AnthropicToOpenAiStream::new(
                    fixture["include_usage"].as_bool().unwrap(),
                    fixture["created"].as_i64().unwrap(),
                );
                for (event, data) in &events {
                    out.extend(stream.push(event.as_deref(), data));
                }
                out.extend(stream.finish());
                (stream.usage(), stream.malformed_events())
            }
            "openai_to_anthropic" => {
                let mut stream = OpenAiToAnthropicStream::new();
                for (event, data) in &events {
                    out.extend(stream.push(event.as_deref(), data));
                }
                out.extend(stream.finish());
                (stream.usage(), stream.malformed_events())
            }
            other => panic!("{}: direction {other}", path.display()),
        };
        let actual = json!({"frames": frames(&out), "usage": usage_value(usage), "malformed": malformed});
        check(&path, &mut fixture, "expected", actual);
    }
}

#[test]
fn error_fixtures() {
    for (path, mut fixture) in fixtures("error_") {
        let status = u16::try_from(fixture["status"].as_u64().unwrap()).unwrap();
        let input = data_bytes(&fixture["input"]);
        let translated = match direction(&fixture) {
            "anthropic_to_openai" => anthropic_error_to_openai(status, &input),
            "openai_to_anthropic" => openai_error_to_anthropic(status, &input),
            other => panic!("{}: direction {other}", path.display()),
        };
        let actual = json!({"status": translated.status, "body": translated.body});
        check(&path, &mut fixture, "expected", actual);
    }
}

// -----------------------------------------------------------------------------------------------------------
// Unit checks the fixtures do not spell out
// -----------------------------------------------------------------------------------------------------------

#[test]
fn temperature_is_clamped_and_checked() {
    let body =
        |t: f64| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": t});
    let out = openai_to_anthropic_request(&body(1.7), 10).unwrap();
    assert_eq!(out.body["temperature"], json!(1.0));
    let out = openai_to_anthropic_request(&body(0.3), 10).unwrap();
    assert_eq!(out.body["temperature"], json!(0.3));
    assert_eq!(
        openai_to_anthropic_request(&body(-1.0), 10).unwrap_err().param(),
        Some("temperature")
    );
}

#[test]
fn consecutive_same_role_messages_are_merged() {
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]});
    let out = openai_to_anthropic_request(&body, 10).unwrap();
    let turns = out.body["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["content"].as_array().unwrap().len(), 2);
    assert_eq!(turns[1]["content"].as_array().unwrap().len(), 2);
}

#[test]
fn cache_lifetimes_are_split() {
    let usage = MeteredUsage::from_anthropic(&json!({
        "input_tokens": 10, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 50,
    }))
    .unwrap();
    assert_eq!(
        usage,
        MeteredUsage {
            prompt_tokens: 1310,
            completion_tokens: 50,
            cached_read_tokens: 1000,
            cache_write_5m_tokens: 100,
            cache_write_1h_tokens: 200,
            reasoning_tokens: 0,
        }
    );
    // Without the split, writes are the default 5-minute ones.
    let usage =
        MeteredUsage::from_anthropic(&json!({"input_tokens": 1, "cache_creation_input_tokens": 7})).unwrap();
    assert_eq!((usage.cache_write_5m_tokens, usage.cache_write_1h_tokens), (7, 0));
    // The Anthropic form and back keeps every figure but reasoning (which Anthropic has no place for).
    assert_eq!(
        MeteredUsage::from_anthropic(&usage.to_anthropic()),
        Some(usage),
        "round trip"
    );
    assert_eq!(MeteredUsage::from_anthropic(&json!({})), None);
    assert_eq!(MeteredUsage::from_openai(&json!("x")), None);
}

#[test]
fn unknown_error_text_is_cut_to_a_kib() {
    let body = "é".repeat(3000);
    let out = anthropic_error_to_openai(502, body.as_bytes());
    let message = out.body["error"]["message"].as_str().unwrap();
    assert!(message.len() <= 1024 + 64, "{}", message.len());
    assert_eq!(out.status, 502);
}

#[test]
fn mid_stream_openai_errors_map_by_type() {
    let mut stream = OpenAiToAnthropicStream::new();
    let out = stream.push(
        None,
        br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    let frames = frames(&out);
    let error = frames.last().unwrap();
    assert_eq!(error["event"], json!("error"));
    assert_eq!(error["data"]["error"]["type"], json!("rate_limit_error"));
    assert!(stream.is_done());
    assert!(stream.push(None, b"[DONE]").is_empty());
}

#[test]
fn dropped_header_joins_names() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1, "logprobs": true,
        "logit_bias": {"1": 2}});
    let out = openai_to_anthropic_request(&body, 10).unwrap();
    assert_eq!(out.dropped_header().as_deref(), Some("logit_bias,logprobs,seed"));
    assert_eq!(DROPPED_FIELDS_HEADER, "x-tollgate-dropped-fields");
}

// -----------------------------------------------------------------------------------------------------------
// Streamed = whole
// -----------------------------------------------------------------------------------------------------------

/// `text` cut before the characters at `cuts` (taken modulo its length).
pub(super) fn split(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    points.push(0);
    points.push(chars.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| chars[w[0]..w[1]].iter().collect())
        .collect()
}

fn anthropic_event(kind: &str, data: Value) -> (String, Vec<u8>) {
    (kind.to_owned(), serde_json::to_vec(&data).unwrap())
}

#[derive(Debug, Clone)]
struct Answer {
    text: String,
    arguments: Value,
    text_cuts: Vec<usize>,
    argument_cuts: Vec<usize>,
    usage: [u64; 6],
}

fn answer_strategy() -> impl Strategy<Value = Answer> {
    let scalar = prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z \"\\\\é😀]{0,12}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    let arguments = prop::collection::btree_map("[a-z_]{1,8}", scalar, 0..5)
        .prop_map(|map| Value::Object(map.into_iter().collect()));
    (
        "[a-zA-Z0-9 ,.!?\"\\\\\n€é😀]{0,80}",
        arguments,
        prop::collection::vec(0usize..200, 0..12),
        prop::collection::vec(0usize..200, 0..12),
        [
            0u64..5000,
            0u64..5000,
            0u64..5000,
            0u64..5000,
            0u64..5000,
            0u64..5000,
        ],
    )
        .prop_map(|(text, arguments, text_cuts, argument_cuts, usage)| Answer {
            text,
            arguments,
            text_cuts,
            argument_cuts,
            usage,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn anthropic_stream_translates_like_the_whole_answer(answer in answer_strategy()) {
        let [input, writes, reads, output, ..] = answer.usage;
        let arguments = answer.arguments.to_string();
        let mut content = Vec::new();
        if !answer.text.is_empty() {
            content.push(json!({"type": "text", "text": answer.text}));
        }
        content.push(json!({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": answer.arguments}));
        let usage = json!({"input_tokens": input, "cache_creation_input_tokens": writes,
            "cache_read_input_tokens": reads, "output_tokens": output});
        let whole = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": "tool_use", "stop_sequence": null, "usage": usage});
        let whole = anthropic_to_openai_answer(&serde_json::to_vec(&whole).unwrap(), 7).unwrap();

        let mut events = vec![anthropic_event("message_start", json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": writes,
                "cache_read_input_tokens": reads, "output_tokens": 1}}}))];
        let mut index = 0;
        if !answer.text.is_empty() {
            events.push(anthropic_event("content_block_start", json!({"type": "content_block_start",
                "index": 0, "content_block": {"type": "text", "text": ""}})));
            for piece in split(&answer.text, &answer.text_cuts) {
                events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": piece}})));
                events.push(anthropic_event("ping", json!({"type": "ping"})));
            }
            events.push(anthropic_event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
            index = 1;
        }
        events.push(anthropic_event("content_block_start", json!({"type": "content_block_start",
            "index": index, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}})));
        for piece in split(&arguments, &answer.argument_cuts) {
            events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta",
                "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})));
        }
        events.push(anthropic_event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        events.push(anthropic_event("message_delta", json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": output}})));
        events.push(anthropic_event("message_stop", json!({"type": "message_stop"})));

        let mut stream = AnthropicToOpenAiStream::new(true, 7);
        let mut out = Vec::new();
        for (event, data) in &events {
            out.extend(stream.push(Some(event), data));
        }
        prop_assert_eq!(stream.malformed_events(), 0);
        prop_assert!(stream.is_done());
        let frames = frames(&out);
        prop_assert_eq!(frames.last().map(|f| &f["data"]), Some(&json!("[DONE]")));
        let mut text = String::new();
        let mut streamed_arguments = String::new();
        let mut finish = Value::Null;
        for frame in &frames[..frames.len() - 1] {
            let chunk = &frame["data"];
            if let Some(choice) = chunk["choices"].get(0) {
                text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                if let Some(call) = choice["delta"]["tool_calls"].get(0) {
                    prop_assert_eq!(&call["index"], &json!(0));
                    streamed_arguments.push_str(call["function"]["arguments"].as_str().unwrap());
                }
                if !choice["finish_reason"].is_null() {
                    finish = choice["finish_reason"].clone();
                }
            }
        }
        let message = &whole.body["choices"][0]["message"];
        prop_assert_eq!(&text, message["content"].as_str().unwrap_or_default());
        prop_assert_eq!(&streamed_arguments, &arguments);
        prop_assert_eq!(&Value::from(streamed_arguments), &message["tool_calls"][0]["function"]["arguments"]);
        prop_assert_eq!(&finish, &whole.body["choices"][0]["finish_reason"]);
        prop_assert_eq!(stream.usage(), whole.usage);
        let usage_chunk = &frames[frames.len() - 2]["data"];
        prop_assert_eq!(&usage_chunk["usage"], &whole.body["usage"]);
    }

    #[test]
    fn openai_stream_translates_like_the_whole_answer(answer in answer_strategy()) {
        let [prompt, cached, completion, reasoning, ..] = answer.usage;
        let cached = cached.min(prompt);
        let reasoning = reasoning.min(completion);
        let arguments = answer.arguments.to_string();
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}});
        let content = if answer.text.is_empty() { Value::Null } else { Value::from(answer.text.as_str()) };
        let whole = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}]},
                "finish_reason": "tool_calls"}],
            "usage": usage});
        let whole = openai_to_anthropic_answer(&serde_json::to_vec(&whole).unwrap()).unwrap();

        let chunk = |delta: Value, finish: Value| serde_json::to_vec(&json!({"id": "chatcmpl-1",
            "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})).unwrap();
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        if !answer.text.is_empty() {
            for piece in split(&answer.text, &answer.text_cuts) {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
        }
        let pieces = split(&arguments, &answer.argument_cuts);
        for (n, piece) in pieces.iter().enumerate() {
            let call = if n == 0 {
                json!({"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": piece}})
            } else {
                json!({"index": 0, "function": {"arguments": piece}})
            };
            events.push(chunk(json!({"tool_calls": [call]}), Value::Null));
        }
        events.push(chunk(json!({}), json!("tool_calls")));
        events.push(serde_json::to_vec(&json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "created": 7, "model": "gpt-x", "choices": [], "usage": usage})).unwrap());
        events.push(b"[DONE]".to_vec());

        let mut stream = OpenAiToAnthropicStream::new();
        let mut out = Vec::new();
        for data in &events {
            out.extend(stream.push(None, data));
        }
        prop_assert_eq!(stream.malformed_events(), 0);
        prop_assert!(stream.is_done());
        let mut text = String::new();
        let mut partial_json = String::new();
        let mut message_delta = Value::Null;
        let mut open = 0i32;
        for frame in frames(&out) {
            let data = &frame["data"];
            prop_assert_eq!(&frame["event"], &data["type"]);
            match data["type"].as_str().unwrap() {
                "content_block_start" => open += 1,
                "content_block_stop" => open -= 1,
                "content_block_delta" => {
                    text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
                    partial_json.push_str(data["delta"]["partial_json"].as_str().unwrap_or_default());
                }
                "message_delta" => message_delta = data.clone(),
                _ => {}
            }
            prop_assert!((0..=1).contains(&open));
        }
        prop_assert_eq!(open, 0);
        let blocks = whole.body["content"].as_array().unwrap();
        let whole_text: String = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
        prop_assert_eq!(&text, &whole_text);
        prop_assert_eq!(&partial_json, &arguments);
        let tool = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
        prop_assert_eq!(&serde_json::from_str::<Value>(&partial_json).unwrap(), &tool["input"]);
        prop_assert_eq!(&message_delta["delta"]["stop_reason"], &whole.body["stop_reason"]);
        prop_assert_eq!(&message_delta["usage"], &whole.body["usage"]);
        prop_assert_eq!(stream.usage(), whole.usage);
    }
}

// -----------------------------------------------------------------------------------------------------------
// Nothing panics
// -----------------------------------------------------------------------------------------------------------

/// Every entry point fed `value` (as a request, an answer, an error and a stream event of every kind).
fn feed_everything(value: &Value, bytes: &[u8]) {
    let _ = openai_to_anthropic_request(value, 1);
    let _ = anthropic_to_openai_request(value);
    let _ = anthropic_to_openai_answer(bytes, 0);
    let _ = openai_to_anthropic_answer(bytes);
    for status in [0, 200, 400, 429, 529, 999] {
        let _ = anthropic_error_to_openai(status, bytes);
        let _ = openai_error_to_anthropic(status, bytes);
    }
    let mut to_openai = AnthropicToOpenAiStream::new(true, 0);
    let mut to_anthropic = OpenAiToAnthropicStream::new();
    for event in [
        None,
        Some("message_start"),
        Some("content_block_start"),
        Some("content_block_delta"),
        Some("message_delta"),
        Some("error"),
        Some("message_stop"),
    ] {
        let _ = to_openai.push(event, bytes);
        let _ = to_anthropic.push(event, bytes);
    }
    let _ = to_openai.finish();
    let _ = to_anthropic.finish();
    let _ = (to_openai.usage(), to_anthropic.usage());
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "text",
            "tool_use",
            "tool_result",
            "image",
            "image_url",
            "user",
            "assistant",
            "system",
            "tool",
            "function",
            "auto",
            "any",
            "required",
            "none",
            "data:image/png;base64,AAAA",
            "https://x/y.png",
            "message_start",
            "content_block_start",
            "content_block_delta",
            "text_delta",
            "input_json_delta",
            "thinking_delta",
            "message_delta",
            "error",
            "[DONE]",
            "{\"a\":",
            "",
        ])
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "model",
                    "messages",
                    "role",
                    "content",
                    "type",
                    "text",
                    "tool_calls",
                    "function",
                    "name",
                    "arguments",
                    "id",
                    "tool_call_id",
                    "tools",
                    "tool_choice",
                    "stop",
                    "n",
                    "max_tokens",
                    "system",
                    "input",
                    "choices",
                    "message",
                    "delta",
                    "index",
                    "usage",
                    "content_block",
                    "partial_json",
                    "stop_reason",
                    "finish_reason",
                    "error",
                    "source",
                    "image_url",
                    "url",
                    "input_schema",
                    "parameters",
                    "prompt_tokens",
                    "input_tokens",
                    "cache_creation",
                    "stream",
                    "stream_options",
                    "metadata",
                    "temperature",
                    "tool_use_id",
                ]),
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        feed_everything(&Value::Null, &bytes);
    }

    #[test]
    fn random_json_does_not_panic(value in json_strategy()) {
        feed_everything(&value, &serde_json::to_vec(&value).unwrap());
    }
}

/// Every prefix of every fixture's input (truncated JSON), and each input with each of its values replaced by
/// values of other types.
#[test]
fn truncated_and_mistyped_fixtures_do_not_panic() {
    let replacements = [
        json!(null),
        json!(-1),
        json!("x"),
        json!([]),
        json!({}),
        json!(1.5e300),
        json!(true),
    ];
    for prefix in ["request_", "answer_", "stream_", "error_"] {
        for (_, fixture) in fixtures(prefix) {
            let inputs: Vec<Value> = match fixture["events"].as_array() {
                Some(events) => events.iter().map(|e| e["data"].clone()).collect(),
                None => vec![fixture["input"].clone()],
            };
            for input in inputs {
                let bytes = data_bytes(&input);
                for end in 0..bytes.len() {
                    feed_everything(&Value::Null, &bytes[..end]);
                }
                let mut paths = Vec::new();
                collect_paths(&input, &mut Vec::new(), &mut paths);
                for path in paths {
                    for replacement in &replacements {
                        let mut mutated = input.clone();
                        if let Some(slot) = pointer_mut(&mut mutated, &path) {
                            *slot = replacement.clone();
                        }
                        feed_everything(&mutated, &serde_json::to_vec(&mutated).unwrap());
                    }
                }
            }
        }
    }
}

pub(super) fn collect_paths(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                collect_paths(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                collect_paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

pub(super) fn pointer_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let pointer: String = path
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect();
    value.pointer_mut(&pointer)
}

//! The Gemini translation's tests: golden fixtures (`gateway/tests/fixtures/translate/gemini/*.json`, with the
//! prefixes and the `TRANSLATE_BLESS=1` rewriting of [`translate`'s tests](super::super::tests)), the property
//! that a streamed answer translates to the same text, reasoning, tool calls and usage as the same answer
//! whole, and the property that no input panics.
//!
//! Fixture kinds: `request_` (`input` → the [`GeminiRequest`]), `answer_` (`input`, `model`, `created`),
//! `stream_` (`events`, `model`, `created`, `include_usage`) and `error_` (`direction` `gemini_to_openai` or
//! `gemini_to_anthropic`, `status`, `input`).

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::tests::{
    check, collect_paths, data_bytes, error_value, fixtures_dir, fixtures_in, frames, pointer_mut, split,
    usage_value,
};
use super::super::{MeteredUsage, TranslateError};
use super::*;

fn gemini_fixtures(prefix: &str) -> Vec<(PathBuf, Value)> {
    fixtures_in(&fixtures_dir().join("gemini"), prefix)
}

fn translate_request(input: &Value) -> Result<GeminiRequest, TranslateError> {
    match input.as_object() {
        Some(body) => openai_object_to_gemini(body),
        None => Err(TranslateError::NotAnObject),
    }
}

// -----------------------------------------------------------------------------------------------------------
// Golden fixtures
// -----------------------------------------------------------------------------------------------------------

#[test]
fn request_fixtures() {
    for (path, mut fixture) in gemini_fixtures("request_") {
        let actual = match translate_request(&fixture["input"]) {
            Ok(translated) => json!({
                "body": translated.body,
                "model": translated.model,
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
    for (path, mut fixture) in gemini_fixtures("answer_") {
        let input = data_bytes(&fixture["input"]);
        let result = gemini_to_openai_answer(
            &input,
            fixture["model"].as_str().unwrap(),
            fixture["created"].as_i64().unwrap(),
        );
        let actual = match result {
            Ok(answer) => json!({"body": answer.body, "usage": usage_value(answer.usage)}),
            Err(error) => json!({"error": error_value(&error)}),
        };
        check(&path, &mut fixture, "expected", actual);
    }
}

#[test]
fn stream_fixtures() {
    for (path, mut fixture) in gemini_fixtures("stream_") {
        let mut stream = GeminiToOpenAiStream::new(
            fixture["include_usage"].as_bool().unwrap(),
            fixture["created"].as_i64().unwrap(),
            fixture["model"].as_str().unwrap(),
        );
        let mut out = Vec::new();
        for event in fixture["events"].as_array().unwrap() {
            out.extend(stream.push(None, &data_bytes(&event["data"])));
        }
        out.extend(stream.finish());
        let actual = json!({
            "frames": frames(&out),
            "usage": usage_value(stream.usage()),
            "malformed": stream.malformed_events(),
            "done": stream.is_done(),
            "model": stream.model(),
        });
        check(&path, &mut fixture, "expected", actual);
    }
}

#[test]
fn error_fixtures() {
    for (path, mut fixture) in gemini_fixtures("error_") {
        let status = u16::try_from(fixture["status"].as_u64().unwrap()).unwrap();
        let input = data_bytes(&fixture["input"]);
        let translated = match fixture["direction"].as_str().unwrap() {
            "gemini_to_openai" => gemini_error_to_openai(status, &input),
            "gemini_to_anthropic" => gemini_error_to_anthropic(status, &input),
            other => panic!("{}: direction {other}", path.display()),
        };
        let actual = json!({"status": translated.status, "body": translated.body});
        check(&path, &mut fixture, "expected", actual);
    }
}

// -----------------------------------------------------------------------------------------------------------
// Unit checks the fixtures do not spell out
// -----------------------------------------------------------------------------------------------------------

fn request(extra: Value) -> GeminiRequest {
    let mut body = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    translate_request(&body).unwrap()
}

#[test]
fn reasoning_effort_sets_the_thinking_budget() {
    for (effort, budget) in [
        ("none", 0),
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 8192),
        ("high", 24576),
    ] {
        let out = request(json!({"reasoning_effort": effort}));
        assert_eq!(
            out.body["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": budget})
        );
    }
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"});
    assert_eq!(
        translate_request(&body).unwrap_err().param(),
        Some("reasoning_effort")
    );
}

#[test]
fn tool_choice_modes() {
    for (choice, config) in [
        (json!("auto"), json!({"mode": "AUTO"})),
        (json!("none"), json!({"mode": "NONE"})),
        (json!("required"), json!({"mode": "ANY"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"mode": "ANY", "allowedFunctionNames": ["f"]}),
        ),
    ] {
        let out = request(json!({"tool_choice": choice}));
        assert_eq!(out.body["toolConfig"], json!({"functionCallingConfig": config}));
    }
}

#[test]
fn nulls_are_absent_and_false_is_not_dropped() {
    let out = request(
        json!({"temperature": null, "logprobs": false, "store": false, "parallel_tool_calls": true,
        "stream": false, "stream_options": {"include_usage": true}}),
    );
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    assert!(out.body.get("generationConfig").is_none());
    assert!(!out.stream);
    assert!(!out.include_usage, "usage is only for streams");
    assert_eq!(out.dropped_header(), None);
}

#[test]
fn wrong_types_name_the_parameter() {
    for (field, value) in [
        ("temperature", json!("hot")),
        ("temperature", json!(2.5)),
        ("top_p", json!([])),
        ("max_tokens", json!(0)),
        ("seed", json!(1.5)),
        ("stop", json!(3)),
        ("stream", json!("yes")),
        ("tools", json!({})),
        ("tool_choice", json!("sometimes")),
        ("response_format", json!({"type": "json_schema"})),
        ("presence_penalty", json!(3)),
    ] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value});
        let error = translate_request(&body).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(
            error.param().is_some_and(|p| p.starts_with(field)),
            "{field}: {error}"
        );
    }
}

#[test]
fn a_tool_result_answers_the_latest_call_with_its_id() {
    let call = |name: &str| {
        json!({"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function",
        "function": {"name": name, "arguments": "{}"}}]})
    };
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "a"},
        call("first"),
        {"role": "tool", "tool_call_id": "call_0", "content": "1"},
        call("second"),
        {"role": "tool", "tool_call_id": "call_0", "content": "2"},
    ]});
    let out = translate_request(&body).unwrap();
    let contents = out.body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 5);
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"]["name"],
        json!("first")
    );
    assert_eq!(
        contents[4]["parts"][0]["functionResponse"]["name"],
        json!("second")
    );
    // `1` is JSON but not an object: carried as the text.
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"]["response"],
        json!({"content": "1"})
    );
}

#[test]
fn usage_from_gemini() {
    let usage = MeteredUsage::from_gemini(&json!({"promptTokenCount": 100, "cachedContentTokenCount": 60,
        "toolUsePromptTokenCount": 7, "candidatesTokenCount": 20, "thoughtsTokenCount": 300,
        "totalTokenCount": 427}))
    .unwrap();
    assert_eq!(
        usage,
        MeteredUsage {
            prompt_tokens: 107,
            completion_tokens: 320,
            cached_read_tokens: 60,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 300,
        }
    );
    assert_eq!(usage.total_tokens(), 427);
    assert_eq!(MeteredUsage::from_gemini(&json!({"totalTokenCount": 5})), None);
    assert_eq!(
        MeteredUsage::from_gemini(&json!({"promptTokenCount": null})),
        None
    );
    assert_eq!(MeteredUsage::from_gemini(&json!([1])), None);
    assert_eq!(
        MeteredUsage::from_gemini(&json!({"candidatesTokenCount": 3})).map(|u| u.completion_tokens),
        Some(3)
    );
}

#[test]
fn finish_reasons() {
    use super::response::finish_reason;
    assert_eq!(finish_reason(Some("STOP"), false), "stop");
    assert_eq!(finish_reason(Some("STOP"), true), "tool_calls");
    assert_eq!(finish_reason(Some("MAX_TOKENS"), true), "length");
    for filtered in [
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
    ] {
        assert_eq!(finish_reason(Some(filtered), false), "content_filter");
    }
    assert_eq!(finish_reason(Some("MALFORMED_FUNCTION_CALL"), false), "stop");
    assert_eq!(finish_reason(Some("OTHER"), true), "stop");
}

#[test]
fn error_statuses() {
    let body = |status: &str| format!(r#"{{"error":{{"code":1,"message":"m","status":"{status}"}}}}"#);
    for (status, openai, anthropic) in [
        ("INVALID_ARGUMENT", 400, 400),
        ("FAILED_PRECONDITION", 400, 400),
        ("UNAUTHENTICATED", 401, 401),
        ("PERMISSION_DENIED", 403, 403),
        ("NOT_FOUND", 404, 404),
        ("RESOURCE_EXHAUSTED", 429, 429),
        ("INTERNAL", 500, 500),
        ("UNAVAILABLE", 503, 529),
        ("DEADLINE_EXCEEDED", 504, 504),
    ] {
        assert_eq!(
            gemini_error_to_openai(418, body(status).as_bytes()).status,
            openai,
            "{status}"
        );
        assert_eq!(
            gemini_error_to_anthropic(418, body(status).as_bytes()).status,
            anthropic,
            "{status}"
        );
    }
    // Without a status name, the HTTP status decides; a non-error status becomes 502.
    assert_eq!(gemini_error_to_openai(429, b"{}").status, 429);
    assert_eq!(gemini_error_to_openai(200, b"").status, 502);
    let long = "é".repeat(3000);
    let out = gemini_error_to_openai(500, long.as_bytes());
    assert!(out.body["error"]["message"].as_str().unwrap().len() <= 1024 + 64);
}

#[test]
fn the_stream_tracks_a_bounded_number_of_candidates() {
    let mut stream = GeminiToOpenAiStream::new(false, 0, "m");
    let candidates: Vec<Value> = (0..20)
        .map(|i| json!({"index": i, "content": {"parts": [{"text": "x"}]}}))
        .collect();
    let event = serde_json::to_vec(&json!({"candidates": candidates})).unwrap();
    for _ in 0..100 {
        stream.push(None, &event);
    }
    assert_eq!(stream.malformed_events(), 100 * 12);
    assert!(!stream.is_done());
    assert!(stream.finish().is_empty(), "nothing finished: left open");
}

// -----------------------------------------------------------------------------------------------------------
// Streamed = whole
// -----------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Answer {
    text: String,
    thought: String,
    /// A function call's `args`, when the answer calls one.
    args: Option<Value>,
    text_cuts: Vec<usize>,
    thought_cuts: Vec<usize>,
    /// `promptTokenCount`, `cachedContentTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount`,
    /// `toolUsePromptTokenCount`.
    usage: [u64; 5],
    finish: &'static str,
}

fn answer_strategy() -> impl Strategy<Value = Answer> {
    let scalar = prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z \"\\\\é😀]{0,12}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    let args = prop::option::of(
        prop::collection::btree_map("[a-z_]{1,8}", scalar, 0..5)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
    );
    (
        "[a-zA-Z0-9 ,.!?\"\\\\\n€é😀]{0,80}",
        "[a-z .]{0,40}",
        args,
        prop::collection::vec(0usize..200, 0..12),
        prop::collection::vec(0usize..200, 0..6),
        [0u64..5000, 0u64..5000, 0u64..5000, 0u64..5000, 0u64..50],
        prop::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]),
    )
        .prop_map(
            |(text, thought, args, text_cuts, thought_cuts, usage, finish)| Answer {
                text,
                thought,
                args,
                text_cuts,
                thought_cuts,
                usage,
                finish,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn gemini_stream_translates_like_the_whole_answer(answer in answer_strategy()) {
        let [prompt, cached, candidates, thoughts, tool_use] = answer.usage;
        let cached = cached.min(prompt);
        let usage = json!({"promptTokenCount": prompt, "cachedContentTokenCount": cached,
            "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts,
            "toolUsePromptTokenCount": tool_use, "totalTokenCount": prompt + candidates + thoughts + tool_use});
        let call = answer.args.as_ref().map(|args| json!({"functionCall": {"name": "lookup", "args": args}}));
        let mut whole_parts = Vec::new();
        if !answer.thought.is_empty() {
            whole_parts.push(json!({"text": answer.thought, "thought": true}));
        }
        if !answer.text.is_empty() {
            whole_parts.push(json!({"text": answer.text}));
        }
        whole_parts.extend(call.clone());
        let whole = json!({"candidates": [{"content": {"role": "model", "parts": whole_parts},
            "finishReason": answer.finish, "index": 0}], "usageMetadata": usage,
            "modelVersion": "gemini-x-001", "responseId": "r1"});
        let whole = gemini_to_openai_answer(&serde_json::to_vec(&whole).unwrap(), "gemini-x", 7).unwrap();

        // Gemini's events: each a response with the next part; early ones carry the prompt count only.
        let event = |parts: Vec<Value>, finish: Option<&str>, usage: &Value| {
            let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
            if let Some(finish) = finish {
                candidate["finishReason"] = json!(finish);
            }
            serde_json::to_vec(&json!({"candidates": [candidate], "usageMetadata": usage,
                "modelVersion": "gemini-x-001", "responseId": "r1"})).unwrap()
        };
        let early = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
        let mut events = Vec::new();
        if !answer.thought.is_empty() {
            for piece in split(&answer.thought, &answer.thought_cuts) {
                events.push(event(vec![json!({"text": piece, "thought": true})], None, &early));
            }
        }
        if !answer.text.is_empty() {
            for piece in split(&answer.text, &answer.text_cuts) {
                events.push(event(vec![json!({"text": piece})], None, &early));
            }
        }
        events.push(event(call.into_iter().collect(), Some(answer.finish), &usage));

        let mut stream = GeminiToOpenAiStream::new(true, 7, "gemini-x");
        let mut out = Vec::new();
        for data in &events {
            out.extend(stream.push(None, data));
        }
        out.extend(stream.finish());
        prop_assert_eq!(stream.malformed_events(), 0);
        prop_assert!(stream.is_done());
        let frames = frames(&out);
        prop_assert_eq!(frames.last().map(|f| &f["data"]), Some(&json!("[DONE]")));
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        let mut finish = Value::Null;
        for frame in &frames[..frames.len() - 1] {
            let chunk = &frame["data"];
            prop_assert_eq!(&chunk["id"], &whole.body["id"]);
            prop_assert_eq!(&chunk["model"], &whole.body["model"]);
            if let Some(choice) = chunk["choices"].get(0) {
                text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                reasoning.push_str(choice["delta"]["reasoning_content"].as_str().unwrap_or_default());
                if let Some(tool_calls) = choice["delta"]["tool_calls"].as_array() {
                    for call in tool_calls {
                        let mut call = call.clone();
                        call.as_object_mut().unwrap().remove("index");
                        calls.push(call);
                    }
                }
                if !choice["finish_reason"].is_null() {
                    finish = choice["finish_reason"].clone();
                }
            }
        }
        let message = &whole.body["choices"][0]["message"];
        prop_assert_eq!(&text, message["content"].as_str().unwrap_or_default());
        prop_assert_eq!(&reasoning, message["reasoning_content"].as_str().unwrap_or_default());
        let whole_calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(&calls, &whole_calls);
        prop_assert_eq!(&finish, &whole.body["choices"][0]["finish_reason"]);
        prop_assert_eq!(stream.usage(), whole.usage);
        let usage_chunk = &frames[frames.len() - 2]["data"];
        prop_assert_eq!(&usage_chunk["usage"], &whole.body["usage"]);
    }
}

// -----------------------------------------------------------------------------------------------------------
// Nothing panics
// -----------------------------------------------------------------------------------------------------------

/// Every entry point fed `value` (as a request) and `bytes` (as an answer, an error and stream events).
fn feed_everything(value: &Value, bytes: &[u8]) {
    let _ = translate_request(value);
    let _ = gemini_to_openai_answer(bytes, "m", 0);
    for status in [0, 200, 400, 429, 503, 999] {
        let _ = gemini_error_to_openai(status, bytes);
        let _ = gemini_error_to_anthropic(status, bytes);
    }
    let mut stream = GeminiToOpenAiStream::new(true, 0, "m");
    for _ in 0..3 {
        let _ = stream.push(None, bytes);
    }
    let _ = stream.finish();
    let _ = (stream.usage(), stream.model(), stream.is_done());
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "text",
            "image_url",
            "input_audio",
            "user",
            "assistant",
            "system",
            "tool",
            "function",
            "auto",
            "required",
            "none",
            "json_schema",
            "json_object",
            "high",
            "STOP",
            "SAFETY",
            "MAX_TOKENS",
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED",
            "API_KEY_INVALID",
            "data:image/png;base64,AAAA",
            "https://x/y.png",
            "{\"a\":1}",
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
                    "parameters",
                    "properties",
                    "items",
                    "anyOf",
                    "response_format",
                    "json_schema",
                    "schema",
                    "reasoning_effort",
                    "image_url",
                    "url",
                    "stop",
                    "n",
                    "stream",
                    "stream_options",
                    "candidates",
                    "parts",
                    "thought",
                    "functionCall",
                    "args",
                    "finishReason",
                    "index",
                    "usageMetadata",
                    "promptTokenCount",
                    "candidatesTokenCount",
                    "promptFeedback",
                    "blockReason",
                    "error",
                    "code",
                    "message",
                    "status",
                    "details",
                    "reason",
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
        for (_, fixture) in gemini_fixtures(prefix) {
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

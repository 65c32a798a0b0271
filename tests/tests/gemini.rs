//! Gemini instances on the real stack: OpenAI chat completions and Anthropic messages reach Gemini's native
//! `generateContent` / `streamGenerateContent?alt=sse` translated, with the instance's key in `x-goog-api-key`
//! and never the client's; answers, streams and errors come back in the client's protocol; every request is
//! billed once from Gemini's own `usageMetadata` — thinking tokens as output and as reasoning tokens — at the
//! model that answered. "GPT is down, answer from Gemini" fails over before the first byte, and a translated
//! stream that the upstream cuts or the client leaves is still billed once, for no less than was streamed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::mock_gemini::{THOUGHTS_TOKENS, gemini_messages, gemini_usage};
use tollgate_tests::mock_provider::{Behaviour, completion_text};
use tollgate_tests::stack::{CONSUMERS, PROVIDER_KEY, Stack, StackOptions, http};

/// `gemini-2.5-flash` on a Gemini instance (the second mock), and `frontier` on GPT (the mock, preferred) with
/// Gemini behind it.
const GEMINI: &str = r#"
[[instances]]
name = "gemini"
provider = "gemini"
endpoint = "{mock2}beta"
api_key_env = "PROVIDER_KEY"
model = "gemini-2.5-flash"
[[instances]]
name = "gpt"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
model = "gpt-4o-2024-08-06"
[[routes]]
name = "gemini-2.5-flash"
models = ["gemini-2.5-flash"]
paths = ["/v1/chat/completions", "/v1/messages"]
targets = [{ instance = "gemini" }]
[[routes]]
name = "frontier"
models = ["frontier"]
targets = [{ instance = "gpt", priority = 2 }, { instance = "gemini", priority = 1 }]
"#;

async fn stack() -> Stack {
    Stack::start(StackOptions {
        extra_toml: GEMINI.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await
}

fn openai_auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {}", CONSUMERS[0].2))
}

async fn rows(stack: &Stack, expected: usize) -> Vec<Value> {
    let rows = stack.wait_for_usage_rows(expected, Duration::from_secs(30)).await;
    actix_web::rt::time::sleep(Duration::from_millis(800)).await;
    let again = stack.wait_for_usage_rows(expected, Duration::from_secs(5)).await;
    assert_eq!(again.len(), rows.len(), "billed once: {again:?}");
    rows
}

fn gemini_mock(stack: &Stack) -> &tollgate_tests::mock_provider::MockProvider {
    stack.mock2.as_ref().unwrap()
}

#[actix_rt::test]
async fn an_openai_chat_completion_is_answered_by_gemini_and_billed_with_its_thinking_tokens() {
    let stack = stack().await;
    let body = json!({
        "model": "gemini-2.5-flash",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who answers?"}],
        "reasoning_effort": "low",
        "max_tokens": 300,
        "user": "end-user-7"
    });
    let (name, value) = openai_auth();
    let reply = stack
        .post_json("/v1/chat/completions", &[(name, value.as_str())], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers.get("x-tollgate-dropped-fields").map(String::as_str),
        Some("user")
    );
    let answer = reply.json();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], "gemini-2.5-flash");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let sent = &gemini_mock(&stack).received()[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), Some(PROVIDER_KEY));
    assert_eq!(sent.header("authorization"), None, "never the client's key");
    assert_eq!(sent.body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], 300);
    assert!(
        sent.body.get("model").is_none(),
        "Gemini names the model in the path"
    );
    let text = completion_text(&gemini_messages(&sent.body));
    assert_eq!(answer["choices"][0]["message"]["content"], text.as_str());

    let (prompt, candidates, cached, thoughts) = gemini_usage(&sent.body);
    assert_eq!(thoughts, THOUGHTS_TOKENS);
    assert_eq!(answer["usage"]["completion_tokens"], candidates + thoughts);
    let rows = rows(&stack, 1).await;
    let row = &rows[0];
    assert_eq!(row["request_id"], reply.request_id);
    assert_eq!(row["provider"], "gemini");
    assert_eq!(row["model_served"], "gemini-2.5-flash");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(row["prompt_tokens"], prompt);
    assert_eq!(row["completion_tokens"], candidates + thoughts);
    assert_eq!(row["reasoning_tokens"], thoughts);
    assert_eq!(row["cached_prompt_tokens"], cached);
    stack.stop().await;
}

#[actix_rt::test]
async fn while_gpt_answers_503_a_stream_fails_over_to_gemini_and_streams_openai_chunks() {
    let stack = stack().await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let body = json!({
        "model": "frontier", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Stream it across, please."}]
    });
    let (name, value) = openai_auth();
    let reply = stack
        .post_json("/v1/chat/completions", &[(name, value.as_str())], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let sent = &gemini_mock(&stack).received()[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    assert_eq!(sent.query, "alt=sse");
    assert_eq!(streamed, completion_text(&gemini_messages(&sent.body)));
    let (prompt, candidates, _, _) = gemini_usage(&sent.body);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["completion_tokens"], candidates);

    let rows = rows(&stack, 1).await;
    let row = &rows[0];
    assert_eq!(row["instance"], "gemini");
    assert_eq!(row["attempt_count"], 2, "gpt's 503, then gemini");
    assert_eq!(
        row["model_served"], "gemini-2.5-flash",
        "billed at the model that answered"
    );
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["completion_tokens"], candidates);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_anthropic_client_is_answered_by_gemini_in_anthropics_shape_whole_and_streamed() {
    let stack = stack().await;
    let headers = [("x-api-key", CONSUMERS[1].2), ("anthropic-version", "2023-06-01")];
    let body = json!({
        "model": "gemini-2.5-flash", "max_tokens": 256, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello from Anthropic's API."}]
    });
    let whole = stack.post_json("/v1/messages", &headers, &body).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    let message = whole.json();
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(
        message["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Hello from the mock provider")
    );

    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let streamed = stack.post_json("/v1/messages", &headers, &streamed_body).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let text = streamed.text();
    for event in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("event: {event}")),
            "{event} missing: {text}"
        );
    }
    let sent = &gemini_mock(&stack).received()[1];
    let (prompt, candidates, _, _) = gemini_usage(&sent.body);
    assert!(
        text.contains(&format!("\"output_tokens\":{candidates}")),
        "{text}"
    );

    let rows = rows(&stack, 2).await;
    for row in &rows {
        assert_eq!(row["endpoint"], "/v1/messages");
        assert_eq!(row["provider"], "gemini");
        assert_eq!(row["prompt_tokens"], prompt);
        assert_eq!(row["outcome"], "ok");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn geminis_errors_reach_each_client_in_its_own_protocol_and_are_billed_as_upstream_errors() {
    let stack = stack().await;
    gemini_mock(&stack).set_behaviour(Behaviour::Status {
        status: 429,
        retry_after: Some(3),
    });
    let (name, value) = openai_auth();
    let openai = stack
        .post_json(
            "/v1/chat/completions",
            &[(name, value.as_str())],
            &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(openai.status, 429, "{}", openai.text());
    assert_eq!(
        openai.json()["error"]["code"],
        "rate_limit_exceeded",
        "{}",
        openai.text()
    );
    let anthropic = stack
        .post_json(
            "/v1/messages",
            &[("x-api-key", CONSUMERS[1].2), ("anthropic-version", "2023-06-01")],
            &json!({"model": "gemini-2.5-flash", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(anthropic.status, 429, "{}", anthropic.text());
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "rate_limit_error");
    let rows = rows(&stack, 2).await;
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "upstream_error" && r["http_status"] == 429)
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_translated_stream_that_gemini_cuts_is_billed_once_for_what_was_streamed() {
    let stack = stack().await;
    gemini_mock(&stack).set_behaviour(Behaviour::CutStream { events: 3 });
    let (name, value) = openai_auth();
    let body = json!({
        "model": "gemini-2.5-flash", "stream": true,
        "messages": [{"role": "user", "content": "Tell me a long story about a gateway."}]
    });
    let reply = stack
        .post_json("/v1/chat/completions", &[(name, value.as_str())], &body)
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text().contains("[DONE]"),
        "no fake success: {}",
        reply.text()
    );
    let rows = rows(&stack, 1).await;
    let row = &rows[0];
    assert_eq!(row["request_id"], reply.request_id);
    assert_eq!(row["outcome"], "upstream_cut");
    assert!(row["completion_tokens"].as_u64().unwrap() >= 3, "{row}");
    stack.stop().await;
}

#[actix_rt::test]
async fn a_client_that_leaves_a_translated_stream_is_billed_once_for_what_was_streamed() {
    let stack = stack().await;
    gemini_mock(&stack).set_behaviour(Behaviour::SlowStream { millis: 40 });
    let (name, value) = openai_auth();
    let body = json!({
        "model": "gemini-2.5-flash", "stream": true,
        "messages": [{"role": "user", "content": "Stream slowly, I may leave."}]
    });
    let mut response = http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .insert_header((name, value))
        .send_json(&body)
        .await
        .unwrap();
    let request_id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let first = response.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(response);
    let rows = rows(&stack, 1).await;
    let row = &rows[0];
    assert_eq!(row["request_id"], request_id.as_str());
    assert_eq!(row["outcome"], "client_cancelled");
    assert_eq!(row["provider"], "gemini");
    assert!(row["completion_tokens"].as_u64().unwrap() >= 1, "{row}");
    stack.stop().await;
}

//! Anthropic's Messages API passed through to Anthropic-type instances on the real stack: the client's key is
//! replaced by the instance's `x-api-key`, bodies and streams pass unchanged, and usage — input, cache and
//! output tokens, from the body or from `message_start`/`message_delta` — is billed with totals that include
//! every input token. The gateway's own errors on `/v1/messages` have Anthropic's shape, and
//! `/v1/messages/count_tokens` is answered by an Anthropic instance, or estimated when none can, never billed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_meter_sidecar::count::chat_tokens;
use tollgate_meter_sidecar::encoding::Encoding;
use tollgate_tests::mock_provider::{
    Behaviour, anthropic_events, anthropic_usage, as_messages, reported_usage,
};
use tollgate_tests::stack::{CONSUMERS, PROVIDER_KEY, Stack, StackOptions};

const CLAUDE: &str = r#"
[[instances]]
name = "claude"
provider = "anthropic"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "claude"
models = ["claude-sonnet"]
targets = [{ instance = "claude" }]
"#;

fn request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet", "max_tokens": 64, "stream": stream,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Say hello to Tollgate, in Anthropic's dialect."}]
    })
}

async fn post(stack: &Stack, path: &str, body: &Value) -> (u16, String, Vec<u8>) {
    let headers = [("x-api-key", CONSUMERS[1].2), ("anthropic-version", "2023-06-01")];
    let reply = stack.post_json(path, &headers, body).await;
    (reply.status, reply.request_id, reply.body)
}

async fn row(stack: &Stack, request_id: &str, expected_rows: usize) -> Value {
    let rows = stack
        .wait_for_usage_rows(expected_rows, Duration::from_secs(30))
        .await;
    rows.into_iter()
        .find(|r| r["request_id"] == request_id)
        .expect("a usage row")
}

fn assert_billed_with_input_tokens(row: &Value, body: &Value) {
    let (input, cache_read, output) = anthropic_usage(body);
    assert_eq!(row["endpoint"], "/v1/messages");
    assert_eq!(row["provider"], "anthropic");
    assert_eq!(row["consumer_id"], "team-b");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(
        row["prompt_tokens"],
        input + cache_read,
        "uncached and cached input are both prompt tokens"
    );
    assert_eq!(row["cached_prompt_tokens"], cache_read);
    assert_eq!(row["completion_tokens"], output);
    assert_eq!(
        row["total_tokens"],
        input + cache_read + output,
        "the total includes the input tokens"
    );
}

#[actix_rt::test]
async fn a_message_passes_through_with_the_instance_key_and_is_billed_with_its_input_tokens() {
    let stack = Stack::start(StackOptions {
        extra_toml: CLAUDE.into(),
        ..StackOptions::default()
    })
    .await;
    let body = request(false);
    let (status, request_id, bytes) = post(&stack, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["type"], "message");

    let received = &stack.mock.received()[0];
    assert_eq!(received.path, "/v1/messages");
    assert_eq!(
        received.header("x-api-key"),
        Some(PROVIDER_KEY),
        "the instance's key, not the consumer's"
    );
    assert_eq!(received.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(received.header("authorization"), None);

    let row = row(&stack, &request_id, 1).await;
    assert_billed_with_input_tokens(&row, &body);
    // The estimate counts `system` as the leading system message it stands for.
    let as_chat = [
        json!({"role": "system", "content": "You are terse."}),
        body["messages"][0].clone(),
    ];
    assert_eq!(
        row["prompt_tokens_estimated"],
        chat_tokens(Encoding::O200kBase, &as_chat)
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_streamed_message_passes_unchanged_and_is_billed_from_message_start_and_message_delta() {
    let stack = Stack::start(StackOptions {
        extra_toml: CLAUDE.into(),
        ..StackOptions::default()
    })
    .await;
    let body = request(true);
    let (status, request_id, bytes) = post(&stack, "/v1/messages", &body).await;
    assert_eq!(status, 200);
    let upstream = &stack.mock.received()[0].body;
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        anthropic_events(upstream).concat(),
        "byte for byte"
    );

    let row = row(&stack, &request_id, 1).await;
    assert_eq!(row["stream"], 1);
    assert_eq!(row["outcome"], "ok");
    assert_billed_with_input_tokens(&row, &body);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_anthropic_route_serves_only_the_messages_api() {
    let stack = Stack::start(StackOptions {
        extra_toml: CLAUDE.into(),
        ..StackOptions::default()
    })
    .await;
    let chat = json!({"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, bytes) = post(&stack, "/v1/chat/completions", &chat).await;
    let error: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(stack.mock.received().is_empty());
    stack.stop().await;
}

/// The Anthropic SDKs pick their exception class from the status and read `error.type`; a body in OpenAI's
/// shape would leave them with an untyped error.
#[actix_rt::test]
async fn the_gateways_own_errors_on_the_messages_api_have_anthropics_shape() {
    let stack = Stack::start(StackOptions {
        extra_toml: CLAUDE.into(),
        ..StackOptions::default()
    })
    .await;
    let anthropic_error = |bytes: &[u8]| -> (String, String) {
        let body: Value = serde_json::from_slice(bytes).expect("a JSON error body");
        assert_eq!(body["type"], "error", "{body}");
        assert!(
            body.get("error").and_then(|e| e.get("code")).is_none(),
            "not OpenAI's shape: {body}"
        );
        (
            body["error"]["type"].as_str().unwrap().to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    };
    let wrong_key = [("x-api-key", "sk-not-a-key"), ("anthropic-version", "2023-06-01")];
    let reply = stack.post_json("/v1/messages", &wrong_key, &request(false)).await;
    assert_eq!(reply.status, 401);
    assert_eq!(anthropic_error(&reply.body).0, "authentication_error");

    let reply = stack.post_json("/v1/messages", &[], &request(false)).await;
    let (kind, message) = anthropic_error(&reply.body);
    assert_eq!((reply.status, kind.as_str()), (401, "authentication_error"));
    assert!(message.contains("x-api-key"), "{message}");

    let unknown_model =
        json!({"model": "claude-9", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, bytes) = post(&stack, "/v1/messages", &unknown_model).await;
    assert_eq!(
        (status, anthropic_error(&bytes).0.as_str()),
        (404, "not_found_error")
    );

    let reply = stack
        .post_json(
            "/v1/messages",
            &[("x-api-key", CONSUMERS[1].2)],
            &json!({"max_tokens": 8}),
        )
        .await;
    assert_eq!(
        (reply.status, anthropic_error(&reply.body).0.as_str()),
        (400, "invalid_request_error")
    );

    let (status, _, bytes) = post(&stack, "/v1/messages/batches", &request(false)).await;
    assert_eq!(
        (status, anthropic_error(&bytes).0.as_str()),
        (404, "not_found_error")
    );

    // OpenAI's endpoints keep OpenAI's shape.
    let reply = stack
        .post_json(
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-not-a-key")],
            &json!({}),
        )
        .await;
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        (reply.status, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert!(stack.mock.received().is_empty(), "nothing reached the provider");
    stack.stop().await;
}

#[actix_rt::test]
async fn count_tokens_is_answered_by_the_anthropic_instance_or_estimated_and_never_billed() {
    let stack = Stack::start(StackOptions {
        extra_toml: CLAUDE.into(),
        ..StackOptions::default()
    })
    .await;
    let body = json!({
        "model": "claude-sonnet",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    });
    let headers = [("x-api-key", CONSUMERS[1].2), ("anthropic-version", "2023-06-01")];
    let reply = stack
        .post_json("/v1/messages/count_tokens", &headers, &body)
        .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        reply.headers.get("x-tollgate-token-count").map(String::as_str),
        Some("provider")
    );
    let counted: Value = serde_json::from_slice(&reply.body).unwrap();
    let (prompt, _, _) = reported_usage(&as_messages(&body));
    assert_eq!(counted["input_tokens"], prompt);
    let received = stack.mock.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/messages/count_tokens");
    assert_eq!(
        received[0].header("x-api-key"),
        Some(PROVIDER_KEY),
        "the instance's key, not the consumer's"
    );

    // The instance fails: the gateway's estimate answers instead, and says so.
    stack.mock.set_behaviour(Behaviour::Status {
        status: 529,
        retry_after: None,
    });
    let reply = stack
        .post_json("/v1/messages/count_tokens", &headers, &body)
        .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        reply.headers.get("x-tollgate-token-count").map(String::as_str),
        Some("estimated")
    );
    let as_chat = [
        json!({"role": "system", "content": "You are terse."}),
        body["messages"][0].clone(),
    ];
    let estimated: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        estimated["input_tokens"],
        chat_tokens(Encoding::O200kBase, &as_chat)
    );

    // A wrong key is refused in Anthropic's shape, before any provider sees it.
    let before = stack.mock.received().len();
    let reply = stack
        .post_json("/v1/messages/count_tokens", &[("x-api-key", "sk-wrong")], &body)
        .await;
    assert_eq!(reply.status, 401);
    let error: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    assert_eq!(stack.mock.received().len(), before);

    // Counting generates nothing: no usage event. A message sent afterwards is the only row.
    stack.mock.set_behaviour(Behaviour::Normal);
    let (status, request_id, _) = post(&stack, "/v1/messages", &request(false)).await;
    assert_eq!(status, 200);
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    tokio_sleep_past_ingest().await;
    let rows_after = stack.wait_for_usage_rows(1, Duration::from_secs(5)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows_after.len(), 1, "{rows_after:?}");
    assert_eq!(rows_after[0]["request_id"], request_id.as_str());
    stack.stop().await;
}

/// Long enough for ingest (batches every 100 ms) to have written any event that was sent before.
async fn tokio_sleep_past_ingest() {
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
}

//! "GPT-4 is down, answer from Claude", on the real stack: a route of an OpenAI instance (preferred) and an
//! Anthropic instance serves OpenAI clients and Anthropic clients alike. While the OpenAI instance answers 503,
//! an OpenAI client's chat completion — whole and streamed — is answered by Claude, translated into OpenAI's
//! shape, and billed once at the model that answered with Anthropic's own figures; an Anthropic client's message
//! is answered by the OpenAI instance, translated into Anthropic's shape. What cannot be carried across is named
//! in `x-tollgate-dropped-fields`, and what cannot be honoured (`n` > 1) is refused before any provider works.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::mock_provider::{
    Behaviour, anthropic_usage, as_messages, completion_text, reported_usage,
};
use tollgate_tests::stack::{CONSUMERS, MIXED_ROUTE, Stack, StackOptions, sample};

async fn stack() -> Stack {
    Stack::start(StackOptions {
        extra_toml: MIXED_ROUTE.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await
}

fn openai_auth() -> String {
    format!("Bearer {}", CONSUMERS[0].2)
}

async fn row_of(stack: &Stack, request_id: &str) -> Value {
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1, "billed once: {rows:?}");
    let row = rows.into_iter().next().unwrap();
    assert_eq!(row["request_id"], request_id);
    row
}

#[actix_rt::test]
async fn while_gpt_answers_503_an_openai_client_is_answered_by_claude_in_openais_shape_and_billed_at_claude()
{
    let stack = stack().await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let body = json!({
        "model": "frontier",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who answers today?"}],
        "presence_penalty": 0.5
    });
    let auth = openai_auth();
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", auth.as_str())], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        reply.headers.get("x-tollgate-instance").map(String::as_str),
        Some("claude")
    );
    assert_eq!(
        reply.headers.get("x-tollgate-dropped-fields").map(String::as_str),
        Some("presence_penalty")
    );
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], "claude-sonnet-4-5");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let mock2 = stack.mock2.as_ref().unwrap();
    let sent = &mock2.received()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.body["system"], "Be brief.",
        "the system message became Anthropic's `system`"
    );
    assert_eq!(sent.body["max_tokens"], 4096, "the instance's default limit");
    let text = completion_text(&as_messages(&sent.body));
    assert_eq!(answer["choices"][0]["message"]["content"], text.as_str());
    let (input, cache_read, output) = anthropic_usage(&sent.body);
    assert_eq!(answer["usage"]["prompt_tokens"], input + cache_read);
    assert_eq!(answer["usage"]["completion_tokens"], output);

    let row = row_of(&stack, &reply.request_id).await;
    assert_eq!(row["provider"], "anthropic");
    assert_eq!(row["instance"], "claude");
    assert_eq!(
        row["model_served"], "claude-sonnet-4-5",
        "billed at the model that answered"
    );
    assert_eq!(row["endpoint"], "/v1/chat/completions");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(row["prompt_tokens"], input + cache_read);
    assert_eq!(row["completion_tokens"], output);
    assert_eq!(row["attempt_count"], 2, "gpt's 503, then claude");
    let translated = sample(
        &stack.metrics.render(),
        r#"tollgate_translations_total{direction="chat_to_messages",result="dropped_fields"}"#,
    );
    assert!(translated.is_some_and(|n| n >= 1.0), "{translated:?}");
    stack.stop().await;
}

#[actix_rt::test]
async fn a_streamed_chat_completion_fails_over_to_claude_and_streams_openai_chunks_billed_from_anthropics_usage()
 {
    let stack = stack().await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let body = json!({
        "model": "frontier", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Stream it across, please."}]
    });
    let auth = openai_auth();
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", auth.as_str())], &body)
        .await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body.clone()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let mut content = String::new();
    let mut usage = Value::Null;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    let mock2 = stack.mock2.as_ref().unwrap();
    let sent = &mock2.received()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(content, completion_text(&as_messages(&sent.body)));
    let (input, cache_read, output) = anthropic_usage(&sent.body);
    assert_eq!(usage["completion_tokens"], output, "{usage}");

    let row = row_of(&stack, &reply.request_id).await;
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["stream"], 1);
    assert_eq!(row["provider"], "anthropic");
    assert_eq!(row["model_served"], "claude-sonnet-4-5");
    assert_eq!(row["prompt_tokens"], input + cache_read);
    assert_eq!(row["completion_tokens"], output);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_anthropic_client_is_answered_by_the_openai_instance_in_anthropics_shape() {
    let stack = stack().await;
    let body = json!({
        "model": "frontier", "max_tokens": 100, "system": "Be brief.", "top_k": 5,
        "messages": [{"role": "user", "content": "Which provider is this?"}]
    });
    let headers = [("x-api-key", CONSUMERS[1].2), ("anthropic-version", "2023-06-01")];
    let reply = stack.post_json("/v1/messages", &headers, &body).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        reply.headers.get("x-tollgate-instance").map(String::as_str),
        Some("gpt")
    );
    assert_eq!(
        reply.headers.get("x-tollgate-dropped-fields").map(String::as_str),
        Some("top_k")
    );
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["stop_reason"], "end_turn");
    let sent = &stack.mock.received()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["messages"][0]["role"], "system");
    let text = completion_text(&as_messages(&sent.body));
    assert_eq!(answer["content"][0]["text"], text.as_str());

    let (prompt, completion, _) = reported_usage(&as_messages(&sent.body));
    let row = row_of(&stack, &reply.request_id).await;
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["endpoint"], "/v1/messages");
    assert_eq!(
        (row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()),
        (Some(prompt.into()), Some(completion.into()))
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn what_cannot_be_honoured_across_protocols_is_refused_before_claude_works() {
    let stack = stack().await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let body =
        json!({"model": "frontier", "n": 2, "messages": [{"role": "user", "content": "Two answers?"}]});
    let auth = openai_auth();
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", auth.as_str())], &body)
        .await;
    assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
    let error: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        stack.mock2.as_ref().unwrap().received().is_empty(),
        "Claude did no work"
    );
    let refused = sample(
        &stack.metrics.render(),
        r#"tollgate_translations_total{direction="chat_to_messages",result="refused"}"#,
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
    stack.stop().await;
}

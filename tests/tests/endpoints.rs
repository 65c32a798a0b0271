//! The other metered OpenAI-compatible endpoints on the real stack: `/v1/embeddings` and the legacy
//! `/v1/completions` (whole and streamed) go through the same admission, routing, failover and metering as chat,
//! and their usage lands in ClickHouse with their own endpoint.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::mock_provider::{Behaviour, as_messages, completion_text, reported_usage, sse_events};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, UPSTREAM_MODEL};

fn tiktoken(text: &str) -> usize {
    tiktoken_rs::o200k_base().unwrap().encode_ordinary(text).len()
}

async fn post(stack: &Stack, path: &str, body: &Value) -> (u16, String, Vec<u8>) {
    let bearer = format!("Bearer {}", CONSUMERS[2].2);
    let reply = stack.post_json(path, &[("authorization", &bearer)], body).await;
    (reply.status, reply.request_id, reply.body)
}

async fn row(stack: &Stack, request_id: &str) -> Value {
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    rows.into_iter()
        .find(|r| r["request_id"] == request_id)
        .expect("a usage row")
}

#[actix_rt::test]
async fn embeddings_are_metered_with_an_exact_estimate_of_every_input() {
    let stack = Stack::start(StackOptions::default()).await;
    let inputs = [
        "The first document.",
        "Ein zweites Dokument 🚀 with <|endoftext|> inside.",
    ];
    let body = json!({"model": MODEL, "input": inputs});
    let (status, request_id, bytes) = post(&stack, "/v1/embeddings", &body).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        answer["data"][0]["embedding"],
        json!([0.015, -0.25, 0.5]),
        "the provider's body, unchanged"
    );

    let row = row(&stack, &request_id).await;
    let (prompt, _, _) = reported_usage(&as_messages(&body));
    assert_eq!(row["endpoint"], "/v1/embeddings");
    assert_eq!(row["model_served"], UPSTREAM_MODEL);
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(
        (row["prompt_tokens"].clone(), row["completion_tokens"].clone()),
        (json!(prompt), json!(0))
    );
    assert_eq!(row["prompt_estimate_source"], "meter");
    assert_eq!(
        row["prompt_tokens_estimated"],
        inputs.iter().map(|i| tiktoken(i)).sum::<usize>(),
        "each input counted"
    );
    assert_eq!(stack.mock.received()[0].path, "/v1/embeddings");
    stack.stop().await;
}

#[actix_rt::test]
async fn legacy_completions_are_metered_whole_and_streamed() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = json!({"model": MODEL, "prompt": "Once upon a time, in a gateway far away,"});
    let (status, request_id, bytes) = post(&stack, "/v1/completions", &body).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["choices"][0]["text"], completion_text(&as_messages(&body)));
    let whole = row(&stack, &request_id).await;
    assert_eq!(whole["endpoint"], "/v1/completions");
    assert_eq!(whole["usage_source"], "provider");
    assert_eq!(
        whole["prompt_tokens_estimated"],
        tiktoken("Once upon a time, in a gateway far away,")
    );

    // Streamed, from a provider that reports no usage: the text is counted exactly.
    stack.mock.set_behaviour(Behaviour::NoUsage);
    let streamed = json!({"model": MODEL, "prompt": "Stream: ünïcödé ✓", "stream": true});
    let (status, request_id, bytes) = post(&stack, "/v1/completions", &streamed).await;
    assert_eq!(status, 200);
    let upstream = &stack.mock.received()[1].body;
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        sse_events(upstream, false).concat()
    );
    let rows = stack.wait_for_usage_rows(2, Duration::from_secs(30)).await;
    let streamed_row = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(streamed_row["stream"], 1);
    assert_eq!(streamed_row["outcome"], "ok");
    assert_eq!(streamed_row["usage_source"], "counted");
    assert_eq!(
        streamed_row["completion_tokens"],
        tiktoken(&completion_text(&as_messages(&streamed)))
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn each_endpoint_refuses_its_own_malformed_prompt() {
    let stack = Stack::start(StackOptions::default()).await;
    for (path, body, param) in [
        ("/v1/embeddings", json!({"model": MODEL}), "input"),
        (
            "/v1/embeddings",
            json!({"model": MODEL, "input": {"not": "text"}}),
            "input",
        ),
        ("/v1/completions", json!({"model": MODEL}), "prompt"),
        (
            "/v1/embeddings",
            json!({"model": MODEL, "input": "x", "stream": true}),
            "stream",
        ),
    ] {
        let (status, _, bytes) = post(&stack, path, &body).await;
        let error: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (status, error["error"]["param"].as_str()),
            (400, Some(param)),
            "{path} {body}"
        );
    }
    assert!(stack.mock.received().is_empty());
    stack.stop().await;
}

//! OpenAI's Responses API (`POST /v1/responses`) on the real stack: the request and the answer pass through as
//! they are, whole and streamed; each request is billed once from the provider's own usage — the whole response's,
//! or the stream's `response.completed` — with its reasoning and cached tokens as their own figures; a consumer's
//! token quota reserves `max_output_tokens` and refuses in OpenAI's shape; and a route that mixes protocols does
//! not offer the endpoint. How a Responses request ends early (client gone, upstream cut, no usage, …) is a row of
//! the settlement matrix (`settlement.rs`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::mock_responses::{REASONING_TOKENS, responses_events, responses_usage};
use tollgate_tests::stack::{CONSUMERS, MIXED_ROUTE, MODEL, Stack, StackOptions, UPSTREAM_MODEL};

fn auth() -> String {
    format!("Bearer {}", CONSUMERS[0].2)
}

async fn the_row(stack: &Stack, request_id: &str) -> Value {
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1, "billed once: {rows:?}");
    let row = rows.into_iter().next().unwrap();
    assert_eq!(row["request_id"], request_id);
    row
}

#[actix_rt::test]
async fn a_whole_response_passes_through_and_is_billed_with_its_reasoning_and_cached_tokens() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = json!({
        "model": MODEL,
        "instructions": "You are terse.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is Tollgate?"}]}],
        "reasoning": {"effort": "low"},
        "max_output_tokens": 300,
        "store": false
    });
    let reply = stack
        .post_json("/v1/responses", &[("authorization", auth().as_str())], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");

    let sent = &stack.mock.received()[0];
    assert_eq!(sent.path, "/v1/responses");
    let mut expected = body.clone();
    expected["model"] = json!(UPSTREAM_MODEL);
    assert_eq!(sent.body, expected, "sent as the client sent it, the model aside");

    let (input, output, cached, reasoning) = responses_usage(&sent.body);
    assert_eq!(
        answer["usage"]["output_tokens_details"]["reasoning_tokens"],
        REASONING_TOKENS
    );
    let row = the_row(&stack, &reply.request_id).await;
    assert_eq!(row["endpoint"], "/v1/responses");
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(row["model_served"], UPSTREAM_MODEL);
    assert_eq!(row["prompt_tokens"], input);
    assert_eq!(row["completion_tokens"], output);
    assert_eq!(row["total_tokens"], input + output);
    assert_eq!(row["cached_prompt_tokens"], cached);
    assert_eq!(row["reasoning_tokens"], reasoning);
    stack.stop().await;
}

#[actix_rt::test]
async fn a_streamed_response_reaches_the_client_byte_for_byte_and_is_billed_from_response_completed() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = json!({
        "model": MODEL, "stream": true, "input": "Stream me, please.",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    });
    let reply = stack
        .post_json("/v1/responses", &[("authorization", auth().as_str())], &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
    );
    let sent = &stack.mock.received()[0];
    assert_eq!(
        reply.text(),
        responses_events(&sent.body, true, None).concat(),
        "every event as the provider sent it: the Responses API has no usage chunk to strip"
    );
    let (input, output, _, _) = responses_usage(&sent.body);
    let row = the_row(&stack, &reply.request_id).await;
    assert_eq!(row["endpoint"], "/v1/responses");
    assert_eq!(row["stream"], 1);
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(
        (row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()),
        (Some(u64::from(input)), Some(u64::from(output)))
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_consumers_quota_reserves_max_output_tokens_and_refuses_in_openais_shape() {
    let stack = Stack::start(StackOptions {
        consumer_toml: vec![(
            "team-a",
            format!(
                r#"token_limits = [{{ models = ["{MODEL}"], limit = 500, time_window = "1h", rejected_msg = "team-a is out of tokens." }}]"#
            ),
        )],
        ..StackOptions::default()
    })
    .await;
    let ask = |max: u64| json!({"model": MODEL, "input": "A short question.", "max_output_tokens": max});
    let refused = stack
        .post_json("/v1/responses", &[("authorization", auth().as_str())], &ask(600))
        .await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["message"], "team-a is out of tokens.");
    assert_eq!(error["type"], "rate_limit_exceeded");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(stack.mock.received().is_empty(), "no provider worked on it");

    let served = stack
        .post_json("/v1/responses", &[("authorization", auth().as_str())], &ask(100))
        .await;
    assert_eq!(served.status, 200, "{}", served.text());
    let rows = stack.wait_for_usage_rows(2, Duration::from_secs(30)).await;
    let outcomes: Vec<&str> = rows.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        outcomes.contains(&"rejected_quota") && outcomes.contains(&"ok"),
        "{outcomes:?}"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_route_that_mixes_protocols_does_not_offer_the_responses_api() {
    let stack = Stack::start(StackOptions {
        extra_toml: MIXED_ROUTE.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await;
    let reply = stack
        .post_json(
            "/v1/responses",
            &[("authorization", auth().as_str())],
            &json!({"model": "frontier", "input": "Hi"}),
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(reply.json()["error"]["message"].is_string(), "{}", reply.text());
    assert!(stack.mock.received().is_empty());
    assert!(stack.mock2.as_ref().unwrap().received().is_empty());
    stack.stop().await;
}

#[actix_rt::test]
async fn an_input_that_is_neither_text_nor_items_is_refused_by_name() {
    let stack = Stack::start(StackOptions::default()).await;
    for input in [json!(""), json!([]), json!(7), json!([1, 2])] {
        let reply = stack
            .post_json(
                "/v1/responses",
                &[("authorization", auth().as_str())],
                &json!({"model": MODEL, "input": input}),
            )
            .await;
        assert_eq!(reply.status, 400, "{input}: {}", reply.text());
        assert_eq!(reply.json()["error"]["param"], "input", "{}", reply.text());
    }
    assert!(stack.mock.received().is_empty());
    stack.stop().await;
}

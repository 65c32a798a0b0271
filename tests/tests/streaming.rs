//! Streaming on the real stack: SSE reaches the client byte for byte as the provider sent it (minus the usage
//! chunk the gateway asked for on the client's behalf), and every streamed token is billed exactly — from the
//! provider's usage chunk, or counted from the streamed text when there is none, also when the upstream cuts the
//! stream or the client goes away. The mock cuts its stream into odd-sized pieces, so `data:` lines, JSON
//! objects and multi-byte characters arrive split.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::mock_provider::{Behaviour, completion_text, reported_usage, sse_events};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, UPSTREAM_MODEL, http};

const PROMPT: &str = "Stream me: héllo wörld 🚀 日本語, and a <|endoftext|> for good measure.";

fn request(include_usage: bool) -> Value {
    let mut body = json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": PROMPT}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Sends a streaming request as consumer team-a; returns the response (body unread) and its request id.
async fn open_stream(
    stack: &Stack,
    body: &Value,
) -> (
    awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + use<>,
    >,
    String,
) {
    let response = http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .bearer_auth(CONSUMERS[0].2)
        .send_json(body)
        .await
        .unwrap();
    let request_id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (response, request_id)
}

/// Sends a streaming request as consumer team-a and reads the whole response body.
async fn stream(stack: &Stack, body: &Value) -> (u16, String, String) {
    let bearer = format!("Bearer {}", CONSUMERS[0].2);
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", &bearer)], body)
        .await;
    (reply.status, reply.request_id.clone(), reply.text())
}

/// The `data` payloads of an SSE body, read independently of the gateway's parser.
fn data_payloads(body: &str) -> Vec<String> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// The completion text in an SSE body: every choice's `delta.content` and tool-call name and arguments, in the
/// order they arrived.
fn streamed_text(body: &str) -> String {
    data_payloads(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|chunk| chunk["choices"].as_array().cloned().unwrap_or_default())
        .flat_map(|choice| {
            let delta = &choice["delta"];
            let mut pieces: Vec<String> = delta["content"].as_str().map(str::to_owned).into_iter().collect();
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                pieces.extend(call["function"]["name"].as_str().map(str::to_owned));
                pieces.extend(call["function"]["arguments"].as_str().map(str::to_owned));
            }
            pieces
        })
        .collect()
}

fn tiktoken(text: &str) -> usize {
    tiktoken_rs::o200k_base().unwrap().encode_ordinary(text).len()
}

async fn the_row(stack: &Stack, request_id: &str) -> Value {
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let row = rows
        .into_iter()
        .find(|r| r["request_id"] == request_id)
        .expect("a usage row for the stream");
    assert_eq!(row["stream"], 1);
    row
}

#[actix_rt::test]
async fn a_stream_reaches_the_client_unchanged_except_the_usage_chunk_it_did_not_ask_for() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, request_id, body) = stream(&stack, &request(false)).await;
    assert_eq!(status, 200);

    let upstream = &stack.mock.received()[0].body;
    assert_eq!(upstream["model"], UPSTREAM_MODEL);
    assert_eq!(
        upstream["stream_options"]["include_usage"], true,
        "the gateway asked the provider for usage"
    );
    assert_eq!(
        body,
        sse_events(upstream, false).concat(),
        "the client's bytes are the provider's, minus the usage chunk"
    );
    assert!(!body.contains("\"usage\""));
    assert!(body.ends_with("data: [DONE]\n\n"));

    let row = the_row(&stack, &request_id).await;
    let (prompt, completion, cached) = reported_usage(&upstream["messages"]);
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(
        (row["prompt_tokens"].clone(), row["completion_tokens"].clone()),
        (json!(prompt), json!(completion))
    );
    assert_eq!(row["cached_prompt_tokens"], cached);
    stack.stop().await;
}

#[actix_rt::test]
async fn a_client_that_asked_for_usage_gets_the_usage_chunk_exactly_as_the_provider_sent_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, request_id, body) = stream(&stack, &request(true)).await;
    assert_eq!(status, 200);
    let upstream = &stack.mock.received()[0].body;
    assert_eq!(
        body,
        sse_events(upstream, true).concat(),
        "byte for byte, the usage chunk's \\r\\n\\r\\n included"
    );
    let usage_chunk: Value =
        serde_json::from_str(&data_payloads(&body)[data_payloads(&body).len() - 2]).unwrap();
    assert_eq!(
        usage_chunk["choices"],
        json!([]),
        "OpenAI's wire format: the usage chunk has no choices"
    );
    assert!(usage_chunk["usage"]["total_tokens"].is_u64());
    assert_eq!(the_row(&stack, &request_id).await["usage_source"], "provider");
    stack.stop().await;
}

#[actix_rt::test]
async fn without_provider_usage_the_streamed_text_is_counted_exactly() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::NoUsage);
    let (status, request_id, body) = stream(&stack, &request(false)).await;
    assert_eq!(status, 200);
    let text = streamed_text(&body);
    assert_eq!(
        text,
        completion_text(&json!([{"role": "user", "content": PROMPT}])),
        "the client got every word"
    );

    let row = the_row(&stack, &request_id).await;
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["usage_source"], "counted");
    assert_eq!(
        row["completion_tokens"],
        tiktoken(&text),
        "exactly tiktoken's count of the concatenated text"
    );
    assert_eq!(row["prompt_tokens"], row["prompt_tokens_estimated"]);
    stack.stop().await;
}

#[actix_rt::test]
async fn two_choices_and_a_tool_call_are_counted_exactly_whatever_the_chunking() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::NoUsage);
    let mut body = request(false);
    body["n"] = json!(2);
    body["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (status, request_id, text) = stream(&stack, &body).await;
    assert_eq!(status, 200);
    let upstream = &stack.mock.received()[0].body;
    assert_eq!(
        text,
        sse_events(upstream, false).concat(),
        "passed through unchanged"
    );
    let streamed = streamed_text(&text);
    assert!(
        streamed.contains("HÉLLO") && streamed.contains("get_weather{\"city\": \"Zürich\""),
        "{streamed}"
    );

    let row = the_row(&stack, &request_id).await;
    assert_eq!(row["usage_source"], "counted");
    assert_eq!(
        row["completion_tokens"],
        tiktoken(&streamed),
        "both choices and the tool call, exactly"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_cuts_the_stream_is_reported_as_cut_and_billed_for_what_was_streamed() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::CutStream { events: 6 });
    let (status, request_id, body) = stream(&stack, &request(false)).await;
    assert_eq!(status, 200, "the head had already gone out");
    assert!(
        !body.contains("[DONE]"),
        "no fake success: the client's stream ends without [DONE]"
    );
    let text = streamed_text(&body);
    assert!(!text.is_empty());

    let row = the_row(&stack, &request_id).await;
    assert_eq!(row["outcome"], "upstream_cut");
    assert_eq!(row["usage_source"], "counted");
    assert_eq!(row["completion_tokens"], tiktoken(&text));
    stack.stop().await;
}

#[actix_rt::test]
async fn a_client_that_goes_away_mid_stream_is_billed_for_what_was_streamed_until_then() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::SlowStream { millis: 20 });
    let full = completion_text(&json!([{"role": "user", "content": PROMPT}]));

    let (mut response, request_id) = open_stream(&stack, &request(false)).await;
    let mut seen = Vec::new();
    // Read until a few words of the completion arrived, then hang up.
    while !String::from_utf8_lossy(&seen).contains("\"said: \"") {
        seen.extend_from_slice(&response.next().await.unwrap().unwrap());
    }
    drop(response);

    let row = the_row(&stack, &request_id).await;
    assert_eq!(row["outcome"], "client_cancelled");
    assert_eq!(row["usage_source"], "counted");
    let billed = row["completion_tokens"].as_u64().unwrap();
    assert!(
        billed > 0 && billed < tiktoken(&full) as u64,
        "billed {billed} of {} tokens",
        tiktoken(&full)
    );
    stack.stop().await;
}

//! The walking skeleton, end to end: metered requests travel client → gateway → provider, and their usage
//! travels gateway → Kafka → billing-consumer → ClickHouse, on the real broker and the real ClickHouse.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_meter_sidecar::count::chat_tokens;
use tollgate_meter_sidecar::encoding::Encoding;
use tollgate_tests::mock_provider::reported_usage;
use tollgate_tests::stack::{CONSUMERS, MODEL, PROVIDER_KEY, Stack, StackOptions, UPSTREAM_MODEL, http};

const REQUESTS: usize = 100;

struct Sent {
    consumer: &'static str,
    key_id: &'static str,
    messages: Value,
    status: u16,
    request_id: String,
    instance: String,
    body: Value,
}

async fn send_chat(gateway: &str, key: &str, messages: &Value) -> (u16, HashMap<String, String>, Value) {
    let mut response = http()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .send_json(&json!({"model": MODEL, "messages": messages}))
        .await
        .expect("the gateway answers");
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = response
        .json::<Value>()
        .limit(16 << 20)
        .await
        .expect("a JSON body");
    (response.status().as_u16(), headers, body)
}

#[actix_rt::test]
async fn a_hundred_requests_from_three_consumers_land_in_clickhouse_exactly_once_with_the_providers_numbers()
{
    let stack = Stack::start(StackOptions::default()).await;

    // 100 requests, round-robin over three consumers, 10 in flight at a time, each with its own prompt.
    let mut sent = Vec::with_capacity(REQUESTS);
    for wave in 0..REQUESTS / 10 {
        let requests = (0..10).map(|i| {
            let n = wave * 10 + i;
            let (consumer, key_id, key) = CONSUMERS[n % CONSUMERS.len()];
            let messages = json!([
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": format!("Request number {n} from {consumer}: {}", "tokens ".repeat(n))}
            ]);
            let gateway = stack.gateway_url.clone();
            async move {
                let (status, headers, body) = send_chat(&gateway, key, &messages).await;
                Sent {
                    consumer,
                    key_id,
                    messages,
                    status,
                    request_id: headers.get("x-request-id").cloned().unwrap_or_default(),
                    instance: headers.get("x-tollgate-instance").cloned().unwrap_or_default(),
                    body,
                }
            }
        });
        sent.extend(join_all(requests).await);
    }

    // Every client got the provider's answer, unchanged, and knows which instance served it.
    for s in &sent {
        assert_eq!(s.status, 200, "{:?}", s.body);
        assert_eq!(s.instance, "mock-openai");
        assert_eq!(
            s.body["model"], UPSTREAM_MODEL,
            "the instance's model name went upstream"
        );
        let (prompt, completion, _) = reported_usage(&s.messages);
        assert_eq!(s.body["usage"]["prompt_tokens"], prompt);
        assert_eq!(s.body["usage"]["completion_tokens"], completion);
    }

    // The provider saw the instance's key on every request, never a consumer's.
    let received = stack.mock.received();
    assert_eq!(received.len(), REQUESTS);
    for r in &received {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        let headers = format!("{:?}", r.headers);
        for (_, _, key) in CONSUMERS {
            assert!(
                !headers.contains(key) && !r.body.to_string().contains(key),
                "a consumer key leaked upstream"
            );
        }
    }

    // ClickHouse holds exactly one row per request, with the provider's numbers.
    let rows = stack.wait_for_usage_rows(REQUESTS, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), REQUESTS, "rows in ClickHouse");
    let by_request: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["request_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_request.len(), REQUESTS, "one row per request id");
    for s in &sent {
        let row = by_request
            .get(s.request_id.as_str())
            .unwrap_or_else(|| panic!("no row for {}", s.request_id));
        let (prompt, completion, cached) = reported_usage(&s.messages);
        assert_eq!(row["event_id"], s.request_id, "the event id is the request id");
        assert_eq!(row["consumer_id"], s.consumer);
        assert_eq!(row["key_id"], s.key_id);
        assert_eq!(row["model_requested"], MODEL);
        assert_eq!(row["model_served"], UPSTREAM_MODEL);
        assert_eq!(row["instance"], "mock-openai");
        assert_eq!(row["provider"], "openai");
        assert_eq!(row["route"], MODEL);
        assert_eq!(row["endpoint"], "/v1/chat/completions");
        assert_eq!(row["outcome"], "ok");
        assert_eq!(row["http_status"], 200);
        assert_eq!(row["stream"], 0);
        assert_eq!(row["usage_source"], "provider");
        assert_eq!(row["prompt_tokens"], prompt);
        assert_eq!(row["completion_tokens"], completion);
        assert_eq!(row["total_tokens"], prompt + completion);
        assert_eq!(row["cached_prompt_tokens"], cached);
        assert_eq!(row["attempt_count"], 1);
        assert_eq!(row["source"], "tollgate-gateway/test-gw");
        // The estimate came from meter-sidecar and equals tiktoken's count with OpenAI's chat overhead.
        assert_eq!(row["prompt_estimate_source"], "meter");
        let messages = s.messages.as_array().unwrap();
        let expected = chat_tokens(Encoding::for_model(MODEL, Encoding::O200kBase), messages);
        assert_eq!(row["prompt_tokens_estimated"], expected);
        assert!(row["finished_at_ms"].as_u64().unwrap() >= row["started_at_ms"].as_u64().unwrap());
    }

    // billing-consumer's report agrees with the rows, per consumer.
    for (consumer, _, _) in CONSUMERS {
        let report = tollgate_billing_consumer::reports::usage::usage(&stack.clickhouse, consumer, None)
            .await
            .unwrap();
        let mine: Vec<&Sent> = sent.iter().filter(|s| s.consumer == consumer).collect();
        let tokens: u64 = mine
            .iter()
            .map(|s| u64::from(reported_usage(&s.messages).0 + reported_usage(&s.messages).1))
            .sum();
        assert_eq!(report.total.requests, mine.len() as u64, "{consumer}");
        assert_eq!(report.total.total_tokens, tokens, "{consumer}");
        // Per served model: the instance sends UPSTREAM_MODEL upstream, which answers with that name.
        assert_eq!(report.models.len(), 1);
        assert_eq!(report.models[0].model, UPSTREAM_MODEL);
    }

    stack.stop().await;
}

#[actix_rt::test]
async fn a_known_chat_prompt_is_estimated_as_openai_counts_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello! <|endoftext|> is plain text here."}
    ]);
    let (status, headers, _) = send_chat(&stack.gateway_url, CONSUMERS[0].2, &messages).await;
    assert_eq!(status, 200);
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], headers["x-request-id"]);

    // Counted here with tiktoken itself, independently of meter-sidecar: OpenAI's chat format costs 3 tokens
    // per message plus its encoded role and content, and 3 to prime the reply; special-token strings in content
    // are ordinary text.
    let bpe = tiktoken_rs::o200k_base().unwrap();
    let count = |s: &str| bpe.encode_ordinary(s).len();
    let expected = 3
        + count("system")
        + count("You are a helpful assistant.")
        + 3
        + count("user")
        + count("Hello! <|endoftext|> is plain text here.")
        + 3;
    assert_eq!(rows[0]["prompt_tokens_estimated"], expected);
    assert_eq!(rows[0]["prompt_estimate_source"], "meter");
    stack.stop().await;
}

#[actix_rt::test]
async fn when_meter_sidecar_is_down_the_request_is_served_and_the_event_says_fallback() {
    let stack = Stack::start(StackOptions {
        meter: false,
        ..StackOptions::default()
    })
    .await;
    let messages = json!([{"role": "user", "content": "Is anyone counting?"}]);
    let (status, headers, body) = send_chat(&stack.gateway_url, CONSUMERS[1].2, &messages).await;
    assert_eq!(status, 200, "{body}");
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], headers["x-request-id"]);
    assert_eq!(rows[0]["prompt_estimate_source"], "fallback");
    assert_eq!(
        rows[0]["prompt_tokens_estimated"],
        tollgate_gateway::metering::sidecar::fallback_chat_estimate(&messages)
    );
    // Billing still uses the provider's numbers.
    assert_eq!(rows[0]["usage_source"], "provider");
    assert_eq!(rows[0]["prompt_tokens"], reported_usage(&messages).0);
    stack.stop().await;
}

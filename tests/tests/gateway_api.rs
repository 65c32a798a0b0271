//! The gateway's contract with clients and providers: every refusal is an OpenAI-shaped error, upstream answers
//! pass through unchanged, failover happens only where retrying is safe, and every request that reached an
//! upstream leaves exactly one usage event with its attempt trail.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::mock_provider::Behaviour;
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, http};

struct Reply {
    status: u16,
    request_id: Option<String>,
    instance: Option<String>,
    body: Value,
}

async fn post(stack: &Stack, auth: Option<&str>, body: &str) -> Reply {
    let mut request = http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .insert_header(("content-type", "application/json"));
    if let Some(auth) = auth {
        request = request.insert_header(("authorization", auth));
    }
    let mut response = request
        .send_body(body.to_owned())
        .await
        .expect("the gateway answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (request_id, instance) = (header("x-request-id"), header("x-tollgate-instance"));
    let bytes = response.body().limit(16 << 20).await.expect("a body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply {
        status: response.status().as_u16(),
        request_id,
        instance,
        body,
    }
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}).to_string()
}

fn bearer(n: usize) -> String {
    format!("Bearer {}", CONSUMERS[n].2)
}

fn assert_openai_error(reply: &Reply, status: u16, code: &str, param: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let error = &reply.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        reply.body
    );
    assert!(error["type"].is_string(), "{}", reply.body);
    assert_eq!(error["code"], code, "{}", reply.body);
    assert_eq!(
        error["param"],
        param.map_or(Value::Null, Value::from),
        "{}",
        reply.body
    );
}

#[actix_rt::test]
async fn bad_requests_get_openai_shaped_errors_and_never_reach_the_provider() {
    let stack = Stack::start(StackOptions::default()).await;

    assert_openai_error(
        &post(&stack, None, &chat(MODEL)).await,
        401,
        "missing_api_key",
        None,
    );
    assert_openai_error(
        &post(&stack, Some("Bearer sk-nobody"), &chat(MODEL)).await,
        401,
        "invalid_api_key",
        None,
    );
    assert_openai_error(
        &post(&stack, Some("Basic dXNlcjpwYXNz"), &chat(MODEL)).await,
        401,
        "missing_api_key",
        None,
    );
    let key = bearer(0);
    let key = Some(key.as_str());
    assert_openai_error(
        &post(&stack, key, "{\"model\": ").await,
        400,
        "invalid_json",
        None,
    );
    assert_openai_error(&post(&stack, key, "[]").await, 400, "invalid_json", None);
    // A repeated field the gateway reads: the gateway would read one value and a provider maybe the other.
    let twice = post(
        &stack,
        key,
        r#"{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_openai_error(&twice, 400, "invalid_value", Some("model"));
    assert_eq!(twice.body["error"]["type"], "invalid_request_error");
    assert_openai_error(
        &post(&stack, key, r#"{"messages":[{"role":"user","content":"x"}]}"#).await,
        400,
        "missing_required_parameter",
        Some("model"),
    );
    assert_openai_error(
        &post(&stack, key, r#"{"model":"gpt-4o-mini"}"#).await,
        400,
        "missing_required_parameter",
        Some("messages"),
    );
    assert_openai_error(
        &post(&stack, key, &chat("gpt-9-ultra")).await,
        404,
        "model_not_found",
        Some("model"),
    );
    let huge =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(9 << 20)}]}).to_string();
    assert_openai_error(&post(&stack, key, &huge).await, 413, "payload_too_large", None);
    let unknown = http()
        .get(format!("{}/v1/nothing-here", stack.gateway_url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unknown, 404);

    assert!(
        stack.mock.received().is_empty(),
        "refused requests never reach a provider"
    );
    // ...and leave no usage event: only requests that reached an upstream are metered.
    let ok = post(&stack, key, &chat(MODEL)).await;
    assert_eq!(ok.status, 200);
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let rows_after = stack.query("SELECT request_id FROM usage_events FINAL").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows_after.len(), 1);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_upstream_is_a_502_and_is_still_metered() {
    let options = StackOptions {
        extra_toml: "[[instances]]\nname = \"down\"\nendpoint = \"{closed}\"\nconnect_timeout = \"500ms\"\n\n\
                     [[routes]]\nname = \"down\"\nmodels = [\"down-model\"]\ntargets = [{ instance = \"down\" }]\n"
            .into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await;
    let reply = post(&stack, Some(&bearer(2)), &chat("down-model")).await;
    assert_openai_error(&reply, 502, "upstream_unreachable", None);

    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        Some(row["request_id"].as_str().unwrap()),
        reply.request_id.as_deref()
    );
    assert_eq!(row["outcome"], "upstream_error");
    assert_eq!(row["http_status"], 502);
    assert_eq!(row["consumer_id"], "team-c");
    assert_eq!(
        row["total_tokens"], 0,
        "a request no provider served bills nothing"
    );
    let attempts: Value = serde_json::from_str(row["attempts"].as_str().unwrap()).unwrap();
    assert_eq!(attempts[0]["instance"], "down");
    assert_eq!(attempts[0]["error"], "connect");
    stack.stop().await;
}

#[actix_rt::test]
async fn a_failing_instance_fails_over_to_the_next_target_and_the_trail_shows_it() {
    let options = StackOptions {
        second_mock: true,
        default_targets: Some(
            r#"[{ instance = "mock-openai", priority = 10 }, { instance = "refused", priority = 5 }, { instance = "backup" }]"#
                .into(),
        ),
        extra_toml: "[[instances]]\nname = \"refused\"\nendpoint = \"{closed}\"\n\n\
                     [[instances]]\nname = \"backup\"\nendpoint = \"{mock2}\"\napi_key_env = \"PROVIDER_KEY\"\n"
            .into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });

    let reply = post(&stack, Some(&bearer(0)), &chat(MODEL)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.instance.as_deref(), Some("backup"));
    assert_eq!(stack.mock.received().len(), 1);
    assert_eq!(stack.mock2.as_ref().unwrap().received().len(), 1);

    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let row = &rows[0];
    assert_eq!(row["instance"], "backup");
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["attempt_count"], 3);
    let attempts: Value = serde_json::from_str(row["attempts"].as_str().unwrap()).unwrap();
    let trail: Vec<(String, Value, Value)> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["instance"].as_str().unwrap().to_owned(),
                a["status"].clone(),
                a["error"].clone(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("mock-openai".to_owned(), json!(503), json!("status")),
            ("refused".to_owned(), Value::Null, json!("connect")),
            ("backup".to_owned(), json!(200), Value::Null),
        ]
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn client_errors_from_the_provider_are_returned_as_they_are_and_not_retried() {
    let options = StackOptions {
        second_mock: true,
        default_targets: Some(
            r#"[{ instance = "mock-openai", priority = 1 }, { instance = "backup" }]"#.into(),
        ),
        extra_toml:
            "[[instances]]\nname = \"backup\"\nendpoint = \"{mock2}\"\napi_key_env = \"PROVIDER_KEY\"\n"
                .into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await;
    for status in [400, 401, 403, 404, 422] {
        stack.mock.set_behaviour(Behaviour::Status {
            status,
            retry_after: None,
        });
        let reply = post(&stack, Some(&bearer(1)), &chat(MODEL)).await;
        assert_eq!(reply.status, status);
        assert_eq!(
            reply.body["error"]["message"], "The mock is misbehaving on purpose.",
            "the body is the provider's"
        );
        assert_eq!(reply.instance.as_deref(), Some("mock-openai"));
    }
    assert!(
        stack.mock2.as_ref().unwrap().received().is_empty(),
        "no failover on client errors"
    );
    let rows = stack.wait_for_usage_rows(5, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "upstream_error" && r["attempt_count"] == 1)
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_whole_answer_without_usage_is_billed_its_prompt_estimate_and_the_exact_count_of_its_text() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::NoUsage);
    let reply = post(&stack, Some(&bearer(0)), &chat(MODEL)).await;
    assert_eq!(reply.status, 200);
    let text = reply.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let row = &rows[0];
    assert_eq!(row["usage_source"], "counted");
    assert_eq!(row["prompt_tokens"], row["prompt_tokens_estimated"]);
    assert_eq!(
        row["completion_tokens"],
        tiktoken_rs::o200k_base().unwrap().encode_ordinary(&text).len(),
        "exactly tiktoken's count of the answer's text, as for a stream"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_providers_final_429_reaches_the_client_with_its_retry_after_cut_to_the_configured_bound() {
    let stack = Stack::start(StackOptions::default()).await;
    // 2^63 seconds: this panicked the handler once (no answer, no event, no breaker).
    stack.mock.set_behaviour(Behaviour::Status {
        status: 429,
        retry_after: Some(1 << 63),
    });
    let mut response = http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .insert_header(("authorization", bearer(0)))
        .insert_header(("content-type", "application/json"))
        .send_body(chat(MODEL))
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3600"),
        "the provider's Retry-After, at most server.max_retry_after (1h)"
    );
    let _ = response.body().await;
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["outcome"], "upstream_error");
    assert_eq!(rows[0]["http_status"], 429);
    stack.stop().await;
}

#[actix_rt::test]
async fn garbage_from_the_provider_passes_through_unchanged() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.mock.set_behaviour(Behaviour::Garbage);
    let reply = post(&stack, Some(&bearer(0)), &chat(MODEL)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Value::String("<html>not json".into()));
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows[0]["usage_source"], "estimated");
    stack.stop().await;
}

#[actix_rt::test]
async fn the_model_list_shows_every_routed_model_to_an_authenticated_consumer() {
    let stack = Stack::start(StackOptions::default()).await;
    let url = format!("{}/v1/models", stack.gateway_url);
    let mut response = http().get(&url).bearer_auth(CONSUMERS[0].2).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    stack.stop().await;
}

#[actix_rt::test]
async fn a_key_limited_to_some_models_sees_and_uses_only_those_and_an_expired_key_is_refused() {
    let sha = |key: &str| hex::encode(tollgate_gateway::admission::auth::hash_key(key.as_bytes()));
    let options = StackOptions {
        extra_toml: format!(
            "[[routes]]\nname = \"other\"\nmodels = [\"other-model\"]\ntargets = [{{ instance = \"mock-openai\" }}]\n\n\
             [[consumers]]\nname = \"team-limited\"\nkeys = [\n\
               {{ id = \"limited-1\", sha256 = \"{}\", models = [\"other-model\"] }},\n\
               {{ id = \"expired-1\", sha256 = \"{}\", expires_at = \"2020-01-01T00:00:00Z\" }},\n]\n",
            sha("sk-limited"),
            sha("sk-expired"),
        ),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await;

    let mut listed = http()
        .get(format!("{}/v1/models", stack.gateway_url))
        .bearer_auth("sk-limited")
        .send()
        .await
        .unwrap();
    let list: Value = listed.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], "other-model");

    assert_eq!(
        post(&stack, Some("Bearer sk-limited"), &chat("other-model"))
            .await
            .status,
        200
    );
    assert_openai_error(
        &post(&stack, Some("Bearer sk-limited"), &chat(MODEL)).await,
        404,
        "model_not_found",
        Some("model"),
    );
    assert_openai_error(
        &post(&stack, Some("Bearer sk-expired"), &chat(MODEL)).await,
        401,
        "expired_api_key",
        None,
    );
    assert_eq!(
        stack.mock.received().len(),
        1,
        "only the permitted request reached the provider"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_consumer_over_its_request_rate_gets_a_429_with_retry_after_and_the_rejection_is_an_event() {
    let sha = hex::encode(tollgate_gateway::admission::auth::hash_key(b"sk-rated"));
    let options = StackOptions {
        extra_toml: format!(
            "[[consumers]]\nname = \"team-rated\"\nkeys = [{{ id = \"rated-1\", sha256 = \"{sha}\" }}]\n\
             limit_count = {{ count = 3, time_window = \"60s\", rejected_msg = \"Slow down, team.\" }}\n"
        ),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await;
    let send = || async {
        let mut response = http()
            .post(format!("{}/v1/chat/completions", stack.gateway_url))
            .bearer_auth("sk-rated")
            .send_body(chat(MODEL))
            .await
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (remaining, retry_after) = (header("x-ratelimit-remaining-requests"), header("retry-after"));
        assert_eq!(header("x-ratelimit-limit-requests").as_deref(), Some("3"));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (response.status().as_u16(), remaining, retry_after, body)
    };
    for expected_remaining in ["2", "1", "0"] {
        let (status, remaining, _, _) = send().await;
        assert_eq!((status, remaining.as_deref()), (200, Some(expected_remaining)));
    }
    let (status, remaining, retry_after, body) = send().await;
    assert_eq!(
        (status, remaining.as_deref(), retry_after.as_deref()),
        (429, Some("0"), Some("20"))
    );
    assert_eq!(body["error"]["message"], "Slow down, team.");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        stack.mock.received().len(),
        3,
        "the rejected request never reached the provider"
    );

    let rows = stack.wait_for_usage_rows(4, Duration::from_secs(30)).await;
    let rejected: Vec<&Value> = rows
        .iter()
        .filter(|r| r["outcome"] == "rejected_rate_limit")
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (
            rejected[0]["http_status"].clone(),
            rejected[0]["total_tokens"].clone()
        ),
        (json!(429), json!(0))
    );
    assert_eq!(rejected[0]["consumer_id"], "team-rated");
    assert_eq!(rejected[0]["instance"], "");

    // Consumers without a limit get no rate headers.
    let mut free = http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .bearer_auth(CONSUMERS[0].2)
        .send_body(chat(MODEL))
        .await
        .unwrap();
    assert_eq!(free.status(), 200);
    assert!(free.headers().get("x-ratelimit-limit-requests").is_none());
    let _ = free.body().await;
    stack.stop().await;
}

#[actix_rt::test]
async fn metrics_describe_requests_tokens_and_events() {
    let stack = Stack::start(StackOptions::default()).await;
    assert_eq!(post(&stack, Some(&bearer(0)), &chat(MODEL)).await.status, 200);
    stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let mut response = http()
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    for name in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_upstream_attempts_total",
        "tollgate_tokens_total",
        "tollgate_prompt_estimates_total",
        "tollgate_events_emitted_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(!text.contains(CONSUMERS[0].2), "no secret in metrics");
    stack.stop().await;
}

#[actix_rt::test]
async fn with_metering_off_requests_and_streams_pass_through_and_nothing_is_billed() {
    let stack = Stack::start(StackOptions {
        server_toml: "metering = false".into(),
        quota_loop: false,
        ..StackOptions::default()
    })
    .await;
    let whole = post(&stack, Some(&bearer(0)), &chat(MODEL)).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(whole.instance.as_deref(), Some("mock-openai"));
    let streamed = post(
        &stack,
        Some(&bearer(0)),
        &json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "ping"}]})
            .to_string(),
    )
    .await;
    assert_eq!(streamed.status, 200);
    let text = streamed.body.as_str().expect("an SSE body");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The client did not ask for usage and the gateway did not ask on its behalf: no usage chunk.
    assert!(!text.contains("\"usage\""), "{text}");
    assert_openai_error(
        &post(&stack, None, &chat(MODEL)).await,
        401,
        "missing_api_key",
        None,
    );

    // Nothing reaches the ledger.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stack
            .query("SELECT request_id FROM usage_events")
            .await
            .is_empty()
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn with_a_metrics_listener_of_its_own_the_api_listener_no_longer_shows_metrics() {
    let stack = Stack::start(StackOptions {
        server_toml: r#"metrics_listen = "127.0.0.1:0""#.to_owned(),
        ..StackOptions::default()
    })
    .await;
    let reply = post(&stack, Some(&bearer(0)), &chat(MODEL)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let metrics_url = stack.metrics_url.clone().expect("a metrics listener");
    let mut scraped = http().get(format!("{metrics_url}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let text = String::from_utf8(scraped.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("tollgate_requests_total"), "{text}");

    // On the API listener, /metrics is a path like any unknown one: an OpenAI-shaped 404.
    let mut hidden = http()
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
    let body: Value = hidden.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_url", "{body}");
    stack.stop().await;
}

/// `/readyz` says whether the Kafka paths work: ready while usage events go straight to Kafka and quota
/// snapshots are current.
#[actix_rt::test]
async fn readyz_reports_the_kafka_paths() {
    let stack = Stack::start(StackOptions {
        extra_toml: format!(
            "[[token_limits]]\nmodels = [\"{MODEL}\"]\nlimit = 1000000\ntime_window = \"1h\"\n"
        ),
        ..StackOptions::default()
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ready = loop {
        let mut reply = http()
            .get(format!("{}/readyz", stack.gateway_url))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = reply.json().await.unwrap();
        if reply.status() == 200 {
            break body;
        }
        assert_eq!(reply.status(), 503);
        assert_eq!(body["status"], "degraded");
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["usage_events"]["spool_bytes"], 0);
    assert_eq!(ready["checks"]["quota_snapshots"]["ok"], true);

    // Without the quota loop, snapshots age past quota.max_snapshot_age (3 s here): degraded, and it says why.
    let mut stack = stack;
    stack.stop_quota_loop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut reply = http()
            .get(format!("{}/readyz", stack.gateway_url))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = reply.json().await.unwrap();
        if reply.status() == 503 {
            assert_eq!(body["checks"]["quota_snapshots"]["ok"], false, "{body}");
            assert_eq!(body["checks"]["usage_events"]["ok"], true, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never degraded: {body}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stack.stop().await;
}

//! The sidecar's HTTP contract, driven in-process: what the gateway sends and what it gets back.

// Test helpers fail the test by panicking, like the assertions they serve.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::sync::OnceLock;

use actix_web::http::{StatusCode, header};
use actix_web::test::{self, TestRequest};
use actix_web::web;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_meter_sidecar::api::{AppState, CountResponse};
use tollgate_meter_sidecar::config::Config;
use tollgate_meter_sidecar::count::{chat_tokens, text_tokens};
use tollgate_meter_sidecar::encoding::Encoding;
use tollgate_meter_sidecar::{metrics, server};

/// The process-wide recorder, installed once for all tests in this binary.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics::install_recorder().expect("first install in this process");
            metrics::describe();
            handle
        })
        .clone()
}

fn config() -> Config {
    Config {
        default_encoding: Encoding::O200kBase,
        max_body_bytes: 8 << 20,
        workers: 1,
        cache_entries: 1_000,
        max_batch_items: 8,
    }
}

fn state_with(config: Config) -> web::Data<AppState> {
    web::Data::new(AppState::new(config, prometheus()))
}

/// Sends `request` to an in-process app with `config` and returns the status, headers and body as JSON.
async fn call_with(config: Config, request: TestRequest) -> (StatusCode, header::HeaderMap, Value) {
    call_state(state_with(config), request).await
}

/// Sends `request` to an in-process app sharing `state` (and so its cache) with other calls.
async fn call_state(
    state: web::Data<AppState>,
    request: TestRequest,
) -> (StatusCode, header::HeaderMap, Value) {
    let app = test::init_service(server::app(state)).await;
    let response = test::call_service(&app, request.to_request()).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = test::read_body(response).await;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

async fn call(request: TestRequest) -> (StatusCode, Value) {
    let (status, _, body) = call_with(config(), request).await;
    (status, body)
}

fn count(body: Value) -> TestRequest {
    TestRequest::post().uri("/v1/tokens/count").set_json(body)
}

fn count_response(body: Value) -> CountResponse {
    serde_json::from_value(body).expect("a count response")
}

/// Asserts the OpenAI error shape and returns the `error` object.
fn openai_error(body: &Value) -> &serde_json::Map<String, Value> {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.contains_key("param"), "{body}");
    assert!(error["code"].is_string(), "{body}");
    error
}

#[actix_web::test]
async fn a_text_is_counted_with_the_models_encoding() {
    let (status, body) = call(count(json!({"model": "gpt-4", "text": "hello world"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"tokens": 2, "encoding": "cl100k_base"}));
}

#[actix_web::test]
async fn chat_messages_are_counted_with_the_overhead_and_the_encoding_is_reported() {
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]);
    let (status, body) = call(count(json!({"model": "gpt-4o-mini", "messages": messages}))).await;
    assert_eq!(status, StatusCode::OK);
    let response = count_response(body);
    assert_eq!(response.encoding, Encoding::O200kBase);
    assert_eq!(response.tokens, 19);
}

#[actix_web::test]
async fn an_explicit_encoding_overrides_the_model_mapping() {
    let text = "Größenverhältnisse der Bevölkerungsentwicklung";
    let body = json!({"model": "gpt-4o", "text": text, "encoding": "r50k_base"});
    let (status, body) = call(count(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        count_response(body),
        CountResponse {
            tokens: text_tokens(Encoding::R50kBase, text),
            encoding: Encoding::R50kBase
        }
    );
}

#[actix_web::test]
async fn an_unknown_model_uses_the_configured_default() {
    let config = Config {
        default_encoding: Encoding::P50kBase,
        ..config()
    };
    let request = count(json!({"model": "llama-3.1-8b-instruct", "text": "hello world"}));
    let (status, _, body) = call_with(config, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["encoding"], "p50k_base");
}

#[actix_web::test]
async fn special_token_strings_are_billed_as_plain_text() {
    let (_, body) = call(count(json!({"model": "gpt-4o", "text": "<|endoftext|>"}))).await;
    assert!(count_response(body).tokens > 1);
}

#[actix_web::test]
async fn a_large_body_is_counted_off_the_worker_with_the_same_result() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(4_000);
    let messages = vec![json!({"role": "user", "content": text})];
    let (status, body) = call(count(json!({"model": "gpt-4.1", "messages": messages}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        count_response(body).tokens,
        chat_tokens(Encoding::O200kBase, &messages)
    );
}

#[actix_web::test]
async fn an_unknown_encoding_is_a_400_naming_the_encoding_field() {
    let (status, body) = call(count(
        json!({"model": "gpt-4o", "text": "hi", "encoding": "gpt2"}),
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = openai_error(&body);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "encoding");
    assert_eq!(error["code"], "unknown_encoding");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("o200k_base, cl100k_base"),
        "{body}"
    );
}

#[actix_web::test]
async fn malformed_json_is_a_400_in_the_openai_shape() {
    let request = TestRequest::post()
        .uri("/v1/tokens/count")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .set_payload(r#"{"model": "gpt-4o", "text": "#);
    let (status, body) = call(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = openai_error(&body);
    assert_eq!(error["code"], "invalid_json");
    assert!(
        error["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_missing_model_is_a_400_naming_model() {
    let (status, body) = call(count(json!({"text": "hi"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = openai_error(&body);
    assert_eq!(error["param"], "model");
    assert_eq!(error["code"], "missing_field");
}

#[actix_web::test]
async fn text_and_messages_together_or_neither_are_400s() {
    let (status, body) = call(count(json!({"model": "m", "text": "a", "messages": []}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(openai_error(&body)["code"], "text_and_messages");

    let (status, body) = call(count(json!({"model": "m"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(openai_error(&body)["code"], "no_input");
}

#[actix_web::test]
async fn a_malformed_message_is_a_400_naming_it() {
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}, "hello"]});
    let (status, body) = call(count(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(openai_error(&body)["param"], "messages[1]");
}

#[actix_web::test]
async fn a_body_over_the_limit_is_a_413_in_the_openai_shape() {
    let small = Config {
        max_body_bytes: 64,
        ..config()
    };
    let text = "x".repeat(100);
    let (status, _, body) = call_with(small, count(json!({"model": "gpt-4o", "text": text}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = openai_error(&body);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "payload_too_large");
}

#[actix_web::test]
async fn a_body_exactly_at_the_limit_is_accepted() {
    let body = json!({"model": "gpt-4o", "text": "hello world"}).to_string();
    let exact = Config {
        max_body_bytes: body.len(),
        ..config()
    };
    let request = TestRequest::post().uri("/v1/tokens/count").set_payload(body);
    let (status, _, body) = call_with(exact, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn other_methods_and_paths_get_openai_shaped_errors() {
    let (status, headers, body) = call_with(config(), TestRequest::get().uri("/v1/tokens/count")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get(header::ALLOW).unwrap(), "POST");
    openai_error(&body);

    let (status, body) = call(TestRequest::get().uri("/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    openai_error(&body);
}

#[actix_web::test]
async fn healthz_says_ok() {
    let (status, body) = call(TestRequest::get().uri("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
}

#[actix_web::test]
async fn metrics_show_requests_tokens_and_errors() {
    call(count(json!({"model": "gpt-3.5-turbo", "text": "hello world"}))).await;
    call(count(json!({"text": "no model"}))).await;

    let (status, _, body) = call_with(config(), TestRequest::get().uri("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("Prometheus text");
    assert!(
        text.contains(r#"meter_requests_total{endpoint="count",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meter_requests_total{endpoint="count",status="400"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meter_tokens_counted_total{encoding="cl100k_base",kind="text"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meter_errors_total{kind="missing_field"}"#),
        "{text}"
    );
    assert!(text.contains("meter_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("# HELP meter_requests_total"), "{text}");
}

/// Sends one raw HTTP/1.1 request and returns the whole response as text.
async fn raw_http(addr: std::net::SocketAddr, request: String) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[actix_web::test]
async fn the_built_server_serves_on_a_real_socket_and_stops_gracefully() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = server::build(config(), listener, prometheus()).unwrap();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);

    let health = raw_http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: meter\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#), "{health}");

    let body = json!({"model": "gpt-4o", "text": "hello world"}).to_string();
    let request = format!(
        "POST /v1/tokens/count HTTP/1.1\r\nHost: meter\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let counted = raw_http(addr, request).await;
    assert!(counted.starts_with("HTTP/1.1 200"), "{counted}");
    assert!(
        counted.ends_with(r#"{"tokens":2,"encoding":"o200k_base"}"#),
        "{counted}"
    );

    handle.stop(true).await;
    running.await.unwrap().unwrap();
}

// ---- POST /v1/tokens/count/batch ----

fn batch(body: Value) -> TestRequest {
    TestRequest::post().uri("/v1/tokens/count/batch").set_json(body)
}

/// The `results` array of a successful batch response.
fn results(status: StatusCode, body: &Value) -> &Vec<Value> {
    assert_eq!(status, StatusCode::OK, "{body}");
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {body}"))
}

#[actix_web::test]
async fn a_batch_counts_each_item_as_the_single_endpoint_does_in_order() {
    let chat = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]);
    let items = vec![
        json!({"model": "gpt-4", "text": "hello world"}),
        json!({"model": "gpt-4o-mini", "messages": chat}),
        json!({"model": "gpt-4o", "text": "Größenverhältnisse", "encoding": "r50k_base"}),
        json!({"model": "llama-3.1-8b-instruct", "text": "hello world", "stream": true}),
    ];
    let (status, _, body) = call_with(config(), batch(json!({"items": items}))).await;
    let batch_results = results(status, &body).clone();
    assert_eq!(batch_results.len(), items.len());
    assert_eq!(batch_results[0], json!({"tokens": 2, "encoding": "cl100k_base"}));
    assert_eq!(batch_results[1], json!({"tokens": 19, "encoding": "o200k_base"}));
    for (item, result) in items.into_iter().zip(batch_results) {
        let (status, single) = call(count(item)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(result, single);
    }
}

#[actix_web::test]
async fn a_bad_item_gets_its_own_error_and_the_others_are_still_counted() {
    let items = json!([
        {"model": "gpt-4", "text": "hello world"},
        {"text": "no model"},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}, "hello"]},
        "not an object",
        {"model": "gpt-4o", "text": "hi", "encoding": "gpt2"},
        {"model": "m", "text": "a", "messages": []},
        {"model": "gpt-3.5-turbo", "text": "hello world"},
    ]);
    let (status, _, body) = call_with(config(), batch(json!({"items": items}))).await;
    let results = results(status, &body);
    assert_eq!(results.len(), 7, "{body}");
    assert_eq!(results[0], json!({"tokens": 2, "encoding": "cl100k_base"}));
    assert_eq!(results[6], json!({"tokens": 2, "encoding": "cl100k_base"}));

    // Each failed item carries exactly the error object the single endpoint answers for it.
    for index in 1..=5 {
        let error = openai_error(&results[index]);
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        let (status, single) = call(count(items[index].clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(results[index], single, "item {index}");
    }
    let codes: Vec<_> = (1..=5).map(|i| results[i]["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        [
            "missing_field",
            "invalid_field",
            "not_an_object",
            "unknown_encoding",
            "text_and_messages"
        ]
    );
    assert_eq!(results[1]["error"]["param"], "model");
    assert_eq!(results[2]["error"]["param"], "messages[1]");
    assert_eq!(results[3]["error"]["param"], Value::Null);
    assert_eq!(results[4]["error"]["param"], "encoding");
}

#[actix_web::test]
async fn an_empty_batch_has_no_results() {
    let (status, _, body) = call_with(config(), batch(json!({"items": []}))).await;
    assert!(results(status, &body).is_empty());
}

#[actix_web::test]
async fn a_malformed_envelope_is_a_400_in_the_openai_shape() {
    let not_json = TestRequest::post()
        .uri("/v1/tokens/count/batch")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .set_payload(r#"{"items": ["#);
    let empty = TestRequest::post().uri("/v1/tokens/count/batch").set_payload("");
    let cases = [
        (not_json, "invalid_json", Value::Null),
        (empty, "empty_body", Value::Null),
        (
            batch(json!([{"model": "m", "text": "a"}])),
            "not_an_object",
            Value::Null,
        ),
        (
            batch(json!({"model": "m", "text": "a"})),
            "missing_field",
            json!("items"),
        ),
        (batch(json!({"items": null})), "missing_field", json!("items")),
        (
            batch(json!({"items": {"model": "m"}})),
            "invalid_field",
            json!("items"),
        ),
    ];
    for (request, code, param) in cases {
        let (status, _, body) = call_with(config(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{code}: {body}");
        let error = openai_error(&body);
        assert_eq!(error["code"], code, "{body}");
        assert_eq!(error["param"], param, "{body}");
    }
}

#[actix_web::test]
async fn more_items_than_the_limit_is_a_400_and_exactly_the_limit_is_counted() {
    let item = json!({"model": "gpt-4o", "text": "hello world"});
    let limit = config().max_batch_items;

    let (status, _, body) = call_with(config(), batch(json!({"items": vec![item.clone(); limit]}))).await;
    assert_eq!(results(status, &body).len(), limit);

    let (status, _, body) = call_with(config(), batch(json!({"items": vec![item; limit + 1]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = openai_error(&body);
    assert_eq!(error["code"], "too_many_items");
    assert_eq!(error["param"], "items");
    assert_eq!(
        error["message"],
        format!(
            "`items` has {} entries; at most {limit} are accepted in one batch",
            limit + 1
        )
    );
}

#[actix_web::test]
async fn a_large_batch_is_counted_off_the_worker_with_the_same_results() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(400);
    let items: Vec<Value> = (0..4)
        .map(|i| json!({"model": "gpt-4o", "text": format!("{i} {text}")}))
        .collect();
    let (status, _, body) = call_with(config(), batch(json!({"items": items}))).await;
    for (i, result) in results(status, &body).iter().enumerate() {
        let expected = text_tokens(Encoding::O200kBase, &format!("{i} {text}"));
        assert_eq!(result["tokens"], expected, "{result}");
    }
}

#[actix_web::test]
async fn the_batch_endpoint_takes_only_post_and_is_over_the_body_limit_413() {
    let (status, headers, body) = call_with(config(), TestRequest::get().uri("/v1/tokens/count/batch")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get(header::ALLOW).unwrap(), "POST");
    openai_error(&body);

    let small = Config {
        max_body_bytes: 64,
        ..config()
    };
    let items = json!({"items": [{"model": "gpt-4o", "text": "x".repeat(100)}]});
    let (status, _, body) = call_with(small, batch(items)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(openai_error(&body)["code"], "payload_too_large");
}

// ---- The count cache ----

#[actix_web::test]
async fn counts_are_the_same_with_and_without_the_cache_and_a_repeat_hits_it() {
    let system =
        "You are Tollgate's support assistant. Answer briefly, cite the docs, never guess. ".repeat(8);
    let requests = [
        json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "How do I rotate a key?"}]}),
        json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "What does a 429 mean?"}]}),
        json!({"model": "gpt-4", "text": system}),
        json!({"model": "gpt-4", "text": system}),
    ];
    let cached = state_with(config());
    let uncached = state_with(Config {
        cache_entries: 0,
        ..config()
    });
    assert!(cached.cache.is_enabled() && !uncached.cache.is_enabled());

    for request in &requests {
        let (_, _, with_cache) = call_state(cached.clone(), count(request.clone())).await;
        let (_, _, without_cache) = call_state(uncached.clone(), count(request.clone())).await;
        assert_eq!(with_cache, without_cache, "{request}");
        assert!(with_cache["tokens"].as_u64().unwrap() > 100, "{with_cache}");
    }
    let (_, _, batch_cached) = call_state(cached.clone(), batch(json!({"items": requests}))).await;
    let (_, _, batch_uncached) = call_state(uncached.clone(), batch(json!({"items": requests}))).await;
    assert_eq!(batch_cached, batch_uncached);

    // The system prompt is tokenized once per encoding: the second chat request hits although its user
    // message differs, the repeated text hits, and the whole batch is hits.
    let stats = cached.cache.stats();
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert_eq!(stats.hits, 2 + 4, "{stats:?}");
    assert_eq!(uncached.cache.stats(), Default::default());

    let (_, _, metrics_text) = call_state(cached, TestRequest::get().uri("/metrics")).await;
    let metrics_text = metrics_text.as_str().unwrap();
    assert!(
        metrics_text.contains("# HELP meter_cache_hits_total"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("# HELP meter_cache_misses_total"),
        "{metrics_text}"
    );
    let hits = metric_value(metrics_text, "meter_cache_hits_total");
    assert!(hits >= 6.0, "{metrics_text}");
}

/// The value of an unlabelled series in Prometheus text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

// ---- The binary's flags ----

/// Runs the binary with `args` and returns its exit status and stderr; for flags it refuses before serving.
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meter-sidecar"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_refuses_a_cache_or_batch_setting_out_of_range() {
    let (status, stderr) = run_binary(&["--cache-entries", "10000001"], &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("cache_entries: must be at most 10000000"),
        "{stderr}"
    );

    let (status, stderr) = run_binary(
        &[],
        &[
            ("METER_CACHE_ENTRIES", "20000000"),
            ("METER_MAX_BATCH_ITEMS", "0"),
        ],
    );
    assert!(!status.success());
    assert!(stderr.contains("cache_entries"), "{stderr}");
    assert!(stderr.contains("max_batch_items: must be at least 1"), "{stderr}");

    let (status, stderr) = run_binary(&["--cache-entries", "lots"], &[]);
    assert!(!status.success());
    assert!(stderr.contains("--cache-entries"), "{stderr}");
}

// ---- Tool definitions and images ----

/// The cookbook's example (*How to count tokens with tiktoken*, `num_tokens_for_tools`): OpenAI reports 101
/// prompt tokens for it with gpt-4o / gpt-4o-mini and 105 with gpt-4 / gpt-3.5-turbo.
fn cookbook_request(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"},
        ],
        "tools": [{
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                        "unit": {"type": "string", "description": "The unit of temperature to return",
                                 "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["location"],
                },
            },
        }],
        "tool_choice": "auto",
        "temperature": 0,
    })
}

/// A 1024×1024 PNG header as a base64 data URL (the pixels are not needed; the header ends after IHDR).
const PNG_1024: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABAAAAAQACAYAAAAAAAAA";

#[actix_web::test]
async fn tools_are_counted_by_openais_rule_in_both_endpoints() {
    let (status, body) = call(count(cookbook_request("gpt-4o"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"tokens": 101, "encoding": "o200k_base"}));
    let (status, body) = call(count(cookbook_request("gpt-4"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"tokens": 105, "encoding": "cl100k_base"}));

    // The same function as a legacy `functions` entry counts the same.
    let mut legacy = cookbook_request("gpt-4o-mini");
    let function = legacy["tools"][0]["function"].take();
    legacy["functions"] = json!([function]);
    legacy.as_object_mut().unwrap().remove("tools");
    let (_, body) = call(count(legacy.clone())).await;
    assert_eq!(body["tokens"], 101);

    let mut without_tools = cookbook_request("gpt-4o");
    without_tools.as_object_mut().unwrap().remove("tools");
    let messages_only = chat_tokens(Encoding::O200kBase, without_tools["messages"].as_array().unwrap());
    let items = vec![
        cookbook_request("gpt-4o"),
        legacy,
        cookbook_request("gpt-3.5-turbo"),
        without_tools,
    ];
    let (status, _, body) = call_with(config(), batch(json!({"items": items}))).await;
    let tokens: Vec<&Value> = results(status, &body)
        .iter()
        .map(|result| &result["tokens"])
        .collect();
    assert_eq!(
        tokens,
        [&json!(101), &json!(101), &json!(105), &json!(messages_only)]
    );
}

#[actix_web::test]
async fn anthropic_tools_count_their_json_and_malformed_tools_are_400s() {
    let tool = json!({"name": "get_weather", "description": "Get the weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let messages = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let (status, body) = call(count(
        json!({"model": "claude-sonnet-4", "messages": messages, "tools": [tool]}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = Encoding::O200kBase;
    let messages_only = chat_tokens(e, messages.as_array().unwrap());
    // 10 per tool beside its compact JSON, 346 for the tool-use system prompt.
    let expected = messages_only + 10 + text_tokens(e, &tool.to_string()) + 346;
    assert_eq!(count_response(body).tokens, expected);

    let (status, body) = call(count(json!({"model": "m", "messages": [], "tools": {"a": 1}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(openai_error(&body)["param"], "tools");
    let items = json!({"items": [
        {"model": "m", "messages": [], "functions": [1]},
        {"model": "m", "text": "tools are ignored beside a text", "tools": 5},
    ]});
    let (status, _, body) = call_with(config(), batch(items)).await;
    let batch_results = results(status, &body);
    assert_eq!(openai_error(&batch_results[0])["param"], "functions[0]");
    assert_eq!(
        batch_results[1]["tokens"],
        json!(text_tokens(e, "tools are ignored beside a text"))
    );
}

#[actix_web::test]
async fn images_are_priced_by_size_not_by_their_base64_in_both_endpoints() {
    let e = Encoding::O200kBase;
    let with = |part: Value| json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]});
    let overhead = 3 + text_tokens(e, "user") + 3;
    // A large data URL: priced by its header (1024×1024 → 765), not by its text.
    let big_png = format!("{PNG_1024}{}", "A".repeat(200_000));
    let cases = [
        (
            with(json!({"type": "image_url", "image_url": {"url": big_png, "detail": "high"}})),
            765,
        ),
        (
            with(json!({"type": "image_url", "image_url": {"url": PNG_1024, "detail": "low"}})),
            85,
        ),
        (
            with(json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}})),
            1445,
        ),
        (
            with(
                json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "width": 2048, "height": 4096}}),
            ),
            1105,
        ),
        (
            with(
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                "data": PNG_1024.trim_start_matches("data:image/png;base64,")}}),
            ),
            765,
        ),
    ];
    for (request, image) in &cases {
        let (status, body) = call(count(request.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(count_response(body).tokens, overhead + image, "{request}");
    }
    let items: Vec<Value> = cases.iter().map(|(request, _)| request.clone()).collect();
    let (status, _, body) = call_with(config(), batch(json!({"items": items}))).await;
    let tokens: Vec<Value> = results(status, &body)
        .iter()
        .map(|result| result["tokens"].clone())
        .collect();
    let expected: Vec<Value> = cases.iter().map(|(_, image)| json!(overhead + image)).collect();
    assert_eq!(tokens, expected);
}

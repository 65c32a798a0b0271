//! The gateway's edge on the real stack, one behaviour per test: what a client may make the gateway hold and
//! for how long (the in-flight budget, the body-read deadline, the shape check before a parse, the cut of an
//! answer over `server.max_response_bytes`, which is still billed), and what of a provider's error body a client
//! may see (never the operator's key).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::mock_provider::Behaviour;
use tollgate_tests::stack::{CONSUMERS, MODEL, PROVIDER_KEY, Reply, Stack, StackOptions, sample};

fn bearer() -> String {
    format!("Bearer {}", CONSUMERS[0].2)
}

fn chat(content: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}]})
}

async fn post(stack: &Stack, body: &Value) -> Reply {
    stack
        .post_json("/v1/chat/completions", &[("authorization", &bearer())], body)
        .await
}

/// The OpenAI error body's `code`, checking its shape on the way.
fn code(reply: &Reply) -> String {
    let body = reply.json();
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not OpenAI-shaped: {}", reply.text()));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        reply.text()
    );
    assert!(error["type"].is_string(), "{}", reply.text());
    error["code"].as_str().unwrap_or_default().to_owned()
}

/// Sends `head` then `body` on a raw connection and reads the answer until the server closes or `wait` passes.
fn raw(addr: &str, head: &str, body: &[u8], wait: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if complete(&answer) {
            break;
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// Whether `answer` holds a whole response (head and `Content-Length` bytes of body).
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

#[actix_rt::test]
async fn a_provider_401_quoting_the_operators_key_reaches_the_client_scrubbed_in_the_same_shape() {
    let stack = Stack::start(StackOptions {
        quota_loop: false,
        ..StackOptions::default()
    })
    .await;
    stack.mock.set_behaviour(Behaviour::EchoKey);
    let reply = post(&stack, &chat("hello")).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(code(&reply), "invalid_api_key", "the provider's code, kept");
    let text = reply.text();
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("Incorrect API key provided: [REDACTED]"),
        "{message}"
    );
    assert!(
        message.contains("https://platform.openai.com/account/api-keys"),
        "{message}"
    );
    assert!(!text.contains(PROVIDER_KEY), "the key, whole: {text}");
    let head = &PROVIDER_KEY[..5];
    assert!(!text.contains(&format!("{head}*")), "the masked key: {text}");
    assert!(!text.contains("secret"), "a fragment of the key: {text}");
    // Before the scrub the provider's body went through verbatim: the mock did quote the key.
    assert_eq!(stack.mock.received()[0].status, 401);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_answer_over_max_response_bytes_is_cut_answered_502_not_retried_elsewhere_and_billed_from_what_was_read()
 {
    let stack = Stack::start(StackOptions {
        quota_loop: false,
        second_mock: true,
        default_targets: Some(
            r#"[{ instance = "mock-openai", priority = 10 }, { instance = "backup" }]"#.into(),
        ),
        extra_toml:
            "[[instances]]\nname = \"backup\"\nendpoint = \"{mock2}\"\napi_key_env = \"PROVIDER_KEY\"\n"
                .into(),
        server_toml: "max_response_bytes = 65536".into(),
        ..StackOptions::default()
    })
    .await;
    // About 200 KiB of completion text in one whole answer.
    stack.mock.set_behaviour(Behaviour::LongStream { events: 200 });
    let reply = post(&stack, &chat("write a lot")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(code(&reply), "upstream_answer_too_large");
    assert!(
        stack.mock2.as_ref().unwrap().received().is_empty(),
        "the instance did the work: another is not asked to do it again"
    );
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["request_id"], reply.request_id);
    assert_eq!(row["outcome"], "upstream_error");
    assert_eq!(row["http_status"], 502);
    assert_eq!(row["usage_source"], "estimated");
    let completion = row["completion_tokens"].as_u64().unwrap();
    assert!(
        completion >= 65536 / 4 - 1024,
        "billed from what was read: {completion}"
    );
    assert!(row["prompt_tokens"].as_u64().unwrap() > 0, "{row}");
    // An answer within the bound is served as before.
    stack.mock.set_behaviour(Behaviour::Normal);
    let reply = post(&stack, &chat("hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    stack.stop().await;
}

#[actix_rt::test]
async fn bodies_that_trickle_nest_too_deep_or_crowd_too_many_values_are_refused_before_they_are_parsed() {
    let stack = Stack::start(StackOptions {
        quota_loop: false,
        server_toml: "body_read_timeout = \"1s\"\nmax_json_values = 5000\nmax_json_depth = 32".into(),
        ..StackOptions::default()
    })
    .await;
    let addr = stack.gateway_url.trim_start_matches("http://").to_owned();
    // A Content-Length that promises more than is sent: 408 at the deadline, not a connection held for ever.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        bearer()
    );
    let (answer, took) = actix_web::rt::task::spawn_blocking(move || {
        raw(
            &addr,
            &head,
            br#"{"model":"gpt-4o-mini","#,
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let deep = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"metadata":{}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let reply = send_raw_body(&stack, deep.into_bytes()).await;
    assert_eq!(reply.0, 413, "{}", reply.1);
    assert!(
        reply.1.contains("json_too_complex") && reply.1.contains("32 levels"),
        "{}",
        reply.1
    );

    let crowded = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"metadata":[{}0]}}"#,
        "0,".repeat(6000)
    );
    let reply = send_raw_body(&stack, crowded.into_bytes()).await;
    assert_eq!(reply.0, 413, "{}", reply.1);
    assert!(reply.1.contains("5000 JSON values"), "{}", reply.1);
    assert!(
        stack.mock.received().is_empty(),
        "nothing refused reached the provider"
    );

    let reply = post(&stack, &chat("still serving")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    stack.stop().await;
}

/// POSTs raw bytes to the chat endpoint: (status, body).
async fn send_raw_body(stack: &Stack, body: Vec<u8>) -> (u16, String) {
    let mut response = tollgate_tests::stack::http()
        .post(format!("{}/v1/chat/completions", stack.gateway_url))
        .insert_header(("authorization", bearer()))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .expect("the gateway answers");
    let bytes = response.body().limit(1 << 20).await.unwrap_or_default();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[actix_rt::test]
async fn past_the_inflight_budget_requests_are_refused_503_with_retry_after_and_served_again_once_it_frees() {
    let stack = Stack::start(StackOptions {
        quota_loop: false,
        server_toml: "max_inflight_requests = 2\nmax_request_bytes = 262144\nmax_inflight_bytes = 262144"
            .into(),
        ..StackOptions::default()
    })
    .await;
    stack.mock.set_behaviour(Behaviour::Delay { millis: 1500 });
    let slow_body = chat("slow");
    let slow = || post(&stack, &slow_body);
    let (a, b, c) = futures_util::join!(slow(), slow(), async {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        post(&stack, &chat("one too many")).await
    });
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.text(), b.text());
    assert_eq!(c.status, 503, "{}", c.text());
    assert_eq!(code(&c), "gateway_overloaded");
    assert_eq!(c.headers.get("retry-after").map(String::as_str), Some("1"));

    // Bytes: 3,000 values cost 288,000 bytes to parse, more than the whole budget.
    stack.mock.set_behaviour(Behaviour::Normal);
    let crowded =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "metadata": vec![0; 3000]});
    let reply = post(&stack, &crowded).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(code(&reply), "gateway_overloaded");

    // Everything given back: served again.
    let reply = post(&stack, &chat("after")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = stack.metrics.render();
    assert!(sample(&text, "tollgate_inflight_refusals_total{reason=\"requests\"}").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "tollgate_inflight_refusals_total{reason=\"bytes\"}").unwrap_or(0.0) >= 1.0);
    // The refused requests were never forwarded, and never billed.
    assert_eq!(stack.mock.received().len(), 3);
    let rows = stack.wait_for_usage_rows(3, Duration::from_secs(30)).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let rows_later = stack.wait_for_usage_rows(3, Duration::from_secs(1)).await;
    assert_eq!((rows.len(), rows_later.len()), (3, 3));
    stack.stop().await;
}

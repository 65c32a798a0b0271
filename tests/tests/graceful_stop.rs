//! A graceful stop settles every request in flight (issue 14): SIGTERM while 20 long streams are running.
//!
//! - Within `server.drain_timeout`, the gateway stops accepting connections, lets the streams finish, settles
//!   each with its one usage event and exits: every client gets its whole stream, every row lands.
//! - Streams longer than the drain bound do not hold the process: it exits within the bound (plus
//!   `server.shutdown_timeout` for open connections and the event flush), and the streams still running are
//!   settled with what was known when they were dropped — still one row each.
//!
//! The gateway is the real binary (`SIGTERM` reaches its own signal handler); the broker, ClickHouse and the ingest
//! loop are the shared stack's.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_tests::mock_provider::Behaviour;
use tollgate_tests::procs::{ChildConfig, ChildGateway, scratch_dir};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, eventually, http, request_id};

const STREAMS: usize = 20;

/// A prompt whose answer is about 70 stream events long, which the mock sends in about 500 odd-sized pieces.
fn long_prompt(n: usize) -> Value {
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    json!({
        "model": MODEL,
        "stream": true,
        "messages": [{"role": "user", "content": format!("stream {n}: {}", words.join(" "))}],
    })
}

/// One streamed request read to its end (or to where the gateway ended it): status, request id, body.
async fn stream(url: &str, n: usize) -> (u16, String, String) {
    let (_, _, key) = CONSUMERS[n % CONSUMERS.len()];
    let mut response = http()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .force_close()
        .timeout(Duration::from_secs(60))
        .send_json(&long_prompt(n))
        .await
        .expect("the gateway answers the stream's head");
    let id = request_id(response.headers());
    let body = response.body().limit(16 << 20).await.unwrap_or_default();
    (
        response.status().as_u16(),
        id,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Starts the gateway binary with `server` lines, runs 20 streams, sends SIGTERM once the provider is working on
/// all of them, and returns the streams' results and how long the process took to exit after the signal.
async fn sigterm_during_streams(
    stack: &Stack,
    server: &str,
    name: &str,
) -> (Vec<(u16, String, String)>, Duration, ChildGateway) {
    let scratch = scratch_dir(name);
    let spool_dir = scratch.join("spool");
    let mock = stack.mock.endpoint();
    let config = ChildConfig {
        brokers: &stack.infra.brokers,
        topic: &stack.topic,
        mock: &mock,
        spool_dir: &spool_dir,
        spool: "",
        server,
    };
    let mut gateway = ChildGateway::start(&config, &scratch, name).await;
    let url = gateway.url.clone();
    let clients = actix_web::rt::spawn(async move { join_all((0..STREAMS).map(|n| stream(&url, n))).await });
    eventually(
        "every stream to reach the provider",
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || stack.mock.received().len() >= STREAMS,
    )
    .await;
    // Every stream has started; let each carry a few events before the signal.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = loop {
        if let Ok(Some(_)) = gateway.child.try_wait() {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "the gateway did not exit:\n{}",
            gateway.log_text()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    let results = clients.await.unwrap();
    (results, exited, gateway)
}

#[actix_web::test]
async fn sigterm_during_20_long_streams_lets_them_finish_within_the_drain_bound_and_every_row_lands() {
    let stack = Stack::start(StackOptions::default()).await;
    // About 500 pieces 5 ms apart: each stream runs for about 3 s, well inside the 20 s drain bound.
    stack.mock.set_behaviour(Behaviour::SlowStream { millis: 5 });
    let (results, exited, gateway) =
        sigterm_during_streams(&stack, r#"drain_timeout = "20s""#, "graceful-drain").await;

    for (status, id, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("data: [DONE]"), "stream {id} was cut:\n{body}");
    }
    assert!(
        exited < Duration::from_secs(20),
        "exited {exited:?} after SIGTERM, past the drain bound:\n{}",
        gateway.log_text()
    );
    let rows = stack.wait_for_usage_rows(STREAMS, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), STREAMS, "{rows:#?}\n{}", gateway.log_text());
    for (_, id, _) in &results {
        let row = rows
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(row["outcome"], "ok", "{row}");
        assert_eq!(row["usage_source"], "provider", "{row}");
    }
    assert!(gateway.log_text().contains("requests in flight drained"));
    stack.stop().await;
}

#[actix_web::test]
async fn streams_longer_than_the_drain_bound_are_settled_with_what_was_streamed_and_the_process_exits_in_time()
 {
    let stack = Stack::start(StackOptions::default()).await;
    // About 500 pieces 100 ms apart: each stream would run for about 50 s.
    stack.mock.set_behaviour(Behaviour::SlowStream { millis: 100 });
    let (results, exited, gateway) =
        sigterm_during_streams(&stack, r#"drain_timeout = "1s""#, "graceful-bound").await;

    // drain_timeout (1 s) + shutdown_timeout (5 s, open connections) + the event flush (at most 5 s).
    assert!(
        exited < Duration::from_secs(12),
        "exited {exited:?} after SIGTERM: the streams held it:\n{}",
        gateway.log_text()
    );
    let rows = stack.wait_for_usage_rows(STREAMS, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), STREAMS, "{rows:#?}\n{}", gateway.log_text());
    for (status, id, body) in &results {
        assert_eq!(*status, 200);
        assert!(!body.contains("data: [DONE]"), "stream {id} was not cut short");
        let row = rows
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no row for {id}"));
        assert_ne!(row["outcome"], "ok", "{row}");
        // What the client received was billed: the mock streams one word per event, about one token each.
        let received_words = body.matches("\"content\":\"").count().saturating_sub(1);
        assert!(
            row["completion_tokens"].as_u64().unwrap() >= received_words as u64 / 2,
            "{row} for {received_words} events received"
        );
    }
    assert!(
        gateway.log_text().contains("drain timed out"),
        "{}",
        gateway.log_text()
    );
    stack.stop().await;
}

//! Durable emission (issue 6): while Kafka is unreachable the gateway keeps serving and spools every usage event
//! to local disk; when the broker is back the spool drains to Kafka in order, and every event lands in ClickHouse
//! exactly once — through a broker outage, a `kill -9` of the gateway with a full spool, a clean stop with the
//! broker down and a spool whose last records a crash tore or corrupted. When the spool is full the gateway
//! refuses metered requests (503, nothing sent upstream) or, if so configured, serves them unmetered and counts it.
//!
//! Each test has a broker of its own (Tansu, stopped and resumed at will) and its own ClickHouse database on the
//! shared server. The gateway runs in-process for the outage test and as the real `gateway` binary, killed with
//! SIGKILL, for the crash tests. In its own test binary because the metrics it reads are process-wide.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_gateway::events::spool::frame::{self, Step};
use tollgate_tests::mock_provider::MockProvider;
use tollgate_tests::procs::{
    ChildConfig, ChildGateway, PrivateBroker, free_port, kill9, scratch_dir, terminate,
};
use tollgate_tests::stack::{
    CONSUMERS, MODEL, PROVIDER_KEY, Stack, StackOptions, UPSTREAM_MODEL, eventually, http, request_id, sample,
};

/// One broker outage at a time: each of these tests stops and restarts a broker of its own, and five at once on
/// two cores leave a restarted broker too slow to serve the drain within the tests' deadlines.
static ONE_OUTAGE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chat request `n` (a whole answer, or a stream), from one of the consumers in turn: (status, request id, the
/// body's text).
async fn send_chat(gateway: &str, n: usize, stream: bool) -> (u16, String, String) {
    let (_, _, key) = CONSUMERS[n % CONSUMERS.len()];
    // A connection per request: a pooled one may have gone idle past the server's keep-alive while the test
    // was stopping or starting a broker.
    let mut response = http()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .force_close()
        .send_json(&json!({
            "model": MODEL,
            "stream": stream,
            "messages": [{"role": "user", "content": format!("request {n}")}],
        }))
        .await
        .expect("the gateway answers");
    let request_id = request_id(response.headers());
    let body = response.body().limit(1 << 20).await.unwrap_or_default();
    (
        response.status().as_u16(),
        request_id,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A whole-answer chat request: (status, request id, the JSON body, `null` when it is not JSON).
async fn chat(gateway: &str, n: usize) -> (u16, String, Value) {
    let (status, request_id, body) = send_chat(gateway, n, false).await;
    (
        status,
        request_id,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// A streamed chat request, read to the end of its body: (status, request id, the SSE text).
async fn chat_stream(gateway: &str, n: usize) -> (u16, String, String) {
    send_chat(gateway, n, true).await
}

/// The end of a test whose gateway drains its spool: waits for the spool to be empty, then stops everything.
async fn finish_with_an_empty_spool(gateway: ChildGateway, stack: Stack, scratch: &Path) {
    eventually(
        "the gateway to empty its spool",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || gateway.metric("tollgate_spool_bytes").await == 0.0,
    )
    .await;
    drop(gateway);
    stack.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}

/// Sends requests `range`, ten at a time; every one must be answered 200. Returns their request ids.
async fn send_ok(gateway: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    let all: Vec<usize> = range.collect();
    for wave in all.chunks(10) {
        for (status, id, body) in join_all(wave.iter().map(|&n| chat(gateway, n))).await {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["model"], UPSTREAM_MODEL);
            ids.push(id);
        }
    }
    ids
}

/// The usage rows, read both ways: (rows with FINAL, raw rows, distinct event ids, the request ids).
async fn ledger(stack: &Stack) -> (usize, u64, u64, HashSet<String>) {
    let rows = stack.query("SELECT request_id FROM usage_events FINAL").await;
    let raw = &stack
        .query("SELECT count() AS n, uniqExact(event_id) AS ids FROM usage_events")
        .await[0];
    let ids = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    (
        rows.len(),
        raw["n"].as_u64().unwrap(),
        raw["ids"].as_u64().unwrap(),
        ids,
    )
}

/// Waits until the ledger holds `expected` events and checks that it holds each exactly once.
async fn assert_exactly_once(stack: &Stack, expected: &HashSet<String>) {
    stack
        .wait_for_usage_rows(expected.len(), Duration::from_secs(180))
        .await;
    // Give a late duplicate the time to arrive, then count.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let (rows, raw, distinct, ids) = ledger(stack).await;
    assert_eq!(rows, expected.len(), "rows with FINAL");
    assert_eq!(raw, expected.len() as u64, "raw rows: an event stored twice");
    assert_eq!(distinct, expected.len() as u64, "distinct event ids");
    assert_eq!(
        &ids, expected,
        "the ledger holds exactly the events of the answered requests"
    );
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "spool"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A stack on a broker of the test's own, for its topic, ClickHouse database and ingest loop; the gateways under
/// test are child processes pointed at the same broker and topic.
async fn stack_on(broker: &PrivateBroker) -> Stack {
    Stack::start(StackOptions {
        brokers: Some(broker.brokers()),
        ..StackOptions::default()
    })
    .await
}

/// Runs a gateway binary on `spool_dir` with the broker stopped, sends `count` requests, waits until the spool
/// holds every one of their events, and `kill -9`s it. Returns the request ids.
async fn spool_then_kill9(
    stack: &Stack,
    broker: &mut PrivateBroker,
    spool_dir: &Path,
    count: usize,
) -> Vec<String> {
    broker.stop();
    let scratch = spool_dir.parent().unwrap();
    let brokers = broker.brokers();
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir,
        spool: r#"after = "300ms""#,
        server: "",
    };
    let mut gateway = ChildGateway::start(&config, scratch, "first").await;
    let ids = send_ok(&gateway.url, 0..count).await;
    let answered = Instant::now();
    eventually(
        "the spool to hold every event",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || gateway.metric("tollgate_events_spooled_total").await == count as f64,
    )
    .await;
    println!(
        "{count} events spooled {} ms after the last response (spool.after = 300 ms)",
        answered.elapsed().as_millis()
    );
    assert!(gateway.metric("tollgate_spool_bytes").await > 0.0);
    assert!(
        gateway.log_text().contains("spooling them to disk"),
        "{}",
        gateway.log_text()
    );
    kill9(&mut gateway.child);
    assert!(
        !segment_files(spool_dir).is_empty(),
        "the spool survives the kill"
    );
    ids
}

#[actix_rt::test]
async fn a_broker_outage_loses_no_usage_event_and_doubles_none() {
    let _one_at_a_time = ONE_OUTAGE_AT_A_TIME.lock().await;
    const BEFORE: usize = 40;
    const DURING: usize = 60;
    let mut broker = PrivateBroker::start();
    let stack = stack_on(&broker).await;
    let metric = |name: &str| sample(&stack.metrics.render(), name).unwrap_or(0.0);
    // The metrics are process-wide: a test of this binary that ran before may have emitted events of its own.
    let emitted_before = metric("tollgate_events_emitted_total");

    let mut sent: HashSet<String> = send_ok(&stack.gateway_url, 0..BEFORE).await.into_iter().collect();
    stack.wait_for_usage_rows(BEFORE, Duration::from_secs(60)).await;
    // On a busy machine even these may have waited for Kafka longer than spool.after: count from here.
    eventually(
        "the spool to be empty",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || metric("tollgate_spool_bytes") == 0.0,
    )
    .await;
    let spooled_before = metric("tollgate_events_spooled_total");
    let drained_before = metric("tollgate_spool_drained_total");

    // The broker goes away; clients notice nothing. The first half of the outage's events are with librdkafka
    // until spool.after (1 s) passes and they are spooled; the second half go straight to the spool.
    broker.stop();
    sent.extend(send_ok(&stack.gateway_url, BEFORE..BEFORE + DURING / 2).await);
    eventually(
        "the first events to be spooled",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || metric("tollgate_events_spooled_total") - spooled_before == (DURING / 2) as f64,
    )
    .await;
    sent.extend(send_ok(&stack.gateway_url, BEFORE + DURING / 2..BEFORE + DURING).await);
    eventually(
        "the outage's events to be spooled",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || metric("tollgate_events_spooled_total") - spooled_before == DURING as f64,
    )
    .await;
    assert!(!segment_files(&stack.spool_dir).is_empty());

    // Back: the spool drains and every event is in the ledger once.
    broker.resume();
    assert_exactly_once(&stack, &sent).await;
    eventually(
        "the spool to be empty",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || segment_files(&stack.spool_dir).is_empty() && metric("tollgate_spool_bytes") == 0.0,
    )
    .await;
    assert_eq!(
        metric("tollgate_events_emitted_total") - emitted_before,
        (BEFORE + DURING) as f64,
        "acknowledged once each (spooled {}, drained {}, duplicates ingest dropped within a batch {}, sends \
         failed {})",
        metric("tollgate_events_spooled_total"),
        metric("tollgate_spool_drained_total"),
        metric("billing_duplicate_events_in_batch_total"),
        metric("tollgate_events_failed_total"),
    );
    assert_eq!(
        metric("tollgate_events_spooled_total") - spooled_before,
        DURING as f64
    );
    // The first half was acknowledged from librdkafka after all (its spooled copies are never sent), the
    // second half was sent from the spool.
    let drained = metric("tollgate_spool_drained_total") - drained_before;
    assert!(
        drained >= (DURING / 2) as f64 && drained <= DURING as f64,
        "drained {drained}"
    );
    println!("{DURING} events spooled during the outage, {drained} of them sent from the spool");
    stack.stop().await;
}

#[actix_rt::test]
async fn an_outage_longer_than_librdkafkas_message_timeout_loses_nothing_and_doubles_nothing() {
    let _one_at_a_time = ONE_OUTAGE_AT_A_TIME.lock().await;
    let mut broker = PrivateBroker::start();
    let stack = stack_on(&broker).await;
    let scratch = scratch_dir("spool-long-outage");
    let brokers = broker.brokers();
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir: &scratch.join("spool"),
        spool: r#"after = "300ms""#,
        server: "",
    };
    // kafka.message_timeout is 5 s: librdkafka gives up on every event of a longer outage, and on every send
    // from the spool during it.
    let gateway = ChildGateway::start(&config, &scratch, "gateway").await;
    let mut sent: HashSet<String> = send_ok(&gateway.url, 0..10).await.into_iter().collect();
    stack.wait_for_usage_rows(10, Duration::from_secs(60)).await;
    broker.stop();
    sent.extend(send_ok(&gateway.url, 10..30).await);
    actix_web::rt::time::sleep(Duration::from_secs(7)).await;
    sent.extend(send_ok(&gateway.url, 30..40).await);
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let text = gateway.metrics().await;
    assert!(
        sample(&text, "tollgate_events_failed_total{reason=\"broker\"}").unwrap() >= 20.0,
        "{text}"
    );
    broker.resume();
    assert_exactly_once(&stack, &sent).await;
    eventually(
        "the spool to be empty",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let text = gateway.metrics().await;
            sample(&text, "tollgate_spool_bytes") == Some(0.0)
                && sample(&text, "tollgate_events_emitted_total") == Some(40.0)
        },
    )
    .await;
    // One line when an episode of spooling starts and one when it ends, never one per event. (The first
    // events may make an episode of their own: a fresh producer's first acknowledgements can take longer than
    // spool.after = 300 ms on a busy machine.)
    let log = gateway.log_text();
    let started = log.matches("spooling them to disk").count();
    assert!((1..=2).contains(&started), "{log}");
    assert_eq!(log.matches("usage event spool drained").count(), started, "{log}");
    drop(gateway);
    stack.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}

#[actix_rt::test]
async fn a_gateway_killed_with_a_full_spool_delivers_every_event_once_after_restart() {
    let _one_at_a_time = ONE_OUTAGE_AT_A_TIME.lock().await;
    const REQUESTS: usize = 30;
    let mut broker = PrivateBroker::start();
    let stack = stack_on(&broker).await;
    let scratch = scratch_dir("spool-kill9");
    let spool_dir = scratch.join("spool");
    let sent: HashSet<String> = spool_then_kill9(&stack, &mut broker, &spool_dir, REQUESTS)
        .await
        .into_iter()
        .collect();

    broker.resume();
    let brokers = broker.brokers();
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir: &spool_dir,
        spool: r#"after = "300ms""#,
        server: "",
    };
    let gateway = ChildGateway::start(&config, &scratch, "second").await;
    assert_exactly_once(&stack, &sent).await;
    eventually(
        "the restarted gateway to drain its spool",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let text = gateway.metrics().await;
            sample(&text, "tollgate_spool_drained_total") == Some(REQUESTS as f64)
                && sample(&text, "tollgate_spool_bytes") == Some(0.0)
        },
    )
    .await;
    assert!(segment_files(&spool_dir).is_empty());
    let log = gateway.log_text();
    assert!(log.contains("from an earlier run"), "{log}");
    assert!(log.contains("usage event spool drained"), "{log}");
    drop(gateway);
    stack.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}

/// `spool.write_ahead`: a gateway `kill -9`ed the moment it answered its last requests — whole answers and
/// streams read to their end, their events still in librdkafka's hands (the usage producer lingers 100 ms) or
/// not even taken from the pump's queue, the broker up — loses none of them: an answer ends only once its event
/// is in the spool, and the next start sends them. Those Kafka had already acknowledged arrive twice, and the
/// ledger keeps one of each.
#[actix_rt::test]
async fn with_write_ahead_a_gateway_killed_right_after_answering_loses_no_event() {
    const WHOLE: usize = 30;
    const STREAMS: usize = 10;
    const REQUESTS: usize = WHOLE + STREAMS;
    let stack = Stack::start(StackOptions::default()).await;
    let scratch = scratch_dir("spool-write-ahead");
    let spool_dir = scratch.join("spool");
    let brokers = stack.infra.brokers.clone();
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir: &spool_dir,
        spool: "write_ahead = true",
        server: "",
    };
    let mut gateway = ChildGateway::start(&config, &scratch, "first").await;
    let mut sent: HashSet<String> = send_ok(&gateway.url, 0..WHOLE).await.into_iter().collect();
    for (status, id, body) in join_all((WHOLE..REQUESTS).map(|n| chat_stream(&gateway.url, n))).await {
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("data: [DONE]"),
            "the stream is read to its end: {body}"
        );
        sent.insert(id);
    }
    kill9(&mut gateway.child);
    // These gateways have no meter-sidecar: the outage is logged when it begins, once per HTTP worker (two), not
    // once per request.
    let log = gateway.log_text();
    let outage_lines = log.matches("meter-sidecar unavailable").count();
    assert!(
        (1..=2).contains(&outage_lines),
        "{outage_lines} lines for {REQUESTS} requests:\n{log}"
    );

    let gateway = ChildGateway::start(&config, &scratch, "second").await;
    stack
        .wait_for_usage_rows(REQUESTS, Duration::from_secs(180))
        .await;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let (rows, raw, distinct, ids) = ledger(&stack).await;
    println!(
        "write-ahead: {REQUESTS} answered, {raw} events ingested, {rows} ledger rows after deduplication"
    );
    assert_eq!(ids, sent, "every answered request is in the ledger");
    assert_eq!(
        (rows, distinct),
        (REQUESTS, REQUESTS as u64),
        "one row per request"
    );
    finish_with_an_empty_spool(gateway, stack, &scratch).await;
}

#[actix_rt::test]
async fn a_clean_stop_with_the_broker_down_keeps_every_event_for_the_next_start() {
    let _one_at_a_time = ONE_OUTAGE_AT_A_TIME.lock().await;
    const REQUESTS: usize = 20;
    let mut broker = PrivateBroker::start();
    let stack = stack_on(&broker).await;
    // One request through the stack's own gateway, in the ledger before the broker stops: billing-consumer's
    // ingest has joined its group and holds its partitions (a consumer that first meets the broker after its
    // restart is a different test).
    let (status, warm_up, body) = chat(&stack.gateway_url, REQUESTS).await;
    assert_eq!(status, 200, "{body}");
    stack.wait_for_usage_rows(1, Duration::from_secs(60)).await;
    let scratch = scratch_dir("spool-clean-stop");
    let spool_dir = scratch.join("spool");
    broker.stop();
    let brokers = broker.brokers();
    // spool.after is long: the events are not spooled for being late. Whether they reach the spool as soon as the
    // producer finds no broker (it is then purged, BrokerWatch) or only at the shutdown, every one is kept.
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir: &spool_dir,
        spool: r#"after = "4s""#,
        server: "",
    };
    let mut gateway = ChildGateway::start(&config, &scratch, "first").await;
    let mut sent: HashSet<String> = send_ok(&gateway.url, 0..REQUESTS).await.into_iter().collect();
    sent.insert(warm_up);
    let stopping = Instant::now();
    terminate(&mut gateway.child, Duration::from_secs(20));
    println!(
        "clean stop with the broker down took {} ms",
        stopping.elapsed().as_millis()
    );
    let log = gateway.log_text();
    assert!(
        log.contains("gateway stopped"),
        "a clean stop, not a kill:\n{log}"
    );
    assert!(log.contains("with usage events in the spool"), "{log}");
    drop(gateway);

    broker.resume();
    let gateway = ChildGateway::start(&config, &scratch, "second").await;
    assert_exactly_once(&stack, &sent).await;
    finish_with_an_empty_spool(gateway, stack, &scratch).await;
}

/// The records of a segment file: (offset, length, event id).
fn frames(bytes: &[u8]) -> Vec<(usize, usize, String)> {
    let mut at = 0;
    let mut found = Vec::new();
    while let Step::Record(f) = frame::decode(&bytes[at..], true) {
        let event: Value = serde_json::from_slice(f.payload).unwrap();
        found.push((at, f.len, event["id"].as_str().unwrap().to_owned()));
        at += f.len;
    }
    assert_eq!(
        at,
        bytes.len(),
        "the segment is whole before the test corrupts it"
    );
    found
}

#[actix_rt::test]
async fn a_torn_and_corrupted_spool_delivers_every_intact_event_once_and_misreads_nothing() {
    let _one_at_a_time = ONE_OUTAGE_AT_A_TIME.lock().await;
    const REQUESTS: usize = 12;
    let mut broker = PrivateBroker::start();
    let stack = stack_on(&broker).await;
    let scratch = scratch_dir("spool-corrupt");
    let spool_dir = scratch.join("spool");
    let mut sent: HashSet<String> = spool_then_kill9(&stack, &mut broker, &spool_dir, REQUESTS)
        .await
        .into_iter()
        .collect();

    // One segment, twelve records. Corrupt it as a crash and a bad disk could: a flipped bit in the third
    // record, garbage between the sixth and the seventh, and the last record cut short.
    let segments = segment_files(&spool_dir);
    assert_eq!(segments.len(), 1);
    let bytes = std::fs::read(&segments[0]).unwrap();
    let records = frames(&bytes);
    assert_eq!(records.len(), REQUESTS);
    let (third, third_len, third_id) = records[2].clone();
    let (seventh, _, _) = records[6].clone();
    let (last, last_len, last_id) = records[REQUESTS - 1].clone();
    let mut corrupted = bytes[..seventh].to_vec();
    corrupted[third + third_len - 5] ^= 0x20;
    corrupted.extend_from_slice(b"\0\0\0\0 not a record, TGsp neither \xff\xff");
    corrupted.extend_from_slice(&bytes[seventh..last + last_len / 2]);
    std::fs::write(&segments[0], corrupted).unwrap();
    assert!(sent.remove(&third_id) && sent.remove(&last_id));

    broker.resume();
    let brokers = broker.brokers();
    let config = ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &stack.mock.endpoint(),
        spool_dir: &spool_dir,
        spool: "",
        server: "",
    };
    let gateway = ChildGateway::start(&config, &scratch, "second").await;
    assert_exactly_once(&stack, &sent).await;
    let text = gateway.metrics().await;
    for reason in ["checksum", "garbage", "torn"] {
        assert_eq!(
            sample(
                &text,
                &format!("tollgate_spool_corrupt_records_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "{reason}"
        );
    }
    let log = gateway.log_text();
    assert_eq!(log.matches("skipped a corrupt record").count(), 2, "{log}");
    assert_eq!(log.matches("it was cut off").count(), 1, "{log}");
    assert!(
        log.contains(&format!("offset={third}")),
        "the log names where: {log}"
    );
    finish_with_an_empty_spool(gateway, stack, &scratch).await;
}

/// A gateway with nowhere to send its events and a spool of 8 KiB (a handful of events).
async fn gateway_with_a_small_spool(on_full: &str, name: &str) -> (ChildGateway, MockProvider, PathBuf) {
    let (mock, server) = MockProvider::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Some(PROVIDER_KEY.into()),
    )
    .unwrap();
    actix_web::rt::spawn(server);
    let scratch = scratch_dir(name);
    let spool_dir = scratch.join("spool");
    let nowhere = format!("127.0.0.1:{}", free_port());
    let spool = format!("max_bytes = 8192\nsegment_bytes = 4096\nafter = \"100ms\"\non_full = \"{on_full}\"");
    let config = ChildConfig {
        brokers: &nowhere,
        topic: "tollgate.usage.v1",
        mock: &mock.endpoint(),
        spool_dir: &spool_dir,
        spool: &spool,
        server: "",
    };
    let gateway = ChildGateway::start(&config, &scratch, "gateway").await;
    (gateway, mock, scratch)
}

#[actix_rt::test]
async fn a_full_spool_refuses_metered_requests_before_any_upstream_when_on_full_is_reject() {
    let (gateway, mock, scratch) = gateway_with_a_small_spool("reject", "spool-reject").await;
    let mut served = 0;
    let refusal = loop {
        let (status, _, body) = chat(&gateway.url, served).await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        served += 1;
        assert!(served < 200, "the spool never filled up");
        // Let the pump spool each event before the next request (spool.after = 100 ms).
        actix_web::rt::time::sleep(Duration::from_millis(30)).await;
    };
    assert_eq!(
        refusal,
        json!({"error": {
            "message": "The gateway cannot record usage right now, so it is not serving metered requests. Try again later.",
            "type": "server_error",
            "param": null,
            "code": "usage_spool_full"
        }})
    );
    assert_eq!(
        mock.received().len(),
        served,
        "the refused request never reached the provider"
    );
    for n in 0..3 {
        let (status, _, _) = chat(&gateway.url, served + 1 + n).await;
        assert_eq!(status, 503);
    }
    assert_eq!(mock.received().len(), served);
    let text = gateway.metrics().await;
    // Every event of a served request is kept: the spool is over its limit by at most those.
    assert_eq!(
        sample(&text, "tollgate_events_spooled_total"),
        Some(served as f64)
    );
    assert!(sample(&text, "tollgate_spool_bytes").unwrap() >= 8192.0);
    assert_eq!(sample(&text, "tollgate_events_unmetered_total"), None);
    assert_eq!(gateway.log_text().matches("usage event spool is full").count(), 1);
    println!("the 8 KiB spool filled up after {served} requests");
    drop(gateway);
    mock.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}

#[actix_rt::test]
async fn a_full_spool_serves_unmetered_and_counts_it_when_on_full_is_serve_unmetered() {
    const REQUESTS: usize = 30;
    let (gateway, mock, scratch) = gateway_with_a_small_spool("serve_unmetered", "spool-unmetered").await;
    for n in 0..REQUESTS {
        let (status, _, body) = chat(&gateway.url, n).await;
        assert_eq!(status, 200, "{body}");
        actix_web::rt::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(mock.received().len(), REQUESTS);
    // Every event is accounted for: in the spool, or dropped and counted as unmetered.
    eventually(
        "every event to be spooled or counted unmetered",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            let text = gateway.metrics().await;
            let spooled = sample(&text, "tollgate_events_spooled_total").unwrap_or(0.0);
            let unmetered = sample(&text, "tollgate_events_unmetered_total").unwrap_or(0.0);
            spooled + unmetered == REQUESTS as f64 && unmetered > 0.0
        },
    )
    .await;
    let text = gateway.metrics().await;
    let unmetered = sample(&text, "tollgate_events_unmetered_total").unwrap();
    assert!(
        sample(&text, "tollgate_spool_bytes").unwrap() <= 8192.0,
        "never past max_bytes"
    );
    let log = gateway.log_text();
    assert_eq!(
        log.matches("served unmetered").count() as f64,
        unmetered,
        "one error line per event"
    );
    println!("{unmetered} of {REQUESTS} requests served unmetered");
    drop(gateway);
    mock.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}

//! The ledger under faults (issue 6): usage events are money, so no outage and no crash may lose one or count
//! one twice. The broker is one of the test's own, stopped for 30 s while 5,000 requests flow through the
//! gateway; billing-consumer runs as a real process that is `kill -9`ed mid-ingest; ClickHouse is a server of
//! the test's own, stopped for 30 s while events keep coming. Afterwards the deduplicated ledger holds every
//! event exactly once, and its totals are the totals of what was produced.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use serde_json::json;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::usage::{EstimateSource, Outcome, UsageEvent, UsageRecorded, UsageSource};
use tollgate_tests::procs::{PrivateBroker, PrivateClickHouse, free_port, kill9, workspace_binary};
use tollgate_tests::stack::{CONSUMERS as KEYS, Infra, MODEL, Stack, StackOptions, http, query};

const CONSUMERS: [&str; 3] = ["team-a", "team-b", "team-c"];

/// One fault at a time: each of these tests loads a broker and ClickHouse hard, and on two cores three at once
/// measure the machine more than the ledger.
static ONE_FAULT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Event `i` of a run: consumers in turn, tokens that vary with `i`.
fn event(run: &str, i: u32) -> UsageEvent {
    let consumer = CONSUMERS[i as usize % CONSUMERS.len()];
    let (prompt, completion) = (10 + i % 97, (i * 7) % 301);
    let now = Utc::now();
    let finished = u64::try_from(now.timestamp_millis()).unwrap();
    CloudEvent::new(
        "tollgate-gateway/fault-test",
        consumer,
        now,
        UsageRecorded {
            request_id: format!("{run}-{i}"),
            consumer_id: consumer.into(),
            team: None,
            organization: None,
            key_id: format!("{consumer}-key"),
            endpoint: "/v1/chat/completions".into(),
            route: "gpt-4o-mini".into(),
            model_requested: "gpt-4o-mini".into(),
            model_served: "gpt-4o-mini-2024-07-18".into(),
            provider: "openai".into(),
            instance: "primary".into(),
            attempts: Vec::new(),
            stream: false,
            outcome: Outcome::Ok,
            http_status: 200,
            prompt_tokens_estimated: prompt,
            prompt_estimate_source: EstimateSource::Meter,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_prompt_tokens: None,
            reasoning_tokens: None,
            cache_write_5m_tokens: None,
            cache_write_1h_tokens: None,
            usage_source: UsageSource::Provider,
            latency_ms: 50,
            ttfb_ms: Some(20),
            started_at_ms: finished - 50,
            finished_at_ms: finished,
        },
    )
}

/// Produces `events` (acks=all) and waits for every acknowledgement.
async fn produce(brokers: &str, topic: &str, events: &[UsageEvent]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for chunk in events.chunks(2_000) {
        let sends = chunk.iter().map(|event| {
            let payload = serde_json::to_vec(event).unwrap();
            let producer = &producer;
            async move {
                let record = FutureRecord::to(topic).key(&event.subject).payload(&payload);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .expect("the broker acknowledges");
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// (rows counted once, rows stored, total tokens counted once) in the ledger.
async fn ledger(url: &str, database: &str) -> (u64, u64, u64) {
    let sql = format!(
        "SELECT count() AS n FROM system.tables WHERE database = '{database}' AND name = 'usage_events'"
    );
    if query(url, "system", &sql).await[0]["n"] != 1 {
        return (0, 0, 0);
    }
    let once = query(
        url,
        database,
        "SELECT count() AS n, sum(total_tokens) AS tokens FROM usage_events FINAL",
    )
    .await;
    let stored = query(url, database, "SELECT count() AS n FROM usage_events").await;
    let n = |rows: &[Value], k: &str| rows[0][k].as_u64().unwrap_or(0);
    (n(&once, "n"), n(&stored, "n"), n(&once, "tokens"))
}

/// The billing-consumer binary running `run` against `infra` and `database`.
fn billing_consumer(infra: &Infra, clickhouse_url: &str, database: &str, topic: &str, group: &str) -> Child {
    Command::new(workspace_binary("tollgate-billing-consumer", "billing-consumer"))
        .args(["--brokers", &infra.brokers, "--clickhouse-url", clickhouse_url])
        .args([
            "--clickhouse-database",
            database,
            "run",
            "--topic",
            topic,
            "--group",
            group,
        ])
        .args(["--batch-size", "1000", "--batch-wait", "50ms"])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn")
        .env("TOLLGATE_BILLING_INSTANCE_ID", format!("{group}-1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start billing-consumer")
}

/// Replays the topic over the last hour and compares it with the ledger: the audit must find nothing.
async fn audit_is_clean(brokers: &str, topic: &str, clickhouse_url: &str, database: &str) {
    let clickhouse = tollgate_billing_consumer::ledger::ClickHouseSettings {
        url: clickhouse_url.to_owned(),
        database: database.to_owned(),
        user: "default".into(),
        password: None,
        cluster: None,
    };
    let now = Utc::now();
    let settings = tollgate_billing_consumer::replay::audit::AuditSettings::new(
        brokers,
        topic,
        clickhouse,
        now - chrono::Duration::hours(1),
        now + chrono::Duration::minutes(1),
        None,
    );
    let report = tollgate_billing_consumer::replay::audit::run(&settings)
        .await
        .expect("the audit runs");
    eprintln!("audit: {}", report.summary());
    assert!(report.is_clean(), "{}", report.to_text());
}

async fn wait_for(url: &str, database: &str, expected: u64, deadline: Duration) -> (u64, u64, u64) {
    let started = Instant::now();
    loop {
        let now = ledger(url, database).await;
        if now.0 >= expected || started.elapsed() > deadline {
            return now;
        }
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
}

fn expected_tokens(events: &[UsageEvent]) -> u64 {
    events.iter().map(|e| u64::from(e.data.total_tokens)).sum()
}

async fn fresh_topic(infra: &Infra, run: &str) -> String {
    let topic = format!("tollgate.usage.v1.fault-{run}");
    let mut tries = 0;
    while let Err(e) =
        tollgate_billing_consumer::kafka::topics::ensure(&(&infra.brokers).into(), &topic, 3).await
    {
        tries += 1;
        assert!(tries < 5, "create the topic: {e}");
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    topic
}

#[actix_rt::test]
async fn billing_consumer_killed_nine_times_five_during_ingest_still_counts_every_event_once() {
    let _one_at_a_time = ONE_FAULT_AT_A_TIME.lock().await;
    const EVENTS: u32 = 20_000;
    let infra = Infra::from_env();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = fresh_topic(&infra, &run).await;
    let database = format!("fault_kill_{run}");
    let events: Vec<UsageEvent> = (0..EVENTS).map(|i| event(&run, i)).collect();
    produce(&infra.brokers, &topic, &events).await;

    let url = infra.clickhouse_url.clone();
    let group = format!("billing-fault-{run}");
    let mut kills = 0;
    let mut seen = Vec::new();
    while kills < 5 {
        let mut child = billing_consumer(&infra, &url, &database, &topic, &group);
        // Let it get going, then kill it without warning in the middle of a batch.
        let before = ledger(&url, &database).await.1;
        let started = Instant::now();
        loop {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            let stored = ledger(&url, &database).await.1;
            if stored > before || started.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        // Mid-batch: a batch landed, the next is on its way.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        kill9(&mut child);
        kills += 1;
        let now = ledger(&url, &database).await;
        eprintln!(
            "kill -9 #{kills} after {:?}: {} events counted, {} rows stored",
            started.elapsed(),
            now.0,
            now.1
        );
        seen.push(now);
    }
    // A fast restart may finish the topic before the last kill; the kills before it were mid-ingest.
    let mid_ingest = seen.iter().filter(|s| s.0 < u64::from(EVENTS)).count();
    assert!(
        mid_ingest >= 4,
        "at least four kills happened during ingest: {seen:?}"
    );

    let mut child = billing_consumer(&infra, &url, &database, &topic, &group);
    let (once, stored, tokens) = wait_for(&url, &database, u64::from(EVENTS), Duration::from_secs(120)).await;
    kill9(&mut child);
    eprintln!("after 5 kills: {once} events counted once ({stored} rows stored), {tokens} tokens");
    assert_eq!(
        once,
        u64::from(EVENTS),
        "every event is in the ledger exactly once"
    );
    assert_eq!(tokens, expected_tokens(&events), "and the totals are exact");
    audit_is_clean(&infra.brokers, &topic, &url, &database).await;
    let _ = query(&url, "default", &format!("DROP DATABASE IF EXISTS {database}")).await;
}

#[actix_rt::test]
async fn a_clickhouse_outage_of_30_seconds_pauses_ingest_and_loses_nothing() {
    let _one_at_a_time = ONE_FAULT_AT_A_TIME.lock().await;
    const BEFORE: u32 = 2_000;
    const DURING: u32 = 3_000;
    let infra = Infra::from_env();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = fresh_topic(&infra, &run).await;
    let mut clickhouse = PrivateClickHouse::start();
    let url = clickhouse.url();
    let database = "tollgate";
    let group = format!("billing-fault-{run}");
    let events: Vec<UsageEvent> = (0..BEFORE + DURING).map(|i| event(&run, i)).collect();

    let mut child = billing_consumer(&infra, &url, database, &topic, &group);
    produce(&infra.brokers, &topic, &events[..BEFORE as usize]).await;
    let first = wait_for(&url, database, u64::from(BEFORE), Duration::from_secs(60)).await;
    assert_eq!(first.0, u64::from(BEFORE));

    // ClickHouse goes away for 30 s while events keep arriving.
    clickhouse.stop();
    let outage = Instant::now();
    produce(&infra.brokers, &topic, &events[BEFORE as usize..]).await;
    while outage.elapsed() < Duration::from_secs(30) {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("billing-consumer exited during the outage: {status}");
        }
    }
    clickhouse.resume();
    let (once, stored, tokens) = wait_for(
        &url,
        database,
        u64::from(BEFORE + DURING),
        Duration::from_secs(90),
    )
    .await;
    kill9(&mut child);
    eprintln!("after a 30 s ClickHouse outage: {once} events counted once ({stored} rows stored)");
    assert_eq!(once, u64::from(BEFORE + DURING), "nothing was lost");
    assert_eq!(tokens, expected_tokens(&events));
}

#[actix_rt::test]
async fn a_broker_outage_of_30_seconds_while_5000_requests_flow_loses_no_event_and_doubles_none() {
    let _one_at_a_time = ONE_FAULT_AT_A_TIME.lock().await;
    const REQUESTS: usize = 5_000;
    const CLIENTS: usize = 8;
    let mut broker = PrivateBroker::start();
    let stack = Stack::start(StackOptions {
        brokers: Some(broker.brokers()),
        ..StackOptions::default()
    })
    .await;
    // Eight clients, paced so that the 5,000 requests span the outage: about 125 requests a second.
    let started = Instant::now();
    let gateway = stack.gateway_url.clone();
    let client = |c: usize| {
        let gateway = gateway.clone();
        async move {
            let mut ids = Vec::new();
            for n in (c..REQUESTS).step_by(CLIENTS) {
                let key = KEYS[n % KEYS.len()].2;
                let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("request {n}")}]});
                let mut response = http()
                    .post(format!("{gateway}/v1/chat/completions"))
                    .bearer_auth(key)
                    .send_json(&body)
                    .await
                    .expect("the gateway answers");
                let _ = response.body().await;
                assert_eq!(
                    response.status(),
                    200,
                    "every request is served during the outage"
                );
                ids.push(
                    response
                        .headers()
                        .get("x-request-id")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
                actix_web::rt::time::sleep(Duration::from_millis(60)).await;
            }
            ids
        }
    };
    let outage = async {
        actix_web::rt::time::sleep(Duration::from_secs(5)).await;
        broker.stop();
        let down = Instant::now();
        actix_web::rt::time::sleep(Duration::from_secs(30)).await;
        broker.resume();
        down.elapsed()
    };
    let (ids, down) = futures_util::join!(futures_util::future::join_all((0..CLIENTS).map(client)), outage);
    let ids: std::collections::HashSet<String> = ids.into_iter().flatten().collect();
    eprintln!(
        "{} requests in {:?}, the broker down for {down:?} of it",
        ids.len(),
        started.elapsed()
    );
    assert_eq!(ids.len(), REQUESTS);

    let rows = stack
        .wait_for_usage_rows(REQUESTS, Duration::from_secs(180))
        .await;
    let landed: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    let stored = stack
        .query("SELECT count() AS n, uniqExact(event_id) AS ids FROM usage_events")
        .await;
    eprintln!(
        "after the outage: {} events counted once, {} rows stored for {} distinct ids",
        rows.len(),
        stored[0]["n"],
        stored[0]["ids"]
    );
    assert_eq!(
        rows.len(),
        REQUESTS,
        "every request's event is in the ledger exactly once"
    );
    assert_eq!(landed, ids, "and they are the events of exactly these requests");
    assert_eq!(stored[0]["ids"], REQUESTS as u64);
    audit_is_clean(
        &stack.infra.brokers,
        &stack.topic,
        &stack.clickhouse.url,
        &stack.clickhouse.database,
    )
    .await;
    stack.stop().await;
}

//! Measurements, not specifications: ignored by default, run on purpose in release mode against the real broker
//! and ClickHouse, printing their numbers:
//!
//! ```sh
//! TOLLGATE_TEST_KAFKA_BROKERS=127.0.0.1:9092 TOLLGATE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8123 \
//!   cargo test --release -p tollgate-billing-consumer --test throughput -- --ignored --nocapture
//! ```
//!
//! One test produces `TOLLGATE_BENCH_EVENTS` usage events (default 1,000,000; each about 900 bytes of JSON, one
//! month of event times, three consumers and three models) to a fresh topic, then measures:
//!
//! 1. ingest: the ingest loop with production settings (batches of 5,000, prices) from the start until every
//!    message is committed — events per second from Kafka into ClickHouse;
//! 2. ClickHouse alone: the same rows inserted in batches of 5,000 into a fresh database — rows per second;
//! 3. the audit of the month: `billing-consumer audit` (the release binary) over all of it, which must agree.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::DateTime;
use common::ledger::{Fixture, produce, wait_until_committed_within};
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::ingest;
use tollgate_billing_consumer::ingest::IngestSettings;
use tollgate_billing_consumer::ledger::migrations;
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::ledger::store::{self, Position};
use tollgate_schemas::usage::UsageEvent;

const PRICES: &str = r#"
    [[prices]]
    model = "gpt-4o-mini"
    effective_from = "2026-01-01"
    currency = "USD"
    input_per_mtok = "0.15"
    cached_input_per_mtok = "0.075"
    output_per_mtok = "0.60"

    [[prices]]
    model = "claude-haiku"
    effective_from = "2026-01-01"
    currency = "EUR"
    input_per_mtok = "1"
    output_per_mtok = "5"
"#;
const MONTH_START: &str = "2026-10-01T00:00:00Z";
const MONTH_END: &str = "2026-11-01T00:00:00Z";
const PRODUCE_CHUNK: usize = 20_000;
const BATCH: usize = 5_000;

fn ms(rfc3339: &str) -> u64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis() as u64
}

/// Event `i` of `n`, spread evenly over the month.
fn event(i: usize, n: usize) -> UsageEvent {
    let (start, end) = (ms(MONTH_START), ms(MONTH_END));
    let at = start + (end - start) * i as u64 / n as u64;
    let mut event = common::event(i);
    event.time = DateTime::from_timestamp_millis(at as i64).unwrap();
    event.data.started_at_ms = at - 50;
    event.data.finished_at_ms = at;
    event
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn ingest_and_audit_throughput() {
    let n: usize = std::env::var("TOLLGATE_BENCH_EVENTS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(1_000_000);
    let fixture = Fixture::new().await;
    let prices = PriceTable::from_toml(PRICES).unwrap();

    let started = Instant::now();
    let mut bytes = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(PRODUCE_CHUNK) {
        let sends = chunk.iter().map(|i| {
            let event = event(*i, n);
            let payload = serde_json::to_vec(&event).unwrap();
            bytes += payload.len();
            let producer = fixture.producer.clone();
            let topic = fixture.topic.clone();
            async move { produce(&producer, &topic, &event.data.consumer_id, &payload).await }
        });
        futures_util::future::join_all(sends).await;
    }
    let produced = started.elapsed();
    eprintln!(
        "produced {n} events ({} bytes each on average) in {produced:.1?}: {:.0} events/s",
        bytes / n,
        per_second(n, produced)
    );

    // 1. Ingest, production batch settings.
    let settings = IngestSettings {
        batch_size: BATCH,
        batch_wait: Duration::from_millis(200),
        ..fixture.ingest_settings()
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(ingest::run_with_prices(
        settings,
        Arc::new(prices.clone()),
        shutdown.clone(),
    ));
    wait_until_committed_within(
        &fixture.brokers,
        &fixture.group,
        &fixture.topic,
        n as i64,
        Duration::from_secs(1800),
    )
    .await;
    let ingested = started.elapsed();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    eprintln!(
        "ingest: {n} events from Kafka into ClickHouse, committed, in {ingested:.1?}: {:.0} events/s",
        per_second(n, ingested)
    );

    // 2. ClickHouse alone: the same rows, built in advance, inserted in batches into a fresh database.
    let alone = common::clickhouse(&format!("{}_insert", common::unique_suffix()));
    migrations::apply(&alone).await.unwrap();
    let at = Position {
        topic: fixture.topic.clone(),
        partition: 0,
        offset: 0,
    };
    let rows: Vec<_> = (0..n)
        .map(|i| store::usage_row(&event(i, n), &at, 0, &prices).unwrap())
        .collect();
    let client = alone.client();
    let started = Instant::now();
    for batch in rows.chunks(BATCH) {
        store::insert_all(&client, store::USAGE_TABLE, batch)
            .await
            .unwrap();
    }
    let inserted = started.elapsed();
    eprintln!(
        "ClickHouse alone: {n} rows in batches of {BATCH} in {inserted:.1?}: {:.0} rows/s",
        per_second(n, inserted)
    );
    common::drop_database(&alone).await;

    // 3. The audit of the month, as an operator runs it.
    let prices_file = std::env::temp_dir().join(format!("{}-prices.toml", fixture.ch.database));
    std::fs::write(&prices_file, PRICES).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing-consumer"));
    command
        .args(["audit", "--from", MONTH_START, "--to", MONTH_END])
        .args(["--topic", &fixture.topic, "--brokers", &fixture.brokers])
        .args([
            "--clickhouse-url",
            &fixture.ch.url,
            "--clickhouse-database",
            &fixture.ch.database,
        ])
        .args(["--clickhouse-user", &fixture.ch.user])
        .arg("--prices")
        .arg(&prices_file)
        .env_remove("TOLLGATE_PRICES");
    if let Some(password) = &fixture.ch.password {
        command.env("TOLLGATE_CLICKHOUSE_PASSWORD", password);
    }
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let audited = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "audit: {n} events replayed and compared in {audited:.1?} ({:.0} events/s)\n{stdout}",
        per_second(n, audited)
    );

    common::drop_database(&fixture.ch).await;
}

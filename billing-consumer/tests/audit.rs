//! The replay audit and the rebuild against the real broker and ClickHouse. Usage events (some delivered twice,
//! some outside the audited range, one malformed message, some with reasoning tokens and prompt-cache writes,
//! some that failed upstream and carry no per-request fee) are ingested with prices; then:
//!
//! - the audit recomputes the range from Kafka alone and finds ClickHouse in agreement — the library call and
//!   the `billing-consumer audit` command, which exits 0;
//! - after one row is deleted from ClickHouse (`ALTER TABLE … DELETE`, a mutation, which 18.16 runs), the audit
//!   reports exactly that event's group with its tokens and cost as the differences, lists the event as missing
//!   in ClickHouse, and the command exits 1;
//! - a rebuild of the range into a fresh table holds the same rows as the ledger, and audits clean.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::ledger::{Fixture, produce};
use tollgate_billing_consumer::ledger::pricing::{PriceTable, TokenUsage};
use tollgate_billing_consumer::replay::audit::report::{EventDifferenceKind, EventRecord};
use tollgate_billing_consumer::replay::audit::tally::EventValues;
use tollgate_billing_consumer::replay::audit::{self, AuditSettings};
use tollgate_billing_consumer::replay::rebuild::{self, RebuildSettings};
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
    cached_input_per_mtok = "0.10"
    cache_write_5m_per_mtok = "1.25"
    cache_write_1h_per_mtok = "2"
    output_per_mtok = "5"
    reasoning_per_mtok = "6"
    per_request = "0.0001"
"#;
/// Events 0..300 are in the audited range (2026-11-20, 00:00 to 05:00, one a minute); 300..320 after it.
const IN_RANGE: usize = 300;
const AFTER_RANGE: usize = 20;
/// Every tenth event in the range is delivered twice.
const REDELIVERED_EVERY: usize = 10;

fn from() -> DateTime<Utc> {
    common::event_time(0)
}

fn to() -> DateTime<Utc> {
    common::event_time(IN_RANGE)
}

fn prices() -> PriceTable {
    PriceTable::from_toml(PRICES).unwrap()
}

/// Event `i` with the other token types on some: every fifth (from the fourth) has reasoning tokens and 5-minute
/// cache writes, every seventh (from the fourth) 1-hour cache writes, and every eleventh failed upstream.
fn event(i: usize) -> UsageEvent {
    let mut event = common::event(i);
    let data = &mut event.data;
    if i % 5 == 3 {
        data.reasoning_tokens = Some(data.completion_tokens / 3);
        data.cache_write_5m_tokens = Some(data.prompt_tokens / 4);
    }
    if i % 7 == 3 {
        data.cache_write_1h_tokens = Some(data.prompt_tokens / 5);
    }
    if i % 11 == 10 {
        data.outcome = tollgate_schemas::usage::Outcome::UpstreamError;
        data.http_status = 502;
    }
    event
}

/// A ledger holding the events, ingested with prices; returns them (each once).
async fn ingested() -> (Fixture, Vec<UsageEvent>) {
    let fixture = Fixture::new().await;
    let events: Vec<UsageEvent> = (0..IN_RANGE + AFTER_RANGE).map(event).collect();
    let redelivered: Vec<UsageEvent> = events[..IN_RANGE]
        .iter()
        .step_by(REDELIVERED_EVERY)
        .cloned()
        .collect();
    fixture.produce_all(&events).await;
    fixture.produce_all(&redelivered).await;
    produce(
        &fixture.producer,
        &fixture.topic,
        "team-a",
        b"{\"not\": \"an event\"}",
    )
    .await;
    let messages = events.len() + redelivered.len() + 1;
    fixture.ingest(prices(), messages as i64).await;
    (fixture, events)
}

fn settings(fixture: &Fixture, table: &str) -> AuditSettings {
    AuditSettings {
        table: table.to_owned(),
        ..AuditSettings::new(
            &fixture.brokers,
            &fixture.topic,
            fixture.ch.clone(),
            from(),
            to(),
            Some(Arc::new(prices())),
        )
    }
}

/// The price file for the command line, written once per test.
fn prices_file(fixture: &Fixture) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-prices.toml", fixture.ch.database));
    std::fs::write(&path, PRICES).unwrap();
    path
}

/// Runs `billing-consumer audit` on the fixture's topic and database for the range.
async fn audit_command(fixture: &Fixture, extra: &[&str]) -> Output {
    let prices = prices_file(fixture);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing-consumer"));
    command
        .args([
            "audit",
            "--from",
            &from().to_rfc3339(),
            "--to",
            &to().to_rfc3339(),
        ])
        .args(["--topic", &fixture.topic, "--brokers", &fixture.brokers])
        .args([
            "--clickhouse-url",
            &fixture.ch.url,
            "--clickhouse-database",
            &fixture.ch.database,
        ])
        .args(["--clickhouse-user", &fixture.ch.user])
        .arg("--prices")
        .arg(&prices)
        .args(extra)
        .env_remove("TOLLGATE_PRICES")
        .env("RUST_LOG", "warn");
    match &fixture.ch.password {
        Some(password) => command.env("TOLLGATE_CLICKHOUSE_PASSWORD", password),
        None => command.env_remove("TOLLGATE_CLICKHOUSE_PASSWORD"),
    };
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn last_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().unwrap_or_default().to_owned()
}

/// What `event` contributes, priced as ingest prices it.
fn record(event: &UsageEvent) -> (EventRecord, i64) {
    let data = &event.data;
    let table = prices();
    let charge = table.charge(&data.model_served, data.finished_at_ms, &TokenUsage::of(data));
    let record = EventRecord {
        currency: charge.currency().to_owned(),
        values: EventValues {
            prompt_tokens: data.prompt_tokens,
            cached_prompt_tokens: data.cached_prompt_tokens.unwrap_or(0),
            completion_tokens: data.completion_tokens,
            reasoning_tokens: data.reasoning_tokens.unwrap_or(0),
            cache_write_5m_tokens: data.cache_write_5m_tokens.unwrap_or(0),
            cache_write_1h_tokens: data.cache_write_1h_tokens.unwrap_or(0),
            cost_micros: charge.cost_micros,
        },
    };
    (record, charge.cost_micros)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_ingested_events_finds_no_difference() {
    let (fixture, events) = ingested().await;

    let report = audit::run(&settings(&fixture, "usage_events")).await.unwrap();
    assert!(report.is_clean(), "{}", report.to_text());
    assert_eq!(report.kafka.events, IN_RANGE as u64);
    assert_eq!(report.kafka.duplicates, (IN_RANGE / REDELIVERED_EVERY) as u64);
    assert_eq!(report.kafka.outside_range, AFTER_RANGE as u64);
    assert_eq!(report.kafka.undecodable, 1);
    assert_eq!(report.clickhouse_totals, report.kafka_totals);
    assert_eq!(report.groups, common::CONSUMERS.len() * common::MODELS.len());
    let expected_cost: i64 = events[..IN_RANGE].iter().map(|e| record(e).1).sum();
    assert!(expected_cost > 0);
    // USD and EUR micro-units added up: meaningless as money, exact as a checksum.
    assert_eq!(report.kafka_totals.cost_micros, expected_cost);
    // Every token type is compared, and there were some of each.
    let sum = |pick: fn(&UsageEvent) -> Option<u32>| -> u64 {
        events[..IN_RANGE]
            .iter()
            .map(|e| u64::from(pick(e).unwrap_or(0)))
            .sum()
    };
    let totals = &report.clickhouse_totals;
    assert_eq!(
        (
            totals.reasoning_tokens,
            totals.cache_write_5m_tokens,
            totals.cache_write_1h_tokens
        ),
        (
            sum(|e| e.data.reasoning_tokens),
            sum(|e| e.data.cache_write_5m_tokens),
            sum(|e| e.data.cache_write_1h_tokens)
        )
    );
    assert!(
        totals.reasoning_tokens > 0 && totals.cache_write_5m_tokens > 0 && totals.cache_write_1h_tokens > 0
    );
    assert!(report.event_differences.is_empty());
    // Served snapshots of gpt-4o-mini and claude-haiku are priced as their families; llama-3 has no price.
    assert_eq!(report.unpriced_models, ["llama-3-2026-01-15"]);
    let llama = events[..IN_RANGE]
        .iter()
        .filter(|e| e.data.model_served == "llama-3-2026-01-15")
        .count();
    assert_eq!(report.unpriced_events, llama as u64);

    // Without prices, counts and tokens are compared and costs are not.
    let tokens_only = AuditSettings {
        prices: None,
        ..settings(&fixture, "usage_events")
    };
    let report = audit::run(&tokens_only).await.unwrap();
    assert!(report.is_clean(), "{}", report.to_text());
    assert!(!report.costs_compared);

    // The command agrees and exits 0, the summary on its last line.
    let output = audit_command(&fixture, &[]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        last_line(&output).starts_with("OK: Kafka and ClickHouse agree on 300 events in 9 groups"),
        "{output:?}"
    );

    common::drop_database(&fixture.ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_from_clickhouse_is_exactly_the_difference_reported() {
    let (fixture, events) = ingested().await;
    // Event 3: team-a, claude-haiku, 13 prompt tokens of which 6 cached, 3 written for 5 min and 2 for 1 h;
    // 21 completion tokens of which 7 reasoning: 2 × 1 + 6 × 0.10 + 3 × 1.25 + 2 × 2 + 14 × 5 + 7 × 6 = 122.35
    // → 122, plus the 100 micro-EUR fee = 222 micro-EUR.
    let victim = &events[3];
    let (victim_record, victim_cost) = record(victim);
    assert_eq!(
        (
            victim.data.consumer_id.as_str(),
            victim.data.model_served.as_str()
        ),
        ("team-a", "claude-haiku-2026-01-15")
    );
    assert_eq!((victim_record.values.cached_prompt_tokens, victim_cost), (6, 222));
    let before = audit::run(&settings(&fixture, "usage_events")).await.unwrap();
    assert!(before.is_clean());

    delete_event(&fixture, &victim.id.hyphenated().to_string()).await;

    let report = audit::run(&settings(&fixture, "usage_events")).await.unwrap();
    assert!(!report.is_clean());
    let groups: BTreeSet<_> = report
        .differences
        .iter()
        .map(|d| (d.consumer.as_str(), d.model.as_str(), d.currency.as_str()))
        .collect();
    assert_eq!(
        groups.into_iter().collect::<Vec<_>>(),
        [("team-a", "claude-haiku-2026-01-15", "EUR")]
    );
    let deltas: Vec<(&str, i64)> = report
        .differences
        .iter()
        .map(|d| (d.field, d.kafka - d.clickhouse))
        .collect();
    assert_eq!(
        deltas,
        [
            ("events", 1),
            ("prompt_tokens", 13),
            ("cached_prompt_tokens", 6),
            ("completion_tokens", 21),
            ("reasoning_tokens", 7),
            ("cache_write_5m_tokens", 3),
            ("cache_write_1h_tokens", 2),
            ("cost_micros", 222),
        ]
    );
    assert_eq!(report.event_differences_found, 1);
    let listed = &report.event_differences[0];
    assert_eq!(listed.event_id, victim.id.hyphenated().to_string());
    assert_eq!(listed.kind, EventDifferenceKind::MissingInClickhouse);
    assert_eq!(listed.kafka.as_ref(), Some(&victim_record));
    assert_eq!(listed.clickhouse, None);
    assert_eq!(report.kafka_totals.events - report.clickhouse_totals.events, 1);

    // The command prints the difference and the event, and exits 1.
    let output = audit_command(&fixture, &[]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&victim.id.hyphenated().to_string()), "{stdout}");
    assert!(stdout.contains("missing_in_clickhouse"), "{stdout}");
    assert!(
        last_line(&output).starts_with("DIFFERENCES: 8 field(s) in 1 of 9 groups differ"),
        "{stdout}"
    );
    // And as JSON, for scripts.
    let output = audit_command(&fixture, &["--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["differences"].as_array().unwrap().len(), 8);
    assert_eq!(json["event_differences"][0]["kind"], "missing_in_clickhouse");

    common::drop_database(&fixture.ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_table_holds_the_same_rows_as_the_ledger() {
    let (fixture, _) = ingested().await;
    let rebuild = RebuildSettings {
        batch_size: 64,
        ..RebuildSettings::new(
            &fixture.brokers,
            &fixture.topic,
            fixture.ch.clone(),
            "usage_events_rebuilt",
            from(),
            to(),
            Arc::new(prices()),
        )
    };
    let summary = rebuild::run(&rebuild).await.unwrap();
    assert_eq!(summary.rows, IN_RANGE as u64);
    assert_eq!(summary.duplicates, (IN_RANGE / REDELIVERED_EVERY) as u64);
    assert_eq!(summary.outside_range, AFTER_RANGE as u64);
    assert_eq!(summary.undecodable, 1);
    assert!(summary.unpriced > 0, "llama-3 has no price");
    assert_eq!(summary.unpriced_models, ["llama-3-2026-01-15"]);

    // Row for row the same, but for when and from which delivery each row was written.
    let original = rows(&fixture, "usage_events").await;
    let rebuilt = rows(&fixture, "usage_events_rebuilt").await;
    assert_eq!(original.lines().count(), IN_RANGE);
    assert_eq!(rebuilt, original);

    let report = audit::run(&settings(&fixture, "usage_events_rebuilt"))
        .await
        .unwrap();
    assert!(report.is_clean(), "{}", report.to_text());

    // A rebuild never writes into an existing table.
    let again = rebuild::run(&rebuild).await.unwrap_err();
    assert_eq!(again.kind(), "config");
    assert!(again.to_string().contains("exists"), "{again}");

    common::drop_database(&fixture.ch).await;
}

/// Deletes one row with a mutation and waits until it is applied.
async fn delete_event(fixture: &Fixture, event_id: &str) {
    let client = fixture.ch.client();
    client
        .query("ALTER TABLE usage_events DELETE WHERE event_id = ?")
        .bind(event_id)
        .execute()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let pending: u64 = client
            .query("SELECT count() FROM system.mutations WHERE database = ? AND table = 'usage_events' AND is_done = 0")
            .bind(fixture.ch.database.as_str())
            .fetch_one()
            .await
            .unwrap();
        let left: u64 = client
            .query("SELECT count() FROM usage_events WHERE event_id = ?")
            .bind(event_id)
            .fetch_one()
            .await
            .unwrap();
        if pending == 0 && left == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the DELETE mutation did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of `table` in the range, FINAL, as tab-separated text ordered by event id — every column but
/// `ingested_at` and the Kafka position (a redelivered event may be kept from either delivery).
async fn rows(fixture: &Fixture, table: &str) -> String {
    let sql = format!(
        "SELECT * FROM (SELECT event_id, event_time, source, request_id, consumer_id, key_id, endpoint, route, \
         model_requested, model_served, provider, instance, attempts, attempt_count, stream, outcome, http_status, \
         prompt_tokens_estimated, prompt_estimate_source, prompt_tokens, completion_tokens, total_tokens, \
         cached_prompt_tokens, usage_source, latency_ms, ttfb_ms, started_at_ms, finished_at_ms, cost_micros, \
         currency, price_version, reasoning_tokens, cache_write_5m_tokens, cache_write_1h_tokens, unpriced \
         FROM {table} FINAL WHERE finished_at_ms >= ? AND finished_at_ms < ?) \
         ORDER BY event_id"
    );
    let bytes = fixture
        .ch
        .client()
        .query(&sql)
        .bind(from().timestamp_millis() as u64)
        .bind(to().timestamp_millis() as u64)
        .fetch_bytes("TabSeparated")
        .unwrap()
        .collect()
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

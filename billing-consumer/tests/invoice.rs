//! Invoices against the real broker and ClickHouse: a consumer's November is ingested with a price table whose
//! gpt-4o-mini price changes on the 15th, and the invoice has exactly the line items and totals the price
//! versions give — an event just before the change at the old price, one at the change at the new one, each
//! event rounded once, cached tokens at the cached price, an unpriced model apart, the neighbouring months and
//! the other consumers left out, a redelivered event counted once. Lines are per served model (the events are
//! served by dated snapshots, priced as their families), and a request that failed over to another model is
//! invoiced for the model that answered. Reasoning tokens and prompt-cache writes are invoiced at their own
//! prices (or, for an entry without them, exactly as before they had prices), the per-request fee is charged
//! only when a provider served the request, the replay audit agrees to the micro-unit, and the unpriced served
//! models of the month are listed.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::DateTime;
use common::ledger::Fixture;
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::replay::audit::{self, AuditSettings};
use tollgate_billing_consumer::reports::invoice::{self, Invoice, Period};
use tollgate_billing_consumer::reports::unpriced;
use tollgate_schemas::usage::{Outcome, UsageEvent};

const PRICES: &str = r#"
    [[prices]]
    model = "gpt-4o-mini"
    effective_from = "2026-10-01"
    currency = "USD"
    input_per_mtok = "0.15"
    cached_input_per_mtok = "0.075"
    output_per_mtok = "0.60"

    [[prices]]
    model = "gpt-4o-mini"
    effective_from = "2026-11-15"
    currency = "USD"
    input_per_mtok = "0.10"
    cached_input_per_mtok = "0.05"
    output_per_mtok = "0.40"

    [[prices]]
    model = "claude-haiku"
    effective_from = "2026-01-01"
    currency = "EUR"
    input_per_mtok = "1"
    cached_input_per_mtok = "0.10"
    output_per_mtok = "5"
"#;

fn ms(rfc3339: &str) -> u64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis() as u64
}

/// `consumer` used `prompt` tokens (`cached` of them cached) and `completion` tokens of `model` at `at`.
fn used(
    consumer: &str,
    model: &str,
    prompt: u32,
    cached: Option<u32>,
    completion: u32,
    at: &str,
) -> UsageEvent {
    let mut event = common::usage_event(
        "tollgate-gateway/gw-1",
        consumer,
        model,
        prompt,
        completion,
        ms(at),
    );
    event.data.cached_prompt_tokens = cached;
    event
}

/// A line item as (model, price version, currency, requests, input, cached, output, amount).
type Line = (String, String, String, u64, u64, u64, u64, String);

fn lines(invoice: &Invoice) -> Vec<Line> {
    invoice
        .lines
        .iter()
        .map(|l| {
            (
                l.model.clone(),
                l.price_version.clone(),
                l.currency.clone(),
                l.requests,
                l.input_tokens,
                l.cached_input_tokens,
                l.output_tokens,
                l.amount.clone(),
            )
        })
        .collect()
}

fn line(model: &str, version: &str, currency: &str, counts: [u64; 4], amount: &str) -> Line {
    (
        model.into(),
        version.into(),
        currency.into(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        amount.into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_with_a_price_change_is_invoiced_per_price_version_to_the_micro_unit() {
    let fixture = Fixture::new().await;
    let at_the_change = used(
        "team-a",
        "gpt-4o-mini",
        1_000_000,
        None,
        500_000,
        "2026-11-15T00:00:00Z",
    );
    let events = vec![
        // Old price: 200 × 0.15 + 1,000 cached × 0.075 + 300 × 0.60 = 285 micro-USD.
        used(
            "team-a",
            "gpt-4o-mini",
            1_200,
            Some(1_000),
            300,
            "2026-11-03T10:00:00Z",
        ),
        // The last millisecond of the old price: 10 × 0.15 + 1 × 0.60 = 2.1 → 2.
        used("team-a", "gpt-4o-mini", 10, None, 1, "2026-11-14T23:59:59.999Z"),
        // The new price from its first millisecond: 1,000,000 × 0.10 + 500,000 × 0.40 = 300,000 (0.30 USD).
        at_the_change.clone(),
        // 5 × 0.10 = 0.5 → 1: half up.
        used("team-a", "gpt-4o-mini", 5, None, 0, "2026-11-30T23:59:59.999Z"),
        // EUR: 60 × 1 + 40 cached × 0.10 + 50 × 5 = 314 micro-EUR.
        used(
            "team-a",
            "claude-haiku",
            100,
            Some(40),
            50,
            "2026-11-20T08:00:00Z",
        ),
        // No price for llama-3: a line of its own, amount 0, not in the totals.
        used("team-a", "llama-3", 7, None, 3, "2026-11-21T12:00:00Z"),
        // Not in team-a's November: the months around it and another consumer.
        used(
            "team-a",
            "gpt-4o-mini",
            1_000,
            None,
            1_000,
            "2026-10-31T23:59:59.999Z",
        ),
        used(
            "team-a",
            "gpt-4o-mini",
            1_000,
            None,
            1_000,
            "2026-12-01T00:00:00Z",
        ),
        used(
            "team-b",
            "gpt-4o-mini",
            1_000,
            None,
            1_000,
            "2026-11-10T00:00:00Z",
        ),
        // Delivered twice: counted once.
        at_the_change,
    ];
    fixture.produce_all(&events).await;
    let prices = PriceTable::from_toml(PRICES).unwrap();
    fixture.ingest(prices.clone(), events.len() as i64).await;

    let november = Period::parse("2026-11").unwrap();
    let invoice = invoice::invoice(&fixture.ch, "team-a", november, Some(&prices))
        .await
        .unwrap();
    assert_eq!(
        lines(&invoice),
        [
            line(
                "claude-haiku-2026-01-15",
                "claude-haiku@2026-01-01",
                "EUR",
                [1, 60, 40, 50],
                "0.000314"
            ),
            line(
                "gpt-4o-mini-2026-01-15",
                "gpt-4o-mini@2026-10-01",
                "USD",
                [2, 210, 1_000, 301],
                "0.000287"
            ),
            line(
                "gpt-4o-mini-2026-01-15",
                "gpt-4o-mini@2026-11-15",
                "USD",
                [2, 1_000_005, 0, 500_000],
                "0.300001"
            ),
            line("llama-3-2026-01-15", "", "", [1, 7, 0, 3], "0.00"),
        ]
    );
    let totals: Vec<_> = invoice
        .totals
        .iter()
        .map(|t| {
            (
                t.currency.as_str(),
                t.requests,
                t.amount_micros,
                t.amount.as_str(),
            )
        })
        .collect();
    assert_eq!(
        totals,
        [("EUR", 1, 314, "0.000314"), ("USD", 4, 300_288, "0.300288")]
    );
    assert_eq!(invoice.unpriced_requests, 1);
    let unit = invoice.lines[1].unit_prices.as_ref().unwrap();
    assert_eq!(
        (
            unit.input_per_mtok.as_str(),
            unit.cached_input_per_mtok.as_str(),
            unit.output_per_mtok.as_str()
        ),
        ("0.15", "0.075", "0.60")
    );

    // The stored per-event costs are what the invoice adds up.
    let stored: i64 = fixture
        .ch
        .client()
        .query(
            "SELECT sum(cost_micros) FROM usage_events FINAL WHERE consumer_id = 'team-a' \
             AND event_time >= toDateTime('2026-11-01 00:00:00') AND event_time < toDateTime('2026-12-01 00:00:00') \
             AND currency = 'USD'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stored, 300_288);

    // October and December hold one event each, at the old and the new price.
    let october = invoice::invoice(&fixture.ch, "team-a", Period::parse("2026-10").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        lines(&october),
        [line(
            "gpt-4o-mini-2026-01-15",
            "gpt-4o-mini@2026-10-01",
            "USD",
            [1, 1_000, 0, 1_000],
            "0.00075"
        )]
    );
    let december = invoice::invoice(&fixture.ch, "team-a", Period::parse("2026-12").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(december.totals[0].amount, "0.0005");

    // The table a person reads ends with the totals and the note on unpriced requests.
    let table = invoice.to_table();
    assert!(table.starts_with("Invoice for team-a, 2026-11 (2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z"));
    assert!(
        table.ends_with("1 request(s) had no price in force and are not in the totals.\n"),
        "{table}"
    );

    common::drop_database(&fixture.ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_invoiced_for_the_model_that_served_it() {
    let fixture = Fixture::new().await;
    let served_by = |requested: &str, served: &str, prompt: u32, completion: u32, at: &str| {
        let mut event = used("team-a", requested, prompt, None, completion, at);
        event.data.model_served = served.into();
        event
    };
    let mut prices = PRICES.to_owned();
    // A dated snapshot priced separately keeps its own price.
    prices.push_str(
        r#"
        [[prices]]
        model = "gpt-4o-mini-2024-07-18"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "2"
        output_per_mtok = "4"
        "#,
    );
    let events = vec![
        // gpt-4o-mini asked for, claude-haiku answered after a failover: 1,000 × 1 + 100 × 5 = 1,500 micro-EUR.
        served_by(
            "gpt-4o-mini",
            "claude-haiku-20240307",
            1_000,
            100,
            "2026-11-03T10:00:00Z",
        ),
        // The other way round, at the family's price: 1,000 × 0.15 + 100 × 0.60 = 210 micro-USD.
        served_by(
            "claude-haiku",
            "gpt-4o-mini-latest",
            1_000,
            100,
            "2026-11-04T10:00:00Z",
        ),
        // The snapshot with its own price: 1,000 × 2 + 100 × 4 = 2,400 micro-USD.
        served_by(
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            1_000,
            100,
            "2026-11-05T10:00:00Z",
        ),
        // A priced model asked for, an unpriced one answered: unpriced, never the requested model's price.
        served_by("gpt-4o-mini", "llama-3-70b", 10, 10, "2026-11-06T10:00:00Z"),
    ];
    fixture.produce_all(&events).await;
    let prices = PriceTable::from_toml(&prices).unwrap();
    fixture.ingest(prices.clone(), events.len() as i64).await;

    let november = Period::parse("2026-11").unwrap();
    let invoice = invoice::invoice(&fixture.ch, "team-a", november, Some(&prices))
        .await
        .unwrap();
    assert_eq!(
        lines(&invoice),
        [
            line(
                "claude-haiku-20240307",
                "claude-haiku@2026-01-01",
                "EUR",
                [1, 1_000, 0, 100],
                "0.0015"
            ),
            line(
                "gpt-4o-mini-2024-07-18",
                "gpt-4o-mini-2024-07-18@2026-01-01",
                "USD",
                [1, 1_000, 0, 100],
                "0.0024"
            ),
            line(
                "gpt-4o-mini-latest",
                "gpt-4o-mini@2026-10-01",
                "USD",
                [1, 1_000, 0, 100],
                "0.00021"
            ),
            line("llama-3-70b", "", "", [1, 10, 0, 10], "0.00"),
        ]
    );
    assert_eq!(invoice.unpriced_requests, 1);

    common::drop_database(&fixture.ch).await;
}

/// A line item's token types as (input, cached, 5-minute writes, 1-hour writes, output, reasoning).
fn token_types(line: &invoice::LineItem) -> [u64; 6] {
    [
        line.input_tokens,
        line.cached_input_tokens,
        line.cache_write_5m_tokens,
        line.cache_write_1h_tokens,
        line.output_tokens,
        line.reasoning_tokens,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_type_is_invoiced_at_its_own_price_and_the_audit_agrees() {
    let fixture = Fixture::new().await;
    let mut prices = PRICES.to_owned();
    prices.push_str(
        r#"
        [[prices]]
        model = "claude-sonnet-4-5"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "3"
        cached_input_per_mtok = "0.30"
        cache_write_5m_per_mtok = "3.75"
        cache_write_1h_per_mtok = "6"
        output_per_mtok = "15"
        reasoning_per_mtok = "20"
        per_request = "0.001"
        "#,
    );
    let with = |mut event: UsageEvent, w5: Option<u32>, w1: Option<u32>, reasoning: Option<u32>| {
        event.data.cache_write_5m_tokens = w5;
        event.data.cache_write_1h_tokens = w1;
        event.data.reasoning_tokens = reasoning;
        event
    };
    let mut failed = used(
        "team-a",
        "claude-sonnet-4-5",
        100,
        None,
        0,
        "2026-11-03T10:00:00Z",
    );
    failed.data.outcome = Outcome::UpstreamError;
    failed.data.http_status = 502;
    let events = vec![
        // 10,000 prompt = 4,000 uncached + 2,000 cached + 3,000 5-min + 1,000 1-h writes; 500 completion = 300
        // output + 200 reasoning: 4,000 × 3 + 2,000 × 0.30 + 3,000 × 3.75 + 1,000 × 6 + 300 × 15 + 200 × 20
        // = 38,350, + 1,000 fee = 39,350 micro-USD.
        with(
            used(
                "team-a",
                "claude-sonnet-4-5",
                10_000,
                Some(2_000),
                500,
                "2026-11-02T10:00:00Z",
            ),
            Some(3_000),
            Some(1_000),
            Some(200),
        ),
        // Failed upstream: 100 × 3 = 300, no fee.
        failed,
        // More reported than the prompt and completion hold: 60 cached, 30 5-min, 10 1-h writes, 0 uncached;
        // 10 reasoning, 0 output: 60 × 0.30 + 30 × 3.75 + 10 × 6 + 10 × 20 = 390.5 → 391, + 1,000 = 1,391.
        with(
            used(
                "team-a",
                "claude-sonnet-4-5",
                100,
                Some(60),
                10,
                "2026-11-04T10:00:00Z",
            ),
            Some(30),
            Some(50),
            Some(25),
        ),
        // An entry without the new prices prices as before: 1,200 × 0.15 + 300 × 0.60 = 360, the 500 cache
        // writes at the input price and the 100 reasoning tokens at the output price.
        with(
            used("team-a", "gpt-4o-mini", 1_200, None, 300, "2026-11-05T10:00:00Z"),
            Some(500),
            None,
            Some(100),
        ),
        // No price: unpriced, listed.
        used("team-a", "llama-3", 7, None, 3, "2026-11-06T10:00:00Z"),
    ];
    fixture.produce_all(&events).await;
    let prices = PriceTable::from_toml(&prices).unwrap();
    fixture.ingest(prices.clone(), events.len() as i64).await;

    let november = Period::parse("2026-11").unwrap();
    let invoice = invoice::invoice(&fixture.ch, "team-a", november, Some(&prices))
        .await
        .unwrap();
    assert_eq!(
        lines(&invoice),
        [
            line(
                "claude-sonnet-4-5-2026-01-15",
                "claude-sonnet-4-5@2026-01-01",
                "USD",
                [3, 4_100, 2_060, 300],
                "0.041041"
            ),
            line(
                "gpt-4o-mini-2026-01-15",
                "gpt-4o-mini@2026-10-01",
                "USD",
                [1, 700, 0, 200],
                "0.00036"
            ),
            line("llama-3-2026-01-15", "", "", [1, 7, 0, 3], "0.00"),
        ]
    );
    assert_eq!(
        token_types(&invoice.lines[0]),
        [4_100, 2_060, 3_030, 1_010, 300, 210]
    );
    assert_eq!(token_types(&invoice.lines[1]), [700, 0, 500, 0, 200, 100]);
    let unit = invoice.lines[0].unit_prices.as_ref().unwrap();
    assert_eq!(
        (
            unit.cache_write_5m_per_mtok.as_str(),
            unit.cache_write_1h_per_mtok.as_str(),
            unit.reasoning_per_mtok.as_str(),
            unit.per_request.as_str()
        ),
        ("3.75", "6.00", "20.00", "0.001")
    );
    assert_eq!(invoice.totals[0].amount_micros, 41_401);
    assert_eq!(invoice.unpriced_requests, 1);

    // The audit recomputes every event from the topic with the same prices and finds the ledger in agreement,
    // on every token type and on the cost.
    let report = audit::run(&AuditSettings::new(
        &fixture.brokers,
        &fixture.topic,
        fixture.ch.clone(),
        november.start(),
        november.end(),
        Some(Arc::new(prices.clone())),
    ))
    .await
    .unwrap();
    assert!(report.is_clean(), "{}", report.to_text());
    assert_eq!(report.kafka_totals.cost_micros, 41_401);
    assert_eq!(
        (
            report.clickhouse_totals.reasoning_tokens,
            report.clickhouse_totals.cache_write_5m_tokens,
            report.clickhouse_totals.cache_write_1h_tokens
        ),
        (325, 3_530, 1_050)
    );
    assert_eq!(report.unpriced_models, ["llama-3-2026-01-15"]);

    // The unpriced served models of the month, as an alert or a report reads them.
    let missing = unpriced::unpriced_models(&fixture.ch, "usage_events", november.start(), november.end())
        .await
        .unwrap();
    let missing: Vec<_> = missing
        .iter()
        .map(|m| (m.model.as_str(), m.events, m.consumers))
        .collect();
    assert_eq!(missing, [("llama-3-2026-01-15", 1, 1)]);
    let flagged: u64 = fixture
        .ch
        .client()
        .query("SELECT count() FROM usage_events FINAL WHERE unpriced")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(flagged, 1);

    common::drop_database(&fixture.ch).await;
}

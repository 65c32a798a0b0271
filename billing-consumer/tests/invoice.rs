//! Invoices against the real broker and ClickHouse: a consumer's November is ingested with a price table whose
//! gpt-4o-mini price changes on the 15th, and the invoice has exactly the line items and totals the price
//! versions give — an event just before the change at the old price, one at the change at the new one, each
//! event rounded once, cached tokens at the cached price, an unpriced model apart, the neighbouring months and
//! the other consumers left out, a redelivered event counted once. Lines are per served model (the events are
//! served by dated snapshots, priced as their families), and a request that failed over to another model is
//! invoiced for the model that answered.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::DateTime;
use common::ledger::Fixture;
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::reports::invoice::{self, Invoice, Period};
use tollgate_schemas::usage::UsageEvent;

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

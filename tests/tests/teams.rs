//! Teams on the real stack: organisation → team → consumer. Each usage event carries the team and organisation
//! its consumer had when the request was made — so moving the consumer later (through the admin API) never
//! rewrites its history — and the invoice of a team, or of an organisation, adds up exactly, to the micro-unit, to
//! the invoices of the consumers it grouped.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::json;
use tollgate_billing_consumer::reports::invoice::{Billed, Invoice};
use tollgate_tests::admin::{ADMIN_KEY, admin, admin_toml};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions};

const TEAMS: &str = r#"
[[teams]]
name = "acme"
[[teams]]
name = "research"
parent = "acme"
[[teams]]
name = "ops"
parent = "acme"
"#;

const PRICES: &str = r#"
[[prices]]
model = "gpt-4o-mini"
effective_from = "2024-07-18"
currency = "USD"
input_per_mtok = "0.15"
cached_input_per_mtok = "0.075"
output_per_mtok = "0.60"
"#;

async fn chat(stack: &Stack, key: &str, words: usize) {
    let content: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    let auth = format!("Bearer {key}");
    let reply = stack
        .post_json(
            "/v1/chat/completions",
            &[("authorization", auth.as_str())],
            &json!({"model": MODEL, "messages": [{"role": "user", "content": content.join(" ")}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn usd(invoice: &Invoice) -> (u64, u64, u64, i64) {
    invoice
        .totals
        .iter()
        .find(|t| t.currency == "USD")
        .map_or((0, 0, 0, 0), |t| {
            (t.requests, t.input_tokens, t.output_tokens, t.amount_micros)
        })
}

#[actix_rt::test]
async fn events_carry_the_team_of_their_time_and_team_invoices_add_up_to_their_consumers() {
    let stack = Stack::start(StackOptions {
        extra_toml: format!("{TEAMS}\n{}", admin_toml("config_topic = \"{config_topic}\"")),
        consumer_toml: vec![
            ("team-a", "team = \"research\"".to_owned()),
            ("team-b", "team = \"research\"".to_owned()),
            ("team-c", "team = \"ops\"".to_owned()),
        ],
        prices_toml: Some(PRICES.to_owned()),
        ..StackOptions::default()
    })
    .await;
    for (i, (_, _, key)) in CONSUMERS.iter().enumerate() {
        for words in 0..3 {
            chat(&stack, key, 20 + 7 * i + words).await;
        }
    }
    let rows = stack.wait_for_usage_rows(9, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 9);
    let placed = stack
        .query("SELECT consumer_id, team, organization, count() AS n FROM usage_events FINAL GROUP BY consumer_id, team, organization ORDER BY consumer_id")
        .await;
    let placed: Vec<(String, String, String)> = placed
        .iter()
        .map(|r| {
            (
                r["consumer_id"].as_str().unwrap().to_owned(),
                r["team"].as_str().unwrap().to_owned(),
                r["organization"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("team-a".into(), "research".into(), "acme".into()),
            ("team-b".into(), "research".into(), "acme".into()),
            ("team-c".into(), "ops".into(), "acme".into()),
        ]
    );

    // team-c moves to research: its next request is research's, its earlier ones stay ops'.
    let base = stack.admin_url.clone().unwrap();
    let patched = admin(
        &base,
        "PATCH",
        "/admin/v1/consumers/team-c",
        Some(ADMIN_KEY),
        Some(&json!({"team": "research"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    // In force once this replica has read its own change back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = admin(&base, "GET", "/admin/v1/consumers/team-c", Some(ADMIN_KEY), None).await;
        if shown.body["team"] == "research" && shown.version() >= patched.version() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change never applied: {}",
            shown.body
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    chat(&stack, CONSUMERS[2].2, 50).await;
    let rows = stack.wait_for_usage_rows(10, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 10);

    let consumers: Vec<Invoice> = futures_util::future::join_all(
        CONSUMERS
            .iter()
            .map(|(name, _, _)| stack.invoice_this_month(Billed::Consumer((*name).to_owned()))),
    )
    .await;
    let research = stack.invoice_this_month(Billed::Team("research".into())).await;
    let ops = stack.invoice_this_month(Billed::Team("ops".into())).await;
    let acme = stack
        .invoice_this_month(Billed::Organization("acme".into()))
        .await;
    let sum = |parts: &[(u64, u64, u64, i64)]| {
        parts
            .iter()
            .fold((0, 0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2, a.3 + p.3))
    };
    let each: Vec<(u64, u64, u64, i64)> = consumers.iter().map(usd).collect();
    assert!(each.iter().all(|c| c.3 > 0), "priced: {each:?}");
    assert_eq!(
        usd(&ops).0,
        3,
        "team-c's three requests before the move stay ops'"
    );
    assert_eq!(
        usd(&research).0,
        7,
        "team-a's and team-b's, and team-c's after the move"
    );
    assert_eq!(
        sum(&[usd(&research), usd(&ops)]),
        sum(&each),
        "the teams' invoices add up to the consumers', to the micro-unit"
    );
    assert_eq!(usd(&acme), sum(&each), "and the organisation's to its teams'");
    stack.stop().await;
}

//! The usage API on the real stack: `GET /v1/usage` answers a consumer, with its own key, its tokens and spend
//! per served model and per day and where its token quotas stand — and never anyone else's; the month's totals
//! equal its invoice to the micro-unit; the answer says how far the ledger had caught up. `GET /admin/v1/usage`
//! answers an admin the same for any consumer, team or organisation.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_billing_consumer::reports::invoice::Billed;
use tollgate_tests::admin::{ADMIN_KEY, admin, admin_toml};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, http};

const PRICES: &str = r#"
[[prices]]
model = "gpt-4o-mini"
effective_from = "2024-07-18"
currency = "USD"
input_per_mtok = "0.15"
cached_input_per_mtok = "0.075"
output_per_mtok = "0.60"
"#;

async fn get(stack: &Stack, path: &str, key: &str) -> (u16, Value) {
    let mut response = http()
        .get(format!("{}{path}", stack.gateway_url))
        .insert_header(("authorization", format!("Bearer {key}")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

#[actix_rt::test]
async fn a_consumer_reads_its_own_usage_equal_to_its_invoice_and_an_admin_reads_anyones() {
    let stack = Stack::start(StackOptions {
        extra_toml: format!(
            "[[teams]]\nname = \"research\"\n\
             budgets = [{{ id = \"research-daily\", amount = \"20\", currency = \"USD\", period = \"day\" }}]\n{}",
            admin_toml("")
        ),
        consumer_toml: vec![
            (
                "team-a",
                format!(
                    "team = \"research\"\ntoken_limits = [{{ models = [\"{MODEL}\"], limit = 100000, time_window = \"1d\" }}]\n\
                     budgets = [{{ id = \"team-a-monthly\", amount = \"5.00\", currency = \"USD\", period = \"month\" }}]"
                ),
            ),
            ("team-b", "team = \"research\"".to_owned()),
        ],
        prices_toml: Some(PRICES.to_owned()),
        usage_api: true,
        ..StackOptions::default()
    })
    .await;
    for (consumer, requests) in [(0, 3), (1, 2)] {
        for n in 0..requests {
            let auth = format!("Bearer {}", CONSUMERS[consumer].2);
            let reply = stack
                .post_json(
                    "/v1/chat/completions",
                    &[("authorization", auth.as_str())],
                    &json!({"model": MODEL, "messages": [{"role": "user", "content": format!("question {n} of many words")}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    }
    assert_eq!(
        stack.wait_for_usage_rows(5, Duration::from_secs(30)).await.len(),
        5
    );

    let (status, usage) = get(&stack, "/v1/usage", CONSUMERS[0].2).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["billed"], json!({"kind": "consumer", "name": "team-a"}));
    let usd = usage["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["currency"] == "USD")
        .unwrap()
        .clone();
    assert_eq!(usd["requests"], 3);
    let days = usage["days"].as_array().unwrap();
    assert!(
        days.iter().all(|d| d["model"] == "gpt-4o-mini-2024-07-18"),
        "{usage}"
    );
    assert!(usage["ledger_newest_event"].is_string(), "{usage}");

    let invoice = stack.invoice_this_month(Billed::Consumer("team-a".into())).await;
    let invoiced = invoice.totals.iter().find(|t| t.currency == "USD").unwrap();
    assert!(invoiced.amount_micros > 0);
    assert_eq!(
        usd["amount_micros"], invoiced.amount_micros,
        "equal to the invoice, to the micro-unit"
    );
    assert_eq!(usd["amount"], invoiced.amount.as_str());

    let standing = |body: &Value, id: &str| -> Value {
        body["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == id)
            .unwrap_or_else(|| panic!("no standing of {id} in {body}"))
            .clone()
    };
    // The budget's standing is money, counted exactly as the invoice prices the events.
    let budget = standing(&usage, "team-a-monthly");
    assert_eq!(budget["strategy"], "spend", "{budget}");
    assert_eq!(budget["currency"], "USD", "{budget}");
    assert_eq!(budget["limit"], 5_000_000);
    assert_eq!(
        budget["used"], invoiced.amount_micros,
        "a budget's spend is the invoice's amount: {budget}"
    );
    assert_eq!(
        budget["remaining"].as_i64().unwrap(),
        5_000_000 - invoiced.amount_micros
    );
    // The team's budget, where the consumer reads it, counts the whole team's spend.
    let team_budget = standing(&usage, "research-daily");
    assert_eq!(team_budget["limit"], 20_000_000);

    let quota = usage["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["currency"].is_null())
        .unwrap()
        .clone();
    assert_eq!(quota["limit"], 100000);
    assert_eq!(quota["kind"], "consumer");
    let used = quota["used"].as_u64().unwrap();
    assert_eq!(quota["remaining"].as_u64().unwrap(), 100000 - used);
    assert!(used > 0, "{quota}");

    // Nobody else's: the gateway names the consumer.
    let (status, refused) = get(&stack, "/v1/usage?consumer=team-b", CONSUMERS[0].2).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "query");
    let (status, _) = get(&stack, "/v1/usage", "sk-not-a-key").await;
    assert_eq!(status, 401);
    let (status, refused) = get(&stack, "/v1/usage?from=2026-13-01", CONSUMERS[0].2).await;
    assert_eq!(status, 400, "{refused}");

    // An admin reads any consumer, and a team.
    let base = stack.admin_url.clone().unwrap();
    let team_b = admin(
        &base,
        "GET",
        "/admin/v1/usage?consumer=team-b",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(team_b.status, 200, "{}", team_b.body);
    assert_eq!(team_b.body["totals"][0]["requests"], 2);
    let research = admin(
        &base,
        "GET",
        "/admin/v1/usage?team=research",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(research.status, 200, "{}", research.body);
    let team_total = research.body["totals"][0]["amount_micros"].as_i64().unwrap();
    let b_total = team_b.body["totals"][0]["amount_micros"].as_i64().unwrap();
    assert_eq!(
        team_total,
        invoiced.amount_micros + b_total,
        "the team's spend is its consumers'"
    );
    let research_budget = standing(&research.body, "research-daily");
    assert_eq!(
        research_budget["used"], team_total,
        "the team's budget has spent what its invoice bills: {research_budget}"
    );
    assert_eq!(
        team_budget["used"], team_total,
        "and the consumer sees the same team standing"
    );
    stack.stop().await;
}

//! One model, one quota, one price (issue 14): all names of a route are one model.
//!
//! A route serves `chat-main` and its alias `mini`. The consumer's token quota names both (validation refuses a
//! limit that names only some of a route's names); requests under either name carry the quota's
//! `x-ratelimit-*-tokens` figures, spend the same quota, and are refused together once it is used up. Every row
//! names the model that answered (`model_served`, read off the answer), which the price table prices — the dated
//! snapshot through its family — whatever name the client used.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::json;
use tollgate_billing_consumer::ledger::pricing::{PriceTable, TokenUsage};
use tollgate_tests::stack::{CONSUMERS, Stack, StackOptions, UPSTREAM_MODEL};

const LIMIT: u64 = 100;

#[actix_web::test]
async fn both_names_of_a_route_spend_one_quota_and_are_priced_as_the_model_that_answered() {
    let stack = Stack::start(StackOptions {
        extra_toml: r#"
[[routes]]
name = "aliased"
models = ["chat-main", "mini"]
targets = [{ instance = "mock-openai" }]
"#
        .into(),
        consumer_toml: vec![(
            "team-a",
            format!(
                r#"token_limits = [{{ models = ["mini", "chat-main"], limit = {LIMIT}, time_window = "1h", rejected_msg = "team-a is out" }}]"#
            ),
        )],
        ..StackOptions::default()
    })
    .await;
    let key = format!("Bearer {}", CONSUMERS[0].2);
    let mut served = Vec::new();
    let refusal = loop {
        let model = if served.len() % 2 == 0 {
            "mini"
        } else {
            "chat-main"
        };
        let reply = stack
            .post_json(
                "/v1/chat/completions",
                &[("authorization", &key)],
                &json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}),
            )
            .await;
        assert_eq!(
            reply.header_u64("x-ratelimit-limit-tokens"),
            Some(LIMIT),
            "`{model}` is under the route's quota"
        );
        if reply.status == 429 {
            break (model, reply);
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
        served.push(model);
        assert!(served.len() <= 10, "{LIMIT} tokens were never used up");
    };
    assert!(served.contains(&"mini") && served.contains(&"chat-main"));
    let (refused_model, reply) = refusal;
    assert_eq!(reply.json()["error"]["message"], "team-a is out");
    // Whichever name comes next, the quota is spent for both.
    let other = if refused_model == "mini" {
        "chat-main"
    } else {
        "mini"
    };
    let again = stack
        .post_json(
            "/v1/chat/completions",
            &[("authorization", &key)],
            &json!({"model": other, "messages": [{"role": "user", "content": "ping"}]}),
        )
        .await;
    assert_eq!(
        again.status, 429,
        "`{other}` escaped the quota `{refused_model}` used up"
    );

    let rows = stack
        .wait_for_usage_rows(served.len() + 2, Duration::from_secs(30))
        .await;
    let prices = PriceTable::from_toml(
        r#"
[[prices]]
model = "gpt-4o-mini"
effective_from = "2026-01-01"
currency = "USD"
input_per_mtok = "0.15"
output_per_mtok = "0.60"
"#,
    )
    .unwrap();
    let answered: Vec<_> = rows.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(answered.len(), served.len());
    for row in answered {
        assert_eq!(row["model_served"], UPSTREAM_MODEL, "{row}");
        let usage = TokenUsage {
            prompt: u32::try_from(row["prompt_tokens"].as_u64().unwrap()).unwrap(),
            cached_prompt: None,
            completion: u32::try_from(row["completion_tokens"].as_u64().unwrap()).unwrap(),
            served: true,
            ..TokenUsage::default()
        };
        let charge = prices.charge(
            row["model_served"].as_str().unwrap(),
            row["finished_at_ms"].as_u64().unwrap(),
            &usage,
        );
        assert_eq!(
            charge.price_version(),
            "gpt-4o-mini@2026-01-01",
            "{row} is priced whichever name it was asked by"
        );
        assert!(charge.cost_micros > 0);
    }
    stack.stop().await;
}

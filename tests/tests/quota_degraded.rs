//! Degraded mode: when billing-consumer's quota snapshots stop arriving (the quota topic unreachable, the quota
//! loop down or lagging past `quota.max_snapshot_age`), every gateway replica keeps enforcing token quotas from
//! its local view — its last snapshots plus everything it spent since — says so in `tollgate_quota_degraded`
//! and `tollgate_quota_snapshot_age_seconds`, and does not fail open. Replicas no longer see each other's usage,
//! so together they can spend up to one quota each: the documented bound, measured here.
//!
//! In its own test binary because the metrics it reads are process-wide.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::json;
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, eventually};

fn metric(stack: &Stack, name: &str) -> Option<String> {
    stack
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len() + 1..].to_owned())
}

#[actix_rt::test]
async fn without_snapshots_each_replica_enforces_the_quota_from_its_own_usage() {
    let limit = 2_000;
    let stack = Stack::start(StackOptions {
        consumer_toml: vec![(
            "team-a",
            format!(r#"token_limits = [{{ models = ["{MODEL}"], limit = {limit}, time_window = "1h" }}]"#),
        )],
        quota_loop: false,
        second_gateway: true,
        ..StackOptions::default()
    })
    .await;
    let auth = format!("Bearer {}", CONSUMERS[0].2);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "a few words of prompt"}], "max_tokens": 40});
    let mut sent = 0;
    let mut served = [0usize; 2];
    for (replica, base) in [stack.gateway_url.clone(), stack.gateway2_url.clone().unwrap()]
        .iter()
        .enumerate()
    {
        loop {
            let reply = stack
                .post_json_to(
                    base,
                    "/v1/chat/completions",
                    &[("authorization", auth.as_str())],
                    &body,
                )
                .await;
            sent += 1;
            if reply.status == 429 {
                break;
            }
            assert_eq!(reply.status, 200, "{}", reply.text());
            served[replica] += 1;
            assert!(
                served[replica] < 500,
                "replica {replica} never refused: it failed open"
            );
        }
    }
    let rows = stack.wait_for_usage_rows(sent, Duration::from_secs(30)).await;
    let used: u64 = rows
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .map(|r| r["total_tokens"].as_u64().unwrap())
        .sum();
    eprintln!(
        "degraded: replicas served {served:?} requests, {used} tokens on a {limit}-token quota \
         (bound: 2 replicas × {limit})"
    );
    assert!(served.iter().all(|&n| n > 0));
    assert!(used <= 2 * limit, "each replica holds its own usage to the quota");
    assert!(
        used > limit,
        "the replicas cannot see each other without snapshots"
    );

    // The gateway says it is degraded (no snapshot or heartbeat since it started).
    eventually(
        "tollgate_quota_degraded to become 1",
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || metric(&stack, "tollgate_quota_degraded").as_deref() == Some("1"),
    )
    .await;
    let age: f64 = metric(&stack, "tollgate_quota_snapshot_age_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(age.is_infinite(), "never heard from the quota loop: {age}");
    stack.stop().await;
}

//! Token quotas on the real stack (reference scenario 4): each consumer has its own hourly token quota on a
//! model, the model has a global one, the consumer's is checked first, and either used up answers 429 with the
//! configured message. Quotas come from the event log: billing-consumer's quota loop sums the usage topic and
//! publishes snapshots that every gateway replica caches, on top of which each replica counts its own usage not
//! yet included. The tests check that limits hold exactly for sequential traffic, that 64 concurrent clients
//! overshoot by no more than the documented bound, that two replicas converge, that windows roll over by the
//! (injected) clock, that an instance's own quota fails over instead of rejecting, and that a restarted quota
//! loop resumes with the right usage.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate_gateway::clock::ManualClock;
use tollgate_tests::stack::{MODEL, Reply, Stack, StackOptions};

const HOUR_MS: u64 = 3_600_000;

/// A chat request whose user message has `words` words; the mock answers with `words + 7` words.
fn chat(words: usize, max_tokens: Option<u64>) -> Value {
    let content: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content.join(" ")}]});
    if let Some(max) = max_tokens {
        body["max_tokens"] = max.into();
    }
    body
}

async fn send(stack: &Stack, base: &str, consumer: &str, body: &Value) -> Reply {
    stack.chat_as(base, consumer, body).await
}

fn consumer_limit(consumer: &'static str, limit: u64, message: &str) -> (&'static str, String) {
    (
        consumer,
        format!(
            r#"token_limits = [{{ models = ["{MODEL}"], limit = {limit}, time_window = "1h", rejected_msg = "{message}" }}]"#
        ),
    )
}

fn model_limit(limit: u64, message: &str) -> String {
    format!(
        r#"
[[token_limits]]
models = ["{MODEL}"]
limit = {limit}
time_window = "1h"
rejected_msg = "{message}"
rejected_type = "insufficient_quota"
"#
    )
}

/// Per consumer: (ok requests, tokens of ok requests, rejected_quota events) from ClickHouse.
async fn ledger(stack: &Stack) -> HashMap<String, (u64, u64, u64)> {
    stack
        .query(
            "SELECT consumer_id, countIf(outcome = 'ok') AS ok, sumIf(total_tokens, outcome = 'ok') AS tokens, \
             countIf(outcome = 'rejected_quota') AS rejected FROM usage_events FINAL GROUP BY consumer_id",
        )
        .await
        .into_iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["consumer_id"].as_str().unwrap().to_owned(),
                (n("ok"), n("tokens"), n("rejected")),
            )
        })
        .collect()
}

/// Waits until ClickHouse holds `rows` events.
async fn settle(stack: &Stack, rows: usize) {
    let found = stack.wait_for_usage_rows(rows, Duration::from_secs(30)).await;
    assert_eq!(
        found.len(),
        rows,
        "every request, admitted or rejected, is one usage event"
    );
}

/// Waits until the quota topic's snapshot of `scope` satisfies `ok`; returns it.
async fn wait_for_snapshot(
    stack: &Stack,
    scope: &str,
    ok: impl Fn(&tollgate_schemas::quota::QuotaSnapshot) -> bool,
) -> tollgate_schemas::quota::QuotaSnapshot {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(snapshot) = stack.latest_snapshots().remove(scope)
            && ok(&snapshot)
        {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "no matching snapshot of {scope}");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

fn scope_of(consumer: &str) -> String {
    format!("consumer={consumer};models={MODEL};window=3600s;strategy=total_tokens")
}

#[actix_rt::test]
async fn reference_scenario_4_holds_each_consumer_to_its_hourly_quota_exactly() {
    let limits = [("team-a", 10_000u64), ("team-b", 20_000), ("team-c", 5_000)];
    let stack = Stack::start(StackOptions {
        extra_toml: model_limit(50_000, "The model's hourly token budget is used up."),
        consumer_toml: limits
            .iter()
            .map(|(c, l)| consumer_limit(c, *l, &format!("{c} has used its {l} tokens this hour.")))
            .collect(),
        ..StackOptions::default()
    })
    .await;
    // Every request reserves its prompt estimate plus max_tokens, which covers the mock's answer.
    let max_tokens = 150;
    let body = chat(60, Some(max_tokens));

    // Round-robin, one request at a time, until every consumer has been refused once.
    let mut refused: HashMap<&str, Reply> = HashMap::new();
    let mut sent = 0;
    while refused.len() < limits.len() {
        for (consumer, _) in limits {
            if refused.contains_key(consumer) {
                continue;
            }
            let reply = send(&stack, &stack.gateway_url, consumer, &body).await;
            sent += 1;
            match reply.status {
                200 => assert!(reply.header_u64("x-ratelimit-remaining-tokens").is_some()),
                429 => {
                    refused.insert(consumer, reply);
                }
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
    }
    settle(&stack, sent).await;
    let ledger = ledger(&stack).await;
    let estimates: HashMap<String, u64> = stack
        .query("SELECT consumer_id, prompt_tokens_estimated FROM usage_events FINAL WHERE outcome = 'rejected_quota'")
        .await
        .into_iter()
        .map(|r| (r["consumer_id"].as_str().unwrap().to_owned(), r["prompt_tokens_estimated"].as_u64().unwrap()))
        .collect();
    let over_reserved = stack
        .query(&format!(
            "SELECT count() AS n FROM usage_events FINAL WHERE outcome = 'ok' \
             AND total_tokens > prompt_tokens_estimated + {max_tokens}"
        ))
        .await;
    assert_eq!(
        over_reserved[0]["n"], 0,
        "the reservation covers every request's actual usage"
    );

    let mut everyone = 0;
    for (consumer, limit) in limits {
        let (ok, used, rejected) = ledger[consumer];
        let reply = &refused[consumer];
        let reservation = estimates[consumer] + max_tokens;
        eprintln!("{consumer}: {ok} requests, {used} of {limit} tokens; refused needing {reservation}");
        assert!(used <= limit, "{consumer} used {used} of {limit}");
        assert!(
            limit - used < reservation,
            "{consumer} was refused with {} tokens left, enough for the {reservation} it needed",
            limit - used
        );
        assert_eq!(rejected, 1, "the refusal is a rejected_quota event");
        let error = &reply.json()["error"];
        assert_eq!(
            error["message"],
            format!("{consumer} has used its {limit} tokens this hour.")
        );
        assert_eq!(error["type"], "rate_limit_exceeded");
        assert_eq!(reply.header_u64("x-ratelimit-limit-tokens"), Some(limit));
        assert!(reply.header_u64("x-ratelimit-remaining-tokens").unwrap() <= limit - used);
        let retry_after = reply.header_u64("retry-after").unwrap();
        assert!(
            (1..=3600).contains(&retry_after),
            "Retry-After runs to the end of the hour: {retry_after}"
        );
        assert!(reply.headers.contains_key("x-ratelimit-reset-tokens"));
        everyone += used;
    }
    assert!(everyone <= 50_000);
    let rejected_rows = stack
        .query("SELECT total_tokens, http_status FROM usage_events FINAL WHERE outcome = 'rejected_quota'")
        .await;
    assert!(
        rejected_rows
            .iter()
            .all(|r| r["total_tokens"] == 0 && r["http_status"] == 429)
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn the_model_quota_refuses_every_consumer_once_it_is_used_up() {
    let message = "gpt-4o-mini has used its 3,000 tokens this hour.";
    let stack = Stack::start(StackOptions {
        extra_toml: model_limit(3_000, message),
        consumer_toml: vec![consumer_limit("team-a", 100_000, "team-a is out")],
        ..StackOptions::default()
    })
    .await;
    let body = chat(60, Some(150));
    let mut sent = 0;
    let refusal = loop {
        let reply = send(&stack, &stack.gateway_url, "team-a", &body).await;
        sent += 1;
        if reply.status != 200 {
            break reply;
        }
        assert!(sent < 100, "the model quota never refused");
    };
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.json()["error"]["message"], message);
    assert_eq!(refusal.json()["error"]["type"], "insufficient_quota");
    // team-b has no quota of its own; the model's refuses it at once.
    let other = send(&stack, &stack.gateway_url, "team-b", &body).await;
    assert_eq!(other.status, 429);
    assert_eq!(other.json()["error"]["message"], message);
    assert_eq!(other.header_u64("x-ratelimit-limit-tokens"), Some(3_000));
    settle(&stack, sent + 1).await;
    let ledger = ledger(&stack).await;
    assert!(ledger["team-a"].1 <= 3_000);
    assert_eq!(ledger["team-b"], (0, 0, 1));
    stack.stop().await;
}

#[actix_rt::test]
async fn sixty_four_concurrent_clients_overshoot_a_quota_by_at_most_the_documented_bound() {
    const CLIENTS: usize = 64;
    let stack = Stack::start(StackOptions {
        consumer_toml: vec![
            consumer_limit("team-a", 10_000, "team-a is out"),
            consumer_limit("team-b", 10_000, "team-b is out"),
        ],
        ..StackOptions::default()
    })
    .await;
    // team-a's clients send no max_tokens: admission reserves the prompt estimate only, and the completion is
    // the excess that concurrent requests in flight can add beyond the limit. team-b's send a max_tokens that
    // covers their answer: the reservation is an upper bound, and nothing may pass the limit.
    let run = |consumer: &'static str, max_tokens: Option<u64>| {
        let stack = &stack;
        async move {
            let body = chat(40, max_tokens);
            let clients = (0..CLIENTS).map(|_| {
                let body = body.clone();
                async move {
                    let mut sent = 0;
                    loop {
                        let reply = send(stack, &stack.gateway_url, consumer, &body).await;
                        sent += 1;
                        match reply.status {
                            200 => {}
                            429 => return sent,
                            other => panic!("unexpected {other}: {}", reply.text()),
                        }
                    }
                }
            });
            join_all(clients).await.into_iter().sum::<usize>()
        }
    };
    let sent = run("team-a", None).await + run("team-b", Some(200)).await;
    settle(&stack, sent).await;
    let ledger = ledger(&stack).await;

    let excess = stack
        .query(
            "SELECT consumer_id, max(total_tokens - prompt_tokens_estimated) AS excess \
             FROM usage_events FINAL WHERE outcome = 'ok' GROUP BY consumer_id",
        )
        .await;
    let excess: HashMap<String, i64> = excess
        .into_iter()
        .map(|r| {
            (
                r["consumer_id"].as_str().unwrap().to_owned(),
                r["excess"].as_i64().unwrap(),
            )
        })
        .collect();
    let (_, used_a, _) = ledger["team-a"];
    let overshoot_a = used_a.saturating_sub(10_000);
    let bound_a = CLIENTS as u64 * u64::try_from(excess["team-a"].max(0)).unwrap();
    eprintln!(
        "64 clients without max_tokens: {used_a} tokens on a 10,000 quota, overshoot {overshoot_a} \
         (bound: 64 × {} = {bound_a})",
        excess["team-a"]
    );
    assert!(
        overshoot_a <= bound_a,
        "overshoot {overshoot_a} > bound {bound_a}"
    );

    let (_, used_b, _) = ledger["team-b"];
    assert!(excess["team-b"] <= 200, "max_tokens covers every answer");
    eprintln!("64 clients with max_tokens: {used_b} tokens on a 10,000 quota, overshoot 0");
    assert!(
        used_b <= 10_000,
        "reservations are upper bounds: no overshoot ({used_b})"
    );
    assert!(used_b > 9_000, "and the quota is not refused early ({used_b})");
    stack.stop().await;
}

#[actix_rt::test]
async fn two_replicas_sharing_a_quota_converge_within_the_snapshot_lag() {
    let stack = Stack::start(StackOptions {
        consumer_toml: vec![consumer_limit("team-c", 10_000, "team-c is out")],
        second_gateway: true,
        ..StackOptions::default()
    })
    .await;
    let gateway2 = stack.gateway2_url.clone().unwrap();
    // Replica 1 spends until fewer than 3,000 tokens are left.
    let body = chat(60, Some(150));
    let mut sent = 0;
    let last_done = loop {
        let reply = send(&stack, &stack.gateway_url, "team-c", &body).await;
        sent += 1;
        let done = Instant::now();
        assert_eq!(reply.status, 200, "{}", reply.text());
        if reply.header_u64("x-ratelimit-remaining-tokens").unwrap() < 3_000 {
            break done;
        }
    };
    // Replica 2 knows only what the snapshots tell it. A probe that needs 3,000 tokens passes while its view
    // is behind and is refused once replica 1's usage reached it.
    let probe = chat(1, Some(3_000));
    let converged_after = loop {
        let reply = send(&stack, &gateway2, "team-c", &probe).await;
        sent += 1;
        if reply.status == 429 {
            break last_done.elapsed();
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            last_done.elapsed() < Duration::from_secs(10),
            "replica 2 never saw replica 1's usage"
        );
    };
    eprintln!(
        "replica 2 refused the probe {} ms after replica 1's last request",
        converged_after.as_millis()
    );
    let rendered = stack.metrics.render();
    for name in ["billing_quota_lag_seconds", "tollgate_quota_snapshot_lag_seconds"] {
        let value = |suffix: &str| {
            rendered
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (sum, count) = (value("sum"), value("count"));
        eprintln!(
            "{name}: {count} snapshots, mean {:.1} ms",
            1000.0 * sum / count.max(1.0)
        );
    }
    assert!(converged_after < Duration::from_secs(5));
    settle(&stack, sent).await;
    let (_, used, _) = ledger(&stack).await["team-c"];
    // What replica 2 admitted before it saw replica 1's usage is the overshoot between replicas: at most its
    // traffic during the snapshot lag. Replica 1 alone never passed the quota.
    let by_replica = stack
        .query(
            "SELECT source, sum(total_tokens) AS used FROM usage_events FINAL \
             WHERE consumer_id = 'team-c' AND outcome = 'ok' GROUP BY source",
        )
        .await;
    let used_by = |source: &str| {
        by_replica
            .iter()
            .find(|r| r["source"] == source)
            .map_or(0, |r| r["used"].as_u64().unwrap())
    };
    let (first, second) = (
        used_by("tollgate-gateway/test-gw"),
        used_by("tollgate-gateway/test-gw-2"),
    );
    eprintln!(
        "team-c used {used} of 10,000: replica 1 {first}, replica 2 {second} (overshoot {})",
        used.saturating_sub(10_000)
    );
    assert!(first <= 10_000, "{first}");
    assert!(
        used.saturating_sub(10_000) <= second,
        "the overshoot is what replica 2 admitted during the lag"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn quota_windows_roll_over_by_the_clock_on_both_sides_of_the_loop() {
    let clock = Arc::new(ManualClock::new());
    let stack = Stack::start(StackOptions {
        consumer_toml: vec![consumer_limit("team-a", 1_000, "team-a is out")],
        clock: Some(clock.clone()),
        ..StackOptions::default()
    })
    .await;
    let body = chat(20, Some(60));
    let spend = || async {
        let mut sent = 0;
        loop {
            let reply = send(&stack, &stack.gateway_url, "team-a", &body).await;
            sent += 1;
            if reply.status == 429 {
                return (sent, reply);
            }
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    };
    let (first, refusal) = spend().await;
    // Move to the next hour: the window that was used up is over.
    let retry_after = refusal.header_u64("retry-after").unwrap();
    clock.advance(Duration::from_secs(retry_after));
    let (second, _) = spend().await;
    settle(&stack, first + second).await;

    let windows = stack
        .query(&format!(
            "SELECT intDiv(finished_at_ms, {HOUR_MS}) AS hour, sumIf(total_tokens, outcome = 'ok') AS used, \
             countIf(outcome = 'ok') AS ok FROM usage_events FINAL GROUP BY hour ORDER BY hour"
        ))
        .await;
    assert_eq!(windows.len(), 2, "two hours of usage: {windows:?}");
    for window in &windows {
        let used = window["used"].as_u64().unwrap();
        assert!(
            used <= 1_000 && used > 800,
            "each hour holds its own 1,000 tokens: {window:?}"
        );
    }
    // billing-consumer windows by event time: its snapshot has moved to the new hour too.
    let second_hour = windows[1]["hour"].as_u64().unwrap() * HOUR_MS;
    let used = windows[1]["used"].as_u64().unwrap();
    let snapshot = wait_for_snapshot(&stack, &scope_of("team-a"), |s| {
        s.window_start_ms == second_hour && s.used == used
    })
    .await;
    assert_eq!(snapshot.window_end_ms, second_hour + HOUR_MS);
    assert_eq!(snapshot.limit, 1_000);
    stack.stop().await;
}

#[actix_rt::test]
async fn an_instance_that_used_its_own_quota_is_failed_over_not_refused() {
    let stack = Stack::start(StackOptions {
        second_mock: true,
        extra_toml: r#"
[[instances]]
name = "capped"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
token_limit = { limit = 1000, time_window = "1m" }

[[instances]]
name = "spare"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
token_limit = { limit = 1000, time_window = "1m" }
"#
        .into(),
        default_targets: Some(r#"[{ instance = "capped", priority = 1 }, { instance = "spare" }]"#.into()),
        ..StackOptions::default()
    })
    .await;
    let body = chat(20, Some(60));
    let mut served_by = Vec::new();
    let refusal = loop {
        let reply = send(&stack, &stack.gateway_url, "team-a", &body).await;
        if reply.status != 200 {
            break reply;
        }
        served_by.push(reply.headers["x-tollgate-instance"].clone());
        assert!(served_by.len() < 100);
    };
    let capped = served_by.iter().filter(|i| *i == "capped").count();
    let spare = served_by.iter().filter(|i| *i == "spare").count();
    eprintln!("capped served {capped}, spare {spare}, then: {}", refusal.text());
    // The preferred instance serves until its quota is used up, then every request moves to the other.
    assert!(capped > 5 && spare > 5);
    assert!(served_by[..capped].iter().all(|i| i == "capped"));
    // Only when both are used up is the client refused.
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.json()["error"]["code"], "instance_quota_exhausted");
    assert!(refusal.header_u64("retry-after").unwrap() <= 60);
    settle(&stack, served_by.len() + 1).await;
    let per_instance = stack
        .query(
            "SELECT instance, sum(total_tokens) AS used FROM usage_events FINAL WHERE outcome = 'ok' \
             GROUP BY instance ORDER BY instance",
        )
        .await;
    for row in per_instance {
        assert!(row["used"].as_u64().unwrap() <= 1_000, "{row:?}");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn a_restarted_quota_loop_rebuilds_its_windows_from_the_usage_topic() {
    let mut stack = Stack::start(StackOptions {
        consumer_toml: vec![consumer_limit("team-b", 100_000, "team-b is out")],
        ..StackOptions::default()
    })
    .await;
    let body = chat(30, None);
    for _ in 0..10 {
        assert_eq!(
            send(&stack, &stack.gateway_url, "team-b", &body).await.status,
            200
        );
    }
    settle(&stack, 10).await;
    let before = ledger(&stack).await["team-b"].1;
    wait_for_snapshot(&stack, &scope_of("team-b"), |s| s.used == before).await;

    // The loop goes away; usage goes on; a new loop starts from nothing but the usage topic.
    stack.stop_quota_loop();
    for _ in 0..5 {
        assert_eq!(
            send(&stack, &stack.gateway_url, "team-b", &body).await.status,
            200
        );
    }
    settle(&stack, 15).await;
    let after = ledger(&stack).await["team-b"].1;
    let restarted_at = tollgate_gateway::clock::wall_ms();
    stack.start_quota_loop();
    let snapshot =
        wait_for_snapshot(&stack, &scope_of("team-b"), |s| s.published_at_ms >= restarted_at).await;
    assert_eq!(
        snapshot.used, after,
        "the rebuilt window counts all 15 requests, each once"
    );
    assert_eq!(snapshot.events, 15);
    stack.stop().await;
}

#[test]
fn the_gateway_and_billing_consumer_read_the_same_scopes_from_one_file() {
    let text = include_str!("../../compose/tollgate.toml");
    let config = tollgate_gateway::Config::from_toml_with_env(text, |_| Some("x".into())).unwrap();
    let mut gateway: Vec<(String, u64)> = config
        .consumers
        .iter()
        .flat_map(|c| c.token_limits.iter())
        .chain(&config.token_limits)
        .chain(config.instances.iter().filter_map(|i| i.token_limit.as_ref()))
        .map(|l| (l.key.clone(), l.limit))
        .collect();
    let mut billing: Vec<(String, u64)> = tollgate_billing_consumer::quota::policy::from_gateway_toml(text)
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.limit))
        .collect();
    gateway.sort();
    billing.sort();
    assert_eq!(
        gateway.len(),
        2,
        "the demo config has a consumer quota and a model quota"
    );
    assert_eq!(gateway, billing);
}

/// A replica that starts after a quota was used up serves only once its quota feed has read the topic: its very
/// first request is refused, not admitted on books that do not know the spending yet.
#[actix_rt::test]
async fn an_exhausted_quota_stays_exhausted_for_a_replica_started_afterwards() {
    let message = "gpt-4o-mini has used its 3,000 tokens this hour.";
    let stack = Stack::start(StackOptions {
        extra_toml: model_limit(3_000, message),
        ..StackOptions::default()
    })
    .await;
    let body = chat(60, Some(150));
    let mut sent = 0;
    loop {
        let reply = send(&stack, &stack.gateway_url, "team-a", &body).await;
        sent += 1;
        if reply.status == 429 {
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(sent < 100, "the model quota never refused");
    }
    // The quota loop has counted every admitted token.
    settle(&stack, sent).await;
    let spent = ledger(&stack).await["team-a"].1;
    let scope = format!("models={MODEL};window=3600s;strategy=total_tokens");
    wait_for_snapshot(&stack, &scope, |s| s.used >= spent).await;

    // A replica of the same file, started now on a spool of its own.
    let spool = tollgate_tests::procs::scratch_dir("spool-restart");
    let text = stack.gateway_toml.replace(
        &format!("dir = {:?}", stack.spool_dir.display().to_string()),
        &format!("dir = {:?}", spool.display().to_string()),
    );
    let config = tollgate_gateway::Config::from_toml_with_env(&text, |name| {
        (name == "PROVIDER_KEY").then(|| tollgate_tests::stack::PROVIDER_KEY.to_owned())
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let restarted = tollgate_gateway::Gateway::start(config, listener, stack.metrics.clone()).unwrap();
    let handle = restarted.handle();
    let running = actix_web::rt::spawn(restarted.run());
    let first = send(&stack, &url, "team-b", &body).await;
    assert_eq!(first.status, 429, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["error"]["message"], message);

    handle.stop(true).await;
    let _ = running.await;
    let _ = std::fs::remove_dir_all(spool);
    stack.stop().await;
}

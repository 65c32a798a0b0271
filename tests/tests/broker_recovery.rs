//! The pipeline recovers from a broker crash by itself. A broker of the test's own is killed with `kill -9`
//! under load and started again on the same storage — alone, or together with billing-consumer (the real
//! binary, also killed with `kill -9`); nothing else is restarted. While the broker is down, the admin API
//! refuses changes and both services' readiness says degraded; afterwards every answered request is in
//! ClickHouse exactly once, quota snapshots flow again, the admin API accepts a change and both services are
//! ready again — each within a bound, and the times it took are printed
//! (`cargo test -p tollgate-tests --test broker_recovery -- --nocapture`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::admin::{ADMIN_KEY, admin, admin_toml};
use tollgate_tests::procs::{ChildBillingConfig, ChildBillingConsumer, PrivateBroker, scratch_dir};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, http, request_id};

/// How long each part of the recovery may take after the broker is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(90);

/// What the load saw: request ids answered 200, and every other answer.
#[derive(Debug, Default)]
struct Load {
    answered: HashSet<String>,
    failed: Vec<(u16, String)>,
}

/// One client sending requests one after another until `stop`.
async fn client(gateway: String, n: usize, stop: Rc<RefCell<bool>>, load: Rc<RefCell<Load>>) {
    let (_, _, key) = CONSUMERS[n % CONSUMERS.len()];
    let mut i = 0;
    while !*stop.borrow() {
        i += 1;
        let sent = http()
            .post(format!("{gateway}/v1/chat/completions"))
            .bearer_auth(key)
            .timeout(Duration::from_secs(30))
            .send_json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("client {n} request {i}")}]}))
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let id = request_id(response.headers());
                let body = response.body().await.unwrap_or_default();
                if status == 200 {
                    load.borrow_mut().answered.insert(id);
                } else {
                    load.borrow_mut()
                        .failed
                        .push((status, String::from_utf8_lossy(&body).into_owned()));
                }
            }
            Err(error) => load.borrow_mut().failed.push((0, error.to_string())),
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` every 200 ms until it holds; how long that took, or a failure naming `what` past the bound.
async fn within(what: &str, since: Instant, mut done: impl AsyncFnMut() -> bool) -> Duration {
    loop {
        if done().await {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < RECOVERY_BOUND,
            "{what} did not recover within {RECOVERY_BOUND:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What is killed beside the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    BrokerAlone,
    BrokerAndBillingConsumer,
}

async fn readyz(url: &str) -> u16 {
    match http().get(format!("{url}/readyz")).force_close().send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn recovers_from(crash: Crash) {
    let mut broker = PrivateBroker::start();
    let stack = Stack::start(StackOptions {
        brokers: Some(broker.brokers()),
        billing: false,
        extra_toml: format!(
            "{}\n[[token_limits]]\nid = \"mini-hourly\"\nmodels = [\"{MODEL}\"]\nlimit = 100000000\ntime_window = \"1h\"\n",
            admin_toml("config_topic = \"{config_topic}\"")
        ),
        ..StackOptions::default()
    })
    .await;
    let scratch = scratch_dir("broker-recovery");
    let brokers = broker.brokers();
    let group = format!("billing-{}", stack.topic);
    let mut billing = ChildBillingConsumer::start(
        &ChildBillingConfig {
            brokers: &brokers,
            ..stack.child_billing_config(&group)
        },
        &scratch,
        "billing-consumer",
    )
    .await;
    let admin_url = stack.admin_url.clone().unwrap();
    let scope = format!("models={MODEL};window=3600s;strategy=total_tokens");
    // Both services ready: the quota loop holds its lease and heartbeats, the gateway reads them.
    within("readiness at start", Instant::now(), async || {
        readyz(&stack.gateway_url).await == 200 && billing.readyz().await.0 == 200
    })
    .await;

    // Four clients, all the time.
    let stop = Rc::new(RefCell::new(false));
    let load = Rc::new(RefCell::new(Load::default()));
    let clients: Vec<_> = (0..4)
        .map(|n| actix_web::rt::spawn(client(stack.gateway_url.clone(), n, stop.clone(), load.clone())))
        .collect();
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(billing.readyz().await.0, 200, "{}", billing.readyz().await.1);

    broker.kill();
    if crash == Crash::BrokerAndBillingConsumer {
        billing.kill();
    }
    // While it is down: the admin API cannot publish, so it refuses the change (nothing changes), and the
    // gateway spools usage events, so it is not ready; nor is billing-consumer, which cannot read its offsets.
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let refused = admin(
        &admin_url,
        "PUT",
        "/admin/v1/consumers/during-outage",
        Some(ADMIN_KEY),
        Some(&json!({"keys": [{"id": "outage-1"}]})),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        readyz(&stack.gateway_url).await,
        503,
        "the gateway spools: degraded"
    );
    if crash == Crash::BrokerAlone {
        let (status, body) = billing.readyz().await;
        assert_eq!(status, 503, "billing-consumer cannot reach the broker: {body}");
    }
    broker.resume();
    if crash == Crash::BrokerAndBillingConsumer {
        billing.resume().await;
    }
    let resumed = Instant::now();
    let resumed_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap();

    // Under the same load: the admin API accepts a change again, quota snapshots flow again (one published
    // after the broker came back), and both services say they are ready — each timed from the restart.
    let admin_back = within("the admin API", resumed, async || {
        // A write that cannot answer yet (the restarted broker not taking it) is tried again.
        http()
            .put(format!("{admin_url}/admin/v1/consumers/after-outage"))
            .insert_header(("X-API-KEY", ADMIN_KEY))
            .timeout(Duration::from_secs(30))
            .send_json(&json!({"keys": [{"id": "after-1"}]}))
            .await
            .is_ok_and(|response| response.status().as_u16() == 201)
    });
    let quota_back = within("quota snapshots", resumed, async || {
        // The broker may not answer yet: then try again.
        stack
            .try_latest_snapshots()
            .is_ok_and(|latest| latest.get(&scope).is_some_and(|s| s.published_at_ms > resumed_ms))
    });
    let ready_back = within("readiness", resumed, async || {
        readyz(&stack.gateway_url).await == 200 && billing.readyz().await.0 == 200
    });
    let (admin_back, quota_back, ready_back) = futures_util::join!(admin_back, quota_back, ready_back);
    actix_web::rt::time::sleep(Duration::from_secs(5).saturating_sub(resumed.elapsed())).await;
    *stop.borrow_mut() = true;
    for client in clients {
        client.await.unwrap();
    }
    let load_stopped = Instant::now();
    let load = Rc::try_unwrap(load).unwrap().into_inner();
    assert!(
        load.failed.is_empty(),
        "answers other than 200: {:?}",
        load.failed
    );
    assert!(
        load.answered.len() > 50,
        "too little load: {}",
        load.answered.len()
    );

    // Every answered request is in the ledger exactly once.
    let expected = load.answered.len();
    let ledger_back = within("the ledger", load_stopped, async || {
        let rows = stack.query("SELECT count() AS n FROM usage_events FINAL").await;
        rows[0]["n"].as_u64() == Some(expected as u64)
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let rows: Vec<Value> = stack.query("SELECT request_id FROM usage_events FINAL").await;
    let ids: HashSet<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rows.len(), expected, "each answered request once");
    assert_eq!(ids, load.answered, "exactly the answered requests");

    println!(
        "{crash:?} killed (kill -9) under load and restarted: {expected} requests answered 200, none failed; \
         from the restart, the admin API took a change after {} ms, a quota snapshot was published after {} ms, \
         both services were ready after {} ms; the ledger held every request once {} ms after the load stopped",
        admin_back.as_millis(),
        quota_back.as_millis(),
        ready_back.as_millis(),
        ledger_back.as_millis()
    );
    billing.stop();
    stack.stop().await;
    broker.stop();
    let _ = std::fs::remove_dir_all(scratch);
}

#[actix_rt::test]
async fn a_broker_killed_under_load_recovers_without_any_other_restart() {
    recovers_from(Crash::BrokerAlone).await;
}

/// The restarted billing-consumer may join the lease group while the killed one still leads it; Tansu 0.6 then
/// forms the group with nobody holding the quota topic's partition, and the lease is taken back as orphaned
/// (`billing-consumer/src/quota/lease.rs`). The bound for quota snapshots covers that.
#[actix_rt::test]
async fn a_broker_and_billing_consumer_killed_together_recover_when_both_are_started_again() {
    recovers_from(Crash::BrokerAndBillingConsumer).await;
}

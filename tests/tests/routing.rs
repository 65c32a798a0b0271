//! Routing and failover on the real stack: weighted splits are exact, a canary can move to another upstream
//! path, a failing instance loses its traffic without costing a client request and gets it back when it
//! recovers, `Retry-After` is honoured, slow instances time out into a failover, and active health checks move
//! traffic off an instance before any client meets its errors.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use tollgate_tests::mock_provider::{Behaviour, MockProvider, Received};
use tollgate_tests::stack::{CONSUMERS, Stack, StackOptions, http};

/// One client request's result.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    status: u16,
    instance: String,
}

async fn call(gateway: &str, model: &str) -> Outcome {
    let at = Instant::now();
    let response = http()
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(CONSUMERS[0].2)
        .send_json(&json!({"model": model, "messages": [{"role": "user", "content": "route me"}]}))
        .await;
    match response {
        Ok(mut r) => {
            let _ = r.body().await;
            let instance = r
                .headers()
                .get("x-tollgate-instance")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Outcome {
                at,
                status: r.status().as_u16(),
                instance,
            }
        }
        Err(_) => Outcome {
            at,
            status: 0,
            instance: String::new(),
        },
    }
}

/// `n` requests, `concurrency` at a time.
async fn burst(gateway: &str, model: &str, n: usize, concurrency: usize) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(n);
    for wave in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        out.extend(join_all(wave.iter().map(|_| call(gateway, model))).await);
    }
    out
}

/// `workers` clients sending back to back until `until`.
async fn load(gateway: &str, model: &str, workers: usize, until: Instant) -> Vec<Outcome> {
    let tasks = (0..workers).map(|_| {
        let (gateway, model) = (gateway.to_owned(), model.to_owned());
        actix_web::rt::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                out.push(call(&gateway, &model).await);
            }
            out
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect()
}

fn by_instance(outcomes: &[Outcome]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for o in outcomes {
        *counts.entry(o.instance.clone()).or_insert(0) += 1;
    }
    counts
}

/// Client requests (not health probes) the mock received.
fn client_requests(mock: &MockProvider) -> Vec<Received> {
    mock.received()
        .into_iter()
        .filter(|r| r.body["metadata"]["probe"] != true)
        .collect()
}

fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_text(stack: &Stack) -> String {
    let mut response = http()
        .get(format!("{}/metrics", stack.gateway_url))
        .send()
        .await
        .unwrap();
    String::from_utf8(response.body().limit(8 << 20).await.unwrap().to_vec()).unwrap()
}

fn two_mocks(extra: &str) -> StackOptions {
    StackOptions {
        second_mock: true,
        extra_toml: extra.into(),
        ..StackOptions::default()
    }
}

#[actix_rt::test]
async fn weighted_splits_are_exact_50_50_gives_500_500_and_80_20_gives_800_200() {
    let stack = Stack::start(two_mocks(
        r#"
[[instances]]
name = "blue-50"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "green-50"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "blue-80"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "green-20"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "split-50"
models = ["split-50"]
targets = [{ instance = "blue-50", weight = 50 }, { instance = "green-50", weight = 50 }]
[[routes]]
name = "split-80"
models = ["split-80"]
targets = [{ instance = "blue-80", weight = 80 }, { instance = "green-20", weight = 20 }]
"#,
    ))
    .await;

    let fifty = burst(&stack.gateway_url, "split-50", 1000, 20).await;
    let eighty = burst(&stack.gateway_url, "split-80", 1000, 20).await;
    assert!(fifty.iter().chain(&eighty).all(|o| o.status == 200));
    assert_eq!(
        by_instance(&fifty),
        HashMap::from([("blue-50".into(), 500), ("green-50".into(), 500)])
    );
    assert_eq!(
        by_instance(&eighty),
        HashMap::from([("blue-80".into(), 800), ("green-20".into(), 200)])
    );

    // The providers saw the same split, and Prometheus shows it per upstream.
    let seen = |mock: &MockProvider, model: &str| {
        client_requests(mock)
            .iter()
            .filter(|r| r.body["model"] == model)
            .count()
    };
    assert_eq!(seen(&stack.mock, "split-80"), 800);
    assert_eq!(seen(stack.mock2.as_ref().unwrap(), "split-80"), 200);
    let text = metrics_text(&stack).await;
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_attempts_total",
            r#"instance="blue-80",result="ok""#
        ),
        Some(800.0)
    );
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_attempts_total",
            r#"instance="green-20",result="ok""#
        ),
        Some(200.0)
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_canary_on_another_api_version_gets_exactly_its_share_through_a_path_rewrite() {
    // Reference scenario 1: one client path, two upstream versions, 80/20.
    let stack = Stack::start(StackOptions {
        extra_toml: r#"
[[instances]]
name = "api-v1"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "api-v2"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "canary"
models = ["canary-model"]
targets = [
  { instance = "api-v1", weight = 80, path = "/v1/chat/completions" },
  { instance = "api-v2", weight = 20, path = "/v2/chat/completions" },
]
"#
        .into(),
        ..StackOptions::default()
    })
    .await;
    let outcomes = burst(&stack.gateway_url, "canary-model", 100, 10).await;
    assert!(outcomes.iter().all(|o| o.status == 200));
    let mut paths = HashMap::new();
    for r in client_requests(&stack.mock) {
        *paths.entry(r.path).or_insert(0) += 1;
    }
    assert_eq!(
        paths,
        HashMap::from([
            ("/v1/chat/completions".into(), 80),
            ("/v2/chat/completions".into(), 20)
        ])
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn an_instance_failing_under_load_costs_no_client_request_loses_its_traffic_and_gets_it_back() {
    let stack = Stack::start(two_mocks(
        r#"
[[instances]]
name = "flaky"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
circuit_breaker = { failures = 3, cooldown = "1s" }
[[instances]]
name = "steady"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "ha"
models = ["ha-model"]
targets = [{ instance = "flaky" }, { instance = "steady" }]
"#,
    ))
    .await;
    let gateway = stack.gateway_url.clone();
    let start = Instant::now();
    let until = start + Duration::from_millis(4500);
    let load = actix_web::rt::spawn(async move { load(&gateway, "ha-model", 16, until).await });

    actix_web::rt::time::sleep(Duration::from_millis(1000)).await;
    let failed_at = Instant::now();
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let recovered_at = Instant::now();
    stack.mock.set_behaviour(Behaviour::Normal);
    let outcomes = load.await.unwrap();

    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );

    let flaky = client_requests(&stack.mock);
    let failing: Vec<&Received> = flaky
        .iter()
        .filter(|r| r.at >= failed_at && r.at < recovered_at)
        .collect();
    // Within the first cooldown after the failure, traffic stops: only requests already on their way get there.
    let last_before_cooldown = failing
        .iter()
        .filter(|r| r.at < failed_at + Duration::from_secs(1))
        .map(|r| r.at)
        .max();
    let stopped_after = last_before_cooldown.map_or(Duration::ZERO, |t| t - failed_at);
    assert!(
        stopped_after < Duration::from_secs(1),
        "traffic to the failing instance stopped after {stopped_after:?}"
    );
    // Afterwards it sees at most one trial per cooldown.
    let trials = failing
        .iter()
        .filter(|r| r.at >= failed_at + Duration::from_secs(1))
        .count();
    assert!(
        trials <= 2,
        "{trials} requests reached the open instance after the first cooldown"
    );
    // After it recovers, traffic comes back.
    let back = flaky
        .iter()
        .filter(|r| r.at >= recovered_at && r.status == 200)
        .map(|r| r.at)
        .min();
    let back_after = back
        .map(|t| t - recovered_at)
        .expect("traffic returned to the recovered instance");
    assert!(
        back_after < Duration::from_millis(1500),
        "traffic came back after {back_after:?}"
    );
    let served_after_recovery = outcomes
        .iter()
        .filter(|o| o.at >= recovered_at + back_after && o.instance == "flaky")
        .count();
    assert!(
        served_after_recovery > 10,
        "the recovered instance serves again ({served_after_recovery} requests)"
    );
    eprintln!(
        "failover under load: {} requests, 0 failed; traffic to the failing instance stopped {stopped_after:?} after its \
         first 503, came back {back_after:?} after recovery",
        outcomes.len()
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn retry_after_from_a_429_keeps_the_instance_out_for_that_long() {
    let stack = Stack::start(two_mocks(
        r#"
[[instances]]
name = "limited"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "spare"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "rl"
models = ["rl-model"]
targets = [{ instance = "limited", priority = 1 }, { instance = "spare" }]
"#,
    ))
    .await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 429,
        retry_after: Some(2),
    });
    let first = call(&stack.gateway_url, "rl-model").await;
    let limited_at = Instant::now();
    assert_eq!(
        (first.status, first.instance.as_str()),
        (200, "spare"),
        "the 429 failed over"
    );
    stack.mock.set_behaviour(Behaviour::Normal);

    let mut during = Vec::new();
    while limited_at.elapsed() < Duration::from_millis(1800) {
        during.push(call(&stack.gateway_url, "rl-model").await);
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        during.iter().all(|o| o.status == 200 && o.instance == "spare"),
        "{:?}",
        by_instance(&during)
    );
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    let after = call(&stack.gateway_url, "rl-model").await;
    assert_eq!(after.instance, "limited", "back once the two seconds are over");
    assert_eq!(
        client_requests(&stack.mock).len(),
        2,
        "one 429, then nothing until the cooldown ended"
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn a_slow_instance_times_out_and_the_request_fails_over_within_the_deadline() {
    let stack = Stack::start(two_mocks(
        r#"
[[instances]]
name = "slow"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
timeout = "300ms"
[[instances]]
name = "quick"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "to"
models = ["to-model"]
targets = [{ instance = "slow", priority = 1 }, { instance = "quick" }]
failover = { deadline = "2s" }
"#,
    ))
    .await;
    stack.mock.set_behaviour(Behaviour::Delay { millis: 5000 });
    let started = Instant::now();
    let outcome = call(&stack.gateway_url, "to-model").await;
    let took = started.elapsed();
    assert_eq!((outcome.status, outcome.instance.as_str()), (200, "quick"));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let attempts: serde_json::Value = serde_json::from_str(rows[0]["attempts"].as_str().unwrap()).unwrap();
    assert_eq!(attempts[0]["instance"], "slow");
    assert_eq!(attempts[0]["error"], "timeout");
    assert_eq!(attempts[1]["instance"], "quick");
    stack.stop().await;
}

#[actix_rt::test]
async fn active_health_checks_move_traffic_to_the_cloud_fallback_and_back_to_self_hosted() {
    // Reference scenario 3: self-hosted preferred, cloud as fallback, probed with a 1-token chat completion.
    let stack = Stack::start(two_mocks(
        r#"
[[instances]]
name = "vllm-local"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
health_check = { method = "POST", path = "chat/completions", body = '{"model":"probe","max_tokens":1,"metadata":{"probe":true},"messages":[{"role":"user","content":"ping"}]}', expected_statuses = [200], interval = "100ms", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }
[[instances]]
name = "cloud"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "onprem"
models = ["onprem-model"]
targets = [{ instance = "vllm-local", priority = 10 }, { instance = "cloud", priority = 0 }]
"#,
    ))
    .await;
    assert_eq!(
        call(&stack.gateway_url, "onprem-model").await.instance,
        "vllm-local"
    );

    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let unhealthy_since = wait_for_metric(&stack, r#"instance="vllm-local""#, 0.0).await;
    let served_before = client_requests(&stack.mock).len();
    let during = burst(&stack.gateway_url, "onprem-model", 20, 5).await;
    assert!(
        during.iter().all(|o| o.status == 200 && o.instance == "cloud"),
        "{:?}",
        by_instance(&during)
    );
    assert_eq!(
        client_requests(&stack.mock).len(),
        served_before,
        "no client request reached the unhealthy instance"
    );

    stack.mock.set_behaviour(Behaviour::Normal);
    let healthy_after = wait_for_metric(&stack, r#"instance="vllm-local""#, 1.0).await;
    assert_eq!(
        call(&stack.gateway_url, "onprem-model").await.instance,
        "vllm-local",
        "automatic return"
    );
    eprintln!(
        "active checks: out of rotation {unhealthy_since:?} after failing, back {healthy_after:?} after recovering"
    );
    stack.stop().await;
}

/// Waits until `tollgate_instance_healthy{labels}` equals `value`; returns how long that took.
async fn wait_for_metric(stack: &Stack, labels: &str, value: f64) -> Duration {
    let started = Instant::now();
    loop {
        if metric(&metrics_text(stack).await, "tollgate_instance_healthy", labels) == Some(value) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tollgate_instance_healthy{{{labels}}} never became {value}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Shared health (issue 20): replicas behind a load balancer learn from each other. When one replica opens an
//! instance's circuit, every other replica stops sending to it — measured here from the moment the circuit
//! opened on one replica to the moment the other's `tollgate_circuit_state` says open — without having sent it a
//! single request; and when a trial request on the first replica finds the instance answering again, the other
//! replica's circuit closes too, again without a request of its own.
//!
//! Two real `gateway` binaries (their metrics are process-wide, so each needs a process of its own) share a
//! health topic of their own on the real broker, in front of two mock providers: `primary`, which fails on
//! demand, and `spare`, at a lower priority.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::mock_provider::{Behaviour, MockProvider};
use tollgate_tests::procs::{free_port, scratch_dir, terminate, workspace_binary};
use tollgate_tests::stack::{CONSUMERS, Infra, MODEL, PROVIDER_KEY, UPSTREAM_MODEL, http, sample};

/// The cooldown of `primary`'s circuit: long enough to look at the other replica while it is open, short enough
/// for the test to see the shared recovery.
const COOLDOWN: Duration = Duration::from_secs(3);
/// What the test accepts as convergence on a loaded two-core CI machine; the target (≤ 200 ms) and the figures
/// measured are in the closing note and `docs/operations.md`.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(1);

struct Replica {
    child: Child,
    url: String,
    metrics: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

impl Replica {
    async fn start(name: &str, scratch: &Path, primary: &str, spare: &str, topics: (&str, &str)) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let (_, key_id, key) = CONSUMERS[0];
        let sha = hex::encode(tollgate_gateway::admission::auth::hash_key(key.as_bytes()));
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
instance_id = "{name}"
workers = 1
shutdown_timeout = "2s"

[meter]
url = "http://127.0.0.1:{closed}"
timeout = "50ms"

[kafka]
brokers = "{brokers}"
usage_topic = "{usage}"
health_topic = "{health}"

[spool]
dir = {spool:?}

[[instances]]
name = "primary"
endpoint = "{primary}"
model = "{UPSTREAM_MODEL}"
api_key_env = "PROVIDER_KEY"
circuit_breaker = {{ failures = 3, cooldown = "{cooldown}ms" }}

[[instances]]
name = "spare"
endpoint = "{spare}"
model = "{UPSTREAM_MODEL}"
api_key_env = "PROVIDER_KEY"

[[routes]]
name = "{MODEL}"
models = ["{MODEL}"]
targets = [{{ instance = "primary", priority = 1 }}, {{ instance = "spare" }}]

[[consumers]]
name = "{consumer}"
keys = [{{ id = "{key_id}", sha256 = "{sha}" }}]
"#,
            closed = free_port(),
            brokers = Infra::from_env().brokers,
            usage = topics.0,
            health = topics.1,
            spool = scratch.join(format!("{name}-spool")).display().to_string(),
            cooldown = COOLDOWN.as_millis(),
            consumer = CONSUMERS[0].0,
        );
        let config = scratch.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = scratch.join(format!("{name}.log"));
        let child = Command::new(workspace_binary("tollgate-gateway", "gateway"))
            .arg("--config")
            .arg(&config)
            .env("PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the gateway binary");
        let replica = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let serving = http().get(format!("{}/healthz", replica.url)).send().await;
            if serving.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        replica
    }

    async fn chat(&self) -> u16 {
        let response = http()
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(CONSUMERS[0].2)
            .send_json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}))
            .await
            .expect("the replica answers");
        response.status().as_u16()
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let mut response = http().get(&self.metrics).send().await.ok()?;
        let body = response.body().limit(16 << 20).await.ok()?;
        sample(&String::from_utf8_lossy(&body), series)
    }

    /// Polls `series` until it equals `value`; how long that took from `since`.
    async fn wait_for(&self, series: &str, value: f64, since: Instant) -> Duration {
        loop {
            if self.metric(series).await == Some(value) {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < CONVERGENCE_LIMIT * 5,
                "{series} never became {value} (now {:?})",
                self.metric(series).await
            );
            actix_web::rt::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn mock() -> MockProvider {
    let (mock, server) = MockProvider::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Some(PROVIDER_KEY.into()),
    )
    .unwrap();
    actix_web::rt::spawn(server);
    mock
}

const PRIMARY_CIRCUIT: &str = r#"tollgate_circuit_state{instance="primary"}"#;

#[actix_web::test]
async fn a_circuit_one_replica_opens_is_open_on_every_replica_and_so_is_its_recovery() {
    let (primary, spare) = (mock(), mock());
    let scratch = scratch_dir("shared-health");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topics = (
        format!("tollgate.usage.shared-health-{run}"),
        format!("tollgate.health.shared-health-{run}"),
    );
    let topics = (topics.0.as_str(), topics.1.as_str());
    let a = Replica::start(
        "replica-a",
        &scratch,
        &primary.endpoint(),
        &spare.endpoint(),
        topics,
    )
    .await;
    let b = Replica::start(
        "replica-b",
        &scratch,
        &primary.endpoint(),
        &spare.endpoint(),
        topics,
    )
    .await;
    // Both followers assign the topic within a second of starting; news sent before that is read all the same
    // (from the beginning), but would not measure the steady state.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;

    // Replica A meets a failing primary: three failures (each failed over to the spare, so the clients see 200)
    // open A's circuit.
    primary.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    for _ in 0..3 {
        assert_eq!(a.chat().await, 200, "failed over to the spare");
    }
    let opened = Instant::now();
    assert_eq!(a.metric(PRIMARY_CIRCUIT).await, Some(2.0), "A's circuit is open");
    let to_open = b.wait_for(PRIMARY_CIRCUIT, 2.0, opened).await;
    println!("shared health: B's circuit opened {to_open:?} after A's");

    // B never sends primary a request while the shared cooldown lasts: its requests go straight to the spare.
    let primary_before = primary.received().len();
    for _ in 0..5 {
        assert_eq!(b.chat().await, 200);
    }
    assert_eq!(
        primary.received().len(),
        primary_before,
        "B sent nothing to the instance A found dead"
    );
    assert!(
        b.metric(r#"tollgate_shared_health_applied_total{verdict="open"}"#)
            .await
            >= Some(1.0)
    );

    // The primary recovers; after the cooldown A's next request is its trial, which closes A's circuit — and B's,
    // which sent nothing.
    primary.set_behaviour(Behaviour::Normal);
    actix_web::rt::time::sleep(COOLDOWN.saturating_sub(opened.elapsed()) + Duration::from_millis(100)).await;
    assert_eq!(b.metric(PRIMARY_CIRCUIT).await, Some(2.0), "B waits for a trial");
    assert_eq!(a.chat().await, 200);
    let closed = Instant::now();
    assert_eq!(
        a.metric(PRIMARY_CIRCUIT).await,
        Some(0.0),
        "A's trial closed its circuit"
    );
    let to_close = b.wait_for(PRIMARY_CIRCUIT, 0.0, closed).await;
    println!("shared health: B's circuit closed {to_close:?} after A's trial succeeded");
    let lag = (
        b.metric("tollgate_shared_health_lag_seconds_sum").await,
        b.metric("tollgate_shared_health_lag_seconds_count").await,
    );
    println!("shared health: B's tollgate_shared_health_lag_seconds sum, count = {lag:?}");

    assert!(
        to_open < CONVERGENCE_LIMIT && to_close < CONVERGENCE_LIMIT,
        "convergence took {to_open:?} (open) and {to_close:?} (recovery)"
    );
}

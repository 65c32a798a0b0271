//! Threshold alerts end to end: usage events produced to a fresh usage topic, the real `billing-consumer run`
//! binary (its quota loop computing a 1,000-token hourly limit of team-a) as a child process, and a webhook
//! receiver of the test's own that records every request and can answer 500 first. Each threshold (50, 80,
//! 100 %) is POSTed exactly once with a valid HMAC-SHA256 signature; a receiver failing twice gets the alert on
//! the third attempt, with the same id; and across `kill -9` and restarts of billing-consumer no threshold is
//! sent twice — of a token quota, nor of a spend budget (a 1.00 USD monthly budget at prices that make a token
//! cost 1,000 µUSD, so the same events cross the same thresholds).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_schemas::CloudEvent;
use tollgate_schemas::usage::{EstimateSource, Outcome, UsageEvent, UsageRecorded, UsageSource};
use tollgate_tests::procs::{ChildBillingConfig, ChildBillingConsumer, scratch_dir};
use tollgate_tests::stack::{Infra, http, sample};

const HOUR_MS: u64 = 3_600_000;
const LIMIT: u64 = 1000;
const MODEL: &str = "gpt-4o-mini";
const SECRET: &str = "test-webhook-secret-0123456789";
const SECRET_ENV: &str = "TOLLGATE_TEST_ALERT_SECRET";
const SCOPE: &str = "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens";
const DEADLINE: Duration = Duration::from_secs(90);

/// One child billing-consumer at a time: each runs ingest and the quota loop, and two cores are shared.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    alert_id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the alert body is JSON")
    }
}

/// The webhook receiver's state: what came, and how many requests are still to be answered 500.
#[derive(Debug, Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    fail_next: AtomicUsize,
}

async fn receive(request: HttpRequest, body: web::Bytes, state: web::Data<Receiver>) -> HttpResponse {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answered = if failing { 500 } else { 200 };
    state.received.lock().unwrap().push(Received {
        alert_id: header("x-tollgate-alert-id"),
        timestamp: header("x-tollgate-timestamp"),
        signature: header("x-tollgate-signature"),
        body: body.to_vec(),
        answered,
    });
    if failing {
        HttpResponse::InternalServerError().body("try again")
    } else {
        HttpResponse::Ok().body("ok")
    }
}

/// HMAC-SHA256 (RFC 2104), written here independently of billing-consumer's.
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Checks a request as a receiver should: the signature over `<timestamp>.<body>`, a recent timestamp, and the
/// id header matching the body.
fn assert_signed(received: &Received) {
    let mut signed = received.timestamp.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&received.body);
    assert_eq!(
        received.signature,
        format!("sha256={}", hex::encode(hmac(SECRET.as_bytes(), &signed))),
        "the signature covers the timestamp and the exact body"
    );
    let stamp: i64 = received.timestamp.parse().expect("a Unix timestamp");
    assert!(
        (Utc::now().timestamp() - stamp).abs() < 300,
        "the timestamp is now: {stamp}"
    );
    assert_eq!(received.json()["id"], received.alert_id.as_str());
}

struct Fixture {
    infra: Infra,
    usage_topic: String,
    quota_topic: String,
    alerts_topic: String,
    database: String,
    scratch: PathBuf,
    receiver: web::Data<Receiver>,
    url: String,
    server: actix_web::dev::ServerHandle,
    producer: FutureProducer,
    /// The hour all events fall in (by event time), fixed at the start so a test crossing the hour stays in one
    /// window.
    window_start_ms: u64,
    produced: u64,
    /// Alert on team-a's 1.00 USD monthly budget instead of its 1,000-token hourly quota.
    budget: bool,
}

/// For the budget: a token costs 1,000 µUSD (1,000 USD per million, input and output alike), so 1,000 tokens
/// spend the 1.00 USD budget as they use up the 1,000-token quota.
const PRICES: &str = r#"
[[prices]]
model = "gpt-4o-mini"
effective_from = "2024-07-18"
currency = "USD"
input_per_mtok = "1000"
output_per_mtok = "1000"
"#;

impl Fixture {
    async fn new(name: &str, fail_first: usize) -> Self {
        let infra = Infra::from_env();
        let run = uuid::Uuid::now_v7().simple().to_string();
        let usage_topic = format!("tollgate.usage.v1.alerts-{run}");
        let kafka = infra.brokers.as_str().into();
        let mut tries = 0;
        while let Err(e) = tollgate_billing_consumer::kafka::topics::ensure(&kafka, &usage_topic, 1).await {
            tries += 1;
            assert!(tries < 5, "create the usage topic: {e}");
            actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        }
        let receiver = web::Data::new(Receiver {
            fail_next: AtomicUsize::new(fail_first),
            ..Receiver::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/tollgate", listener.local_addr().unwrap());
        let data = receiver.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &infra.brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap();
        Self {
            usage_topic,
            quota_topic: format!("tollgate.quota.v1.alerts-{run}"),
            alerts_topic: format!("tollgate.alerts.v1.test-{run}"),
            database: format!("tollgate_test_alerts_{run}"),
            scratch: scratch_dir(&format!("alerts-{name}")),
            infra,
            receiver,
            url,
            server: handle,
            producer,
            window_start_ms: now - now % HOUR_MS,
            produced: 0,
            budget: false,
        }
    }

    /// A fixture whose billing-consumer alerts on team-a's spend budget.
    async fn for_budget(name: &str) -> Self {
        Self {
            budget: true,
            ..Self::new(name, 0).await
        }
    }

    /// Starts billing-consumer with alerts on (quick retries, so the test does not wait long).
    async fn billing_consumer(&self, name: &str) -> ChildBillingConsumer {
        let limit = if self.budget {
            r#"budgets = [{ amount = "1.00", currency = "USD", period = "month" }]"#.to_owned()
        } else {
            format!(r#"token_limits = [{{ models = ["{MODEL}"], limit = {LIMIT}, time_window = "1h" }}]"#)
        };
        let gateway_toml = format!("[[consumers]]\nname = \"team-a\"\nkeys = []\n{limit}\n");
        let prices = self.scratch.join("prices.toml");
        std::fs::write(&prices, PRICES).unwrap();
        let group = format!("billing-{}", self.usage_topic);
        let args: Vec<String> = [
            "--prices",
            prices.to_str().unwrap(),
            "--alert-webhook-url",
            &self.url,
            "--alert-secret-env",
            SECRET_ENV,
            "--alerts-topic",
            &self.alerts_topic,
            "--alert-retry-initial",
            "100ms",
            "--alert-retry-max",
            "300ms",
            "--alert-max-attempts",
            "5",
            "--alert-timeout",
            "2s",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        ChildBillingConsumer::start_with(
            &ChildBillingConfig {
                brokers: &self.infra.brokers,
                clickhouse_url: &self.infra.clickhouse_url,
                database: &self.database,
                usage_topic: &self.usage_topic,
                quota_topic: &self.quota_topic,
                group: &group,
                gateway_toml: &gateway_toml,
            },
            &args,
            vec![(SECRET_ENV, SECRET.to_owned())],
            &self.scratch,
            name,
        )
        .await
    }

    /// Produces one usage event of team-a with `tokens` total tokens, in the fixture's hour.
    async fn produce(&mut self, tokens: u32) {
        self.produced += 1;
        let finished = self.window_start_ms + 1000 + self.produced;
        let time = chrono::DateTime::from_timestamp_millis(i64::try_from(finished).unwrap()).unwrap();
        let event: UsageEvent = CloudEvent::new(
            "tollgate-gateway/alerts-test",
            "team-a",
            time,
            UsageRecorded {
                request_id: format!("alerts-{}-{}", self.usage_topic, self.produced),
                consumer_id: "team-a".into(),
                team: None,
                organization: None,
                key_id: "team-a-key".into(),
                endpoint: "/v1/chat/completions".into(),
                route: MODEL.into(),
                model_requested: MODEL.into(),
                model_served: "gpt-4o-mini-2024-07-18".into(),
                provider: "openai".into(),
                instance: "primary".into(),
                attempts: Vec::new(),
                stream: false,
                outcome: Outcome::Ok,
                http_status: 200,
                prompt_tokens_estimated: tokens / 2,
                prompt_estimate_source: EstimateSource::Meter,
                prompt_tokens: tokens / 2,
                completion_tokens: tokens - tokens / 2,
                total_tokens: tokens,
                cached_prompt_tokens: None,
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                usage_source: UsageSource::Provider,
                latency_ms: 50,
                ttfb_ms: Some(20),
                started_at_ms: finished - 50,
                finished_at_ms: finished,
            },
        );
        let payload = serde_json::to_vec(&event).unwrap();
        self.producer
            .send(
                FutureRecord::to(&self.usage_topic)
                    .key("team-a")
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("the broker acknowledges");
    }

    fn received(&self) -> Vec<Received> {
        self.receiver.received.lock().unwrap().clone()
    }

    /// The requests answered 2xx, as (threshold, alert id).
    fn delivered(&self) -> Vec<(u64, String)> {
        self.received()
            .iter()
            .filter(|r| r.answered == 200)
            .map(|r| {
                (
                    r.json()["threshold_percent"].as_u64().unwrap(),
                    r.alert_id.clone(),
                )
            })
            .collect()
    }

    /// Waits until `count` requests were answered 2xx.
    async fn until_delivered(&self, count: usize, billing: &ChildBillingConsumer) {
        let since = Instant::now();
        while self.delivered().len() < count {
            assert!(
                since.elapsed() < DEADLINE,
                "{count} alerts were not delivered within {DEADLINE:?}: {:?}\n{}",
                self.delivered(),
                billing.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.server.stop(true).await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Waits until the child's quota loop holds the lease (it then publishes and alerts).
async fn until_holding_the_lease(billing: &ChildBillingConsumer) {
    let since = Instant::now();
    loop {
        if let Ok(mut response) = http()
            .get(format!("{}/metrics", billing.url))
            .force_close()
            .send()
            .await
        {
            let body = response.body().limit(16 << 20).await.unwrap_or_default();
            if sample(&String::from_utf8_lossy(&body), "billing_quota_lease_held") == Some(1.0) {
                return;
            }
        }
        assert!(
            since.elapsed() < DEADLINE,
            "billing-consumer did not get the quota lease:\n{}",
            billing.log_text()
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metrics_text(billing: &ChildBillingConsumer) -> String {
    let mut response = http()
        .get(format!("{}/metrics", billing.url))
        .force_close()
        .send()
        .await
        .expect("billing-consumer serves /metrics");
    String::from_utf8_lossy(&response.body().limit(16 << 20).await.unwrap()).into_owned()
}

/// Every delivered threshold exactly once, in order, with distinct ids.
fn assert_once_each(delivered: &[(u64, String)], thresholds: &[u64]) {
    let got: Vec<u64> = delivered.iter().map(|(t, _)| *t).collect();
    assert_eq!(got, thresholds, "each threshold exactly once: {delivered:?}");
    let mut ids: Vec<&String> = delivered.iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), delivered.len(), "distinct ids: {delivered:?}");
}

#[actix_rt::test]
async fn each_threshold_fires_exactly_one_signed_webhook() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fixture = Fixture::new("thresholds", 0).await;
    let mut billing = fixture.billing_consumer("billing").await;
    until_holding_the_lease(&billing).await;

    fixture.produce(300).await; // 30 %: nothing
    fixture.produce(250).await; // 55 %: 50
    fixture.until_delivered(1, &billing).await;
    fixture.produce(300).await; // 85 %: 80
    fixture.until_delivered(2, &billing).await;
    fixture.produce(150).await; // 100 %: 100
    fixture.until_delivered(3, &billing).await;
    fixture.produce(400).await; // 140 %: nothing new
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;

    let received = fixture.received();
    assert_eq!(received.len(), 3, "one request per threshold: {received:?}");
    assert_once_each(&fixture.delivered(), &[50, 80, 100]);
    for (request, (threshold, used)) in received.iter().zip([(50, 550), (80, 850), (100, 1000)]) {
        assert_signed(request);
        let body = request.json();
        assert_eq!(body["kind"], "token_quota");
        assert_eq!(body["scope"], SCOPE);
        assert_eq!(body["window_start_ms"], fixture.window_start_ms);
        assert_eq!(body["window_end_ms"], fixture.window_start_ms + HOUR_MS);
        assert_eq!(body["threshold_percent"], threshold);
        assert_eq!(body["used"], used, "usage when the crossing was seen: {body}");
        assert_eq!(body["limit"], LIMIT);
        assert_eq!(body["unit"], "tokens");
        assert!(body["time"].as_str().unwrap().ends_with('Z'));
    }
    let metrics = metrics_text(&billing).await;
    for threshold in [50, 80, 100] {
        let name = format!("billing_alerts_sent_total{{kind=\"token_quota\",threshold=\"{threshold}\"}}");
        assert_eq!(sample(&metrics, &name), Some(1.0), "{name} in\n{metrics}");
    }
    let ratio = format!("billing_quota_used_ratio{{scope=\"{SCOPE}\"}}");
    assert_eq!(sample(&metrics, &ratio), Some(1.4), "{ratio}");

    billing.stop();
    fixture.stop().await;
}

#[actix_rt::test]
async fn a_receiver_failing_twice_gets_the_alert_once_on_the_third_attempt() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fixture = Fixture::new("retries", 2).await;
    let mut billing = fixture.billing_consumer("billing").await;
    until_holding_the_lease(&billing).await;

    fixture.produce(600).await; // 60 %: 50
    fixture.until_delivered(1, &billing).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;

    let received = fixture.received();
    assert_eq!(
        received.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 200],
        "retried after each 500, and not after the 200"
    );
    for request in &received {
        assert_signed(request);
        assert_eq!(
            request.alert_id, received[0].alert_id,
            "the same id on every attempt"
        );
        assert_eq!(request.body, received[0].body, "the same body on every attempt");
    }
    assert_eq!(received[0].json()["threshold_percent"], 50);
    let metrics = metrics_text(&billing).await;
    assert_eq!(
        sample(
            &metrics,
            "billing_alerts_sent_total{kind=\"token_quota\",threshold=\"50\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "billing_alerts_failed_total{reason=\"gave_up\"}"),
        Some(0.0)
    );

    billing.stop();
    fixture.stop().await;
}

#[actix_rt::test]
async fn no_threshold_is_sent_twice_across_kill_9_and_restarts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fixture = Fixture::new("kill9", 0).await;
    thresholds_survive_kill_9(fixture, "token_quota", "tokens", LIMIT).await;
}

#[actix_rt::test]
async fn no_budget_threshold_is_sent_twice_across_kill_9_and_restarts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fixture = Fixture::for_budget("kill9-budget").await;
    thresholds_survive_kill_9(fixture, "budget", "USD", 1_000_000).await;
}

/// 50 % delivered, `kill -9`; 85 % reached while down: only 80 goes out after the restart; `kill -9` again and a
/// restart with nothing new sends nothing; 105 %: 100 goes out. Each threshold once, each with its own id.
async fn thresholds_survive_kill_9(mut fixture: Fixture, kind: &str, unit: &str, limit: u64) {
    let mut billing = fixture.billing_consumer("billing").await;
    until_holding_the_lease(&billing).await;

    fixture.produce(550).await; // 55 %: 50
    fixture.until_delivered(1, &billing).await;
    // Let the `delivered` record reach the alerts topic, then kill it with no chance to say anything.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    billing.kill();

    // While it is down, usage goes past 80 %.
    fixture.produce(300).await; // 85 %
    billing.resume().await;
    until_holding_the_lease(&billing).await;
    // The rebuilt window is at 85 %: 50 was delivered before the kill, so only 80 goes out.
    fixture.until_delivered(2, &billing).await;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    billing.kill();

    // A restart with nothing new sends nothing.
    billing.resume().await;
    until_holding_the_lease(&billing).await;
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    assert_once_each(&fixture.delivered(), &[50, 80]);

    fixture.produce(200).await; // 105 %: 100
    fixture.until_delivered(3, &billing).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;

    let received = fixture.received();
    assert_eq!(received.len(), 3, "no threshold sent twice: {received:?}");
    assert_once_each(&fixture.delivered(), &[50, 80, 100]);
    for request in &received {
        assert_signed(request);
        let body = request.json();
        assert_eq!(body["kind"], kind, "{body}");
        assert_eq!(body["unit"], unit, "{body}");
        assert_eq!(body["limit"], limit, "{body}");
    }
    assert!(
        billing.log_text().contains("Read the alerts topic"),
        "each start reads the alerts topic first"
    );

    billing.stop();
    fixture.stop().await;
}

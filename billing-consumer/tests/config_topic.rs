//! `--config-topic` against the real broker (and ClickHouse for prices): changes published to a fresh config
//! topic the way the admin API publishes them, followed by [`ConfigFollower`].
//!
//! - A limit put on the topic replaces the gateway file's limits: its scope is computed with the usage already on
//!   the usage topic and published with its limit; a new limit value shows in the next snapshot without a
//!   recount; the file's scope is no longer published; deleting the limit (change + tombstone) leaves no limit
//!   at all (the topic, not the file, is the configuration once it held a change, as in the gateway) and its
//!   scope is no longer published either.
//! - A price version put on the topic prices the events ingested after it; a topic version that contradicts the
//!   price file is left out and the file's version prices.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::config_topic::{ConfigFollower, FollowSettings};
use tollgate_billing_consumer::kafka::topics;
use tollgate_billing_consumer::ledger::pricing::{PriceTable, TokenUsage};
use tollgate_billing_consumer::quota::QuotaSettings;
use tollgate_billing_consumer::{ingest, quota};
use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::config::{ChangeAction, ConfigChange, ResourceKind};
use tollgate_schemas::quota::{
    HEARTBEAT_KEY, QuotaHeartbeat, QuotaHeartbeatEvent, QuotaSnapshot, QuotaSnapshotEvent,
};
use tollgate_schemas::usage::UsageEvent;

const DEADLINE: Duration = Duration::from_secs(90);
/// 2026-11-20T10:00:00Z: the start of an hourly window.
const HOUR_START: u64 = 1_795_168_800_000;
const GW1: &str = "tollgate-gateway/gw-1";

/// The gateway file: team-a's gpt-4o-mini tokens.
const POLICY: &str = r#"
    [[consumers]]
    name = "team-a"
    keys = []
    [[consumers.token_limits]]
    models = ["gpt-4o-mini"]
    limit = 100000
    time_window = "1h"
"#;
const TEAM_A_MINI: &str = "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens";
/// The scope of the limit the test puts on the config topic: everyone's gpt-4o-mini tokens.
const ALL_MINI: &str = "models=gpt-4o-mini;window=3600s;strategy=total_tokens";

const PRICES: &str = r#"
    [[prices]]
    model = "gpt-4o-mini"
    effective_from = "2026-01-01"
    currency = "USD"
    input_per_mtok = "0.15"
    output_per_mtok = "0.60"
"#;

fn minute(n: u64) -> u64 {
    HOUR_START + n * 60_000
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

async fn retry<F, Fut>(what: &str, attempt: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), tollgate_billing_consumer::BillingError>>,
{
    let mut tries = 0;
    while let Err(e) = attempt().await {
        tries += 1;
        assert!(tries < 5, "{what}: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A fresh config topic: one partition, compacted, as the gateway creates it.
async fn config_topic(brokers: &str, suffix: &str) -> String {
    let topic = format!("tollgate.config.config-it.{suffix}");
    let kafka = KafkaConnection::new(brokers);
    retry("create the config topic", || topics::ensure_quota(&kafka, &topic)).await;
    topic
}

/// Publishes a change as the admin API does: a put with its resource, or a delete change then a tombstone.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    kind: ResourceKind,
    id: &str,
    resource: Option<serde_json::Value>,
) {
    let change = ConfigChange {
        kind,
        id: id.to_owned(),
        action: if resource.is_some() {
            ChangeAction::Put
        } else {
            ChangeAction::Delete
        },
        resource,
        actor: "it-admin".to_owned(),
    };
    let key = change.key();
    let delete = change.action == ChangeAction::Delete;
    // Price versions are published before they start (a back-dated one is refused by every reader): these
    // changes are dated before every effective_from the tests use.
    let made = Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).unwrap();
    let event = CloudEvent::new("tollgate-gateway/it", key.clone(), made, change);
    let payload = serde_json::to_vec(&event).unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    if delete {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic).key(&key),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn produce_usage(producer: &FutureProducer, topic: &str, event: &UsageEvent) {
    let payload = serde_json::to_vec(event).unwrap();
    producer
        .send(
            FutureRecord::to(topic)
                .key(&event.data.consumer_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The quota topic read from the beginning, as a gateway reads it.
struct QuotaTopic {
    consumer: StreamConsumer,
    snapshots: Vec<QuotaSnapshot>,
    heartbeats: Vec<QuotaHeartbeat>,
}

impl QuotaTopic {
    fn open(brokers: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set(
                "group.id",
                format!("config-it-reader-{}", common::unique_suffix()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        Self {
            consumer,
            snapshots: Vec::new(),
            heartbeats: Vec::new(),
        }
    }

    fn latest(&self) -> BTreeMap<String, QuotaSnapshot> {
        self.snapshots
            .iter()
            .map(|s| (s.scope.clone(), s.clone()))
            .collect()
    }

    fn published(&self, key: &str) -> usize {
        self.snapshots.iter().filter(|s| s.scope == key).count()
    }

    /// Reads until the newest snapshot of `key` satisfies `done`; returns it.
    async fn until(&mut self, what: &str, key: &str, done: impl Fn(&QuotaSnapshot) -> bool) -> QuotaSnapshot {
        self.read_until(what, |topic| topic.latest().get(key).is_some_and(&done))
            .await;
        self.latest()[key].clone()
    }

    /// Reads until a heartbeat satisfies `done`.
    async fn until_heartbeat(&mut self, what: &str, done: impl Fn(&QuotaHeartbeat) -> bool) {
        self.read_until(what, |topic| topic.heartbeats.iter().any(&done))
            .await;
    }

    async fn read_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; latest snapshots: {:#?}; last heartbeat: {:?}",
                self.latest(),
                self.heartbeats.last()
            );
            if let Ok(received) = tokio::time::timeout(Duration::from_millis(200), self.consumer.recv()).await
            {
                let message = received.unwrap();
                let Some(payload) = message.payload() else {
                    continue;
                };
                if message.key() == Some(HEARTBEAT_KEY.as_bytes()) {
                    let event: QuotaHeartbeatEvent = serde_json::from_slice(payload).unwrap();
                    self.heartbeats.push(event.data);
                } else {
                    let event: QuotaSnapshotEvent = serde_json::from_slice(payload).unwrap();
                    self.snapshots.push(event.data);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_on_the_config_topic_replaces_the_files_and_is_computed_live() {
    let brokers = common::brokers();
    let suffix = common::unique_suffix();
    let usage_topic = format!("tollgate.usage.config-it.{suffix}");
    let quota_topic = format!("tollgate.quota.config-it.{suffix}");
    let kafka = KafkaConnection::new(brokers.as_str());
    retry("create the usage topic", || {
        topics::ensure(&kafka, &usage_topic, 3)
    })
    .await;
    retry("create the quota topic", || {
        topics::ensure_quota(&kafka, &quota_topic)
    })
    .await;
    let config_topic = config_topic(&brokers, &suffix).await;
    let producer = producer(&brokers);
    let mut snapshots = QuotaTopic::open(&brokers, &quota_topic);

    // Usage before anything runs: team-a and team-b on gpt-4o-mini, team-a on another model.
    for event in [
        common::usage_event(GW1, "team-a", "gpt-4o-mini", 100, 20, minute(1)),
        common::usage_event(GW1, "team-b", "gpt-4o-mini", 50, 5, minute(2)),
        common::usage_event(GW1, "team-a", "claude-haiku", 10, 10, minute(3)),
    ] {
        produce_usage(&producer, &usage_topic, &event).await;
    }

    // The config topic is empty: the file's limits apply.
    let file_scopes = quota::policy::from_gateway_toml(POLICY).unwrap();
    let follower = ConfigFollower::start(FollowSettings {
        kafka: brokers.as_str().into(),
        topic: config_topic.clone(),
        file_prices: None,
        file_scopes: Some(file_scopes.clone()),
    })
    .unwrap();
    tokio::time::timeout(DEADLINE, follower.ready()).await.unwrap();
    assert!(
        follower.prices().is_none(),
        "no prices without a price table to add to"
    );
    let settings = QuotaSettings::new(
        &brokers,
        &usage_topic,
        &quota_topic,
        file_scopes,
        "tollgate-billing-consumer/config-it",
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(quota::run_live(
        settings,
        follower.policy(),
        Default::default(),
        shutdown.clone(),
    ));
    let team_a = snapshots
        .until("the file's scope", TEAM_A_MINI, |s| s.events == 1)
        .await;
    assert_eq!((team_a.used, team_a.limit), (120, 100_000));

    // A limit on the topic: it replaces the file's, and its scope starts from the usage already consumed.
    let limit =
        |limit: u64| json!({"id": "mini", "models": ["gpt-4o-mini"], "limit": limit, "time_window": "1h"});
    let team_a_published = snapshots.published(TEAM_A_MINI);
    publish(
        &producer,
        &config_topic,
        ResourceKind::Limit,
        "mini",
        Some(limit(777)),
    )
    .await;
    let all = snapshots
        .until("the topic's limit", ALL_MINI, |s| s.limit == 777)
        .await;
    assert_eq!((all.used, all.events), (175, 2), "{all:?}");
    assert_eq!(all.window_start_ms, HOUR_START);

    // A new value of the same limit: the next snapshot carries it, with the same usage (no recount).
    publish(
        &producer,
        &config_topic,
        ResourceKind::Limit,
        "mini",
        Some(limit(888)),
    )
    .await;
    let relimited = snapshots
        .until("the new limit value", ALL_MINI, |s| s.limit == 888)
        .await;
    assert_eq!((relimited.used, relimited.events), (175, 2));

    // Live usage counts in the topic's scope; the file's scope is not published any more.
    produce_usage(
        &producer,
        &usage_topic,
        &common::usage_event(GW1, "team-a", "gpt-4o-mini", 3, 4, minute(4)),
    )
    .await;
    let live = snapshots.until("a live event", ALL_MINI, |s| s.events == 3).await;
    assert_eq!((live.used, live.limit), (182, 888));
    assert_eq!(
        snapshots.published(TEAM_A_MINI),
        team_a_published,
        "the file's scope is no longer published"
    );

    // Deleting the limit (a delete change, then a tombstone): the topic, which held changes, is still the
    // configuration, now without any limit. Nothing is computed or published any more.
    publish(&producer, &config_topic, ResourceKind::Limit, "mini", None).await;
    snapshots
        .until_heartbeat("a heartbeat without scopes", |h| h.scopes == 0 && !h.rebuilding)
        .await;
    let published = snapshots.snapshots.len();
    produce_usage(
        &producer,
        &usage_topic,
        &common::usage_event(GW1, "team-a", "gpt-4o-mini", 5, 5, minute(5)),
    )
    .await;
    let after_event = Utc::now().timestamp_millis() as u64 + 1000;
    snapshots
        .until_heartbeat("heartbeats after the event", |h| h.published_at_ms > after_event)
        .await;
    assert_eq!(
        snapshots.snapshots.len(),
        published,
        "no scope is published any more: {:#?}",
        &snapshots.snapshots[published..]
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_version_on_the_config_topic_prices_later_events() {
    let fixture = common::ledger::Fixture::new().await;
    let suffix = common::unique_suffix();
    let config_topic = config_topic(&fixture.brokers, &suffix).await;
    let file = std::sync::Arc::new(PriceTable::from_toml(PRICES).unwrap());

    // Already on the topic: the file's version at another price. It is left out; the file's prices.
    publish(
        &fixture.producer,
        &config_topic,
        ResourceKind::Price,
        "gpt-4o-mini@2026-01-01",
        Some(
            json!({"model": "gpt-4o-mini", "effective_from": "2026-01-01", "currency": "USD",
                    "input_per_mtok": "9.99", "output_per_mtok": "0.60"}),
        ),
    )
    .await;
    let follower = ConfigFollower::start(FollowSettings {
        kafka: fixture.brokers.as_str().into(),
        topic: config_topic.clone(),
        file_prices: Some(std::sync::Arc::clone(&file)),
        file_scopes: None,
    })
    .unwrap();
    tokio::time::timeout(DEADLINE, follower.ready()).await.unwrap();
    assert!(follower.policy().is_none(), "no policy without the quota loop");
    let prices = follower.prices().unwrap();
    assert_eq!(*prices.current(), *file, "the contradicting version is left out");

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingest::run_with_live_prices(
        fixture.ingest_settings(),
        prices.clone(),
        shutdown.clone(),
    ));

    // Before the topic prices claude-haiku, its events are unpriced.
    let before = common::usage_event(GW1, "team-a", "claude-haiku", 100, 20, minute(1));
    let mini = common::usage_event(GW1, "team-a", "gpt-4o-mini", 1000, 100, minute(2));
    produce_usage(&fixture.producer, &fixture.topic, &before).await;
    produce_usage(&fixture.producer, &fixture.topic, &mini).await;
    common::ledger::wait_until_committed_to_the_end(&fixture.brokers, &fixture.group, &fixture.topic, 2)
        .await;

    // A new version on the topic, then an event: priced by it.
    publish(
        &fixture.producer,
        &config_topic,
        ResourceKind::Price,
        "claude-haiku@2026-06-01",
        Some(
            json!({"model": "claude-haiku", "effective_from": "2026-06-01", "currency": "EUR",
                    "input_per_mtok": "1", "output_per_mtok": 5}),
        ),
    )
    .await;
    let started = Instant::now();
    while prices.current().version("claude-haiku@2026-06-01").is_none() {
        assert!(
            started.elapsed() < DEADLINE,
            "the topic's price version was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = common::usage_event(GW1, "team-a", "claude-haiku", 100, 20, minute(3));
    produce_usage(&fixture.producer, &fixture.topic, &after).await;
    common::ledger::wait_until_committed_to_the_end(&fixture.brokers, &fixture.group, &fixture.topic, 3)
        .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    follower.stop().await;

    let stored = |event: &UsageEvent| {
        let ch = fixture.ch.clone();
        let request_id = event.data.request_id.clone();
        async move {
            ch.client()
                .query(
                    "SELECT price_version, currency, cost_micros FROM usage_events FINAL WHERE request_id = ?",
                )
                .bind(request_id)
                .fetch_one::<(String, String, i64)>()
                .await
                .unwrap()
        }
    };
    let expected = |event: &UsageEvent| {
        let table = prices.current();
        let charge = table.charge(
            &event.data.model_served,
            event.data.finished_at_ms,
            &TokenUsage::of(&event.data),
        );
        (
            charge.price_version().to_owned(),
            charge.currency().to_owned(),
            charge.cost_micros,
        )
    };
    assert_eq!(stored(&before).await, (String::new(), String::new(), 0));
    let after_row = stored(&after).await;
    assert_eq!(after_row, expected(&after));
    assert_eq!(
        (after_row.0.as_str(), after_row.1.as_str()),
        ("claude-haiku@2026-06-01", "EUR")
    );
    assert!(after_row.2 > 0);
    let mini_row = stored(&mini).await;
    assert_eq!(mini_row, expected(&mini));
    assert_eq!(
        mini_row,
        (
            "gpt-4o-mini@2026-01-01".to_owned(),
            "USD".to_owned(),
            file.charge("gpt-4o-mini", minute(2), &TokenUsage::of(&mini.data))
                .cost_micros
        ),
        "priced by the file's version"
    );
    common::drop_database(&fixture.ch).await;
}

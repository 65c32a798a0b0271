//! The quota loop against the real broker: produce usage events (from two gateways, some before the loop starts
//! and some while it runs) to a fresh topic, run the loop on fresh topics, read the quota topic from the
//! beginning like a gateway does, and check every snapshot's exact usage, window and watermarks — across a
//! window rollover, a restart (nothing lost, nothing counted twice) and an event delivered twice.

// Test helpers: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::kafka::topics;
use tollgate_billing_consumer::quota::QuotaSettings;
use tollgate_billing_consumer::quota::{self, policy::ConfiguredScope};
use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_schemas::quota::{
    HEARTBEAT_KEY, QuotaHeartbeatEvent, QuotaSnapshot, QuotaSnapshotEvent, Watermark, Window,
};
use tollgate_schemas::usage::UsageEvent;

const PARTITIONS: i32 = 3;
const DEADLINE: Duration = Duration::from_secs(60);
const HOUR_MS: u64 = 3_600_000;
/// 2026-11-20T10:00:00Z: the start of an hourly window. Windows are by event time, so any hour will do.
const HOUR_START: u64 = 1_795_168_800_000;
const GW1: &str = "tollgate-gateway/gw-1";
const GW2: &str = "tollgate-gateway/gw-2";

/// The gateway file the scopes come from: team-a's gpt-4o-mini tokens, and everyone's gpt-4o-mini prompt tokens.
const POLICY: &str = r#"
    [server]
    listen = "127.0.0.1:8080"

    [[consumers]]
    name = "team-a"
    keys = []
    [[consumers.token_limits]]
    models = ["gpt-4o-mini"]
    limit = 100000
    time_window = "1h"

    [[token_limits]]
    models = ["gpt-4o-mini"]
    limit = 5000000
    time_window = "1h"
    limit_strategy = "prompt_tokens"
"#;
const TEAM_A_MINI: &str = "consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens";
const ALL_MINI: &str = "models=gpt-4o-mini;window=3600s;strategy=prompt_tokens";

/// Fresh topics and a producer.
struct Fixture {
    brokers: String,
    usage_topic: String,
    quota_topic: String,
    producer: FutureProducer,
    scopes: Vec<ConfiguredScope>,
}

/// An event as the broker stored it.
#[derive(Debug, Clone)]
struct Produced {
    event: UsageEvent,
    partition: i32,
    offset: i64,
    timestamp_ms: u64,
}

impl Fixture {
    async fn new() -> Self {
        let brokers = common::brokers();
        let suffix = common::unique_suffix();
        let usage_topic = format!("tollgate.usage.quota-it.{suffix}");
        let quota_topic = format!("tollgate.quota.quota-it.{suffix}");
        // A busy broker may time out an admin request; creating a topic is idempotent, so try a few times.
        let kafka = KafkaConnection::new(brokers.as_str());
        retry("create the usage topic", || {
            topics::ensure(&kafka, &usage_topic, PARTITIONS)
        })
        .await;
        retry("create the quota topic", || {
            topics::ensure_quota(&kafka, &quota_topic)
        })
        .await;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        let scopes = quota::policy::from_gateway_toml(POLICY).unwrap();
        assert_eq!(
            scopes.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            [TEAM_A_MINI, ALL_MINI]
        );
        Self {
            brokers,
            usage_topic,
            quota_topic,
            producer,
            scopes,
        }
    }

    fn settings(&self, source: &str) -> QuotaSettings {
        QuotaSettings::new(
            &self.brokers,
            &self.usage_topic,
            &self.quota_topic,
            self.scopes.clone(),
            source,
        )
    }

    fn start(&self, source: &str) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(quota::run(self.settings(source), shutdown.clone()));
        Running { shutdown, task }
    }

    async fn produce(&self, event: &UsageEvent) -> Produced {
        let payload = serde_json::to_vec(event).unwrap();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.usage_topic)
                    .key(&event.data.consumer_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        Produced {
            event: event.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
            timestamp_ms: delivery.timestamp.to_millis().unwrap() as u64,
        }
    }

    /// Produces `event` to `partition` with the Kafka timestamp `timestamp_ms`.
    async fn produce_to(&self, event: &UsageEvent, partition: i32, timestamp_ms: i64) -> Produced {
        let payload = serde_json::to_vec(event).unwrap();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.usage_topic)
                    .key(&event.data.consumer_id)
                    .partition(partition)
                    .timestamp(timestamp_ms)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(delivery.timestamp.to_millis(), Some(timestamp_ms));
        Produced {
            event: event.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
            timestamp_ms: timestamp_ms as u64,
        }
    }

    async fn produce_all(&self, events: &[UsageEvent]) -> Vec<Produced> {
        let mut produced = Vec::with_capacity(events.len());
        for event in events {
            produced.push(self.produce(event).await);
        }
        produced
    }

    async fn produce_garbage(&self) {
        self.producer
            .send(
                FutureRecord::to(&self.usage_topic)
                    .key("team-a")
                    .payload(b"{\"specversion\":\"1.0\",\"id\":"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    fn scope(&self, key: &str) -> &ConfiguredScope {
        self.scopes.iter().find(|s| s.key == key).unwrap()
    }

    /// What a snapshot of `key` for the window starting at `window_start_ms` must say after `produced`
    /// (everything but `published_at_ms`, which is copied from `actual`). Events repeating an id count once;
    /// their offsets still count for the watermark.
    fn expected(
        &self,
        key: &str,
        window_start_ms: u64,
        produced: &[Produced],
        actual: &QuotaSnapshot,
    ) -> QuotaSnapshot {
        let configured = self.scope(key);
        let scope = &configured.scope;
        let window = scope.window_at(window_start_ms);
        let mut seen = std::collections::HashSet::new();
        let (mut used, mut events, mut newest) = (0, 0, 0);
        let mut watermarks = BTreeMap::<(String, i32), i64>::new();
        for p in produced {
            let data = &p.event.data;
            if !scope.matches_event(data) || scope.window_at(data.finished_at_ms) != window {
                continue;
            }
            let mark = watermarks
                .entry((p.event.source.clone(), p.partition))
                .or_insert(p.offset);
            *mark = (*mark).max(p.offset);
            newest = newest.max(p.timestamp_ms);
            if seen.insert(p.event.id) {
                used += scope.strategy.event_tokens(data);
                events += 1;
            }
        }
        QuotaSnapshot {
            scope: key.to_owned(),
            limit: configured.limit,
            strategy: scope.strategy,
            currency: None,
            window_start_ms: window.start_ms,
            window_end_ms: window.end_ms,
            used,
            events,
            watermarks: watermarks
                .into_iter()
                .map(|((gateway, partition), offset)| Watermark {
                    gateway,
                    partition,
                    offset,
                })
                .collect(),
            newest_event_ms: newest,
            published_at_ms: actual.published_at_ms,
        }
    }
}

/// A quota loop running in the background.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tollgate_billing_consumer::BillingError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the quota loop stops within 30s")
            .unwrap()
            .unwrap();
    }
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

/// The quota topic read from the beginning, as a gateway reads it.
struct QuotaTopic {
    consumer: StreamConsumer,
    snapshots: Vec<QuotaSnapshotEvent>,
    heartbeats: Vec<QuotaHeartbeatEvent>,
    /// Keys of dropped windows' tombstones.
    tombstones: Vec<String>,
}

impl QuotaTopic {
    fn open(brokers: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("quota-it-reader-{}", common::unique_suffix()))
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
            tombstones: Vec::new(),
        }
    }

    /// The newest snapshot per scope key, of the newest window published for it.
    fn latest(&self) -> BTreeMap<String, QuotaSnapshot> {
        let mut latest = BTreeMap::<String, QuotaSnapshot>::new();
        for event in &self.snapshots {
            let newer = latest
                .get(&event.data.scope)
                .is_none_or(|held| held.window_start_ms <= event.data.window_start_ms);
            if newer {
                latest.insert(event.data.scope.clone(), event.data.clone());
            }
        }
        latest
    }

    /// The newest snapshot of `key`'s window starting at `window_start_ms`.
    fn of_window(&self, key: &str, window_start_ms: u64) -> Option<&QuotaSnapshot> {
        self.snapshots
            .iter()
            .rev()
            .map(|e| &e.data)
            .find(|s| s.scope == key && s.window_start_ms == window_start_ms)
    }

    /// Reads until `done` holds, failing after [`DEADLINE`] with what was read.
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; latest snapshots: {:#?}; heartbeats: {}",
                self.latest(),
                self.heartbeats.len()
            );
            match tokio::time::timeout(Duration::from_millis(200), self.consumer.recv()).await {
                Err(_) => {}
                Ok(received) => {
                    let message = received.unwrap();
                    let key = std::str::from_utf8(message.key().unwrap()).unwrap().to_owned();
                    if key == HEARTBEAT_KEY {
                        self.heartbeats
                            .push(serde_json::from_slice(message.payload().unwrap()).unwrap());
                    } else {
                        let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
                            self.tombstones.push(key);
                            continue;
                        };
                        let event: QuotaSnapshotEvent = serde_json::from_slice(payload).unwrap();
                        assert!(event.is_expected_type(), "{event:?}");
                        assert_eq!(event.subject, event.data.scope);
                        assert_eq!(
                            key,
                            quota::windows::snapshot_key(&event.data.scope, event.data.window_start_ms),
                            "one key per (scope, window)"
                        );
                        self.snapshots.push(event);
                    }
                }
            }
        }
    }

    /// Reads until the newest snapshot of every scope in `expected` (key, window start, events) is of that
    /// window and counts exactly that many events; returns the newest snapshots.
    async fn until_counted(
        &mut self,
        what: &str,
        expected: &[(&str, u64, u64)],
    ) -> BTreeMap<String, QuotaSnapshot> {
        self.until(what, |topic| {
            let latest = topic.latest();
            expected.iter().all(|(key, window_start_ms, events)| {
                latest
                    .get(*key)
                    .is_some_and(|s| s.window_start_ms == *window_start_ms && s.events == *events)
            })
        })
        .await;
        self.latest()
    }
}

fn minute(n: u64) -> u64 {
    HOUR_START + n * 60_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_count_each_scope_exactly_with_watermarks_per_gateway_and_partition() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);

    // Before the loop starts (read by the rebuild): team-a and team-b on gpt-4o-mini from two gateways,
    // team-a on another model, and a message that is not a usage event.
    let mut produced = fx
        .produce_all(&[
            common::usage_event(GW1, "team-a", "gpt-4o-mini", 100, 20, minute(1)),
            common::usage_event(GW2, "team-a", "gpt-4o-mini", 7, 3, minute(2)),
            common::usage_event(GW1, "team-b", "gpt-4o-mini", 50, 5, minute(3)),
            common::usage_event(GW1, "team-a", "claude-haiku", 1000, 1000, minute(4)),
        ])
        .await;
    fx.produce_garbage().await;

    let running = fx.start("tollgate-billing-consumer/it-a");
    let rebuilt = quota_topic
        .until_counted(
            "rebuilt snapshots",
            &[(TEAM_A_MINI, HOUR_START, 2), (ALL_MINI, HOUR_START, 3)],
        )
        .await;
    for key in [TEAM_A_MINI, ALL_MINI] {
        let actual = &rebuilt[key];
        assert_eq!(*actual, fx.expected(key, HOUR_START, &produced, actual));
    }
    assert_eq!(rebuilt[TEAM_A_MINI].used, 130);
    assert_eq!(rebuilt[ALL_MINI].used, 157);
    assert_eq!(
        rebuilt[TEAM_A_MINI].window(),
        Window {
            start_ms: HOUR_START,
            end_ms: HOUR_START + HOUR_MS
        }
    );
    assert!(
        quota_topic
            .snapshots
            .iter()
            .all(|e| e.source == "tollgate-billing-consumer/it-a"),
        "published by the loop"
    );

    // While it runs: more of the same, one at a time, each seen in a snapshot.
    let live = [
        common::usage_event(GW2, "team-b", "gpt-4o-mini", 11, 1, minute(10)),
        common::usage_event(GW1, "team-a", "gpt-4o-mini", 3, 4, minute(11)),
        common::usage_event(GW2, "team-a", "gpt-4o-mini", 5, 6, minute(59)),
    ];
    let mut all_mini_events = 3;
    let mut team_a_events = 2;
    for event in &live {
        produced.push(fx.produce(event).await);
        all_mini_events += 1;
        team_a_events += u64::from(event.data.consumer_id == "team-a");
        quota_topic
            .until_counted(
                "a live event",
                &[
                    (TEAM_A_MINI, HOUR_START, team_a_events),
                    (ALL_MINI, HOUR_START, all_mini_events),
                ],
            )
            .await;
    }
    let latest = quota_topic.latest();
    for key in [TEAM_A_MINI, ALL_MINI] {
        let actual = &latest[key];
        assert_eq!(*actual, fx.expected(key, HOUR_START, &produced, actual), "{key}");
    }
    assert_eq!(latest[TEAM_A_MINI].used, 130 + 7 + 11);
    assert_eq!(latest[ALL_MINI].used, 157 + 11 + 3 + 5);
    let gateways: Vec<_> = latest[ALL_MINI]
        .watermarks
        .iter()
        .map(|w| w.gateway.as_str())
        .collect();
    assert!(gateways.contains(&GW1) && gateways.contains(&GW2), "{gateways:?}");

    // Heartbeats: one per second, done rebuilding, naming the scope count.
    quota_topic
        .until("a heartbeat after the rebuild", |t| {
            t.heartbeats
                .iter()
                .any(|h| !h.data.rebuilding && h.data.scopes == 2)
        })
        .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_window_by_event_time_starts_from_zero() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);
    let running = fx.start("tollgate-billing-consumer/it-b");

    let mut produced = fx
        .produce_all(&[
            common::usage_event(GW1, "team-a", "gpt-4o-mini", 10, 1, minute(58)),
            common::usage_event(GW1, "team-a", "gpt-4o-mini", 20, 2, minute(59)),
        ])
        .await;
    let first = quota_topic
        .until_counted("the first window", &[(TEAM_A_MINI, HOUR_START, 2)])
        .await;
    assert_eq!(first[TEAM_A_MINI].window_start_ms, HOUR_START);
    assert_eq!(first[TEAM_A_MINI].used, 33);

    // The next hour by event time (however soon after by the clock).
    let next_hour = HOUR_START + HOUR_MS;
    produced.extend(
        fx.produce_all(&[
            common::usage_event(GW1, "team-a", "gpt-4o-mini", 4, 1, next_hour),
            common::usage_event(GW2, "team-b", "gpt-4o-mini", 6, 0, next_hour + 1),
        ])
        .await,
    );
    let second = quota_topic
        .until_counted(
            "the next window",
            &[(TEAM_A_MINI, next_hour, 1), (ALL_MINI, next_hour, 2)],
        )
        .await;
    for key in [TEAM_A_MINI, ALL_MINI] {
        let actual = &second[key];
        assert_eq!(actual.window_start_ms, next_hour, "{key}");
        assert_eq!(actual.window_end_ms, next_hour + HOUR_MS, "{key}");
        assert_eq!(*actual, fx.expected(key, next_hour, &produced, actual), "{key}");
    }
    assert_eq!(second[TEAM_A_MINI].used, 5);
    assert_eq!(second[ALL_MINI].used, 10);

    // A late event for the previous hour is counted there and published as that hour's snapshot (a gateway
    // whose clock is still in it sees its usage); the newest window's snapshot is untouched by it.
    let before = quota_topic.snapshots.len();
    produced.push(
        fx.produce(&common::usage_event(
            GW1,
            "team-a",
            "gpt-4o-mini",
            1,
            1,
            minute(30),
        ))
        .await,
    );
    produced.push(
        fx.produce(&common::usage_event(
            GW1,
            "team-a",
            "gpt-4o-mini",
            2,
            0,
            next_hour + 2,
        ))
        .await,
    );
    let after = quota_topic
        .until_counted("the event after the late one", &[(TEAM_A_MINI, next_hour, 2)])
        .await;
    assert_eq!(after[TEAM_A_MINI].window_start_ms, next_hour);
    assert_eq!(after[TEAM_A_MINI].used, 7);
    quota_topic
        .until("the previous window's own snapshot", |t| {
            t.of_window(TEAM_A_MINI, HOUR_START)
                .is_some_and(|s| s.events == 3)
        })
        .await;
    let previous = quota_topic.of_window(TEAM_A_MINI, HOUR_START).unwrap().clone();
    assert_eq!(
        previous,
        fx.expected(TEAM_A_MINI, HOUR_START, &produced, &previous)
    );
    assert_eq!(previous.used, 35);
    assert!(
        quota_topic.snapshots[before..]
            .iter()
            .filter(|e| e.data.window_start_ms == next_hour)
            .all(|e| e.data.used <= 7),
        "the late event never shows in the newest window"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_loop_rebuilds_the_exact_totals() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);

    let mut produced = Vec::new();
    let mut events_before = Vec::new();
    for i in 0..12_u32 {
        let consumer = if i % 3 == 0 { "team-b" } else { "team-a" };
        let source = if i % 2 == 0 { GW1 } else { GW2 };
        events_before.push(common::usage_event(
            source,
            consumer,
            "gpt-4o-mini",
            10 + i,
            i,
            minute(u64::from(i)),
        ));
    }
    produced.extend(fx.produce_all(&events_before[..6]).await);
    let first = fx.start("tollgate-billing-consumer/it-c-1");
    produced.extend(fx.produce_all(&events_before[6..]).await);
    quota_topic
        .until_counted(
            "the first run's snapshots",
            &[(TEAM_A_MINI, HOUR_START, 8), (ALL_MINI, HOUR_START, 12)],
        )
        .await;
    first.stop().await;

    // While no loop runs: more events.
    let while_stopped = [
        common::usage_event(GW2, "team-a", "gpt-4o-mini", 40, 2, minute(40)),
        common::usage_event(GW1, "team-b", "gpt-4o-mini", 30, 3, minute(41)),
        common::usage_event(GW1, "team-a", "gpt-4o-mini", 20, 4, minute(42)),
    ];
    produced.extend(fx.produce_all(&while_stopped).await);

    let first_run_snapshots = quota_topic.snapshots.len();
    let second = fx.start("tollgate-billing-consumer/it-c-2");
    quota_topic
        .until("the second run's snapshots", |t| {
            let ours: BTreeMap<_, _> = t.snapshots[first_run_snapshots..]
                .iter()
                .filter(|e| e.source == "tollgate-billing-consumer/it-c-2")
                .map(|e| (e.data.scope.clone(), ()))
                .collect();
            ours.len() == 2
        })
        .await;
    let latest = quota_topic.latest();
    for key in [TEAM_A_MINI, ALL_MINI] {
        let actual = &latest[key];
        assert_eq!(*actual, fx.expected(key, HOUR_START, &produced, actual), "{key}");
    }
    assert_eq!(latest[TEAM_A_MINI].events, 10);
    assert_eq!(latest[ALL_MINI].events, 15);
    // The rebuild published the totals once, never a partial count.
    for event in &quota_topic.snapshots[first_run_snapshots..] {
        let total = fx.expected(&event.data.scope, HOUR_START, &produced, &event.data);
        assert_eq!(
            event.data, total,
            "every snapshot of the second run has the full count"
        );
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_twice_counts_once() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);
    let running = fx.start("tollgate-billing-consumer/it-d");

    let twice = common::usage_event(GW1, "team-a", "gpt-4o-mini", 100, 10, minute(5));
    let mut produced = vec![fx.produce(&twice).await];
    quota_topic
        .until_counted("the first delivery", &[(TEAM_A_MINI, HOUR_START, 1)])
        .await;
    // The gateway's spool delivers it again (same envelope id), then a new event follows.
    produced.push(fx.produce(&twice).await);
    produced.push(
        fx.produce(&common::usage_event(
            GW1,
            "team-a",
            "gpt-4o-mini",
            1,
            1,
            minute(6),
        ))
        .await,
    );
    let latest = quota_topic
        .until_counted("the event after the duplicate", &[(TEAM_A_MINI, HOUR_START, 2)])
        .await;
    let actual = &latest[TEAM_A_MINI];
    assert_eq!(actual.used, 112, "the duplicate adds nothing");
    assert_eq!(*actual, fx.expected(TEAM_A_MINI, HOUR_START, &produced, actual));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_reads_from_the_longest_window_plus_margin_ago() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);
    let now = chrono::Utc::now().timestamp_millis();
    let three_hours_ago = now - 3 * HOUR_MS as i64;

    // Partition 0 holds only records older (by Kafka time) than 1h + 5 min, partition 1 old ones then recent
    // ones, partition 2 nothing. Their event time is the same window: only the Kafka time tells them apart.
    let old = common::usage_event(GW1, "team-a", "gpt-4o-mini", 1000, 0, minute(1));
    fx.produce_to(&old, 0, three_hours_ago).await;
    fx.produce_to(&old, 0, three_hours_ago + 1).await;
    let old_too = common::usage_event(GW1, "team-a", "gpt-4o-mini", 2000, 0, minute(2));
    fx.produce_to(&old_too, 1, three_hours_ago).await;
    let mut produced = Vec::new();
    for (i, at) in [(3, now - 10_000), (4, now - 5_000)] {
        let recent = common::usage_event(GW2, "team-a", "gpt-4o-mini", i, 1, minute(i.into()));
        produced.push(fx.produce_to(&recent, 1, at).await);
    }

    let running = fx.start("tollgate-billing-consumer/it-e");
    let rebuilt = quota_topic
        .until_counted("the rebuilt snapshot", &[(TEAM_A_MINI, HOUR_START, 2)])
        .await;
    let actual = &rebuilt[TEAM_A_MINI];
    assert_eq!(*actual, fx.expected(TEAM_A_MINI, HOUR_START, &produced, actual));
    assert_eq!(actual.used, 9);
    running.stop().await;
}

/// A gateway whose clock is a day ahead emits one event: the loop counts it at its broker timestamp, in the
/// current window, beside a normal event — it neither opens tomorrow's window nor becomes the published state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_a_clock_a_day_ahead_counts_in_the_current_window() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);
    let running = fx.start("tollgate-billing-consumer/it-f");
    let now = chrono::Utc::now().timestamp_millis();
    let window = Window::containing(now as u64, HOUR_MS);
    let on_time = common::usage_event(GW1, "team-a", "gpt-4o-mini", 10, 1, now as u64);
    let ahead = common::usage_event(GW2, "team-a", "gpt-4o-mini", 20, 2, now as u64 + 24 * HOUR_MS);
    fx.produce_to(&on_time, 0, now).await;
    fx.produce_to(&ahead, 0, now).await;
    let latest = quota_topic
        .until_counted(
            "both events in the current window",
            &[(TEAM_A_MINI, window.start_ms, 2)],
        )
        .await;
    assert_eq!(latest[TEAM_A_MINI].used, 33);
    assert!(
        quota_topic
            .snapshots
            .iter()
            .all(|e| e.data.window_start_ms == window.start_ms),
        "no snapshot of a future window"
    );
    running.stop().await;
}

/// Two quota loops on one quota topic (a deploy overlapping the old process, a second `quota` by mistake): only
/// the one holding the lease publishes — snapshots and heartbeats alike — while the other counts as a standby;
/// when the holder stops, the standby takes over with the full count. Per (scope, window), the published
/// watermarks never go back. Before the lease both published, each its own view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_quota_loops_only_the_lease_holder_publishes_and_watermarks_never_go_back() {
    let fx = Fixture::new().await;
    let mut quota_topic = QuotaTopic::open(&fx.brokers, &fx.quota_topic);
    let mut produced = vec![
        fx.produce(&common::usage_event(
            GW1,
            "team-a",
            "gpt-4o-mini",
            10,
            1,
            minute(1),
        ))
        .await,
    ];
    let (a, b) = (
        "tollgate-billing-consumer/it-g-a",
        "tollgate-billing-consumer/it-g-b",
    );
    let mut loops = vec![(a, fx.start(a))];
    quota_topic
        .until_counted("the first loop's snapshot", &[(TEAM_A_MINI, HOUR_START, 1)])
        .await;
    loops.push((b, fx.start(b)));
    // Let the second loop join the group and rebuild; the lease may move to it or stay. The group settles when
    // the heartbeats come from one loop only for a while (a busy machine takes longer than a quiet one).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let settled_from = quota_topic.heartbeats.len();
    quota_topic
        .until("a settled lease", |t| {
            let recent = &t.heartbeats[settled_from..];
            recent.len() >= 4
                && recent[recent.len() - 4..]
                    .iter()
                    .all(|h| h.source == recent[recent.len() - 1].source)
        })
        .await;

    let (snapshots_from, heartbeats_from) = (quota_topic.snapshots.len(), quota_topic.heartbeats.len());
    for i in 0..5_u64 {
        produced.push(
            fx.produce(&common::usage_event(
                GW2,
                "team-a",
                "gpt-4o-mini",
                5,
                1,
                minute(2 + i),
            ))
            .await,
        );
        quota_topic
            .until_counted("a live event", &[(TEAM_A_MINI, HOUR_START, 2 + i)])
            .await;
    }
    quota_topic
        .until("two more heartbeats", |t| {
            t.heartbeats.len() >= heartbeats_from + 2
        })
        .await;
    let publishers: std::collections::BTreeSet<&str> = quota_topic.snapshots[snapshots_from..]
        .iter()
        .map(|e| e.source.as_str())
        .chain(
            quota_topic.heartbeats[heartbeats_from..]
                .iter()
                .map(|e| e.source.as_str()),
        )
        .collect();
    assert_eq!(publishers.len(), 1, "one writer at a time: {publishers:?}");
    let holder = *publishers.iter().next().unwrap();

    // The holder stops; the standby takes over and publishes the full count.
    let at = loops.iter().position(|(name, _)| *name == holder).unwrap();
    let (_, running) = loops.remove(at);
    running.stop().await;
    let (standby, still_running) = loops.remove(0);
    let after_stop = quota_topic.snapshots.len();
    produced.push(
        fx.produce(&common::usage_event(
            GW1,
            "team-a",
            "gpt-4o-mini",
            1,
            1,
            minute(9),
        ))
        .await,
    );
    quota_topic
        .until("the standby's snapshot with every event", |t| {
            t.snapshots[after_stop..]
                .iter()
                .any(|e| e.source == standby && e.data.scope == TEAM_A_MINI && e.data.events == 7)
        })
        .await;
    let latest = quota_topic.latest();
    let actual = &latest[TEAM_A_MINI];
    assert_eq!(*actual, fx.expected(TEAM_A_MINI, HOUR_START, &produced, actual));

    // Never backwards: each snapshot of a (scope, window) covers what the one before it covered.
    let mut held: BTreeMap<(String, u64), QuotaSnapshot> = BTreeMap::new();
    for event in &quota_topic.snapshots {
        let key = (event.data.scope.clone(), event.data.window_start_ms);
        if let Some(before) = held.get(&key) {
            for mark in &before.watermarks {
                assert!(
                    event.data.covers(&mark.gateway, mark.partition, mark.offset),
                    "a snapshot from {} went back from {mark:?}: {:?}",
                    event.source,
                    event.data
                );
            }
        }
        held.insert(key, event.data.clone());
    }
    still_running.stop().await;
}

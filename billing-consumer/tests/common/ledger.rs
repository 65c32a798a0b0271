//! A ledger of its own for one test: a fresh usage topic, a consumer group and a ClickHouse database named for
//! it (migrated), a producer, and the ingest loop run until everything produced is committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::ingest;
use tollgate_billing_consumer::ingest::IngestSettings;
use tollgate_billing_consumer::kafka::KafkaSettings;
use tollgate_billing_consumer::kafka::topics;
use tollgate_billing_consumer::ledger::ClickHouseSettings;
use tollgate_billing_consumer::ledger::migrations;
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_schemas::usage::UsageEvent;

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 3;
/// How long a test waits for ingest to commit everything.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A run of its own: a topic, a consumer group and a ClickHouse database named for it, migrated, and a producer.
pub struct Fixture {
    pub brokers: String,
    pub ch: ClickHouseSettings,
    pub topic: String,
    pub group: String,
    pub producer: FutureProducer,
}

impl Fixture {
    pub async fn new() -> Self {
        let brokers = super::brokers();
        let suffix = super::unique_suffix();
        let ch = super::clickhouse(&suffix);
        let topic = format!("tollgate.usage.it.{suffix}");
        let group = format!("tollgate-billing-it-{suffix}");
        topics::ensure(&brokers.as_str().into(), &topic, PARTITIONS)
            .await
            .unwrap();
        migrations::apply(&ch).await.unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        Self {
            brokers,
            ch,
            topic,
            group,
            producer,
        }
    }

    /// Ingest settings for this topic, group and database, in small batches.
    pub fn ingest_settings(&self) -> IngestSettings {
        IngestSettings {
            kafka: KafkaSettings {
                connection: self.brokers.as_str().into(),
                topic: self.topic.clone(),
                group_id: self.group.clone(),
            },
            clickhouse: self.ch.clone(),
            batch_size: 100,
            batch_wait: Duration::from_millis(100),
        }
    }

    /// Produces `events` (keyed by consumer, as the gateway does), all in flight at once.
    pub async fn produce_all(&self, events: &[UsageEvent]) {
        let sends = events.iter().map(|event| {
            let payload = serde_json::to_vec(event).unwrap();
            let producer = self.producer.clone();
            let topic = self.topic.clone();
            let key = event.data.consumer_id.clone();
            async move { produce(&producer, &topic, &key, &payload).await }
        });
        futures_util::future::join_all(sends).await;
    }

    /// Runs ingest with `prices` until the group has committed all `messages` of the topic, then stops it.
    pub async fn ingest(&self, prices: PriceTable, messages: i64) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingest::run_with_prices(
            self.ingest_settings(),
            Arc::new(prices),
            shutdown.clone(),
        ));
        wait_until_committed_to_the_end(&self.brokers, &self.group, &self.topic, messages).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

pub async fn produce_event(producer: &FutureProducer, topic: &str, event: &UsageEvent) {
    produce(
        producer,
        topic,
        &event.data.consumer_id,
        &serde_json::to_vec(event).unwrap(),
    )
    .await;
}

/// (committed, end) offset per partition of `topic` for `group`.
pub fn offsets(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(topic, partition);
    }
    let committed = probe.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let committed = match committed.find_partition(topic, partition).unwrap().offset() {
                Offset::Offset(o) => o,
                // Nothing committed: the same as committed at the start of this fresh topic.
                _ => 0,
            };
            let (_, end) = probe
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            (partition, (committed, end))
        })
        .collect()
}

pub async fn count(ch: &ClickHouseSettings, sql: &str) -> u64 {
    ch.client().query(sql).fetch_one().await.unwrap()
}

/// Polls until the group has committed every partition to its end, at most [`DEADLINE`].
pub async fn wait_until_committed_to_the_end(
    brokers: &str,
    group: &str,
    topic: &str,
    expected_messages: i64,
) {
    wait_until_committed_within(brokers, group, topic, expected_messages, DEADLINE).await;
}

/// Polls until the group has committed every partition to its end, at most `deadline`.
pub async fn wait_until_committed_within(
    brokers: &str,
    group: &str,
    topic: &str,
    expected_messages: i64,
    deadline: Duration,
) {
    let started = Instant::now();
    loop {
        let offsets = offsets(brokers, group, topic);
        let end: i64 = offsets.values().map(|(_, end)| end).sum();
        if end == expected_messages && offsets.values().all(|(committed, end)| committed == end) {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "offsets not committed to the end within {deadline:?}: {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

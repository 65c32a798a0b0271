//! Kafka plumbing that the gateway and billing-consumer share: [`KafkaConnection`], where every client connects
//! with the operator's librdkafka properties applied; [`BrokerWatch`], a client context that notices when every broker connection is down, and [`RenewingProducer`], an idempotent producer
//! that replaces itself after a failed send or a lost broker, so that a broker which restarted without the old
//! producer's sequence state never sees that producer again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// librdkafka's longest wait before reconnecting to a broker that went away (its default is 10 s): producers,
/// consumers and followers resume soon after the broker is back.
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Properties every service sets on its clients itself, because its guarantees depend on them (who reads
/// what, when offsets are committed, how sends are acknowledged), or because they have a setting of their own
/// (`bootstrap.servers`): an operator's properties may not name them.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "isolation.level",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
];

/// Where a service's Kafka clients connect, and the operator's librdkafka properties (security, timeouts,
/// buffer sizes) that every one of its clients applies: producers, group consumers, followers, readers and
/// admin clients alike. `Debug` shows the property keys only: their values may be credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, …), applied to every client before its
    /// own settings.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConnection {
    /// A connection to `brokers` without extra properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// This connection with `properties` applied to every client.
    #[must_use]
    pub fn with_properties(mut self, properties: BTreeMap<String, String>) -> Self {
        self.properties = properties;
        self
    }

    /// What every client starts from: the bootstrap servers, its client id, a short reconnect backoff and the
    /// operator's properties. Each client sets what its guarantees depend on after this, over any property.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A consumer that is assigned partitions by hand, outside any consumer group: librdkafka needs a group id
    /// to assign partitions, so it gets a fresh one (`{group_prefix}-{uuid}`) that is never joined, and nothing
    /// is ever committed. Set over the operator's properties, which cannot make it a group member.
    pub fn groupless_consumer_config(&self, client_id: &str, group_prefix: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set(
                "group.id",
                format!("{group_prefix}-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }
}

impl From<&str> for KafkaConnection {
    fn from(brokers: &str) -> Self {
        Self::new(brokers)
    }
}

impl From<&String> for KafkaConnection {
    fn from(brokers: &String) -> Self {
        Self::new(brokers.as_str())
    }
}

impl From<String> for KafkaConnection {
    fn from(brokers: String) -> Self {
        Self::new(brokers)
    }
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why `key` cannot be an operator's property, if it cannot: empty, not a librdkafka property name, or one of
/// [`RESERVED_PROPERTIES`].
pub fn property_problem(key: &str) -> Option<String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Some(format!("`{key}` is not a librdkafka property name"));
    }
    RESERVED_PROPERTIES
        .contains(&key)
        .then(|| format!("`{key}` is set by Tollgate itself and cannot be overridden"))
}

/// How often a [`RenewingProducer`] looks whether its broker connections were lost.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// A producer whose context is a [`BrokerWatch`].
pub type WatchedProducer = FutureProducer<BrokerWatch>;

/// The context of a producer that notes when librdkafka reports every broker connection down
/// (`AllBrokersDown`) after something was sent through it. Such a producer must not send again: the broker may come back without its idempotent state (a single broker that crashed), and librdkafka
/// bumps a producer's epoch on its own after timed-out or purged sends — a batch with a producer id or epoch
/// the broker does not know makes Tansu 0.6 panic and then refuse every request. Such a producer is destroyed
/// (what it holds is purged) and replaced; a new one asks the broker for a new producer id. A producer that lost
/// the broker before it sent anything holds nothing to retransmit and is kept. Other client errors are logged as
/// rdkafka's default context does.
#[derive(Debug, Clone, Default)]
pub struct BrokerWatch {
    state: Arc<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    lost: AtomicBool,
    sent: AtomicBool,
}

impl BrokerWatch {
    /// A producer made from `config` with a fresh watch, and the watch.
    pub fn producer(config: &ClientConfig) -> Result<(WatchedProducer, Self), KafkaError> {
        let watch = Self::default();
        let producer = config.create_with_context(watch.clone())?;
        Ok((producer, watch))
    }

    /// Something is about to be sent through this producer.
    pub fn sending(&self) {
        self.state.sent.store(true, Ordering::Relaxed);
    }

    /// Whether every broker connection was lost after something was sent: the producer must not send again.
    pub fn stale(&self) -> bool {
        self.state.lost.load(Ordering::Relaxed)
    }
}

impl ClientContext for BrokerWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        // Only a loss after a send counts: a producer made while the broker is down reports one before it has
        // sent anything, and must not be purged once it connects and sends after the broker is back (its
        // in-flight batches may have been written: purging them would send them twice).
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && self.state.sent.load(Ordering::Relaxed)
        {
            self.state.lost.store(true, Ordering::Relaxed);
        }
        tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
    }
}

/// An idempotent producer that is replaced by a new one after any failed send, and within
/// [`WATCH_INTERVAL`] of becoming [`BrokerWatch::stale`] (every broker connection lost after a send). A broker that
/// restarted without the old producer's sequence state must never see that producer again: Tansu answers it
/// with a panic and then refuses every request, and Apache Kafka fences it with `OutOfOrderSequence` or
/// `UnknownProducerId`. Replacing purges what the old producer still holds (its sends fail, and their callers
/// send again), and a new producer starts a new idempotent session (a new producer id), so the next send works
/// as soon as the broker does. Each renewal increments the counter named at construction (label `producer`)
/// and is logged.
pub struct RenewingProducer {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// A name for logs and the counter's `producer` label (`config`, `quota`).
    name: &'static str,
    /// The counter of renewals, named by the service (`tollgate_kafka_producer_renewals_total`, …).
    renewals_counter: &'static str,
    current: Mutex<(WatchedProducer, BrokerWatch)>,
}

impl std::fmt::Debug for RenewingProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingProducer")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl RenewingProducer {
    /// A producer made from `config`, renewed from it after every failed send and after a lost broker (watched
    /// by a thread of its own, which ends with the producer).
    pub fn new(
        config: ClientConfig,
        name: &'static str,
        renewals_counter: &'static str,
    ) -> Result<Self, KafkaError> {
        let current = BrokerWatch::producer(&config)?;
        let inner = Arc::new(Inner {
            config,
            name,
            renewals_counter,
            current: Mutex::new(current),
        });
        let watched = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name(format!("tollgate-kafka-watch-{name}"))
            .spawn(move || watch(&watched))
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the producer's watch: {e}")))?;
        Ok(Self { inner })
    }

    /// Sends one record and waits up to `timeout` for room in the queue and then for its delivery (the
    /// producer's `message.timeout.ms`); its (partition, offset). After a failure the producer is replaced
    /// before the next send.
    pub async fn send(
        &self,
        record: FutureRecord<'_, str, [u8]>,
        timeout: Duration,
    ) -> Result<(i32, i64), KafkaError> {
        let (mut producer, mut watch) = self.inner.current();
        if watch.stale() {
            // It lost the broker after a send that the watch has not replaced it for yet.
            self.inner.renew(&producer, "every broker connection was lost");
            (producer, watch) = self.inner.current();
        }
        watch.sending();
        match producer.send(record, Timeout::After(timeout)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((error, _)) => {
                self.inner.renew(&producer, &error.to_string());
                Err(error)
            }
        }
    }

    /// Waits up to `timeout` until everything sent is delivered (blocking: call it off the async runtime).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.current().0.flush(Timeout::After(timeout))
    }
}

/// Renews the producer once it is stale, until it is dropped.
fn watch(inner: &Weak<Inner>) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (producer, watch) = inner.current();
        if watch.stale() {
            inner.renew(&producer, "every broker connection was lost");
        }
    }
}

impl Inner {
    fn current(&self) -> (WatchedProducer, BrokerWatch) {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` (unless that happened already) with a new producer.
    fn renew(&self, failed: &WatchedProducer, why: &str) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !std::ptr::eq(current.0.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match BrokerWatch::producer(&self.config) {
            Ok(renewed) => {
                let (old, _) = std::mem::replace(&mut *current, renewed);
                // Dropping purges what it holds and waits a moment for the purge: not on this thread.
                std::thread::spawn(move || {
                    old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                    drop(old);
                });
                metrics::counter!(self.renewals_counter, "producer" => self.name).increment(1);
                tracing::warn!(
                    producer = self.name,
                    reason = why,
                    "Replaced the Kafka producer with a new idempotent session."
                );
            }
            Err(create) => {
                tracing::error!(producer = self.name, reason = why, %create, "A new Kafka producer could not be made; keeping the old one.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_gets_the_operators_properties() {
        let connection = KafkaConnection::new("kafka:9092").with_properties(BTreeMap::from([
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ("sasl.password".to_owned(), "hunter2".to_owned()),
        ]));
        let config = connection.client_config("tollgate-test");
        assert_eq!(config.get("bootstrap.servers"), Some("kafka:9092"));
        assert_eq!(config.get("client.id"), Some("tollgate-test"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
    }

    #[test]
    fn a_groupless_consumer_has_a_fresh_group_and_never_commits_whatever_the_properties_say() {
        let connection = KafkaConnection::new("kafka:9092").with_properties(BTreeMap::from([(
            "enable.auto.commit".to_owned(),
            "true".to_owned(),
        )]));
        let one = connection.groupless_consumer_config("tollgate-test", "tollgate-test-reader");
        let two = connection.groupless_consumer_config("tollgate-test", "tollgate-test-reader");
        let group = one.get("group.id").unwrap();
        assert!(group.starts_with("tollgate-test-reader-"), "{group}");
        assert_ne!(
            Some(group),
            two.get("group.id"),
            "a fresh group for each consumer"
        );
        assert_eq!(one.get("enable.auto.commit"), Some("false"));
        assert_eq!(one.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn debug_shows_property_keys_never_their_values() {
        let connection = KafkaConnection::new("kafka:9092").with_properties(BTreeMap::from([(
            "sasl.password".to_owned(),
            "hunter2".to_owned(),
        )]));
        let shown = format!("{connection:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn reserved_and_malformed_property_names_are_refused() {
        for key in [
            "group.id",
            "enable.auto.commit",
            "acks",
            "bootstrap.servers",
            "",
            "a b",
            "x=y",
        ] {
            assert!(property_problem(key).is_some(), "{key}");
        }
        for key in [
            "security.protocol",
            "sasl.mechanism",
            "ssl.ca.location",
            "socket.timeout.ms",
        ] {
            assert_eq!(property_problem(key), None, "{key}");
        }
    }
}

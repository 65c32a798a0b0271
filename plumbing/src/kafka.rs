//! Kafka plumbing that the gateway and billing-consumer share: [`BrokerWatch`], a client
//! context that notices when every broker connection is down, and [`RenewingProducer`], an idempotent producer
//! that replaces itself after a failed send or a lost broker, so that a broker which restarted without the old
//! producer's sequence state never sees that producer again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

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

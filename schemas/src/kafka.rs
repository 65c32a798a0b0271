//! Kafka plumbing that the gateway and billing-consumer share (feature `kafka`): [`RenewingProducer`], an
//! idempotent producer that replaces itself after a failed send, so that a broker which restarted without the
//! old producer's sequence state never sees that producer again.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// An idempotent producer that is replaced by a new one after any failed send. A broker that restarted without
/// the old producer's sequence state must never see that producer again: Tansu answers it with a panic and then
/// refuses every request, and Apache Kafka fences it with `OutOfOrderSequence` or `UnknownProducerId`. A new
/// producer starts a new idempotent session (a new producer id), so the next send works as soon as the broker
/// does. Each renewal increments the counter named at construction (label `producer`) and is logged.
pub struct RenewingProducer {
    config: ClientConfig,
    /// A name for logs and the counter's `producer` label (`config`, `quota`).
    name: &'static str,
    /// The counter of renewals, named by the service (`tollgate_kafka_producer_renewals_total`, …).
    renewals_counter: &'static str,
    producer: Mutex<FutureProducer>,
}

impl std::fmt::Debug for RenewingProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingProducer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RenewingProducer {
    /// A producer made from `config`, renewed from it after every failed send.
    pub fn new(
        config: ClientConfig,
        name: &'static str,
        renewals_counter: &'static str,
    ) -> Result<Self, KafkaError> {
        let producer = config.create()?;
        Ok(Self {
            config,
            name,
            renewals_counter,
            producer: Mutex::new(producer),
        })
    }

    /// Sends one record and waits up to `timeout` for room in the queue and then for its delivery (the
    /// producer's `message.timeout.ms`); its (partition, offset). After a failure the producer is replaced
    /// before the next send.
    pub async fn send(
        &self,
        record: FutureRecord<'_, str, [u8]>,
        timeout: Duration,
    ) -> Result<(i32, i64), KafkaError> {
        let producer = self.current();
        match producer.send(record, Timeout::After(timeout)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((error, _)) => {
                self.renew(&producer, &error);
                Err(error)
            }
        }
    }

    /// Waits up to `timeout` until everything sent is delivered (blocking: call it off the async runtime).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(Timeout::After(timeout))
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` (unless another send already did) with a new producer.
    fn renew(&self, failed: &FutureProducer, error: &KafkaError) {
        let mut producer = self
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !std::ptr::eq(producer.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(renewed) => {
                let old = std::mem::replace(&mut *producer, renewed);
                // Destroying a producer waits for what it still holds: not on this thread.
                std::thread::spawn(move || drop(old));
                metrics::counter!(self.renewals_counter, "producer" => self.name).increment(1);
                tracing::warn!(producer = self.name, %error, "A send failed: replaced the Kafka producer with a new idempotent session.");
            }
            Err(create) => {
                tracing::error!(producer = self.name, %error, %create, "A send failed and a new Kafka producer could not be made; keeping the old one.");
            }
        }
    }
}

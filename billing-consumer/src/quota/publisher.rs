//! What the quota loop writes to the quota topic: each [`QuotaSnapshot`] in its CloudEvent keyed by its scope
//! and window ([`snapshot_key`]: one per (scope, window) on the compacted topic), a tombstone for each published
//! window the loop dropped, and [`QuotaHeartbeat`]s keyed [`HEARTBEAT_KEY`], from an idempotent producer
//! (`acks=all`) so that a retried send neither reorders nor duplicates a scope's snapshots on the compacted topic.
//! The producer renews itself after a failed send ([`RenewingProducer`]): a broker restarted after a crash
//! never sees a producer whose sequence state it lost, and publishing resumes as soon as the broker is back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use tollgate_plumbing::kafka::RenewingProducer;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::quota::{HEARTBEAT_KEY, QuotaHeartbeat, QuotaSnapshot};

use tollgate_plumbing::kafka::KafkaConnection;

use crate::error::BillingError;
use crate::quota::windows::snapshot_key;
use crate::telemetry::metrics as m;

/// How long a message may wait for delivery (including the producer's own retries).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer and where it writes.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RenewingProducer>,
    topic: String,
    source: String,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher to `topic`, signing events with `source`.
    pub fn new(kafka: &KafkaConnection, topic: &str, source: &str) -> Result<Self, BillingError> {
        let mut config = kafka.client_config(crate::kafka::CLIENT_ID);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        let producer = RenewingProducer::new(config, "quota", m::KAFKA_PRODUCER_RENEWALS)
            .map_err(BillingError::kafka("create quota producer"))?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: topic.to_owned(),
            source: source.to_owned(),
        })
    }

    /// Sends every snapshot at once and waits for all deliveries. Returns the scope key and window start of
    /// each snapshot that was not delivered (logged and counted here), to be published again. `record_lag` adds each delivered
    /// snapshot's lag to the lag histogram (live snapshots only: after a rebuild the newest event may be old).
    pub async fn snapshots(&self, snapshots: Vec<QuotaSnapshot>, record_lag: bool) -> Vec<(String, u64)> {
        let mut failed = Vec::new();
        let mut encoded = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            let key = (snapshot.scope.clone(), snapshot.window_start_ms);
            let newest_event_ms = snapshot.newest_event_ms;
            let (used, events) = (snapshot.used, snapshot.events);
            match self.encode("quota snapshot", &key.0, snapshot) {
                Ok(payload) => encoded.push((key, payload, newest_event_ms, used, events)),
                Err(error) => {
                    failure(&key.0, &error);
                    failed.push(key);
                }
            }
        }
        let deliveries = encoded
            .iter()
            .map(|((scope, start), payload, ..)| self.send_owned(snapshot_key(scope, *start), payload));
        let results = futures_util::future::join_all(deliveries).await;
        let now_ms = Utc::now().timestamp_millis().max(0) as u64;
        for ((key, _, newest_event_ms, used, events), result) in encoded.into_iter().zip(results) {
            match result {
                Ok(offset) => {
                    metrics::counter!(m::QUOTA_SNAPSHOTS_PUBLISHED).increment(1);
                    let lag_ms = now_ms.saturating_sub(newest_event_ms);
                    if record_lag {
                        metrics::histogram!(m::QUOTA_LAG).record(lag_ms as f64 / 1000.0);
                    }
                    tracing::debug!(scope = %key.0, window_start_ms = key.1, used, events, offset, lag_ms, "Published a quota snapshot.");
                }
                Err(error) => {
                    failure(&key.0, &error);
                    failed.push(key);
                }
            }
        }
        failed
    }

    /// Deletes the snapshots of dropped windows from the compacted topic (a null payload per key), waiting for
    /// the deliveries; a failed one is logged and left to the topic's retention.
    pub async fn tombstones(&self, keys: Vec<String>) {
        let sends = keys.iter().map(|key| async move {
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key.as_str());
            (key, self.producer.send(record, QUEUE_TIMEOUT).await)
        });
        for (key, result) in futures_util::future::join_all(sends).await {
            match result {
                Ok(_) => tracing::debug!(key = %key, "Tombstoned the snapshot of a dropped window."),
                Err(error) => {
                    tracing::warn!(key = %key, %error, "Tombstoning a dropped window's snapshot failed.")
                }
            }
        }
    }

    /// Sends a heartbeat and waits for its delivery.
    pub async fn heartbeat(&self, heartbeat: QuotaHeartbeat) -> Result<(), BillingError> {
        let payload = self.encode("quota heartbeat", HEARTBEAT_KEY, heartbeat)?;
        self.send(HEARTBEAT_KEY, &payload).await?;
        metrics::counter!(m::QUOTA_HEARTBEATS).increment(1);
        Ok(())
    }

    /// Waits until everything sent is delivered (or `DELIVERY_TIMEOUT` passed).
    pub async fn flush(&self) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(DELIVERY_TIMEOUT)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Flushing the quota producer failed."),
            Err(join) => tracing::warn!(error = %join, "Flushing the quota producer did not finish."),
        }
    }

    fn encode<T: tollgate_schemas::EventData + Serialize>(
        &self,
        what: &'static str,
        subject: &str,
        data: T,
    ) -> Result<Vec<u8>, BillingError> {
        let event = CloudEvent::new(self.source.as_str(), subject, Utc::now(), data);
        serde_json::to_vec(&event).map_err(|e| BillingError::Encode {
            what,
            message: e.to_string(),
        })
    }

    async fn send_owned(&self, key: String, payload: &[u8]) -> Result<i64, BillingError> {
        self.send(&key, payload).await
    }

    /// Sends one message and waits for its delivery; returns its offset.
    async fn send(&self, key: &str, payload: &[u8]) -> Result<i64, BillingError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer
            .send(record, QUEUE_TIMEOUT)
            .await
            .map(|(_, offset)| offset)
            .map_err(|source| BillingError::Kafka {
                operation: "publish to the quota topic",
                source,
            })
    }
}

fn failure(key: &str, error: &BillingError) {
    metrics::counter!(m::QUOTA_PUBLISH_FAILURES).increment(1);
    tracing::warn!(
        scope = %key,
        error_kind = error.kind(),
        %error,
        "Publishing a quota snapshot failed; it will be published again."
    );
}

//! What was sent, kept in Kafka: the compacted alerts topic (normally `tollgate.alerts.v1`, one partition) holds
//! one record per alert id, keyed by the id, a JSON [`LedgerRecord`]:
//!
//! ```json
//! {"alert": { …the webhook body… }, "status": "pending", "attempts": 0, "updated_at_ms": 1795168800123, "detail": ""}
//! ```
//!
//! `status` goes `pending` (written before the first attempt) → `delivered` (a 2xx), `rejected` (a 4xx other than
//! 429) or `failed` (every attempt failed). The last three are final: that alert is never sent again. A `pending`
//! record left by a process that stopped mid-delivery is sent again (with the same body and id) once the
//! threshold is observed again. Compaction keeps the latest record per id.
//!
//! The [`Ledger`] reads the topic from its beginning on a thread of its own ([`TopicFollower`]) and keeps
//! following it, so a process that gets the lease later knows what the previous holder sent; deliveries wait for
//! [`Ledger::caught_up`] (the topic read up to the end it had at start) before anything is sent.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_plumbing::follow::{Handler, Partitions, Settings, TopicFollower, Waiting};
use tollgate_plumbing::kafka::{KafkaConnection, RenewingProducer};

use super::Alert;
use crate::error::BillingError;
use crate::kafka::reader::ReaderContext;
use crate::telemetry::metrics as m;

/// How long a record may wait for delivery to the alerts topic.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest pause before writing a record again.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// About to be sent, or being sent; sent again if its sender stopped.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered a 4xx other than 429.
    Rejected,
    /// Every attempt failed.
    Failed,
}

impl Status {
    /// Whether the alert is done with: never sent again.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// One record of the alerts topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    pub alert: Alert,
    pub status: Status,
    /// Delivery attempts made (0 while pending).
    pub attempts: u32,
    pub updated_at_ms: u64,
    /// The receiver's status (`http 503`) or the last error.
    #[serde(default)]
    pub detail: String,
}

type Records = Arc<Mutex<HashMap<String, LedgerRecord>>>;

/// Takes `incoming` for its id unless that would take a final record back to pending (our own final record may
/// be applied before the follower reads our earlier pending one back).
fn merge(records: &mut HashMap<String, LedgerRecord>, id: String, incoming: LedgerRecord) {
    match records.get(&id) {
        Some(held) if held.status.is_final() && !incoming.status.is_final() => {}
        _ => {
            records.insert(id, incoming);
        }
    }
}

/// The alerts topic: read, followed and written.
pub struct Ledger {
    records: Records,
    caught_up: watch::Receiver<bool>,
    producer: RenewingProducer,
    topic: String,
    follower: Option<TopicFollower>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Starts reading `topic` from its beginning (and following it) and makes its producer.
    pub fn start(kafka: &KafkaConnection, topic: &str) -> Result<Self, BillingError> {
        let consumer: BaseConsumer<ReaderContext> = kafka
            .groupless_consumer_config(crate::kafka::CLIENT_ID, "tollgate-billing-alerts")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(ReaderContext)
            .map_err(BillingError::kafka("create the alerts topic consumer"))?;
        let mut producer = kafka.client_config(crate::kafka::CLIENT_ID);
        producer
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        let producer = RenewingProducer::new(producer, "alerts", m::KAFKA_PRODUCER_RENEWALS)
            .map_err(BillingError::kafka("create the alerts producer"))?;
        let records: Records = Arc::default();
        let (ready, caught_up) = watch::channel(false);
        let handler = Follow {
            records: Arc::clone(&records),
            ready,
            topic: topic.to_owned(),
            waiting_logged: false,
            read: 0,
        };
        let mut settings = Settings::new("tollgate-alerts-ledger", topic);
        settings.partitions = Partitions::One(0);
        let follower =
            TopicFollower::spawn(consumer, settings, handler).map_err(|e| BillingError::Config {
                setting: "alerts-topic",
                reason: format!("cannot start the alerts topic follower: {e}"),
            })?;
        Ok(Self {
            records,
            caught_up,
            producer,
            topic: topic.to_owned(),
            follower: Some(follower),
        })
    }

    /// The latest record of alert `id`, as far as read (or written by this process).
    pub fn status(&self, id: &str) -> Option<LedgerRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Waits until the topic was read up to the end it had when the ledger started.
    pub async fn caught_up(&self) {
        let mut caught_up = self.caught_up.clone();
        let _ = caught_up.wait_for(|done| *done).await;
    }

    /// Whether [`Ledger::caught_up`] would return at once.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Writes `alert`'s record with `status` and waits for its delivery.
    pub async fn record(
        &self,
        alert: &Alert,
        status: Status,
        attempts: u32,
        detail: &str,
    ) -> Result<(), BillingError> {
        let record = LedgerRecord {
            alert: alert.clone(),
            status,
            attempts,
            updated_at_ms: u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
            detail: detail.to_owned(),
        };
        let payload = serde_json::to_vec(&record).map_err(|e| BillingError::Encode {
            what: "alert record",
            message: e.to_string(),
        })?;
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(alert.id.as_str())
                    .payload(&payload),
                DELIVERY_TIMEOUT,
            )
            .await
            .map_err(|source| BillingError::Kafka {
                operation: "write to the alerts topic",
                source,
            })?;
        merge(
            &mut self.records.lock().unwrap_or_else(PoisonError::into_inner),
            alert.id.clone(),
            record,
        );
        Ok(())
    }

    /// [`Ledger::record`], tried again with backoff until it is written (a `pending` record must be in Kafka
    /// before the alert is sent; a final one, or the alert is sent again after a restart).
    pub async fn record_until_written(&self, alert: &Alert, status: Status, attempts: u32, detail: &str) {
        let mut wait = FIRST_RETRY;
        loop {
            match self.record(alert, status, attempts, detail).await {
                Ok(()) => return,
                Err(error) => {
                    metrics::counter!(m::ALERT_RECORD_FAILURES).increment(1);
                    tracing::warn!(id = %alert.id, status = status.as_str(), %error, "Writing an alert record failed; retrying.");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LAST_RETRY);
        }
    }

    /// Stops following the topic.
    pub async fn stop(mut self) {
        if let Some(follower) = self.follower.take() {
            let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.request_stop();
        }
    }
}

/// The follower's handler: applies each record.
struct Follow {
    records: Records,
    ready: watch::Sender<bool>,
    topic: String,
    waiting_logged: bool,
    read: u64,
}

impl Handler for Follow {
    fn waiting(&mut self, reason: &Waiting) {
        if !self.waiting_logged {
            self.waiting_logged = true;
            tracing::warn!(topic = %self.topic, %reason, "The alerts topic cannot be read yet; no alert is sent until it is.");
        }
    }

    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()> {
        self.read += 1;
        let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return ControlFlow::Continue(());
        };
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        match message.payload() {
            None => {
                records.remove(key);
            }
            Some(payload) => match serde_json::from_slice::<LedgerRecord>(payload) {
                Ok(record) => merge(&mut records, key.to_owned(), record),
                Err(error) => {
                    tracing::warn!(topic = %self.topic, key, offset = message.offset(), %error, "Skipped a record of the alerts topic that is not an alert record.");
                }
            },
        }
        ControlFlow::Continue(())
    }

    fn caught_up(&mut self) -> ControlFlow<()> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = records.values().filter(|r| !r.status.is_final()).count();
        tracing::info!(
            topic = %self.topic,
            records = self.read,
            alerts = records.len(),
            pending,
            "Read the alerts topic; alerts already dealt with are not sent again."
        );
        drop(records);
        self.ready.send_replace(true);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertKind, Standing};

    fn record(status: Status) -> LedgerRecord {
        let standing = Standing {
            kind: AlertKind::TokenQuota,
            scope: "s".into(),
            window_start_ms: 0,
            window_end_ms: 3_600_000,
            used: 50,
            limit: 100,
            unit: "tokens".into(),
        };
        LedgerRecord {
            alert: Alert::new(&standing, 50, 0),
            status,
            attempts: 0,
            updated_at_ms: 0,
            detail: String::new(),
        }
    }

    #[test]
    fn a_final_record_is_never_taken_back_to_pending() {
        let mut records = HashMap::new();
        merge(&mut records, "a".into(), record(Status::Pending));
        merge(&mut records, "a".into(), record(Status::Delivered));
        merge(&mut records, "a".into(), record(Status::Pending));
        assert_eq!(records["a"].status, Status::Delivered);
        merge(&mut records, "a".into(), record(Status::Failed));
        assert_eq!(records["a"].status, Status::Failed);
    }

    #[test]
    fn records_round_trip_as_documented() {
        let json = serde_json::to_value(record(Status::Delivered)).unwrap();
        assert_eq!(json["status"], "delivered");
        assert_eq!(json["alert"]["kind"], "token_quota");
        assert_eq!(json["alert"]["threshold_percent"], 50);
        let back: LedgerRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record(Status::Delivered));
        assert!(Status::Rejected.is_final() && Status::Failed.is_final() && !Status::Pending.is_final());
    }
}

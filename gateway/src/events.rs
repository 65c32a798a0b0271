//! Usage events out of the request path and into Kafka.
//!
//! Handlers call [`EventSender::emit`] with an [`Outgoing`] event, which never waits: it puts the event into a bounded queue or, when the
//! queue is full, drops it with a metric and an error log naming the event id (the durable spool that removes
//! that case is a later step). A dedicated thread — the pump — owns the rdkafka producer (idempotent, `acks=all`,
//! key = consumer id), serializes each event once, hands it to librdkafka and counts the broker's
//! acknowledgements. When an event counts against token quotas, the acknowledgement's partition and offset go to
//! its [`LocalUsage`], so that the quota books know when a snapshot covers it. On shutdown the queue is closed, everything in it is produced, and the pump waits (bounded)
//! for the broker to acknowledge what is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use tollgate_schemas::usage::UsageEvent;

use crate::config::KafkaConfig;
use crate::metrics as m;
use crate::quota::LocalUsage;

/// How long the pump waits before retrying when librdkafka's own queue is full.
const LOCAL_QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Why the event pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("invalid Kafka producer configuration: {0}")]
    Producer(#[from] KafkaError),
    #[error("could not start the event pump: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A finished usage event, and the quota books' record of it when token limits count it.
#[derive(Debug)]
pub struct Outgoing {
    pub event: UsageEvent,
    pub local: Option<Arc<LocalUsage>>,
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicI64>,
}

impl EventSender {
    /// Queues an event for Kafka. Returns immediately.
    pub fn emit(&self, event: Outgoing) {
        match self.tx.try_send(event) {
            Ok(()) => {
                let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!(m::EVENTS_QUEUED).set(queued as f64);
            }
            Err(mpsc::error::TrySendError::Full(out)) => dropped(&out.event, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(out)) => dropped(&out.event, "shutting_down"),
        }
    }
}

fn dropped(event: &UsageEvent, reason: &'static str) {
    metrics::counter!(m::EVENTS_DROPPED_TOTAL, "reason" => reason).increment(1);
    tracing::error!(
        event_id = %event.id,
        consumer = %event.subject,
        reason,
        "usage event dropped before reaching Kafka"
    );
}

/// The running pump; [`EventPipeline::shutdown`] drains it.
#[derive(Debug)]
pub struct EventPipeline {
    close: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<()>,
}

impl EventPipeline {
    /// Creates the producer and starts the pump thread.
    pub fn start(config: &KafkaConfig, client_id: &str) -> Result<(EventSender, Self), EventsError> {
        let producer: FutureProducer = producer_config(config, client_id).create()?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let queued = Arc::new(AtomicI64::new(0));
        let (close_tx, close_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let pump = Pump {
            producer,
            topic: config.usage_topic.clone(),
            queued: queued.clone(),
        };
        let flush_timeout = config.message_timeout;
        std::thread::Builder::new()
            .name("tollgate-events".into())
            .spawn(move || {
                runtime.block_on(pump.run(rx, close_rx, flush_timeout));
                let _ = done_tx.send(());
            })?;
        Ok((
            EventSender { tx, queued },
            Self {
                close: Some(close_tx),
                done: done_rx,
            },
        ))
    }

    /// Stops accepting events, produces everything queued and waits up to `timeout` for acknowledgements.
    /// Returns false when the timeout ran out first.
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        tokio::time::timeout(timeout, self.done).await.is_ok()
    }
}

fn producer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        );
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    c
}

struct Pump {
    producer: FutureProducer,
    topic: String,
    queued: Arc<AtomicI64>,
}

impl Pump {
    async fn run(self, mut rx: mpsc::Receiver<Outgoing>, close: oneshot::Receiver<()>, flush: Duration) {
        let mut inflight = FuturesUnordered::new();
        let mut close = std::pin::pin!(close);
        let mut closing = false;
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        let queued = self.queued.fetch_sub(1, Ordering::Relaxed) - 1;
                        metrics::gauge!(m::EVENTS_QUEUED).set(queued as f64);
                        if let Some(delivery) = self.produce(event).await {
                            inflight.push(delivery);
                        }
                    }
                    None => break,
                },
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
                _ = &mut close, if !closing => {
                    // New events are refused from now on; the ones already queued are still received.
                    closing = true;
                    rx.close();
                }
            }
        }
        let drained = tokio::time::timeout(flush, async { while inflight.next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::error!(
                in_flight = inflight.len(),
                "Kafka did not acknowledge every usage event before shutdown"
            );
        }
        let _ = self.producer.flush(Duration::from_secs(1));
    }

    /// Hands one event to librdkafka; the returned future settles when the broker acknowledged it (or gave up).
    async fn produce(&self, out: Outgoing) -> Option<impl Future<Output = ()> + use<>> {
        let Outgoing { event, local } = out;
        let payload = match serde_json::to_vec(&event) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(m::EVENTS_FAILED_TOTAL, "reason" => "serialize").increment(1);
                tracing::error!(event_id = %event.id, error = %e, "usage event could not be serialized");
                return None;
            }
        };
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(event.subject.as_bytes())
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let event_id = event.id;
                    return Some(async move {
                        match delivery.await {
                            Ok(Ok(delivery)) => {
                                if let Some(local) = local {
                                    local.delivered(delivery.partition, delivery.offset);
                                }
                                metrics::counter!(m::EVENTS_EMITTED_TOTAL).increment(1);
                            }
                            Ok(Err((e, _))) => failed(event_id, "broker", &e),
                            Err(_) => failed(event_id, "cancelled", &KafkaError::Canceled),
                        }
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(LOCAL_QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => {
                    failed(event.id, "produce", &e);
                    return None;
                }
            }
        }
    }
}

fn failed(event_id: uuid::Uuid, reason: &'static str, error: &KafkaError) {
    metrics::counter!(m::EVENTS_FAILED_TOTAL, "reason" => reason).increment(1);
    tracing::error!(%event_id, reason, error = %error, "usage event was not acknowledged by Kafka");
}

//! Shared health: what one replica learns about an instance, every replica acts on. Without it, each replica
//! behind a load balancer must discover a dead provider on its own — by sending it requests that fail.
//!
//! The health topic (`kafka.health_topic`, e.g. `tollgate.health.v1`: one partition, compacted, keyed by the
//! instance's name) carries [`HealthNews`]: a circuit this replica opened (until the end of its cooldown), a
//! provider's `Retry-After` cooldown, a probe verdict "down" (renewed by every failing probe, so that it lapses
//! if the replica that saw it goes away) and "up" (a trial request closed the circuit, or the probe passes
//! again). [`InstanceHealth`] tells its verdicts through a [`HealthBus`] — a bounded queue to the publisher
//! thread, which never blocks a request (when full, the news is dropped and counted) — and the follower thread
//! reads every replica's news and applies the others' with [`InstanceHealth::apply_remote`]. Its own news
//! (same `origin`, the replica's `server.instance_id`) is skipped, so nothing echoes.
//!
//! **Convergence.** The publisher sends at once (`linger.ms=0`) and the follower's fetches are answered within
//! 10 ms of new data, so the other replicas act within a broker round trip — `tollgate_shared_health_lag_seconds`
//! measures it on every replica (the news' age when applied; replicas' clocks are compared, so keep them in
//! NTP sync). A replica that starts reads the topic from its beginning: verdicts that have not ended yet apply,
//! ended ones change nothing. While the broker is unreachable, each replica keeps its own breakers and probes:
//! shared health only ever adds to what a replica learns on its own.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tollgate_plumbing::KafkaOpError;
use tollgate_plumbing::follow::{Partitions, Settings, TopicFollower, Waiting};

use crate::config::Config;
use crate::kafka::{client_config, follower_config, producer_config};
use crate::metrics as m;
use crate::routing::health::InstanceHealth;

/// News waiting for the publisher; beyond this, news is dropped (and counted) rather than held.
const QUEUE: usize = 1024;
/// How long the publisher thread waits for news before looking at its stop flag.
const PUBLISHER_POLL: Duration = Duration::from_millis(100);
/// News older than this when applied is a record from before this replica started, not a measure of lag.
const LAG_HORIZON_MS: u64 = 60_000;

/// What one replica learned about one instance: the value of a health topic record (its key is `instance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthNews {
    /// The instance's configured name.
    pub instance: String,
    /// The replica that learned it (its `server.instance_id`).
    pub origin: String,
    pub verdict: Verdict,
    /// When it was learned, in Unix milliseconds.
    pub at_ms: u64,
    /// Until when the verdict holds, in Unix milliseconds; `up` has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// The verdicts replicas share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its circuit opened: failures in a row.
    Open,
    /// The provider asked for a pause (`Retry-After`).
    Cooldown,
    /// Its health probe fails.
    Down,
    /// It answers again.
    Up,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Cooldown => "cooldown",
            Self::Down => "down",
            Self::Up => "up",
        }
    }
}

/// The wall clock, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Where an instance's verdicts go: the queue to the publisher thread. Cloned into every [`InstanceHealth`].
#[derive(Debug, Clone)]
pub struct HealthBus {
    queue: SyncSender<HealthNews>,
    origin: Arc<str>,
}

impl HealthBus {
    /// A bus for `origin` and the receiving end of its queue, which holds up to `capacity` pieces of news.
    pub fn channel(origin: &str, capacity: usize) -> (Self, Receiver<HealthNews>) {
        let (queue, news) = sync_channel(capacity);
        (
            Self {
                queue,
                origin: Arc::from(origin),
            },
            news,
        )
    }

    /// Queues `verdict` about `instance`, holding for `lasting` from now; never waits.
    pub fn tell(&self, instance: &str, verdict: Verdict, lasting: Option<Duration>) {
        let at_ms = now_ms();
        let news = HealthNews {
            instance: instance.to_owned(),
            origin: self.origin.to_string(),
            verdict,
            at_ms,
            until_ms: lasting.map(|d| at_ms.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64)),
        };
        match self.queue.try_send(news) {
            Ok(()) => {}
            Err(TrySendError::Full(news)) => {
                metrics::counter!(m::SHARED_HEALTH_DROPPED_TOTAL).increment(1);
                tracing::warn!(instance = %news.instance, verdict = verdict.as_str(), "health news dropped: the publisher is behind");
            }
            // Stopping: the other replicas learn it on their own.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Every instance's health by name, as the live configuration last built it: where news from the other
/// replicas is applied.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<HashMap<String, Arc<InstanceHealth>>>>);

impl Registry {
    /// Replaces the whole set (after a configuration change).
    pub fn replace(&self, healths: impl IntoIterator<Item = Arc<InstanceHealth>>) {
        let next = healths
            .into_iter()
            .map(|health| (health.name().to_owned(), health))
            .collect();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn get(&self, instance: &str) -> Option<Arc<InstanceHealth>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(instance)
            .cloned()
    }
}

/// What the live configuration needs to share health: the bus to give every instance, and the registry to keep
/// up to date.
#[derive(Debug, Clone)]
pub struct SharedHealth {
    pub bus: HealthBus,
    pub registry: Registry,
}

/// The running publisher and follower threads; [`SharedHealthThreads::stop`] ends both.
#[derive(Debug)]
pub struct SharedHealthThreads {
    follower: TopicFollower,
    publisher: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl SharedHealthThreads {
    /// Stops both threads; news still queued is sent first (within a second).
    pub fn stop(self) {
        self.follower.stop();
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.publisher.join();
    }
}

/// Why shared health could not start.
#[derive(Debug, thiserror::Error)]
pub enum SharedHealthError {
    #[error("invalid Kafka configuration for the health topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not start a shared health thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts shared health on `topic`: the publisher and the follower threads.
pub fn start(config: &Config, topic: &str) -> Result<(SharedHealth, SharedHealthThreads), SharedHealthError> {
    let origin: Arc<str> = Arc::from(config.server.instance_id.as_str());
    let mut settings = producer_config(&config.kafka, &format!("tollgate-gateway-health/{origin}"));
    // News is worth most when it is new: sent at once, and not retried for long.
    settings.set("linger.ms", "0").set("message.timeout.ms", "5000");
    let producer: BaseProducer = settings.create()?;
    let consumer: BaseConsumer =
        follower_config(&config.kafka, &format!("tollgate-gateway-health/{origin}")).create()?;
    let (bus, news) = HealthBus::channel(&origin, QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (topic, stop) = (topic.to_owned(), stop.clone());
        std::thread::Builder::new()
            .name("tollgate-health-publisher".into())
            .spawn(move || publish(&producer, &topic, &news, &stop))?
    };
    let registry = Registry::default();
    let handler = Follower {
        admin: client_config(&config.kafka, &format!("tollgate-gateway-health-admin/{origin}")),
        topic: topic.to_owned(),
        origin: origin.clone(),
        registry: registry.clone(),
        logged: false,
    };
    let mut follow = Settings::new("tollgate-health-feed", topic);
    follow.partitions = Partitions::One(0);
    let follower = TopicFollower::spawn(consumer, follow, handler)?;
    tracing::info!(
        topic,
        "instance health is shared with the other replicas through the health topic"
    );
    Ok((
        SharedHealth { bus, registry },
        SharedHealthThreads {
            follower,
            publisher,
            stop,
        },
    ))
}

/// The publisher thread: sends every queued piece of news, keyed by instance, until stopped.
fn publish(producer: &BaseProducer, topic: &str, news: &Receiver<HealthNews>, stop: &AtomicBool) {
    loop {
        match news.recv_timeout(PUBLISHER_POLL) {
            Ok(item) => {
                let sent = serde_json::to_vec(&item)
                    .map_err(|e| e.to_string())
                    .and_then(|payload| {
                        producer
                            .send(
                                BaseRecord::to(topic)
                                    .key(item.instance.as_str())
                                    .payload(&payload),
                            )
                            .map_err(|(e, _)| e.to_string())
                    });
                match sent {
                    Ok(()) => {
                        metrics::counter!(m::SHARED_HEALTH_PUBLISHED_TOTAL, "verdict" => item.verdict.as_str())
                            .increment(1);
                    }
                    Err(error) => {
                        metrics::counter!(m::SHARED_HEALTH_DROPPED_TOTAL).increment(1);
                        tracing::warn!(instance = %item.instance, verdict = item.verdict.as_str(), %error, "health news not sent");
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(1)));
}

/// What the follower thread does with the health topic.
struct Follower {
    admin: ClientConfig,
    topic: String,
    origin: Arc<str>,
    registry: Registry,
    logged: bool,
}

impl tollgate_plumbing::follow::Handler for Follower {
    fn prepare<C: ConsumerContext>(&mut self, _: &BaseConsumer<C>) -> Result<(), KafkaOpError> {
        crate::live::topic::ensure_topic(&self.admin, &self.topic)
    }

    fn waiting(&mut self, reason: &Waiting) {
        if !self.logged {
            tracing::warn!(topic = %self.topic, %reason, "health topic not readable yet: each replica keeps its own health until it is");
            self.logged = true;
        }
    }

    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()> {
        let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
            return ControlFlow::Continue(());
        };
        let news = match serde_json::from_slice::<HealthNews>(payload) {
            Ok(news) => news,
            Err(error) => {
                tracing::warn!(topic = %self.topic, offset = message.offset(), %error, "skipped a health record that is not health news");
                return ControlFlow::Continue(());
            }
        };
        if news.origin == *self.origin {
            return ControlFlow::Continue(());
        }
        let now_ms = now_ms();
        if let Some(health) = self.registry.get(&news.instance)
            && health.apply_remote(&news, Instant::now(), now_ms)
        {
            metrics::counter!(m::SHARED_HEALTH_APPLIED_TOTAL, "verdict" => news.verdict.as_str())
                .increment(1);
            let age_ms = now_ms.saturating_sub(news.at_ms);
            if age_ms < LAG_HORIZON_MS {
                metrics::histogram!(m::SHARED_HEALTH_LAG_SECONDS).record(age_ms as f64 / 1000.0);
            }
        }
        ControlFlow::Continue(())
    }

    fn read_error(&mut self, error: &KafkaError) {
        tracing::debug!(%error, "health feed read error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reads_back_as_written_and_tolerates_fields_it_does_not_know() {
        let news = HealthNews {
            instance: "primary".into(),
            origin: "gw-1".into(),
            verdict: Verdict::Open,
            at_ms: 1_000,
            until_ms: Some(31_000),
        };
        let text = serde_json::to_string(&news).unwrap();
        assert_eq!(
            text,
            r#"{"instance":"primary","origin":"gw-1","verdict":"open","at_ms":1000,"until_ms":31000}"#
        );
        let newer: HealthNews = serde_json::from_str(
            r#"{"instance":"primary","origin":"gw-2","verdict":"up","at_ms":5,"region":"eu"}"#,
        )
        .unwrap();
        assert_eq!(newer.verdict, Verdict::Up);
        assert_eq!(newer.until_ms, None);
        assert!(
            serde_json::from_str::<HealthNews>(
                r#"{"instance":"p","origin":"o","verdict":"melted","at_ms":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_full_queue_drops_news_instead_of_blocking_the_request() {
        let (bus, news) = HealthBus::channel("gw-1", 1);
        bus.tell("primary", Verdict::Open, Some(Duration::from_secs(30)));
        bus.tell("primary", Verdict::Up, None);
        let first = news.try_recv().unwrap();
        assert_eq!(
            (first.verdict, first.until_ms.map(|u| u - first.at_ms)),
            (Verdict::Open, Some(30_000))
        );
        assert!(news.try_recv().is_err(), "the second did not wait for room");
    }
}

//! The config topic (`admin.config_topic`, e.g. `tollgate.config.v1`): [`Publisher`] sends the admin API's
//! accepted changes; [`ConfigFeed`] — a thread with its own rdkafka consumer, no group, partition 0 from the
//! beginning — reads them back, for this replica and every other, in offset order.
//!
//! At start the feed makes sure the topic exists (one partition, so one order; `cleanup.policy=compact`, so the
//! latest change of every resource survives; the broker's default replication), reads its watermarks, seeds it
//! from the file when it has never held anything, and reads it to its end. That content goes to
//! [`super::LiveConfig::start`] through [`InitialLoad`], which waits up to [`LOAD_TIMEOUT`] for it before the
//! gateway serves; if the broker is slower than that, the gateway starts on the configuration it last applied
//! (kept on disk, [`super::cache`]) — never on its file, whose consumers and keys the topic may have revoked —
//! or, without one, keeps waiting. The content then follows as a catch-up as soon as it is read. Then the feed
//! follows the topic and hands every change to the applier task. A read that does not reach the end within
//! [`LOAD_TIMEOUT`] starts over from the beginning. The thread, the assignment and telling when the end is
//! reached are [`tollgate_plumbing::follow`]'s; this module makes sure of the topic, seeds it and decodes it.
//!
//! A record's key is `kind/id`; its value a `tollgate.config.v1` CloudEvent, or null (a tombstone: deleted).
//! Records that are neither are logged and skipped.

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::mpsc::UnboundedSender;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::config::{
    ChangeAction, ConfigChange, ConfigChangeEvent, SEED_ACTOR, parse_key, resource_key,
};

use super::resources::ResourceSet;
use super::{Feed, Incoming};
use crate::config::Config;
use crate::kafka::{RenewingProducer, client_config, follower_config, producer_config};
use tollgate_plumbing::KafkaOpError;
use tollgate_plumbing::follow::{
    Assignment, Handler, Late, Partitions, Progress, Settings, TopicFollower, Waiting,
};
use tollgate_plumbing::topics::TopicSpec;

/// How long a start waits for the topic's content before serving on the file.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Retry interval while the broker or topic is not reachable.
const RETRY: Duration = Duration::from_secs(1);
/// How long publishing one change may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the config topic could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("invalid Kafka configuration for the config topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not start the config feed thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the config topic refused the change: {0}")]
    Refused(KafkaError),
    #[error("a change could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Sends accepted changes to the config topic, from a producer that renews itself after a failed send.
pub struct Publisher {
    producer: RenewingProducer,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(config: &Config, topic: &str) -> Result<Self, TopicError> {
        let client_id = format!("tollgate-gateway-config/{}", config.server.instance_id);
        let mut settings = producer_config(&config.kafka, &client_id);
        settings.set("linger.ms", "0");
        let producer =
            RenewingProducer::new(settings, "config", crate::metrics::KAFKA_PRODUCER_RENEWALS_TOTAL)?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Publishes `event` and returns its offset; a delete is followed by a tombstone for the same key.
    pub async fn publish(&self, event: &ConfigChangeEvent) -> Result<i64, TopicError> {
        let key = event.data.key();
        let payload = serde_json::to_vec(event)?;
        let record = FutureRecord::to(&self.topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        let (_, offset) = self
            .producer
            .send(record, PUBLISH_TIMEOUT)
            .await
            .map_err(TopicError::Refused)?;
        if event.data.action == ChangeAction::Delete {
            let tombstone: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key.as_str());
            if let Err(error) = self.producer.send(tombstone, PUBLISH_TIMEOUT).await {
                // The delete change itself is in the topic and applies; only compaction keeps the key longer.
                tracing::warn!(%key, %error, "The tombstone after a delete was not published.");
            }
        }
        Ok(offset)
    }
}

/// The running feed thread; [`ConfigFeed::stop`] ends it.
#[derive(Debug)]
pub struct ConfigFeed {
    follower: TopicFollower,
}

impl ConfigFeed {
    /// Starts the feed, which reads the topic's content up to its end (seeding it from `file` when it never held
    /// anything) and hands it over through the returned [`InitialLoad`].
    pub fn start(
        config: &Config,
        topic: &str,
        file: &ResourceSet,
        source: &str,
        applier: UnboundedSender<Feed>,
    ) -> Result<(Self, InitialLoad), TopicError> {
        let consumer: BaseConsumer = follower_config(
            &config.kafka,
            &format!("tollgate-gateway-config/{}", config.server.instance_id),
        )
        .create()?;
        let seeder = producer_config(
            &config.kafka,
            &format!("tollgate-gateway-config-seed/{}", config.server.instance_id),
        );
        // Checked now; a producer is made for each seeding attempt, so a failed one is never reused.
        let _: BaseProducer = seeder.create()?;
        let (initial_tx, initial_rx) = sync_channel(0);
        let handler = Follower {
            seeder,
            admin: client_config(
                &config.kafka,
                &format!("tollgate-gateway-config-admin/{}", config.server.instance_id),
            ),
            topic: topic.to_owned(),
            seeds: seeds(file, source),
            applier,
            initial: Some(initial_tx),
            batch: Vec::new(),
            end: 0,
            logged: false,
        };
        let mut settings = Settings::new("tollgate-config-feed", topic);
        settings.partitions = Partitions::One(0);
        settings.retry = RETRY;
        settings.catch_up_timeout = Some(LOAD_TIMEOUT);
        let follower = TopicFollower::spawn(consumer, settings, handler)?;
        Ok((
            Self { follower },
            InitialLoad {
                receiver: initial_rx,
                topic: topic.to_owned(),
            },
        ))
    }

    /// Stops the thread and waits for it (at most about one poll).
    pub fn stop(self) {
        self.follower.stop();
    }
}

/// The topic's content up to its end, once the feed has read it. Dropped unread, the content goes to the
/// applier as a [`Feed::Catchup`] instead.
#[derive(Debug)]
pub struct InitialLoad {
    receiver: Receiver<Vec<Incoming>>,
    topic: String,
}

/// Why the topic's content did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLoaded {
    /// Not read within the time given; it may still come.
    Timeout,
    /// The feed thread stopped: it never will.
    Stopped,
}

impl InitialLoad {
    /// Waits up to `timeout` for the content.
    pub fn wait(&self, timeout: Duration) -> Result<Vec<Incoming>, NotLoaded> {
        match self.receiver.recv_timeout(timeout) {
            Ok(batch) => Ok(batch),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    topic = %self.topic,
                    timeout_s = timeout.as_secs(),
                    "The config topic could not be read in time."
                );
                Err(NotLoaded::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(NotLoaded::Stopped),
        }
    }
}

/// The file's resources as seed changes, kinds in dependency order.
fn seeds(file: &ResourceSet, source: &str) -> Vec<ConfigChangeEvent> {
    file.iter()
        .map(|(kind, id, resource)| {
            CloudEvent::new(
                source,
                resource_key(kind, id),
                Utc::now(),
                ConfigChange {
                    kind,
                    id: id.to_owned(),
                    action: ChangeAction::Put,
                    resource: Some(resource.clone()),
                    actor: SEED_ACTOR.to_owned(),
                },
            )
        })
        .collect()
}

/// What the feed's thread does with the config topic ([`TopicFollower`] reads it).
struct Follower {
    seeder: ClientConfig,
    /// The admin client's settings, for creating the topic.
    admin: ClientConfig,
    topic: String,
    seeds: Vec<ConfigChangeEvent>,
    applier: UnboundedSender<Feed>,
    /// Where the content read up to the end goes; taken once it went.
    initial: Option<SyncSender<Vec<Incoming>>>,
    /// The content read since the assignment, until it went.
    batch: Vec<Incoming>,
    /// The topic's end at assignment.
    end: i64,
    /// Whether a reason the topic is not readable was logged.
    logged: bool,
}

impl Handler for Follower {
    /// Ensures the topic and seeds it when it never held anything; it is then read from the beginning to its end.
    fn prepare<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), KafkaOpError> {
        ensure_topic(&self.admin, &self.topic)?;
        let (_, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(5))
            .map_err(KafkaOpError::client("read the end of the config topic"))?;
        if high == 0 && !self.seeds.is_empty() {
            self.seed()?;
        }
        Ok(())
    }

    fn waiting(&mut self, reason: &Waiting) {
        self.not_readable(reason);
    }

    fn assigned(&mut self, assignment: &Assignment) {
        self.batch.clear();
        self.end = assignment.end();
    }

    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()> {
        if self.initial.is_some() {
            self.batch.extend(self.decode(message));
        } else if let Some(incoming) = self.decode(message)
            && self.applier.send(Feed::Change(Box::new(incoming))).is_err()
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn caught_up(&mut self) -> ControlFlow<()> {
        let batch = std::mem::take(&mut self.batch);
        tracing::info!(topic = %self.topic, records = self.end, changes = batch.len(), "Read the config topic to its end.");
        let Some(initial) = self.initial.take() else {
            return ControlFlow::Continue(());
        };
        // A rendezvous: if `start` gave up waiting, the content goes to the applier as a catch-up instead.
        if let Err(unsent) = initial.send(batch)
            && self.applier.send(Feed::Catchup(unsent.0)).is_err()
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Not read within [`LOAD_TIMEOUT`]: read it again from the beginning.
    fn late(&mut self, progress: Progress) -> Late {
        self.not_readable(&KafkaOpError::Incomplete {
            operation: "read the config topic to its end",
            detail: format!(
                "read {} of {} records before giving up",
                progress.read, progress.end
            ),
        });
        Late::Reassign
    }

    fn read_error(&mut self, error: &KafkaError) {
        tracing::debug!(%error, "Config feed read error.");
    }
}

impl Follower {
    /// Logs the first reason the topic could not be read.
    fn not_readable(&mut self, reason: &dyn std::fmt::Display) {
        if !self.logged {
            tracing::warn!(topic = %self.topic, %reason, "Config topic not readable yet; retrying every second.");
            self.logged = true;
        }
    }

    /// Publishes the file's resources as the topic's first changes.
    fn seed(&self) -> Result<(), KafkaOpError> {
        let seeder: BaseProducer = self
            .seeder
            .create()
            .map_err(KafkaOpError::client("create the config topic's seeding producer"))?;
        for event in &self.seeds {
            let key = event.data.key();
            let payload = serde_json::to_vec(event)?;
            seeder
                .send(BaseRecord::to(&self.topic).key(&key).payload(&payload))
                .map_err(|(e, _)| KafkaOpError::client("seed the config topic")(e))?;
        }
        seeder
            .flush(Timeout::After(Duration::from_secs(10)))
            .map_err(KafkaOpError::client("complete seeding the config topic"))?;
        tracing::info!(topic = %self.topic, resources = self.seeds.len(), "Seeded the empty config topic from the file.");
        Ok(())
    }

    fn decode(&self, message: &BorrowedMessage<'_>) -> Option<Incoming> {
        let version = message.offset();
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let Some((kind, id)) = key.and_then(parse_key) else {
            tracing::warn!(topic = %self.topic, offset = version, "Skipped a config record without a kind/id key.");
            return None;
        };
        let event = match message.payload().filter(|p| !p.is_empty()) {
            None => None,
            Some(payload) => match serde_json::from_slice::<ConfigChangeEvent>(payload) {
                Ok(event) if event.is_expected_type() && event.data.kind == kind && event.data.id == id => {
                    Some(event)
                }
                _ => {
                    tracing::warn!(
                        topic = %self.topic,
                        offset = version,
                        "Skipped a config record that is not a tollgate.config.v1 change of its key."
                    );
                    return None;
                }
            },
        };
        Some(Incoming {
            version,
            kind,
            id: id.to_owned(),
            event,
        })
    }
}

/// Creates the topic (the config topic, the health topic) — one partition, compacted, the broker's default replication — unless it exists. A broker
/// that refuses compaction gets it without (every change is then kept, which gives the same state).
pub(crate) fn ensure_topic(admin: &ClientConfig, topic: &str) -> Result<(), KafkaOpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    runtime.block_on(tollgate_plumbing::topics::ensure(
        admin,
        TopicSpec::compacted(topic),
    ))?;
    Ok(())
}

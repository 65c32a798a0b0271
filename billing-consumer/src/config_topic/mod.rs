//! `--config-topic <name>` (env `TOLLGATE_CONFIG_TOPIC`; off by default) on `run` and `quota`: billing-consumer
//! follows the admin API's `tollgate.config.v1` topic, as every gateway replica does, for the two things it
//! takes from the configuration — quota limits and prices.
//!
//! A thread owns an rdkafka consumer outside any group (never joined, never committed) assigned partition 0 of
//! the topic from the beginning, like the gateway's quota feed. Every message is applied in order to a map
//! (kind, id) → resource ([`resources`]): a `put` change stores its resource, a `delete` change or a tombstone
//! (null value) removes it. Each applied change is logged once (kind, id, action, actor — the topic carries no
//! secrets, and resources are never logged) and counted in `billing_config_changes_total{kind}`; a message that
//! is not a change is logged and skipped. Once what is ready has been read, the derived configuration is
//! refreshed and `billing_config_version` set to the offset of the last message read:
//!
//! - **Quota policy** (with the quota loop): while the topic is empty, the gateway file's (`--quota-config` /
//!   `--config`) limits; once it held any change, its `instance`, `consumer` and `limit` resources replace the
//!   file's sections entirely — even when none are left — exactly as the gateway's resources replace its file's
//!   ([`crate::quota::policy::from_resources`]).
//!   A changed policy goes to the quota loop through a watch channel ([`crate::quota::run_live`] applies it
//!   live). An invalid limit resource is logged and left out; the others apply.
//! - **Prices** (with ingest): the `--prices` file's versions plus the topic's `price` resources
//!   ([`PriceTable::with_resources`]); a topic version in force from the same instant as a file version at other
//!   prices is logged as an error and the file's kept. The new table replaces the old one whole in
//!   [`LivePrices`]; each ingest batch is priced by the table in use when its first message arrived.
//!
//! **Start-up.** [`ConfigFollower::ready`] resolves once the topic was read to the end it had when the follower
//! started (or after [`CATCH_UP_TIMEOUT`], with a warning), so ingest and the quota loop start from the topic's
//! configuration, not the files'. A topic that does not exist yet is not waited for: the files apply, and the
//! follower looks for the topic every second and follows it once it appears.

pub mod resources;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_schemas::config::ResourceKind;

use crate::error::BillingError;
use crate::kafka::reader::ReaderContext;
use crate::ledger::pricing::{LivePrices, PriceTable};
use crate::quota::PolicyUpdates;
use crate::quota::policy::{self, ConfiguredScope};
use crate::telemetry::metrics as m;

use self::resources::Resources;

/// How long one poll waits; also about the longest a stop request waits for the thread.
const POLL: Duration = Duration::from_millis(100);
/// Pause before looking for the topic again.
const RETRY: Duration = Duration::from_secs(1);
/// How long a metadata or watermark lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest [`ConfigFollower::ready`] waits for the topic to be read to its end.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages read at most before the derived configuration is refreshed, while more keep coming.
const REFRESH_AFTER: usize = 1000;

/// What the follower starts from and keeps current.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// The brokers and the operator's librdkafka properties.
    pub kafka: KafkaConnection,
    /// The config topic, normally [`tollgate_schemas::topics::CONFIG_V1`].
    pub topic: String,
    /// The price file's table, when this process ingests: the topic's price versions are added to it.
    pub file_prices: Option<Arc<PriceTable>>,
    /// The gateway file's quota scopes, when this process runs the quota loop: the policy while the topic holds
    /// no resource.
    pub file_scopes: Option<Vec<ConfiguredScope>>,
}

/// The running follower.
#[derive(Debug)]
pub struct ConfigFollower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ready: watch::Receiver<bool>,
    prices: Option<LivePrices>,
    policy: Option<PolicyUpdates>,
}

impl ConfigFollower {
    /// Starts following `settings.topic` on a thread of its own.
    pub fn start(settings: FollowSettings) -> Result<Self, BillingError> {
        let consumer: BaseConsumer<ReaderContext> = settings
            .kafka
            .client_config(crate::kafka::CLIENT_ID)
            // librdkafka needs a group to assign partitions; a fresh one, never joined and never committed.
            .set(
                "group.id",
                format!("tollgate-billing-config-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(ReaderContext)
            .map_err(BillingError::kafka("create config topic consumer"))?;
        let prices = settings.file_prices.clone().map(LivePrices::new);
        let (policy_sender, policy) = match &settings.file_scopes {
            Some(scopes) => {
                let (sender, receiver) = watch::channel(Arc::new(scopes.clone()));
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let (ready_sender, ready) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            consumer,
            stop: Arc::clone(&stop),
            state: State {
                topic: settings.topic.clone(),
                resources: Resources::default(),
                file_prices: settings.file_prices,
                prices: prices.clone(),
                file_scopes: settings.file_scopes.map(Arc::new),
                policy: policy_sender,
                ready: ready_sender,
                last_offset: None,
                refresh_prices: true,
                refresh_policy: true,
            },
        };
        let thread = std::thread::Builder::new()
            .name("tollgate-billing-config".into())
            .spawn(move || follower.run())
            .map_err(|e| BillingError::Config {
                setting: "config-topic",
                reason: format!("cannot start the config follower thread: {e}"),
            })?;
        tracing::info!(
            brokers = %settings.kafka.brokers,
            topic = %settings.topic,
            prices = prices.is_some(),
            quota_policy = policy.is_some(),
            "Following the config topic."
        );
        Ok(Self {
            stop,
            thread: Some(thread),
            ready,
            prices,
            policy,
        })
    }

    /// Resolves once the topic was read to the end it had at the start (or it does not exist, or
    /// [`CATCH_UP_TIMEOUT`] passed).
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        // An error means the thread is gone: waiting longer would be forever.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The prices to ingest with, when the follower was given the price file's table.
    pub fn prices(&self) -> Option<LivePrices> {
        self.prices.clone()
    }

    /// The quota policy, when the follower was given the gateway file's scopes.
    pub fn policy(&self) -> Option<PolicyUpdates> {
        self.policy.clone()
    }

    /// Stops the thread and waits for it.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for ConfigFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The thread: its consumer and the configuration it builds.
struct Follower {
    consumer: BaseConsumer<ReaderContext>,
    stop: Arc<AtomicBool>,
    state: State,
}

/// The configuration read so far and where it goes.
struct State {
    topic: String,
    resources: Resources,
    file_prices: Option<Arc<PriceTable>>,
    prices: Option<LivePrices>,
    file_scopes: Option<Arc<Vec<ConfiguredScope>>>,
    policy: Option<watch::Sender<Arc<Vec<ConfiguredScope>>>>,
    ready: watch::Sender<bool>,
    /// The offset of the last message read.
    last_offset: Option<i64>,
    /// What the messages read since the last refresh changed.
    refresh_prices: bool,
    refresh_policy: bool,
}

impl Follower {
    fn run(mut self) {
        let started = Instant::now();
        // The end of the partition when it was assigned: read up to there, the follower is ready.
        let mut end: Option<i64> = None;
        let mut caught_up = false;
        let mut waiting_logged = false;
        let mut read_since_refresh = 0_usize;
        while !self.stop.load(Ordering::Acquire) {
            let Some(end_offset) = end else {
                match self.assign() {
                    Ok(high) => {
                        tracing::info!(topic = %self.state.topic, messages = high, "Reading the config topic.");
                        end = Some(high);
                    }
                    Err(reason) => {
                        if !waiting_logged {
                            tracing::warn!(
                                topic = %self.state.topic,
                                %reason,
                                "The config topic is not available; the configuration files apply until it is. \
                                 Looking for it every second."
                            );
                            waiting_logged = true;
                        }
                        if !caught_up {
                            caught_up = true;
                            self.state.refresh();
                            self.state.ready.send_replace(true);
                        }
                        self.sleep(RETRY);
                    }
                }
                continue;
            };
            let mut at_end = false;
            let mut idle = false;
            match self.consumer.poll(POLL) {
                Some(Ok(message)) => {
                    self.state.take(&message);
                    read_since_refresh += 1;
                    at_end = message.offset().saturating_add(1) >= end_offset;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    at_end = true;
                    idle = true;
                }
                Some(Err(error)) => {
                    // librdkafka's own errors are logged by the context; this one repeats while they last.
                    tracing::debug!(topic = %self.state.topic, %error, "Reading the config topic failed; retrying.");
                    self.sleep(POLL);
                }
                None => idle = true,
            }
            if !caught_up {
                let timed_out = started.elapsed() >= CATCH_UP_TIMEOUT;
                if at_end || end_offset == 0 || timed_out {
                    if timed_out && !at_end {
                        tracing::warn!(
                            topic = %self.state.topic,
                            seconds = CATCH_UP_TIMEOUT.as_secs(),
                            "The config topic was not read to its end in time; starting with what was read."
                        );
                    }
                    caught_up = true;
                    read_since_refresh = 0;
                    self.state.refresh();
                    self.state.ready.send_replace(true);
                    tracing::info!(
                        topic = %self.state.topic,
                        resources = self.state.resources.len(),
                        version = self.state.last_offset,
                        "The config topic was read; following it."
                    );
                }
            } else if (idle || read_since_refresh >= REFRESH_AFTER) && read_since_refresh > 0 {
                read_since_refresh = 0;
                self.state.refresh();
            }
        }
    }

    /// Assigns partition 0 of the topic from its beginning; its high watermark, or why not.
    fn assign(&self) -> Result<i64, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.state.topic), LOOKUP_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.state.topic)
            .ok_or("not in the broker's metadata")?;
        if let Some(error) = topic.error() {
            return Err(format!("{error:?}"));
        }
        if !topic.partitions().iter().any(|p| p.id() == 0) {
            return Err("no partition 0".into());
        }
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.state.topic, 0, LOOKUP_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.state.topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        self.consumer.assign(&list).map_err(|e| e.to_string())?;
        Ok(high)
    }

    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(POLL.min(total));
        }
    }
}

impl State {
    /// Applies one message to the resources.
    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let offset = message.offset();
        self.last_offset = Some(offset);
        match self.resources.apply(message.key(), message.payload()) {
            Ok(applied) if applied.action == "tombstone" && !applied.changed => {
                tracing::debug!(kind = %applied.kind, id = %applied.id, offset, "Tombstone of a removed resource.");
            }
            Ok(applied) => {
                metrics::counter!(m::CONFIG_CHANGES, "kind" => applied.kind.as_str()).increment(1);
                tracing::info!(
                    kind = %applied.kind,
                    id = %applied.id,
                    action = applied.action,
                    actor = applied.actor.as_deref().unwrap_or(""),
                    changed = applied.changed,
                    offset,
                    "Configuration change applied."
                );
                // Even a change that changed nothing may be the first: the topic then replaces the file.
                self.refresh_policy = true;
                self.refresh_prices |= applied.changed && applied.kind == ResourceKind::Price;
            }
            Err(reason) => tracing::warn!(
                topic = %self.topic,
                offset,
                %reason,
                "Skipped a config topic message: not a configuration change, or a price change every reader refuses."
            ),
        }
    }

    /// Brings the prices and the quota policy up to the resources read so far.
    fn refresh(&mut self) {
        if std::mem::take(&mut self.refresh_prices)
            && let (Some(file), Some(live)) = (&self.file_prices, &self.prices)
        {
            let (table, problems) = file.with_resources(self.resources.of_kind(ResourceKind::Price));
            for problem in problems {
                tracing::error!(%problem, "A price version of the config topic is left out.");
            }
            let versions = table.versions().len();
            live.replace(Arc::new(table));
            tracing::info!(
                versions,
                "Prices in use: the price file's and the config topic's."
            );
        }
        if std::mem::take(&mut self.refresh_policy)
            && let (Some(file), Some(sender)) = (&self.file_scopes, &self.policy)
        {
            let scopes = if !self.resources.replaces_file() {
                Arc::clone(file)
            } else {
                let (scopes, problems) = policy::from_resources(&self.resources);
                for problem in problems {
                    tracing::error!(%problem, "A token limit of the config topic is left out.");
                }
                Arc::new(scopes)
            };
            let from = if !self.resources.replaces_file() {
                "the gateway file"
            } else {
                "the config topic"
            };
            sender.send_if_modified(|current| {
                let modified = **current != *scopes;
                if modified {
                    tracing::info!(scopes = scopes.len(), from, "Quota policy updated.");
                    *current = scopes;
                }
                modified
            });
        }
        if let Some(offset) = self.last_offset {
            metrics::gauge!(m::CONFIG_VERSION).set(offset as f64);
        }
    }
}

//! `--config-topic <name>` (env `TOLLGATE_CONFIG_TOPIC`; off by default) on `run` and `quota`: billing-consumer
//! follows the admin API's `tollgate.config.v1` topic, as every gateway replica does, for the two things it
//! takes from the configuration — quota limits and prices.
//!
//! A thread owns an rdkafka consumer outside any group (never joined, never committed) assigned partition 0
//! of the topic from the beginning, like the gateway's quota feed; the thread, the waiting for the topic and
//! telling when its end is reached are [`tollgate_plumbing::follow`]'s, as they are the gateway's. Every
//! message is applied in order to a map (kind, id) → resource ([`resources`]): a `put` change stores its
//! resource, a `delete` change or a tombstone (null value) removes it. Each applied change is logged once
//! (kind, id, action, actor — the topic carries no secrets, and resources are never logged) and counted in
//! `billing_config_changes_total{kind}`; a message that is not a change is logged and skipped. Once what is
//! ready has been read, the derived configuration is refreshed and `billing_config_version` set to the offset
//! of the last message read:
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
//! **Start-up.** [`ConfigFollower::ready`] resolves once the topic was read to the end it had when the
//! follower started (or [`CATCH_UP_TIMEOUT`] after it was assigned, with a warning), so ingest and the quota
//! loop start from the topic's configuration, not the files'. A topic that does not exist yet is not waited
//! for: the files apply, and the follower looks for the topic every second and follows it once it appears.

pub mod resources;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::watch;
use tollgate_plumbing::follow::{
    Assignment, Handler, Late, Partitions, Progress, Settings, TopicFollower, Waiting,
};
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
    /// Taken by [`ConfigFollower::stop`].
    follower: Option<TopicFollower>,
    ready: watch::Receiver<bool>,
    prices: Option<LivePrices>,
    policy: Option<PolicyUpdates>,
}

impl ConfigFollower {
    /// Starts following `settings.topic` on a thread of its own.
    pub fn start(settings: FollowSettings) -> Result<Self, BillingError> {
        let consumer: BaseConsumer<ReaderContext> = settings
            .kafka
            .groupless_consumer_config(crate::kafka::CLIENT_ID, "tollgate-billing-config")
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
        let handler = Follower {
            waiting_logged: false,
            caught_up: false,
            read_since_refresh: 0,
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
        let mut follow = Settings::new("tollgate-billing-config", settings.topic.clone());
        follow.partitions = Partitions::One(0);
        follow.poll = POLL;
        follow.retry = RETRY;
        follow.metadata_timeout = LOOKUP_TIMEOUT;
        follow.catch_up_timeout = Some(CATCH_UP_TIMEOUT);
        let follower = TopicFollower::spawn(consumer, follow, handler).map_err(|e| BillingError::Config {
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
            follower: Some(follower),
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
        if let Some(follower) = self.follower.take() {
            follower.request_stop();
            let _ = tokio::task::spawn_blocking(move || follower.stop()).await;
        }
    }
}

impl Drop for ConfigFollower {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.request_stop();
        }
    }
}

/// What the follower's thread does with the config topic ([`TopicFollower`] reads it): the configuration it
/// builds, and when to refresh what derives from it.
struct Follower {
    state: State,
    /// Whether the topic's absence was logged.
    waiting_logged: bool,
    /// Whether [`ConfigFollower::ready`] was signalled: the topic was read to its end at assignment, or it was
    /// not there, or [`CATCH_UP_TIMEOUT`] passed.
    caught_up: bool,
    /// Messages read since the derived configuration was last refreshed.
    read_since_refresh: usize,
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

impl Handler for Follower {
    fn waiting(&mut self, reason: &Waiting) {
        if !self.waiting_logged {
            tracing::warn!(
                topic = %self.state.topic,
                %reason,
                "The config topic is not available; the configuration files apply until it is. \
                 Looking for it every second."
            );
            self.waiting_logged = true;
        }
        if !self.caught_up {
            self.caught_up = true;
            self.state.refresh();
            self.state.ready.send_replace(true);
        }
    }

    fn assigned(&mut self, assignment: &Assignment) {
        tracing::info!(topic = %self.state.topic, messages = assignment.end(), "Reading the config topic.");
    }

    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()> {
        self.state.take(message);
        self.read_since_refresh += 1;
        if self.caught_up && self.read_since_refresh >= REFRESH_AFTER {
            self.refresh();
        }
        ControlFlow::Continue(())
    }

    fn caught_up(&mut self) -> ControlFlow<()> {
        if !self.caught_up {
            self.caught_up = true;
            self.refresh();
            self.state.ready.send_replace(true);
            tracing::info!(
                topic = %self.state.topic,
                resources = self.state.resources.len(),
                version = self.state.last_offset,
                "The config topic was read; following it."
            );
        }
        ControlFlow::Continue(())
    }

    /// Not read to its end within [`CATCH_UP_TIMEOUT`]: start with what was read.
    fn late(&mut self, _: Progress) -> Late {
        if !self.caught_up {
            tracing::warn!(
                topic = %self.state.topic,
                seconds = CATCH_UP_TIMEOUT.as_secs(),
                "The config topic was not read to its end in time; starting with what was read."
            );
        }
        Late::Proceed
    }

    fn idle(&mut self) {
        if self.caught_up && self.read_since_refresh > 0 {
            self.refresh();
        }
    }

    fn read_error(&mut self, error: &KafkaError) {
        // librdkafka's own errors are logged by the context; this one repeats while they last.
        tracing::debug!(topic = %self.state.topic, %error, "Reading the config topic failed; retrying.");
        std::thread::sleep(POLL);
    }
}

impl Follower {
    /// Brings what derives from the configuration up to the messages read so far.
    fn refresh(&mut self) {
        self.read_since_refresh = 0;
        self.state.refresh();
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

//! The quota feed: billing-consumer's snapshots from the compacted quota topic into [`Quotas`]' moka cache.
//!
//! Snapshots are cached per (scope, window) — billing-consumer publishes each window of a scope as its own
//! snapshot — and one whose watermarks go back from the one held for its window is ignored and counted in
//! `tollgate_quota_snapshots_regressed_total` ([`Quotas::accept`]).
//!
//! A dedicated thread owns an rdkafka consumer that reads every partition of the topic from the beginning (a
//! compacted topic is the current state: one snapshot per scope) and then follows it. It never joins a consumer
//! group and never commits: every replica reads everything. Until the topic exists it retries every second. The
//! thread, the waiting and the reading are [`tollgate_plumbing::follow`]'s; this module says what a message, the
//! topic's absence and each second mean for the quotas.
//!
//! Once a second the thread publishes how old billing-consumer's newest word (snapshot or heartbeat) is, in
//! `tollgate_quota_snapshot_age_seconds`. Past `quota.max_snapshot_age` — the topic unreachable, billing-consumer
//! down or lagging — the gateway is **degraded**: it logs it once, sets `tollgate_quota_degraded`, and keeps
//! enforcing from its local view (the last snapshots plus every token this replica spent since, which no
//! longer leave its books); it does not fail open. A gateway that has not heard anything since it started is
//! degraded too until the first heartbeat arrives.
//!
//! **Start.** The feed first reads every partition up to the end it had when the feed was assigned; until then
//! the books hold none of the spending the snapshots carry, and an exhausted quota would admit again after a
//! restart. [`QuotaFeed::wait_caught_up`] lets the gateway wait for that before it serves (`quota.load_timeout`,
//! default 15 s); past it the gateway serves degraded, as above, and says so in a warning and in
//! `tollgate_quota_feed_caught_up` (0 until the feed has read what the topic held at start).

use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tollgate_plumbing::follow::{Assignment, Handler, Settings, TopicFollower, Waiting};
use tollgate_schemas::quota::{HEARTBEAT_KEY, QuotaHeartbeatEvent, QuotaSnapshotEvent};

use crate::clock::wall_ms;
use crate::config::Config;
use crate::kafka::follower_config;
use crate::metrics as m;

use super::{Acceptance, Quotas};

/// How long the topic's metadata lookup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the staleness gauge is refreshed and the topic looked for while it does not exist.
const TICK: Duration = Duration::from_secs(1);

/// The running feed; [`QuotaFeed::stop`] ends it.
#[derive(Debug)]
pub struct QuotaFeed {
    follower: TopicFollower,
    caught_up: Arc<CaughtUp>,
}

/// Set once the feed has read what the topic held when it was assigned.
#[derive(Debug, Default)]
struct CaughtUp {
    done: Mutex<bool>,
    changed: Condvar,
}

impl CaughtUp {
    fn set(&self) {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*done {
            *done = true;
            metrics::gauge!(m::QUOTA_FEED_CAUGHT_UP).set(1.0);
            self.changed.notify_all();
        }
    }

    fn wait(&self, timeout: Duration) -> bool {
        let done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (done, _) = self
            .changed
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *done
    }
}

impl QuotaFeed {
    /// Starts following `quota.topic`, unless no token limit is configured and none can be added live (then
    /// there is nothing to feed).
    pub fn start(config: &Config, quotas: Arc<Quotas>) -> Result<Option<Self>, FeedError> {
        // With a config topic, token limits can arrive at any time; without one, only the file has them.
        if quotas.is_empty() && config.admin.config_topic.is_none() {
            return Ok(None);
        }
        let consumer: BaseConsumer = follower_config(
            &config.kafka,
            &format!("tollgate-gateway-quota/{}", config.server.instance_id),
        )
        .create()?;
        let caught_up = Arc::new(CaughtUp::default());
        metrics::gauge!(m::QUOTA_FEED_CAUGHT_UP).set(0.0);
        let handler = Follower {
            caught_up: caught_up.clone(),
            topic: config.quota.topic.clone(),
            quotas,
            max_age: config.quota.max_snapshot_age,
            started_at_ms: wall_ms(),
            waiting_logged: false,
            degraded: None,
        };
        let mut settings = Settings::new("tollgate-quota-feed", config.quota.topic.clone());
        settings.metadata_timeout = METADATA_TIMEOUT;
        settings.retry = TICK;
        settings.tick = Some(TICK);
        let follower = TopicFollower::spawn(consumer, settings, handler)?;
        Ok(Some(Self { follower, caught_up }))
    }

    /// Waits up to `timeout` for the feed to have read what the topic held when it started; whether it has.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        self.caught_up.wait(timeout)
    }

    /// Stops the thread and waits for it (at most about one poll).
    pub fn stop(self) {
        self.follower.stop();
    }
}

/// Why the feed could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("invalid Kafka consumer configuration for the quota feed: {0}")]
    Consumer(#[from] KafkaError),
    #[error("could not start the quota feed thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the feed's thread does with the quota topic ([`TopicFollower`] reads it).
struct Follower {
    topic: String,
    quotas: Arc<Quotas>,
    max_age: Duration,
    started_at_ms: u64,
    caught_up: Arc<CaughtUp>,
    /// Whether the topic's absence was logged.
    waiting_logged: bool,
    /// Whether the last tick found the gateway degraded; `None` before the first.
    degraded: Option<bool>,
}

impl Handler for Follower {
    fn waiting(&mut self, reason: &Waiting) {
        // The broker answered: a topic it does not have holds no snapshot to wait for.
        if reason.is_absent() {
            self.caught_up.set();
        }
        if !self.waiting_logged {
            tracing::warn!(topic = %self.topic, %reason, "Quota topic not available yet; retrying every second.");
            self.waiting_logged = true;
        }
    }

    fn assigned(&mut self, assignment: &Assignment) {
        tracing::info!(topic = %self.topic, partitions = assignment.partitions(), "Following quota snapshots.");
    }

    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()> {
        self.take(message);
        ControlFlow::Continue(())
    }

    fn caught_up(&mut self) -> ControlFlow<()> {
        self.caught_up.set();
        ControlFlow::Continue(())
    }

    fn read_error(&mut self, error: &KafkaError) {
        tracing::debug!(%error, "Quota feed read error.");
    }

    fn tick(&mut self) {
        self.degraded = Some(self.refresh_gauges(self.degraded));
    }
}

impl Follower {
    fn take(&self, message: &BorrowedMessage<'_>) {
        let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
            return; // a tombstone: a dropped window's or a removed scope's snapshot
        };
        if message.key() == Some(HEARTBEAT_KEY.as_bytes()) {
            match serde_json::from_slice::<QuotaHeartbeatEvent>(payload) {
                Ok(beat) if beat.is_expected_type() => self.quotas.heard(beat.data.published_at_ms),
                _ => self.undecodable(message),
            }
            return;
        }
        match serde_json::from_slice::<QuotaSnapshotEvent>(payload) {
            Ok(event) if event.is_expected_type() => {
                let snapshot = event.data;
                let live = snapshot.published_at_ms >= self.started_at_ms;
                let newest_event_ms = snapshot.newest_event_ms;
                let (scope, window_start_ms) = (snapshot.scope.clone(), snapshot.window_start_ms);
                match self.quotas.accept(snapshot) {
                    Acceptance::Taken => {
                        metrics::counter!(m::QUOTA_SNAPSHOTS_TOTAL).increment(1);
                        if live && newest_event_ms > 0 {
                            let lag = wall_ms().saturating_sub(newest_event_ms);
                            metrics::histogram!(m::QUOTA_SNAPSHOT_LAG_SECONDS).record(lag as f64 / 1000.0);
                        }
                    }
                    Acceptance::Regressed => {
                        metrics::counter!(m::QUOTA_SNAPSHOTS_REGRESSED_TOTAL).increment(1);
                        tracing::warn!(
                            %scope,
                            window_start_ms,
                            source = %event.source,
                            partition = message.partition(),
                            offset = message.offset(),
                            "Ignored a quota snapshot whose watermarks go back from the one held (a second or stale quota loop)."
                        );
                    }
                    Acceptance::NotEnforced => {}
                }
            }
            _ => self.undecodable(message),
        }
    }

    fn undecodable(&self, message: &BorrowedMessage<'_>) {
        tracing::warn!(
            topic = %self.topic,
            partition = message.partition(),
            offset = message.offset(),
            "Skipped a quota message that is not a tollgate.quota.v1 snapshot or heartbeat."
        );
    }

    /// Refreshes the staleness gauges; logs when the gateway enters or leaves degraded mode.
    fn refresh_gauges(&self, was_degraded: Option<bool>) -> bool {
        let age = self.quotas.staleness();
        let degraded = age.is_none_or(|age| age > self.max_age);
        metrics::gauge!(m::QUOTA_SNAPSHOT_AGE_SECONDS).set(age.map_or(f64::INFINITY, |a| a.as_secs_f64()));
        metrics::gauge!(m::QUOTA_DEGRADED).set(if degraded { 1.0 } else { 0.0 });
        let scopes = self.quotas.scopes();
        let pending = scopes
            .iter()
            .filter(|s| s.currency.is_none())
            .map(|s| s.pending)
            .fold(0, u64::saturating_add);
        metrics::gauge!(m::QUOTA_PENDING_TOKENS).set(pending as f64);
        for scope in scopes {
            match scope.currency {
                Some(currency) => {
                    metrics::gauge!(m::BUDGET_REMAINING, "budget" => scope.id, "currency" => currency)
                        .set(scope.remaining as f64 / 1e6);
                }
                None => {
                    metrics::gauge!(m::QUOTA_REMAINING_TOKENS, "scope" => scope.id)
                        .set(scope.remaining as f64);
                }
            }
        }
        match (was_degraded, degraded) {
            (Some(false) | None, true) if age.is_some() => tracing::warn!(
                age_ms = age.map_or(0, |a| a.as_millis() as u64),
                max_age_ms = self.max_age.as_millis() as u64,
                "Quota snapshots are stale: enforcing token limits from this replica's local view until they resume."
            ),
            (Some(true), false) => tracing::info!("Quota snapshots are current again."),
            _ => {}
        }
        degraded
    }
}

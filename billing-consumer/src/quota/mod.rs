//! The quota loop: the single writer of quota state. It counts `tollgate.usage.v1` events into each configured
//! scope's windows and publishes a [`QuotaSnapshot`](tollgate_schemas::quota::QuotaSnapshot) per changed (scope,
//! window) on the compacted `tollgate.quota.v1` topic, where gateways read them; of several loops on one quota
//! topic only the [`lease`] holder publishes.
//!
//! 1. **Rebuild.** Nothing is stored between runs: on start the loop reads every partition of the usage topic
//!    from the first record at or after `now − longest window − 5 min` by Kafka time ([`crate::kafka::reader`]) up to the high
//!    watermarks it had at the start, counting events but publishing nothing, so a gateway never sees a
//!    half-rebuilt, lower `used`.
//!    Once caught up it publishes every scope's snapshot at once.
//! 2. **Live.** Each event is counted ([`windows`]); changed snapshots are published as soon as the usage topic
//!    has nothing more to read (so sequential traffic sees little lag), and at least every `publish_interval`
//!    while events keep coming. A snapshot that fails to publish stays marked and goes out in the next round.
//! 3. **Heartbeat** every `heartbeat_interval`, also while waiting for the topic and while rebuilding (then with
//!    `rebuilding = true`).
//! 4. **Policy changes** ([`run_live`], with `--config-topic`): the scopes to compute come from a watch channel
//!    that [`crate::config_topic`] updates. A scope whose key stays keeps its windows; a new limit value goes out
//!    in its next snapshot. A scope that goes is forgotten and never published again. A scope that comes needs
//!    the usage already consumed in its window, which only the usage topic still has: the loop **rebuilds** —
//!    fresh windows for the whole new policy, read again from `now − longest window − 5 min` exactly as in 1,
//!    publishing nothing meanwhile (heartbeats say `rebuilding`), then every snapshot at once. Simple and exact
//!    whatever the new scope's window, at the cost of re-reading that stretch of the topic on each change that
//!    adds a scope (admin changes are rare; one that arrives during a rebuild restarts it).
//! 5. **Shutdown** (the token is cancelled): publish what is pending — unless still rebuilding — flush, leave the
//!    lease group, return.
//! 6. **One writer.** Several loops may run on one quota topic, but only the one holding the [`lease`] publishes
//!    (snapshots, tombstones and heartbeats); the others count the same events as hot standbys. A loop that is
//!    granted the lease publishes every window it holds at its next heartbeat tick. Gateways additionally ignore a
//!    snapshot whose watermarks go back, so a stale writer cannot move their view backwards.
//!
//! 7. **Alerts** (when configured): every snapshot the loop is about to publish is also handed to
//!    [`crate::alerts::Alerter`], which POSTs a webhook for each threshold crossed — so only the lease holder
//!    alerts, and never from a half-rebuilt window.
//!
//! [`policy`] reads the scopes from the gateway's configuration file (or the config topic's resources);
//! [`publisher`] writes to the quota topic.

pub mod lease;
pub mod policy;
pub mod publisher;
pub mod windows;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt as _;
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_schemas::quota::QuotaHeartbeat;

use crate::alerts::{self, AlertSettings, Alerter};
use crate::error::{BillingError, RejectReason};
use crate::ledger::pricing::{LivePrices, PriceTable};
use crate::telemetry::metrics as m;

use self::lease::Lease;
use self::policy::ConfiguredScope;
use self::publisher::Publisher;
use self::windows::{Applied, Position, QuotaState};
use crate::kafka::reader::{self, Reader, ReaderConsumer};

/// The live quota policy: the scopes to compute, replaced whole when the configuration changes.
pub type PolicyUpdates = watch::Receiver<Arc<Vec<ConfiguredScope>>>;

/// How far before the longest window the rebuild starts: room for clock skew between gateways and Kafka.
pub const REBUILD_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Messages read at most in one go before timers (heartbeat, publishing) get their turn.
const DRAIN_MAX: usize = 1000;
/// Pause after the consumer reported an error, before reading again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// How far back the rebuild reads: the longest configured window plus [`REBUILD_MARGIN`].
pub fn rebuild_lookback(settings: &QuotaSettings) -> Duration {
    lookback_for(&settings.scopes)
}

/// How far back a rebuild of `scopes` reads: their longest window plus [`REBUILD_MARGIN`].
pub fn lookback_for(scopes: &[ConfiguredScope]) -> Duration {
    let longest = scopes
        .iter()
        .map(|s| s.scope.period.longest_ms())
        .max()
        .unwrap_or(0);
    Duration::from_millis(longest).saturating_add(REBUILD_MARGIN)
}

/// Runs the quota loop for `settings.scopes` until `shutdown` is cancelled. The quota topic should exist
/// ([`crate::kafka::topics::ensure_quota`]); the usage topic need not yet (the loop waits for it).
pub async fn run(settings: QuotaSettings, shutdown: CancellationToken) -> Result<(), BillingError> {
    run_live(settings, None, LivePrices::default(), shutdown).await
}

/// Runs the quota loop as [`run`] does; with `policy`, its current value replaces `settings.scopes` and each
/// new value is applied while the loop runs (see the module docs). Budgets count each event's cost under the
/// table `prices` holds when the event is counted.
pub async fn run_live(
    mut settings: QuotaSettings,
    mut policy: Option<PolicyUpdates>,
    prices: LivePrices,
    shutdown: CancellationToken,
) -> Result<(), BillingError> {
    if let Some(updates) = &mut policy {
        settings.scopes = updates.borrow_and_update().as_ref().clone();
    }
    let publisher = Publisher::new(&settings.kafka, &settings.quota_topic, &settings.source)?;
    let lease = Lease::join(
        &settings.kafka,
        &settings.quota_topic,
        &settings.lease_group,
        settings.heartbeat_interval,
    )?;
    let alerter = match settings.alerts.clone() {
        Some(alerts) => Some(Alerter::start(alerts, &settings.kafka)?),
        None => None,
    };
    let lookback = rebuild_lookback(&settings);
    let scopes = settings.scopes.len();
    metrics::gauge!(m::QUOTA_SCOPES).set(scopes as f64);
    tracing::info!(
        brokers = %settings.kafka.brokers,
        usage_topic = %settings.usage_topic,
        quota_topic = %settings.quota_topic,
        scopes,
        rebuild_from = %humantime::format_duration(lookback),
        publish_interval = %humantime::format_duration(settings.publish_interval),
        live_policy = policy.is_some(),
        "Quota loop started."
    );
    if scopes == 0 {
        tracing::info!("No token limits are configured; the quota loop only publishes heartbeats.");
    }

    let mut quota = QuotaLoop {
        state: QuotaState::new(settings.scopes.clone(), settings.dedup_capacity)
            .with_max_clock_skew(settings.max_clock_skew),
        publisher,
        lease,
        held: false,
        publish_interval: settings.publish_interval,
        rebuilding: true,
        started: Instant::now(),
        rebuild_events: 0,
        dedup_capacity: settings.dedup_capacity,
        max_clock_skew: settings.max_clock_skew,
        kafka: settings.kafka.clone(),
        usage_topic: settings.usage_topic.clone(),
        alerter,
        prices,
        unpriced: HashMap::new(),
    };
    crate::telemetry::readiness::STATE.quota_started(settings.heartbeat_interval, now_ms());
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval.max(Duration::from_millis(1)));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);

    // Wait for the usage topic, heartbeating meanwhile.
    let Some(mut reader) = quota.open(lookback, &mut heartbeat, &shutdown).await? else {
        quota.publisher.flush().await;
        quota.lease.stop().await;
        if let Some(alerter) = quota.alerter.take() {
            alerter.stop().await;
        }
        tracing::info!("Quota loop stopped before the usage topic was read.");
        return Ok(());
    };

    let mut next_publish = tokio::time::Instant::now();
    loop {
        let consumer = Arc::clone(&reader.consumer);
        let publish_due = quota.may_publish() && quota.state.has_changed();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = heartbeat.tick() => {
                quota.take_over().await;
                quota.heartbeat().await;
            }
            update = next_policy(&mut policy) => {
                let Some(scopes) = update else { continue };
                if quota.update_policy(scopes.as_ref().clone()) {
                    let lookback = lookback_for(&scopes);
                    match quota.open(lookback, &mut heartbeat, &shutdown).await? {
                        Some(rebuilding) => reader = rebuilding,
                        None => break,
                    }
                }
                next_publish = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(next_publish), if publish_due => {
                quota.publish().await;
                next_publish = tokio::time::Instant::now() + quota.publish_interval;
            }
            received = consumer.recv() => {
                let idle = if quota.handle(&mut reader, received) {
                    quota.drain(&consumer, &mut reader)
                } else {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(CONSUME_ERROR_PAUSE) => {}
                    }
                    false
                };
                if quota.rebuilding && reader.reached_end() {
                    quota.finish_rebuild(&reader).await;
                    next_publish = tokio::time::Instant::now() + quota.publish_interval;
                } else if idle && quota.may_publish() && quota.state.has_changed() {
                    quota.publish().await;
                    next_publish = tokio::time::Instant::now() + quota.publish_interval;
                }
            }
        }
    }

    if quota.rebuilding {
        tracing::info!("Shutting down during the rebuild; nothing is published.");
    } else if quota.may_publish() && quota.state.has_changed() {
        quota.publish().await;
    }
    quota.publisher.flush().await;
    quota.lease.stop().await;
    if let Some(alerter) = quota.alerter.take() {
        alerter.stop().await;
    }
    tracing::info!("Quota loop stopped.");
    Ok(())
}

/// The next policy, once it changed; `None` (and no policy from then on) when its sender is gone. Pending
/// forever without a policy.
async fn next_policy(policy: &mut Option<PolicyUpdates>) -> Option<Arc<Vec<ConfiguredScope>>> {
    let Some(updates) = policy else {
        return std::future::pending().await;
    };
    match updates.changed().await {
        Ok(()) => Some(Arc::clone(&updates.borrow_and_update())),
        Err(_) => {
            *policy = None;
            None
        }
    }
}

/// The loop's state between messages.
#[derive(Debug)]
struct QuotaLoop {
    state: QuotaState,
    publisher: Publisher,
    lease: Lease,
    /// Whether the lease was held at the last look (a change to held publishes every window).
    held: bool,
    publish_interval: Duration,
    rebuilding: bool,
    started: Instant,
    rebuild_events: u64,
    dedup_capacity: usize,
    max_clock_skew: Duration,
    kafka: KafkaConnection,
    usage_topic: String,
    /// Threshold alerts, when configured: fed every snapshot this loop publishes.
    alerter: Option<Alerter>,
    /// The prices budgets count spend at.
    prices: LivePrices,
    /// Unpriced events per (served model, UTC day), with alerts on: the last two days.
    unpriced: HashMap<(String, u64), u64>,
}

impl QuotaLoop {
    /// Opens the usage topic for a rebuild from `now − lookback`, waiting for it and heartbeating meanwhile;
    /// ends the rebuild at once when there is nothing to read. `None` when `shutdown` came first.
    async fn open(
        &mut self,
        lookback: Duration,
        heartbeat: &mut Interval,
        shutdown: &CancellationToken,
    ) -> Result<Option<Reader>, BillingError> {
        let (kafka, topic) = (self.kafka.clone(), self.usage_topic.clone());
        let opening = reader::open(&kafka, &topic, lookback);
        tokio::pin!(opening);
        let reader = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                opened = &mut opening => break opened?,
                _ = heartbeat.tick() => self.heartbeat().await,
            }
        };
        self.started = Instant::now();
        if reader.reached_end() {
            self.finish_rebuild(&reader).await;
        }
        Ok(Some(reader))
    }

    /// Computes `scopes` from now on. Returns true when some scope is new: then the windows start afresh and
    /// the caller must rebuild them from the usage topic.
    fn update_policy(&mut self, scopes: Vec<ConfiguredScope>) -> bool {
        let diff = self.state.update_policy(scopes);
        if diff.is_empty() {
            tracing::debug!("The configuration changed, the quota policy did not.");
            return false;
        }
        let scopes = self.state.scope_count();
        metrics::gauge!(m::QUOTA_SCOPES).set(scopes as f64);
        let rebuild = !diff.added.is_empty();
        tracing::info!(
            added = ?diff.added,
            removed = ?diff.removed,
            relimited = ?diff.relimited,
            scopes,
            rebuild,
            "Quota policy changed."
        );
        if rebuild {
            let policy = self.state.scopes().cloned().collect();
            self.state =
                QuotaState::new(policy, self.dedup_capacity).with_max_clock_skew(self.max_clock_skew);
            self.rebuilding = true;
            self.rebuild_events = 0;
        }
        rebuild
    }

    /// Counts one message. Returns false when the consumer reported an error instead of a message.
    fn handle(&mut self, reader: &mut Reader, received: Result<BorrowedMessage<'_>, KafkaError>) -> bool {
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                metrics::counter!(m::CONSUME_ERRORS).increment(1);
                tracing::warn!(%error, "Reading the usage topic failed; retrying.");
                return false;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        reader.read(partition, offset);
        let event = match crate::ingest::batch::decode(message.payload()) {
            Ok(event) => event,
            Err(error) => {
                let reason = match &error {
                    BillingError::Decode { reason, .. } => *reason,
                    _ => RejectReason::InvalidJson,
                };
                metrics::counter!(m::QUOTA_EVENTS_UNDECODABLE, "reason" => reason.as_str()).increment(1);
                tracing::warn!(
                    partition,
                    offset,
                    reason = reason.as_str(),
                    %error,
                    "Skipped a message on the usage topic that is not a usage event."
                );
                return true;
            }
        };
        let timestamp_ms = message
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok());
        let read_at_ms = now_ms();
        let at = Position {
            partition,
            offset,
            timestamp_ms,
            not_after_ms: Some(timestamp_ms.map_or(read_at_ms, |ms| ms.min(read_at_ms))),
        };
        let prices = self.prices.current();
        match self.state.apply(&event, at, &prices) {
            Applied::Counted { skewed, .. } => {
                metrics::counter!(m::QUOTA_EVENTS_APPLIED).increment(1);
                self.watch_price(&event.data, &prices);
                if skewed {
                    metrics::counter!(m::QUOTA_CLOCK_SKEW_EVENTS).increment(1);
                    tracing::warn!(
                        id = %event.id,
                        source = %event.source,
                        partition,
                        offset,
                        finished_at_ms = event.data.finished_at_ms,
                        not_after_ms = at.not_after_ms.unwrap_or(0),
                        "A usage event's time is ahead of its broker timestamp (or of this loop's clock) by more than the clock-skew bound; counted at that time."
                    );
                }
                if self.rebuilding {
                    self.rebuild_events += 1;
                }
            }
            Applied::Duplicate => {
                metrics::counter!(m::QUOTA_EVENTS_DUPLICATE).increment(1);
                tracing::debug!(id = %event.id, partition, offset, "Skipped a usage event counted before.");
            }
        }
        true
    }

    /// Counts what the consumer has ready without waiting, up to [`DRAIN_MAX`] messages. Returns true when
    /// that emptied it (the usage topic has nothing more to read right now).
    fn drain(&mut self, consumer: &ReaderConsumer, reader: &mut Reader) -> bool {
        for _ in 0..DRAIN_MAX {
            match consumer.recv().now_or_never() {
                None => return true,
                Some(received) => {
                    if !self.handle(reader, received) {
                        return false;
                    }
                }
            }
        }
        false
    }

    /// With alerts on, counts an event of a served model that has no price in force (it is stored at cost 0) per
    /// UTC day, and alerts the first of each day while holding the lease; the alert ledger makes that once per
    /// (model, day) across restarts. Events without tokens (refusals) cost nothing priced or not.
    fn watch_price(&mut self, data: &tollgate_schemas::usage::UsageRecorded, prices: &PriceTable) {
        let Some(alerter) = self.alerter.as_mut() else {
            return;
        };
        if data.prompt_tokens == 0 && data.completion_tokens == 0
            || prices.in_force(&data.model_served, data.finished_at_ms).is_some()
        {
            return;
        }
        let today = alerts::Standing::unpriced(&data.model_served, data.finished_at_ms, 0).window_start_ms;
        self.unpriced
            .retain(|(_, day), _| day.saturating_add(2 * 86_400_000) > today);
        let events = self
            .unpriced
            .entry((data.model_served.clone(), today))
            .or_insert(0);
        *events += 1;
        let standing = alerts::Standing::unpriced(&data.model_served, data.finished_at_ms, *events);
        if !self.rebuilding && self.lease.held() {
            alerter.observe(&standing, now_ms());
        }
    }

    /// Whether snapshots may go out now: rebuilt, and holding the lease.
    fn may_publish(&self) -> bool {
        !self.rebuilding && self.lease.held()
    }

    /// When the lease was just granted (a standby taking over, or the first grant after the rebuild), publishes
    /// every window held, so gateways get the new writer's full state at once.
    async fn take_over(&mut self) {
        let held = self.lease.held();
        if held && !self.held && !self.rebuilding {
            let snapshots = self.state.all_snapshots(now_ms());
            tracing::info!(
                snapshots = snapshots.len(),
                "Holding the quota lease: publishing every window."
            );
            self.alert(&snapshots, true);
            for (key, window_start_ms) in self.publisher.snapshots(snapshots, false).await {
                self.state.mark_changed(&key, window_start_ms);
            }
            let mut expired = self.state.take_expired();
            expired.extend(self.state.stale_keys(now_ms()));
            self.publisher.tombstones(expired).await;
        }
        if !self.rebuilding {
            self.held = held;
        }
    }

    /// Ends the rebuild: publishes every scope's snapshot (when holding the lease) and goes live.
    async fn finish_rebuild(&mut self, reader: &Reader) {
        self.rebuilding = false;
        self.held = self.lease.held();
        if !self.held {
            tracing::info!(
                events = self.rebuild_events,
                "Quota windows rebuilt from the usage topic; not holding the lease, so publishing nothing."
            );
            return;
        }
        let snapshots = self.state.all_snapshots(now_ms());
        let published = snapshots.len();
        self.alert(&snapshots, true);
        let failed = self.publisher.snapshots(snapshots, false).await;
        for (key, window_start_ms) in &failed {
            self.state.mark_changed(key, *window_start_ms);
        }
        let mut expired = self.state.take_expired();
        expired.extend(self.state.stale_keys(now_ms()));
        self.publisher.tombstones(expired).await;
        let took = self.started.elapsed();
        metrics::gauge!(m::QUOTA_REBUILD_DURATION).set(took.as_secs_f64());
        tracing::info!(
            events = self.rebuild_events,
            partitions = reader.partitions(),
            start_by_time = reader.start_by_time,
            snapshots = published - failed.len(),
            seconds = took.as_secs_f64(),
            "Quota windows rebuilt from the usage topic."
        );
    }

    /// Publishes the changed snapshots; those that fail stay marked.
    async fn publish(&mut self) {
        let snapshots = self.state.take_changed(now_ms());
        self.alert(&snapshots, false);
        if !snapshots.is_empty() {
            for (key, window_start_ms) in self.publisher.snapshots(snapshots, true).await {
                self.state.mark_changed(&key, window_start_ms);
            }
        }
        self.publisher.tombstones(self.state.take_expired()).await;
    }

    /// Hands the snapshots about to be published to the alerts (the loop holds the lease and is not rebuilding);
    /// `fresh` after a rebuild or a takeover, when every threshold reached is checked against the alerts ledger.
    fn alert(&mut self, snapshots: &[tollgate_schemas::quota::QuotaSnapshot], fresh: bool) {
        let now = now_ms();
        alerts::record_standing(snapshots, now);
        if let Some(alerter) = &mut self.alerter {
            let queued = alerter.observe_snapshots(snapshots, fresh, now);
            if queued > 0 {
                tracing::debug!(queued, "Thresholds crossed; alerts queued.");
            }
        }
    }

    async fn heartbeat(&self) {
        if !self.lease.held() {
            return;
        }
        let heartbeat = QuotaHeartbeat {
            published_at_ms: now_ms(),
            scopes: u32::try_from(self.state.scope_count()).unwrap_or(u32::MAX),
            rebuilding: self.rebuilding,
        };
        match self.publisher.heartbeat(heartbeat).await {
            Ok(()) => crate::telemetry::readiness::STATE.heartbeat_delivered(now_ms()),
            Err(error) => {
                metrics::counter!(m::QUOTA_PUBLISH_FAILURES).increment(1);
                tracing::warn!(error_kind = error.kind(), %error, "Publishing a quota heartbeat failed.");
            }
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Everything [`crate::quota::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSettings {
    /// The brokers and the operator's librdkafka properties.
    pub kafka: KafkaConnection,
    /// The usage topic to count, normally [`tollgate_schemas::topics::USAGE_V1`].
    pub usage_topic: String,
    /// The compacted topic snapshots and heartbeats go to, normally [`tollgate_schemas::topics::QUOTA_V1`].
    pub quota_topic: String,
    /// The scopes to compute ([`self::policy`]).
    pub scopes: Vec<ConfiguredScope>,
    /// While events keep arriving, changed snapshots are published this often; whenever the usage topic has
    /// nothing more to read, at once.
    pub publish_interval: Duration,
    /// A heartbeat is published this often.
    pub heartbeat_interval: Duration,
    /// Event ids remembered for deduplication (at most [`self::windows::MAX_DEDUP_CAPACITY`]).
    pub dedup_capacity: usize,
    /// An event whose time is further ahead of its message's broker timestamp is counted at the broker's time.
    pub max_clock_skew: Duration,
    /// The CloudEvents `source` of what the loop publishes, e.g. `tollgate-billing-consumer/host-1`.
    pub source: String,
    /// The consumer group whose member holding the quota topic's partition publishes ([`self::lease`]):
    /// the same for every quota loop of `quota_topic`. Default `tollgate-quota-loop/<quota_topic>`.
    pub lease_group: String,
    /// Threshold alerts by webhook ([`crate::alerts`]); `None`: off.
    pub alerts: Option<AlertSettings>,
}

impl QuotaSettings {
    /// Default of [`Self::publish_interval`].
    pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
    /// Default of [`Self::heartbeat_interval`].
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

    /// Settings with the default intervals and deduplication capacity.
    pub fn new(
        kafka: impl Into<KafkaConnection>,
        usage_topic: impl Into<String>,
        quota_topic: impl Into<String>,
        scopes: Vec<ConfiguredScope>,
        source: impl Into<String>,
    ) -> Self {
        let quota_topic = quota_topic.into();
        Self {
            kafka: kafka.into(),
            usage_topic: usage_topic.into(),
            lease_group: format!("tollgate-quota-loop/{quota_topic}"),
            quota_topic,
            scopes,
            publish_interval: Self::DEFAULT_PUBLISH_INTERVAL,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            dedup_capacity: self::windows::DEFAULT_DEDUP_CAPACITY,
            max_clock_skew: self::windows::DEFAULT_MAX_CLOCK_SKEW,
            source: source.into(),
            alerts: None,
        }
    }
}

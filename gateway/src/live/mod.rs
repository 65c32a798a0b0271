//! The live configuration: what the admin API changes without a restart, and how every replica converges on it.
//!
//! - **Resources** ([`resources`]): instances, routes, consumers, global token limits and prices, one JSON
//!   document each, with the fields of their TOML tables. The file's other sections (server, Kafka, quota,
//!   spool, admin) are fixed for the life of the process.
//! - **One order for everyone** ([`topic`]): with `admin.config_topic` set, an accepted change is published to
//!   that compacted, one-partition topic, and every replica — the accepting one included — applies changes as it
//!   reads them, in offset order. At start a replica reads the topic to its end before it serves; an empty topic
//!   is seeded from the replica's file (actor `seed`), a non-empty one replaces the file's resources — rebuilt as
//!   the latest value of every key, validated as a whole ([`replay`]), because compaction reorders
//!   dependencies. A topic that cannot be read within `admin.config_load_timeout` leaves the replica on the
//!   configuration it last applied ([`cache`]), or serving nothing until it is read: never on the file's
//!   resources, which the topic may have revoked. Without a config topic the gateway is standalone: changes go
//!   straight to this replica's applier, in memory.
//! - **Whole or nothing**: the admin API validates the configuration a change would produce before publishing it
//!   ([`LiveConfig::write`]); the applier validates again in topic order, so two replicas accepting conflicting
//!   changes at once end in the same state everywhere (the later change is rejected and logged on every replica,
//!   and the replica that published it publishes a restore of the key's applied value, so that a rejected change
//!   never stays the latest value compaction keeps). Price versions also follow transition rules, judged at the
//!   change's time ([`ResourceSet::check_transition`]).
//! - **Atomic swap** ([`runtime`]): an applied change builds a new [`Runtime`] and swaps it in; requests in
//!   flight keep the one they loaded. Instance health and probes, request limiters and quota books of what did
//!   not change carry over.
//! - **History** ([`history`]): every change read, newest first, with its actor, source and time.
//!
//! Metrics: `tollgate_config_changes_total{kind,action,result}`, `tollgate_config_version`,
//! `tollgate_config_apply_seconds` (accepted on any replica → live here), `tollgate_config_resources{kind}`.

pub mod cache;
pub mod history;
pub mod replay;
pub mod resources;
pub mod runtime;
pub mod topic;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tollgate_schemas::CloudEvent;
use tollgate_schemas::config::{ChangeAction, ConfigChange, ConfigChangeEvent, ResourceKind};

use crate::admission::quota::Quotas;
use crate::config::{Config, RawConfig, Secret};
use crate::metrics as m;
use crate::routing::shared::{self, SharedHealthError, SharedHealthThreads};
use cache::{Cached, ConfigCache};
use history::{Entry, History};
use resources::ResourceSet;
use runtime::{Instances, Runtime};
use topic::{ConfigFeed, InitialLoad, NotLoaded, Publisher, TopicError};

/// How long an admin write waits for its own change to come back from the topic and apply.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// One change to apply: read from the topic, or accepted standalone.
#[derive(Debug)]
pub struct Incoming {
    /// The topic offset (standalone: the sequence number).
    pub version: i64,
    pub kind: ResourceKind,
    pub id: String,
    /// `None`: a tombstone (the resource is deleted).
    pub event: Option<ConfigChangeEvent>,
}

/// What the applier task receives.
#[derive(Debug)]
pub enum Feed {
    /// Changes read live, one at a time.
    Change(Box<Incoming>),
    /// The topic's content up to its end at the time of reading, when it arrives after the gateway started on
    /// its file (the broker was slow or down at start).
    Catchup(Vec<Incoming>),
}

/// Why a write was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The configuration the change would produce is invalid; every problem, with its path.
    #[error("the change would leave the configuration invalid")]
    Invalid(Vec<String>),
    /// The change was published, but a conflicting change from another replica came first in the topic.
    #[error("a conflicting change by another replica was applied first")]
    Conflict(Vec<String>),
    #[error("the config topic did not take the change: {0}")]
    Publish(String),
    /// Published, but not back from the topic in time; it will apply when it arrives.
    #[error("the change was published but did not apply within {0:?}")]
    NotApplied(Duration),
}

/// A write that was made (or found already in place).
#[derive(Debug, Clone)]
pub struct Written {
    /// `false` when the resource was already exactly so: nothing was published.
    pub changed: bool,
    pub version: i64,
    pub change_id: Option<uuid::Uuid>,
}

/// Where accepted changes go.
enum Store {
    Topic(Publisher),
    Standalone {
        next: AtomicI64,
        feed: mpsc::UnboundedSender<Feed>,
    },
}

struct Applied {
    set: Arc<ResourceSet>,
    /// The version of the last change applied (or skipped); -1 before any.
    version: i64,
}

/// The live configuration of one replica. Shared by the request path (through [`LiveConfig::runtime`]), the
/// admin API (reads and writes) and the applier task.
pub struct LiveConfig {
    base: Arc<RawConfig>,
    secrets: BTreeMap<String, Secret>,
    current: ArcSwap<Runtime>,
    applied: Mutex<Applied>,
    version: watch::Sender<i64>,
    history: Mutex<History>,
    instances: Instances,
    quotas: Arc<Quotas>,
    store: Store,
    /// The last applied configuration on disk (with a config topic).
    cache: Option<ConfigCache>,
    /// Admin writes on this replica, one at a time: each is validated against the state the previous one left.
    writes: tokio::sync::Mutex<()>,
    /// The CloudEvents `source` of changes accepted here.
    source: Arc<str>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

/// The running parts of the live configuration, stopped with the gateway.
#[derive(Debug)]
pub struct LiveHandles {
    feed: Option<ConfigFeed>,
    applier: CancellationToken,
    /// The health topic's publisher and follower, when replicas share health.
    health: Option<SharedHealthThreads>,
}

impl LiveHandles {
    pub fn stop(self) {
        self.applier.cancel();
        if let Some(feed) = self.feed {
            feed.stop();
        }
        if let Some(health) = self.health {
            health.stop();
        }
    }
}

/// Why the live configuration could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("the config feed stopped before it read the config topic")]
    FeedStopped,
    #[error(transparent)]
    SharedHealth(#[from] SharedHealthError),
}

/// What a replica with a config topic starts from.
enum Initial {
    /// The topic's content, read to its end.
    Topic(Vec<Incoming>),
    /// The configuration it last applied (the topic could not be read in time); the topic follows as a catch-up.
    Cache(Cached, Box<Config>),
}

impl LiveConfig {
    /// Starts from `config` (the validated file). With a config topic, reads it to its end first (seeding it
    /// when empty) and applies what it holds; then follows it. Must be called inside the actix system: the
    /// applier task and instance probes run on it.
    pub fn start(
        config: Config,
        quotas: Arc<Quotas>,
        probes: CancellationToken,
        source: Arc<str>,
    ) -> Result<(Arc<Self>, LiveHandles), LiveError> {
        let config = Arc::new(config);
        let (shared, health) = match &config.kafka.health_topic {
            Some(topic) => {
                let (shared, threads) = shared::start(&config, topic)?;
                (Some(shared), Some(threads))
            }
            None => (None, None),
        };
        let instances = Instances::new(probes, shared);
        let runtime = Runtime::build(config.clone(), -1, &instances, None);
        let file_set = ResourceSet::from_file(&config.source);
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let cache = config
            .admin
            .config_topic
            .as_deref()
            .map(|topic| ConfigCache::new(&config.spool.dir, topic));
        let (store, feed, initial) = match (&config.admin.config_topic, &cache) {
            (Some(topic), Some(cache)) => {
                let publisher = Publisher::new(&config, topic)?;
                let (feed, load) = ConfigFeed::start(&config, topic, &file_set, &source, feed_tx)?;
                let initial = initial_state(load, cache, &config)?;
                (Store::Topic(publisher), Some(feed), Some(initial))
            }
            _ => (
                Store::Standalone {
                    next: AtomicI64::new(0),
                    feed: feed_tx,
                },
                None,
                None,
            ),
        };
        set_resource_gauges(&file_set);
        let live = Arc::new(Self {
            base: config.source.clone(),
            secrets: config.secrets.clone(),
            current: ArcSwap::from_pointee(runtime),
            applied: Mutex::new(Applied {
                set: Arc::new(file_set),
                version: -1,
            }),
            version: watch::Sender::new(-1),
            history: Mutex::new(History::default()),
            instances,
            quotas,
            store,
            cache,
            writes: tokio::sync::Mutex::new(()),
            source,
        });
        metrics::gauge!(m::CONFIG_VERSION).set(-1.0);
        match initial {
            Some(Initial::Topic(batch)) => live.catch_up(batch),
            Some(Initial::Cache(cached, config)) => live.resume(cached, *config),
            None => {}
        }
        let applier = CancellationToken::new();
        actix_web::rt::spawn(live.clone().run_applier(feed_rx, applier.clone()));
        Ok((
            live,
            LiveHandles {
                feed,
                applier,
                health,
            },
        ))
    }

    /// The configuration new requests use.
    /// The quota books this configuration's limits are enforced with.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The resources as applied, and the version they are at.
    pub fn resources(&self) -> (Arc<ResourceSet>, i64) {
        let applied = self.lock_applied();
        (applied.set.clone(), applied.version)
    }

    /// The newest `limit` changes (of `kind` and `id`, when given), newest first.
    pub fn history(&self, kind: Option<ResourceKind>, id: Option<&str>, limit: usize) -> Vec<Entry> {
        self.lock_history().query(kind, id, limit)
    }

    /// Sets resource `kind/id` to `resource` (`None`: deletes it) as `actor`, if the whole configuration stays
    /// valid; returns once this replica applies it. `check` sees the current resource (if any) and may refuse.
    pub async fn write(
        &self,
        kind: ResourceKind,
        id: &str,
        resource: Option<Value>,
        actor: &str,
    ) -> Result<Written, WriteError> {
        let _one_at_a_time = self.writes.lock().await;
        let (set, version) = self.resources();
        if set.get(kind, id) == resource.as_ref() {
            return Ok(Written {
                changed: false,
                version,
                change_id: None,
            });
        }
        let mut next = (*set).clone();
        match &resource {
            Some(value) => next.put(kind, id, value.clone()),
            None => {
                next.remove(kind, id);
            }
        }
        next.assemble(&self.base, &self.secrets)
            .map_err(WriteError::Invalid)?;
        let now = Utc::now();
        set.check_transition(kind, id, resource.as_ref(), now.timestamp_millis())
            .map_err(|problem| WriteError::Invalid(vec![problem]))?;
        let action = if resource.is_some() {
            ChangeAction::Put
        } else {
            ChangeAction::Delete
        };
        let event = CloudEvent::new(
            self.source.to_string(),
            tollgate_schemas::config::resource_key(kind, id),
            now,
            ConfigChange {
                kind,
                id: id.to_owned(),
                action,
                resource,
                actor: actor.to_owned(),
            },
        );
        let change_id = event.id;
        let version = match &self.store {
            Store::Topic(publisher) => publisher
                .publish(&event)
                .await
                .map_err(|e| WriteError::Publish(e.to_string()))?,
            Store::Standalone { next, feed } => {
                let version = next.fetch_add(1, Ordering::AcqRel);
                feed.send(Feed::Change(Box::new(Incoming {
                    version,
                    kind,
                    id: id.to_owned(),
                    event: Some(event),
                })))
                .map_err(|_| WriteError::Publish("the applier has stopped".into()))?;
                version
            }
        };
        let mut applied = self.version.subscribe();
        tokio::time::timeout(APPLY_WAIT, applied.wait_for(|v| *v >= version))
            .await
            .map_err(|_| WriteError::NotApplied(APPLY_WAIT))?
            .map_err(|_| WriteError::NotApplied(APPLY_WAIT))?;
        match self.lock_history().at(version) {
            Some(entry) if entry.result == "rejected" => Err(WriteError::Conflict(entry.problems.clone())),
            _ => Ok(Written {
                changed: true,
                version,
                change_id: Some(change_id),
            }),
        }
    }

    async fn run_applier(self: Arc<Self>, mut feed: mpsc::UnboundedReceiver<Feed>, stop: CancellationToken) {
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = feed.recv() => next,
            };
            match next {
                Some(Feed::Change(incoming)) => {
                    if let Some(restore) = self.apply(*incoming) {
                        actix_web::rt::spawn(self.clone().restore(restore));
                    }
                }
                Some(Feed::Catchup(batch)) => self.catch_up(batch),
                None => return,
            }
        }
    }

    /// Applies one change read live: validates the configuration it produces, swaps it in, records it. A
    /// change this replica published that was rejected comes back as the restore to publish.
    fn apply(&self, incoming: Incoming) -> Option<Restore> {
        let mut applied = self.lock_applied();
        let mut set = (*applied.set).clone();
        let restore = match self.fold(&mut applied, &mut set, &incoming, true) {
            Folded::Applied(Some(config)) => {
                self.install(*config, incoming.version);
                set_resource_gauges(&set);
                self.persist(&set, incoming.version);
                applied.set = Arc::new(set);
                None
            }
            Folded::Rejected
                if matches!(self.store, Store::Topic(_))
                    && incoming.event.as_ref().is_some_and(|e| *e.source == *self.source) =>
            {
                Some(Restore {
                    kind: incoming.kind,
                    id: incoming.id.clone(),
                    resource: set.get(incoming.kind, &incoming.id).cloned(),
                    rejected: incoming.version,
                })
            }
            Folded::Applied(None) | Folded::Rejected | Folded::Skipped => None,
        };
        self.version.send_replace(applied.version);
        restore
    }

    /// Publishes the applied value of a key whose latest change was rejected, so that compaction never keeps a
    /// rejected change as the key's value ([`replay`] relies on it). Applied in topic order like any change:
    /// should another change of the key come first, the restore is judged against it (and, if rejected, restored
    /// in turn).
    async fn restore(self: Arc<Self>, restore: Restore) {
        let Store::Topic(publisher) = &self.store else {
            return;
        };
        let action = if restore.resource.is_some() {
            ChangeAction::Put
        } else {
            ChangeAction::Delete
        };
        let event = CloudEvent::new(
            self.source.to_string(),
            tollgate_schemas::config::resource_key(restore.kind, &restore.id),
            Utc::now(),
            ConfigChange {
                kind: restore.kind,
                id: restore.id.clone(),
                action,
                resource: restore.resource,
                actor: tollgate_schemas::config::RESTORE_ACTOR.to_owned(),
            },
        );
        match publisher.publish(&event).await {
            Ok(version) => tracing::info!(
                kind = %restore.kind,
                id = %restore.id,
                rejected = restore.rejected,
                version,
                "Restored the applied value of a resource after its change was rejected."
            ),
            Err(error) => tracing::error!(
                kind = %restore.kind,
                id = %restore.id,
                rejected = restore.rejected,
                %error,
                "Could not restore a resource after its change was rejected: a replica rebuilding from the compacted topic may differ until the resource is written again."
            ),
        }
    }

    /// Replaces the file's resources by the topic's: the latest value of every key, validated as a whole
    /// ([`replay::rebuild`]), installed once.
    fn catch_up(&self, batch: Vec<Incoming>) {
        let mut applied = self.lock_applied();
        if batch.is_empty() {
            tracing::info!(
                "The config topic is empty and nothing was seeded: running on the file's resources."
            );
            return;
        }
        let rebuilt = replay::rebuild(&batch, |set| set.assemble(&self.base, &self.secrets));
        for incoming in &batch {
            let Some(event) = &incoming.event else {
                continue;
            };
            let fate = rebuilt.fates.get(&incoming.version).copied();
            let (result, problems) = match fate {
                Some(replay::Fate::LeftOut) => ("rejected", rebuilt.problems.clone()),
                Some(replay::Fate::Superseded) => ("superseded", Vec::new()),
                Some(replay::Fate::Latest) | None => ("applied", Vec::new()),
            };
            self.lock_history()
                .record(entry(incoming, event, result, problems));
        }
        let version = batch
            .iter()
            .map(|i| i.version)
            .max()
            .unwrap_or(-1)
            .max(applied.version);
        applied.version = version;
        metrics::gauge!(m::CONFIG_VERSION).set(version as f64);
        let left_out = rebuilt.left_out();
        if left_out > 0 {
            metrics::counter!(m::CONFIG_REPLAY_LEFT_OUT_TOTAL).increment(left_out as u64);
            tracing::error!(
                left_out,
                problems = %rebuilt.problems.join("; "),
                "The config topic's resources are not valid as a whole: started without the resources listed as rejected in the history. Fix them through the admin API."
            );
        }
        let set = rebuilt.set;
        if let Some(config) = rebuilt.config {
            self.install(config, version);
        }
        tracing::info!(
            changes = batch.len(),
            resources = set.len(),
            left_out,
            version,
            "Configuration loaded from the config topic."
        );
        set_resource_gauges(&set);
        self.persist(&set, version);
        applied.set = Arc::new(set);
        drop(applied);
        self.version.send_replace(version);
    }

    /// Starts on the configuration applied before the last stop, read from the cache.
    fn resume(&self, cached: Cached, config: Config) {
        let mut applied = self.lock_applied();
        self.install(config, cached.version);
        applied.version = cached.version;
        metrics::gauge!(m::CONFIG_VERSION).set(cached.version as f64);
        set_resource_gauges(&cached.set);
        applied.set = Arc::new(cached.set);
        drop(applied);
        self.version.send_replace(cached.version);
    }

    /// Writes the applied configuration to the cache; a failure is logged (the topic stays the truth).
    fn persist(&self, set: &ResourceSet, version: i64) {
        if let Some(cache) = &self.cache
            && let Err(error) = cache.store(set, version)
        {
            tracing::warn!(
                path = %cache.path().display(),
                %error,
                "Could not keep the applied configuration on disk: a start during a broker outage would wait for the topic."
            );
        }
    }

    /// Applies `incoming` to `set` when the result is valid and follows the transition rules
    /// ([`ResourceSet::check_transition`]), and records it.
    fn fold(&self, applied: &mut Applied, set: &mut ResourceSet, incoming: &Incoming, live: bool) -> Folded {
        if incoming.version <= applied.version {
            return Folded::Skipped;
        }
        applied.version = incoming.version;
        metrics::gauge!(m::CONFIG_VERSION).set(incoming.version as f64);
        let (kind, id) = (incoming.kind, incoming.id.as_str());
        // Tombstones only let compaction drop a deleted key: the delete change before them is what counts (and
        // when it was rejected, the key stays).
        let Some(event) = &incoming.event else {
            return Folded::Skipped;
        };
        let change = &event.data;
        let action = change.action;
        let mut next = set.clone();
        match (action, change.resource.clone()) {
            (ChangeAction::Put, Some(resource)) => next.put(kind, id, resource),
            (ChangeAction::Put, None) => {
                tracing::warn!(kind = %kind, id, version = incoming.version, "Skipped a put change without a resource.");
                return Folded::Skipped;
            }
            (ChangeAction::Delete, _) => {
                next.remove(kind, id);
            }
        }
        let outcome = if next == *set {
            Ok(None)
        } else {
            set.check_transition(kind, id, next.get(kind, id), event.time.timestamp_millis())
                .map_err(|problem| vec![problem])
                .and_then(|()| {
                    next.assemble(&self.base, &self.secrets)
                        .map(|c| Some(Box::new(c)))
                })
        };
        let result = if outcome.is_ok() { "applied" } else { "rejected" };
        metrics::counter!(
            m::CONFIG_CHANGES_TOTAL,
            "kind" => kind.as_str(),
            "action" => match action { ChangeAction::Put => "put", ChangeAction::Delete => "delete" },
            "result" => result
        )
        .increment(1);
        let problems = outcome.as_ref().err().cloned().unwrap_or_default();
        if live {
            let age = Utc::now().signed_duration_since(event.time);
            metrics::histogram!(m::CONFIG_APPLY_SECONDS)
                .record(age.num_microseconds().unwrap_or(0) as f64 / 1e6);
            tracing::info!(
                kind = %kind,
                id,
                action = ?action,
                actor = %event.data.actor,
                source = %event.source,
                version = incoming.version,
                result,
                "Configuration change {result}."
            );
        }
        if !problems.is_empty() {
            tracing::warn!(
                kind = %kind,
                id,
                version = incoming.version,
                problems = %problems.join("; "),
                "Configuration change rejected: it would leave the configuration invalid."
            );
        }
        self.lock_history()
            .record(entry(incoming, event, result, problems));
        match outcome {
            Ok(config) => {
                *set = next;
                Folded::Applied(config)
            }
            Err(_) => Folded::Rejected,
        }
    }

    /// Makes `config` the one new requests use.
    fn install(&self, config: Config, version: i64) {
        let config = Arc::new(config);
        self.quotas.reconfigure(&config);
        let previous = self.current.load_full();
        let runtime = Runtime::build(config, version, &self.instances, Some(&previous));
        self.current.store(Arc::new(runtime));
    }

    fn lock_applied(&self) -> MutexGuard<'_, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_history(&self) -> MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Waits for the topic's content; past `admin.config_load_timeout`, starts on the cached configuration when it is
/// valid, or else keeps waiting — never on the file's resources, which the topic may have revoked.
fn initial_state(load: InitialLoad, cache: &ConfigCache, config: &Config) -> Result<Initial, LiveError> {
    let timeout = config.admin.config_load_timeout;
    match load.wait(timeout) {
        Ok(batch) => return Ok(Initial::Topic(batch)),
        Err(NotLoaded::Stopped) => return Err(LiveError::FeedStopped),
        Err(NotLoaded::Timeout) => {}
    }
    match cache.load() {
        Ok(Some(cached)) => match cached.set.assemble(&config.source, &config.secrets) {
            Ok(valid) => {
                tracing::warn!(
                    path = %cache.path().display(),
                    version = cached.version,
                    "Serving the configuration this replica last applied until the config topic is read."
                );
                // Dropping the load sends the topic's content to the applier as a catch-up when it comes.
                drop(load);
                return Ok(Initial::Cache(cached, Box::new(valid)));
            }
            Err(problems) => tracing::error!(
                path = %cache.path().display(),
                problems = %problems.join("; "),
                "The cached configuration is not valid with this file."
            ),
        },
        Ok(None) => {}
        Err(problem) => tracing::error!(%problem, "The cached configuration cannot be read."),
    }
    loop {
        tracing::error!(
            "Not serving until the config topic is read: without it or a cached configuration, revoked consumers and keys of the file would be served."
        );
        match load.wait(timeout.max(std::time::Duration::from_secs(5))) {
            Ok(batch) => return Ok(Initial::Topic(batch)),
            Err(NotLoaded::Stopped) => return Err(LiveError::FeedStopped),
            Err(NotLoaded::Timeout) => {}
        }
    }
}

/// What folding one change did.
enum Folded {
    /// Applied; the new configuration when the resources changed.
    Applied(Option<Box<Config>>),
    /// Rejected: the configuration it would produce is invalid, or it breaks a transition rule.
    Rejected,
    /// Already applied, a tombstone, or not a change.
    Skipped,
}

/// A key to publish again at its applied value (`None`: absent), after the change at `rejected` was rejected.
#[derive(Debug)]
struct Restore {
    kind: ResourceKind,
    id: String,
    resource: Option<Value>,
    rejected: i64,
}

/// The history entry of a change.
fn entry(
    incoming: &Incoming,
    event: &ConfigChangeEvent,
    result: &'static str,
    problems: Vec<String>,
) -> Entry {
    Entry {
        version: incoming.version,
        change_id: event.id,
        time: event.time,
        source: event.source.clone(),
        actor: event.data.actor.clone(),
        kind: incoming.kind,
        id: incoming.id.clone(),
        action: event.data.action,
        resource: event.data.resource.as_ref().map(|r| shown(incoming.kind, r)),
        result,
        problems,
    }
}

/// A resource as the admin API shows it: consumer keys without their hashes.
pub fn shown(kind: ResourceKind, resource: &Value) -> Value {
    let mut resource = resource.clone();
    if kind == ResourceKind::Consumer
        && let Some(keys) = resource.get_mut("keys").and_then(Value::as_array_mut)
    {
        for key in keys {
            if let Some(key) = key.as_object_mut() {
                key.remove("sha256");
            }
        }
    }
    resource
}

fn set_resource_gauges(set: &ResourceSet) {
    for kind in ResourceKind::ALL {
        metrics::gauge!(m::CONFIG_RESOURCES, "kind" => kind.as_str()).set(set.list(kind).count() as f64);
    }
}

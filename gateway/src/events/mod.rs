//! Usage events out of the request path and into Kafka — or, while Kafka does not acknowledge them, into the
//! durable spool ([`spool`]) until it does. Usage events are money: none may be lost or doubled.
//!
//! Handlers call [`EventSender::emit`] with an [`Outgoing`] event, which never waits: it puts the event into a
//! bounded queue or, when the queue is full, drops it with a metric and an error log naming the event id. (With
//! `spool.write_ahead` it hands back a [`Written`] that the request awaits before its answer's last byte.) A
//! dedicated thread — the pump — owns the rdkafka producer (idempotent, `acks=all`, key = consumer id) and the
//! spool, serializes each event once and works in one of two modes:
//!
//! - **Direct** (the spool is empty): the event is handed to librdkafka and kept in memory until the broker
//!   acknowledges it. When the broker has not acknowledged the oldest of them within `spool.after` (default 1 s),
//!   when a send fails, or when librdkafka refuses one, the pump switches to spooling: every event librdkafka
//!   still holds is appended to the spool in the order it was sent, and one log line says so.
//! - **Spooling** (the spool is not empty): every new event is appended to the spool behind the older ones, so
//!   order holds, and the spool is drained to Kafka in order ([`spool::drain`]); a segment file is deleted
//!   once every record in it is acknowledged. An event that was spooled while librdkafka still held it is sent
//!   from the spool only if librdkafka gives up on it (after `kafka.message_timeout`), so a slow broker does
//!   not double it. When the spool is empty again the pump goes back to direct mode and logs the episode's
//!   counts.
//!
//! **The window in which an event is only in memory** is from `emit` until Kafka acknowledged it or, at most
//! `spool.after` after it was handed to librdkafka, it was appended to the spool (the page cache: a `kill -9`
//! cannot lose it from then on; with `spool.write_ahead`, every event is appended as it is handed to
//! librdkafka — marked as held by librdkafka, so it is sent from the spool only if librdkafka gives up on it —
//! and the request's answer ends only once it is there: a whole answer is sent, and a stream's body closed, after
//! the pump appended the event, which costs the request the hand-off to the pump (which then takes its queue
//! again at once, without the [`EVENT_GATHER`] pause). Acknowledged records are released as Kafka acknowledges
//! their originals. The pump fsyncs the spool every `spool.fsync_interval`, and on segment roll and shutdown,
//! against power loss). So a `kill -9`
//! can lose only events whose requests finished less than `spool.after` (+ the time the pump takes to notice, a
//! few milliseconds) before it — none of an answered request with `spool.write_ahead`; a power loss, those of
//! the last `spool.after + spool.fsync_interval`. A crash can also make the next start send again some records that
//! Kafka had acknowledged (those acknowledged after the last `cursor` write, or still in librdkafka when they
//! were spooled): duplicates by event id, which the ledger (`ReplacingMergeTree` by event id) and the quota loop
//! (dedup by id) absorb.
//!
//! After a failed send nothing more goes out until the producer holds nothing; then it is replaced by a new one
//! before the spool's records are sent again. When librdkafka reports every broker connection down for a producer
//! that sent something ([`BrokerWatch`]), what it holds is purged at once (those sends fail and take the same
//! path), new events go to the spool, and the producer is replaced once it holds nothing, so that a broker
//! restarted without the producer's idempotent state never sees it send again. (After sends that timed out, librdkafka's idempotent producer moves
//! to a new epoch; a broker that cannot follow — Tansu answers every later produce with an unknown error — would
//! otherwise never take another event from it. A new producer is a new idempotent session.) librdkafka
//! reconnects to a broker that went away at least every second (`reconnect.backoff.max.ms`), so the spool drains
//! soon after the broker is back.
//!
//! When the spool is full (`spool.max_bytes`), `spool.on_full` decides: `reject` (the default) makes
//! [`EventSender::accepts_metered_requests`] false, and the proxy answers new metered requests 503 before they
//! reach an upstream (the events of requests already admitted are still spooled, past `max_bytes` if need be);
//! `serve_unmetered` serves them and drops their events, each counted in `tollgate_events_unmetered_total` and
//! logged.
//!
//! When an event counts against token quotas, the acknowledgement's partition and offset go to its
//! [`LocalUsage`], so that the quota books know when a snapshot covers it — for an event drained from the spool
//! too, when this process spooled it (the drain keeps its `LocalUsage` in memory, so the books let go of it as
//! soon as a snapshot covers it). Events found in the spool at start-up have none — the books that counted them
//! died with the process that spooled them — and count in quotas once the quota loop reads them from Kafka, like
//! any usage a restarted replica did not see.
//!
//! On shutdown the queue is closed and everything in it is sent (or spooled); the pump waits, until shortly
//! before the shutdown budget runs out, for Kafka to acknowledge what is in flight, then appends whatever is
//! still unacknowledged to the spool, fsyncs it and stops: nothing is lost on a clean stop with the broker down.
//! At start-up the spool is opened ([`Spool::open`]) and a spool left by an earlier run is drained as soon as the
//! broker answers.

pub mod spool;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer, PurgeConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tollgate_plumbing::kafka::{BrokerWatch, WatchedProducer};
use tollgate_schemas::usage::UsageEvent;
use uuid::Uuid;

use crate::admission::quota::LocalUsage;
use crate::config::{KafkaConfig, OnFull, SpoolConfig};
use crate::events::spool::drain::{Drain, Refused, Sink};
use crate::events::spool::{AppendError, Pos, Spool, SpoolError, SpoolStatus, SyncJob};
use crate::kafka::producer_config;
use crate::metrics as m;

/// A line about sends Kafka did not acknowledge is logged at most this often while they go on failing.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// At most this much of the shutdown budget is kept back for writing and fsyncing the spool.
const SHUTDOWN_SPOOL_MARGIN: Duration = Duration::from_secs(2);

/// How long the pump lets new events gather after taking the queue: bounds its wake-ups under load to one per
/// this, far below the producer's `linger.ms`, so no event leaves later for it.
const EVENT_GATHER: Duration = Duration::from_millis(1);

/// Why the event pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("invalid Kafka producer configuration: {0}")]
    Producer(#[from] KafkaError),
    #[error("could not open the usage event spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("could not start the event pump: {0}")]
    Runtime(#[from] io::Error),
}

/// A finished usage event, and the quota books' record of it when token limits count it.
#[derive(Debug)]
pub struct Outgoing {
    pub event: UsageEvent,
    pub local: Option<Arc<LocalUsage>>,
}

/// An event in the pump's queue, and — with `spool.write_ahead` — who waits for it to be in the spool.
#[derive(Debug)]
struct Queued {
    out: Outgoing,
    /// Dropped once the pump has appended the event to the spool (or given up on it): that wakes [`Written`].
    written: Option<oneshot::Sender<()>>,
}

/// Resolves once the pump is done writing an emitted event ahead to the spool (at once without
/// `spool.write_ahead`): a request awaits it before the last byte of its answer, so that a `kill -9` after the
/// client has its answer cannot lose the event.
#[derive(Debug)]
#[must_use = "a request's answer waits for its event to be written ahead"]
pub struct Written(Option<oneshot::Receiver<()>>);

impl Written {
    /// Nothing to wait for.
    pub fn now() -> Self {
        Self(None)
    }

    /// Waits until the pump has appended the event to the spool, failed to, or dropped it (each logged and
    /// counted there); never longer than the pump takes to take it from the queue.
    pub async fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = rx.await;
        }
    }
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Queued>,
    queued: Arc<AtomicI64>,
    /// `tollgate_events_queued`, registered once.
    queued_gauge: metrics::Gauge,
    spool: Arc<SpoolStatus>,
    on_full: OnFull,
    /// `spool.write_ahead`: [`EventSender::emit`] hands back a [`Written`] that waits for the append.
    write_ahead: bool,
}

impl EventSender {
    /// Queues an event for Kafka. Returns immediately; with `spool.write_ahead`, the returned [`Written`]
    /// resolves once the event is in the spool.
    pub fn emit(&self, out: Outgoing) -> Written {
        let (written, waiter) = if self.write_ahead {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Written(Some(rx)))
        } else {
            (None, Written::now())
        };
        match self.tx.try_send(Queued { out, written }) {
            Ok(()) => {
                let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
                self.queued_gauge.set(queued as f64);
                waiter
            }
            Err(mpsc::error::TrySendError::Full(q)) => {
                dropped(q.out.event.id, &q.out.event.subject, "queue_full", None);
                Written::now()
            }
            Err(mpsc::error::TrySendError::Closed(q)) => {
                dropped(q.out.event.id, &q.out.event.subject, "shutting_down", None);
                Written::now()
            }
        }
    }

    /// False while the spool is full and `spool.on_full = "reject"`: new metered requests are then refused
    /// before they reach an upstream, because their usage could not be recorded.
    pub fn accepts_metered_requests(&self) -> bool {
        !(self.on_full == OnFull::Reject && self.spool.is_full())
    }

    /// Bytes of usage events waiting in the spool for Kafka (0: events go to Kafka directly).
    pub fn spool_bytes(&self) -> u64 {
        self.spool.bytes()
    }

    /// A sender whose events land in the returned receiver instead of Kafka (unit tests of what is emitted).
    #[cfg(test)]
    pub(crate) fn to_channel(capacity: usize) -> (Self, Emitted) {
        let (tx, rx) = mpsc::channel(capacity);
        let sender = Self {
            tx,
            queued: Arc::new(AtomicI64::new(0)),
            queued_gauge: metrics::gauge!(m::EVENTS_QUEUED),
            spool: Arc::new(SpoolStatus::default()),
            on_full: OnFull::Reject,
            write_ahead: false,
        };
        (sender, Emitted(rx))
    }
}

/// What a [`EventSender::to_channel`] sender emitted (unit tests).
#[cfg(test)]
pub(crate) struct Emitted(mpsc::Receiver<Queued>);

#[cfg(test)]
impl Emitted {
    pub(crate) fn try_recv(&mut self) -> Result<Outgoing, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|q| q.out)
    }
}

fn dropped(event_id: Uuid, consumer: &str, reason: &'static str, error: Option<&dyn Display>) {
    metrics::counter!(m::EVENTS_DROPPED_TOTAL, "reason" => reason).increment(1);
    tracing::error!(
        %event_id,
        consumer,
        reason,
        error = error.map(ToString::to_string),
        "usage event dropped before reaching Kafka or the spool"
    );
}

fn unmetered(event_id: Uuid, consumer: &str) {
    metrics::counter!(m::EVENTS_UNMETERED_TOTAL).increment(1);
    tracing::error!(
        %event_id,
        consumer,
        "usage event dropped: the spool is full and spool.on_full = \"serve_unmetered\"; the request was served \
         unmetered"
    );
}

/// The running pump; [`EventPipeline::shutdown`] drains it.
#[derive(Debug)]
pub struct EventPipeline {
    close: Option<oneshot::Sender<Instant>>,
    done: oneshot::Receiver<()>,
}

impl EventPipeline {
    /// Opens the spool, creates the producer and starts the pump thread.
    pub fn start(
        kafka: &KafkaConfig,
        spool: &SpoolConfig,
        client_id: &str,
    ) -> Result<(EventSender, Self), EventsError> {
        let config = producer_config(kafka, client_id);
        let producer = BrokerWatch::producer(&config)?;
        let opened = Spool::open(spool)?;
        let status = opened.status();
        let (tx, rx) = mpsc::channel(kafka.queue_capacity);
        let queued = Arc::new(AtomicI64::new(0));
        let (close_tx, close_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let pump = Pump::new(producer, config, kafka, spool, opened, queued.clone());
        std::thread::Builder::new()
            .name("tollgate-events".into())
            .spawn(move || runtime.block_on(pump.run(rx, close_rx, done_tx)))?;
        Ok((
            EventSender {
                tx,
                queued,
                queued_gauge: metrics::gauge!(m::EVENTS_QUEUED),
                spool: status,
                on_full: spool.on_full,
                write_ahead: spool.write_ahead,
            },
            Self {
                close: Some(close_tx),
                done: done_rx,
            },
        ))
    }

    /// Stops accepting events, sends everything queued, waits for Kafka's acknowledgements until shortly before
    /// `timeout` runs out, then spools (and fsyncs) whatever is unacknowledged. Returns false when the pump did
    /// not finish within `timeout`.
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        let margin = (timeout / 5).min(SHUTDOWN_SPOOL_MARGIN);
        if let Some(close) = self.close.take() {
            let _ = close.send(Instant::now() + timeout.saturating_sub(margin));
        }
        tokio::time::timeout(timeout, self.done).await.is_ok()
    }
}

/// A send's acknowledgement (or failure), tagged with what was sent.
type Delivery = Pin<Box<dyn Future<Output = Delivered> + Send>>;

struct Delivered {
    origin: Origin,
    result: Result<(i32, i64), (&'static str, KafkaError)>,
}

#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Sent directly; the sequence number of its [`Direct`] entry.
    Direct(u64),
    /// Sent from the spool.
    Spool(Pos),
}

/// Hands one record to librdkafka; its outcome arrives through `deliveries`.
fn send(
    producer: &WatchedProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    origin: Origin,
    deliveries: &FuturesUnordered<Delivery>,
) -> Result<(), KafkaError> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
    deliveries.push(Box::pin(async move {
        let result = match delivery.await {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((e, _))) => Err(("broker", e)),
            Err(_) => Err(("cancelled", KafkaError::Canceled)),
        };
        Delivered { origin, result }
    }));
    Ok(())
}

/// The drain's way to Kafka.
struct KafkaSink<'a> {
    producer: &'a WatchedProducer,
    watch: &'a BrokerWatch,
    topic: &'a str,
    deliveries: &'a FuturesUnordered<Delivery>,
}

impl Sink for KafkaSink<'_> {
    fn send(&mut self, pos: Pos, key: &[u8], payload: &[u8]) -> Result<(), Refused> {
        self.watch.sending();
        send(
            self.producer,
            self.topic,
            key,
            payload,
            Origin::Spool(pos),
            self.deliveries,
        )
        .map_err(|_| Refused)
    }
}

/// An event handed to librdkafka directly and not acknowledged yet.
struct Direct {
    event_id: Uuid,
    consumer: String,
    payload: Vec<u8>,
    sent_at: Instant,
    local: Option<Arc<LocalUsage>>,
    /// Where its copy is, once it was spooled.
    spooled: Option<Pos>,
}

/// Rate-limits the line about sends from the spool that Kafka did not acknowledge: the first failure of an
/// episode is logged at once, later ones at most every [`FAILURE_LOG_INTERVAL`] with their count.
#[derive(Debug, Default)]
struct FailureLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn record(&mut self, error: &KafkaError, now: Instant) {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < FAILURE_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            %error,
            failed = self.unlogged,
            retry_in_ms = crate::events::spool::drain::RETRY_AFTER.as_millis() as u64,
            "Kafka did not acknowledge usage events sent from the spool; they stay there and are sent again"
        );
        self.logged_at = Some(now);
        self.unlogged = 0;
    }

    /// The episode is over: the next failure is news again.
    fn flush(&mut self) {
        *self = Self::default();
    }
}

/// One period of spooling, from the switch to the spool until it is empty again.
struct Episode {
    since: Instant,
    spooled: u64,
    drained: u64,
    /// Spooled while librdkafka held them, then acknowledged from there after all.
    acknowledged_directly: u64,
}

impl Episode {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            spooled: 0,
            drained: 0,
            acknowledged_directly: 0,
        }
    }
}

struct Pump {
    producer: WatchedProducer,
    /// Whether the producer lost every broker connection and sent something ([`BrokerWatch::stale`]).
    watch: BrokerWatch,
    /// How to make a new producer (see [`Pump::renew_producer`]).
    producer_config: ClientConfig,
    /// A send failed: the next retry from the spool goes through a new producer.
    renew_producer: bool,
    failures: FailureLog,
    topic: String,
    queued: Arc<AtomicI64>,
    spool: Spool,
    drain: Drain,
    after: Duration,
    /// `spool.write_ahead`: every event is spooled as it is sent.
    write_ahead: bool,
    fsync_interval: Duration,
    /// Whether appends past `spool.max_bytes` are made (`reject`: the events of admitted requests are kept).
    force_appends: bool,
    /// Sent directly, by sequence number (the order they were sent in).
    direct: BTreeMap<u64, Direct>,
    next_seq: u64,
    deliveries: FuturesUnordered<Delivery>,
    /// Some while spooling.
    episode: Option<Episode>,
    syncing: Option<tokio::task::JoinHandle<(SyncJob, io::Result<()>)>>,
    /// Whether the last fsync, or the last spool read or release, failed (logged once until it works again).
    sync_failing: bool,
    drain_failing: bool,
}

impl Pump {
    fn new(
        (producer, watch): (WatchedProducer, BrokerWatch),
        producer_config: ClientConfig,
        kafka: &KafkaConfig,
        config: &SpoolConfig,
        spool: Spool,
        queued: Arc<AtomicI64>,
    ) -> Self {
        let episode = (!spool.is_empty()).then(|| {
            tracing::info!(
                dir = %spool.dir().display(),
                events = spool.recovered(),
                bytes = spool.bytes(),
                segments = spool.segments(),
                "the usage event spool holds events from an earlier run: sending them to Kafka as soon as it answers"
            );
            Episode::new()
        });
        Self {
            producer,
            watch,
            producer_config,
            renew_producer: false,
            failures: FailureLog::default(),
            topic: kafka.usage_topic.clone(),
            queued,
            drain: Drain::new(spool.start()),
            spool,
            after: config.after,
            write_ahead: config.write_ahead,
            fsync_interval: config.fsync_interval,
            force_appends: config.on_full == OnFull::Reject,
            direct: BTreeMap::new(),
            next_seq: 0,
            deliveries: FuturesUnordered::new(),
            episode,
            syncing: None,
            sync_failing: false,
            drain_failing: false,
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Queued>,
        close: oneshot::Receiver<Instant>,
        done: oneshot::Sender<()>,
    ) {
        let mut close = std::pin::pin!(close);
        let mut deadline: Option<Instant> = None;
        let mut receiving = true;
        let mut gathering: Option<Instant> = None;
        let mut fsync = tokio::time::interval(self.fsync_interval);
        fsync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.pump_spool();
        loop {
            let spool_at = self.spool_deadline();
            // While a renewal waits for the producer's sends to resolve, their outcomes wake the pump.
            let retry_at = self.drain.retry_at().filter(|_| !self.renew_producer);
            tokio::select! {
                event = rx.recv(), if receiving && gathering.is_none() => match event {
                    Some(out) => {
                        // Everything queued now, then a moment for the next events to gather: under load the
                        // request workers wake this thread once per EVENT_GATHER, not once per event.
                        self.accept(out);
                        while let Ok(out) = rx.try_recv() {
                            self.accept(out);
                        }
                        metrics::gauge!(m::EVENTS_QUEUED).set(self.queued.load(Ordering::Relaxed) as f64);
                        // Written ahead, each request waits for the pump: it takes the queue again at once
                        // (what gathers while it works is its next batch).
                        gathering = (!self.write_ahead).then(|| Instant::now() + EVENT_GATHER);
                    }
                    None => receiving = false,
                },
                () = sleep_until(gathering) => gathering = None,
                Some(delivered) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.delivered(delivered);
                }
                () = sleep_until(spool_at) => self.start_spooling("unacknowledged", None),
                () = sleep_until(retry_at) => {}
                _ = fsync.tick() => self.sync(),
                at = &mut close, if deadline.is_none() => {
                    // New events are refused from now on; the ones already queued are still received.
                    deadline = Some(at.unwrap_or_else(|_| Instant::now()));
                    rx.close();
                    self.drain.close();
                }
                () = sleep_until(deadline) => break,
            }
            self.pump_spool();
            if deadline.is_some() && !receiving && self.settled() {
                break;
            }
        }
        self.finish();
        let _ = done.send(());
    }

    /// When the oldest event librdkafka holds must be spooled (direct mode only).
    fn spool_deadline(&self) -> Option<Instant> {
        if self.episode.is_some() {
            return None;
        }
        self.direct.values().next().map(|d| d.sent_at + self.after)
    }

    fn accept(&mut self, queued: Queued) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        // `written` is dropped on return, once the event is in the spool or given up on: its request answers.
        let Queued {
            out: Outgoing { event, local },
            written: _written,
        } = queued;
        let payload = match serde_json::to_vec(&event) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(m::EVENTS_FAILED_TOTAL, "reason" => "serialize").increment(1);
                tracing::error!(event_id = %event.id, error = %e, "usage event could not be serialized");
                return;
            }
        };
        if self.episode.is_none() && self.renew_producer {
            // The producer waits to be replaced: nothing more goes through it.
            self.start_spooling("renewing", None);
        }
        if self.episode.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let origin = Origin::Direct(seq);
            let key = event.subject.as_bytes();
            self.watch.sending();
            match send(
                &self.producer,
                &self.topic,
                key,
                &payload,
                origin,
                &self.deliveries,
            ) {
                Ok(()) => {
                    let spooled = self.write_ahead(&event.subject, &payload);
                    let direct = Direct {
                        event_id: event.id,
                        consumer: event.subject,
                        payload,
                        sent_at: Instant::now(),
                        local,
                        spooled,
                    };
                    self.direct.insert(seq, direct);
                    return;
                }
                Err(e) => self.start_spooling("refused", Some(&e)),
            }
        }
        self.spool_event(event.id, &event.subject, &payload, local);
    }

    /// With `spool.write_ahead`: appends an event librdkafka now holds to the spool, as held (sent from the
    /// spool only if librdkafka gives up on it). An event that cannot be appended stays in librdkafka's hands
    /// alone, as without write-ahead.
    fn write_ahead(&mut self, consumer: &str, payload: &[u8]) -> Option<Pos> {
        if !self.write_ahead {
            return None;
        }
        match self
            .spool
            .append(consumer.as_bytes(), payload, self.force_appends)
        {
            Ok(pos) => {
                self.drain.spooled_pending(pos);
                Some(pos)
            }
            Err(e) => {
                metrics::counter!(m::EVENTS_WRITE_AHEAD_SKIPPED_TOTAL).increment(1);
                tracing::debug!(error = %e, "an event could not be written ahead to the spool");
                None
            }
        }
    }

    /// Appends an event to the spool (or drops it, counted, when that is impossible).
    fn spool_event(
        &mut self,
        event_id: Uuid,
        consumer: &str,
        payload: &[u8],
        local: Option<Arc<LocalUsage>>,
    ) {
        match self
            .spool
            .append(consumer.as_bytes(), payload, self.force_appends)
        {
            Ok(pos) => {
                metrics::counter!(m::EVENTS_SPOOLED_TOTAL).increment(1);
                if let Some(episode) = &mut self.episode {
                    episode.spooled += 1;
                }
                if let Some(local) = local {
                    self.drain.remember(pos, local);
                }
            }
            Err(AppendError::Full { .. }) => unmetered(event_id, consumer),
            Err(e @ AppendError::Encode(_)) => dropped(event_id, consumer, "too_large", Some(&e)),
            Err(e @ AppendError::Io(_)) => dropped(event_id, consumer, "spool_io", Some(&e)),
        }
    }

    /// Switches to spooling: every event librdkafka holds is appended to the spool, in the order it was sent, so
    /// that a crash cannot lose it; its copy is sent from the spool only if librdkafka gives up on it.
    fn start_spooling(&mut self, reason: &'static str, error: Option<&KafkaError>) {
        if self.episode.is_some() {
            return;
        }
        let mut episode = Episode::new();
        tracing::warn!(
            reason,
            error = error.map(ToString::to_string),
            in_flight = self.direct.len(),
            oldest_unacknowledged_ms = self.direct.values().next().map(|d| d.sent_at.elapsed().as_millis() as u64),
            dir = %self.spool.dir().display(),
            "Kafka is not acknowledging usage events in time: spooling them to disk until it does"
        );
        for direct in self.direct.values_mut().filter(|d| d.spooled.is_none()) {
            match self
                .spool
                .append(direct.consumer.as_bytes(), &direct.payload, self.force_appends)
            {
                Ok(pos) => {
                    direct.spooled = Some(pos);
                    self.drain.spooled_pending(pos);
                    episode.spooled += 1;
                    metrics::counter!(m::EVENTS_SPOOLED_TOTAL).increment(1);
                }
                // Still in librdkafka's hands; if it gives up on them, they are tried again then.
                Err(e) => {
                    tracing::error!(error = %e, "events librdkafka holds could not be spooled");
                    break;
                }
            }
        }
        self.episode = Some(episode);
    }

    fn delivered(&mut self, delivered: Delivered) {
        let now = Instant::now();
        match (delivered.origin, delivered.result) {
            (Origin::Direct(seq), Ok((partition, offset))) => {
                let Some(direct) = self.direct.remove(&seq) else {
                    return;
                };
                if let Some(local) = &direct.local {
                    local.delivered(partition, offset);
                }
                metrics::counter!(m::EVENTS_EMITTED_TOTAL).increment(1);
                if let Some(pos) = direct.spooled {
                    self.drain.original_settled(pos, true, None, now);
                    if let Some(episode) = &mut self.episode {
                        episode.acknowledged_directly += 1;
                    }
                }
            }
            (Origin::Direct(seq), Err((reason, error))) => {
                metrics::counter!(m::EVENTS_FAILED_TOTAL, "reason" => reason).increment(1);
                self.renew_producer = true;
                // Spools it together with every other event librdkafka holds, in order (written ahead, it is
                // there already), and sends every later event behind it.
                self.start_spooling("send_failed", Some(&error));
                let Some(direct) = self.direct.remove(&seq) else {
                    return;
                };
                match direct.spooled {
                    Some(pos) => self.drain.original_settled(pos, false, direct.local, now),
                    None => {
                        self.spool_event(direct.event_id, &direct.consumer, &direct.payload, direct.local)
                    }
                }
            }
            (Origin::Spool(pos), Ok((partition, offset))) => {
                if self.drain.acknowledged(pos, partition, offset) {
                    metrics::counter!(m::EVENTS_EMITTED_TOTAL).increment(1);
                    metrics::counter!(m::SPOOL_DRAINED_TOTAL).increment(1);
                    if let Some(episode) = &mut self.episode {
                        episode.drained += 1;
                    }
                }
            }
            (Origin::Spool(pos), Err((reason, error))) => {
                metrics::counter!(m::EVENTS_FAILED_TOTAL, "reason" => reason).increment(1);
                self.drain.failed(pos, now);
                self.renew_producer = true;
                self.failures.record(&error, now);
            }
        }
    }

    /// While spooling: sends what the drain has due, deletes acknowledged segments, and goes back to direct mode
    /// when the spool is empty.
    fn pump_spool(&mut self) {
        if self.watch.stale() {
            // Every broker connection is gone: the broker may come back without this producer's idempotent
            // state, and must not see it retransmit. What it holds fails now (and is spooled, or stays in the
            // spool), and a new producer sends it again once this one holds nothing.
            if !self.renew_producer {
                tracing::warn!(
                    "Kafka is unreachable: purging the usage event producer, which a new one replaces"
                );
            }
            self.producer.purge(PurgeConfig::default().queue().inflight());
            self.renew_producer = true;
        }
        if self.renew_producer && self.direct.is_empty() && self.drain.in_flight() == 0 {
            self.renew_producer();
        }
        // Written-ahead records are read back and released as Kafka acknowledges their originals.
        if self.episode.is_none() && !self.write_ahead {
            return;
        }
        let mut sink = KafkaSink {
            producer: &self.producer,
            watch: &self.watch,
            topic: &self.topic,
            deliveries: &self.deliveries,
        };
        // After a failed send, nothing goes out until the producer holds nothing and is renewed.
        let filled = if self.renew_producer {
            Ok(())
        } else {
            self.drain.fill(&mut self.spool, &mut sink, Instant::now())
        };
        let drained = filled.and_then(|()| self.drain.release(&mut self.spool));
        match drained {
            Ok(()) => self.drain_failing = false,
            Err(e) => {
                if !self.drain_failing {
                    tracing::error!(error = %e, dir = %self.spool.dir().display(), "reading or releasing the usage event spool failed");
                }
                self.drain_failing = true;
            }
        }
        if self.spool.is_empty()
            && let Some(episode) = self.episode.take()
        {
            self.failures.flush();
            tracing::info!(
                spooled = episode.spooled,
                drained = episode.drained,
                acknowledged_directly = episode.acknowledged_directly,
                seconds = episode.since.elapsed().as_secs_f64(),
                "usage event spool drained: events go directly to Kafka again"
            );
        }
    }

    /// Replaces the producer, once it holds nothing, before records are sent again after a failed send. After
    /// sends that timed out, librdkafka's idempotent producer must move to a new epoch, and a broker that cannot
    /// follow it (Tansu) fails every later send; a new producer starts a new idempotent session.
    fn renew_producer(&mut self) {
        self.renew_producer = false;
        match BrokerWatch::producer(&self.producer_config) {
            Ok((producer, watch)) => {
                let old = std::mem::replace(&mut self.producer, producer);
                self.watch = watch;
                drop(old);
                metrics::counter!(m::KAFKA_PRODUCER_RENEWALS_TOTAL, "producer" => "usage").increment(1);
                tracing::info!(
                    "new Kafka producer for the events to send again (the old one's sends were not acknowledged)"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "could not create a new Kafka producer; keeping the old one")
            }
        }
    }

    /// Fsyncs what was appended since the last fsync, off the pump's thread (one fsync at a time).
    fn sync(&mut self) {
        if self
            .syncing
            .as_ref()
            .is_some_and(|running| !running.is_finished())
        {
            return;
        }
        if let Some(finished) = self.syncing.take() {
            match finished.now_or_never() {
                // A failed fsync is an error here only when its records could not be written again.
                Some(Ok((job, result))) => match self.spool.synced(&job, result) {
                    Ok(()) => self.sync_failing = false,
                    Err(e) => self.sync_failed(&e),
                },
                Some(Err(e)) => self.sync_failed(&e),
                None => self.sync_failing = false,
            }
        }
        match self.spool.sync_target() {
            Ok(Some(job)) => {
                self.syncing = Some(tokio::task::spawn_blocking(move || {
                    let result = job.run();
                    (job, result)
                }));
            }
            Ok(None) => {}
            Err(e) => self.sync_failed(&e),
        }
    }

    fn sync_failed(&mut self, error: &dyn Display) {
        if !self.sync_failing {
            tracing::error!(%error, dir = %self.spool.dir().display(), "fsync of the usage event spool failed");
        }
        self.sync_failing = true;
    }

    /// Nothing sent is waiting for Kafka's answer.
    fn settled(&self) -> bool {
        self.direct.is_empty() && self.drain.in_flight() == 0
    }

    /// At shutdown: whatever Kafka did not acknowledge goes to the spool, and the spool to disk.
    fn finish(mut self) {
        let unacknowledged: Vec<Direct> = std::mem::take(&mut self.direct)
            .into_values()
            .filter(|d| d.spooled.is_none())
            .collect();
        let spooled_now = unacknowledged.len();
        for direct in unacknowledged {
            self.spool_event(direct.event_id, &direct.consumer, &direct.payload, direct.local);
        }
        if let Err(e) = self.drain.release(&mut self.spool) {
            tracing::error!(error = %e, "releasing acknowledged spool segments failed at shutdown");
        }
        if let Err(e) = self.spool.sync_now() {
            tracing::error!(error = %e, dir = %self.spool.dir().display(), "fsync of the usage event spool failed at shutdown");
        }
        if self.spool.is_empty() {
            tracing::debug!("event pump stopped: every usage event was acknowledged by Kafka");
        } else {
            tracing::warn!(
                dir = %self.spool.dir().display(),
                bytes = self.spool.bytes(),
                segments = self.spool.segments(),
                spooled_at_shutdown = spooled_now,
                "event pump stopped with usage events in the spool: the next start sends them to Kafka"
            );
        }
        // Dropping the producer purges what librdkafka still holds: all of it is in the spool.
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

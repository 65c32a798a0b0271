//! Reading the usage topic by time, outside any consumer group: a consumer assigned every partition (never
//! joined, never committed), positioned at the first record at or after a point in time, and the high watermarks
//! it had when it started, which tell when everything that existed then has been read. Two readers use it: the
//! quota loop rebuilding its windows from `now − lookback` ([`open`], waiting for the topic), and the replay of a
//! time range for the audit and the rebuild ([`open_at`], [`crate::replay`]).
//!
//! The start of each partition is the first offset whose Kafka timestamp is at or after the point in time
//! (ListOffsets by timestamp); a broker that cannot answer that gets read from the beginning, which gives the
//! same result, only slower.
//!
//! Tansu (0.6) answers a time after a partition's last record with offset 0 where Kafka answers "the end";
//! so when the answer is the partition's first offset, the timestamp of its last record decides: older than
//! the point in time means there is nothing to read in that partition.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::error::BillingError;
use tollgate_plumbing::kafka::KafkaConnection;

/// How long one metadata, watermark or offset lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before looking for the topic again, or after a failed lookup.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The reader's consumer.
pub type ReaderConsumer = StreamConsumer<ReaderContext>;

/// Logs librdkafka's client errors as its default context does, except the end of a partition: a replay asks
/// for it (`enable.partition.eof`) and reads it from the message stream, so it is not an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::trace!(reason, "End of a partition of the usage topic.");
        } else {
            tracing::error!(%error, reason, "librdkafka reported an error.");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Where one partition is read from and up to where it was when reading started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionStart {
    partition: i32,
    /// The first offset to read.
    start: i64,
    /// The high watermark when reading started: the quota loop's rebuild, or a replay, reads up to here.
    end: i64,
}

/// The usage topic, assigned and positioned.
pub struct Reader {
    /// The consumer to read messages from.
    pub consumer: Arc<ReaderConsumer>,
    /// Per partition: the next offset to read and the end (the high watermark when reading started).
    progress: BTreeMap<i32, (i64, i64)>,
    /// How the start offsets were found, for the log.
    pub start_by_time: bool,
    /// Messages from the starts to the ends, when positioned.
    pub to_read: u64,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("progress", &self.progress)
            .field("start_by_time", &self.start_by_time)
            .field("to_read", &self.to_read)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Notes that the message at `offset` of `partition` was read.
    pub fn read(&mut self, partition: i32, offset: i64) {
        if let Some((next, _)) = self.progress.get_mut(&partition) {
            *next = (*next).max(offset.saturating_add(1));
        }
    }

    /// Notes that `partition` has nothing more to read right now (librdkafka's partition EOF): it is at its
    /// end even if offsets before the end were never delivered (e.g. control records).
    pub fn exhausted(&mut self, partition: i32) {
        if let Some((next, end)) = self.progress.get_mut(&partition) {
            *next = (*next).max(*end);
        }
    }

    /// True when the message at `offset` of `partition` existed when reading started (it is before the end).
    pub fn before_end(&self, partition: i32, offset: i64) -> bool {
        self.progress
            .get(&partition)
            .is_some_and(|(_, end)| offset < *end)
    }

    /// True once every partition was read up to the high watermark it had when reading started.
    pub fn reached_end(&self) -> bool {
        self.progress.values().all(|(next, end)| next >= end)
    }

    /// Partitions assigned.
    pub fn partitions(&self) -> usize {
        self.progress.len()
    }
}

/// The longest a fetch waits at the broker for new usage events, in milliseconds.
const FETCH_WAIT_MAX_MS: &str = "10";

/// A consumer outside any group. With `eof`, it reports the end of each partition (for a replay, which stops
/// there; the quota loop reads on).
fn consumer(kafka: &KafkaConnection, purpose: &str, eof: bool) -> Result<Arc<ReaderConsumer>, BillingError> {
    let consumer: ReaderConsumer = kafka
        .groupless_consumer_config(crate::kafka::CLIENT_ID, &format!("tollgate-billing-{purpose}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        // Snapshot lag is quota overshoot between replicas: ask for new events often rather than let an idle
        // fetch wait the default 500 ms (a broker without long-poll wake-ups holds it that long).
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .create_with_context(ReaderContext)
        .map_err(BillingError::kafka("create usage topic reader"))?;
    Ok(Arc::new(consumer))
}

/// Creates a reader positioned at the first record of every partition at or after `since_ms` (Kafka time, epoch
/// milliseconds) that reports each partition's end (partition EOF) — or `None` when `topic` does not exist.
/// For a replay: one attempt, no waiting.
pub async fn open_at(
    kafka: &KafkaConnection,
    topic: &str,
    since_ms: i64,
) -> Result<Option<Reader>, BillingError> {
    let consumer = consumer(kafka, "replay", true)?;
    match lookup(&consumer, kafka, topic, since_ms.max(0)).await? {
        Some((partitions, start_by_time)) => assign(consumer, topic, &partitions, start_by_time).map(Some),
        None => Ok(None),
    }
}

/// Looks up the partitions of `topic` and where to start reading them, off the async runtime.
async fn lookup(
    consumer: &Arc<ReaderConsumer>,
    kafka: &KafkaConnection,
    topic: &str,
    since_ms: i64,
) -> Result<Option<(Vec<PartitionStart>, bool)>, BillingError> {
    let probe = Arc::clone(consumer);
    let owned_topic = topic.to_owned();
    let owned_kafka = kafka.clone();
    tokio::task::spawn_blocking(move || locate(&probe, &owned_kafka, &owned_topic, since_ms))
        .await
        .map_err(|join| {
            tracing::warn!(error = %join, "The usage topic lookup did not finish.");
            BillingError::Kafka {
                operation: "look up the usage topic",
                source: rdkafka::error::KafkaError::Canceled,
            }
        })
        .and_then(|result| result)
}

/// Creates the quota loop's reader and waits until `topic` exists (forever: the caller drops this future to
/// stop), then assigns every partition from the rebuild point `now − lookback`.
pub async fn open(kafka: &KafkaConnection, topic: &str, lookback: Duration) -> Result<Reader, BillingError> {
    let consumer = consumer(kafka, "quota", false)?;
    let lookback_ms = i64::try_from(lookback.as_millis()).unwrap_or(i64::MAX);

    let mut waiting_logged = false;
    let starts = loop {
        let since_ms = Utc::now().timestamp_millis().saturating_sub(lookback_ms).max(0);
        match lookup(&consumer, kafka, topic, since_ms).await {
            Ok(Some(starts)) => break starts,
            Ok(None) if !waiting_logged => {
                tracing::info!(%topic, "The usage topic does not exist yet; waiting for it.");
                waiting_logged = true;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(
                    error_kind = error.kind(),
                    %error,
                    %topic,
                    "Looking up the usage topic failed; retrying."
                );
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };

    let (partitions, start_by_time) = starts;
    assign(consumer, topic, &partitions, start_by_time)
}

/// Assigns every partition of `topic` to `consumer` at its start.
fn assign(
    consumer: Arc<ReaderConsumer>,
    topic: &str,
    partitions: &[PartitionStart],
    start_by_time: bool,
) -> Result<Reader, BillingError> {
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p.partition, Offset::Offset(p.start))
            .map_err(BillingError::kafka("build usage topic assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(BillingError::kafka("assign usage partitions"))?;
    let to_read: i64 = partitions.iter().map(|p| (p.end - p.start).max(0)).sum();
    tracing::info!(
        %topic,
        partitions = partitions.len(),
        start_by_time,
        messages_to_read = to_read,
        "Reading the usage topic from the first record at or after the starting time."
    );
    Ok(Reader {
        consumer,
        progress: partitions
            .iter()
            .map(|p| (p.partition, (p.start, p.end)))
            .collect(),
        start_by_time,
        to_read: u64::try_from(to_read).unwrap_or(0),
    })
}

/// The partitions of `topic` with their start and end, and whether the starts came from the broker's
/// offsets-by-time lookup; `None` while the topic does not exist. Blocking.
fn locate(
    consumer: &ReaderConsumer,
    kafka: &KafkaConnection,
    topic: &str,
    since_ms: i64,
) -> Result<Option<(Vec<PartitionStart>, bool)>, BillingError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(BillingError::kafka("fetch usage topic metadata"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if found.error().is_some() || found.partitions().is_empty() {
        return Ok(None);
    }
    let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();

    let mut bounds = Vec::with_capacity(partitions.len());
    let mut query = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, LOOKUP_TIMEOUT)
            .map_err(BillingError::kafka("fetch usage topic watermarks"))?;
        bounds.push((*partition, low, high));
        query
            .add_partition_offset(topic, *partition, Offset::Offset(since_ms))
            .map_err(BillingError::kafka("build offsets-by-time query"))?;
    }

    let by_time = match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
        Ok(list) => Some(list),
        Err(error) => {
            tracing::info!(
                %error,
                %topic,
                "The broker did not look up offsets by time; reading every partition from its beginning."
            );
            None
        }
    };
    let mut all_by_time = by_time.is_some();
    let starts = bounds
        .into_iter()
        .map(|(partition, low, high)| {
            let found = by_time
                .as_ref()
                .and_then(|list| list.find_partition(topic, partition))
                .map(|element| (element.error(), element.offset()));
            let start = match found {
                Some((Ok(()), Offset::Offset(offset))) if offset >= 0 => {
                    let offset = offset.clamp(low, high.max(low));
                    let quiet = offset == low
                        && high > low
                        && last_timestamp_ms(kafka, topic, partition, high).is_some_and(|t| t < since_ms);
                    if quiet {
                        tracing::debug!(
                            %topic,
                            partition,
                            "The partition's last record is older than the starting time; nothing to read there."
                        );
                        high
                    } else {
                        offset
                    }
                }
                // No message at or after the time: nothing to read in this partition.
                Some((Ok(()), Offset::End)) => high,
                other => {
                    if by_time.is_some() {
                        tracing::warn!(
                            %topic,
                            partition,
                            answer = ?other,
                            "No offset by time for this partition; reading it from its beginning."
                        );
                    }
                    all_by_time = false;
                    low
                }
            };
            PartitionStart {
                partition,
                start,
                end: high,
            }
        })
        .collect();
    Ok(Some((starts, all_by_time)))
}

/// The Kafka timestamp of the record just before `high` in `partition`, if it can be read. Blocking.
fn last_timestamp_ms(kafka: &KafkaConnection, topic: &str, partition: i32, high: i64) -> Option<i64> {
    let probe: BaseConsumer = kafka
        .groupless_consumer_config(crate::kafka::CLIENT_ID, "tollgate-billing-probe")
        .create()
        .ok()?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(high - 1))
        .ok()?;
    probe.assign(&assignment).ok()?;
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    while Instant::now() < deadline {
        match probe.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => return message.timestamp().to_millis(),
            Some(Err(error)) => {
                tracing::debug!(%error, %topic, partition, "Reading a partition's last record failed.");
                return None;
            }
            None => {}
        }
    }
    None
}

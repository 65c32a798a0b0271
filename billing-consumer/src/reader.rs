//! The quota loop's reader of the usage topic: a consumer assigned every partition (no group membership, no
//! commits — the quota state is rebuilt from the topic on every start), positioned at the rebuild point, and
//! the high watermarks that tell when the rebuild is done.
//!
//! The rebuild point of each partition is the first offset whose Kafka timestamp is at or after
//! `now − lookback` (ListOffsets by timestamp); a broker that cannot answer that gets read from the beginning,
//! which counts the same windows, only slower.
//!
//! Tansu (0.6) answers a time after a partition's last record with offset 0 where Kafka answers "the end";
//! so when the answer is the partition's first offset, the timestamp of its last record decides: older than
//! the rebuild point means there is nothing to rebuild in that partition.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::error::BillingError;

/// How long one metadata, watermark or offset lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before looking for the topic again, or after a failed lookup.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Where one partition is read from and up to where it belongs to the rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionStart {
    partition: i32,
    /// The first offset to read.
    start: i64,
    /// The high watermark when the loop started: everything before it is rebuilt, not live.
    rebuild_end: i64,
}

/// The usage topic, assigned and positioned.
pub struct Reader {
    /// The consumer to read messages from.
    pub consumer: Arc<StreamConsumer>,
    /// Per partition: the next offset to read and the offset the rebuild must reach.
    progress: BTreeMap<i32, (i64, i64)>,
    /// How the start offsets were found, for the log.
    pub start_by_time: bool,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("progress", &self.progress)
            .field("start_by_time", &self.start_by_time)
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

    /// True once every partition was read up to the high watermark it had when the loop started.
    pub fn rebuilt(&self) -> bool {
        self.progress.values().all(|(next, end)| next >= end)
    }

    /// Partitions assigned.
    pub fn partitions(&self) -> usize {
        self.progress.len()
    }
}

/// The longest a fetch waits at the broker for new usage events, in milliseconds.
const FETCH_WAIT_MAX_MS: &str = "10";

/// Creates the consumer and waits until `topic` exists (forever: the caller drops this future to stop), then
/// assigns every partition from the rebuild point `now − lookback`.
pub async fn open(brokers: &str, topic: &str, lookback: Duration) -> Result<Reader, BillingError> {
    // librdkafka needs a group to assign partitions; a fresh one per run, never joined and never committed.
    let group = format!("tollgate-billing-quota-{}", uuid::Uuid::now_v7().simple());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("client.id", crate::kafka::CLIENT_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Snapshot lag is quota overshoot between replicas: ask for new events often rather than let an idle
        // fetch wait the default 500 ms (a broker without long-poll wake-ups holds it that long).
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .create()
        .map_err(BillingError::kafka("create quota consumer"))?;
    let consumer = Arc::new(consumer);
    let lookback_ms = i64::try_from(lookback.as_millis()).unwrap_or(i64::MAX);

    let mut waiting_logged = false;
    let starts = loop {
        let since_ms = Utc::now().timestamp_millis().saturating_sub(lookback_ms).max(0);
        let probe = Arc::clone(&consumer);
        let owned_topic = topic.to_owned();
        let owned_brokers = brokers.to_owned();
        let found =
            tokio::task::spawn_blocking(move || locate(&probe, &owned_brokers, &owned_topic, since_ms))
                .await
                .map_err(|join| {
                    tracing::warn!(error = %join, "The usage topic lookup did not finish.");
                    BillingError::Kafka {
                        operation: "look up the usage topic",
                        source: rdkafka::error::KafkaError::Canceled,
                    }
                })
                .and_then(|result| result);
        match found {
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
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, p.partition, Offset::Offset(p.start))
            .map_err(BillingError::kafka("build quota assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(BillingError::kafka("assign usage partitions"))?;
    let to_rebuild: i64 = partitions.iter().map(|p| (p.rebuild_end - p.start).max(0)).sum();
    tracing::info!(
        %topic,
        partitions = partitions.len(),
        start_by_time,
        messages_to_rebuild = to_rebuild,
        "Reading the usage topic from the rebuild point."
    );
    Ok(Reader {
        consumer,
        progress: partitions
            .iter()
            .map(|p| (p.partition, (p.start, p.rebuild_end)))
            .collect(),
        start_by_time,
    })
}

/// The partitions of `topic` with their start and rebuild end, and whether the starts came from the broker's
/// offsets-by-time lookup; `None` while the topic does not exist. Blocking.
fn locate(
    consumer: &StreamConsumer,
    brokers: &str,
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
                "The broker did not look up offsets by time; rebuilding from the beginning of every partition."
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
                        && last_timestamp_ms(brokers, topic, partition, high).is_some_and(|t| t < since_ms);
                    if quiet {
                        tracing::debug!(
                            %topic,
                            partition,
                            "The partition's last record is older than the rebuild point; nothing to rebuild."
                        );
                        high
                    } else {
                        offset
                    }
                }
                // No message at or after the time: nothing to rebuild in this partition.
                Some((Ok(()), Offset::End)) => high,
                other => {
                    if by_time.is_some() {
                        tracing::warn!(
                            %topic,
                            partition,
                            answer = ?other,
                            "No offset by time for this partition; rebuilding it from the beginning."
                        );
                    }
                    all_by_time = false;
                    low
                }
            };
            PartitionStart {
                partition,
                start,
                rebuild_end: high,
            }
        })
        .collect();
    Ok(Some((starts, all_by_time)))
}

/// The Kafka timestamp of the record just before `high` in `partition`, if it can be read. Blocking.
fn last_timestamp_ms(brokers: &str, topic: &str, partition: i32, high: i64) -> Option<i64> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("tollgate-billing-quota-probe-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("client.id", crate::kafka::CLIENT_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
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

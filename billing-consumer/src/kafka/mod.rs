//! billing-consumer's Kafka plumbing. Here: the ingest consumer's configuration, its context (rebalance and
//! commit logging), and the offset commit that follows a successful INSERT. Beside it: [`topics`] (the usage and
//! quota topics made sure of), [`reader`] (a topic read outside any group from a point in Kafka time), and
//! [`stall`] (a group member that holds nothing while the work stands still joins again).
//!
//! Offsets are never committed automatically (`enable.auto.commit=false`): the ingest loop commits them itself,
//! only after ClickHouse acknowledged the batch, so a crash at any point redelivers rather than loses. A new
//! group starts from the earliest offset, so a fresh ledger sees the whole retained history.

pub mod reader;
pub mod stall;
pub mod topics;

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use tollgate_plumbing::kafka::KafkaConnection;

use crate::error::BillingError;

/// The `client.id` Tollgate's billing consumers present to the broker.
pub const CLIENT_ID: &str = "tollgate-billing-consumer";

/// How long the group waits for a silent member before giving its partitions to the others.
const SESSION_TIMEOUT_MS: &str = "10000";
/// How often a member tells the group it is alive (a third of the session timeout, as Kafka recommends).
const HEARTBEAT_INTERVAL_MS: &str = "3000";

/// The rebalance timeout (and the longest the ingest loop may go without reading, e.g. while it retries a
/// ClickHouse write; past it the consumer leaves the group and rejoins on its next read).
const MAX_POLL_INTERVAL_MS: &str = "15000";

/// The longest a fetch waits at the broker when there is nothing to read, in milliseconds.
const FETCH_WAIT_MAX_MS: &str = "100";
/// The most a fetch returns per partition, in bytes (8 MiB).
const MAX_PARTITION_FETCH_BYTES: &str = "8388608";

/// The ingest consumer.
pub type IngestConsumer = StreamConsumer<IngestContext>;

/// Logs rebalances and commit results; holds no state.
#[derive(Debug, Default, Clone, Copy)]
pub struct IngestContext;

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "Partitions assigned.");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "Partitions revoked.");
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "Rebalance failed.");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, offsets = %describe(offsets), "Offset commit reported an error.");
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A consumer in `settings.group_id`, subscribed to `settings.topic`.
pub fn subscribe(settings: &KafkaSettings) -> Result<IngestConsumer, BillingError> {
    let mut config = settings.connection.client_config(CLIENT_ID);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A consumer that died without leaving (kill -9, a lost host) holds its partitions until its session
        // times out; librdkafka's 45 s default would stall those partitions that long after every crash.
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)
        // The rebalance timeout: how long the group waits for members to rejoin before it reassigns. A member
        // that died never rejoins, and Tansu waits the whole timeout (librdkafka's default: 5 min).
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)
        // An idle fetch returns within 100 ms rather than librdkafka's 500 (a broker without long-poll wake-ups,
        // like Tansu, holds it that long, so a new event would wait up to that long before its batch starts), and
        // a fetch carries up to 8 MiB per partition instead of 1 MiB (about 1,200 events), fewer round trips
        // while catching up. On Tansu here the broker's CPU bounds ingest either way (throughput.rs).
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("max.partition.fetch.bytes", MAX_PARTITION_FETCH_BYTES)
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    // Static membership (KIP-345): a restarted replica with the same instance id takes its partitions back at
    // once instead of waiting for the group to give up on its dead predecessor.
    if let Some(instance) = std::env::var("TOLLGATE_BILLING_INSTANCE_ID")
        .ok()
        .filter(|i| !i.is_empty())
    {
        config.set("group.instance.id", instance);
    }
    let consumer: IngestConsumer = config
        .create_with_context(IngestContext)
        .map_err(BillingError::kafka("create consumer"))?;
    consumer
        .subscribe(&[settings.topic.as_str()])
        .map_err(BillingError::kafka("subscribe"))?;
    Ok(consumer)
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitOutcome {
    /// Partitions whose offset was committed.
    pub committed: usize,
    /// Partitions skipped because this consumer no longer owns them.
    pub skipped: usize,
}

/// Commits `next_offsets` (the offset of the next message to read, per topic and partition) synchronously,
/// for the partitions this consumer still owns.
///
/// A partition revoked since its messages were read is skipped: its new owner resumes from the last committed
/// offset and re-inserts those messages, which the ledger's ReplacingMergeTree collapses. A partition revoked
/// and assigned back to this consumer is committed — its messages were just written.
pub async fn commit(
    consumer: &Arc<IngestConsumer>,
    next_offsets: &BTreeMap<(String, i32), i64>,
) -> Result<CommitOutcome, BillingError> {
    let owned = consumer
        .assignment()
        .map_err(BillingError::kafka("read assignment"))?;
    let mut list = TopicPartitionList::new();
    let mut outcome = CommitOutcome::default();
    for ((topic, partition), offset) in next_offsets {
        if owned.find_partition(topic, *partition).is_none() {
            outcome.skipped += 1;
            continue;
        }
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(BillingError::kafka("build offset list"))?;
        outcome.committed += 1;
    }
    if outcome.committed == 0 {
        return Ok(outcome);
    }
    let consumer = Arc::clone(consumer);
    let result = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
        .await
        .map_err(|join| {
            tracing::warn!(error = %join, "The offset commit task did not finish.");
            BillingError::Kafka {
                operation: "commit offsets",
                source: rdkafka::error::KafkaError::Canceled,
            }
        })?;
    result.map_err(BillingError::kafka("commit offsets"))?;
    Ok(outcome)
}

/// Where the usage events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// The brokers and the operator's librdkafka properties.
    pub connection: KafkaConnection,
    /// The usage topic, normally [`tollgate_schemas::topics::USAGE_V1`].
    pub topic: String,
    /// The consumer group; its committed offsets are the ingest's progress.
    pub group_id: String,
}

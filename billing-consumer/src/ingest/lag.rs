//! The consumer lag gauge, `billing_consumer_lag_events`: how many messages of the usage topic the ledger does
//! not hold yet. Per partition it is the high watermark minus the group's committed offset (the low watermark
//! when the group has committed nothing there), summed over every partition of the topic — so it is the whole
//! group's lag, the same number from every `run` replica, and it keeps growing while ClickHouse is down and
//! nothing is committed.
//!
//! Measured once a second beside the ingest loop, with the ingest consumer's own client (a metadata, an
//! offset-fetch and a watermark request per partition); a failed measurement leaves the gauge as it was.
//!
//! The same measurement recognises an orphaned group ([`crate::kafka::stall`]): while this consumer holds no partition,
//! there is lag, and the group's committed offsets have not moved for [`ORPHANED_AFTER`], nobody ingests. The
//! consumer then leaves the group and joins it again (`billing_ingest_rejoins_total`). A member that is idle
//! beside busy ones (more members than partitions) sees the committed offsets move and never rejoins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::BillingError;
use crate::kafka::IngestConsumer;
use crate::kafka::stall::Stall;
use crate::telemetry::metrics as m;

/// How often the lag is measured.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long the group's committed offsets may stand still, with lag and no partition held here, before this
/// consumer joins the group again: two sessions, so that a crashed member's partitions have had time to move.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(20);
/// How long one broker request of a measurement may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The first offset still in the partition.
    pub low: i64,
    /// The offset the next message will get.
    pub high: i64,
    /// The group's committed offset (the next message to ingest), if it committed any.
    pub committed: Option<i64>,
}

/// Messages not yet committed, summed over `partitions`.
pub fn lag_events(partitions: &[PartitionOffsets]) -> u64 {
    partitions
        .iter()
        .map(|p| {
            let position = p.committed.unwrap_or(p.low).max(p.low);
            u64::try_from(p.high.saturating_sub(position)).unwrap_or(0)
        })
        .sum()
}

/// Measures the lag every [`INTERVAL`] until `shutdown` is cancelled.
pub async fn watch(consumer: Arc<IngestConsumer>, topic: String, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut stall = Stall::new(ORPHANED_AFTER, Instant::now());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let probe = Arc::clone(&consumer);
        let owned_topic = topic.clone();
        let measured = tokio::task::spawn_blocking(move || measure(&probe, &owned_topic)).await;
        match measured {
            Ok(Ok(Some(partitions))) => {
                let lag = lag_events(&partitions);
                metrics::gauge!(m::CONSUMER_LAG).set(lag as f64);
                crate::telemetry::readiness::STATE.lag_measured(crate::telemetry::readiness::now_ms());
                failing = false;
                let holds_nothing = consumer.assignment().is_ok_and(|held| held.count() == 0);
                if holds_nothing && lag > 0 {
                    let committed: Vec<Option<i64>> = partitions.iter().map(|p| p.committed).collect();
                    if stall.observe(committed, Instant::now()) {
                        rejoin(&consumer, &topic, lag);
                        stall.reset(Instant::now());
                    }
                } else {
                    stall.reset(Instant::now());
                }
            }
            // The topic does not exist yet: nothing to ingest.
            Ok(Ok(None)) => {
                metrics::gauge!(m::CONSUMER_LAG).set(0.0);
                crate::telemetry::readiness::STATE.lag_measured(crate::telemetry::readiness::now_ms());
            }
            Ok(Err(error)) if !failing => {
                tracing::debug!(error_kind = error.kind(), %error, "Measuring the consumer lag failed.");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(join) => tracing::debug!(error = %join, "The consumer lag measurement did not finish."),
        }
    }
}

/// Leaves the group and joins it again as a new member, so that the group assigns its partitions afresh.
fn rejoin(consumer: &IngestConsumer, topic: &str, lag: u64) {
    metrics::counter!(m::INGEST_REJOINS).increment(1);
    tracing::warn!(
        lag,
        quiet_for = %humantime::format_duration(ORPHANED_AFTER),
        "This consumer holds no partition and nobody has committed while events wait: the group is orphaned, so \
         this consumer leaves it and joins it again."
    );
    consumer.unsubscribe();
    if let Err(error) = consumer.subscribe(&[topic]) {
        tracing::warn!(%error, "Joining the ingest group again failed; the next measurement tries again.");
    }
}

/// The offsets of every partition of `topic`; `None` while it does not exist. Blocking.
fn measure(consumer: &IngestConsumer, topic: &str) -> Result<Option<Vec<PartitionOffsets>>, BillingError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(BillingError::kafka("fetch usage topic metadata"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if found.error().is_some() || found.partitions().is_empty() {
        return Ok(None);
    }
    let mut list = TopicPartitionList::new();
    for partition in found.partitions() {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(list, REQUEST_TIMEOUT)
        .map_err(BillingError::kafka("fetch committed offsets"))?;
    let mut partitions = Vec::with_capacity(found.partitions().len());
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
            .map_err(BillingError::kafka("fetch usage topic watermarks"))?;
        let committed = committed
            .find_partition(topic, partition.id())
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) if offset >= 0 => Some(offset),
                _ => None,
            });
        partitions.push(PartitionOffsets { low, high, committed });
    }
    Ok(Some(partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(low: i64, high: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets { low, high, committed }
    }

    #[test]
    fn lag_is_high_watermark_minus_committed_summed_over_partitions() {
        assert_eq!(lag_events(&[]), 0);
        assert_eq!(
            lag_events(&[offsets(0, 100, Some(40)), offsets(0, 7, Some(7))]),
            60
        );
        // Nothing committed yet: everything still in the partition is to be ingested.
        assert_eq!(lag_events(&[offsets(10, 25, None)]), 15);
        // A committed offset below the low watermark (retention deleted what was never ingested) counts from
        // what is left; one above the high watermark (a recreated topic) is not a negative lag.
        assert_eq!(
            lag_events(&[offsets(50, 60, Some(20)), offsets(0, 5, Some(9))]),
            10
        );
    }
}

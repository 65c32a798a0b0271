//! The quota loop's lease: only the quota loop holding it publishes, so two loops on one quota topic — a deploy
//! overlapping the old process, a second `quota` started by mistake — never both write snapshots.
//!
//! **How.** Every quota loop of a quota topic joins one Kafka consumer group
//! ([`QuotaSettings::lease_group`](crate::quota::QuotaSettings::lease_group), by default
//! `tollgate-quota-loop/<quota topic>`) subscribed to the quota topic, which has exactly one partition. The group
//! coordinator assigns that partition to one member: that member holds the lease. The others keep counting (a hot
//! standby: same topic, same state) but publish nothing, heartbeats included. When the holder leaves (a clean stop
//! sends LeaveGroup at once) or dies (after `session.timeout.ms`, [`SESSION_TIMEOUT`]), the coordinator gives
//! the partition to another member, which then publishes every window it holds at once. A holder drops the lease
//! before the partition moves (the eager protocol revokes everywhere first), so two holders never overlap while
//! both are responsive.
//!
//! **An orphaned lease is taken back.** Tansu 0.6 can form the group with nobody holding the partition (see
//! [`crate::kafka::stall`]). Every loop therefore watches the quota topic while it does not hold the lease: the holder
//! publishes a heartbeat every `heartbeat_interval`, so a topic whose end has not moved for [`orphaned_after`]
//! means that nobody publishes. The member then leaves and joins again as a new member
//! (`billing_quota_lease_rejoins_total`). A standby beside a live holder sees the topic move and never rejoins.
//!
//! **Why not a transactional producer.** Producer fencing by `transactional.id` epoch would also stop a writer that
//! was paused past its session and wakes up still believing it holds the lease. Tansu 0.6 hands out epochs
//! (`InitProducerId` with a transactional id works) but does not answer `EndTxn` (librdkafka: "EndTxnRequest
//! (KIP-98) not supported by broker"), so no transaction can commit on it; checked against the broker before
//! choosing. The paused-writer case is covered on the reading side instead: gateways ignore a snapshot whose
//! watermarks go back from the one they hold for its window (`gateway/src/admission/quota/feed.rs`), so a stale
//! writer's last round cannot move their view backwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

use tollgate_plumbing::kafka::KafkaConnection;

use crate::error::BillingError;
use crate::kafka::stall::Stall;
use crate::telemetry::metrics as m;

/// How long the coordinator waits for a silent holder before giving the lease to another loop.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How often the lease's consumer is polled (rebalance callbacks run in its poll).
const POLL: Duration = Duration::from_millis(100);
/// How often a member without the lease looks at the end of the quota topic.
const LOOK: Duration = Duration::from_secs(1);

/// How long the quota topic's end may stand still before a member without the lease concludes that nobody holds
/// it: three missed holder heartbeats, and never less than two sessions (a crashed holder's partition moves after
/// one session on its own).
pub fn orphaned_after(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval * 3).max(SESSION_TIMEOUT * 2)
}

/// Tracks whether this member holds the quota topic's partition.
struct LeaseContext {
    holder: Arc<AtomicBool>,
}

impl ClientContext for LeaseContext {}

impl ConsumerContext for LeaseContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_) | Rebalance::Error(_)) {
            set(&self.holder, false);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                // The partition is only the lease: nothing is fetched from it.
                if let Err(error) = consumer.pause(partitions) {
                    tracing::debug!(%error, "Pausing the quota lease partition failed; its messages are discarded.");
                }
                set(&self.holder, partitions.count() > 0);
            }
            Rebalance::Revoke(_) | Rebalance::Error(_) => set(&self.holder, false),
        }
    }
}

fn set(holder: &AtomicBool, holds: bool) {
    let held = holder.swap(holds, Ordering::AcqRel);
    crate::telemetry::readiness::STATE.lease_held(holds, crate::telemetry::readiness::now_ms());
    if held != holds {
        metrics::gauge!(m::QUOTA_LEASE_HELD).set(if holds { 1.0 } else { 0.0 });
        if holds {
            tracing::info!("This quota loop holds the lease: it publishes.");
        } else {
            tracing::warn!(
                "This quota loop does not hold the lease (any more): it counts but publishes nothing."
            );
        }
    }
}

/// What a member of the lease group is made of; [`Member::join`] makes a new member.
struct Member {
    kafka: KafkaConnection,
    quota_topic: String,
    group: String,
    holder: Arc<AtomicBool>,
}

impl Member {
    fn join(&self) -> Result<BaseConsumer<LeaseContext>, BillingError> {
        let consumer: BaseConsumer<LeaseContext> = self
            .kafka
            .client_config(crate::kafka::CLIENT_ID)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "range")
            .create_with_context(LeaseContext {
                holder: Arc::clone(&self.holder),
            })
            .map_err(BillingError::kafka("create the quota lease consumer"))?;
        consumer
            .subscribe(&[self.quota_topic.as_str()])
            .map_err(BillingError::kafka("join the quota lease group"))?;
        Ok(consumer)
    }
}

/// Membership in the lease group, kept by a thread; dropping or [`Lease::stop`]ping it leaves the group.
#[derive(Debug)]
pub struct Lease {
    holder: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    /// Joins `group` on `quota_topic`; the lease may be granted a moment later ([`Lease::held`]).
    /// `heartbeat_interval` is the holder's heartbeat cadence, from which an orphaned lease is recognised.
    pub fn join(
        kafka: &KafkaConnection,
        quota_topic: &str,
        group: &str,
        heartbeat_interval: Duration,
    ) -> Result<Self, BillingError> {
        let holder = Arc::new(AtomicBool::new(false));
        metrics::gauge!(m::QUOTA_LEASE_HELD).set(0.0);
        let member = Member {
            kafka: kafka.clone(),
            quota_topic: quota_topic.to_owned(),
            group: group.to_owned(),
            holder: Arc::clone(&holder),
        };
        let mut consumer = member.join()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let bound = orphaned_after(heartbeat_interval);
        let thread = std::thread::Builder::new()
            .name("tollgate-quota-lease".into())
            .spawn(move || {
                let mut silence = Stall::new(bound, Instant::now());
                let mut looked = Instant::now();
                while !stopping.load(Ordering::Acquire) {
                    // Messages are not needed (the partition is only the lease); polling serves the group protocol.
                    let _ = consumer.poll(POLL);
                    if member.holder.load(Ordering::Acquire) {
                        silence.reset(Instant::now());
                        continue;
                    }
                    if looked.elapsed() < LOOK {
                        continue;
                    }
                    looked = Instant::now();
                    // A broker that does not answer says nothing about the lease: only a readable end counts.
                    let Ok((_, end)) = consumer.fetch_watermarks(&member.quota_topic, 0, LOOK) else {
                        continue;
                    };
                    if silence.observe(end, Instant::now()) {
                        metrics::counter!(m::QUOTA_LEASE_REJOINS).increment(1);
                        tracing::warn!(
                            quiet_for = %humantime::format_duration(bound),
                            "Nobody has published on the quota topic while this loop did not hold the lease: \
                             the lease is orphaned, so this loop leaves the group and joins it again."
                        );
                        consumer.unsubscribe();
                        drop(consumer);
                        consumer = loop {
                            match member.join() {
                                Ok(consumer) => break consumer,
                                Err(error) => {
                                    tracing::warn!(%error, "Joining the quota lease group again failed; retrying.");
                                    if stopping.load(Ordering::Acquire) {
                                        return;
                                    }
                                    std::thread::sleep(LOOK);
                                }
                            }
                        };
                        silence.reset(Instant::now());
                    }
                }
                set(&member.holder, false);
                consumer.unsubscribe();
                drop(consumer);
            })
            .map_err(|e| BillingError::Config {
                setting: "quota lease thread",
                reason: e.to_string(),
            })?;
        Ok(Self {
            holder,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether this loop holds the lease now.
    pub fn held(&self) -> bool {
        self.holder.load(Ordering::Acquire)
    }

    /// Leaves the group (another loop gets the lease at once) and waits for the thread.
    pub async fn stop(mut self) {
        set(&self.holder, false);
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_covers_three_heartbeats_and_at_least_two_sessions() {
        assert_eq!(orphaned_after(Duration::from_secs(1)), SESSION_TIMEOUT * 2);
        assert_eq!(orphaned_after(Duration::from_secs(10)), Duration::from_secs(30));
    }
}

//! The quota loop's lease: only the quota loop holding it publishes, so two loops on one quota topic — a deploy
//! overlapping the old process, a second `quota` started by mistake — never both write snapshots.
//!
//! **How.** Every quota loop of a quota topic joins one Kafka consumer group
//! ([`QuotaSettings::lease_group`](crate::settings::QuotaSettings::lease_group), by default
//! `tollgate-quota-loop/<quota topic>`) subscribed to the quota topic, which has exactly one partition. The group
//! coordinator assigns that partition to one member: that member holds the lease. The others keep counting (a hot
//! standby: same topic, same state) but publish nothing, heartbeats included. When the holder leaves (a clean stop
//! sends LeaveGroup at once) or dies (after `session.timeout.ms`, [`SESSION_TIMEOUT`]), the coordinator gives
//! the partition to another member, which then publishes every window it holds at once. A holder drops the lease
//! before the partition moves (the eager protocol revokes everywhere first), so two holders never overlap while
//! both are responsive.
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
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

use crate::error::BillingError;
use crate::metrics as m;

/// How long the coordinator waits for a silent holder before giving the lease to another loop.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How often the lease's consumer is polled (rebalance callbacks run in its poll).
const POLL: Duration = Duration::from_millis(100);

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
    crate::readiness::STATE.lease_held(holds, crate::readiness::now_ms());
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

/// Membership in the lease group, kept by a thread; dropping or [`Lease::stop`]ping it leaves the group.
#[derive(Debug)]
pub struct Lease {
    holder: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    /// Joins `group` on `quota_topic`; the lease may be granted a moment later ([`Lease::held`]).
    pub fn join(brokers: &str, quota_topic: &str, group: &str) -> Result<Self, BillingError> {
        let holder = Arc::new(AtomicBool::new(false));
        metrics::gauge!(m::QUOTA_LEASE_HELD).set(0.0);
        let consumer: BaseConsumer<LeaseContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", crate::kafka::CLIENT_ID)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "range")
            .create_with_context(LeaseContext {
                holder: Arc::clone(&holder),
            })
            .map_err(BillingError::kafka("create the quota lease consumer"))?;
        consumer
            .subscribe(&[quota_topic])
            .map_err(BillingError::kafka("join the quota lease group"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-quota-lease".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    // Messages are not needed (the partition is only the lease); polling serves the group protocol.
                    let _ = consumer.poll(POLL);
                }
                set(&consumer.context().holder, false);
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

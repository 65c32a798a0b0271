//! The topics billing-consumer makes sure of before it uses them ([`tollgate_plumbing::topics`] does the work):
//! the usage topic, with the intended partition count, and the quota topic (one partition, compacted: one
//! snapshot per key survives).

use rdkafka::config::ClientConfig;
use tollgate_plumbing::topics::{TopicSpec, ensure as ensure_spec};

pub use tollgate_plumbing::topics::BROKER_DEFAULT_REPLICATION;

use crate::error::BillingError;

/// Creates `topic` with `partitions` partitions and the broker's default replication factor, unless it exists.
pub async fn ensure(brokers: &str, topic: &str, partitions: i32) -> Result<(), BillingError> {
    ensure_with_replication(brokers, topic, partitions, BROKER_DEFAULT_REPLICATION).await
}

/// Creates `topic` with `partitions` partitions and `replication` replicas, unless it exists.
pub async fn ensure_with_replication(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), BillingError> {
    let spec = TopicSpec {
        name: topic,
        partitions,
        replication,
        compacted: false,
    };
    Ok(ensure_spec(&admin(brokers), spec).await?)
}

/// Creates the quota topic `topic` (one partition, so every scope in one order; compacted) unless it exists.
pub async fn ensure_quota(brokers: &str, topic: &str) -> Result<(), BillingError> {
    Ok(ensure_spec(&admin(brokers), TopicSpec::compacted(topic)).await?)
}

fn admin(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", crate::kafka::CLIENT_ID);
    config
}

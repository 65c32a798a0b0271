//! The topics billing-consumer makes sure of before it uses them ([`tollgate_plumbing::topics`] does the work):
//! the usage topic, with the intended partition count, and the quota topic (one partition, compacted: one
//! snapshot per key survives).

use tollgate_plumbing::kafka::KafkaConnection;
use tollgate_plumbing::topics::{TopicSpec, ensure as ensure_spec};

pub use tollgate_plumbing::topics::BROKER_DEFAULT_REPLICATION;

use crate::error::BillingError;

/// Creates `topic` with `partitions` partitions and the broker's default replication factor, unless it exists.
pub async fn ensure(kafka: &KafkaConnection, topic: &str, partitions: i32) -> Result<(), BillingError> {
    ensure_with_replication(kafka, topic, partitions, BROKER_DEFAULT_REPLICATION).await
}

/// Creates `topic` with `partitions` partitions and `replication` replicas, unless it exists.
pub async fn ensure_with_replication(
    kafka: &KafkaConnection,
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
    Ok(ensure_spec(&kafka.client_config(crate::kafka::CLIENT_ID), spec).await?)
}

/// Creates the quota topic `topic` (one partition, so every scope in one order; compacted) unless it exists.
pub async fn ensure_quota(kafka: &KafkaConnection, topic: &str) -> Result<(), BillingError> {
    Ok(ensure_spec(
        &kafka.client_config(crate::kafka::CLIENT_ID),
        TopicSpec::compacted(topic),
    )
    .await?)
}

/// Creates the alerts topic `topic` (one partition, compacted: the latest record of each alert id survives) unless
/// it exists.
pub async fn ensure_alerts(kafka: &KafkaConnection, topic: &str) -> Result<(), BillingError> {
    Ok(ensure_spec(
        &kafka.client_config(crate::kafka::CLIENT_ID),
        TopicSpec::compacted(topic),
    )
    .await?)
}

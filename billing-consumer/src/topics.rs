//! Makes sure the usage topic exists before the consumer subscribes, so a fresh stack does not depend on the
//! broker's auto-creation (and gets the intended partition count). A topic that already exists is left as it
//! is: its partition count and configuration are an operator's decision once it exists.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::BillingError;

/// How long the broker may take to create the topic.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The replication factor [`ensure`] asks for: `-1`, the broker's `default.replication.factor` (Kafka ≥ 2.4),
/// so one binary fits a single dev broker and a three-broker production cluster alike.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

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
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", crate::kafka::CLIENT_ID)
        .create()
        .map_err(BillingError::kafka("create admin client"))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new()
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .request_timeout(Some(OPERATION_TIMEOUT));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(BillingError::kafka("create topic"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "Created topic."),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Topic already exists.");
            }
            Err((name, code)) => {
                return Err(BillingError::TopicCreation {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

//! Makes sure the topics exist before they are used, so a fresh stack does not depend on the broker's
//! auto-creation: the usage topic (with the intended partition count) and the quota topic (one partition,
//! compacted). A topic that already exists is left as it is: its partition count and configuration are an
//! operator's decision once it exists.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::BillingError;

/// How long the broker may take to create the topic.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The replication factor [`ensure`] asks for: `-1`, the broker's `default.replication.factor` (Kafka ≥ 2.4),
/// so one binary fits a single dev broker and a three-broker production cluster alike.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// The configuration that keeps one message per key: the quota topic's.
const COMPACT: (&str, &str) = ("cleanup.policy", "compact");

type Admin = AdminClient<DefaultClientContext>;

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
    let admin = admin(brokers)?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    match create(&admin, &new_topic).await? {
        Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => Ok(()),
        Err(code) => Err(BillingError::TopicCreation {
            topic: topic.to_owned(),
            reason: code.to_string(),
        }),
    }
}

/// Creates the quota topic `topic` — one partition (snapshots of all scopes in one order), the broker's default
/// replication, `cleanup.policy=compact` (one snapshot per scope survives) — unless it exists.
///
/// A broker that refuses the compaction setting gets the topic without it, with a warning: gateways then read
/// every snapshot since the start instead of one per scope, which is slower but gives the same state. Whether
/// the topic ended up compacted is logged when the broker can describe its configuration.
pub async fn ensure_quota(brokers: &str, topic: &str) -> Result<(), BillingError> {
    let admin = admin(brokers)?;
    let replication = || TopicReplication::Fixed(BROKER_DEFAULT_REPLICATION);
    let compacted = NewTopic::new(topic, 1, replication()).set(COMPACT.0, COMPACT.1);
    match create(&admin, &compacted).await? {
        Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => {}
        Err(refused) => {
            tracing::warn!(
                %topic,
                code = %refused,
                "The broker refused to create the quota topic with cleanup.policy=compact; creating it without."
            );
            match create(&admin, &NewTopic::new(topic, 1, replication())).await? {
                Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => {}
                Err(code) => {
                    return Err(BillingError::TopicCreation {
                        topic: topic.to_owned(),
                        reason: code.to_string(),
                    });
                }
            }
        }
    }
    match cleanup_policy(&admin, topic).await {
        Some(policy) if policy.contains(COMPACT.1) => {
            tracing::debug!(%topic, cleanup_policy = %policy, "The quota topic is compacted.");
        }
        Some(policy) => tracing::warn!(
            %topic,
            cleanup_policy = %policy,
            "The quota topic is not compacted; gateways will read every snapshot since the start."
        ),
        None => tracing::info!(
            %topic,
            "The broker did not describe the quota topic's configuration; cannot tell whether it is compacted."
        ),
    }
    Ok(())
}

fn admin(brokers: &str) -> Result<Admin, BillingError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", crate::kafka::CLIENT_ID)
        .create()
        .map_err(BillingError::kafka("create admin client"))
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .request_timeout(Some(OPERATION_TIMEOUT))
}

/// Asks the broker to create `new_topic`: the outer error is the request failing, the inner one the broker's
/// answer for the topic.
async fn create(
    admin: &Admin,
    new_topic: &NewTopic<'_>,
) -> Result<Result<(), RDKafkaErrorCode>, BillingError> {
    let results = admin
        .create_topics([new_topic], &options())
        .await
        .map_err(BillingError::kafka("create topic"))?;
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = new_topic.num_partitions, "Created topic.");
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Topic already exists.");
                return Ok(Err(RDKafkaErrorCode::TopicAlreadyExists));
            }
            Err((_, code)) => return Ok(Err(code)),
        }
    }
    Ok(Ok(()))
}

/// The topic's `cleanup.policy`, when the broker describes it.
async fn cleanup_policy(admin: &Admin, topic: &str) -> Option<String> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await;
    match described {
        Ok(results) => results
            .into_iter()
            .filter_map(Result::ok)
            .find_map(|resource| resource.get(COMPACT.0).and_then(|entry| entry.value.clone())),
        Err(error) => {
            tracing::debug!(%error, %topic, "Describing the topic's configuration failed.");
            None
        }
    }
}

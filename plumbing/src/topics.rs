//! Makes sure a topic exists before it is used, so a fresh stack does not depend on the broker's auto-creation:
//! the usage topic (with the intended partition count) and the compacted topics (quota snapshots, config changes:
//! one partition, `cleanup.policy=compact`). A topic that already exists is left as it is: its partition count and
//! configuration are an operator's decision once it exists. The admin client is made from the caller's client
//! settings, so `kafka.properties` (security, timeouts) apply to it as to every other client.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How long the broker may take to create the topic.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The replication factor asked for by default: `-1`, the broker's `default.replication.factor` (Kafka ≥ 2.4),
/// so one binary fits a single dev broker and a three-broker production cluster alike.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// The configuration that keeps one message per key.
const COMPACT: (&str, &str) = ("cleanup.policy", "compact");

type Admin = AdminClient<DefaultClientContext>;

/// Why a topic could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin client could not be made, or the request failed.
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create the topic, for a reason other than "it already exists".
    #[error("creating topic `{topic}` failed: {code}")]
    Refused { topic: String, code: RDKafkaErrorCode },
}

impl TopicError {
    /// Whether the broker could not be reached or answered too late (down, starting, or overloaded): the same
    /// request may succeed later. A refusal for any other reason (a policy, a bad partition count) is not.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Kafka { source, .. } => unreachable_error(source),
            Self::Refused { code, .. } => broker_unreachable(*code),
        }
    }
}

/// Whether `error` means that no broker answered in time. An admin operation's error carries its code as
/// `AdminOp(code)`, which rdkafka's `rdkafka_error_code()` does not report: it is read here too.
pub fn unreachable_error(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    code.is_some_and(broker_unreachable)
}

/// Whether `code` means "no broker answered in time", not "the broker said no".
pub fn broker_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::Resolve
    )
}

/// The topic to make sure of.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    /// Replicas; [`BROKER_DEFAULT_REPLICATION`] for the broker's default.
    pub replication: i32,
    /// `cleanup.policy=compact`. A broker that refuses it gets the topic without, with a warning: readers then
    /// read every message since the start instead of one per key, which is slower but gives the same state.
    pub compacted: bool,
}

impl<'a> TopicSpec<'a> {
    /// A compacted single-partition topic (one order, one message per key) with the broker's replication.
    pub fn compacted(name: &'a str) -> Self {
        Self {
            name,
            partitions: 1,
            replication: BROKER_DEFAULT_REPLICATION,
            compacted: true,
        }
    }
}

/// Creates the topic `spec` describes unless it exists, with an admin client made from `client` (bootstrap
/// servers, client id and the operator's properties). For a compacted topic, logs whether it ended up compacted
/// when the broker can describe its configuration.
pub async fn ensure(client: &ClientConfig, spec: TopicSpec<'_>) -> Result<(), TopicError> {
    let admin: Admin = client.create().map_err(|source| TopicError::Kafka {
        operation: "create admin client",
        source,
    })?;
    let plain = || {
        NewTopic::new(
            spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication),
        )
    };
    let wanted = if spec.compacted {
        plain().set(COMPACT.0, COMPACT.1)
    } else {
        plain()
    };
    match create(&admin, &wanted).await? {
        Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => {}
        Err(refused) if spec.compacted => {
            tracing::warn!(
                topic = %spec.name,
                code = %refused,
                "The broker refused to create the topic with cleanup.policy=compact; creating it without."
            );
            match create(&admin, &plain()).await? {
                Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => {}
                Err(code) => return Err(refused_error(spec.name, code)),
            }
        }
        Err(code) => return Err(refused_error(spec.name, code)),
    }
    if spec.compacted {
        match cleanup_policy(&admin, spec.name).await {
            Some(policy) if policy.contains(COMPACT.1) => {
                tracing::debug!(topic = %spec.name, cleanup_policy = %policy, "The topic is compacted.");
            }
            Some(policy) => tracing::warn!(
                topic = %spec.name,
                cleanup_policy = %policy,
                "The topic is not compacted; its readers will read every message since the start."
            ),
            None => tracing::info!(
                topic = %spec.name,
                "The broker did not describe the topic's configuration; cannot tell whether it is compacted."
            ),
        }
    }
    Ok(())
}

fn refused_error(topic: &str, code: RDKafkaErrorCode) -> TopicError {
    TopicError::Refused {
        topic: topic.to_owned(),
        code,
    }
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .request_timeout(Some(OPERATION_TIMEOUT))
}

/// Asks the broker to create `new_topic`: the outer error is the request failing, the inner one the broker's
/// answer for the topic.
async fn create(admin: &Admin, new_topic: &NewTopic<'_>) -> Result<Result<(), RDKafkaErrorCode>, TopicError> {
    let results = admin
        .create_topics([new_topic], &options())
        .await
        .map_err(|source| TopicError::Kafka {
            operation: "create topic",
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic creation against a broker that is down fails as `AdminOp(BrokerTransportFailure)`, whose code
    /// rdkafka's `rdkafka_error_code()` does not report: it must still read as "not reachable yet", so that a
    /// service started before its broker waits for it instead of exiting.
    #[test]
    fn an_admin_operation_that_reached_no_broker_is_unreachable_and_a_refusal_is_not() {
        let down = KafkaError::AdminOp(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(unreachable_error(&down));
        assert!(
            TopicError::Kafka {
                operation: "create topic",
                source: down,
            }
            .is_unreachable()
        );
        let refused = KafkaError::AdminOp(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(!unreachable_error(&refused));
        assert!(unreachable_error(&KafkaError::MetadataFetch(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!unreachable_error(&KafkaError::Canceled));
    }
}

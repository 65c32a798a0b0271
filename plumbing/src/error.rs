//! [`KafkaOpError`]: what went wrong in a Kafka operation of the shared plumbing, named by the operation, so that
//! a log line says what was being done ("read the end of tollgate.config.v1: …") and a caller can tell a broker
//! that refused from one that did not answer.

use std::borrow::Cow;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::topics::TopicError;

/// A failed Kafka operation.
#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    /// The client reported an error while doing `operation`.
    #[error("{operation}: {source}")]
    Client {
        /// What was being done, e.g. "fetch the quota topic's metadata".
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker answered `operation` with an error code.
    #[error("{operation}: the broker answered {code}")]
    Refused {
        /// What was being done.
        operation: &'static str,
        /// The broker's code.
        code: RDKafkaErrorCode,
    },
    /// Creating a topic failed.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The topic is not there (yet), or has no partitions.
    #[error("{topic}: {reason}")]
    Missing {
        /// The topic.
        topic: String,
        /// What is missing.
        reason: Cow<'static, str>,
    },
    /// `operation` did not finish in the time it had.
    #[error("{operation}: {detail}")]
    Incomplete {
        /// What was being done.
        operation: &'static str,
        /// How far it got.
        detail: String,
    },
    /// A change could not be encoded for the topic.
    #[error("encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The blocking runtime an admin call needs could not start.
    #[error("start a runtime for an admin call: {0}")]
    Runtime(#[from] std::io::Error),
}

impl KafkaOpError {
    /// Maps a client error of `operation`, for `map_err`.
    pub fn client(operation: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| Self::Client { operation, source }
    }
}

//! [`BillingError`]: every way billing-consumer can fail, in one enum. Each variant says which boundary failed
//! (Kafka, ClickHouse, the migrations, the quota policy, the command line) and [`BillingError::kind`] gives a
//! short, bounded name for logs and metric labels; the message itself never becomes a label.

use rdkafka::error::KafkaError;

/// An error of billing-consumer.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// A setting is unusable (e.g. a database name that is not a plain identifier).
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The setting's name as the operator knows it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A ClickHouse request failed.
    #[error("ClickHouse {operation} failed: {source}")]
    ClickHouse {
        /// What was being done, e.g. `insert usage_events`.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: clickhouse::error::Error,
    },

    /// A Kafka operation failed.
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        /// What was being done, e.g. `create consumer`.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// Making sure a topic exists failed (the admin request, or the broker's answer other than "it already
    /// exists").
    #[error(transparent)]
    TopicCreation(#[from] tollgate_plumbing::topics::TopicError),

    /// A migration that the database records as applied no longer has the same content.
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but this build has {embedded}; \
         applied migrations must never change: add a new migration instead"
    )]
    MigrationChanged {
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
        /// The checksum recorded in `schema_migrations`.
        applied: String,
        /// The checksum of the SQL embedded in this build.
        embedded: String,
    },

    /// The embedded migration set itself is malformed (duplicate or unordered versions, empty file).
    #[error("migration set is invalid: {0}")]
    MigrationSet(String),

    /// A `--since` value could not be read as RFC 3339, a date or a duration.
    #[error(
        "cannot read `{input}` as a time: expected RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) \
         or a duration ago (24h)"
    )]
    InvalidSince {
        /// What the operator typed.
        input: String,
    },

    /// A Kafka message could not be decoded as a usage event.
    #[error("undecodable usage event ({}): {message}", reason.as_str())]
    Decode {
        /// The bounded reason, used as a metric label and stored with the rejected message.
        reason: RejectReason,
        /// The decoder's message.
        message: String,
    },

    /// The Prometheus exporter could not be installed.
    #[error("metrics exporter failed: {0}")]
    Metrics(String),

    /// Writing a report to the terminal failed.
    #[error("writing the report failed: {0}")]
    Output(String),

    /// The quota sections of the gateway's configuration file cannot be read or are invalid.
    #[error("quota policy in `{path}` is invalid: {}", problems.join("; "))]
    QuotaPolicy {
        /// The configuration file.
        path: String,
        /// Every problem, each prefixed with its path in the file (`consumers[0].token_limits[1].limit: …`).
        problems: Vec<String>,
    },

    /// The price file cannot be read or is invalid.
    #[error("price table `{path}` is invalid: {}", problems.join("; "))]
    Prices {
        /// The price file.
        path: String,
        /// Every problem, each prefixed with its path in the file (`prices[2].input_per_mtok: …`).
        problems: Vec<String>,
    },

    /// An invoice period is not a calendar month.
    #[error("cannot read `{input}` as an invoice period: expected a calendar month such as 2026-11")]
    InvalidPeriod {
        /// What the operator typed.
        input: String,
    },

    /// An event could not be serialized for publishing.
    #[error("encoding {what} failed: {message}")]
    Encode {
        /// What was being encoded, e.g. `quota snapshot`.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
}

/// Why a Kafka message was rejected instead of ingested. Bounded: a metric label and a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The message had no payload.
    EmptyPayload,
    /// The payload is not a JSON `tollgate.usage.v1` CloudEvent (syntax or shape).
    InvalidJson,
    /// The payload is a CloudEvent but of another type or spec version.
    UnexpectedType,
    /// The event is well-formed but cannot be turned into a row (e.g. a time before 1970).
    Unrepresentable,
}

impl RejectReason {
    /// Every reason, for registering the metric's label values up front.
    pub const ALL: [Self; 4] = [
        Self::EmptyPayload,
        Self::InvalidJson,
        Self::UnexpectedType,
        Self::Unrepresentable,
    ];

    /// The snake_case name used in metrics and in `usage_events_rejected.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::InvalidJson => "invalid_json",
            Self::UnexpectedType => "unexpected_type",
            Self::Unrepresentable => "unrepresentable",
        }
    }
}

impl BillingError {
    /// A short, bounded name of the error's kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::ClickHouse { .. } => "clickhouse",
            Self::Kafka { .. } => "kafka",
            Self::TopicCreation(_) => "topic_creation",
            Self::MigrationChanged { .. } => "migration_changed",
            Self::MigrationSet(_) => "migration_set",
            Self::InvalidSince { .. } => "invalid_since",
            Self::Decode { .. } => "decode",
            Self::Metrics(_) => "metrics",
            Self::Output(_) => "output",
            Self::QuotaPolicy { .. } => "quota_policy",
            Self::Encode { .. } => "encode",
            Self::Prices { .. } => "prices",
            Self::InvalidPeriod { .. } => "invalid_period",
        }
    }

    /// Whether a service this depends on could not be reached (the broker or ClickHouse down, starting or too
    /// slow): the same operation may succeed later, so start-up waits instead of exiting.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::TopicCreation(error) => error.is_unreachable(),
            Self::ClickHouse { source, .. } => matches!(
                source,
                clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
            ),
            Self::Kafka { source, .. } => tollgate_plumbing::topics::unreachable_error(source),
            Self::Config { .. }
            | Self::MigrationChanged { .. }
            | Self::MigrationSet(_)
            | Self::InvalidSince { .. }
            | Self::Decode { .. }
            | Self::Metrics(_)
            | Self::Output(_)
            | Self::QuotaPolicy { .. }
            | Self::Encode { .. }
            | Self::Prices { .. }
            | Self::InvalidPeriod { .. } => false,
        }
    }

    /// Wraps a ClickHouse error with what was being done.
    pub(crate) fn clickhouse(operation: &'static str) -> impl FnOnce(clickhouse::error::Error) -> Self {
        move |source| Self::ClickHouse { operation, source }
    }

    /// Wraps a Kafka error with what was being done.
    pub(crate) fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| Self::Kafka { operation, source }
    }
}
